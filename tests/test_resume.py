"""Resume: a run killed at several points and resumed ends bit for bit where an uninterrupted one does."""

import json

import pytest
import torch

from tests.helpers import make_spec, register_counting_reward

RESUMED = ["ddpo-2", "tdpo-r", "alignprop", "dense-dpo", "diffusion-nft"]
# one pytest-xdist worker runs them all: the module fixture `uninterrupted` is built once (pyproject's --dist)
pytestmark = pytest.mark.xdist_group("resume")
TIMING = {"epoch_time_s", "time_sampling_s", "time_scoring_s", "time_training_s", "time_critic_encoding_s"}


class Killed(BaseException):
    pass


def _spec(method):
    # 4 epochs of 8, checkpoints at 16 and 32: a snapshot after epoch 2. DiffusionNFT at m = 24: one update per
    # 48 images, so the snapshot at 16 holds 16 waiting images that the update in epoch 3 trains on. Dense DPO at
    # m = 2 (2.7 updates per epoch, a fraction still carried across the snapshot): its updates are the costly ones
    m = {"diffusion-nft": 24.0, "dense-dpo": 2.0}.get(method, 8.0)
    return make_spec(method, num_steps=2, samples_per_epoch=8, budget=32, num_checkpoints=2, sample_batch_size=8,
                     overrides={"lr": "1e-2"}, multiplier=m)


def _result(out, spec):
    from safetensors.torch import load_file

    run = out / "runs" / spec.run_name
    ckpts = [json.loads(x) for x in (run / "checkpoints.jsonl").read_text().splitlines()]
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    lora = load_file(str(run / ckpts[-1]["path"]))
    return ([{k: v for k, v in c.items() if k != "wall_time_s"} for c in ckpts],
            [m for m in metrics if m["metric"] not in TIMING], lora,
            json.loads((run / "run.json").read_text())["status"])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    from bench.train.runner import train_run

    register_counting_reward()
    out = tmp_path_factory.mktemp("whole")
    results = {}
    for method in RESUMED:
        spec = _spec(method)
        train_run(spec, out, progress=False)
        results[method] = _result(out, spec)
    return results


@pytest.mark.parametrize("method", RESUMED)
def test_killed_and_resumed_runs_end_bit_for_bit(method, uninterrupted, tmp_path, monkeypatch):
    import bench.train.runner as runner

    register_counting_reward()
    spec = _spec(method)

    def die():
        raise Killed()
    monkeypatch.setattr(runner, "_die", die)
    # mid-epoch before any snapshot; after epoch 3's metrics (resume from epoch 2, dropping epoch 3's rows);
    # in the last epoch after sampling; and between a checkpoint and its state
    for point in ("1:mid", "3:end", "4:mid", "2:ckpt"):
        out = tmp_path / point.replace(":", "_")
        monkeypatch.setenv("BENCH_CRASH_AT", point)
        with pytest.raises(Killed):
            runner.train_run(spec, out, progress=False)
        monkeypatch.delenv("BENCH_CRASH_AT")
        run_json = json.loads((out / "runs" / spec.run_name / "run.json").read_text())
        assert run_json["status"] == "running"
        row = runner.train_run(spec, out, progress=False)
        if point in ("3:end", "4:mid"):
            assert row["resumed_from"] == 16  # from the snapshot saved with the checkpoint at 16 queries
        ckpts, metrics, lora, status = _result(out, spec)
        want_ckpts, want_metrics, want_lora, _ = uninterrupted[method]
        assert status == "finished"
        assert ckpts == want_ckpts, point
        assert metrics == want_metrics, point
        assert lora.keys() == want_lora.keys() and all(torch.equal(lora[k], want_lora[k]) for k in lora), point
        assert not (out / "runs" / spec.run_name / "state").exists()  # a finished run keeps no resume state


def test_restart_discards_the_state(tmp_path, monkeypatch):
    import bench.train.runner as runner

    register_counting_reward()
    spec = _spec("ddpo-2")
    monkeypatch.setattr(runner, "_die", lambda: (_ for _ in ()).throw(Killed()))
    monkeypatch.setenv("BENCH_CRASH_AT", "3:end")
    with pytest.raises(Killed):
        runner.train_run(spec, tmp_path, progress=False)
    monkeypatch.delenv("BENCH_CRASH_AT")
    row = runner.train_run(spec, tmp_path, progress=False, restart=True)
    assert row["resumed_from"] is None and row["status"] == "finished"
    # the planner's stored timing: the process's CPU seconds, at most every thread busy for the whole wall time
    assert 0 < row["cpu_time_s"] <= row["wall_time_s"] * row["threads"] + 0.5


def test_a_snapshot_from_before_cpu_seconds_resumes_with_them_unknown():
    """`cpu_elapsed` is the one field a snapshot may lack (it came later): such a snapshot still loads, and the run
    then records no CPU seconds (the planner falls back to its wall time); any other missing field is refused."""
    from bench.errors import BenchError
    from bench.train.state import RunState

    full = {f: 0 for f in ("epoch", "sampled", "budget_used", "queries", "allowance", "elapsed")}
    full.update(counts={}, lora={}, method={}, generator=torch.zeros(1), rng={}, torch_rng=torch.zeros(1), scaler={})
    assert RunState.from_dict(full).cpu_elapsed is None
    assert RunState.from_dict({**full, "cpu_elapsed": 2.5}).cpu_elapsed == 2.5
    with pytest.raises(BenchError, match="lacks elapsed"):
        RunState.from_dict({k: v for k, v in full.items() if k != "elapsed"})


def test_a_corrupt_state_is_refused_with_one_line(tmp_path, monkeypatch):
    import bench.train.runner as runner
    from bench.errors import BenchError

    register_counting_reward()
    spec = _spec("ddpo-2")
    monkeypatch.setattr(runner, "_die", lambda: (_ for _ in ()).throw(Killed()))
    monkeypatch.setenv("BENCH_CRASH_AT", "3:end")
    with pytest.raises(Killed):
        runner.train_run(spec, tmp_path, progress=False)
    monkeypatch.delenv("BENCH_CRASH_AT")
    blob = tmp_path / "runs" / spec.run_name / "state" / "rank0" / "state.safetensors"
    data = bytearray(blob.read_bytes())
    data[-5] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(BenchError, match="corrupt .* --restart"):
        runner.train_run(spec, tmp_path, progress=False)


def test_pack_round_trips_nested_state():
    from bench.train.state import pack, unpack

    obj = {"a": [1, 2.5, None, "x"], 3: {"t": torch.arange(4), (1, 2): (True, torch.ones(2, 2))},
           "n": __import__("numpy").arange(3)}
    structure, tensors = pack(obj)
    json.dumps(structure)  # JSON-able
    back = unpack(json.loads(json.dumps(structure)), tensors)
    assert back["a"] == [1, 2.5, None, "x"] and torch.equal(back[3]["t"], torch.arange(4))
    assert back[3][(1, 2)][0] is True and torch.equal(back[3][(1, 2)][1], torch.ones(2, 2))
    assert back["n"].tolist() == [0, 1, 2]
