"""AlignProp: reward backpropagation through the sampling chain with randomized
truncation (Prabhudesai et al.), following mihirp1998/AlignProp (A0 paper-era,
A1 refactor) and TRL's AlignPropTrainer (T).

Per epoch, n images in updates of `update_samples` chains (the scale rule: 128
of 256 at SD scale, A0's two updates per epoch):
1. draw K, the number of final denoising steps that keep gradients, ONCE per
   group of `k_group` chains (8, A1's per-GPU batch): K = T - threshold,
   threshold ~ U{0..T-k_min} (T's truncated_rand_backprop_minmax (0, 50) at
   T=50, and A1's "drawn once per batch"; A0 re-draws it at every step, which its
   authors call unintended). The chains of an update run in as few batched calls
   as `train_batch_size` allows, each chain keeping its own K;
2. sample with DDIM(eta) + classifier-free guidance from fresh noise. For the
   first T-K steps the noise prediction is computed without gradients; the last
   K UNet calls keep them, each wrapped in gradient checkpointing
   (use_reentrant=False). The latents are never detached; the DDIM step is
   reparameterised (mean + std * noise) so the chain is differentiable;
3. decode with the VAE (with gradients), score with the reward's
   differentiable path (torch resize + normalise, no PIL): one reward query per
   image, drawn from the common budget;
4. loss = loss_coeff * mean(|target - r|): both AlignProp versions' form
   (aesthetic |r - 10| * 0.01; HPSv2 1 - cosine), which stops at the target and
   pulls back above it. The target is the training reward's registered
   `max_score` (aesthetic 10, HPSv2 1, PickScore 100). `loss_form=linear` gives
   TRL's 10 - r, which keeps pushing past the target; it is the fallback, with a
   warning, for a reward that has no max_score;
5. clip the gradient norm to max_grad_norm, AdamW, once per update.

One AlignProp reward query returns a gradient of the reward with respect to the
image, not only a scalar: at an equal budget of reward queries AlignProp gets
more information per query than the black-box methods. The report says so.

Choices the sources leave open or disagree on, and what we do:
- eta: A0 samples with eta 0, A1 and T with eta 1.0; we use the run's eta (1.0
  by default, like DDPO), so both methods share one sampler.
- guidance: A0 7.5, A1/T 5.0; we use the run's guidance scale (5.0).
- lr 1e-3, weight decay 1e-4, grad clip 1.0: A1 and T (A0: wd 0.1, clip 5.0).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from bench.errors import BenchError, check_finite
from bench.spec.scale import updates_this_epoch
from bench.train.precision import backward
from bench.train.runner import crash_point, make_adamw, optimizer_step
from bench.train.sampling import ddim_step
from bench.train.updates import window_sizes


def reward_target(hp: dict, reward_name: str) -> float | None:
    """The loss target: `reward_target` if numeric; 'auto' takes the training reward's registered
    `max_score` (aesthetic 10, HPSv2 1, PickScore 100), None when it has none."""
    if hp["reward_target"] != "auto":
        return float(hp["reward_target"])
    from bench.spec.catalog import rewards

    return rewards.get(reward_name).meta.get("max_score") if reward_name in rewards else None


def alignprop_loss(rewards: torch.Tensor, coeff: float, target: float | None, form: str) -> torch.Tensor:
    """AlignProp's loss: coeff * mean(|target - r|) (`abs`, both AlignProp versions: it stops at the
    target and pulls back above it) or coeff * mean(target - r) (`linear`, TRL's form, which keeps
    pushing past the target; its gradient does not depend on the target, so 0 stands in when a
    reward has no target)."""
    if form == "abs":
        if target is None:
            raise ValueError("loss_form=abs needs a reward target: this reward has no max_score; "
                             "set reward_target=<number> or loss_form=linear")
        return coeff * (target - rewards).abs().mean()
    if form == "linear":
        return coeff * ((target or 0.0) - rewards).mean()
    raise ValueError(f"unknown loss_form {form!r}: use abs or linear")


class AlignProp:
    def __init__(self, ctx):
        self.ctx = ctx
        hp = ctx.hp
        self.hp = hp
        self.params = ctx.backbone.trainable_parameters()
        self.optimizer = make_adamw(self.params, hp)
        b, world = int(hp["update_samples"]), ctx.world_size
        if b % world:
            raise BenchError(f"alignprop: an update of {b} chains cannot be split over {world} processes")
        self.batch = b // world
        self.target = reward_target(hp, getattr(ctx.reward, "name", ""))
        if hp["loss_form"] == "abs" and self.target is None:
            warnings.warn(f"reward {getattr(ctx.reward, 'name', '?')!r} has no max_score: AlignProp uses the "
                          f"linear loss (set reward_target to use |target - r|)", stacklevel=2)
            self.form = "linear"
        else:
            self.form = hp["loss_form"]
        self.gradient_updates = 0

    def training_state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "gradient_updates": self.gradient_updates}

    def load_training_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.gradient_updates = state["gradient_updates"]

    def draw_k(self, n: int = 1) -> torch.Tensor:
        """Steps that keep gradients, one per group of `k_group` chains: K = T - threshold,
        threshold ~ U{0, ..., T - k_min}; returned per chain (n values)."""
        T = self.ctx.spec.num_steps
        k_min = min(max(1, int(self.hp["k_min"])), T)
        group = max(1, int(self.hp["k_group"]))
        draws = self.ctx.rng.integers(k_min, T + 1, size=-(-n // group))
        return torch.as_tensor(np.repeat(draws, group)[:n], dtype=torch.long)

    def _eps(self, x, t, cond, uncond, grad: bool):
        bb = self.ctx.backbone
        if not grad:
            with torch.no_grad():
                return bb.predict_noise(x, t, cond, uncond)
        if self.hp["gradient_checkpointing"]:
            before = bb.counts.unet_forward
            out = checkpoint(bb.predict_noise, x, t, cond, uncond, use_reentrant=False)
            return bb.counts.recomputed(out, bb.counts.unet_forward - before)  # the backward's second forward
        return bb.predict_noise(x, t, cond, uncond)

    def sample_with_grad(self, prompts: list[str], k, generator: torch.Generator | None = None,
                         latents: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [0, 1] whose graph reaches the LoRA weights through the last k[i] steps of
        chain i only (`k` an int for all chains, or one per chain). Chains with different k
        share UNet calls wherever they agree, so a fused group of chains has exactly the
        gradient of its chains sampled one group at a time."""
        bb = self.ctx.backbone
        n = len(prompts)
        k = torch.full((n,), int(k), dtype=torch.long) if not torch.is_tensor(k) else k.long()
        x = bb.initial_latents(n, generator) if latents is None else latents
        cond, uncond = bb.encode_prompts(prompts)
        T = len(bb.timesteps)
        for i, t in enumerate(bb.timesteps):
            with_grad = (i >= T - k).to(x.device)
            if bool(with_grad.all()) or not bool(with_grad.any()):
                eps = self._eps(x, t, cond, uncond, bool(with_grad.all()))
            else:  # mixed: the chains that keep gradients here, and the ones that do not
                g_rows, n_rows = with_grad.nonzero().squeeze(1), (~with_grad).nonzero().squeeze(1)
                eps_g = self._eps(x[g_rows], t, cond[g_rows], uncond[g_rows], True)
                eps_n = self._eps(x[n_rows], t, cond[n_rows], uncond[n_rows], False)
                eps = torch.empty(x.shape, dtype=eps_g.dtype, device=x.device)
                eps = eps.index_put((g_rows,), eps_g).index_put((n_rows,), eps_n)
            x = ddim_step(bb.scheduler, eps, t, x, eta=bb.eta, generator=generator)
        return bb.decode_with_grad(x)

    def loss(self, rewards: torch.Tensor) -> torch.Tensor:
        return alignprop_loss(rewards, self.hp["loss_coeff"], self.target, self.form)

    def train_epoch(self, n: int, epoch: int) -> dict:
        ctx, spec = self.ctx, self.ctx.spec
        prompts = ctx.sample_prompts(n)
        rewards, losses, ks = [], [], []
        with ctx.bar(n, "sample+backprop") as bar:
            for start, size in self.updates(n):
                chunk = prompts[start:start + size]
                k = self.draw_k(len(chunk))
                self.optimizer.zero_grad(set_to_none=True)
                for s in range(0, len(chunk), spec.train_batch_size):  # fused calls, as memory allows
                    part = chunk[s:s + spec.train_batch_size]
                    images = self.sample_with_grad(part, k[s:s + len(part)], generator=ctx.generator)
                    r = ctx.reward.score_differentiable(images, part)  # one reward query per image
                    loss = self.loss(r)
                    check_finite("AlignProp loss", loss)
                    backward(ctx, loss * len(part) / len(chunk))
                    rewards.append(r.detach().float().cpu())
                    losses.append(loss.item())
                    bar.update(len(part))
                ks.append(float(k.float().mean()))
                self._step()
                crash_point(ctx.epoch, "mid")  # tests kill a run here (no-op otherwise)
        local = torch.cat(rewards)
        _, all_rewards = ctx.gather(prompts, local)
        return {
            "reward_mean": float(np.mean(all_rewards)), "reward_std": float(np.std(all_rewards)),
            "reward_min": float(np.min(all_rewards)), "reward_max": float(np.max(all_rewards)),
            "loss": float(np.mean(losses)), "backprop_steps_mean": float(np.mean(ks)),
        }

    def updates(self, n: int) -> list[tuple[int, int]]:
        """(first chain, chains) of each update this epoch: `batch` chains each where the rule's size is whole,
        else the seeded schedule of sizes whose mean is exact (bench/train/updates.py)."""
        z = float(self.hp.get("update_chains", self.batch * self.ctx.world_size)) / self.ctx.world_size
        if abs(z - self.batch) < 1e-9:
            return [(s, min(self.batch, n - s)) for s in range(0, n, self.batch)]
        k = updates_this_epoch(self.ctx.queries_before, n * self.ctx.world_size, self.hp["updates_per_query"],
                               most=n)
        sizes = window_sizes(self.ctx.rng, n, k)
        return [(sum(sizes[:i]), size) for i, size in enumerate(sizes)]

    def _step(self) -> None:
        optimizer_step(self.ctx, self.optimizer, self.params, self.hp["max_grad_norm"])
        self.gradient_updates += 1
