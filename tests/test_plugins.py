"""Plugins from outside the tree (bench/spec/plugins.py): the example package under examples/ installs, lists,
trains, evaluates and reports like a built-in; a broken plugin is one line and exit 2."""

import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT, run_cli

EXAMPLE = ROOT / "examples" / "bench-plugin-example"


def _dist(root, name, entry_points: str, module: str, source: str):
    """A hand-made installed distribution (dist-info + module) under `root`: what pip would leave, in 1 ms."""
    info = root / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)
    (root / f"{module}.py").write_text(source)


@pytest.mark.heavy
def test_the_example_plugin_installs_lists_trains_and_reports(tmp_path):
    site = tmp_path / "site"
    build = tmp_path / "example"
    shutil.copytree(EXAMPLE, build)  # pip builds in the source folder: never in the checkout
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--disable-pip-version-check", "--target", str(site), str(build)],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr[-2000:]
    env = {"PYTHONPATH": str(site)}
    r = run_cli("list", env=env)
    assert r.returncode == 0 and "ddpo-2-rank" in r.stdout and "rank-based advantages" in r.stdout, r.stderr
    assert "brightness" in r.stdout.split("rewards:")[1]
    # its own key has its declared range, checked before torch like a built-in's
    r = run_cli("run", "--methods", "ddpo-2-rank", "--set", "rank_scale=0", "--out", str(tmp_path / "x"), env=env)
    assert r.returncode == 2 and r.stderr.strip() == \
        "error: hyperparameter rank_scale=0.0 of ddpo-2-rank must be in [0.001, 100]"
    out = tmp_path / "out"
    common = ["--out", str(out), "--no-progress"]
    r = run_cli("run", "--methods", "ddpo-2,ddpo-2-rank", "--reward", "brightness", "--budget", "8", "--num-steps",
                "2", "--samples-per-epoch", "4", "--train-batch-size", "8", "--num-checkpoints", "2",
                "--update-multiplier", "8", "--workers", "1", "--no-eval", *common, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_cli("eval", "--rewards", "brightness", "--per-prompt", "1", *common, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_cli("report", "--db", str(out / "bench.duckdb"), "--out", str(out / "report"), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    board = (out / "report" / "leaderboard.md").read_text()
    rows = [line for line in board.splitlines() if line.startswith("| ddpo-2")]
    assert {row.split("|")[1].strip() for row in rows} >= {"ddpo-2", "ddpo-2-rank"}, board
    assert "trained on brightness" in board


def test_centred_ranks_by_hand():
    sys.path.insert(0, str(EXAMPLE))
    try:
        from bench_plugin_example.method import centred_ranks
    finally:
        sys.path.remove(str(EXAMPLE))
    assert centred_ranks([3.0, 1.0, 2.0]).tolist() == [1.0, -1.0, 0.0]
    assert centred_ranks([1.0, 1.0, 5.0], scale=2.0).tolist() == [-1.0, -1.0, 2.0]  # ties share their mean rank
    assert centred_ranks([7.0]).tolist() == [0.0]


@pytest.mark.parametrize("value,needle", [
    ("dict(like='ddpo-2', target='m:X', summary='s', hparams=dict(alpha=0.5))",
     "hyperparameter 'alpha' has no declared range (add hparam_ranges)"),
    ("dict(target='m:X', summary='s')", "missing field 'shape'"),
    ("dict(like='ddpo-9', target='m:X', summary='s')", "like='ddpo-9' names no built-in method"),
    ("42", "must be a dict of registration fields"),
    ("1 / 0", "could not be imported: ZeroDivisionError"),
])
def test_a_broken_method_plugin_is_one_line_and_exit_2(tmp_path, value, needle):
    _dist(tmp_path, "brokenplug", "[overopt_bench.methods]\nmine = brokenplug_reg:SPEC\n", "brokenplug_reg",
          f"SPEC = {value}\n")
    r = run_cli("run", "--methods", "mine", "--out", str(tmp_path / "o"), env={"PYTHONPATH": str(tmp_path)})
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr
    assert "plugin method 'mine' (overopt_bench.methods entry point 'brokenplug_reg:SPEC' of package brokenplug)" \
        in lines[0] and not (tmp_path / "o").exists()


def test_a_plugin_cannot_take_a_built_in_name(tmp_path):
    _dist(tmp_path, "clash", "[overopt_bench.rewards]\naesthetic = clash_reg:SPEC\n", "clash_reg",
          "SPEC = dict(target='m:X', summary='s', higher_is_better=True, differentiable=False)\n")
    r = run_cli("list", "rewards", env={"PYTHONPATH": str(tmp_path)})
    assert r.returncode == 2 and "the name 'aesthetic' is already registered" in r.stderr


_SHINY = ("from pathlib import Path\n"
          "def where():\n    return [Path(__file__).parent / 'shiny.bin']\n"
          "def bad():\n    return 42\n"
          "SPEC = dict(target='m:X', summary='s', higher_is_better=True, differentiable=False, {fields})\n")
_WEIGHTS = ("import sys\nfrom bench.errors import BenchError\nfrom bench.spec.weights import preflight, weight_paths\n"
            "try:\n    preflight('shiny', sys.argv[1])\n    print([p.name for p in weight_paths('shiny', sys.argv[1])])\n"
            "except BenchError as e:\n    print('ERROR', e)\n")


@pytest.mark.parametrize("fields,suite,expected", [
    ("sd_weights='shiny_reg:where'", "sd", "['shiny.bin']"),  # the declared files go into the run's digest
    ("sd_weights='shiny_reg:where'", "toy", "[]"),            # on the toy suite weights live with its assets
    ("toy_assets='shiny-head'", "toy", "ERROR toy-suite weights for 'shiny' missing: "),
    ("sd_weights='shiny_nowhere:where'", "sd", "ERROR reward 'shiny': its sd_weights 'shiny_nowhere:where' cannot "
                                               "be loaded (No module named 'shiny_nowhere')"),
    ("sd_weights='shiny_reg:bad'", "sd", "ERROR reward 'shiny': its sd_weights 'shiny_reg:bad' must return a list "
                                         "of paths"),
])
def test_a_plugin_reward_declares_its_weights_like_a_built_in(tmp_path, fields, suite, expected):
    """A reward's weights are what its entry declares (`sd_weights`, `toy_assets`), for a plugin as for a
    built-in: preflight and the input digest read the declaration, never the reward's name."""
    import os

    _dist(tmp_path, "shiny", "[overopt_bench.rewards]\nshiny = shiny_reg:SPEC\n", "shiny_reg",
          _SHINY.format(fields=fields))
    r = subprocess.run([sys.executable, "-c", _WEIGHTS, suite], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"})
    assert r.returncode == 0 and r.stdout.startswith(expected), r.stdout + r.stderr


def test_a_plugin_rewards_malformed_weight_fields_are_one_line(tmp_path):
    _dist(tmp_path, "shiny", "[overopt_bench.rewards]\nshiny = shiny_reg:SPEC\n", "shiny_reg",
          _SHINY.format(fields="sd_weights='no-colon'"))
    r = run_cli("list", "rewards", env={"PYTHONPATH": str(tmp_path)})
    assert r.returncode == 2 and "sd_weights must be 'module:attribute', got 'no-colon'" in r.stderr, r.stderr


def test_every_built_in_reward_with_weights_declares_them():
    """The built-ins' declarations: a reward that loads weights on real SD names its locator, and every toy
    reward with a trained head names its asset folder (the names preflight used to branch on)."""
    from bench.spec.catalog import rewards

    sd = {n: rewards.get(n).meta.get("sd_weights") for n in rewards.names()}
    assert {n for n, t in sd.items() if t} == {"aesthetic", "pickscore", "hpsv2", "hpsv2.1", "imagereward"}
    toy = {n: rewards.get(n).meta.get("toy_assets") for n in rewards.names()}
    assert {n: t for n, t in toy.items() if t and "gold+" not in n and not n.startswith("aesthetic+")} == \
        {"aesthetic": "aesthetic", "pickscore": "pickscore", "hpsv2": "hpsv2", "gold-fidelity": "gold-fidelity"}
