"""Dense-reward, temporally discounted DPO (Yang, Chen & Zhou, ICML 2024;
reference Shentao-YANG/Dense_Reward_T2I), online multi-prompt mode.

Each epoch is one collection round:
1. draw prompts and sample `rollouts_per_prompt` images each with the current
   policy; score each image once (n reward queries); sort each prompt's
   rollouts by reward in ASCENDING order (as the reference) and keep the
   positions floor(linspace(0, g-1, 5)) of the sorted list ([0, 2, 5, 8, 11]
   of the reference's 12: ranks 0, 2, 5, 8, 11 counted from the worst);
2. the groups go to a FIFO replay buffer of prompt groups whose capacity is the
   number of prompts per collection, so a round trains on its own collection,
   off-policy within the round and without importance weights (as the reference);
3. updates (the scale rule's updates per query times the epoch's queries); each
   draws `pairs_per_step` groups from the
   buffer and one random pair of each group's C(5, 2); the better-rewarded
   trajectory is the winner (ties ordered at random). For each pair, M step
   indices k ~ Categorical(gamma^k / sum_j gamma^j), k = 0 the NOISIEST step,
   i.i.d. with replacement and SHARED by winner and loser:
       rho(tau, k) = clamp(log pi_theta(x_{k+1}|x_k) - log pi_init(x_{k+1}|x_k), -delta, delta)
       logit(tau)  = beta_tilde * mean_m rho(tau, k_m)
       loss        = -log sigmoid(logit(winner) - logit(loser))   (Bradley-Terry)
   pi_init is the pretrained UNet (LoRA disabled), evaluated with the same CFG
   and stored embeddings as pi_theta. AdamW, gradient-norm clip.

Defaults are the reference's multi-prompt mode (gamma 0.9, beta_tilde 12.5,
delta 5e-4, M 1, 12 rollouts per prompt with 5 kept, lr 2e-5, weight decay
1.5e-3, clip 0.05, 32 pairs per update, 4,000 updates per 2,000 collected
prompts), mapped by the scale rule (bench/spec/scale.py): updates per query are m
times the reference's (4,000 / 24,000; 85.3 per toy epoch, so epochs alternate
85 and 86 updates), every kept group is used for the reference's 64 pair draws
on average, so an update holds 32/m pairs (2 on the toy, m = 16; 32 at SD scale,
m = 1; a fractional count alternates whole ones); delta scales with sqrt(D0/D)
and beta_tilde with sqrt(D/D0) (the clamped log-ratio is worth the same logit at
every scale: 12.5 / 8 on the toy); gamma keeps its horizon, gamma^(50/T). Choices the sources leave open, recorded here:
- log-prob scale: per-step Gaussian log-density AVERAGED over latent dims
  (the reference's convention, on which delta is stated);
- CFG scale and LoRA rank are the run's (common to every method), not the
  reference's 7.5 and rank 32;
- with several processes each draws its own `pairs_per_step` pairs per update.
"""

from __future__ import annotations

import math
from collections import deque
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from bench.errors import check_finite
from bench.spec.scale import half_up, updates_this_epoch
from bench.train.precision import backward
from bench.train.runner import make_adamw, optimizer_step
from bench.train.sampling import Trajectory


def step_distribution(T: int, gamma: float) -> np.ndarray:
    """p_k = gamma^k / sum_j gamma^j for k = 0 (noisiest step) .. T-1."""
    w = gamma ** np.arange(T, dtype=np.float64)
    return w / w.sum()


def kept_positions(g: int, keep: int = 5) -> np.ndarray:
    """Positions of the reward-sorted rollouts kept per prompt (reference: [0, 2, 5, 8, 11] of 12)."""
    return np.unique(np.floor(np.linspace(0, g - 1, min(keep, g))).astype(int))


def keep_sorted(rewards: np.ndarray, keep: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the kept rollouts of one prompt: sorted by reward ASCENDING (ties in random
    order), then the positions floor(linspace(0, g-1, keep)) of that list, as the reference."""
    order = np.lexsort((rng.random(len(rewards)), rewards))
    return order[kept_positions(len(rewards), keep)]


def dpo_logits(log_prob: torch.Tensor, init_log_prob: torch.Tensor, beta_tilde: float, delta: float) -> torch.Tensor:
    """beta_tilde * mean over the M sampled steps of the clamped log-ratio; inputs (P, M)."""
    return beta_tilde * torch.clamp(log_prob - init_log_prob, -delta, delta).mean(1)


def bt_loss(logit_w: torch.Tensor, logit_l: torch.Tensor) -> torch.Tensor:
    return -F.logsigmoid(logit_w - logit_l).mean()


class DenseDPO:
    def __init__(self, ctx):
        self.ctx = ctx
        hp = self.hp = ctx.hp
        self.params = ctx.backbone.trainable_parameters()
        self.optimizer = make_adamw(self.params, hp)
        T = ctx.spec.num_steps
        self.gamma = hp["gamma"]  # already gamma^(50/T): the scale rule keeps the discount's horizon
        self.p_steps = step_distribution(T, self.gamma)
        capacity = math.ceil(ctx.spec.samples_per_epoch // ctx.world_size / hp["rollouts_per_prompt"])
        self.buffer: deque = deque(maxlen=max(1, capacity))
        self.gradient_updates = 0

    def training_state(self) -> dict:
        from dataclasses import fields

        groups = [({f.name: getattr(t, f.name) for f in fields(t)}, r) for t, r in self.buffer]
        return {"optimizer": self.optimizer.state_dict(), "gradient_updates": self.gradient_updates,
                "buffer": groups}

    def load_training_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.gradient_updates = state["gradient_updates"]
        self.buffer.clear()
        for fields_, r in state["buffer"]:
            self.buffer.append((Trajectory(**fields_), r))

    def pairs_this_update(self) -> int:
        """The rule's pairs per update (a real number): whole counts whose running total is always the rounded
        mean times the updates so far."""
        p, g = float(self.hp["pairs_per_step"]), self.gradient_updates
        return max(1, half_up(p * (g + 1)) - half_up(p * g))

    def sample_steps(self, n_pairs: int) -> torch.Tensor:
        """(n_pairs, M) step indices, k = 0 the noisiest."""
        k = self.ctx.rng.choice(len(self.p_steps), size=(n_pairs, self.hp["steps_per_pair"]), p=self.p_steps)
        return torch.as_tensor(k, dtype=torch.long)

    def pair_log_probs(self, traj: Trajectory, steps: torch.Tensor, reference: bool = False) -> torch.Tensor:
        """(P, M) log-probs of the stored steps `steps[i, m]` of trajectory i."""
        bb = self.ctx.backbone
        with bb.pretrained() if reference else nullcontext():
            cols = [bb.log_prob(traj, steps[:, m]) for m in range(steps.shape[1])]
        return torch.stack(cols, 1)

    def train_epoch(self, n: int, epoch: int) -> dict:
        ctx, hp = self.ctx, self.hp
        R = hp["rollouts_per_prompt"]
        sizes = [R] * (n // R) + ([n % R] if n % R else [])
        prompts = ctx.sample_prompt_groups(sizes)
        traj, rewards = ctx.sample_and_score(prompts)
        _, all_rewards = ctx.gather(traj.prompts, rewards)

        start = 0
        new_groups = []
        for g in sizes:
            members = np.arange(start, start + g)
            start += g
            if g < 2:
                continue
            kept = members[keep_sorted(rewards[members].numpy(), hp["kept_per_prompt"], ctx.rng)]
            self.buffer.append((traj.index(kept), rewards[kept].clone()))
            new_groups.append(len(self.buffer) - 1)

        # the scale rule's updates per query, exact over the run (the fraction carries across epochs)
        updates = updates_this_epoch(ctx.queries_before, n * ctx.world_size, hp["updates_per_query"])
        stats = {"loss": [], "accuracy": [], "logit_gap": [], "clamp_fraction": []}
        ratio_at_old = None
        with ctx.bar(updates, "training") as bar:
            for _ in range(updates):
                if not self.buffer:
                    break
                picks = ctx.rng.integers(0, len(self.buffer), size=self.pairs_this_update())
                win, lose = [], []
                for p in picks:
                    group, r = self.buffer[p]
                    i, j = ctx.rng.choice(len(group), size=2, replace=False)
                    if r[i] < r[j] or (r[i] == r[j] and ctx.rng.random() < 0.5):
                        i, j = j, i
                    win.append(group.index([i])), lose.append(group.index([j]))
                win_t, lose_t = Trajectory.cat(win), Trajectory.cat(lose)
                steps = self.sample_steps(len(picks))
                # winners and losers share each UNet call (the same rows as two calls, half the overhead)
                both, both_steps, P = Trajectory.cat([win_t, lose_t]), torch.cat([steps, steps]), len(picks)
                with torch.no_grad():
                    init_w, init_l = self.pair_log_probs(both, both_steps, reference=True).split(P)
                lp_w, lp_l = self.pair_log_probs(both, both_steps).split(P)
                logit_w = dpo_logits(lp_w, init_w, hp["beta_tilde"], hp["delta"])
                logit_l = dpo_logits(lp_l, init_l, hp["beta_tilde"], hp["delta"])
                rho = torch.cat([lp_w - init_w, lp_l - init_l]).detach()
                stats["clamp_fraction"].append(float((rho.abs() >= hp["delta"]).float().mean()))
                if ratio_at_old is None:  # the first update of the round, on this round's fresh samples
                    fresh = [k for k, p in enumerate(picks) if p >= len(self.buffer) - len(new_groups)]
                    if fresh:
                        old = torch.stack([torch.cat([win_t.log_probs[k, steps[k]] for k in fresh]),
                                           torch.cat([lose_t.log_probs[k, steps[k]] for k in fresh])])
                        now = torch.stack([lp_w[fresh].detach().flatten(), lp_l[fresh].detach().flatten()])
                        ratio_at_old = float((now - old).exp().sub(1).abs().max())
                loss = bt_loss(logit_w, logit_l)
                check_finite("DPO loss", loss)
                backward(ctx, loss)
                optimizer_step(ctx, self.optimizer, self.params, hp["max_grad_norm"])
                self.gradient_updates += 1
                stats["loss"].append(loss.item())
                stats["accuracy"].append(float((logit_w > logit_l).float().mean()))
                stats["logit_gap"].append(float((logit_w - logit_l).detach().mean()))
                bar.update(1)
        return {
            "reward_mean": float(np.mean(all_rewards)), "reward_std": float(np.std(all_rewards)),
            "reward_min": float(np.min(all_rewards)), "reward_max": float(np.max(all_rewards)),
            "local_reward_mean": float(rewards.mean()), "ratio_at_old_maxdev": ratio_at_old,
            **{k: float(np.mean(v)) if v else None for k, v in stats.items()},
        }
