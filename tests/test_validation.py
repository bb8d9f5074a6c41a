"""One validation path for every value: every numeric and name-valued option of every subcommand gets the
same classes of bad value, and each must end with exit 2 and one line before anything heavy runs; values a
backbone folder's bench_suite.json sets get the same checks."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# Every case runs in one child process: main() per case, with the first heavy step (library quieting, just
# before torch) replaced by an exit 99, so a value that is wrongly accepted fails the test instead of training.
HARNESS = r"""
import json, sys
import bench.evaluate, bench.perf, bench.report.command, bench.run
def heavy():
    raise SystemExit(99)
for m in (bench.evaluate, bench.perf, bench.report.command, bench.run):
    m.quiet_libraries = heavy
from bench.cli import main
import contextlib, io
results = []
for args in json.loads(sys.stdin.read()):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(args)
        except SystemExit as e:
            rc = e.code
    results.append([rc, err.getvalue(), "torch" in sys.modules])
print(json.dumps(results))
"""

BAD = {"nan": "nan", "inf": "inf", "minus zero": "-0", "zero": "0", "negative": "-3", "huge": "1" + "0" * 30,
       "huge float": "1e400", "non-ASCII digits": "\u0663", "empty": "", "whitespace": "   "}
ALLOWED = {("run", "--gpus-per-run"): {"zero", "minus zero"},  # zero GPUs per Ray task is a real setting
           ("run", "--stop-level"): {"zero", "minus zero", "negative"}}  # a level on a reward's scale (jpeg's is < 0)


def _numeric_options():
    from bench.cli import build_parser, number, whole

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    out = []
    for name, p in sub.choices.items():
        for a in p._actions:
            if a.option_strings and a.type in (whole, number):
                out.append((name, a.option_strings[0]))
    return out


# string options whose value is a number or a list of numbers, parsed by the harness itself
PARSED = [("run", "--budget"), ("run", "--seeds")]
NAMES = [("run", "--methods"), ("run", "--reward"), ("run", "--backbone"), ("run", "--study"),
         ("run", "--train-prompts"), ("run", "--log-with"), ("run", "--out"), ("run", "--db"),
         ("run", "--report-dir"), ("run", "--shard"), ("run", "--set"), ("eval", "--rewards"), ("eval", "--db"),
         ("perf", "--backbone"), ("perf", "--reward"), ("perf", "--db"), ("report", "--db"), ("report", "--out"),
         ("report", "--study"),
         ("ingest", "--db"), ("runs", "--db")]


def _cases(tmp):
    context = {"run": ["--methods", "ddpo-2", "--out", str(tmp / "out")], "eval": ["--out", str(tmp / "out")],
               "perf": [], "report": ["--out", str(tmp / "rep")], "ingest": ["--out", str(tmp / "out")],
               "runs": ["--out", str(tmp / "out")], "list": []}
    cases = []
    for command, flag in _numeric_options() + PARSED:
        extra = ["--launcher", "ray"] if flag in ("--gpus-per-run", "--ray-address") else []
        for label, value in BAD.items():
            if label in ALLOWED.get((command, flag), set()):
                continue
            if flag == "--seeds" and label in ("zero", "minus zero"):
                continue  # seed 0 is a seed
            cases.append(((command, flag, label), [command, *context[command], *extra, f"{flag}={value}"]))
    for command, flag in NAMES:
        for label in ("empty", "whitespace"):
            args = [a for a in context[command] if a != flag]
            if flag in args:
                i = args.index(flag)
                del args[i:i + 2]
            cases.append(((command, flag, label), [command, *args, f"{flag}={BAD[label]}"]))
    return cases


def test_every_option_refuses_every_class_of_bad_value(tmp_path):
    cases = _cases(tmp_path)
    assert len(_numeric_options()) >= 14 and len(cases) >= 190
    before = sorted(tmp_path.rglob("*"))
    r = subprocess.run([sys.executable, "-c", HARNESS], input=json.dumps([a for _, a in cases]), cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    results = json.loads(r.stdout.strip().splitlines()[-1])
    wrong = []
    for (case, args), (rc, err, heavy) in zip(cases, results):
        lines = [line for line in err.splitlines() if line.strip()]
        if rc != 2 or len(lines) != 1 or not lines[0].startswith("error: ") or "Traceback" in err or heavy:
            wrong.append((case, rc, err[-300:]))
    assert not wrong, wrong[:10]
    assert sorted(tmp_path.rglob("*")) == before  # nothing left behind


def _suite_folder(tmp_path, defaults):
    folder = tmp_path / "pipe"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    (folder / "bench_suite.json").write_text(json.dumps({"suite": "mine", "defaults": defaults}))
    return folder


@pytest.mark.parametrize("defaults,words", [
    ({"budget": "640"}, "defaults.budget must be a whole number, got '640'"),
    ({"budget": 0}, "defaults.budget = 0 is out of range"),
    ({"budget": True}, "defaults.budget must be a whole number"),
    ({"num_steps": 10.5}, "defaults.num_steps must be a whole number"),
    ({"num_steps": 5000}, "out of range (from 1 to 1000)"),
    ({"guidance_scale": -1.0}, "defaults.guidance_scale = -1.0 is out of range"),
    ({"eta": 1.5}, "defaults.eta = 1.5 is out of range"),
    ({"update_multiplier": 0}, "defaults.update_multiplier = 0 is out of range"),
    ({"train_prompts": ""}, "defaults.train_prompts must be a non-empty name"),
    ({"samples_per_epok": 32}, "Did you mean 'samples_per_epoch'"),
])
def test_a_backbone_folders_defaults_get_the_flags_checks(tmp_path, defaults, words):
    from bench.errors import BenchError
    from bench.spec.runspec import resolve_backbone

    folder = _suite_folder(tmp_path, defaults)
    with pytest.raises(BenchError, match="bench_suite.json") as e:
        resolve_backbone(str(folder))
    assert words in str(e.value), str(e.value)


def test_a_backbone_folders_good_defaults_pass(tmp_path):
    from bench.spec.runspec import resolve_backbone

    info = resolve_backbone(str(_suite_folder(tmp_path, {"budget": 640, "eta": 0.0, "guidance_scale": 7})))
    assert info.suite == "mine" and info.defaults["budget"] == 640 and info.defaults["eta"] == 0.0


def test_a_fifo_prompt_file_is_not_a_regular_file(tmp_path):
    import os

    from bench.errors import BenchError
    from bench.spec.prompts import read_prompt_file

    fifo = tmp_path / "prompts.txt"
    os.mkfifo(fifo)
    with pytest.raises(BenchError, match="is not a regular file"):
        read_prompt_file(fifo)  # refused without opening it (opening a FIFO would block)


@pytest.mark.parametrize("content", [b"just some text\n", b"PK\x03\x04 truncated zip", b""])
def test_a_file_that_is_not_an_hpsv2_checkpoint_is_named_so_without_torchs_advice(tmp_path, content):
    from bench.errors import BenchError
    from metrics.hpsv2 import load_native

    path = tmp_path / "HPS_v2_compressed.pt"
    path.write_bytes(content)
    with pytest.raises(BenchError) as e:
        load_native("v2.0", path=path)
    msg = str(e.value)
    assert "is not an HPSv2 checkpoint" in msg and "weights_only=False" not in msg and "\x1b" not in msg, msg


def test_a_torch_file_with_other_keys_is_refused_before_the_model_is_built(tmp_path, monkeypatch):
    import torch
    import transformers

    from bench.errors import BenchError
    from metrics.hpsv2 import load_native

    path = tmp_path / "other.pt"
    torch.save({"state_dict": {"visual.conv1.weight": torch.zeros(2, 3, 4, 4)}}, path)  # maps, but far too few
    built = []
    init = transformers.CLIPModel.__init__

    def spy(self, *a, **k):
        built.append(torch.empty(0).device.type)
        init(self, *a, **k)

    monkeypatch.setattr(transformers.CLIPModel, "__init__", spy)
    with pytest.raises(BenchError, match="does not fit ViT-H-14"):
        load_native("v2.0", path=path)
    assert built == ["meta"]  # only the shape-only model: the full one is never built for a wrong file


def test_preflight_refuses_a_text_file_as_hpsv2_weights_before_torch(tmp_path):
    bad = tmp_path / "HPS_v2_compressed.pt"
    bad.write_text("not weights\n")
    code = ("import sys; from bench.cli import main; rc = main(sys.argv[1:]); "
            "print('HEAVY=' + str('torch' in sys.modules)); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, "run", "--reward", "hpsv2", "--backbone", "sd-v1-4-random",
                        "--methods", "ddpo-2", "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env={**__import__("os").environ, "BENCH_HPSV2": str(bad)})
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "is not an HPSv2 checkpoint" in lines[0], r.stderr
    assert "HEAVY=False" in r.stdout


@pytest.mark.parametrize("name,value", [("WORLD_SIZE", "abc"), ("WORLD_SIZE", "0"), ("OMP_NUM_THREADS", "\u0663"),
                                        ("OMP_NUM_THREADS", "-1"), ("OMP_NUM_THREADS", "1e3")])
def test_numbers_from_the_environment_get_the_same_checks(tmp_path, name, value):
    import os

    code = ("import sys; from bench.cli import main; rc = main(sys.argv[1:]); "
            "print('HEAVY=' + str('torch' in sys.modules)); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, "run", "--methods", "ddpo-2", "--out", str(tmp_path / "out")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, name: value})
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and f"environment variable {name}=" in lines[0], r.stderr
    assert "HEAVY=False" in r.stdout and not (tmp_path / "out").exists()


def _outside(r):
    """A value just outside a declared Range, below it where it has a low end that can be crossed."""
    if r.low_open or r.low > -1e6:
        return r.low if r.low_open else r.low - (1 if float(r.low).is_integer() else 1e-3)
    return r.high * 10


def test_every_key_of_every_method_has_a_declared_range_that_refuses_outside_values():
    """Walk every hyperparameter of every built-in method: a number has a declared Range (or is a choice, a flag or
    a name), and a value outside the range, or above it, is refused in one line naming the range."""
    from bench.errors import BenchError
    from bench.spec.catalog import methods
    from bench.spec.runspec import HPARAM_CHOICES, HPARAM_RANGES, validate_hparams

    tried = 0
    for entry in methods.entries():
        hp = entry.meta["hparams"]
        for key, value in hp.items():
            if isinstance(value, bool) or key in HPARAM_CHOICES or key == "critic_encoder":
                continue
            assert key in HPARAM_RANGES, f"{entry.name}: {key} has no declared range"
            r = HPARAM_RANGES[key]
            for bad in (_outside(r), r.high * 10 if r.high > 0 else r.high + 1):
                with pytest.raises(BenchError, match=rf"hyperparameter {key}=.* of {entry.name} must be in "):
                    validate_hparams(entry.name, {**hp, key: bad})
                tried += 1
            validate_hparams(entry.name, hp)  # the preset itself is inside every range
    assert tried >= 2 * 40


@pytest.mark.parametrize("setting,needle", [
    ("old_decay_max=2", "old_decay_max=2.0 of diffusion-nft must be in [0, 1]"),
    ("std_eps=-1", "std_eps=-1.0 of diffusion-nft must be in (0, 1e+06]"),
    ("loss_weight=-5", "loss_weight=-5.0 of diffusion-nft must be in (0, 1e+06]"),
    ("nft_beta=0", "nft_beta=0.0 of diffusion-nft must be in (0, 1e+06]"),
    ("images_per_prompt=100000000000000000000", "images_per_prompt=100000000000000000000 of diffusion-nft must be"),
])
def test_nft_keys_out_of_range_exit_2_before_torch(setting, needle):
    r = subprocess.run([sys.executable, "-c", "import sys; from bench.cli import main; rc = main(sys.argv[1:]); "
                        "print('HEAVY=' + str('torch' in sys.modules)); sys.exit(rc)", "run", "--methods",
                        "diffusion-nft", "--set", setting, "--out", "/nonexistent/never-written"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr
    assert "HEAVY=False" in r.stdout
