"""DDIM sampling with per-step log-probabilities: the shared machinery of every
policy-gradient method.

With eta > 0 each DDIM step x_t -> x_{t-1} is a Gaussian
    N(mean_t, sigma_t^2 I),  sigma_t = eta * sqrt((1-a_prev)/(1-a_t) * (1 - a_t/a_prev)),
    mean_t = sqrt(a_prev) * x0_hat + sqrt(1 - a_prev - sigma_t^2) * eps_hat,
so the log-density of the sampled x_{t-1} is the per-step log-prob of the
policy. Following the DDPO and TDPO reference code, the log-prob is the Gaussian
log-density including its constants, AVERAGED over the latent dimensions (not
summed): clip ranges such as 1e-4 are stated on that scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch


def _alphas(scheduler, timesteps: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha_bar at t and at the previous timestep (the DDIM 'prev_t'), per sample."""
    step = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    prev = timesteps - step
    ac = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    final = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float32, device=device)
    a_t = ac[timesteps.long().clamp(0, len(ac) - 1)]
    a_prev = torch.where(prev >= 0, ac[prev.long().clamp(0, len(ac) - 1)], final)
    return a_t, a_prev


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def gaussian_noise(shape, generator, device) -> torch.Tensor:
    """Standard normal noise of `shape`, drawn on the generator's device (CPU by
    default) and moved to `device`. `generator` may be a list with one generator
    per sample: row i is then drawn from generator i alone, exactly as a batch of
    one would draw it, so a seeded image does not depend on its batch."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        return torch.stack([gaussian_noise(shape[1:], g, device) for g in generator])
    gen_device = device if generator is None else generator.device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32).to(device)


def ddim_mean_std(scheduler, model_output: torch.Tensor, timestep, sample: torch.Tensor,
                  eta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of the DDIM(eta) step x_t -> x_{t-1}, in float32,
    differentiable in model_output and sample. `timestep` may be per sample."""
    if scheduler.config.prediction_type != "epsilon":
        raise ValueError("DDIM steps here support epsilon prediction only")
    device = sample.device
    t = torch.as_tensor(timestep, device=device)
    if t.ndim == 0:
        t = t.expand(sample.shape[0])
    a_t, a_prev = _alphas(scheduler, t, device)
    a_t, a_prev = _bcast(a_t, sample), _bcast(a_prev, sample)
    x = sample.float()
    eps = model_output.float()

    x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    if scheduler.config.clip_sample:
        r = scheduler.config.clip_sample_range
        x0 = x0.clamp(-r, r)
    variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    std = eta * variance.sqrt()
    mean = a_prev.sqrt() * x0 + (1 - a_prev - std**2).clamp(min=0).sqrt() * eps
    return mean, std


def ddim_step_with_logprob(
    scheduler,
    model_output: torch.Tensor,
    timestep: torch.Tensor | int,
    sample: torch.Tensor,
    eta: float = 1.0,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step x_t -> x_{t-1} and the log-prob of x_{t-1} under it.

    `timestep` may be a scalar or one timestep per sample (DDPO trains on
    per-sample permuted timesteps). If `prev_sample` is given, its log-prob is
    returned (recomputation under new weights); otherwise x_{t-1} is sampled.
    The returned prev_sample is detached, as in the reference.
    """
    device = sample.device
    mean, std = ddim_mean_std(scheduler, model_output, timestep, sample, eta)

    if prev_sample is None:
        noise = gaussian_noise(sample.shape, generator, device)
        prev_sample = mean + std * noise
    prev_sample = prev_sample.detach().float()

    log_prob = (
        -((prev_sample - mean) ** 2) / (2 * std**2)
        - torch.log(std)
        - math.log(math.sqrt(2 * math.pi))
    )
    log_prob = log_prob.mean(dim=tuple(range(1, log_prob.ndim)))
    return prev_sample.to(sample.dtype), log_prob


def step_kl(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Closed-form KL(N(mean, std^2) || N(ref_mean, std^2)) of one DDIM step, per sample: the
    two policies share sigma_t, so per latent dimension it is (mean - ref_mean)^2 / (2 std^2);
    AVERAGED over latent dimensions, as the step log-prob is."""
    kl = (mean.float() - ref_mean.float()) ** 2 / (2 * std.float() ** 2)
    return kl.mean(dim=tuple(range(1, kl.ndim)))


def ddim_step(scheduler, model_output, timestep, sample, eta: float = 1.0,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """A differentiable DDIM step (reparameterised: mean + std * noise), for
    backpropagation through sampling (AlignProp)."""
    mean, std = ddim_mean_std(scheduler, model_output, timestep, sample, eta)
    if eta == 0:
        return mean
    noise = gaussian_noise(sample.shape, generator, sample.device)
    return mean + std * noise


@dataclass
class Trajectory:
    """A batch of sampled denoising trajectories (B samples, T steps).

    latents[:, j] is x_t at step j (j=0 is the noisiest, x_T); next_latents[:, j]
    is the x_{t-1} sampled from it. log_probs[:, j] is log p(next | latent) at
    sampling time, timesteps[j] the scheduler timestep of step j (e.g. 981 ... 1).
    """

    prompts: list[str]
    prompt_embeds: torch.Tensor           # (B, L, D) conditional text embeddings
    negative_prompt_embeds: torch.Tensor  # (B, L, D) embeddings of "" for guidance
    latents: torch.Tensor                 # (B, T, C, h, w)
    next_latents: torch.Tensor            # (B, T, C, h, w)
    log_probs: torch.Tensor               # (B, T)
    timesteps: torch.Tensor               # (T,)
    images: torch.Tensor                  # (B, 3, H, W) in [0, 1]
    kl_to_pretrained: torch.Tensor | None = None
    """(B,) sum over steps of the per-step KL to the pretrained policy (evaluation only)."""

    def __len__(self) -> int:
        return self.latents.shape[0]

    def index(self, idx) -> "Trajectory":
        """A sub-batch; `idx` is a tensor or list of sample indices."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "prompts":
                out[f.name] = [v[i] for i in idx.tolist()]
            elif f.name == "timesteps" or v is None:
                out[f.name] = v
            else:
                out[f.name] = v[idx.to(v.device)]
        return Trajectory(**out)

    @staticmethod
    def cat(parts: list["Trajectory"]) -> "Trajectory":
        out = {}
        for f in fields(Trajectory):
            vals = [getattr(p, f.name) for p in parts]
            if f.name == "prompts":
                out[f.name] = [x for v in vals for x in v]
            elif f.name == "timesteps" or any(v is None for v in vals):
                out[f.name] = vals[0] if f.name == "timesteps" else None
            else:
                out[f.name] = torch.cat(vals)
        return Trajectory(**out)
