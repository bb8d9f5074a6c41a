"""Bad input exits 2 with one clear line, no traceback, before torch is imported."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT

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
    (["run", "--backbone", "tiny-randm"], "unknown backbone 'tiny-randm'. Did you mean 'tiny-random'?"),
    (["run", "--budget", "12x"], "--budget must be a positive integer"),
    (["run", "--budget", "0"], "--budget must be a positive integer"),
    (["run", "--seeds", "0,a"], "--seeds must be comma-separated"),
    (["run", "--seeds", "1,1"], "lists a seed twice"),
    (["run", "--backbone", "/no/such/folder"], "backbone path not found: /no/such/folder"),
    (["run", "--backbone", "CompVis/stable-diffusion-v1-4"], "not available offline"),
    (["run", "--set", "lrr=1"], "Did you mean 'lr'?"),
    (["run", "--set", "lr=fast"], "--set lr=fast: expected a float"),
    (["run", "--train-prompts", "simple-animls"], "unknown prompt set 'simple-animls'"),
    (["run", "--reward", "gold-aesthetic"], "'gold-aesthetic' is a gold reward, for evaluation only"),
    (["run", "--reward", "hpsv2", "--backbone", "tiny-random"], "reward 'hpsv2' is not available on suite 'tiny-random'"),
    (["run", "--eval-per-prompt", "0"], "--eval-per-prompt must be a positive finite number"),
    (["eval", "--rewards", "aesthtic"], "unknown reward 'aesthtic'. Did you mean 'aesthetic'"),
    (["eval", "--per-prompt", "0"], "--per-prompt must be positive"),
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
    from bench.prompts import resolve_prompt_set
    from bench.toy.captions import parse_caption

    seen, unseen = resolve_prompt_set("toy-seen")[1], resolve_prompt_set("toy-unseen")[1]
    comp = resolve_prompt_set("toy-compositional")[1]
    assert len(seen) == 48 and len(unseen) == 8 and not set(seen) & set(unseen)
    kinds = [parse_caption(p).kind for p in comp]
    assert kinds == ["background", "count", "pair", "location"]  # color, count, composition, location
    assert {parse_caption(p).kind for p in seen + unseen} == {"single"}


def test_prompt_sets_of_the_paper():
    from bench.prompts import resolve_prompt_set

    assert len(resolve_prompt_set("simple-animals")[1]) == 45
    assert resolve_prompt_set("unseen-animals")[1] == ["snail", "hippopotamus", "cheetah", "crocodile", "lobster",
                                                       "octopus", "elephant", "jellyfish"]
    assert resolve_prompt_set("compositional")[1] == ["A green colored rabbit", "Four wolves in the park",
                                                      "A cat and a dog", "A dog on the moon"]
