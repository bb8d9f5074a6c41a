"""--log-with tensorboard: what is written is what the run's own files hold, read back with
TensorBoard's event reader."""

import json

import pytest

from tests.helpers import make_spec, register_counting_reward


def _events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_tensorboard_gets_the_training_metrics_scores_and_grids(tmp_path):
    from bench.evaluate import evaluate_run
    from bench.train.runner import run_dir_for, train_run

    register_counting_reward()
    spec = make_spec("ddpo-2", num_steps=2, samples_per_epoch=8, budget=16, num_checkpoints=2, backbone="toy",
                     suite="toy", train_prompts="toy-seen")
    train_run(spec, tmp_path, progress=False, log_with="tensorboard")
    run = run_dir_for(spec, tmp_path)
    evaluate_run(run, ["aesthetic"], per_prompt=1, progress=False, log_with="tensorboard")
    acc = _events(run / "tb")
    tags = acc.Tags()
    # per epoch: the metric rows of metrics.jsonl, at the reward queries spent
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    want = sorted((r["reward_queries"], r["value"]) for r in rows if r["metric"] == "reward_mean")
    got = sorted((e.step, e.value) for e in acc.Scalars("train/reward_mean"))
    assert [q for q, _ in want] == [8, 16] and [q for q, _ in got] == [8, 16]
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)
    assert {t for t in tags["scalars"] if t.startswith("train/")} >= {"train/reward_mean", "train/epoch_time_s"}
    # per checkpoint: the mean score of each prompt set, as in scores/<reward>.jsonl
    scores = [json.loads(line) for line in (run / "scores" / "aesthetic.jsonl").read_text().splitlines()]
    for pset in ("toy-seen", "toy-unseen", "toy-compositional"):
        for q in (0, 8, 16):
            vals = [r["value"] for r in scores if r["reward_queries"] == q and r["prompt_set"] == pset]
            event = next(e for e in acc.Scalars(f"eval/{pset}/aesthetic") if e.step == q)
            assert event.value == pytest.approx(sum(vals) / len(vals), rel=1e-6)
    # the fixed-seed grid of every checkpoint, decodable, at its step
    assert "grid" in tags["images"]
    grids = acc.Images("grid")
    assert sorted(g.step for g in grids) == [0, 8, 16] and all(g.width > 0 and g.height > 0 for g in grids)


def test_no_tracker_writes_no_event_files(tmp_path):
    from bench.train.runner import run_dir_for, train_run

    register_counting_reward()
    spec = make_spec("ddpo-2", num_steps=2, samples_per_epoch=8, budget=8)
    train_run(spec, tmp_path, progress=False)
    assert not (run_dir_for(spec, tmp_path) / "tb").exists()
