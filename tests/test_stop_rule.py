"""The stop rule (RunSpec.stop_level, study version 4): a run stops `stop_margin` checkpoint marks past the first
mark whose fixed-seed evaluation score of the training reward reaches the level; the check changes nothing about
the training it watches, and its number is the one evaluation computes for that checkpoint."""

import json
from dataclasses import replace

import pytest

from tests.helpers import make_spec, register_counting_reward


def _run(tmp_path, name, **stop):
    from bench.train.runner import train_run

    register_counting_reward()
    spec = replace(make_spec("ddpo-2", num_steps=3, samples_per_epoch=16, budget=40, num_checkpoints=4), **stop)
    train_run(spec, tmp_path / name, progress=False)
    run_dir = tmp_path / name / "runs" / spec.run_name
    rows = [json.loads(line) for line in (run_dir / "checkpoints.jsonl").read_text().splitlines()]
    return spec, run_dir, rows, json.loads((run_dir / "run.json").read_text())


def test_a_run_stops_its_margin_past_the_crossing_and_trains_as_without_the_rule(tmp_path, tiny_dir):
    _, _, plain, plain_row = _run(tmp_path, "plain")
    # every score is above -1e5: the first mark (10 queries) crosses, one more mark is trained, then it stops
    spec, run_dir, stopped, row = _run(tmp_path, "stopped", stop_level=-1e5, stop_margin=1, stop_per_prompt=1)
    assert [r["reward_queries"] for r in stopped] == [0, 10, 20]
    assert (row["status"], row["stopped_at"], row["stop_crossed_at"]) == ("finished", 20, 10)
    assert "stopped_at" not in plain_row and "stop_level" not in plain_row["config"]  # old runs keep their names
    # the check neither moves training (same LoRA bits, same generator stream) nor the compute counts
    for a, b in zip(plain, stopped):
        assert a["sha256"] == b["sha256"] and a["unet_forward"] == b["unet_forward"]
        assert a["reward_forwards"] == b["reward_forwards"] == a["reward_queries"]
    assert all("stop_score" in r for r in stopped[1:]) and "stop_score" not in stopped[0]
    # the score is evaluation's number for that checkpoint: the training prompts' fixed-seed images
    from bench.evaluate import evaluate_checkpoints
    from bench.spec.prompts import resolve_prompt_set
    from bench.train.runner import load_reward

    _, prompts = resolve_prompt_set(spec.train_prompts)
    scores = evaluate_checkpoints(run_dir, {"test-counting": load_reward("test-counting", spec.suite, "cpu")},
                                  {spec.train_prompts: prompts}, per_prompt=1, progress=False, shard=None,
                                  queries={10})
    assert len(scores) == len(prompts)
    assert stopped[1]["stop_score"] == pytest.approx(sum(r["value"] for r in scores) / len(scores), rel=1e-5)


@pytest.mark.slow
def test_a_level_never_reached_trains_to_the_cap_and_zero_margin_stops_at_the_crossing(tmp_path, tiny_dir):
    _, _, plain, _ = _run(tmp_path, "plain")
    _, _, capped, capped_row = _run(tmp_path, "capped", stop_level=1e5, stop_margin=0, stop_per_prompt=1)
    assert [r["sha256"] for r in capped] == [r["sha256"] for r in plain] and "stopped_at" not in capped_row
    _, _, rows, row = _run(tmp_path, "zero", stop_level=-1e5, stop_margin=0, stop_per_prompt=1)
    assert [r["reward_queries"] for r in rows] == [0, 10] and row["stopped_at"] == 10


@pytest.mark.slow
def test_in_a_lockstep_group_a_stopped_run_leaves_and_the_other_trains_on(tmp_path, tiny_dir):
    """Two seeds in one lockstep group share the level: the level is put between their stop scores at the first
    mark (read from a group that never stops), so one seed stops a mark later and the other trains to the cap.
    Both stop checks of a mark run as merged calls; after one run leaves, the other's calls run alone."""
    from bench.train.lockstep import train_group

    register_counting_reward()
    specs = [replace(make_spec("ddpo-2", num_steps=3, samples_per_epoch=16, budget=40, num_checkpoints=4, seed=s),
                     stop_level=1e5, stop_margin=0, stop_per_prompt=1) for s in (0, 1)]
    rows = train_group(specs, tmp_path / "probe")
    assert [r["status"] for r in rows] == ["finished", "finished"]

    def first_score(out, spec):
        lines = (out / "runs" / spec.run_name / "checkpoints.jsonl").read_text().splitlines()
        return json.loads(lines[1])["stop_score"]
    s0, s1 = (first_score(tmp_path / "probe", s) for s in specs)
    assert s0 != s1
    level = (s0 + s1) / 2
    specs = [replace(s, stop_level=level, stop_margin=1) for s in specs]
    rows = train_group(specs, tmp_path / "group")
    high = 0 if s0 > s1 else 1
    assert rows[high]["stopped_at"] == 20 and "stopped_at" not in rows[1 - high]
    assert [r["status"] for r in rows] == ["finished", "finished"]
    other = (tmp_path / "group" / "runs" / specs[1 - high].run_name / "checkpoints.jsonl").read_text().splitlines()
    assert [json.loads(line)["reward_queries"] for line in other] == [0, 10, 20, 30, 40]


@pytest.mark.slow
def test_a_run_can_stop_on_another_reward_than_it_trains_on(tmp_path, tiny_dir):
    """A planted control trains on a blend and stops on the proxy: here training on the counting reward and
    stopping on jpeg-compressibility, whose recorded score is evaluation's jpeg mean for that checkpoint."""
    from bench.evaluate import evaluate_checkpoints
    from bench.spec.prompts import resolve_prompt_set
    from bench.train.runner import load_reward

    spec, run_dir, rows, row = _run(tmp_path, "other", stop_level=-1e5, stop_margin=0, stop_per_prompt=1,
                                    stop_reward="jpeg-compressibility")
    assert row["stopped_at"] == 10 and spec.to_dict()["stop_reward"] == "jpeg-compressibility"
    _, prompts = resolve_prompt_set(spec.train_prompts)
    scores = evaluate_checkpoints(run_dir, {"jpeg": load_reward("jpeg-compressibility", spec.suite, "cpu")},
                                  {spec.train_prompts: prompts}, per_prompt=1, progress=False, shard=None,
                                  queries={10})
    assert rows[1]["stop_score"] == pytest.approx(sum(r["value"] for r in scores) / len(scores), rel=1e-6)
