"""TDPO and TDPO-R: temporal diffusion policy optimization, with critic
active-neuron reset (Zhang et al. 2024, "Confronting Reward Overoptimization for
Diffusion Models"; reference ZiyiZhang27/tdpo).

Per epoch (reference loop order):
1. sample n trajectories with DDIM(eta=1) + CFG, storing each step's log-prob;
2. score the final images once with the training reward (n reward queries);
   normalise per prompt (stat tracker, buffer 32, min count 16);
3. temporal critic: every state x_T .. x_1 (the raw latent BEFORE each UNet
   call, not the predicted x0; x_0 is not embedded) is VAE-decoded, embedded by
   the training reward's own frozen image encoder, and fed to the critic MLP in
   eval mode, giving the residual R_phi(x_t, c) per step;
4. returns: the normalised reward at the last step (plus, for the KL variant, a
   per-step penalty), cumulated backwards with gamma (1): every step's return is
   the normalised final reward. Temporal reward = return - residual, z-scored
   over all N x T values (no advantage clipping);
5. shuffle samples, permute timesteps per sample; loop timestep OUTER, minibatch
   INNER. Each micro-step: PPO-clipped policy loss on the temporal reward
   (clip 1e-4) + clipped value loss 0.5*mean(max((V-G)^2, (V_clip-G)^2)),
   V_clip = clamp(V, V_old +- 0.2), G = the step's return, critic dropout on;
   one backward of pg + cf_coef*cf. An update accumulates `update_steps`
   micro-steps of `update_samples` samples (the scale rule; at SD scale the
   reference's 16 x 8 = 128 samples at one step, 2T = 100 updates per epoch);
   LoRA and critic are clipped separately (1.0) and stepped by two AdamW
   optimizers (lr 1e-4 both). Logged with the reference's definitions:
   approx_kl = mean((ratio - 1) - log ratio), clipfrac = the fraction of rows
   whose clipped loss is the larger;
6. neuron states: critic activations on the embeddings of `dormancy_batch`
   shuffled samples at a random step each (eval mode), LoRA activations on one
   guided UNet call at those samples' states; dormant fractions and overlaps
   are logged every epoch; every `reset_every` epochs the configured neurons
   are selected after training (as the reference) and reset with a generator
   reseeded from the run seed. The reset is APPLIED at the start of the next
   epoch, before its sampling: training sees exactly the reference's sequence,
   but the checkpoint saved at the end of an epoch holds the trained weights,
   not freshly reset ones (with `reset_every` equal to the checkpoint interval,
   every evaluated policy of the policy-reset variants would otherwise be a
   just-reset one). A reset due after the last epoch has no later epoch and is
   not applied.

Where the reference and the paper differ we follow the code:
- the critic has NO activation functions (a purely linear MLP); the ReLU of the
  paper's activation score exists only in the measurement (bench.train.neurons);
- initialisation (and re-initialisation) std is 1/(D+1) with D the INPUT width
  of the critic, for every layer (the reference's `input_size`), not 1/(fan_in+1);
- TDPO-R resets the ACTIVE neurons (score > 0): incoming rows and outgoing
  columns ~ N(0, 1/(D+1)), incoming biases 0, Adam moments zeroed, step count kept;
- the critic target is the per-prompt-normalised reward (the step's return),
  not the raw reward.
Choices the sources leave open, recorded here:
- `reset_every="auto"` gives the critic the reference's 1,000 optimizer steps
  between resets (10 epochs of 100): round(1000 / updates per epoch) epochs
  (scale rule 7, reset rule 'updates'; 5 on the toy at m = 16). Study
  version 3 ran under the older reading, every tenth of the run (reset rule
  'share'), which at 10 epochs reset every epoch;
- the dormant-set overlap counts dormant neurons (the reference counts tensor
  elements, so its overlap is always 100%): |prev ∩ cur| / min(|prev|, |cur|);
- `tdpo-r-leaky` measures activation scores with LeakyReLU(0.01) instead of
  ReLU (the reference's commented-out alternative; paper Appendix B, Fig. 10).
  At threshold 0 that marks every neuron with any nonzero output active: it
  reset 1232 of 1232 critic neurons on the toy suite and gave results identical
  to `tdpo-reset-all`. The paper gives no threshold for it; its Appendix B
  raises the threshold to 0.1 in the one other case where threshold 0 is
  degenerate (policy dormant neurons), so the leaky variant uses 0.1: a neuron
  whose outputs are mostly negative scores about the leaky slope (0.01) times
  its magnitude and counts as dormant;
- the policy's LoRA neurons are the rank dimensions of each LoRA down projection
  (as in the reference's unwired policy recycler); a reset redraws A's rows
  ~ N(0, 1/r) and zeroes B's columns. Dormancy of LoRA neurons averages over
  batch and tokens;
- the KL reference policy is the pretrained UNet (adapters disabled); the
  per-step penalty type `clip` = max(log p_theta - log p_ref, 0) (log-probs are
  means over latent dims) times a controller value (fixed 0.2, or adaptive when
  `kl_target` > 0) times `kl_penalty_coef`. The reference ships 0 and the paper
  gives none; `tdpo-kl` sets it by the scale rule (bench/spec/scale.py): the total
  penalty of a trajectory is 0.1 (a tenth of a normalised return) when every
  step's log-ratio equals one clip range, coef = 0.1 / (0.2 * T * clip) (62.5 at
  the toy's T=10, clip 8e-4; 100 at SD's T=50, clip 1e-4). `kl_penalty_ratio`
  logs the mean |total penalty| over the mean |return| per epoch;
- the critic reset redraws weights with std 1/(D+1), D the critic's input
  width, matching the critic's own initialisation. The reference's recycler
  uses 1/769 for every reward but HPSv2, so with PickScore (D = 1024) it
  redraws with 1/769 while the critic was initialised with 1/1025; we keep
  the critic's own spread (the same for aesthetic, where D = 768);
- a reward without an image encoder (JPEG) falls back to the suite's aesthetic
  CLIP encoder; `critic_encoder=NAME` swaps in another reward's encoder (the
  paper's Appendix E mismatch experiment).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from bench.train import neurons
from bench.errors import check_finite
from bench.train.precision import backward
from bench.train.runner import make_adamw, optimizer_steps
from bench.train.sampling import Trajectory
from bench.train.stat_tracker import PerPromptStatTracker, batch_normalize
from bench.train.updates import epoch_permutations, epoch_windows
from methods.ddpo import local_update_samples


class TemporalCritic(nn.Module):
    """The reference critic head: D -> 1024 -> 128 -> 64 -> 16 -> 1 with dropouts
    0.2, 0.2, 0.1 after the first three layers and no activation functions."""

    def __init__(self, input_dim: int, widths=(1024, 128, 64, 16), dropouts=(0.2, 0.2, 0.1),
                 generator: torch.Generator | None = None):
        super().__init__()
        dims = [input_dim, *widths, 1]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dropouts):
                layers.append(nn.Dropout(dropouts[i]))
        self.layers = nn.Sequential(*layers)
        self.init_std = 1.0 / (input_dim + 1)
        with torch.no_grad():
            for lin in self.linears():
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=generator) * self.init_std)
                lin.bias.zero_()

    def linears(self) -> list[nn.Linear]:
        return [m for m in self.layers if isinstance(m, nn.Linear)]

    def hidden(self) -> dict[str, nn.Linear]:
        """Every Linear but the last: the 1024+128+64+16 neurons whose states are tracked."""
        return {f"layers.{i}": m for i, m in enumerate(self.layers) if isinstance(m, nn.Linear)
                and m is not self.linears()[-1]}

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.layers(embeds).squeeze(-1)


# ------------------------------------------------------------------------------ pure functions
def kl_penalty(log_probs: np.ndarray, ref_log_probs: np.ndarray, kind: str = "clip") -> np.ndarray:
    """Per-step penalty from the log-ratio to the reference policy (reference's options)."""
    r = log_probs - ref_log_probs
    if kind == "kl":
        return r
    if kind == "abs":
        return np.abs(r)
    if kind == "square":
        return 0.5 * r**2
    if kind == "clip":
        return np.maximum(r, 0.0)
    if kind == "approx":
        return np.expm1(r) - r
    raise ValueError(f"unknown kl_penalty {kind!r}: use kl, abs, square, clip or approx")


def temporal_rewards(norm_rewards: np.ndarray, residuals: np.ndarray, step_penalty: np.ndarray | None = None,
                     gamma: float = 1.0, normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(returns, temporal rewards), both (N, T).

    returns[:, -1] = normalised final reward; `step_penalty` (already signed and
    scaled, e.g. -coef * ctl * kl) is added to every step before the backward
    discounted cumulative sum. temporal = returns - residuals, z-scored over all
    N*T values when `normalize` (population std + 1e-8)."""
    n, T = residuals.shape
    returns = np.zeros((n, T))
    returns[:, -1] = norm_rewards
    if step_penalty is not None:
        returns += step_penalty
    for t in reversed(range(T - 1)):
        returns[:, t] += gamma * returns[:, t + 1]
    temporal = returns - residuals
    if normalize:
        temporal = (temporal - temporal.mean()) / (temporal.std() + 1e-8)
    return returns, temporal


def tdpo_policy_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                     clip_range: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The TDPO reference's clipped surrogate (no advantage clipping) and its diagnostics:
    approx_kl = mean((ratio - 1) - log ratio) (the k3 estimator), clipfrac = the fraction
    of rows whose clipped loss is the larger (where the clip takes over)."""
    log_ratio = log_prob - old_log_prob
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.mean(torch.maximum(unclipped, clipped))
    approx_kl = torch.mean((ratio - 1) - log_ratio)
    clipfrac = torch.mean((clipped > unclipped).float())
    return loss, approx_kl.detach(), clipfrac.detach()


def explained_variance(returns: np.ndarray, values: np.ndarray) -> float | None:
    """1 - Var(returns - values) / Var(returns): how much of the returns the critic's sampling-time
    predictions explain (1 perfect, 0 no better than a constant, negative worse)."""
    var = float(np.var(returns))
    return None if var == 0 else 1.0 - float(np.var(returns - values)) / var


def explained_variance_per_step(returns: np.ndarray, values: np.ndarray) -> dict[str, float | None]:
    """The critic's explained variance at each denoising step (column k: the k-th state sampled, x_T first), as
    train metrics `critic_ev_step_KK`: where in the chain the critic has leverage on the return."""
    return {f"critic_ev_step_{k:02d}": explained_variance(returns[:, k], values[:, k])
            for k in range(returns.shape[1])}


def clipped_value_loss(value: torch.Tensor, old_value: torch.Tensor, target: torch.Tensor,
                       clip_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """0.5 * mean(max((V-G)^2, (clamp(V, V_old +- c) - G)^2)) and the clip fraction."""
    if clip_range <= 0:
        return 0.5 * torch.mean((value - target) ** 2), torch.zeros(())
    clipped = torch.clamp(value, old_value - clip_range, old_value + clip_range)
    unclipped_loss = (value - target) ** 2
    clipped_loss = (clipped - target) ** 2
    loss = 0.5 * torch.mean(torch.maximum(unclipped_loss, clipped_loss))
    return loss, torch.mean((clipped_loss > unclipped_loss).float()).detach()


class KLController:
    """Fixed (target 0) or adaptive (PPO-style, proportional error clipped to +-0.2) KL coefficient."""

    def __init__(self, init: float, target: float = 0.0, horizon: int = 2000):
        self.value, self.target, self.horizon = init, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        if self.target > 0:
            error = float(np.clip(current_kl / self.target - 1, -0.2, 0.2))
            self.value *= 1 + error * n_steps / self.horizon


def reset_period(reset_every) -> int:
    """Epochs between resets. 'auto' is the scale rule's to resolve (rule 7, methods/shapes.py:reset_epochs),
    which every grid does; a spec that bypassed it is refused rather than given a guessed period."""
    if reset_every == "auto":
        raise ValueError("reset_every='auto' reached the adapter unresolved: resolve it by the scale rule "
                         "(bench.spec.runspec.resolve_hparams)")
    return max(1, int(reset_every))


# ------------------------------------------------------------------------------ the adapter
class TDPO:
    def __init__(self, ctx):
        self.ctx = ctx
        hp = self.hp = ctx.hp
        spec, bb = ctx.spec, ctx.backbone
        self.params = bb.trainable_parameters()
        self.optimizer = make_adamw(self.params, hp)
        self.encoder = self._critic_encoder()
        size = bb.unet.config.sample_size * bb.pipe.vae_scale_factor
        dim = self.encoder(torch.full((1, 3, size, size), 0.5, device=ctx.device)).shape[-1]
        # Same seed on every process: the critic starts identical everywhere.
        self.critic = TemporalCritic(int(dim), generator=torch.Generator().manual_seed(spec.seed)).to(ctx.device)
        self.critic_params = list(self.critic.parameters())
        self.critic_optimizer = make_adamw(self.critic_params, hp, lr_key="critic_lr")
        self.tracker = PerPromptStatTracker(hp["stat_buffer_size"], hp["stat_min_count"])
        self.kl_ctl = KLController(hp["init_kl_coef"], hp["kl_target"], hp["kl_horizon"])
        self.batch = local_update_samples(ctx, hp)
        self.accumulation = int(hp["update_steps"])
        self.period = reset_period(hp["reset_every"])
        self.lora = neurons.lora_layers(bb.unet, bb.adapter)
        self.prev_masks: dict[str, dict] = {}
        self.pending_reset: dict | None = None
        """Neurons selected for reset after the last epoch's training, applied before the next epoch."""
        self.gradient_updates = 0
        self.epochs_done = 0

    def training_state(self) -> dict:
        from bench.train.state import tracker_state

        return {"optimizer": self.optimizer.state_dict(), "critic": self.critic.state_dict(),
                "critic_optimizer": self.critic_optimizer.state_dict(), "tracker": tracker_state(self.tracker),
                "kl_ctl": self.kl_ctl.value, "prev_masks": self.prev_masks, "pending_reset": self.pending_reset,
                "gradient_updates": self.gradient_updates, "epochs_done": self.epochs_done}

    def load_training_state(self, state: dict) -> None:
        from bench.train.state import load_tracker_state

        self.optimizer.load_state_dict(state["optimizer"])
        self.critic.load_state_dict(state["critic"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        load_tracker_state(self.tracker, state["tracker"])
        self.kl_ctl.value = state["kl_ctl"]
        self.prev_masks, self.pending_reset = state["prev_masks"], state["pending_reset"]
        self.gradient_updates, self.epochs_done = state["gradient_updates"], state["epochs_done"]

    def _critic_encoder(self):
        from bench.train.runner import load_reward

        name = self.hp["critic_encoder"]
        if name in ("", "auto"):
            enc = self.ctx.reward.image_encoder()
            if enc is not None:
                return enc
            name = "aesthetic"
            warnings.warn(f"reward {self.ctx.reward.name!r} has no image encoder; the temporal critic uses the "
                          f"{self.ctx.spec.suite} aesthetic reward's CLIP encoder", stacklevel=2)
        enc = load_reward(name, self.ctx.spec.suite, self.ctx.device).image_encoder()
        if enc is None:
            raise ValueError(f"critic_encoder={name!r}: that reward has no image encoder")
        return enc

    # ------------------------------------------------------------------ pieces
    @torch.no_grad()
    def embed_states(self, traj: Trajectory) -> torch.Tensor:
        """(B, T, D) encoder features of the decoded x_t before every step."""
        B, T = traj.latents.shape[:2]
        flat = traj.latents.reshape(B * T, *traj.latents.shape[2:])
        bs = self.hp["encode_batch_size"]
        feats = [self.encoder(self.ctx.backbone.decode(flat[s:s + bs])).float() for s in range(0, B * T, bs)]
        self.ctx.backbone.counts.encoder_forwards += B * T  # not reward queries: the critic's own inputs
        return torch.cat(feats).reshape(B, T, -1)

    @torch.no_grad()
    def reference_log_probs(self, traj: Trajectory) -> torch.Tensor:
        """(B, T) log-probs of the sampled steps under the pretrained policy (LoRA disabled)."""
        bb = self.ctx.backbone
        with bb.pretrained():
            return bb.step_log_probs(traj, batch_size=len(traj))

    def _step(self) -> None:
        ctx, hp = self.ctx, self.hp
        optimizer_steps(ctx, [(self.optimizer, self.params, hp["max_grad_norm"]),
                              (self.critic_optimizer, self.critic_params, hp["max_grad_norm"])])
        self.gradient_updates += 1

    def window_loss(self, traj, window, embeds, residuals, returns_t, temporal_t) -> dict:
        """Backpropagate one update's loss pg + cf_coef * cf (means over its rows), in fused calls."""
        bb, hp, dev = self.ctx.backbone, self.hp, self.ctx.device
        rows = len(window)
        out = dict.fromkeys(("pg_loss", "cf_loss", "approx_kl", "clipfrac", "cf_clipfrac", "ratio_mean",
                             "ratio_maxdev"), 0.0)
        for idx, steps in window.chunks(self.ctx.spec.train_batch_size):
            sub = traj.index(idx)
            log_prob = bb.log_prob(sub, steps)
            dev_idx, dev_steps = idx.to(dev), steps.to(dev)
            old = traj.log_probs[idx.to(traj.log_probs.device), steps.to(traj.log_probs.device)]
            pg, kl, clipfrac = tdpo_policy_loss(log_prob, old, temporal_t[dev_idx, dev_steps], hp["clip_range"])
            value = self.critic(embeds[dev_idx, dev_steps])
            cf, vfrac = clipped_value_loss(value, residuals[dev_idx, dev_steps], returns_t[dev_idx, dev_steps],
                                           hp["clip_range_critic"])
            w = len(idx) / rows
            check_finite("policy loss", pg)
            check_finite("critic loss", cf)
            backward(self.ctx, (pg + hp["cf_coef"] * cf) * w)
            for k, v in zip(out, (pg, cf, kl, clipfrac, vfrac)):
                out[k] += float(v.detach()) * w
            ratio = torch.exp(log_prob.detach() - old)
            out["ratio_mean"] += float(ratio.mean()) * w
            out["ratio_maxdev"] = max(out["ratio_maxdev"], float((ratio - 1).abs().max()))
        return out

    def apply_pending_reset(self) -> dict:
        """Reset the neurons selected after the previous epoch's training (see the module docstring)."""
        out = {"critic_neurons_reset": 0.0, "policy_neurons_reset": 0.0}
        if self.pending_reset is None:
            return out
        ctx = self.ctx
        gen = torch.Generator().manual_seed(ctx.spec.seed)  # the reference reseeds for every reset
        critic, policy = self.pending_reset["critic"], self.pending_reset["policy"]
        if critic is not None:
            out["critic_neurons_reset"] = float(neurons.reset_linear_neurons(
                self.critic.linears(), critic, self.critic.init_std, self.critic_optimizer, gen))
        if policy is not None:
            out["policy_neurons_reset"] = float(neurons.reset_lora_neurons(self.lora, policy, self.optimizer, gen))
        self.pending_reset = None
        return out

    # ------------------------------------------------------------------ epoch
    def train_epoch(self, n: int, epoch: int) -> dict:
        ctx, hp, spec = self.ctx, self.hp, self.ctx.spec
        resets = self.apply_pending_reset()
        prompts = ctx.sample_prompts(n)
        traj, rewards = ctx.sample_and_score(prompts)

        self.critic.eval()
        with ctx.timed("critic_encoding"), torch.no_grad():
            embeds = self.embed_states(traj)  # (n, T, D)
            residuals = self.critic(embeds)  # (n, T)

        all_prompts, all_rewards = ctx.gather(traj.prompts, rewards)
        norm = self.tracker.update(all_prompts, all_rewards) if hp["per_prompt_stat_tracking"] \
            else batch_normalize(all_rewards)
        all_residuals = ctx.gather_array(residuals.cpu().numpy())
        metrics: dict[str, float] = dict(resets)
        penalty = None
        if hp["kl_penalty_coef"] > 0:
            ref = self.reference_log_probs(traj)
            lp, rlp = ctx.gather_array(traj.log_probs.cpu().numpy()), ctx.gather_array(ref.cpu().numpy())
            metrics["mean_kl"] = float((lp - rlp).sum(1).mean())
            metrics["kl_ctl"] = self.kl_ctl.value
            penalty = -hp["kl_penalty_coef"] * self.kl_ctl.value * kl_penalty(lp, rlp, hp["kl_penalty"])
        returns, temporal = temporal_rewards(norm, all_residuals, penalty, hp["gamma"], hp["temporal_reward_norm"])
        check_finite("returns", returns)
        check_finite("temporal rewards (advantages)", temporal)
        if penalty is not None:  # how much of a return the penalty is: |sum of penalties| / |final reward|
            metrics["kl_penalty_ratio"] = float(np.abs(penalty.sum(1)).mean() / (np.abs(norm).mean() + 1e-12))
        local = ctx.local_slice(n)
        returns_t = torch.as_tensor(returns[local], dtype=torch.float32, device=ctx.device)
        temporal_t = torch.as_tensor(temporal[local], dtype=torch.float32, device=ctx.device)

        stats = {k: [] for k in ("pg_loss", "cf_loss", "approx_kl", "clipfrac", "cf_clipfrac", "ratio_mean",
                                 "ratio_maxdev")}
        self.optimizer.zero_grad(set_to_none=True)
        self.critic_optimizer.zero_grad(set_to_none=True)
        self.critic.train()
        plan = []
        for _ in range(hp["num_inner_epochs"]):
            perm, t_perm = epoch_permutations(ctx.rng, n, spec.num_steps)
            plan += epoch_windows(ctx, perm, t_perm, self.batch, self.accumulation, "timestep", n)  # timestep OUTER
        with ctx.bar(len(plan), "training") as bar:
            for window in plan:
                for k, v in self.window_loss(traj, window, embeds, residuals, returns_t, temporal_t).items():
                    stats[k].append(v)
                self._step()
                bar.update(1)
        self.critic.eval()
        if hp["kl_penalty_coef"] > 0:
            self.kl_ctl.update(metrics["mean_kl"], len(all_rewards))
        metrics.update(self.neuron_step(traj, embeds, perm, t_perm))
        self.epochs_done += 1
        return {
            "reward_mean": float(np.mean(all_rewards)), "reward_std": float(np.std(all_rewards)),
            "reward_min": float(np.min(all_rewards)), "reward_max": float(np.max(all_rewards)),
            "local_reward_mean": float(rewards.float().mean()),
            "loss": float(np.mean(stats["pg_loss"]) + hp["cf_coef"] * np.mean(stats["cf_loss"])),
            **{k: float(np.mean(v)) for k, v in stats.items() if not k.startswith("ratio_")},
            "ratio_at_old": stats["ratio_mean"][0], "ratio_at_old_maxdev": stats["ratio_maxdev"][0],
            "critic_explained_variance": explained_variance(returns, all_residuals),
            **explained_variance_per_step(returns, all_residuals),
            "residual_mean": float(all_residuals.mean()), "temporal_reward_std": float(temporal.std()),
            **metrics,
        }

    # ------------------------------------------------------------------ neuron states
    @torch.no_grad()
    def neuron_step(self, traj: Trajectory, embeds: torch.Tensor, perm: torch.Tensor, t_perm: torch.Tensor) -> dict:
        """Dormant fractions and overlaps of critic and LoRA neurons; resets when due."""
        ctx, hp, bb = self.ctx, self.hp, self.ctx.backbone
        k = min(hp["dormancy_batch"], len(perm))
        idx, steps = perm[:k], t_perm[:k, -1]  # the reference's batch: first samples, a random step each
        batch = ctx.gather_tensor(embeds[idx.to(ctx.device), steps.to(ctx.device)])
        with neurons.record_outputs(self.critic.hidden()) as outs:
            self.critic(batch)
        critic_masks = neurons.dormant_masks(outs, hp["dormant_threshold"], hp["activation"])
        with neurons.record_outputs({name: down for name, (down, _, _) in self.lora.items()}) as outs:
            bb.log_prob(traj.index(idx), steps)
        lora_outs = {name: ctx.gather_tensor(o) for name, o in outs.items()}
        policy_masks = neurons.dormant_masks(lora_outs, hp["policy_dormant_threshold"], hp["activation"])
        out = {
            "critic_dormant_fraction": neurons.dormant_fraction(critic_masks),
            "critic_dormant_overlap": neurons.dormant_overlap(self.prev_masks.get("critic"), critic_masks),
            "policy_dormant_fraction": neurons.dormant_fraction(policy_masks),
            "policy_dormant_overlap": neurons.dormant_overlap(self.prev_masks.get("policy"), policy_masks),
        }
        self.prev_masks = {"critic": critic_masks, "policy": policy_masks}
        if (self.epochs_done + 1) % self.period == 0 and (hp["critic_reset"] != "none" or hp["policy_reset"] != "none"):
            # selected now, on this epoch's data (the reference's timing); applied before the next epoch
            self.pending_reset = {
                "critic": None if hp["critic_reset"] == "none" else
                [self._select(critic_masks[name], hp["critic_reset"]) for name in self.critic.hidden()],
                "policy": None if hp["policy_reset"] == "none" else
                {name: self._select(m, hp["policy_reset"]) for name, m in policy_masks.items()},
            }
        return out

    @staticmethod
    def _select(dormant: torch.Tensor, which: str) -> torch.Tensor:
        if which == "active":
            return ~dormant
        if which == "dormant":
            return dormant
        if which == "all":
            return torch.ones_like(dormant)
        raise ValueError(f"unknown reset target {which!r}: use none, active, dormant or all")
