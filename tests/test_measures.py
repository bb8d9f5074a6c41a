"""Measurements beside the rewards: KL to the pretrained model, diversity, compute counts, diagnostics."""

import json
import math

import pytest
import torch

from bench.train.sampling import ddim_mean_std, step_kl
from bench.measures.diversity import attribute_entropy, entropy, pairwise_cosine_distance


def test_step_kl_is_the_kl_of_two_known_gaussians():
    g = torch.Generator().manual_seed(0)
    mean, ref = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    std = torch.full((3, 1, 1, 1), 0.7)
    got = step_kl(mean, ref, std)
    want = torch.distributions.kl_divergence(torch.distributions.Normal(mean, std.expand_as(mean)),
                                             torch.distributions.Normal(ref, std.expand_as(ref))).mean(dim=(1, 2, 3))
    torch.testing.assert_close(got, want)
    # by hand: one dimension, means 1 and 0, sigma 0.5 -> 1 / (2 * 0.25) = 2
    assert step_kl(torch.ones(1, 1), torch.zeros(1, 1), torch.full((1, 1), 0.5)).item() == pytest.approx(2.0)


def test_sampled_kl_equals_the_independent_sum_over_steps(backbone):
    traj0 = backbone.sample(["cat", "dog"], generator=torch.Generator().manual_seed(1), batch_size=2,
                            kl_to_pretrained=True)
    assert torch.equal(traj0.kl_to_pretrained, torch.zeros(2))  # LoRA B = 0: the pretrained policy itself
    with torch.no_grad():
        for p in backbone.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 0.1)
    traj = backbone.sample(["cat", "dog"], generator=torch.Generator().manual_seed(1), batch_size=2,
                           kl_to_pretrained=True)
    total = torch.zeros(2)
    with torch.no_grad():
        for j, t in enumerate(traj.timesteps):
            x = traj.latents[:, j]
            eps = backbone.predict_noise(x, t, traj.prompt_embeds, traj.negative_prompt_embeds)
            with backbone.pretrained():
                eps_ref = backbone.predict_noise(x, t, traj.prompt_embeds, traj.negative_prompt_embeds)
            mean, std = ddim_mean_std(backbone.scheduler, eps, t, x, backbone.eta)
            ref_mean, _ = ddim_mean_std(backbone.scheduler, eps_ref, t, x, backbone.eta)
            total += ((mean - ref_mean) ** 2 / (2 * std ** 2)).mean(dim=(1, 2, 3))
    torch.testing.assert_close(traj.kl_to_pretrained, total, rtol=1e-5, atol=1e-9)
    assert (traj.kl_to_pretrained > 0).all()
    # the KL pass draws no noise: the images equal a sampling without it
    plain = backbone.sample(["cat", "dog"], generator=torch.Generator().manual_seed(1), batch_size=2)
    assert torch.equal(plain.images, traj.images)


def test_diversity_by_hand():
    same = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    # identical directions within each prompt: distance 0
    assert pairwise_cosine_distance(same, ["a", "a", "b", "b"]) == pytest.approx(0.0, abs=1e-7)
    # prompt a: orthogonal pair -> 1; prompt b: opposite pair -> 2; mean 1.5
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, -1.0]])
    assert pairwise_cosine_distance(e, ["a", "a", "b", "b"]) == pytest.approx(1.5)
    # three images: pairs (0,1) 1 - 0 = 1, (0,2) 1 - 1/sqrt2, (1,2) 1 - 1/sqrt2
    three = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert pairwise_cosine_distance(three, ["p"] * 3) == pytest.approx((1 + 2 * (1 - 1 / math.sqrt(2))) / 3)
    assert pairwise_cosine_distance(three, ["p", "q", "r"]) is None  # one image per prompt: undefined
    assert entropy(["x", "x", "y", "y"]) == pytest.approx(math.log(2))
    assert entropy(["x"] * 5) == 0.0
    # prompt a collapsed (0), prompt b two colours out of two images (log 2)
    assert attribute_entropy(["red", "red", "red", "blue"], ["a", "a", "b", "b"]) == pytest.approx(math.log(2) / 2)


def test_toy_attributes_of_renders():
    import numpy as np

    from bench.train.runner import load_reward
    from bench.toy.render import draw, scene_for_caption

    rng = np.random.default_rng(0)
    captions = ["a red circle on the left", "a red circle on the right", "a blue square", "a blue square"]
    x = torch.from_numpy(np.stack([draw(scene_for_caption(c, rng)) for c in captions])).permute(0, 3, 1, 2) / 255
    gold = load_reward("gold-fidelity", "toy", "cpu")
    attrs = gold.attributes(x.float())  # what the diversity measures read (bench/measures/diversity.py)
    assert attrs["colour"][:2] == ["red", "red"] and attrs["colour"][2:] == ["blue", "blue"]
    assert attrs["position"][0] % 3 == 0 and attrs["position"][1] % 3 == 2  # left column, right column


def test_compute_counts_by_hand(tmp_path):
    """DDPO-2, T=3, one epoch of 4 samples (one update of 4 samples x 3 steps): sampling 4 x 3 guided
    calls -> 24 forward rows; training the same 24 forward and 24 backward; 4 decodes; 4 reward forwards."""
    from bench.train.runner import train_run
    from tests.helpers import make_spec, register_counting_reward

    register_counting_reward()
    spec = make_spec("ddpo-2", num_steps=3, samples_per_epoch=4, budget=4, sample_batch_size=4, multiplier=32.0)
    assert (spec.hp["update_samples"], spec.hp["update_steps"]) == (4, 3)
    train_run(spec, tmp_path, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "runs" / spec.run_name / "checkpoints.jsonl").read_text().splitlines()]
    assert {k: rows[0][k] for k in ("unet_forward", "unet_backward", "vae_decodes", "reward_forwards")} == \
        {"unet_forward": 0, "unet_backward": 0, "vae_decodes": 0, "reward_forwards": 0}
    last = rows[-1]
    assert (last["unet_forward"], last["unet_backward"], last["vae_decodes"], last["reward_forwards"],
            last["encoder_forwards"]) == (48, 24, 4, 4, 0)


def test_tdpo_counts_its_critic_encoder_calls_and_logs_diagnostics(tmp_path):
    from bench.train.runner import train_run
    from tests.helpers import make_spec, register_counting_reward

    register_counting_reward()
    spec = make_spec("tdpo", num_steps=3, samples_per_epoch=4, budget=8, sample_batch_size=4, multiplier=64.0)
    train_run(spec, tmp_path, progress=False)
    run = tmp_path / "runs" / spec.run_name
    last = [json.loads(x) for x in (run / "checkpoints.jsonl").read_text().splitlines()][-1]
    assert last["encoder_forwards"] == 8 * 3  # every x_T .. x_1 of every sample, outside the 8 queries
    assert last["reward_forwards"] == 8
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    got = {(m["epoch"], m["metric"]): m["value"] for m in metrics}
    for epoch in (1, 2):  # the first update runs at the sampling parameters: ratio 1
        assert got[(epoch, "ratio_at_old")] == pytest.approx(1.0, abs=1e-5)
        assert got[(epoch, "ratio_at_old_maxdev")] < 1e-5
    assert (2, "critic_explained_variance") in got
    assert {k for (e, k) in got if e == 2 and k.startswith("critic_ev_step_")} == \
        {"critic_ev_step_00", "critic_ev_step_01", "critic_ev_step_02"}  # one per denoising step (T = 3)


def test_explained_variance_by_hand():
    import numpy as np

    from methods.tdpo import explained_variance

    returns = np.array([1.0, -1.0, 1.0, -1.0])
    assert explained_variance(returns, returns) == 1.0
    assert explained_variance(returns, np.zeros(4)) == 0.0
    assert explained_variance(returns, -returns) == pytest.approx(-3.0)  # var(2r) / var(r) = 4
    assert explained_variance(np.ones(3), np.zeros(3)) is None


def test_explained_variance_per_step_by_hand():
    import numpy as np

    from methods.tdpo import explained_variance_per_step

    returns = np.array([[1.0, 1.0], [-1.0, 3.0]])
    values = np.array([[1.0, 0.0], [-1.0, 0.0]])  # step 0 predicted exactly, step 1 by a constant
    ev = explained_variance_per_step(returns, values)
    assert ev == {"critic_ev_step_00": 1.0, "critic_ev_step_01": 0.0}


def test_the_report_prints_the_critic_and_its_manipulation_check(tmp_path):
    """The critic's explained variance per method (mean over epochs, then seeds; last epoch; first, middle and
    last step) from train_metrics, and the plan's manipulation-check sentence only below its declared threshold."""
    from bench.report.build import critic_rows, manipulation_check
    from bench.spec.plan import ComparisonPlan
    from bench.store.database import connect

    con = connect(tmp_path / "b.duckdb")
    for run, method, evs in (("a", "tdpo", (0.1, 0.3)), ("b", "tdpo", (0.2, 0.2)), ("c", "tdpo-r", (0.6, 0.8))):
        con.execute("INSERT INTO runs (run_id, config_hash, method, status) VALUES (?, 'h', ?, 'finished')",
                    [run, method])
        for epoch, v in enumerate(evs, 1):
            con.execute("INSERT INTO train_metrics VALUES (?, ?, ?, 'critic_explained_variance', ?)",
                        [run, epoch, 32 * epoch, v])
            for k, sv in enumerate((v - 0.1, v, v + 0.1)):
                con.execute("INSERT INTO train_metrics VALUES (?, ?, ?, ?, ?)",
                            [run, epoch, 32 * epoch, f"critic_ev_step_{k:02d}", sv])
    rows, means = critic_rows(con)
    con.close()
    # tdpo: runs average 0.2 and 0.2 -> 0.2; last epochs 0.3 and 0.2 -> 0.25; steps 0.1, 0.2, 0.3
    assert rows == [("tdpo", "2", "0.200", "0.250", "0.10", "0.20", "0.30"),
                    ("tdpo-r", "1", "0.700", "0.800", "0.60", "0.70", "0.80")]
    plan = ComparisonPlan(name="t", version=1, declared="test", level_setters="all", primary=(("tdpo-r", "tdpo"),),
                          primary_score="gold-aesthetic", primary_prompts="seen", critic_ev_threshold=0.25)
    assert manipulation_check(means, plan) == (
        "The critic has no leverage here: this comparison does not test the reset (the critic's explained variance "
        "of the return, mean over epochs and seeds: tdpo 0.20; plan t v1 declares 0.25).")
    assert manipulation_check(means, ComparisonPlan(**{**plan.__dict__, "critic_ev_threshold": 0.15})) is None
    assert manipulation_check(means, ComparisonPlan(**{**plan.__dict__, "critic_ev_threshold": None})) is None
