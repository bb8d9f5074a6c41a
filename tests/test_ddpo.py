"""Stat tracker, PPO loss and the DDPO update schedule, against hand-computed values."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bench.spec.catalog import methods
from bench.train.sampling import Trajectory
from bench.train.stat_tracker import PerPromptStatTracker, batch_normalize
from methods.ddpo import DDPO, ppo_clipped_loss


def test_stat_tracker_hand_computed():
    tr = PerPromptStatTracker(buffer_size=3, min_count=2)
    adv = tr.update(["a", "a", "b"], [1.0, 3.0, 5.0])
    # 'a': buffer [1,3] has min_count values -> its own stats: mean 2, std 1
    # 'b': buffer [5] is short -> whole batch: mean 3, std sqrt(8/3)
    batch_std = math.sqrt(8 / 3)
    np.testing.assert_allclose(adv, [-1 / (1 + 1e-6), 1 / (1 + 1e-6), 2 / (batch_std + 1e-6)], rtol=1e-12)
    # second epoch: the buffer is extended BEFORE the stats, and keeps only 3 values
    adv = tr.update(["a", "b"], [7.0, 9.0])
    # 'a' buffer -> [3? no: deque(maxlen=3) of 1,3,7] = [1,3,7]: mean 11/3, std sqrt(((1-11/3)^2+(3-11/3)^2+(7-11/3)^2)/3)
    a_buf = np.array([1.0, 3.0, 7.0])
    b_buf = np.array([5.0, 9.0])
    np.testing.assert_allclose(adv, [(7 - a_buf.mean()) / (a_buf.std() + 1e-6),
                                     (9 - b_buf.mean()) / (b_buf.std() + 1e-6)], rtol=1e-12)
    tr.update(["a"], [0.0])
    assert list(tr.stats["a"]) == [3.0, 7.0, 0.0]


def test_batch_normalize():
    np.testing.assert_allclose(batch_normalize([1.0, 2.0, 3.0]), np.array([-1, 0, 1]) / (math.sqrt(2 / 3) + 1e-8))


def test_ppo_clipped_loss_hand_computed():
    old = torch.zeros(3)
    new = torch.tensor([1e-3, -1e-3, 0.0])
    adv = torch.tensor([2.0, -1.0, 10.0])
    loss, kl, clipfrac = ppo_clipped_loss(new, old, adv, clip_range=1e-4, adv_clip_max=5.0)
    r0, r1 = math.exp(1e-3), math.exp(-1e-3)
    # sample 0: A=2, ratio above 1+eps: max(-2*r0, -2*(1+1e-4)) = -2.0002
    # sample 1: A=-1, ratio below 1-eps: max(r1, 1-1e-4) = 0.9999
    # sample 2: A clamped to 5, ratio 1: -5
    per = [max(-2 * r0, -2 * 1.0001), max(1 * r1, 1 * 0.9999), -5.0]
    assert per[0] == pytest.approx(-2.0002) and per[1] == pytest.approx(0.9999)
    assert loss.item() == pytest.approx(sum(per) / 3, rel=1e-6)
    assert kl.item() == pytest.approx(0.5 * (1e-6 + 1e-6) / 3, rel=1e-5)
    assert clipfrac.item() == pytest.approx(2 / 3)
    # gradient flows only through unclipped terms: sample 2 (ratio 1, inside the clip) only
    new = new.clone().requires_grad_(True)
    ppo_clipped_loss(new, old, adv, 1e-4, 5.0)[0].backward()
    np.testing.assert_allclose(new.grad.numpy(), [0.0, 0.0, -5.0 / 3], rtol=1e-6, atol=1e-12)


# ------------------------------------------------------------------ update schedule
class FakeBackbone:
    """A backbone whose log-prob is a cheap differentiable function of one parameter.
    Sample i's latents hold the value i, so every call shows which (sample, step) rows it got."""

    def __init__(self, T):
        self.num_steps = T
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.device = torch.device("cpu")
        self.log_prob_calls = []
        self.sampled = 0

    def trainable_parameters(self):
        return [self.w]

    def sample(self, prompts, generator=None, batch_size=16, latents=None):
        n, T = len(prompts), self.num_steps
        ids = torch.arange(self.sampled, self.sampled + n, dtype=torch.float32).view(n, 1, 1).expand(n, T, 1).clone()
        self.sampled += n
        return Trajectory(prompts=list(prompts), prompt_embeds=torch.zeros(n, 2, 4),
                          negative_prompt_embeds=torch.zeros(n, 2, 4), latents=ids,
                          next_latents=torch.zeros(n, T, 1), log_probs=torch.zeros(n, T),
                          timesteps=torch.arange(T), images=torch.rand(n, 3, 4, 4, generator=generator))

    def log_prob(self, traj, steps):
        self.log_prob_calls.append((traj.latents[:, 0, 0].long().clone(), steps.clone()))
        return traj.log_probs[torch.arange(len(traj)), steps] + self.w * (1 + steps.float())


def make_ddpo(method, T, samples_per_epoch, train_batch_size=256, multiplier=8.0):
    from tests.helpers import make_spec

    spec = make_spec(method, num_steps=T, samples_per_epoch=samples_per_epoch, budget=10,
                     train_batch_size=train_batch_size, multiplier=multiplier)
    bb = FakeBackbone(T)
    counter = SimpleNamespace(queries=0)

    def reward(images, prompts):
        counter.queries += len(images)
        return images.mean(dim=(1, 2, 3))

    from contextlib import nullcontext
    ctx = SimpleNamespace(
        spec=spec, hp=spec.hp, backbone=bb, reward=reward, world_size=1, rank=0, device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0), rng=np.random.default_rng(0),
        sample_prompts=lambda n: ["p%d" % (i % 3) for i in range(n)],
        gather=lambda p, r: (list(p), r.numpy()), local_slice=lambda n: slice(0, n),
        sync_gradients=lambda params: None, bar=lambda total, desc: nullcontext(SimpleNamespace(update=lambda k: 0)),
        timed=lambda phase: nullcontext(), epoch=1, queries_before=0,
    )
    from bench.train.runner import TrainContext

    ctx.sample_and_score = lambda prompts: TrainContext.sample_and_score(ctx, prompts)  # the real one
    return DDPO(ctx), bb, counter


def _updates(ddpo, bb, n):
    """Train one epoch; return the rows (sample, step) of each optimizer update."""
    per_update, rows = [], []
    ddpo.optimizer.register_step_post_hook(lambda *a: (per_update.append(rows[:]), rows.clear()))
    real = bb.log_prob

    def spy(traj, steps):
        rows.extend(zip(traj.latents[:, 0, 0].long().tolist(), steps.tolist()))
        return real(traj, steps)
    bb.log_prob = spy
    metrics = ddpo.train_epoch(n, 0)
    return per_update, metrics


# Table 1 at SD scale (S=256, T=50, m=1), and the scale rule's shapes at the toy's S=32, m=8 or 16:
# updates per epoch U = m * U0 * S / 256; an update is z = S*T/U rows, spanning round(tau0 * T / 50) steps
# (or one sample over z steps where z is smaller); a fractional z alternates floor(z) and ceil(z) rows.
@pytest.mark.parametrize("method,T,S,m,samples,steps,updates,sizes", [
    ("ddpo-2", 50, 256, 1.0, 128, 50, 2, {6400}),       # accumulation 16 x T: 128 samples x all 50 steps
    ("ddpo-100", 50, 256, 1.0, 8, 16, 100, {128}),      # accumulation 16: 8 samples x 16 consecutive steps
    ("ddpo-2", 10, 32, 8.0, 16, 10, 2, {160}),
    ("ddpo-100", 10, 32, 8.0, 1, 3, 100, {3, 4}),       # z = 3.2: 80 updates of 3 rows, 20 of 4
    ("ddpo-100", 20, 32, 8.0, 1, 6, 100, {6, 7}),       # z = 6.4: 60 of 6, 40 of 7
    ("ddpo-100", 10, 32, 16.0, 1, 3, 200, {1, 2}),      # the toy default, z = 1.6 < 3 steps: one sample's steps
])
def test_update_shapes_follow_the_scale_rule(method, T, S, m, samples, steps, updates, sizes):
    ddpo, bb, counter = make_ddpo(method, T, samples_per_epoch=S, multiplier=m)
    assert (ddpo.batch, ddpo.accumulation) == (samples, steps)
    per_update, metrics = _updates(ddpo, bb, S)
    assert len(per_update) == updates == ddpo.gradient_updates
    assert counter.queries == S  # each image scored exactly once
    # every (sample, timestep) pair is trained on exactly once per inner epoch
    every = sorted(r for u in per_update for r in u)
    assert every == [(i, j) for i in range(S) for j in range(T)]
    assert {len(u) for u in per_update} == sizes
    if len(sizes) == 2:  # the mean is exact: S * T / U rows
        assert sum(len(u) for u in per_update) / len(per_update) == pytest.approx(S * T / updates)
    if steps == T:  # DDPO-2: each update holds whole trajectories
        assert all(len({i for i, _ in u}) == samples for u in per_update)
    if samples == 1:  # one sample's consecutive (permuted) steps, crossing into the next sample at most once
        assert all(len({i for i, _ in u}) <= 2 for u in per_update)
        assert sum(len({i for i, _ in u}) == 1 for u in per_update) >= updates - S
    assert set(metrics) >= {"reward_mean", "loss", "approx_kl", "clipfrac"}


def test_fused_calls_cover_an_update_in_as_few_calls_as_memory_allows():
    ddpo, bb, _ = make_ddpo("ddpo-2", 10, samples_per_epoch=32, train_batch_size=64)
    ddpo.train_epoch(32, 0)
    # 2 updates of 160 rows, at most 64 rows per call: 3 calls each
    assert [len(c[0]) for c in bb.log_prob_calls] == [64, 64, 32] * 2


def test_timesteps_permuted_per_sample():
    ddpo, bb, _ = make_ddpo("ddpo-2", 10, samples_per_epoch=8)
    ddpo.train_epoch(8, 0)
    ids, steps = bb.log_prob_calls[0]
    first_rows = steps[:8]  # the first micro-step: every sample of the minibatch at its first permuted step
    assert len(set(first_rows.tolist())) > 1, "one minibatch should mix timesteps"


def test_short_epoch_makes_proportionally_fewer_updates():
    # an epoch cut at a checkpoint mark (12 of 32 samples): 12 x 10 sample-steps in updates of 16 x 10
    ddpo, bb, _ = make_ddpo("ddpo-2", 10, samples_per_epoch=32)
    per_update, _ = _updates(ddpo, bb, 12)
    assert [len(u) for u in per_update] == [120]


def test_presets_follow_table_1():
    hp2, hp100 = methods.get("ddpo-2").meta["hparams"], methods.get("ddpo-100").meta["hparams"]
    assert (hp2["lr"], hp100["lr"]) == (3e-4, 1e-4)
    for hp in (hp2, hp100):
        assert (hp["clip_range"], hp["adv_clip_max"], hp["max_grad_norm"], hp["weight_decay"]) == (1e-4, 5.0, 1.0, 1e-4)


def test_fused_update_has_the_unfused_gradient(backbone):
    """A DDPO-2 update on the real tiny UNet: every row in one fused call gives the gradient of the
    references' loop, one call per (minibatch, step) micro-step, each mean divided by the accumulation."""
    from bench.train.updates import Window

    params = backbone.trainable_parameters()
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)) * 0.05)
    T = backbone.num_steps
    traj = backbone.sample(["cat", "dog", "cat", "fish"], generator=torch.Generator().manual_seed(0), batch_size=4)
    adv = torch.tensor([1.0, -0.5, 2.0, -1.5])
    t_perm = torch.stack([torch.randperm(T, generator=torch.Generator().manual_seed(i)) for i in range(4)])
    # the reference: minibatch of 4, T micro-steps accumulated
    for p in params:
        p.grad = None
    for j in range(T):
        lp = backbone.log_prob(traj, t_perm[:, j])
        loss, _, _ = ppo_clipped_loss(lp, traj.log_probs[torch.arange(4), t_perm[:, j]], adv, 1e-4, 5.0)
        (loss / T).backward()
    unfused = [p.grad.clone() for p in params]
    # fused: one window of 4 x T rows
    window = Window(torch.arange(4).repeat(T), t_perm.t().reshape(-1))  # row (i, t_perm[i, j]) for j, then i
    for max_rows in (4 * T, 7):  # one call, and calls that cut across micro-steps
        for p in params:
            p.grad = None
        holder = SimpleNamespace(ctx=SimpleNamespace(backbone=backbone, spec=SimpleNamespace(train_batch_size=max_rows)),
                                 hp={"clip_range": 1e-4, "adv_clip_max": 5.0})
        DDPO.window_loss(holder, traj, window, adv)
        scale = max(float(g.abs().max()) for g in unfused)
        assert scale > 0
        for a, b in zip(params, unfused):
            # fp32 sums over 40 rows in another order: measured up to 6e-5 relative on an element 1e-3 of the
            # largest (AMD Zen 3, AVX2); a wrong weighting or a missed row is off by 1/T or more
            torch.testing.assert_close(a.grad, b, rtol=1e-5, atol=1e-4 * scale)


def test_update_moves_log_probs_towards_the_advantage(backbone):
    """One DDPO-style gradient step on the real tiny UNet raises sum_i A_i * log p(traj_i)."""
    torch.manual_seed(0)
    traj = backbone.sample(["cat", "dog", "cat", "dog"], generator=torch.Generator().manual_seed(0), batch_size=4)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    params = backbone.trainable_parameters()
    opt = torch.optim.SGD(params, lr=1e-2)
    T = backbone.num_steps

    def objective():
        with torch.no_grad():
            return sum((adv * backbone.log_prob(traj, torch.full((4,), j))).sum() for j in range(T)).item()

    before = objective()
    for j in range(T):
        lp = backbone.log_prob(traj, torch.full((4,), j))
        # clip range wide enough that the clip does not bind on this first step
        loss, _, _ = ppo_clipped_loss(lp, traj.log_probs[:, j], adv, clip_range=10.0, adv_clip_max=5.0)
        (loss / T).backward()
    opt.step()
    after = objective()
    assert after > before + 1e-6, (before, after)


def test_the_methods_adamw_steps_as_torchs_per_tensor_loop_bit_for_bit():
    """`make_adamw` runs AdamW over all tensors at once (foreach, faster for a LoRA's many small tensors); the
    reference code's AdamW on a CPU is torch's per-tensor loop. The same hyperparameters and gradients must give
    the same parameters, bit for bit, step after step (weight decay and bias correction included)."""
    from bench.train.runner import make_adamw

    hp = {"lr": 3e-3, "adam_beta1": 0.9, "adam_beta2": 0.999, "weight_decay": 1e-2, "adam_eps": 1e-8}
    shapes = [(4, 64), (64, 4), (4, 96), (96, 4), (4, 128), (128, 4), (7,)]
    g = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=g) for s in shapes]
    ours = [torch.nn.Parameter(t.clone()) for t in init]
    loop = [torch.nn.Parameter(t.clone()) for t in init]
    opt = make_adamw(ours, hp)
    ref = torch.optim.AdamW(loop, lr=hp["lr"], betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8, foreach=False)
    assert opt.param_groups[0]["foreach"] is True
    for _ in range(40):
        for a, b in zip(ours, loop):
            a.grad = torch.randn(a.shape, generator=g) * 1e-2
            b.grad = a.grad.clone()
        opt.step()
        ref.step()
    assert all(torch.equal(a, b) for a, b in zip(ours, loop))
    assert not all(torch.equal(a, t) for a, t in zip(ours, init))  # the steps moved the parameters
