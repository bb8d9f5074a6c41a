"""DDPO: PPO on the denoising MDP (Black et al.), as in kvablack/ddpo-pytorch.

Per epoch:
1. sample n trajectories with DDIM(eta=1) + CFG and store each step's log-prob;
2. score the final images once with the training reward (n reward queries);
3. advantages: per-prompt stat tracking over the rewards gathered from all
   processes (buffer 32, min count 16), clamped to +-adv_clip_max;
4. `num_inner_epochs` passes: shuffle samples, permute the T timesteps
   independently per sample; loop minibatch OUTER, timestep INNER; at each
   (minibatch, timestep) recompute the log-prob under the current LoRA (with CFG),
   ratio = exp(logp - logp_old), loss = mean(max(-A*ratio, -A*clip(ratio, 1-eps, 1+eps)));
   every `update_steps` micro-steps average gradients, clip norm to
   max_grad_norm, AdamW step.

The update's shape comes from the scale rule (bench/spec/scale.py): `update_samples`
samples (the minibatch, over all processes) x `update_steps` consecutive
micro-steps. At SD scale that is the reference's 128 x 50 for DDPO-2
(accumulation 16*T) and 8 x 16 for DDPO-100 (accumulation 16). Micro-steps of
one update are evaluated in fused UNet calls (bench/train/updates.py): the same
gradient, fewer calls. An update's loss is the mean over its (sample, step) rows,
so an epoch cut short at a checkpoint mark ends with a smaller update of the same
scale.
"""

from __future__ import annotations

import numpy as np
import torch

from bench.errors import check_finite
from bench.train.precision import backward
from bench.train.runner import make_adamw, optimizer_step
from bench.train.stat_tracker import PerPromptStatTracker, batch_normalize
from bench.train.updates import epoch_permutations, epoch_windows


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


def local_update_samples(ctx, hp) -> int:
    """Samples per update on this process: the rule's `update_samples` split over processes."""
    b, world = int(hp["update_samples"]), ctx.world_size
    if b % world:
        from bench.errors import BenchError

        raise BenchError(f"{ctx.spec.method}: an update of {b} samples cannot be split over {world} processes; "
                         f"choose samples per epoch or --update-multiplier so that it divides")
    return b // world


class DDPO:
    def __init__(self, ctx):
        self.ctx = ctx
        hp = ctx.hp
        self.hp = hp
        self.params = ctx.backbone.trainable_parameters()
        self.optimizer = make_adamw(self.params, hp)
        self.tracker = PerPromptStatTracker(hp["stat_buffer_size"], hp["stat_min_count"])
        self.batch = local_update_samples(ctx, hp)
        self.accumulation = int(hp["update_steps"])
        self.gradient_updates = 0

    def training_state(self) -> dict:
        from bench.train.state import tracker_state

        return {"optimizer": self.optimizer.state_dict(), "tracker": tracker_state(self.tracker),
                "gradient_updates": self.gradient_updates}

    def load_training_state(self, state: dict) -> None:
        from bench.train.state import load_tracker_state

        self.optimizer.load_state_dict(state["optimizer"])
        load_tracker_state(self.tracker, state["tracker"])
        self.gradient_updates = state["gradient_updates"]

    def advantages(self, prompts, rewards) -> np.ndarray:
        if self.hp["per_prompt_stat_tracking"]:
            return self.tracker.update(prompts, rewards)
        return batch_normalize(rewards)

    def update_windows(self, n: int) -> list:
        """This epoch's updates (one inner epoch), drawing the references' shuffles from ctx.rng."""
        perm, t_perm = epoch_permutations(self.ctx.rng, n, self.ctx.spec.num_steps)
        return epoch_windows(self.ctx, perm, t_perm, self.batch, self.accumulation, "minibatch", n)

    def window_loss(self, traj, window, adv) -> dict:
        """Backpropagate one update's PPO loss (mean over its rows), in fused calls. Returns its statistics."""
        bb, hp = self.ctx.backbone, self.hp
        rows = len(window)
        out = {"loss": 0.0, "approx_kl": 0.0, "clipfrac": 0.0, "ratio_mean": 0.0, "ratio_maxdev": 0.0}
        for idx, steps in window.chunks(self.ctx.spec.train_batch_size):
            sub = traj.index(idx)
            log_prob = bb.log_prob(sub, steps)
            old = sub.log_probs[torch.arange(len(sub)), steps.to(sub.log_probs.device)]
            loss, kl, cf = ppo_clipped_loss(log_prob, old, adv[idx.to(adv.device)], hp["clip_range"],
                                            hp["adv_clip_max"])
            w = len(idx) / rows
            check_finite("policy loss", loss)
            backward(self.ctx, loss * w)
            for k, v in zip(out, (loss, kl, cf)):
                out[k] += float(v.detach()) * w
            ratio = torch.exp(log_prob.detach() - old)
            out["ratio_mean"] += float(ratio.mean()) * w
            out["ratio_maxdev"] = max(out["ratio_maxdev"], float((ratio - 1).abs().max()))
        return out

    def train_epoch(self, n: int, epoch: int) -> dict:
        ctx = self.ctx
        prompts = ctx.sample_prompts(n)
        traj, rewards = ctx.sample_and_score(prompts)
        all_prompts, all_rewards = ctx.gather(traj.prompts, rewards)
        adv = torch.as_tensor(self.advantages(all_prompts, all_rewards)[ctx.local_slice(n)], dtype=torch.float32,
                              device=ctx.device)
        check_finite("advantages", adv)
        return self.run_updates(traj, adv, rewards, all_rewards, n)

    def run_updates(self, traj, adv, rewards, all_rewards, n: int) -> dict:
        """The epoch's PPO updates (`num_inner_epochs` passes of `update_windows`), then its metrics."""
        stats = {"loss": [], "approx_kl": [], "clipfrac": [], "ratio_mean": [], "ratio_maxdev": []}
        self.optimizer.zero_grad(set_to_none=True)
        plan = [w for _ in range(self.hp["num_inner_epochs"]) for w in self.update_windows(n)]
        with self.ctx.bar(len(plan), "training") as bar:
            for window in plan:
                for k, v in self.window_loss(traj, window, adv).items():
                    stats[k].append(v)
                self._step()
                bar.update(1)
        # the first update ran at the sampling parameters: its ratio must be 1 (same precision path)
        r = rewards.float()
        return {
            "reward_mean": float(np.mean(all_rewards)), "reward_std": float(np.std(all_rewards)),
            "reward_min": float(np.min(all_rewards)), "reward_max": float(np.max(all_rewards)),
            "loss": float(np.mean(stats["loss"])), "approx_kl": float(np.mean(stats["approx_kl"])),
            "clipfrac": float(np.mean(stats["clipfrac"])), "local_reward_mean": float(r.mean()),
            "ratio_at_old": stats["ratio_mean"][0], "ratio_at_old_maxdev": stats["ratio_maxdev"][0],
        }

    def _step(self) -> None:
        optimizer_step(self.ctx, self.optimizer, self.params, self.hp["max_grad_norm"])
        self.gradient_updates += 1
