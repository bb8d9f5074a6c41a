"""DDIM step with log-prob: against DDIMScheduler, an independent Gaussian
density, and recomputation under unchanged weights."""

import math

import pytest
import torch
from diffusers import DDIMScheduler

from bench.train.sampling import ddim_step_with_logprob


@pytest.fixture
def scheduler():
    s = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                      set_alpha_to_one=False, steps_offset=1)
    s.set_timesteps(20)
    return s


@pytest.mark.parametrize("step", [0, 7, 19])  # noisiest, middle, last (prev_t < 0 uses final_alpha_cumprod)
def test_step_matches_ddim_scheduler(scheduler, step):
    torch.manual_seed(step)
    x, eps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = scheduler.timesteps[step]
    ours, _ = ddim_step_with_logprob(scheduler, eps, t, x, eta=1.0, generator=torch.Generator().manual_seed(5))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    ref = scheduler.step(eps, t, x, eta=1.0, variance_noise=noise).prev_sample
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_per_sample_timesteps_equal_scalar_calls(scheduler):
    torch.manual_seed(0)
    x, eps, nxt = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    ts = scheduler.timesteps[[0, 10, 19]]
    _, lp = ddim_step_with_logprob(scheduler, eps, ts, x, prev_sample=nxt)
    for i in range(3):
        _, lp_i = ddim_step_with_logprob(scheduler, eps[i:i + 1], ts[i], x[i:i + 1], prev_sample=nxt[i:i + 1])
        torch.testing.assert_close(lp[i:i + 1], lp_i)


@pytest.mark.parametrize("step", [0, 12, 19])
def test_log_prob_is_the_gaussian_density(scheduler, step):
    torch.manual_seed(1)
    x, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = scheduler.timesteps[step]
    sample, lp = ddim_step_with_logprob(scheduler, eps, t, x, eta=1.0, generator=torch.Generator().manual_seed(3))
    # Independent route: the scheduler's own mean (zero noise) and its variance.
    mean = scheduler.step(eps, t, x, eta=1.0, variance_noise=torch.zeros_like(x)).prev_sample
    prev_t = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    std = math.sqrt(scheduler._get_variance(t, prev_t))
    expected = torch.distributions.Normal(mean.double(), std).log_prob(sample.double()).mean(dim=(1, 2, 3))
    torch.testing.assert_close(lp.double(), expected, rtol=1e-5, atol=1e-5)
    # mean over dims, not sum: a sum would be 256 times larger
    assert lp.abs().max() < 10


def test_recomputed_log_prob_equals_stored(backbone):
    traj = backbone.sample(["cat", "dog", "fox"], generator=torch.Generator().manual_seed(0), batch_size=3)
    T = backbone.num_steps
    assert traj.latents.shape == (3, T, 4, 8, 8) and traj.log_probs.shape == (3, T)
    assert traj.images.shape == (3, 3, 32, 32) and 0 <= traj.images.min() and traj.images.max() <= 1
    # consecutive steps chain: next_latents[j] is latents[j+1]
    torch.testing.assert_close(traj.next_latents[:, :-1], traj.latents[:, 1:])
    with torch.no_grad():
        for j in range(T):
            lp = backbone.log_prob(traj, torch.full((3,), j))
            torch.testing.assert_close(lp, traj.log_probs[:, j], rtol=0, atol=1e-5)
        # mixed per-sample step indices (DDPO's per-sample timestep permutation)
        steps = torch.tensor([4, 0, 2])
        torch.testing.assert_close(backbone.log_prob(traj, steps), traj.log_probs[torch.arange(3), steps],
                                   rtol=0, atol=1e-5)
        # ...and the check can fail: changed weights give other log-probs
        for p in backbone.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
        lp = backbone.log_prob(traj, torch.full((3,), 2))
    assert (lp - traj.log_probs[:, 2]).abs().max() > 1e-4


def test_log_prob_is_differentiable_in_lora_only(backbone):
    traj = backbone.sample(["cat", "dog"], generator=torch.Generator().manual_seed(1), batch_size=2)
    # B=0 at init makes A's gradient vanish; perturb B so both get gradients
    with torch.no_grad():
        for n, p in backbone.unet.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.01)
    backbone.log_prob(traj, torch.tensor([1, 3])).sum().backward()
    grads = [p.grad for p in backbone.trainable_parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    frozen = [p for n, p in backbone.unet.named_parameters() if "lora_" not in n]
    assert all(p.grad is None and not p.requires_grad for p in frozen)


def test_same_seed_same_images(backbone):
    a = backbone.sample(["cat"] * 2, generator=torch.Generator().manual_seed(7), batch_size=2)
    b = backbone.sample(["cat"] * 2, generator=torch.Generator().manual_seed(7), batch_size=2)
    c = backbone.sample(["cat"] * 2, generator=torch.Generator().manual_seed(8), batch_size=2)
    torch.testing.assert_close(a.images, b.images)
    assert (a.images - c.images).abs().max() > 1e-3
