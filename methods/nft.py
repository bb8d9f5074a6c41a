"""DiffusionNFT (Zheng et al. 2025; NVlabs/DiffusionNFT @24af555, scripts/train_nft_sd3.py), ported from flow
matching to the epsilon-prediction DDIM UNet. Facts, and the derivation of the port (ours: nobody has published
one), in ../shared/reference/grpo-nft-facts.md.

Rollouts. The OLD policy (a second LoRA state) samples with deterministic DDIM (`rollout_eta` 0: the source's
sampler is a deterministic ODE) at `rollout_guidance` (1: the recipe is CFG-free; kept after a declared decision
on the development reward, where it beat guidance 5, see the README). NFT needs no log-probs: only
each final latent x0, its prompt and its reward are kept. Prompts come in groups of `images_per_prompt` (24; a
count, kept by the scale rule).

Data per update. The source takes ONE optimizer step per epoch of 1,152 images. The scale rule gives every
method m times its source's updates per query; at the toy default that is one update per 72 images, more than
an epoch of 32, so the epochs' samples wait in a buffer and an update comes when the run's update count says
so (bench/spec/scale.py: updates_this_epoch with least=0). An update trains on the buffer, which then empties;
where an epoch holds k > 1 updates, the buffer is cut into k consecutive shares. A share is the source's epoch:
r's statistics are taken over it. Data sampled after the run's last update is not trained on.

r. A = (R - mean of the share's same-prompt rewards) / (std of all the share's rewards + std_eps) (ddof 0, over
all processes); r = clamp(clamp(A, -c, c) / (2c) + 0.5, 0, 1), c = adv_clip_max: the paper's
r = 1/2 + 1/2 clip(A / c, -1, 1) (the source's code writes c = 5 and divides by 10).

Loss, per (sample, noise level) row. The levels are the rollout grid's T timesteps, int(0.99 T) of them per
sample in a random order (9 of 10 in the source). Fresh noise: x_t = sqrt(abar) x0 + sqrt(1 - abar) eps. With
eps_theta (current LoRA, with gradient), eps_old (old LoRA) and eps_ref (LoRA off), all at `train_guidance`:
    eps+ = b eps_theta + (1 - b) eps_old,      eps- = (1 + b) eps_old - b eps_theta          (b = nft_beta)
    x0hat(e) = (x_t - sqrt(1 - abar) e) / sqrt(abar)
    L(e) = mean_dims (x0hat(e) - x0)^2 / stopgrad(max(mean_dims |x0hat(e) - x0|, 1e-5))      (float64)
    loss = loss_weight * mean_rows (r L(eps+) + (1 - r) L(eps-)) / b + ref_coef * mean (v_theta - v_ref)^2
x0hat is affine in the prediction with theta-free coefficients, so x0hat(eps+-) is the same b-mix of
x0hat(eps_theta) and x0hat(eps_old) as the source's v+- give: the x0-space loss, its adaptive weight, r and
5/b carry over unchanged. The penalty to the base model is the source's, on the flow-matching velocity
v = eps - x0hat: the VP state x_t = sqrt(abar) x0 + sqrt(1 - abar) eps is the flow state (1 - t) x0 + t eps
scaled by sqrt(abar) + sqrt(1 - abar), with t = sqrt(1 - abar) / (sqrt(abar) + sqrt(1 - abar)), and
v_theta - v_ref = (eps_theta - eps_ref) / (1 - t) = (eps_theta - eps_ref) (1 + sqrt((1 - abar) / abar)). The
per-level weight 1 / (1 - t)^2 runs from 1.08 to 88 on the toy's 10-step grid, so the source's 1e-4 carries
over exactly only with it (`velocity_penalty`, tested against v = eps - x0hat on the same tensors).

Old policy. After the k-th update (k counted from 1): old <- d old + (1 - d) theta, d = min(1e-3 k, 0.5); a
count of updates, so the schedule is the source's in updates (the toy's 18 updates keep old close to theta).

Deviations (README, methods table): LoRA of the run's rank (the source: r32, alpha 64, attention projections);
the toy's grid of T = 10 DDIM steps is the source's sampler length, SD's 50 gives 49 levels per sample; SD3's
noise levels near t = 1 have no SD v1.x counterpart; fp32 (the source: fp16 with a grad scaler; here the run's
precision); no EMA copy for evaluation (the source evaluates an EMA of theta; here theta, like every method).
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from bench.errors import check_finite
from bench.spec.scale import updates_this_epoch
from bench.train.precision import backward
from bench.train.runner import make_adamw, optimizer_step
from bench.train.sampling import gaussian_noise
from methods.grpo import group_sizes


def nft_r(prompts: list[str], rewards, adv_clip: float = 5.0, std_eps: float = 1e-4) -> np.ndarray:
    """r in [0, 1] per image: the same-prompt advantage over the global std, clipped to +-adv_clip, mapped by
    clip(A) / 10 + 0.5 and clamped to [0, 1]."""
    r = np.asarray(rewards, dtype=np.float64)
    same = np.empty_like(r)
    for p in set(prompts):
        idx = [i for i, q in enumerate(prompts) if q == p]
        same[idx] = r[idx].mean()
    a = (r - same) / (r.std() + std_eps)
    return np.clip(np.clip(a, -adv_clip, adv_clip) / (2 * adv_clip) + 0.5, 0.0, 1.0)


def implicit_predictions(eps_theta: torch.Tensor, eps_old: torch.Tensor, beta: float):
    """(eps+, eps-): the implicit positive and negative policies, b-mixes of the current and old predictions."""
    return beta * eps_theta + (1 - beta) * eps_old, (1 + beta) * eps_old - beta * eps_theta


def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """DDPM's x0 estimate from an epsilon prediction; abar broadcasts per row."""
    a = abar.reshape(-1, *([1] * (x_t.ndim - 1)))
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


def adaptive_loss(x0_hat: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Per row: mean squared x0 error over the stop-gradient mean absolute error (at least 1e-5), in float64."""
    err = (x0_hat.double() - x0.double()).flatten(1)
    return err.square().mean(1) / err.abs().mean(1).clamp_min(1e-5).detach()


def velocity_penalty(eps_theta: torch.Tensor, eps_ref: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """Per row: mean over dims of (v_theta - v_ref)^2, the source's penalty on the flow-matching velocity
    v = eps - x0hat, from epsilon predictions at the VP noise level abar (float64): the eps difference times
    1 / (1 - t) = 1 + sqrt((1 - abar) / abar)."""
    a = abar.double().reshape(-1, *([1] * (eps_theta.ndim - 1)))
    w = 1 + ((1 - a) / a).sqrt()
    return ((eps_theta.double() - eps_ref.double()) * w).flatten(1).square().mean(1)


def nft_row_loss(eps_theta, eps_old, eps_ref, x_t, x0, abar, r, hp) -> tuple[torch.Tensor, dict]:
    """Each row's share of DiffusionNFT's loss (its mean over rows is the update's loss), and statistics."""
    b = float(hp["nft_beta"])
    pos, neg = implicit_predictions(eps_theta.float(), eps_old.float(), b)
    l_pos = adaptive_loss(x0_from_eps(x_t, pos, abar), x0)
    l_neg = adaptive_loss(x0_from_eps(x_t, neg, abar), x0)
    r = r.double()
    rows = float(hp["loss_weight"]) * (r * l_pos + (1 - r) * l_neg) / b
    if eps_ref is not None:
        rows = rows + float(hp["ref_coef"]) * velocity_penalty(eps_theta, eps_ref, abar)
    return rows, {"loss_pos": l_pos.detach(), "loss_neg": l_neg.detach()}


def soft_update(old: list[torch.Tensor], current: list[torch.Tensor], k: int, per_update: float,
                most: float) -> float:
    """old <- d old + (1 - d) current in place, d = min(per_update * k, most) after the k-th update; returns d."""
    d = min(per_update * k, most)
    for o, c in zip(old, current):
        o.mul_(d).add_(c.detach().to(o.dtype), alpha=1 - d)
    return d


@contextmanager
def lora_weights(params: list[torch.nn.Parameter], values: list[torch.Tensor]):
    """Inside the block the LoRA parameters hold `values` (the old policy); outside, their own weights."""
    saved = [p.data.clone() for p in params]
    with torch.no_grad():
        for p, v in zip(params, values):
            p.data.copy_(v)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.data.copy_(s)


class DiffusionNFT:
    def __init__(self, ctx):
        self.ctx = ctx
        self.hp = hp = ctx.hp
        self.params = ctx.backbone.trainable_parameters()
        self.optimizer = make_adamw(self.params, hp)
        self.old = [p.detach().clone() for p in self.params]  # starts at theta
        self.pending_prompts: list[str] = []
        self.pending_x0: list[torch.Tensor] = []
        self.pending_rewards: list[torch.Tensor] = []
        self.gradient_updates = 0

    def training_state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "gradient_updates": self.gradient_updates,
                "old": list(self.old), "pending_prompts": list(self.pending_prompts),
                "pending_x0": list(self.pending_x0), "pending_rewards": list(self.pending_rewards)}

    def load_training_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.gradient_updates = state["gradient_updates"]
        self.old = [t.to(p.device, p.dtype) for t, p in zip(state["old"], self.params)]
        self.pending_prompts = list(state["pending_prompts"])
        self.pending_x0 = [t.to(self.ctx.device) for t in state["pending_x0"]]
        self.pending_rewards = list(state["pending_rewards"])

    def train_epoch(self, n: int, epoch: int) -> dict:
        ctx, hp = self.ctx, self.hp
        prompts = ctx.sample_prompt_groups(group_sizes(n, int(hp["images_per_prompt"])))
        with lora_weights(self.params, self.old):
            traj, rewards = ctx.sample_and_score(prompts, eta=float(hp["rollout_eta"]),
                                                 guidance_scale=float(hp["rollout_guidance"]))
        x0 = traj.next_latents[:, -1]
        _, all_rewards = ctx.gather(traj.prompts, rewards)
        self.pending_prompts += traj.prompts
        self.pending_x0.append(x0)
        self.pending_rewards.append(rewards)
        k = updates_this_epoch(ctx.queries_before, n * ctx.world_size, hp["updates_per_query"], least=0)
        stats: dict[str, list] = {}
        if k:
            prompts_all, x0_all = self.pending_prompts, torch.cat(self.pending_x0)
            rewards_all = torch.cat(self.pending_rewards)
            self.pending_prompts, self.pending_x0, self.pending_rewards = [], [], []
            cuts = np.linspace(0, len(prompts_all), k + 1).round().astype(int)
            with ctx.bar(k, "training") as bar:
                for a, b in zip(cuts[:-1], cuts[1:]):
                    for key, v in self.update(prompts_all[a:b], x0_all[a:b], rewards_all[a:b]).items():
                        stats.setdefault(key, []).append(v)
                    bar.update(1)
        out = {"reward_mean": float(np.mean(all_rewards)), "reward_std": float(np.std(all_rewards)),
               "reward_min": float(np.min(all_rewards)), "reward_max": float(np.max(all_rewards)),
               "local_reward_mean": float(rewards.float().mean()), "updates_this_epoch": k,
               "waiting_images": len(self.pending_prompts),
               "x0_sq": float(x0.float().square().mean())}  # brightness creep (DiffusionNFT #47) shows here first
        out.update({key: float(np.mean(v)) for key, v in stats.items()})
        return out

    def update(self, prompts: list[str], x0: torch.Tensor, rewards: torch.Tensor) -> dict:
        """One optimizer step on a share of the waiting samples (the source's epoch), then the old policy's
        soft update."""
        ctx, hp, bb = self.ctx, self.hp, self.ctx.backbone
        all_prompts, all_rewards = ctx.gather(prompts, rewards)
        r = torch.as_tensor(nft_r(all_prompts, all_rewards, hp["adv_clip_max"], hp["std_eps"])
                            [ctx.local_slice(len(prompts))], dtype=torch.float64, device=ctx.device)
        check_finite("NFT r", r)
        n, T, levels = len(prompts), ctx.spec.num_steps, int(hp["levels_per_sample"])
        level = torch.as_tensor(np.stack([ctx.rng.permutation(T)[:levels] for _ in range(n)]).reshape(-1))
        sample = torch.arange(n).repeat_interleave(levels)
        cond, uncond = bb.encode_prompts(prompts)
        g = float(hp["train_guidance"])
        alphas = bb.scheduler.alphas_cumprod.to(ctx.device)
        rows = len(sample)
        totals = {"loss": 0.0, "loss_pos": 0.0, "loss_neg": 0.0}
        self.optimizer.zero_grad(set_to_none=True)
        for s in range(0, rows, ctx.spec.train_batch_size):
            i = sample[s:s + ctx.spec.train_batch_size].to(ctx.device)
            t = bb.timesteps.to(ctx.device)[level[s:s + ctx.spec.train_batch_size].to(ctx.device)]
            abar = alphas[t].float()
            noise = gaussian_noise(x0[i].shape, ctx.generator, ctx.device)
            a = abar.reshape(-1, 1, 1, 1)
            x_t = a.sqrt() * x0[i].float() + (1 - a).sqrt() * noise
            with torch.no_grad():
                with lora_weights(self.params, self.old):
                    eps_old = bb.guided_noise(x_t, t, cond[i], uncond[i], g)
                eps_ref = None
                if hp["ref_coef"]:
                    with bb.pretrained():
                        eps_ref = bb.guided_noise(x_t, t, cond[i], uncond[i], g)
            eps_theta = bb.guided_noise(x_t, t, cond[i], uncond[i], g)
            row_loss, parts = nft_row_loss(eps_theta, eps_old, eps_ref, x_t, x0[i].float(), abar, r[i], hp)
            loss = row_loss.sum() / rows
            check_finite("NFT loss", loss)
            backward(ctx, loss.float())
            totals["loss"] += float(loss.detach())
            totals["loss_pos"] += float(parts["loss_pos"].sum()) / rows
            totals["loss_neg"] += float(parts["loss_neg"].sum()) / rows
        optimizer_step(ctx, self.optimizer, self.params, hp["max_grad_norm"])
        self.gradient_updates += 1
        d = soft_update(self.old, self.params, self.gradient_updates, hp["old_decay_per_update"], hp["old_decay_max"])
        return {**totals, "r_mean": float(r.mean()), "old_decay": d, "update_images": float(n)}
