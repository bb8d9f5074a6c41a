"""Bad input exits 2 with one clear line, no traceback, before torch is imported."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT, run_cli

CHECK = """
import sys
from bench.cli import main
rc = main(sys.argv[1:])
heavy = [m for m in ("torch", "diffusers", "transformers", "duckdb") if m in sys.modules]
print("HEAVY=" + ",".join(heavy))
sys.exit(rc)
"""


def run_light(*args):
    return subprocess.run([sys.executable, "-c", CHECK, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args,message", [
    (["run", "--methods", "ddpo-3"], "unknown method 'ddpo-3'. Did you mean 'ddpo-2'"),
    (["run", "--methods", "ddpo-2,nope"], "unknown method 'nope'"),
    (["run", "--reward", "aesthtic"], "unknown reward 'aesthtic'. Did you mean 'aesthetic'"),
    (["run", "--backbone", "tiny-randm"], "unknown backbone 'tiny-randm'. Did you mean 'tiny-random'"),
    (["run", "--budget", "12x"], "--budget must be a positive integer"),
    (["run", "--budget", "0"], "--budget must be a positive integer"),
    (["run", "--seeds", "0,a"], "--seeds must be comma-separated"),
    (["run", "--seeds", "1,1"], "lists a seed twice"),
    (["run", "--shard", "3/2"], "--shard '3/2': expected K/N with 1 <= K <= N"),
    (["run", "--log-with", "tensorbord"], "unknown tracker 'tensorbord'. Did you mean 'tensorboard'"),
    (["run", "--log-with", "wandb"], "--log-with wandb needs the wandb package: pip install wandb"),
    (["run", "--shard", "0/2"], "--shard '0/2': expected K/N"),
    (["run", "--methods", "ddpo-2", "--shard", "2/2"], "--shard 2/2: the grid has only 1 run(s)"),
    (["run", "--backbone", "/no/such/folder"], "backbone path not found: /no/such/folder"),
    (["run", "--backbone", "CompVis/stable-diffusion-v1-4"], "not available offline"),
    (["run", "--set", "lrr=1"], "Did you mean 'lr'?"),
    (["run", "--set", "lr=fast"], "--set lr=fast: expected a float"),
    (["run", "--train-prompts", "simple-animls"], "unknown prompt set 'simple-animls'"),
    (["run", "--reward", "gold-aesthetic"], "'gold-aesthetic' is a gold reward, for evaluation only"),
    (["run", "--reward", "hpsv2", "--backbone", "tiny-random"], "reward 'hpsv2' is not available on suite 'tiny-random'"),
    (["run", "--eval-per-prompt", "0"], "--eval-per-prompt must be a positive finite number"),
    (["eval", "--rewards", "aesthtic"], "unknown reward 'aesthtic'. Did you mean 'aesthetic'"),
    (["eval", "--per-prompt", "0"], "--per-prompt must be between 1 and 64"),
    (["report", "--db", "/no/such.duckdb"], "no results database at /no/such.duckdb"),
])
def test_bad_input_exits_2_with_one_line_and_no_torch(args, message, tmp_path):
    r = run_light(*args, "--out", str(tmp_path))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert "HEAVY=\n" in r.stdout or r.stdout.strip().endswith("HEAVY="), r.stdout
    assert not (tmp_path / "bench.duckdb").exists()


@pytest.mark.parametrize("content,message", [
    (b"cat\ndog\ncat\n", ":3: duplicate prompt 'cat' (first on line 1)"),
    (b"\n# only a comment\n", "no prompts"),
    (b"cat\n\xff\xfe dog\n", ":2: not valid UTF-8"),
])
def test_malformed_prompt_file(content, message, tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_bytes(content)
    r = run_light("run", "--methods", "ddpo-2", "--train-prompts", str(f), "--out", str(tmp_path))
    assert r.returncode == 2 and message in r.stderr and str(f) in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_missing_aesthetic_weights_for_sd(tmp_path):
    sd = tmp_path / "sd"
    sd.mkdir()
    (sd / "model_index.json").write_text("{}")
    r = subprocess.run([sys.executable, "-c", CHECK, "run", "--backbone", str(sd), "--reward", "aesthetic"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={"HF_HUB_CACHE": str(tmp_path / "empty"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert r.returncode == 2 and "openai/clip-vit-large-patch14" in r.stderr and "offline" in r.stderr, r.stderr


def test_list_is_instant_and_imports_no_torch():
    r = run_light("list")
    assert r.returncode == 0
    for name in ("ddpo-2", "ddpo-100", "jpeg-compressibility", "aesthetic", "pickscore", "hpsv2", "gold-fidelity",
                 "simple-animals", "toy-seen", "toy-unseen", "toy-compositional", "toy", "tiny-random", "sd-v1-4"):
        assert name in r.stdout
    assert r.stdout.strip().endswith("HEAVY=")
    r = run_light("list", "rewards")
    assert "ddpo-2" not in r.stdout and "higher is better, differentiable" in r.stdout
    assert "evaluation only; suites: toy" in r.stdout


def test_toy_prompt_sets_parse_and_keep_unseen_out_of_training():
    from bench.spec.prompts import resolve_prompt_set
    from bench.toy.captions import parse_caption

    seen, unseen = resolve_prompt_set("toy-seen")[1], resolve_prompt_set("toy-unseen")[1]
    comp = resolve_prompt_set("toy-compositional")[1]
    assert len(seen) == 48 and len(unseen) == 8 and not set(seen) & set(unseen)
    kinds = [parse_caption(p).kind for p in comp]
    assert kinds == ["background", "count", "pair", "location"]  # color, count, composition, location
    assert {parse_caption(p).kind for p in seen + unseen} == {"single"}


def test_prompt_sets_of_the_paper():
    from bench.spec.prompts import resolve_prompt_set

    assert len(resolve_prompt_set("simple-animals")[1]) == 45
    assert resolve_prompt_set("unseen-animals")[1] == ["snail", "hippopotamus", "cheetah", "crocodile", "lobster",
                                                       "octopus", "elephant", "jellyfish"]
    assert resolve_prompt_set("compositional")[1] == ["A green colored rabbit", "Four wolves in the park",
                                                      "A cat and a dog", "A dog on the moon"]


# ------------------------------------------------------------------ the bad-input battery (issue: reliability)
def _folder_without_index(tmp):
    (tmp / "pipe").mkdir()
    return str(tmp / "pipe")


def _folder_with_evil_suite(tmp):
    d = tmp / "pipe"
    d.mkdir()
    (d / "model_index.json").write_text("{}")
    (d / "bench_suite.json").write_text('{"suite": "../../escape"}')
    return str(d)


def _file(name, content: bytes):
    def make(tmp):
        p = tmp / name
        p.write_bytes(content)
        return str(p)
    return make


def _dir(name):
    def make(tmp):
        (tmp / name).mkdir()
        return str(tmp / name)
    return make


def _empty_duckdb(tmp):
    import duckdb

    p = tmp / "empty.duckdb"
    duckdb.connect(str(p)).close()
    return str(p)


_T = "{tmp}"  # replaced by a prepared path
BATTERY = [
    # run: names
    (["run", "--methods", "ddpo-3"], None, "unknown method 'ddpo-3'"),
    (["run", "--methods", ","], None, "--methods is empty"),
    (["run", "--methods", "tdpo,tdpo"], None, "names tdpo twice"),
    (["run", "--reward", "gold-fidelity"], None, "for evaluation only"),
    (["run", "--methods", "alignprop", "--reward", "jpeg-compressibility"], None, "not differentiable"),
    (["run", "--study", "overoptimisation"], None, "unknown study 'overoptimisation'. Did you mean 'overoptimization'"),
    # run: numbers at the edges
    (["run", "--budget", "-5"], None, "--budget must be a positive integer"),
    (["run", "--budget", "٣٠"], None, "--budget must be a positive integer"),
    (["run", "--budget", "99999999999"], None, "--budget 99999999999 is too large"),
    (["run", "--seeds", "-1"], None, "--seeds must be comma-separated"),
    (["run", "--num-steps", "0"], None, "--num-steps must be a positive finite number"),
    (["run", "--num-steps", "100000"], None, "--num-steps 100000 is too large"),
    (["run", "--num-steps", "٣"], None, "expected a whole number"),
    (["run", "--num-steps", "2.5"], None, "expected a whole number"),
    (["run", "--guidance-scale", "nan"], None, "expected a finite number"),
    (["run", "--guidance-scale", "inf"], None, "expected a finite number"),
    (["run", "--guidance-scale", "-1"], None, "--guidance-scale must be a positive finite number"),
    (["run", "--samples-per-epoch", "0"], None, "--samples-per-epoch must be a positive"),
    (["run", "--num-checkpoints", "0"], None, "--num-checkpoints must be a positive"),
    (["run", "--num-checkpoints", "5000"], None, "exceeds the budget"),
    (["run", "--lora-rank", "0"], None, "--lora-rank must be a positive"),
    (["run", "--lora-rank", "100000"], None, "--lora-rank 100000 is too large"),
    (["run", "--update-multiplier", "0"], None, "--update-multiplier must be a positive"),
    (["run", "--workers", "0"], None, "--workers must be a positive"),
    (["run", "--threads", "-1"], None, "--threads must be a positive"),
    (["run", "--stop-margin", "1"], None, "--stop-margin needs --stop-level"),
    (["run", "--stop-level", "nan"], None, "expected a finite number"),
    (["run", "--stop-reward", "aesthetic"], None, "--stop-reward needs --stop-level"),
    (["run", "--stop-level", "8.8", "--stop-reward", "gold-aesthetic"], None, "not a gold or control one"),
    (["run", "--stop-level", "8.8", "--stop-reward", "aesthetc"], None, "unknown reward 'aesthetc'"),
    (["run", "--stop-level", "8.8", "--stop-margin", "8"], None, "--stop-margin 8 must be at least 0 and below"),
    (["run", "--stop-level", "8.8", "--train-prompts", _T], _file("p.txt", b"a cat\n"), "needs registered training prompts"),
    (["run", "--ray-address", "auto"], None, "--ray-address needs --launcher ray"),
    (["run", "--gpus-per-run", "1"], None, "--gpus-per-run needs --launcher ray"),
    (["run", "--launcher", "ray", "--gpus-per-run", "1.5"], None, "--gpus-per-run 1.5: a fraction up to 1"),
    (["run", "--launcher", "slurm"], None, "invalid choice: 'slurm'"),
    # run: hyperparameters
    (["run", "--set", "lr=nan"], None, "--set lr=nan: must be a finite number"),
    (["run", "--set", "lr=-1"], None, "lr=-1.0 of ddpo-2 must be in (0, 10]"),
    (["run", "--set", "lr"], None, "--set expects key=value"),
    (["run", "--methods", "tdpo", "--set", "critic_reset=sometimes"], None, "unknown value of critic_reset"),
    (["run", "--methods", "prdp", "--set", "images_per_prompt=1"], None, "images_per_prompt=1 of prdp must be in [2, 1e+06]"),
    (["run", "--methods", "dense-dpo", "--set", "gamma=1.5"], None, "gamma=1.5 of dense-dpo must be in (0, 1]"),
    (["run", "--methods", "ddpo-2", "--set", "stat_min_count=2.5"], None, "--set stat_min_count=2.5: expected a int"),
    (["run", "--methods", "tdpo", "--set", "critic_encoder=clipp"], None, "unknown critic_encoder"),
    (["run", "--methods", "prdp", "--set", "beta=big"], None, "--set beta=big: expected a number or 'auto'"),
    # run: files and paths of the wrong kind
    (["run", "--backbone", _T], _folder_without_index, "has no model_index.json"),
    (["run", "--backbone", _T], _folder_with_evil_suite, "cannot be part of a file name"),
    (["run", "--train-prompts", _T], _dir("prompts"), "is a folder"),
    (["run", "--train-prompts", _T], _file("p.txt", b"a cat\n\x00\x01 dog\n"), ":2: control character"),
    (["run", "--train-prompts", _T], _file("p.txt", b"x" * 2000 + b"\n"), ":1: prompt of 2000 characters"),
    (["run", "--out", _T], _file("out.txt", b"not a folder"), "is a file, not a folder"),
    (["run", "--db", _T], _dir("db"), "is a folder, not a DuckDB file"),
    (["run", "--db", _T], _file("x.duckdb", b"hello, not a database at all"), "is not a DuckDB database file"),
    # eval
    (["eval", "--rewards", ","], None, "--rewards is empty"),
    (["eval", "--per-prompt", "1000"], None, "--per-prompt must be between 1 and 64"),
    (["eval"], None, "no run folders under"),
    # report
    (["report", "--db", _T], _file("x.duckdb", b"\x00" * 64), "is not a DuckDB database file"),
    (["report", "--db", _T], _empty_duckdb, "holds no bench results"),
    (["report", "--db", _T], _dir("d.duckdb"), "is a folder, not a DuckDB file"),
    # perf, list, ingest, runs
    (["perf", "--batch", "0"], None, "--batch must be a positive"),
    (["perf", "--reward", "pickscor"], None, "unknown reward 'pickscor'"),
    (["perf", "--db", _T], _file("x.duckdb", b"text"), "is not a DuckDB database file"),
    (["list", "nope"], None, "invalid choice: 'nope'"),
    (["list", "rewards", "--effective"], None, "--effective lists methods"),
    (["ingest"], None, "no run folders under"),
    (["runs", "--db", _T], _file("x.duckdb", b"text"), "is not a DuckDB database file"),
]


@pytest.mark.parametrize("args,prepare,message", BATTERY, ids=[f"{i}-{' '.join(a[0:2])}" for i, (a, _, _) in
                                                                 enumerate(BATTERY)])
def test_bad_input_battery(args, prepare, message, tmp_path):
    """Each bad input: exit 2, one line on stderr, no traceback, torch never imported, nothing left behind."""
    work = tmp_path / "work"
    work.mkdir()
    path = prepare(work) if prepare else None
    args = [path if a == _T else a for a in args]
    out = tmp_path / "out"
    if "--out" not in args and args[0] in ("run", "eval", "ingest", "runs"):
        args += ["--out", str(out)]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    r = run_light(*args)
    assert r.returncode == 2, (args, r.stdout[-500:], r.stderr[-1500:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, r.stderr)
    assert "Traceback" not in r.stderr
    assert "torch" not in r.stdout.split("HEAVY=")[-1], r.stdout
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing left behind
    assert len(BATTERY) >= 40


def test_every_flag_has_help_with_its_default():
    """Every option of every subcommand is documented, with its default."""
    from bench.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.dest == "help" or not action.option_strings:
                continue
            assert action.help, f"bench {name} {action.option_strings[0]} has no help"
            if action.__class__.__name__ not in ("_StoreTrueAction", "_AppendAction") and action.choices is None:
                assert "default" in action.help, f"bench {name} {action.option_strings[0]}: help states no default"


def test_shards_split_the_grid_deterministically_and_cover_it_once(tmp_path):
    """--shard K/N keeps runs i with i % N == K-1: the N slices are disjoint, cover the grid, and
    do not depend on which machine builds them (30 runs: 15 methods x 2 seeds, N = 4 -> 8, 8, 7, 7)."""
    from bench.cli import build_parser
    from bench.run import build_specs

    def names(*extra):
        args = build_parser().parse_args(["run", "--seeds", "0,1", "--out", str(tmp_path), *extra])
        return [s.run_name for s in build_specs(args)]

    full = names()
    shards = [names("--shard", f"{k}/4") for k in range(1, 5)]
    assert len(full) == 30 and [len(s) for s in shards] == [8, 8, 7, 7]
    assert sorted(sum(shards, [])) == sorted(full) and len(set(sum(shards, []))) == 30
    assert shards[1] == full[1::4] and names("--shard", "2/4") == shards[1]
    # seed-major: all 15 methods on seed 0 come first, so a grid stopped part-way holds whole seeds
    assert all("_s0_" in n for n in full[:15]) and all("_s1_" in n for n in full[15:])


def test_bash_completion_completes_commands_flags_and_names(tmp_path):
    """`bench completion bash` is a script bash sources; completing against it gives subcommands, a
    subcommand's flags, a flag's choices and registered names (run in a real bash, without torch)."""
    import shutil
    import subprocess

    r = run_light("completion", "bash")
    assert r.returncode == 0, r.stderr
    script = tmp_path / "bench.bash"
    body, _, heavy = r.stdout.rpartition("HEAVY=")
    assert heavy.strip() == ""  # written from the parser and the registries, without torch
    script.write_text(body)
    bash = shutil.which("bash")
    assert bash
    probe = f"""source {script}
t() {{ COMP_WORDS=("$@"); COMP_CWORD=$((${{#COMP_WORDS[@]}}-1)); _bench_complete; echo "${{COMPREPLY[*]}}"; }}
t bench r; t bench run --meth; t bench run --methods tdpo-r; t bench run --launcher ""; t bench run --study ov
t bench list ""; complete -p bench
"""
    out = subprocess.run([bash, "-c", probe], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["run", "report", "runs"]
    assert lines[1] == "--methods"
    assert lines[2].split() == ["tdpo-r", "tdpo-reset-all", "tdpo-reset-dormant", "tdpo-r-leaky"]
    assert lines[3].split() == ["local", "ray"]
    assert lines[4].split() == ["overoptimization", "overoptimization-alignprop", "overoptimization-v3"]
    assert set(lines[5].split()) >= {"methods", "rewards", "studies", "--effective"}
    assert "_bench_complete" in lines[6]
    assert body.startswith("# bench shell completion")


def test_plan_only_prints_the_plan_and_writes_nothing(tmp_path):
    """--plan-only: the plan of a 2-method x 2-seed grid (each method's seeds one lockstep group, 2 workers) with
    its wall-time estimate, exit 0, and no output folder, database or report created."""
    out = tmp_path / "out"
    r = run_cli("run", "--methods", "ddpo-2,tdpo", "--seeds", "0,1", "--budget", "32", "--workers", "2",
                "--out", str(out), "--plan-only")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "bench: plan: 4 run(s), 4 to train" in r.stdout and "estimated wall time" in r.stdout
    lines = [l for l in r.stdout.splitlines() if l.strip().startswith("train ")]
    assert len(lines) == 4 and all("[lockstep group" in l for l in lines)
    group = {}
    for l in lines:
        group.setdefault(l.split()[1].split("_")[0], set()).add(l.rsplit("[lockstep group", 1)[1])
    assert sorted(group) == ["ddpo-2", "tdpo"] and all(len(g) == 1 for g in group.values())  # a method's seeds
    assert group["ddpo-2"] != group["tdpo"]
    assert not out.exists()
