"""GRPO as DanceGRPO runs it on Stable Diffusion v1.4 (XueZeyue/DanceGRPO @15cc71d,
fastvideo/train_grpo_sd.py; facts in ../shared/reference/grpo-nft-facts.md).

Per epoch:
1. prompts in groups: `images_per_prompt` (16) images of each drawn prompt;
2. ONE initial noise x_T shared by every sample of the epoch on this process (DanceGRPO draws one per GPU per
   epoch); the samples differ only through DDIM's eta = 1 noise; CFG in sampling and training;
3. score the final images once (n reward queries);
4. advantages per prompt group, on this process: (r - mean) / (unbiased std + 1e-8), clipped to +-5; no history
   tracker, no KL or reference model;
5. one pass over every (sample, step) pair except the last denoising step (t = 1 -> x0 is never trained), the
   steps in a random order per sample and the samples in their sampled order (no shuffle across samples), with
   DDPO's clipped PPO surrogate (clip 1e-4 on the mean-over-dims log-prob); an update accumulates
   `update_samples` samples x `update_steps` steps, clip grad-norm 1.0, AdamW lr 1e-5.

At SD scale the scale rule gives the reference's update: 256 samples x all 49 trained steps, 2 updates per epoch
of 512 (32 prompts x 16). GRPO differs from DDPO in its grouping, shared noise, advantage and step set, not in its
machinery: the log-prob, the loss, the update windows and the optimizer step are DDPO's.

Deviations from the reference (README, methods table): LoRA instead of the full UNet; the run's reward instead of
HPSv2.1 read back from a JPEG round trip; one process's share is the whole epoch on one process.
"""

from __future__ import annotations

import numpy as np
import torch

from bench.errors import check_finite
from bench.train.runner import make_adamw
from bench.train.updates import epoch_windows
from methods.ddpo import DDPO, local_update_samples


def group_sizes(n: int, per_prompt: int) -> list[int]:
    """Groups of `per_prompt` images; an epoch cut short at a checkpoint mark ends with a smaller group."""
    return [per_prompt] * (n // per_prompt) + ([n % per_prompt] if n % per_prompt else [])


def group_advantages(rewards, sizes: list[int], clip: float = 5.0) -> np.ndarray:
    """(r - group mean) / (unbiased group std + 1e-8), clipped to +-clip; a group of one image has no spread
    to learn from and gets 0."""
    r = np.asarray(rewards, dtype=np.float64)
    out = np.zeros_like(r)
    start = 0
    for k in sizes:
        g = r[start:start + k]
        if k > 1:
            out[start:start + k] = (g - g.mean()) / (g.std(ddof=1) + 1e-8)
        start += k
    return np.clip(out, -clip, clip)


class GRPO(DDPO):
    def __init__(self, ctx):  # DDPO's machinery without its per-prompt stat tracker
        self.ctx = ctx
        self.hp = hp = ctx.hp
        self.params = ctx.backbone.trainable_parameters()
        self.optimizer = make_adamw(self.params, hp)
        self.batch = local_update_samples(ctx, hp)
        self.accumulation = int(hp["update_steps"])
        self.gradient_updates = 0

    def training_state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "gradient_updates": self.gradient_updates}

    def load_training_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.gradient_updates = state["gradient_updates"]

    def update_windows(self, n: int) -> list:
        """Every (sample, step) pair but the last step's, steps in a random order per sample, samples in order."""
        trained = self.ctx.spec.num_steps - 1
        t_perm = torch.as_tensor(np.stack([self.ctx.rng.permutation(trained) for _ in range(n)]))
        return epoch_windows(self.ctx, torch.arange(n), t_perm, self.batch, self.accumulation, "minibatch", n)

    def train_epoch(self, n: int, epoch: int) -> dict:
        ctx, hp = self.ctx, self.hp
        sizes = group_sizes(n, int(hp["images_per_prompt"]))
        prompts = ctx.sample_prompt_groups(sizes)
        shared = ctx.backbone.initial_latents(1, ctx.generator).expand(n, -1, -1, -1).contiguous()
        traj, rewards = ctx.sample_and_score(prompts, latents=shared)
        _, all_rewards = ctx.gather(traj.prompts, rewards)
        adv = torch.as_tensor(group_advantages(rewards.numpy(), sizes, hp["adv_clip_max"]), dtype=torch.float32,
                              device=ctx.device)
        check_finite("advantages", adv)
        return self.run_updates(traj, adv, rewards, all_rewards, n)
