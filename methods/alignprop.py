"""AlignProp: reward backpropagation through the sampling chain with randomized
truncation (Prabhudesai et al.), following mihirp1998/AlignProp (A0 paper-era,
A1 refactor) and TRL's AlignPropTrainer (T).

Per epoch, n images in minibatches of `train_batch_size`:
1. draw K, the number of final denoising steps that keep gradients, ONCE per
   minibatch: K = T - threshold, threshold ~ U{0..T-k_min} (T's
   truncated_rand_backprop_minmax (0, 50) at T=50, and A1's "drawn once per
   batch"; A0 re-draws it at every step, which its authors call unintended);
2. sample with DDIM(eta) + classifier-free guidance from fresh noise. For the
   first T-K steps the noise prediction is computed without gradients; the last
   K UNet calls keep them, each wrapped in gradient checkpointing
   (use_reentrant=False). The latents are never detached; the DDIM step is
   reparameterised (mean + std * noise) so the chain is differentiable;
3. decode with the VAE (with gradients), score with the reward's
   differentiable path (torch resize + normalise, no PIL): one reward query per
   image, drawn from the common budget;
4. loss = loss_coeff * mean(reward_target - r): A0's aesthetic loss
   |r - 10| * 0.01 averaged over the batch (r < 10 in practice, so |10 - r| =
   10 - r; the target only shifts the loss, not its gradient, for other rewards);
5. accumulate so an epoch makes `updates_per_epoch` optimizer steps (2: A0's
   256 samples per epoch at 128 per update), clip the gradient norm to
   max_grad_norm, AdamW.

Choices the sources leave open or disagree on, and what we do:
- eta: A0 samples with eta 0, A1 and T with eta 1.0; we use the run's eta (1.0
  by default, like DDPO), so both methods share one sampler.
- guidance: A0 7.5, A1/T 5.0; we use the run's guidance scale (5.0).
- lr 1e-3, weight decay 1e-4, grad clip 1.0: A1 and T (A0: wd 0.1, clip 5.0).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from bench.runner import make_adamw, optimizer_step
from bench.sampling import ddim_step


class AlignProp:
    def __init__(self, ctx):
        self.ctx = ctx
        hp = ctx.hp
        self.hp = hp
        self.params = ctx.backbone.trainable_parameters()
        self.optimizer = make_adamw(self.params, hp)
        spec = ctx.spec
        n_full = spec.samples_per_epoch // ctx.world_size
        micro_full = math.ceil(n_full / spec.train_batch_size)
        self.accumulation = max(1, round(micro_full / hp["updates_per_epoch"]))
        self.gradient_updates = 0

    def draw_k(self) -> int:
        """Steps that keep gradients: K = T - threshold, threshold ~ U{0, ..., T - k_min}."""
        T = self.ctx.spec.num_steps
        k_min = min(max(1, int(self.hp["k_min"])), T)
        k_max = min(max(k_min, int(self.hp["k_max"])), T)
        return int(self.ctx.rng.integers(k_min, k_max + 1))

    def sample_with_grad(self, prompts: list[str], k: int, generator: torch.Generator | None = None,
                         latents: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [0, 1] whose graph reaches the LoRA weights through the last k steps only."""
        bb = self.ctx.backbone
        x = bb.initial_latents(len(prompts), generator) if latents is None else latents
        cond, uncond = bb.encode_prompts(prompts)
        T = len(bb.timesteps)
        for i, t in enumerate(bb.timesteps):
            if i < T - k:
                with torch.no_grad():
                    eps = bb.predict_noise(x, t, cond, uncond)
            elif self.hp["gradient_checkpointing"]:
                eps = checkpoint(bb.predict_noise, x, t, cond, uncond, use_reentrant=False)
            else:
                eps = bb.predict_noise(x, t, cond, uncond)
            x = ddim_step(bb.scheduler, eps, t, x, eta=bb.eta, generator=generator)
        return bb.decode_with_grad(x)

    def loss(self, rewards: torch.Tensor) -> torch.Tensor:
        return self.hp["loss_coeff"] * (self.hp["reward_target"] - rewards).mean()

    def train_epoch(self, n: int, epoch: int) -> dict:
        ctx, spec = self.ctx, self.ctx.spec
        prompts = ctx.sample_prompts(n)
        bs = spec.train_batch_size
        total_micro = math.ceil(n / bs)
        rewards, losses, ks = [], [], []
        self.optimizer.zero_grad(set_to_none=True)
        with ctx.bar(n, "sample+backprop") as bar:
            for micro, start in enumerate(range(0, n, bs), start=1):
                chunk = prompts[start:start + bs]
                k = self.draw_k()
                images = self.sample_with_grad(chunk, k, generator=ctx.generator)
                r = ctx.reward.score_differentiable(images, chunk)  # one reward query per image
                loss = self.loss(r)
                (loss / self.accumulation).backward()
                rewards.append(r.detach().float().cpu())
                losses.append(loss.item())
                ks.append(k)
                if micro % self.accumulation == 0 or micro == total_micro:
                    self._step(pending=micro % self.accumulation or self.accumulation)
                bar.update(len(chunk))
        local = torch.cat(rewards)
        _, all_rewards = ctx.gather(prompts, local)
        return {
            "reward_mean": float(np.mean(all_rewards)), "reward_std": float(np.std(all_rewards)),
            "reward_min": float(np.min(all_rewards)), "reward_max": float(np.max(all_rewards)),
            "loss": float(np.mean(losses)), "backprop_steps_mean": float(np.mean(ks)),
        }

    def _step(self, pending: int) -> None:
        optimizer_step(self.ctx, self.optimizer, self.params, self.hp["max_grad_norm"], self.accumulation, pending)
        self.gradient_updates += 1
