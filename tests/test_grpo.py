"""GRPO as DanceGRPO runs SD v1.4: group-normalised advantages, one shared initial noise per epoch, every step
but the last trained once per epoch, the reference's update shape at SD scale, 16x at the toy's."""

from contextlib import nullcontext
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from methods.grpo import GRPO, group_advantages, group_sizes
from tests.test_ddpo import FakeBackbone


def test_group_advantages_by_hand():
    # groups (1, 2) and (3, 4): mean 1.5 / 3.5, unbiased std 0.70711: -+0.70711; a lone image gets 0
    a = group_advantages([1.0, 2.0, 3.0, 4.0, 9.0], [2, 2, 1])
    assert a == pytest.approx([-0.70710678, 0.70710678, -0.70710678, 0.70710678, 0.0], abs=1e-7)
    # 39 zeros and a one: mean 0.025, unbiased std sqrt(0.025) = 0.15811; the one's (0.975 / 0.15811 = 6.17) is
    # clipped to 5, the zeros' -0.158 are not
    b = group_advantages([0.0] * 39 + [1.0], [40])
    assert b[-1] == 5.0 and b[0] == pytest.approx(-0.025 / 0.15811388, rel=1e-6)
    assert group_sizes(40, 16) == [16, 16, 8] and group_sizes(32, 16) == [16, 16]


class SharedNoiseBackbone(FakeBackbone):
    def __init__(self, T):
        super().__init__(T)
        self.latents_seen = []

    def initial_latents(self, n, generator):
        return torch.randn(n, 4, 2, 2, generator=generator)

    def sample(self, prompts, generator=None, batch_size=16, latents=None):
        self.latents_seen.append(latents)
        return super().sample(prompts, generator, batch_size, latents)


def make_grpo(T, S, multiplier):
    from bench.train.runner import TrainContext
    from tests.helpers import make_spec

    spec = make_spec("grpo", num_steps=T, samples_per_epoch=S, budget=10, multiplier=multiplier)
    bb = SharedNoiseBackbone(T)
    ctx = SimpleNamespace(
        spec=spec, hp=spec.hp, backbone=bb, reward=lambda images, prompts: images.mean(dim=(1, 2, 3)), world_size=1,
        rank=0, device=torch.device("cpu"), generator=torch.Generator().manual_seed(0), rng=np.random.default_rng(0),
        prompts=[f"p{i}" for i in range(10)], gather=lambda p, r: (list(p), r.numpy()),
        sync_gradients=lambda params: None, bar=lambda total, desc: nullcontext(SimpleNamespace(update=lambda k: 0)),
        timed=lambda phase: nullcontext(), epoch=1)
    ctx.sample_prompts = lambda n: TrainContext.sample_prompts(ctx, n)
    ctx.sample_prompt_groups = lambda sizes: TrainContext.sample_prompt_groups(ctx, sizes)
    ctx.sample_and_score = lambda prompts, latents=None: TrainContext.sample_and_score(ctx, prompts, latents)
    return GRPO(ctx), bb, ctx


def test_an_epoch_groups_prompts_shares_one_noise_and_never_trains_the_last_step():
    T, S = 5, 32
    grpo, bb, ctx = make_grpo(T, S, multiplier=16.0)
    assert (grpo.batch, grpo.accumulation) == (16, T - 1)   # 2 updates of 16 samples x the 4 trained steps
    rows, per_update = [], []
    grpo.optimizer.register_step_post_hook(lambda *a: (per_update.append(rows[:]), rows.clear()))
    real = bb.log_prob
    bb.log_prob = lambda traj, steps: (rows.extend(zip(traj.latents[:, 0, 0].long().tolist(), steps.tolist())),
                                       real(traj, steps))[1]
    prompts_seen = []
    score = ctx.sample_and_score
    ctx.sample_and_score = lambda prompts, latents=None: (prompts_seen.extend(prompts), score(prompts, latents))[1]
    metrics = grpo.train_epoch(S, 0)
    # two groups of 16 images of one prompt each
    assert len(set(prompts_seen[:16])) == 1 and len(set(prompts_seen[16:])) == 1
    # one initial noise for every sample of the epoch
    shared = torch.cat(bb.latents_seen)
    assert shared.shape[0] == S and torch.equal(shared, shared[:1].expand_as(shared))
    # every (sample, step) but the last step's, once; the samples in order (no shuffle across samples)
    flat = [r for u in per_update for r in u]
    assert len(per_update) == 2 and sorted(flat) == [(i, j) for i in range(S) for j in range(T - 1)]
    assert {i for i, _ in per_update[0]} == set(range(16)) and metrics["ratio_at_old"] == pytest.approx(1.0)


@pytest.mark.parametrize("T,S,m,samples,steps,updates", [
    (50, 512, 1.0, 256, 49, 2),   # the reference: 2 updates of 256 samples x the 49 trained steps
    (10, 32, 16.0, 16, 9, 2),     # the toy default: 16x the source's updates per query, no floor
])
def test_the_scale_rule_gives_the_reference_update_and_16x_at_the_toy(T, S, m, samples, steps, updates):
    from bench.spec.catalog import methods
    from bench.spec.scale import Scale, effective_rows
    from methods.shapes import ppo_shape

    scale = Scale(num_steps=T, samples_per_epoch=S, latent_dims=4 * 64 * 64, multiplier=m)
    b, tau, z, U = ppo_shape(methods.get("grpo").meta["source"], scale)
    assert (b, tau, U) == (samples, steps, updates) and z == samples * steps
    row = next(r for r in effective_rows(scale, 45) if r["method"] == "grpo")
    assert row["multiple_of_source"] == pytest.approx(m)


def test_rule_11_converts_only_a_full_unet_sources_rate_and_composes_with_rule_10():
    """DanceGRPO fine-tunes the full UNet: its 1e-5 is multiplied by c (`full_to_lora_lr`) on LoRA, before the
    sde rule converts the rate for the update's size; a LoRA source (DDPO-2) is untouched."""
    import math

    from bench.spec.catalog import methods
    from bench.spec.scale import Scale, effective_hparams

    def lr(method, scale, **over):
        entry = methods.get(method)
        return effective_hparams(entry, {**entry.meta["hparams"], **over}, scale)["lr"]

    toy = Scale(num_steps=10, samples_per_epoch=32, latent_dims=256, budget=1280, multiplier=16.0)
    assert lr("grpo", toy, full_to_lora_lr=10.0) == pytest.approx(1e-4)
    assert lr("grpo", toy, full_to_lora_lr=1.0) == pytest.approx(1e-5)  # the runs before the rule
    assert lr("grpo", toy) == pytest.approx(3e-4)  # the default c = 30 (docs/decisions/full-unet-lr.md, version 2)
    assert lr("ddpo-2", toy) == pytest.approx(3e-4)
    assert "full_to_lora_lr" not in methods.get("ddpo-2").meta["hparams"]
    # sde, m = 4, tau = 16: kappa = 288 / 12544 (32 x 9 rows against 256 x 49), lr = c x 1e-5 x sqrt(kappa x tau)
    sde = Scale(num_steps=10, samples_per_epoch=32, latent_dims=256, budget=1280, multiplier=4.0, rule="sde",
                temperature=16.0)
    assert lr("grpo", sde, full_to_lora_lr=30.0) == pytest.approx(30 * 1e-5 * math.sqrt(288 / 12544 * 16))
