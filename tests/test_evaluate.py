"""Fixed-seed checkpoint evaluation."""

import json

import pytest

from bench.spec.runspec import RunSpec
from tests.helpers import CountingReward, make_spec, register_counting_reward


def tiny_spec(method, seed):
    return make_spec(method, num_steps=2, samples_per_epoch=8, budget=16, num_checkpoints=2, seed=seed,
                     overrides={"lr": "0.05"})


def test_spec_round_trips_through_its_config_json():
    spec = tiny_spec("ddpo-100", 3)
    again = RunSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and again.config_hash == spec.config_hash


def test_same_noise_across_runs_and_checkpoints(tmp_path, tiny_dir):
    from bench.evaluate import evaluate_checkpoints, noise_seed
    from bench.train.runner import run_dir_for, train_run

    register_counting_reward()
    rows = {}
    for method, seed in (("ddpo-2", 0), ("ddpo-100", 1)):
        spec = tiny_spec(method, seed)
        train_run(spec, tmp_path, progress=False)
        rows[method] = evaluate_checkpoints(run_dir_for(spec, tmp_path), {"brightness": CountingReward()},
                                            {"pair": ["cat", "dog"]}, per_prompt=2, progress=False)
    for method, rs in rows.items():
        assert sorted({r["reward_queries"] for r in rs}) == [0, 8, 16]
        assert len(rs) == 3 * 2 * 2
        shard = tmp_path / "runs" / rs[0]["run_id"] / "scores" / "eval.jsonl"
        assert len(shard.read_text().splitlines()) == 12
    at0 = [{(r["prompt"], r["sample_index"]): r["value"] for r in rs if r["reward_queries"] == 0}
           for rs in rows.values()]
    assert at0[0] == at0[1]  # the pretrained model, the same noise: identical images, whatever the run
    assert len(set(at0[0].values())) == 4  # ... and different noise for each (prompt, sample)
    late = {(r["prompt"], r["sample_index"]): r["value"] for r in rows["ddpo-2"] if r["reward_queries"] == 16}
    assert late != at0[0]  # training changed the images
    assert noise_seed(1, "a", "cat", 0) != noise_seed(1, "a", "cat", 1) != noise_seed(2, "a", "cat", 1)


def test_batched_fixed_seed_images_equal_one_at_a_time(backbone):
    """Per-sample generators: an evaluation image does not depend on its batch, and a
    batch of one with generator g draws exactly what `generator=g` draws."""
    import torch

    from bench.evaluate import noise_seed, sample_fixed

    prompts = ["cat", "dog", "frog"]
    batched, keys = sample_fixed(backbone, "s", prompts, per_prompt=2, eval_seed=7, batch_size=4)
    single, keys1 = sample_fixed(backbone, "s", prompts, per_prompt=2, eval_seed=7, batch_size=1)
    assert keys == keys1 == [(p, i) for p in prompts for i in range(2)]
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)
    g = torch.Generator().manual_seed(noise_seed(7, "s", "dog", 1))
    plain = backbone.sample(["dog"], generator=g, batch_size=1).images
    torch.testing.assert_close(batched[3:4], plain, atol=1e-5, rtol=0)
    assert (batched[0] - batched[1]).abs().max() > 1e-3  # different seeds, different images


def test_scores_do_not_depend_on_the_process_thread_count():
    """A worker (1 thread), a serial run (all cores) and a re-evaluation must write the same score
    bytes: scoring runs single-threaded. The toy aesthetic head's GEMMs differ in the 7th digit
    between 1 and 2 threads when left alone, so this fails without the fix."""
    import torch

    from bench.evaluate import _score_rows
    from bench.train.runner import load_reward

    g = torch.Generator().manual_seed(3)
    images = torch.rand(96, 3, 32, 32, generator=g)
    keys = [(f"a red shape {i % 12}", i // 12) for i in range(96)]
    rewards = {n: load_reward(n, "toy", "cpu") for n in ("aesthetic", "pickscore", "hpsv2")}
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _score_rows("r", 8, rewards, "toy-seen", images, keys, 2024)
        torch.set_num_threads(2)
        two = _score_rows("r", 8, rewards, "toy-seen", images, keys, 2024)
        assert torch.get_num_threads() == 2  # restored afterwards
    finally:
        torch.set_num_threads(before)
    assert [r["value"] for r in one] == [r["value"] for r in two]


def test_drift_metrics_on_images_of_known_brightness_and_saturation():
    """Grey 0.5: luma 0.5, saturation 0; pure red: luma 0.299, saturation 1; black: 0 and 0 (not NaN); a
    latent of 2s: x0^2 = 4. The set means are the means over images."""
    import torch

    from bench.measures.drift import drift_metrics

    grey = torch.full((1, 3, 4, 4), 0.5)
    red = torch.zeros(1, 3, 4, 4)
    red[:, 0] = 1.0
    black = torch.zeros(1, 3, 4, 4)
    m = drift_metrics(torch.cat([grey, red, black]), torch.full((3, 4, 2, 2), 2.0))
    assert m["drift_brightness"] == pytest.approx((0.5 + 0.299 + 0.0) / 3)
    assert m["drift_saturation"] == pytest.approx((0.0 + 1.0 + 0.0) / 3)
    assert m["drift_latent_sq"] == pytest.approx(4.0)
    assert "drift_latent_sq" not in drift_metrics(grey)
    # half the pixels of a grey image turned pure blue: luma (0.5 + 0.114) / 2, saturation 1/2
    half = grey.clone()
    half[:, :, :2] = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1)
    h = drift_metrics(half)
    assert h["drift_brightness"] == pytest.approx((0.5 + 0.114) / 2) and h["drift_saturation"] == pytest.approx(0.5)
