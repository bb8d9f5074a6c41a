"""DDPO: PPO on the denoising MDP (Black et al.), as in kvablack/ddpo-pytorch.

Per epoch:
1. sample n trajectories with DDIM(eta=1) + CFG and store each step's log-prob;
2. score the final images once with the training reward (n reward queries);
3. advantages: per-prompt stat tracking over the rewards gathered from all
   processes (buffer 32, min count 16), clamped to +-adv_clip_max;
4. `num_inner_epochs` passes: shuffle samples, permute the T timesteps
   independently per sample; loop minibatch OUTER, timestep INNER; at each
   (minibatch, timestep) recompute the log-prob under the current LoRA (with CFG),
   ratio = exp(logp - logp_old), loss = mean(max(-A*ratio, -A*clip(ratio, 1-eps, 1+eps))),
   backward; every `accumulation` micro-steps average gradients, clip norm to
   max_grad_norm, AdamW step.

`accumulation` is chosen so an epoch of `samples_per_epoch` images makes
`updates_per_epoch` optimizer steps: 2 for DDPO-2 (accumulation 16*T in the
paper's 8-GPU setting) and 2T for DDPO-100 (accumulation 16). It is fixed from the
full epoch size, so an epoch cut short at a checkpoint mark makes fewer updates.
A final partial accumulation is stepped with its gradient rescaled to a full one.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from bench.runner import make_adamw, optimizer_step
from bench.stat_tracker import PerPromptStatTracker, batch_normalize


def ppo_clipped_loss(log_prob, old_log_prob, advantages, clip_range: float, adv_clip_max: float):
    """DDPO's clipped surrogate. Returns (loss, approx_kl, clipfrac)."""
    advantages = torch.clamp(advantages, -adv_clip_max, adv_clip_max)
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.mean(torch.maximum(unclipped, clipped))
    approx_kl = 0.5 * torch.mean((log_prob - old_log_prob) ** 2)
    clipfrac = torch.mean((torch.abs(ratio - 1.0) > clip_range).float())
    return loss, approx_kl.detach(), clipfrac.detach()


class DDPO:
    def __init__(self, ctx):
        self.ctx = ctx
        hp = ctx.hp
        self.hp = hp
        self.params = ctx.backbone.trainable_parameters()
        self.optimizer = make_adamw(self.params, hp)
        self.tracker = PerPromptStatTracker(hp["stat_buffer_size"], hp["stat_min_count"])
        spec = ctx.spec
        T = spec.num_steps
        n_full = spec.samples_per_epoch // ctx.world_size
        micro_full = math.ceil(n_full / spec.train_batch_size) * T * hp["num_inner_epochs"]
        self.accumulation = max(1, round(micro_full / hp["updates_per_epoch"]))
        self.gradient_updates = 0

    def advantages(self, prompts, rewards) -> np.ndarray:
        if self.hp["per_prompt_stat_tracking"]:
            return self.tracker.update(prompts, rewards)
        return batch_normalize(rewards)

    def train_epoch(self, n: int, epoch: int) -> dict:
        ctx, hp, bb = self.ctx, self.hp, self.ctx.backbone
        spec = ctx.spec
        prompts = ctx.sample_prompts(n)
        traj, rewards = ctx.sample_and_score(prompts)
        all_prompts, all_rewards = ctx.gather(traj.prompts, rewards)
        adv = torch.as_tensor(self.advantages(all_prompts, all_rewards)[ctx.local_slice(n)], dtype=torch.float32,
                              device=ctx.device)

        T, bs = spec.num_steps, spec.train_batch_size
        stats = {"loss": [], "approx_kl": [], "clipfrac": []}
        micro = 0
        total_micro = math.ceil(n / bs) * T * hp["num_inner_epochs"]
        self.optimizer.zero_grad(set_to_none=True)
        with ctx.bar(total_micro, "training") as bar:
            for _ in range(hp["num_inner_epochs"]):
                perm = torch.as_tensor(ctx.rng.permutation(n))
                t_perm = torch.as_tensor(np.stack([ctx.rng.permutation(T) for _ in range(n)]))
                for start in range(0, n, bs):
                    idx = perm[start:start + bs]
                    sub = traj.index(idx)
                    for j in range(T):
                        steps = t_perm[start:start + bs, j]
                        log_prob = bb.log_prob(sub, steps)
                        old = sub.log_probs[torch.arange(len(sub)), steps.to(sub.log_probs.device)]
                        loss, kl, cf = ppo_clipped_loss(log_prob, old, adv[idx.to(adv.device)],
                                                        hp["clip_range"], hp["adv_clip_max"])
                        (loss / self.accumulation).backward()
                        stats["loss"].append(loss.item())
                        stats["approx_kl"].append(kl.item())
                        stats["clipfrac"].append(cf.item())
                        micro += 1
                        if micro % self.accumulation == 0 or micro == total_micro:
                            self._step(pending=micro % self.accumulation or self.accumulation)
                        bar.update(1)
        r = rewards.float()
        return {
            "reward_mean": float(np.mean(all_rewards)), "reward_std": float(np.std(all_rewards)),
            "reward_min": float(np.min(all_rewards)), "reward_max": float(np.max(all_rewards)),
            "loss": float(np.mean(stats["loss"])), "approx_kl": float(np.mean(stats["approx_kl"])),
            "clipfrac": float(np.mean(stats["clipfrac"])), "local_reward_mean": float(r.mean()),
        }

    def _step(self, pending: int) -> None:
        optimizer_step(self.ctx, self.optimizer, self.params, self.hp["max_grad_norm"], self.accumulation, pending)
        self.gradient_updates += 1
