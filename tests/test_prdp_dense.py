"""PRDP and dense-reward DPO: pairs, losses, step sampling, gradients, log-prob consistency, end to end."""

import math

import numpy as np
import pytest
import torch

from methods.dense_dpo import DenseDPO, bt_loss, dpo_logits, keep_sorted, kept_positions, step_distribution
from methods.prdp import PRDP, prdp_loss, prompt_pairs
from tests.conftest import run_cli


# ------------------------------------------------------------------ PRDP
def test_pairs_are_same_prompt_ordered_and_ties_dropped():
    groups = np.array([0, 0, 0, 1, 1])
    rewards = np.array([1.0, 3.0, 1.0, 2.0, 2.0])
    a, b = prompt_pairs(groups, rewards)
    # group 0: (1 beats 0), (0 ties 2: dropped), (1 beats 2); group 1: a tie, dropped
    assert a.tolist() == [1, 1] and b.tolist() == [0, 2]
    a, b = prompt_pairs(np.array([0, 1]), np.array([1.0, 0.0]))
    assert len(a) == 0  # different prompts never pair


def test_prdp_loss_is_zero_at_the_optimum():
    beta = 0.5
    rewards = torch.tensor([1.0, 0.0, 0.5])
    a, b = prompt_pairs(np.zeros(3), rewards.numpy())
    # trajectory log-ratios (means over T) of 2, 0, 1: every difference equals dr / beta
    ratio = torch.tensor([[1.0, 3.0], [0.0, 0.0], [2.0, 0.0]])
    loss, _ = prdp_loss(ratio, ratio, rewards, torch.as_tensor(a), torch.as_tensor(b), beta, eps=1e-3)
    assert loss.item() == 0.0
    off, _ = prdp_loss(ratio + torch.tensor([[0.1], [0.0], [0.0]]), ratio, rewards, torch.as_tensor(a),
                       torch.as_tensor(b), beta, eps=1e-3)
    assert off.item() > 0


def test_prdp_clipped_unclipped_max_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0])  # two prompts: pairs (0, 1) and (2, 3), targets 1 (beta 1)
    a, b = torch.tensor([0, 2]), torch.tensor([1, 3])
    old = torch.zeros(4, 2)
    ratio = torch.tensor([[0.5, 0.5], [0.0, 0.0], [-0.5, -0.5], [0.0, 0.0]], requires_grad=True)
    loss, frac = prdp_loss(ratio, old, rewards, a, b, beta=1.0, eps=0.1)
    # pair 1: unclipped (0.5-1)^2 = 0.25, clipped (0.1-1)^2 = 0.81 -> 0.81
    # pair 2: unclipped (-0.5-1)^2 = 2.25, clipped (-0.1-1)^2 = 1.21 -> 2.25
    assert loss.item() == pytest.approx((0.81 + 2.25) / 2)
    assert frac.item() == 0.5
    loss.backward()
    # the clipped branch of pair 1 is saturated: no gradient; pair 2 pulls sample 2 up with 2*(-1.5)/2/2 per step
    assert torch.equal(ratio.grad[0], torch.zeros(2))
    torch.testing.assert_close(ratio.grad[2], torch.full((2,), -0.75))


def _ctx(backbone, method, num_steps=3, **hp):
    from tests.helpers import make_spec

    spec = make_spec(method, reward="r", num_steps=num_steps, samples_per_epoch=8, budget=8, train_batch_size=2,
                     sample_batch_size=4, overrides={k: str(v) for k, v in hp.items()})
    return type("Ctx", (), dict(spec=spec, hp=spec.hp, backbone=backbone, device=backbone.device, world_size=1,
                                rng=np.random.default_rng(0)))()


def _perturb_lora(backbone, std=0.05, seed=0):
    from bench.train.neurons import lora_layers

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, up, _ in lora_layers(backbone.unet).values():
            up.weight.copy_(torch.randn(up.weight.shape, generator=g) * std)


def test_prdp_recomputes_sampling_log_probs_and_two_pass_gradient_is_exact(backbone):
    _perturb_lora(backbone)  # theta_old != pretrained, so the reference pass matters
    method = PRDP(_ctx(backbone, "prdp", num_steps=5))
    traj = backbone.sample(["cat", "cat", "dog", "dog"], generator=torch.Generator().manual_seed(0), batch_size=4)
    # theta = theta_old: recomputed log-probs (CFG, stored uncond embeddings) equal the sampling-time ones
    # (float32: another batch composition moves a step log-prob of ~-1 by up to ~1e-6)
    torch.testing.assert_close(method.step_log_probs(traj), traj.log_probs, atol=5e-6, rtol=0)
    ref = method.step_log_probs(traj, reference=True)
    assert (ref - traj.log_probs).abs().max() > 1e-5
    old_ratio = traj.log_probs - ref
    rewards = torch.tensor([0.3, 0.1, 0.5, 0.9])
    a, b = (torch.as_tensor(x) for x in prompt_pairs(np.array([0, 0, 1, 1]), rewards.numpy()))
    params = backbone.trainable_parameters()
    _perturb_lora(backbone, std=0.05, seed=1)  # move theta away from theta_old so the clip matters
    # direct: all T steps in one graph
    lp = torch.stack([backbone.log_prob(traj, torch.full((4,), j)) for j in range(5)], 1)
    loss, _ = prdp_loss(lp - ref, old_ratio, rewards, a, b, beta=0.01, eps=1e-3)
    direct = torch.autograd.grad(loss, params)
    # two passes, as the adapter does
    table = (method.step_log_probs(traj) - ref).requires_grad_(True)
    prdp_loss(table, old_ratio, rewards, a, b, beta=0.01, eps=1e-3)[0].backward()
    for p in params:
        p.grad = None
    method._backprop_steps(traj, table.grad)
    for g, p in zip(direct, params):
        # float32 sums in other orders and batch shapes: agree to 1e-4 of the tensor's own scale
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-4 * float(g.abs().max()))
    assert sum(float(g.abs().sum()) for g in direct) > 0


def test_prdp_beta_is_set_on_the_rewards_own_scale():
    """beta = sigma_within / (E * eps): by hand on two groups."""
    from methods.prdp import PRDP, within_prompt_std

    groups = np.array([0, 0, 1, 1])
    rewards = np.array([1.0, 3.0, 5.0, 5.5])
    ss, count = within_prompt_std(groups, rewards)
    # group 0: mean 2, deviations +-1 -> 2; group 1: mean 5.25, deviations +-0.25 -> 0.125
    assert (ss, count) == (pytest.approx(2.125), 4)
    method = PRDP.__new__(PRDP)
    method.hp = {"beta_nats_per_unit": 256 * 10}  # D = 4 x 8 x 8 latent dims, T = 10 steps
    method.ctx = type("C", (), {"gather_array": staticmethod(lambda a: np.asarray(a))})()
    beta = method.set_beta(groups, rewards)
    sigma = math.sqrt(2.125 / 4)
    assert beta == pytest.approx(sigma * 2560)
    # per nat of trajectory KL beta is sigma: a one-sigma pair's target is one nat of trajectory log-ratio,
    # i.e. 1 / (D T) of our averaged log-ratio
    assert sigma / beta * 2560 == pytest.approx(1.0)


def test_prdp_update_plans():
    """K updates per epoch by the schedule (round(K x queries so far), the fraction carried), each on every
    group (the paper); the `groups` ablation splits the groups, at most one update each."""
    from methods.prdp import PRDP

    method = PRDP.__new__(PRDP)
    method.ctx = type("C", (), {"world_size": 1, "rng": np.random.default_rng(0), "queries_before": 0})()
    method.hp = {"updates_per_query": 2.6 / 64, "update_data": "groups"}
    plan = method.plan([0, 1, 2, 3], 64)
    assert len(plan) == 3 and sorted(g for p in plan for g in p) == [0, 1, 2, 3]  # disjoint, round(2.6) updates
    method.hp = {"updates_per_query": 8.0 / 64, "update_data": "groups"}
    assert len(method.plan([0, 1, 2, 3], 64)) == 4  # at most one update per group
    method.hp = {"updates_per_query": 8.0 / 64, "update_data": "whole"}
    whole = method.plan([0, 1, 2, 3], 64)
    assert len(whole) == 8 and all(sorted(p) == [0, 1, 2, 3] for p in whole)  # every update sees every pair
    assert len(method.plan([0, 1], 32)) == 4  # an epoch cut to half makes half the updates
    # 2.6 per 64 queries: epochs after 0, 64, 128 queries get round(2.6) = 3, round(5.2) - 3 = 2, 8 - 5 = 3
    method.hp = {"updates_per_query": 2.6 / 64, "update_data": "whole"}
    counts = []
    for q in (0, 64, 128):
        method.ctx.queries_before = q
        counts.append(len(method.plan([0, 1, 2, 3], 64)))
    assert counts == [3, 2, 3]


def test_dense_dpo_pairs_per_update_alternate_to_an_exact_mean():
    """2.5 pairs per update: 3, 2, 3, 2 (running total round(2.5 k)); whole counts stay whole."""
    method = DenseDPO.__new__(DenseDPO)
    got = []
    for p in (2.5, 2.0, 1.0 / 3 + 1):
        method.hp = {"pairs_per_step": p}
        seq = []
        for g in range(6):
            method.gradient_updates = g
            seq.append(method.pairs_this_update())
        got.append(seq)
    assert got[0] == [3, 2, 3, 2, 3, 2] and got[1] == [2] * 6
    assert got[2] == [1, 2, 1, 1, 2, 1] and sum(got[2]) == 8  # 6 x 4/3


def test_prdp_logs_beta_and_the_gap_to_target(tmp_path):
    import json

    from bench.train.runner import train_run
    from tests.helpers import make_spec, register_counting_reward

    register_counting_reward()
    # update_data=groups with one group per epoch: one update, so epoch 1's gap is taken at theta_old
    spec = make_spec("prdp", num_steps=3, samples_per_epoch=16, budget=32,
                     overrides={"lr": "1e-2", "update_data": "groups"})
    train_run(spec, tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "runs" / spec.run_name / "metrics.jsonl").read_text().splitlines()]
    got = {(r["epoch"], r["metric"]): r["value"] for r in rows}
    assert got[(1, "beta")] == got[(2, "beta")] > 0  # set on the first epoch, then fixed
    assert got[(1, "target_gap")] > 0
    assert got[(1, "ratio_gap")] == pytest.approx(0.0, abs=1e-7)  # epoch 1: theta_old is the pretrained policy
    assert got[(2, "ratio_gap")] != 0
    assert got[(2, "gap_to_target")] == pytest.approx(got[(2, "ratio_gap")] / got[(2, "target_gap")])
    assert (1, "gap_moved") not in got  # groups: each update fits other pairs, so no movement is defined


# ------------------------------------------------------------------ dense-reward DPO
def test_step_sampling_puts_weight_gamma_k_on_k():
    method = DenseDPO.__new__(DenseDPO)
    method.ctx = type("C", (), {"rng": np.random.default_rng(0)})()
    method.hp = {"steps_per_pair": 4}
    method.p_steps = step_distribution(6, 0.7)
    k = method.sample_steps(50_000).numpy().ravel()
    freq = np.bincount(k, minlength=6) / k.size
    expected = 0.7 ** np.arange(6) / np.sum(0.7 ** np.arange(6))
    np.testing.assert_allclose(freq, expected, atol=0.005)
    assert freq[0] > freq[-1] * 5  # k = 0, the noisiest step, weighs most
    assert kept_positions(12).tolist() == [0, 2, 5, 8, 11] and kept_positions(3).tolist() == [0, 1, 2]
    # the scale rule keeps the discount's horizon: gamma^(50/T)
    from tests.helpers import make_spec
    for T, gamma in ((50, 0.9), (25, 0.81), (10, 0.9 ** 5)):
        hp = make_spec("dense-dpo", num_steps=T, samples_per_epoch=24, budget=24).hp
        assert hp["gamma"] == pytest.approx(gamma)


def test_kept_rollouts_are_ranked_ascending_as_the_reference():
    rng = np.random.default_rng(0)
    rewards = rng.permutation(12).astype(float)  # rewards 0..11 in random order: value = rank from the worst
    kept = keep_sorted(rewards, 5, rng)
    # ascending sort, positions [0, 2, 5, 8, 11]: the worst, ranks 2, 5, 8 and the best
    assert sorted(rewards[kept].tolist()) == [0.0, 2.0, 5.0, 8.0, 11.0]
    assert rewards[kept].tolist() == [0.0, 2.0, 5.0, 8.0, 11.0]  # in that order
    # a best-first sort would have kept ranks 11, 9, 6, 3, 0: the middle three differ
    assert set(rewards[kept]) != {11.0, 9.0, 6.0, 3.0, 0.0}


def test_bradley_terry_loss_hand_built_pair():
    lw, lw0 = torch.tensor([[0.003]]), torch.tensor([[0.0]])
    ll, ll0 = torch.tensor([[-0.0002]]), torch.tensor([[0.0]])
    logit_w = dpo_logits(lw, lw0, beta_tilde=12.5, delta=5e-4)  # clamped to +5e-4 -> 0.00625
    logit_l = dpo_logits(ll, ll0, beta_tilde=12.5, delta=5e-4)  # -0.0002 -> -0.0025
    assert logit_w.item() == pytest.approx(0.00625) and logit_l.item() == pytest.approx(-0.0025)
    assert bt_loss(logit_w, logit_l).item() == pytest.approx(math.log1p(math.exp(-0.00875)), rel=1e-6)
    # the M sampled steps are averaged
    two = dpo_logits(torch.tensor([[1e-4, 3e-4]]), torch.zeros(1, 2), 10.0, 1.0)
    assert two.item() == pytest.approx(10.0 * 2e-4)


def test_swapping_winner_and_loser_flips_the_gradient(backbone):
    method = DenseDPO(_ctx(backbone, "dense-dpo", num_steps=5))
    traj = backbone.sample(["cat", "cat"], generator=torch.Generator().manual_seed(0), batch_size=2)
    w, l = traj.index([0]), traj.index([1])
    steps = torch.tensor([[0, 2]])
    # the sampled log-probs are recomputed exactly at theta = theta_old
    torch.testing.assert_close(method.pair_log_probs(traj, torch.tensor([[0, 2], [1, 4]])),
                               traj.log_probs[[[0, 0], [1, 1]], [[0, 2], [1, 4]]], atol=1e-6, rtol=0)
    params = backbone.trainable_parameters()

    def grads(first, second):
        with torch.no_grad():
            i1, i2 = method.pair_log_probs(first, steps, True), method.pair_log_probs(second, steps, True)
        loss = bt_loss(dpo_logits(method.pair_log_probs(first, steps), i1, 12.5, 5e-4),
                       dpo_logits(method.pair_log_probs(second, steps), i2, 12.5, 5e-4))
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])

    g_wl, g_lw = grads(w, l), grads(l, w)
    assert g_wl.abs().max() > 0
    torch.testing.assert_close(g_wl, -g_lw, rtol=1e-4, atol=1e-9)


# ------------------------------------------------------------------ end to end on the default backbone
@pytest.mark.slow  # their budgets and resume are in test_budget and test_resume; their losses in this file
def test_prdp_and_dense_dpo_end_to_end_on_toy(tmp_path):
    args = ["run", "--methods", "prdp,dense-dpo", "--reward", "aesthetic", "--budget", "32", "--num-steps", "3",
            "--samples-per-epoch", "16", "--train-batch-size", "8", "--num-checkpoints", "2",
            "--update-multiplier", "8", "--out", str(tmp_path), "--no-progress", "--no-eval",
            "--workers", "1"]  # one process: grid workers would each pay the imports again (test_grid covers them)
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    import duckdb

    con = duckdb.connect(str(tmp_path / "bench.duckdb"), read_only=True)
    rows = con.execute("""select r.method, max(c.reward_queries), max(c.gradient_updates), count(*)
                          from checkpoints c join runs r using (run_id) group by 1 order by 1""").fetchall()
    pairs = con.execute("""select min(t.value) from train_metrics t join runs r using (run_id)
                           where r.method = 'prdp' and t.metric = 'pairs'""").fetchone()[0]
    moved = con.execute("""select list(t.value order by t.epoch) from train_metrics t join runs r using (run_id)
                           where r.method = 'prdp' and t.metric = 'gap_moved'""").fetchone()[0]
    con.close()
    # 2 epochs of 16 at m = 8 (half the toy's, to keep the test short): PRDP 8 * 10 / 512 * 16 = 2.5 updates
    # per epoch, each on all pairs of its one group, 5 over the run; dense-DPO 8 * 4000/24000 updates per query:
    # round(21.33) = 21, then round(42.67) - 21 = 22 (the fraction carried: exactly the rule's 42.67 over the
    # run, rounded)
    assert rows == [("dense-dpo", 32, 43, 3), ("prdp", 32, 5, 3)]
    assert pairs >= 110  # all C(16, 2) = 120 same-prompt pairs, minus ties
    # both epochs make 2+ updates on the same pairs; their targets dr / beta (~1e4) lie far above the gaps
    # (~1e-3), so descending the loss raises the pairs' mean gap: each epoch's fit moves it toward the targets
    assert len(moved) == 2 and all(m > 0 for m in moved), moved
