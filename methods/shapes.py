"""The built-in methods' update shapes (methods/base.py's `UpdateShape`): torch-free, one class per way of
updating, each beside the trainer it describes in spirit:

    PolicyGradient   methods/ddpo.py, methods/grpo.py: PPO windows of samples x steps
    TDPO             methods/tdpo.py: a PolicyGradient plus the temporal critic's encoder rows
    AlignProp        methods/alignprop.py: chains backpropagated through their last K steps
    PRDP             methods/prdp.py: K passes over the epoch's pairs of trajectories
    DiffusionNFT     methods/nft.py: forward-process rows, one update per buffered batch of images
    DenseDPO         methods/dense_dpo.py: pairs of steps from a buffer of rollouts

They live apart from the trainers only so that `bench list`, validation and the plan never import torch.
"""

from __future__ import annotations

import math

from bench.spec.scale import _round, half_up, updates_this_epoch
from methods.base import Cost, Schedule, UpdateShape

CFG = 2  # classifier-free guidance: a guided call is 2 rows per latent


def trained_steps(src: dict, num_steps: int) -> tuple[int, int]:
    """(source's, run's) denoising steps a method trains on: all T, or T - 1 for a method that never trains
    the last step (GRPO: `trains_last_step` False in its source)."""
    drop = 0 if src.get("trains_last_step", True) else 1
    return src["num_steps"] - drop, num_steps - drop


def ppo_shape(src: dict, scale) -> tuple[int, int, float, float]:
    """(loop width b, steps tau, rows z, updates per epoch U) of one policy-gradient update at `scale`.

    z = S*T/U sample-steps is the update's exact size (at least 1, the floor, and at most the epoch's S*T, the
    ceiling: an update never waits for the next epoch's samples); the steps are the ones the
    method trains (`trained_steps`). The update spans tau steps and z / tau samples on average; where that is
    under one sample, it is one sample over z steps (b = 1; the windows then cut one sample's steps). b, a
    whole number, is the minibatch width of the method's loop; where b * tau != z the updates follow the
    seeded schedule of sizes (bench/train/updates.py)."""
    T0, T = trained_steps(src, scale.num_steps)
    S = scale.samples_per_epoch
    U = scale.multiplier * src["updates_per_epoch"] * S / src["samples_per_epoch"]
    z = min(S * T, max(1.0, S * T / U))  # floor one sample-step; ceiling one epoch's on-policy data
    tau = min(T, max(1, _round(src["update_steps"] * T / T0)))
    b = 1 if z < tau else min(S, _round(z / tau))  # z < tau: the shape yields, one sample over z steps
    return b, tau, z, U


def nft_levels(src: dict, num_steps: int) -> int:
    """Noise levels per sample in DiffusionNFT's loss: int(0.99 T) of the rollout grid's T (9 of 10 in the
    source, 49 of 50 at SD's T), at least 1."""
    return max(1, int(src["level_fraction"] * num_steps))



def _whole(x: float) -> bool:
    return abs(x - round(x)) < 1e-9


class PolicyGradient(UpdateShape):
    """Per-step policy gradient (DDPO, GRPO): an update is `update_samples` samples x `update_steps` steps,
    `update_rows` sample-steps exactly (scale rule, step 3)."""

    lockstep = True

    def derive(self, src, hp, out, scale):
        b, tau, z, _ = ppo_shape(src, scale)
        out["update_samples"], out["update_steps"], out["update_rows"] = b, tau, z

    def update_rows(self, src, hp, scale):
        return ppo_shape(src, scale)[2]

    def source_update_rows(self, src):
        T0 = trained_steps(src, src["num_steps"])[0]
        return src["samples_per_epoch"] * T0 / src["updates_per_epoch"]

    def schedule(self, src, hp, scale):
        S = scale.samples_per_epoch
        b, tau, z, U = ppo_shape(src, scale)
        Tt = trained_steps(src, scale.num_steps)[1]
        floor = "floor: one sample-step per update" if S * Tt / U < 1 else ""
        if _whole(z) and int(round(z)) == b * tau:  # the references' windows
            return Schedule(f"{b} samples x {tau} steps", per_epoch=math.ceil(S * Tt / (b * tau)), floor=floor)
        update = f"1 sample x {z:.3g} steps" if b == 1 and z < tau else f"{z / tau:.3g} samples x {tau} steps"
        return Schedule(update, most=lambda n: n * Tt, floor=floor)

    def planned_epoch(self, meta, hp, spec, before, n, out, state):
        rows = int(hp["num_inner_epochs"]) * n * trained_steps(meta["source"], spec.num_steps)[1] * CFG
        out["training"][0] += rows
        out["training"][1] += rows

    def train_seconds(self, spec, hp, cost: Cost):
        S, T = spec.samples_per_epoch, spec.num_steps
        rows = hp.get("update_rows", hp["update_samples"] * hp["update_steps"])  # the rule's exact size
        tb = spec.train_batch_size
        return S * T / rows * math.ceil(rows / tb) * cost.fb(min(rows, tb))


def reset_epochs(src, updates_per_epoch: float, scale) -> int:
    """Rule 7 (bench/spec/scale.py): epochs between the critic's (or the policy's) resets at `scale`. 'updates':
    the critic makes as many optimizer steps between resets as the source's (critic and policy step together,
    `updates_per_epoch` of them per epoch); 'share': the period keeps its share of the run."""
    if scale.reset_rule == "share":
        return max(1, _round(scale.epochs * src["reset_every"] / src["epochs"]))
    return max(1, _round(src["reset_every"] * src["updates_per_epoch"] / updates_per_epoch))


class TDPO(PolicyGradient):
    """TDPO's updates are DDPO-100's windows of one step; every state is also decoded and embedded for the
    temporal critic, the LoRA neurons' dormancy batch runs the UNet once, and TDPO-KL scores every step under the
    pretrained policy."""

    def derive(self, src, hp, out, scale):
        super().derive(src, hp, out, scale)
        if out.get("reset_every") == "auto":
            out["reset_every"] = reset_epochs(src, out["updates_per_query"] * scale.samples_per_epoch, scale)

    def planned_epoch(self, meta, hp, spec, before, n, out, state):
        super().planned_epoch(meta, hp, spec, before, n, out, state)
        T = spec.num_steps
        out["critic encoding"][2] += n * T
        out["critic encoding"][3] += n * T  # the decoded x_t the encoder embeds
        out["training"][0] += min(int(hp["dormancy_batch"]), n) * CFG  # the LoRA neurons' dormancy batch
        if hp["kl_penalty_coef"] > 0:
            out["training"][0] += n * T * CFG  # the pretrained policy's log-probs

    def train_seconds(self, spec, hp, cost: Cost):
        S, T = spec.samples_per_epoch, spec.num_steps
        train = super().train_seconds(spec, hp, cost) + S * T * 2 * cost.decode  # decode + encoder per state
        if hp.get("kl_penalty_coef"):
            train += T * cost.fwd(S)
        return train


class AlignProp(UpdateShape):
    """Backpropagation through the last K ~ U{k_min..T} steps of `update_chains` chains per update."""

    samples_with_gradients = True

    def _per_epoch(self, src, scale):
        return scale.multiplier * src["updates_per_epoch"] * scale.samples_per_epoch / src["samples_per_epoch"]

    def derive(self, src, hp, out, scale):
        S = scale.samples_per_epoch
        z = min(S, max(1.0, S / self._per_epoch(src, scale)))  # chains per update
        out["update_samples"], out["update_chains"] = min(S, _round(z)), z

    def update_rows(self, src, hp, scale):
        return hp["update_chains"]

    def source_update_rows(self, src):
        return src["samples_per_epoch"] / src["updates_per_epoch"]

    def schedule(self, src, hp, scale):
        S, z = scale.samples_per_epoch, hp["update_chains"]
        floor = "floor: one chain per update" if S / self._per_epoch(src, scale) < 1 else ""
        update = f"{z:.3g} chains (last K steps)"
        if _whole(z):
            return Schedule(update, per_epoch=math.ceil(S / hp["update_samples"]), floor=floor)
        return Schedule(update, most=lambda n: n, floor=floor)

    def planned_epoch(self, meta, hp, spec, before, n, out, state):
        T, train = spec.num_steps, out["training"]
        k_mean = (min(max(1, int(hp["k_min"])), T) + T) / 2
        train[0] += round(n * T * CFG + (n * k_mean * CFG if hp["gradient_checkpointing"] else 0))
        train[1] += round(n * k_mean * CFG)
        out["bound"] = "expected"

    def train_seconds(self, spec, hp, cost: Cost):
        S, T = spec.samples_per_epoch, spec.num_steps
        b = hp.get("update_chains", hp["update_samples"])
        k_mean = (T + 1) / 2
        return math.ceil(S / b) * (T * cost.fwd(b) + k_mean * (cost.fwd(b) + cost.fb(b))) - cost.sampling


class PRDP(UpdateShape):
    """K updates per epoch on the epoch's same-prompt pairs of whole trajectories (or, update_data=groups, each
    update on its share of the prompt groups)."""

    def derive(self, src, hp, out, scale):
        out["updates_per_epoch"] = scale.multiplier * src["updates_per_epoch"] * scale.samples_per_epoch / \
            src["samples_per_epoch"]
        out["beta_nats_per_unit"] = scale.latent_dims * scale.num_steps  # beta=auto: sigma * D * T

    def update_rows(self, src, hp, scale):
        return scale.samples_per_epoch * scale.num_steps / max(1.0, hp["updates_per_epoch"]) \
            if hp.get("update_data", "whole") != "whole" else scale.samples_per_epoch * scale.num_steps

    def source_update_rows(self, src):
        return src["samples_per_epoch"] * src["num_steps"]

    def schedule(self, src, hp, scale):
        B = hp["images_per_prompt"]
        groups = max(1, scale.samples_per_epoch // B)
        if hp.get("update_data", "whole") == "whole":
            return Schedule(f"all pairs of {groups} groups of {B} (K per epoch)")
        return Schedule(f"a share of {groups} groups of {B}", most=lambda n: max(1, n // B),  # one group at most
                        floor="floor: one prompt group per update (update_data=groups)")

    def planned_epoch(self, meta, hp, spec, before, n, out, state):
        T, train = spec.num_steps, out["training"]
        B = int(hp["images_per_prompt"])
        m = (n // B * B if B >= 2 else 0) + (n % B if n % B >= 2 else 0)  # the samples in groups of 2+
        K = updates_this_epoch(before, n, hp["updates_per_query"]) if m else 0
        train[0] += n * T * CFG  # the pretrained policy's log-probs of every step
        if hp["update_data"] == "whole":
            train[0] += max(K - 1, 0) * m * T * CFG + K * m * T * CFG  # re-scored tables; the backprop rows
            train[1] += K * m * T * CFG
        else:  # groups: each group in one update
            train[0] += 2 * m * T * CFG
            train[1] += m * T * CFG
        out["bound"] = "at most"

    def train_seconds(self, spec, hp, cost: Cost):
        """Passes over the epoch's S x T sample-steps, chunked like methods/prdp.py's."""
        S, T = spec.samples_per_epoch, spec.num_steps
        K = max(1.0, hp["updates_per_epoch"])
        reference = cost.chunked(S * T, cost.fwd)  # the pretrained policy's log-probs, once per epoch
        if hp.get("update_data", "whole") == "whole":  # each update after the first: a no-grad pass; each: a backward
            return reference + (K - 1) * cost.chunked(S * T, cost.fwd) + K * cost.chunked(S * T, cost.fb)
        K = min(max(1, S // hp["images_per_prompt"]), K)  # each update on its 1/K share of the groups
        return reference + (K - 1) * cost.chunked(S * T / K, cost.fwd) + K * cost.chunked(S * T / K, cost.fb)


class DiffusionNFT(UpdateShape):
    """One update per 1 / updates_per_query images, on every buffered image x `levels_per_sample` noise levels."""

    def derive(self, src, hp, out, scale):
        out["levels_per_sample"] = nft_levels(src, scale.num_steps)

    def update_rows(self, src, hp, scale):
        return hp["levels_per_sample"] / hp["updates_per_query"]

    def source_update_rows(self, src):
        return src["samples_per_epoch"] / src["updates_per_epoch"] * nft_levels(src, src["num_steps"])

    def schedule(self, src, hp, scale):
        return Schedule(f"{1 / hp['updates_per_query']:.3g} images x {hp['levels_per_sample']} noise levels",
                        least=0)

    def planned_epoch(self, meta, hp, spec, before, n, out, state):
        state["pending"] = state.get("pending", 0) + n
        if updates_this_epoch(before, n, hp["updates_per_query"], least=0):
            rows = state["pending"] * int(hp["levels_per_sample"]) * (1 if float(hp["train_guidance"]) == 1.0
                                                                       else CFG)
            out["training"][0] += rows * (2 + (1 if hp["ref_coef"] else 0))  # current, old and (if used) reference
            out["training"][1] += rows
            state["pending"] = 0

    def train_seconds(self, spec, hp, cost: Cost):
        """Every row: theta forward+backward, old (and base) forward; guidance 1 is one pass."""
        tb = spec.train_batch_size
        rows = spec.samples_per_epoch * hp["levels_per_sample"]
        cfg = 0.5 if hp["train_guidance"] == 1.0 else 1.0
        passes = 2 if hp["ref_coef"] else 1
        return math.ceil(rows / tb) * (cost.fb(min(rows, tb)) + passes * cost.fwd(min(rows, tb))) * cfg


class DenseDPO(UpdateShape):
    """Updates of `pairs_per_step` pairs x `steps_per_pair` steps; the source's pair uses per query are kept."""

    def derive(self, src, hp, out, scale):
        pair_uses_per_query = src["updates_per_epoch"] * src["pairs_per_step"] / src["samples_per_epoch"]
        # an update cannot hold less than one pair: where m x source would need it, updates are capped
        out["updates_per_query"] = min(out["updates_per_query"], pair_uses_per_query)
        out["pairs_per_step"] = pair_uses_per_query / out["updates_per_query"]

    def update_rows(self, src, hp, scale):
        return hp["pairs_per_step"] * hp["steps_per_pair"]

    def source_update_rows(self, src):
        return src["pairs_per_step"] * 1

    def schedule(self, src, hp, scale):
        m = scale.multiplier
        floor = "floor: one pair per update" if hp["pairs_per_step"] <= 1 and \
            hp["updates_per_query"] < m * src["updates_per_epoch"] / src["samples_per_epoch"] else ""
        return Schedule(f"{hp['pairs_per_step']:.3g} pairs x {hp['steps_per_pair']} step(s)", floor=floor)

    def planned_epoch(self, meta, hp, spec, before, n, out, state):
        R = int(hp["rollouts_per_prompt"])
        state["buffer"] = state.get("buffer", False) or (R >= 2 and n >= 2)  # a group of 2+ rollouts is buffered
        updates = state.get("updates", 0)
        for _ in range(updates_this_epoch(before, n, hp["updates_per_query"]) if state["buffer"] else 0):
            p = float(hp["pairs_per_step"])
            pairs = max(1, half_up(p * (updates + 1)) - half_up(p * updates))
            rows = 2 * pairs * int(hp["steps_per_pair"]) * CFG  # winners and losers
            out["training"][0] += 2 * rows  # the reference's and the current policy's
            out["training"][1] += rows
            updates += 1
        state["updates"] = updates

    def train_seconds(self, spec, hp, cost: Cost):
        updates = hp["updates_per_query"] * spec.samples_per_epoch
        P = hp["pairs_per_step"] * hp["steps_per_pair"]
        return updates * 2 * (cost.fwd(P) + cost.fb(P))
