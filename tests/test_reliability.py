"""Nothing fails silently: non-finite numbers stop a run with one line; a broken run folder is quarantined,
not blocking; ingestion reflects the files; the database is checked before training."""

import json

import duckdb
import pytest

from tests.helpers import make_spec, register_counting_reward, register_nan_reward


def test_a_nan_reward_stops_the_run_with_one_line_and_keeps_its_checkpoints(tmp_path):
    from bench.errors import RunFailed
    from bench.train.runner import run_dir_for, train_run

    register_nan_reward(after=16)
    spec = make_spec("ddpo-2", reward="test-nan", num_steps=2, samples_per_epoch=8, budget=32, num_checkpoints=4)
    with pytest.raises(RunFailed) as err:
        train_run(spec, tmp_path, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and spec.run_name in msg and "epoch 3" in msg and "non-finite rewards from test-nan" in msg
    run = run_dir_for(spec, tmp_path)
    row = json.loads((run / "run.json").read_text())
    assert row["status"] == "failed" and "non-finite" in row["error"]
    ckpts = [json.loads(x) for x in (run / "checkpoints.jsonl").read_text().splitlines()]
    assert [c["reward_queries"] for c in ckpts] == [0, 8, 16]  # written before the failure, still valid
    from bench.train.backbone import build_backbone
    from bench.train.runner import backbone_location

    bb = build_backbone(backbone_location(spec), 2, 5.0)
    bb.load_lora(run / ckpts[-1]["path"], sha256=ckpts[-1]["sha256"])


def test_a_failed_run_does_not_stop_the_grid(tmp_path):
    from bench.grid import GridOptions, run_grid

    register_counting_reward()
    register_nan_reward(after=8)
    bad = make_spec("ddpo-2", reward="test-nan", num_steps=2, samples_per_epoch=8, budget=16)
    good = make_spec("ddpo-2", num_steps=2, samples_per_epoch=8, budget=16)
    said = []
    outcomes = run_grid([bad, good], GridOptions(out=tmp_path, db=tmp_path / "b.duckdb", evaluate=False,
                                                 progress=False, workers=1, threads=1), say=said.append)
    by = {o.run_id: o for o in outcomes}
    assert by[bad.run_name].status == "failed" and "non-finite rewards" in by[bad.run_name].error
    assert by[good.run_name].status == "finished"
    con = duckdb.connect(str(tmp_path / "b.duckdb"), read_only=True)
    assert dict(con.execute("select run_id, status from runs").fetchall()) == {bad.run_name: "failed",
                                                                               good.run_name: "finished"}
    con.close()


def test_checkpoint_checksum_is_verified_before_scoring(tmp_path):
    from bench.errors import BenchError
    from bench.evaluate import evaluate_checkpoints
    from bench.train.runner import run_dir_for, train_run
    from tests.helpers import CountingReward

    register_counting_reward()
    spec = make_spec("ddpo-2", num_steps=2, samples_per_epoch=8, budget=8)
    train_run(spec, tmp_path, progress=False)
    run = run_dir_for(spec, tmp_path)
    ckpt = run / "checkpoints" / "q00000008.safetensors"
    data = bytearray(ckpt.read_bytes())
    data[-3] ^= 0x55  # corrupt a tensor byte; the header still parses
    ckpt.write_bytes(bytes(data))
    with pytest.raises(BenchError, match="does not match its recorded checksum"):
        evaluate_checkpoints(run, {"b": CountingReward()}, {"s": ["a cat"]}, per_prompt=1, progress=False,
                             shard=None)


def test_inputs_digest_follows_weights_not_model_cards(tmp_path):
    """A run's id covers the contents of its inputs: a changed weight file or config is a new run;
    re-measuring the suite (suite.json) or editing a model card (README.md) is not."""
    from bench.store.manifest import inputs_digest

    root = tmp_path / "assets"
    (root / "unet").mkdir(parents=True)
    (root / "unet" / "model.safetensors").write_bytes(b"\x00" * 64)
    (root / "unet" / "README.md").write_text("card")
    (root / "suite.json").write_text("{}")
    base = inputs_digest(["a red circle", root])
    (root / "unet" / "README.md").write_text("card, re-measured")
    (root / "suite.json").write_text('{"fidelity": 0.6}')
    assert inputs_digest(["a red circle", root]) == base
    (root / "unet" / "model.safetensors").write_bytes(b"\x00" * 63 + b"\x01")
    changed = inputs_digest(["a red circle", root])
    assert changed != base
    (root / "unet" / "config.json").write_text("{}")
    assert inputs_digest(["a red circle", root]) not in (base, changed)
    assert inputs_digest(["a red square", root]) != inputs_digest(["a red circle", root])


# ------------------------------------------------------------------ environment, paths and flags are input too
def _one_line(capsys, argv, env, monkeypatch):
    from bench.cli import main

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    rc = main(argv)
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    return rc, lines


@pytest.mark.parametrize("case", ["world-size", "world-size-half", "cache-file", "runs-file", "db-folder",
                                  "ray-fraction"])
def test_environment_and_output_paths_are_refused_in_one_line_before_torch(tmp_path, capsys, monkeypatch, case):
    import sys

    out = tmp_path / "out"
    out.mkdir()
    env, extra = {}, []
    if case == "world-size":  # no launcher: accelerate would end in a MASTER_ADDR traceback
        env = {"WORLD_SIZE": "2"}
    elif case == "world-size-half":  # a launcher's address but no rank
        env = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    elif case == "cache-file":
        (tmp_path / "cache").write_text("not a folder")
        env = {"BENCH_CACHE": str(tmp_path / "cache")}
    elif case == "runs-file":
        (out / "runs").write_text("a file where the run folders go")
    elif case == "db-folder":
        (out / "bench.duckdb").mkdir()
    else:
        extra = ["--launcher", "ray", "--gpus-per-run", "0.33333"]
    for k in ("WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "RANK", "BENCH_CACHE"):
        monkeypatch.delenv(k, raising=False)
    torch_before = "torch" in sys.modules
    rc, lines = _one_line(capsys, ["run", "--methods", "ddpo-2", "--budget", "8", "--out", str(out), *extra],
                          env, monkeypatch)
    words = {"world-size": "WORLD_SIZE=2 is set but MASTER_ADDR, MASTER_PORT, RANK are not",
             "world-size-half": "WORLD_SIZE=2 is set but RANK is not", "cache-file": "is a file, not a folder",
             "runs-file": "runs is a file, where bench keeps its run folders",
             "db-folder": "is a folder, where bench keeps its database",
             "ray-fraction": "Ray divides a GPU in steps of 0.0001"}[case]
    assert rc == 2 and len(lines) == 1 and words in lines[0], lines
    if not torch_before:
        assert "torch" not in sys.modules
    assert not (out / "runs").is_dir()


@pytest.mark.parametrize("argv, words", [
    (["perf", "--floor", "--batch", "-1"], "--batch has no effect with --floor without --db"),
    (["perf", "--db", "DB", "--num-steps", "0"], "--num-steps has no effect with --db without --floor"),
    (["perf", "--db", "DB", "--levers"], "--levers has no effect with --db without --floor"),
    (["perf", "--study", "overoptimization"], "--study has no effect with micro-benchmarks"),
])
def test_a_perf_flag_without_effect_in_its_mode_is_refused(tmp_path, capsys, monkeypatch, argv, words):
    argv = [str(tmp_path / "x.duckdb") if a == "DB" else a for a in argv]
    rc, lines = _one_line(capsys, argv, {}, monkeypatch)
    assert rc == 2 and len(lines) == 1 and words in lines[0], lines


@pytest.mark.parametrize("char", ["\u0085", "\u009b", "\u0080"])
def test_a_c1_control_character_in_a_prompt_is_refused(tmp_path, capsys, monkeypatch, char):
    """C0 and DEL were refused; C1 (U+0080-U+009F) is too, NEL (U+0085) included, which str.splitlines would
    have taken for a line break."""
    f = tmp_path / "prompts.txt"
    f.write_text(f"a cat\na d{char}og\n", encoding="utf-8")
    rc, lines = _one_line(capsys, ["run", "--methods", "ddpo-2", "--train-prompts", str(f), "--out",
                                   str(tmp_path / "o"), "--plan"], {}, monkeypatch)
    assert rc == 2 and lines == [f"error: {f}:2: control character {char!r} in a prompt (is this a text file?)"]


@pytest.mark.parametrize("command", ["run", "eval"])
def test_a_second_writer_on_one_out_exits_2_naming_the_first(tmp_path, capsys, monkeypatch, command):
    """Two `bench run` on one --out both trained the same run folders; now the second (or an `eval` beside a
    `run`) is refused in one line naming the holder's PID, and the lock goes with its holder, even on kill -9."""
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    (out / "runs").mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from bench.store.atomic import "
         "hold_writer_lock; f = hold_writer_lock(Path(sys.argv[1]), 'run'); print('held', flush=True); "
         "time.sleep(60)", str(out)], stdout=subprocess.PIPE, text=True, cwd=str(__import__("pathlib").Path(
             __file__).parents[1]))
    try:
        assert holder.stdout.readline().strip() == "held"
        argv = {"run": ["run", "--methods", "ddpo-2", "--budget", "8", "--num-steps", "2", "--samples-per-epoch",
                        "8", "--no-eval", "--no-progress", "--out", str(out)],
                "eval": ["eval", "--out", str(out), "--no-progress"]}[command]
        if command == "eval":  # eval needs a finished run to get as far as the lock
            run = out / "runs" / "r"
            run.mkdir()
            (run / "run.json").write_text('{"status": "finished"}')
        rc, lines = _one_line(capsys, argv, {}, monkeypatch)
        assert rc == 2 and len(lines) == 1, lines
        assert f"is in use by `bench run` (PID {holder.pid}, since " in lines[0]
        assert [p.name for p in (out / "runs").iterdir()] == (["r"] if command == "eval" else [])
    finally:
        holder.kill()
        holder.wait()
    from bench.store.atomic import hold_writer_lock

    hold_writer_lock(out, "run").close()  # free again once the holder is gone (killed, not unlocked)
