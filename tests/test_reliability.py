"""Nothing fails silently: non-finite numbers stop a run with one line; a broken run folder is quarantined,
not blocking; ingestion reflects the files; the database is checked before training."""

import json

import duckdb
import pytest

from tests.conftest import run_cli
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
