"""The one scale rule: how a method's source setting (its paper's or reference
code's configuration, stated at Stable Diffusion scale) maps to any run scale:
samples per epoch S, denoising steps T, latent dimensions D and the run's budget.

Pure Python (no torch): run specs are validated and the effective table printed
before anything heavy loads.

The rule, the same for every method
-----------------------------------
1. **Updates per reward query** are the source's times one common multiplier m
   (`update_multiplier`, 1 at SD scale; the toy's value is chosen once on the
   development reward and is the same for every method):

       updates per epoch U = m * U0 * S / S0.

   This is the budget's currency: every method gets the same multiple of its
   own source's optimizer steps per image scored.
2. **Every datum is used as often as in the source.** A policy-gradient epoch is
   one pass over its S x T (sample, step) pairs, split into U updates; a
   pairwise method keeps the source's pair uses per prompt group. So an update's
   size follows from U: S*T/U sample-steps, or (pair uses per query)/(updates per
   query) pairs.
3. **An update keeps the source's shape** as far as whole numbers allow: it
   spans the same fraction of the denoising steps, tau = round(tau0 * T/T0)
   (at least 1; T counts the steps the method trains: GRPO never trains the
   last one, so T - 1 there), and the rest of its size is samples, b = round(S*T/(U*tau))
   (at least 1, at most S). Floors of one sample, one step, one prompt group
   or one pair are the only place where the effective multiplier can fall
   below m; `bench list methods --effective` shows where they bind.
4. **Per-prompt counts stay counts**: the stat tracker's buffer and minimum
   count, images per prompt, rollouts and kept rollouts per prompt. A prompt's
   statistics then build up after the same number of queries per prompt as in
   the source (48 toy prompts, 45 SD prompts).
5. **Bounds on mean-over-dimensions log-probs scale with 1/sqrt(D)**: the PPO
   ratio clip, PRDP's per-step clip and dense DPO's delta are stated on the
   per-step log-density averaged over latent dimensions. For the same per-
   dimension change of the policy, the noise of that average scales as
   1/sqrt(D), so the bound is multiplied by sqrt(D0/D) (x8 from SD's 4x64x64
   latents to the toy's 4x8x8).
6. **Per-step discounts keep their horizon**: gamma -> gamma^(T0/T).
7. **Periods in epochs keep their share of the run**: TDPO-R resets every 10
   of 100 epochs, i.e. every tenth of the run.
8. **Coefficients the sources leave open are set on the run's own scale**:
   - TDPO-KL (the reference ships coefficient 0): the trajectory's total
     penalty equals 0.1, a tenth of a normalised return, when every step's
     log-ratio to the pretrained policy equals one clip range:
     coef * 0.2 * T * clip = 0.1;
   - PRDP (beta 3e-5 in the paper, on a log-prob convention it does not state):
     PRDP maximises E[r] - beta KL, whose optimum tilts the reference policy by
     exp(r / beta). beta is set to sigma, the within-prompt standard deviation
     of the training reward (measured on the run's first epoch), per nat of
     trajectory KL: the optimum reweights each trajectory by exp(its
     within-prompt z-score) and gains about one sigma of reward. In this
     harness's convention (log-probs averaged over D latent dims and T steps)
     that is beta = sigma * D * T.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

SOURCE_LATENT_DIMS = 4 * 64 * 64
"""SD v1.4's latent size (4 x 64 x 64): the scale every source setting is stated at."""


@dataclass(frozen=True)
class Scale:
    """The scale of a run: what the rule maps a source setting to."""

    num_steps: int
    """T, denoising steps."""
    samples_per_epoch: int
    """S, images sampled (and reward queries spent) per epoch over all processes."""
    latent_dims: int = SOURCE_LATENT_DIMS
    """D, latent channels x height x width."""
    budget: int = 25_600
    """Reward queries of the run (sets the epoch count E = ceil(budget / S))."""
    multiplier: float = 1.0
    """m, the common multiple of every source's updates per reward query."""

    @property
    def epochs(self) -> int:
        return math.ceil(self.budget / self.samples_per_epoch)


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))  # half up, so the rule does not depend on banker's rounding


def trained_steps(src: dict, num_steps: int) -> tuple[int, int]:
    """(source's, run's) denoising steps a method trains on: all T, or T - 1 for a method that never trains
    the last step (GRPO: `trains_last_step` False in its source)."""
    drop = 0 if src.get("trains_last_step", True) else 1
    return src["num_steps"] - drop, num_steps - drop


def ppo_shape(src: dict, scale: Scale) -> tuple[int, int, float]:
    """(samples b, steps tau, updates per epoch U) of one policy-gradient update at `scale`; the steps are the
    ones the method trains (`trained_steps`)."""
    T0, T = trained_steps(src, scale.num_steps)
    S = scale.samples_per_epoch
    U = scale.multiplier * src["updates_per_epoch"] * S / src["samples_per_epoch"]
    tau = min(T, max(1, _round(src["update_steps"] * T / T0)))
    b = min(S, max(1, _round(S * T / (U * tau))))
    return b, tau, U


def effective_hparams(entry, hp: dict[str, Any], scale: Scale) -> dict[str, Any]:
    """A method's hyperparameters at `scale`: `hp` holds its source-scale values (preset plus
    --set overrides); the result adds or replaces the quantities the rule derives."""
    src = entry.meta["source"]
    kind = entry.meta["kind"]
    out = dict(hp)
    m = scale.multiplier
    out["updates_per_query"] = m * src["updates_per_epoch"] / src["samples_per_epoch"]
    bound = math.sqrt(SOURCE_LATENT_DIMS / scale.latent_dims)
    for key in entry.meta.get("log_ratio_bounds", ()):
        out[key] = hp[key] * bound
    if kind == "ppo":
        b, tau, _ = ppo_shape(src, scale)
        out["update_samples"], out["update_steps"] = b, tau
    elif kind == "alignprop":
        U = m * src["updates_per_epoch"] * scale.samples_per_epoch / src["samples_per_epoch"]
        out["update_samples"] = min(scale.samples_per_epoch, max(1, _round(scale.samples_per_epoch / U)))
    elif kind == "prdp":
        out["updates_per_epoch"] = m * src["updates_per_epoch"] * scale.samples_per_epoch / src["samples_per_epoch"]
        out["beta_nats_per_unit"] = scale.latent_dims * scale.num_steps  # beta = sigma * D * T
    elif kind == "dense":
        pair_uses_per_query = src["updates_per_epoch"] * src["pairs_per_step"] / src["samples_per_epoch"]
        out["pairs_per_step"] = max(1, _round(pair_uses_per_query / out["updates_per_query"]))
    if "gamma" in entry.meta.get("per_step_discounts", ()):
        out["gamma"] = hp["gamma"] ** (src["num_steps"] / scale.num_steps)
    if out.get("reset_every") == "auto":
        out["reset_every"] = max(1, _round(scale.epochs * src["reset_every"] / src["epochs"]))
    if out.get("kl_penalty_coef") == "auto":
        out["kl_penalty_coef"] = 0.1 / (out["init_kl_coef"] * scale.num_steps * out["clip_range"])
    return out


def stat_tracker_activity(num_prompts: int, scale: Scale, min_count: int, buffer_size: int, seed: int = 0) -> float:
    """Expected fraction of advantages the per-prompt stat tracker computes from a prompt's
    own statistics (not the batch fallback) over a run: prompts drawn uniformly with
    replacement, as the runner does. A seeded simulation (pure Python)."""
    import random

    rng = random.Random(seed)
    counts = [0] * num_prompts
    own = total = 0
    left = scale.budget
    while left > 0:
        n = min(scale.samples_per_epoch, left)
        left -= n
        drawn = [rng.randrange(num_prompts) for _ in range(n)]
        for p in drawn:
            counts[p] += 1
        for p in drawn:  # the buffer is extended before the statistics are taken
            own += min(counts[p], buffer_size) >= min_count
            total += 1
    return own / total if total else 0.0


def effective_rows(scale: Scale, num_prompts: int) -> list[dict[str, Any]]:
    """One row per registered method: the quantities the rule gives at `scale` (for
    `bench list methods --effective` and the report)."""
    from bench.spec.catalog import methods

    rows = []
    m = scale.multiplier
    for entry in methods.entries():
        src = entry.meta["source"]
        hp = effective_hparams(entry, entry.meta["hparams"], scale)
        kind = entry.meta["kind"]
        row = {"method": entry.name, "updates_per_query": hp["updates_per_query"]}
        S, T = scale.samples_per_epoch, scale.num_steps
        why = ""
        if kind == "ppo":
            b, tau, U = ppo_shape(src, scale)
            per_epoch = math.ceil(S * trained_steps(src, T)[1] / (b * tau))
            row["update"] = f"{b} samples x {tau} steps"
            ideal = S * trained_steps(src, T)[1] / (U * tau)  # samples per update for exactly m x source
            why = "floor: one sample per update" if ideal < 1 else f"rounding: {b} samples for {ideal:.3g}"
        elif kind == "alignprop":
            per_epoch = math.ceil(S / hp["update_samples"])
            row["update"] = f"{hp['update_samples']} chains (last K steps)"
            ideal = S / (m * src["updates_per_epoch"] * S / src["samples_per_epoch"])
            why = "floor: one chain per update" if ideal < 1 else f"rounding: {hp['update_samples']} chains for " \
                f"{ideal:.3g}"
        elif kind == "prdp":
            groups = max(1, S // hp["images_per_prompt"])
            if hp.get("update_data") == "whole":
                per_epoch = max(1, _round(hp["updates_per_epoch"]))
                row["update"] = f"{groups} groups of {hp['images_per_prompt']} (whole epoch)"
            else:
                per_epoch = min(groups, max(1, _round(hp["updates_per_epoch"])))  # at most one update per group
                row["update"] = f"{groups / per_epoch:.3g} group(s) of {hp['images_per_prompt']}"
                why = "floor: one prompt group per update" if hp["updates_per_epoch"] > groups else "rounding"
        else:
            per_epoch = max(1, _round(hp["updates_per_query"] * S))
            row["update"] = f"{hp['pairs_per_step']} pairs x {hp['steps_per_pair']} step(s)"
            why = "rounding: whole updates per epoch and pairs per update"
        row["effective_updates_per_query"] = per_epoch / S
        row["multiple_of_source"] = row["effective_updates_per_query"] / (src["updates_per_epoch"] /
                                                                          src["samples_per_epoch"])
        # below m: a floor (an update cannot be smaller than one sample, chain or prompt group) or rounding
        row["below_m"] = why if row["multiple_of_source"] < m * (1 - 1e-9) else ""
        row["clip"] = ", ".join(f"{k} {hp[k]:.3g}" for k in entry.meta.get("log_ratio_bounds", ())) or "-"
        row["reset_every"] = hp.get("reset_every") if (hp.get("critic_reset", "none") != "none"
                                                        or hp.get("policy_reset", "none") != "none") else "-"
        if hp.get("per_prompt_stat_tracking"):
            row["stat_tracker"] = stat_tracker_activity(num_prompts, scale, hp["stat_min_count"],
                                                        hp["stat_buffer_size"])
        else:
            row["stat_tracker"] = None
        if hp.get("kl_penalty_coef"):
            row["clip"] += f"; kl coef {hp['kl_penalty_coef']:.3g}"
        rows.append(row)
    return rows


EFFECTIVE_HEADER = ("method", "updates/query", "x source", "below m because", "one update", "reset every (epochs)",
                    "stat tracker active", "clip ranges")


def effective_table_rows(scale: Scale, num_prompts: int, name: str) -> tuple[str, list[tuple]]:
    """(title, rows under EFFECTIVE_HEADER) of the rule's effective quantities at `scale`."""
    title = (f"{name}: S={scale.samples_per_epoch} samples/epoch, T={scale.num_steps}, D={scale.latent_dims}, "
             f"budget {scale.budget} ({scale.epochs} epochs), m={scale.multiplier:g}, {num_prompts} prompts")
    rows = []
    for r in effective_rows(scale, num_prompts):
        rows.append((r["method"], f"{r['effective_updates_per_query']:.3g}", f"{r['multiple_of_source']:.2f}x",
                     r["below_m"] or "-", r["update"], str(r["reset_every"]),
                     "-" if r["stat_tracker"] is None else f"{100 * r['stat_tracker']:.0f}%", r["clip"]))
    return title, rows
