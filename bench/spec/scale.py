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
   size follows from U: z = S*T/U sample-steps, or (pair uses per query)/(updates
   per query) pairs.
3. **The size is exact; the shape yields first.** An update spans the same
   fraction of the denoising steps as in the source, tau = round(tau0 * T/T0)
   (at least 1; T counts the steps the method trains: GRPO never trains the
   last one, so T - 1 there), and the rest of its size is samples, z / tau.
   Where z < tau (DDPO-100 on the toy: 1.6 sample-steps for a 3-step shape),
   the update is one sample over z steps. Where a size is not a whole number
   (1.6 samples, 2.67 pairs), updates take q and q + 1 in a seeded order whose
   mean is exact and which uses every datum once per epoch, and the number of
   updates carries its fraction across epochs (bench/train/updates.py).
   DiffusionNFT's update is one per 1,152 images at source scale (m x that
   is more than an epoch on the toy): its epochs' samples wait in a buffer
   and an update comes when the run's count says so (least=0), on all of
   them; a run holds a whole number of such updates, so its multiplier is m
   up to that rounding (`--effective`: "whole updates in the run").
   The effective multiplier leaves m only at a floor (an update cannot be
   smaller than one sample-step, one chain or one pair) or a ceiling (an
   update never holds more than its epoch's on-policy samples: small m at small
   S). `bench list methods --effective` marks where one binds, and the report
   prints such a method's multiplier beside its results. At the toy default
   and at SD scale none binds.
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
7. **A reset period keeps the critic's updates between resets** (reset rule
   'updates', the default): TDPO-R's reference resets every 10 epochs of 100
   optimizer steps, so its critic learns for 1,000 updates between resets; a run
   resets every round(1,000 / its updates per epoch) epochs (5 on the toy at
   m = 16; a run shorter than that never resets, which `--effective` says).
   Rule 'share', before 2026-12-07 and pinned by study version 3, kept the
   period's share of the run instead (every tenth), which left the critic of a
   short run almost nothing to learn: every epoch at 10 epochs.
8. **Coefficients on a log-ratio get the inverse conversion**: PRDP's beta
   turns a reward difference into a target log-ratio (dr / beta), and dense
   DPO's beta_tilde turns a log-ratio into a logit. Both are multiplied by
   sqrt(D/D0), so that a target stays the same number of clip ranges, and a
   clamped log-ratio the same logit, at every scale. No source coefficient is
   re-derived from a run's own reward statistics (PRDP's `beta=auto`, the
   within-prompt standard deviation of the first epoch, is an opt-in ablation).
9. **Coefficients the sources leave open are set on the run's own scale**:
   TDPO-KL (the reference ships coefficient 0): the trajectory's total penalty
   equals 0.1, a tenth of a normalised return, when every step's log-ratio to
   the pretrained policy equals one clip range: coef * 0.2 * T * clip = 0.1.
10. **The optimiser's regime ('sde' rule only).** Rules 1-9 keep a count (updates
   per query); at m = 16 they shrink the toy's updates 80x below their sources'
   at the sources' learning rates, so each Adam step is mostly gradient noise.
   The 'sde' rule converts the optimiser instead, by the square-root scaling rule
   for adaptive methods (Malladi, Lyu, Panigrahi & Arora, NeurIPS 2022): with
   kappa = (rows per update at the run) / (rows per update at the source), a row
   being a sample-step, a chain, a pair or a noised image as the method's shape
   counts it (methods/base.py),

       lr -> lr * sqrt(kappa * tau),  1 - beta -> (1 - beta) * kappa * tau,
       eps -> eps / sqrt(kappa * tau)

   (the critic's learning rate too). At tau = 1 the run follows its source's SDE
   (noise temperature lr^2 / batch, time lr^2 x steps) row for row; m then only
   sets the cost, since smaller updates are exactly compensated. A run with R
   times fewer rows than its source covers tau / R of the source's SDE time: the
   toy (1/100 of SD v1.4's rows) trades temperature for progress, and tau, one
   number for every method, is that trade. The count rule is the case
   tau = 1 / kappa per method (80 for the per-step methods on the toy, 16 for
   AlignProp, dense DPO and DiffusionNFT): the same Adam constants, but
   temperatures that differ by method.
11. **A full-UNet source's learning rate is converted to LoRA** by one constant
   c for every such source (`source["trains"] == "full-unet"`; DanceGRPO's GRPO
   is the only one): lr -> c x lr, before rule 10. c is each such method's key
   `full_to_lora_lr` (stored with the run; 1 reproduces the runs before the
   rule), its default FULL_TO_LORA_LR, decided on the development reward
   (docs/decisions/full-unet-lr.md).
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
    """m, the common multiple of every source's updates per reward query (it sets the size of an update)."""
    rule: str = "count"
    """'count': the source's learning rate and Adam constants at every update size (rules 1-9 above);
    'sde': those converted by the square-root scaling rule for the update's size (rule 10)."""
    temperature: float = 1.0
    """tau of the 'sde' rule: the gradient-noise temperature of a run as a multiple of its source's."""
    reset_rule: str = "updates"
    """Rule 7's reading of a reset period: 'updates' (the critic's updates between resets are the source's) or
    'share' (the period's share of the run, the rule of study version 3)."""

    @property
    def epochs(self) -> int:
        return math.ceil(self.budget / self.samples_per_epoch)


def resets_in_run(period: int, epochs: int) -> int:
    """Resets a run applies: one after every `period`-th epoch, except one due after the last epoch (no epoch
    follows it; methods/tdpo.py)."""
    return (epochs - 1) // period


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))  # half up, so the rule does not depend on banker's rounding


def half_up(x: float) -> int:
    """Round half up, robust to a last-bit error in a product such as 6.25 * 32 (pure Python)."""
    return int(math.floor(x + 0.5 + 1e-9))


def updates_this_epoch(queries_before: int, queries: int, per_query: float, most: int | None = None,
                       least: int = 1) -> int:
    """Whole updates for an epoch of `queries` reward queries (all processes) after `queries_before`, such that
    the run's updates so far are always round(per_query x queries so far): the fraction carries over epochs.
    At least `least`: 1 where an epoch's data is used by that epoch's updates and would otherwise be dropped,
    0 for DiffusionNFT, whose data waits in a buffer for the next update. At most `most` (a floor: one row,
    chain or pair each)."""
    k = max(least, half_up(per_query * (queries_before + queries)) - half_up(per_query * queries_before))
    return k if most is None else min(most, k)


def effective_hparams(entry, hp: dict[str, Any], scale: Scale) -> dict[str, Any]:
    """A method's hyperparameters at `scale`: `hp` holds its source-scale values (preset plus
    --set overrides); the result adds or replaces the quantities the rule derives. What is particular to a
    method's updates, its shape derives (methods/base.py)."""
    from bench.spec.registry import shape_of

    src = entry.meta["source"]
    if src.get("trains") == "full-unet":  # rule 11, before rule 10 converts the rate it gives
        hp = {**hp, "lr": hp["lr"] * hp["full_to_lora_lr"]}
    out = dict(hp)
    m = scale.multiplier
    out["updates_per_query"] = m * src["updates_per_epoch"] / src["samples_per_epoch"]
    bound = math.sqrt(SOURCE_LATENT_DIMS / scale.latent_dims)
    for key in entry.meta.get("log_ratio_bounds", ()):
        out[key] = hp[key] * bound
    for key in entry.meta.get("log_ratio_coefficients", ()):
        if not isinstance(hp[key], str):  # "auto" (PRDP's opt-in ablation) is set by the run
            out[key] = hp[key] / bound
    shape = shape_of(entry.meta)
    shape.derive(src, hp, out, scale)
    if scale.rule == "sde":
        sde_optimizer(entry.name, shape.update_rows(src, out, scale) / shape.source_update_rows(src), hp, out,
                      scale.temperature)
    if "gamma" in entry.meta.get("per_step_discounts", ()):
        out["gamma"] = hp["gamma"] ** (src["num_steps"] / scale.num_steps)
    if out.get("kl_penalty_coef") == "auto":
        out["kl_penalty_coef"] = 0.1 / (out["init_kl_coef"] * scale.num_steps * out["clip_range"])
    return out


SCALE_RULES = ("count", "sde")
RESET_RULES = ("updates", "share")


def sde_optimizer(method: str, kappa: float, hp: dict, out: dict, temperature: float) -> None:
    """Rule 10: the learning rates, Adam betas and epsilon of `hp` (source scale) converted by the square-root
    scaling rule for a batch kappa times the source's at noise temperature `temperature`; recorded in `out`
    with kappa. A beta the conversion would take below 0 is refused (one line)."""
    from bench.errors import BenchError

    k = kappa * temperature
    out["sde_kappa"] = kappa
    for key in ("lr", "critic_lr"):
        if key in hp:
            out[key] = hp[key] * math.sqrt(k)
    for key in ("adam_beta1", "adam_beta2"):
        if key in hp:
            one_minus = (1.0 - hp[key]) * k
            if one_minus >= 1.0:
                raise BenchError(f"scale rule 'sde': {method}'s {key} {hp[key]:g} at kappa x tau = {k:.3g} would be "
                                 f"1 - {one_minus:.3g} < 0; lower the noise temperature or the update multiplier")
            out[key] = 1.0 - one_minus
    if "adam_eps" in hp:
        out["adam_eps"] = hp["adam_eps"] / math.sqrt(k)


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


def _run_updates(scale: Scale, per_epoch: int | None, per_query: float, most=None, least: int = 1) -> int:
    """Optimizer updates of a whole run at `scale`: `per_epoch` fixed (the references' windows), or the
    schedule the methods follow (bench/train/updates.py: updates_this_epoch, `most(n)` a floor's cap)."""
    total = used = 0
    while used < scale.budget:
        n = min(scale.samples_per_epoch, scale.budget - used)
        total += per_epoch if per_epoch is not None else \
            updates_this_epoch(used, n, per_query, most=None if most is None else most(n), least=least)
        used += n
    return total


def effective_rows(scale: Scale, num_prompts: int) -> list[dict[str, Any]]:
    """One row per registered method: the quantities the rule gives at `scale` (for
    `bench list methods --effective` and the report)."""
    from bench.spec.catalog import methods
    from bench.spec.registry import shape_of

    rows = []
    m = scale.multiplier
    for entry in methods.entries():
        src = entry.meta["source"]
        hp = effective_hparams(entry, entry.meta["hparams"], scale)
        shape = shape_of(entry.meta)
        sched = shape.schedule(src, hp, scale)
        row = {"method": entry.name, "updates_per_query": hp["updates_per_query"], "update": sched.update,
               "rows": shape.update_rows(src, hp, scale), "source_rows": shape.source_update_rows(src),
               "lr": hp["lr"], "adam": (hp["adam_beta1"], hp["adam_beta2"], hp["adam_eps"])}
        why = sched.floor
        total = _run_updates(scale, sched.per_epoch, hp["updates_per_query"], sched.most, sched.least)
        row["effective_updates_per_query"] = total / scale.budget
        row["multiple_of_source"] = row["effective_updates_per_query"] / (src["updates_per_epoch"] /
                                                                          src["samples_per_epoch"])
        off = abs(row["multiple_of_source"] / m - 1) > 1e-3  # the rule's m; a schedule is exact over the run
        if off and not why and sched.least == 0 and total == half_up(hp["updates_per_query"] * scale.budget):
            # updates that wait for their data (DiffusionNFT): the run holds a whole number of them
            why = f"whole updates in the run: {hp['updates_per_query'] * scale.budget:.3g} -> {total}"
        elif off and not why:
            why = "ceiling: an update holds at most one epoch's data" if row["multiple_of_source"] > m else "?"
        row["below_m"] = why if off else ""
        row["clip"] = ", ".join(f"{k} {hp[k]:.3g}" for k in entry.meta.get("log_ratio_bounds", ())) or "-"
        row["reset_every"] = "-"
        if hp.get("critic_reset", "none") != "none" or hp.get("policy_reset", "none") != "none":
            n = resets_in_run(int(hp["reset_every"]), scale.epochs)
            row["reset_every"] = f"{hp['reset_every']} ({n} reset{'s' * (n != 1)})"
        if hp.get("per_prompt_stat_tracking"):
            row["stat_tracker"] = stat_tracker_activity(num_prompts, scale, hp["stat_min_count"],
                                                        hp["stat_buffer_size"])
        else:
            row["stat_tracker"] = None
        if hp.get("kl_penalty_coef"):
            row["clip"] += f"; kl coef {hp['kl_penalty_coef']:.3g}"
        rows.append(row)
    return rows


EFFECTIVE_HEADER = ("method", "rows/update", "source's", "lr", "Adam b1, b2, eps", "updates/query", "x source",
                    "not m because", "one update", "reset every (epochs)", "stat tracker active", "clip ranges")


def effective_table_rows(scale: Scale, num_prompts: int, name: str) -> tuple[str, list[tuple]]:
    """(title, rows under EFFECTIVE_HEADER) of the rule's effective quantities at `scale`."""
    rule = "count" if scale.rule == "count" else f"sde, tau={scale.temperature:g}"
    rule += "" if scale.reset_rule == "updates" else f", reset rule {scale.reset_rule}"
    title = (f"{name}: S={scale.samples_per_epoch} samples/epoch, T={scale.num_steps}, D={scale.latent_dims}, "
             f"budget {scale.budget} ({scale.epochs} epochs), m={scale.multiplier:g}, {num_prompts} prompts, "
             f"scale rule {rule}")
    rows = []
    for r in effective_rows(scale, num_prompts):
        b1, b2, eps = r["adam"]
        rows.append((r["method"], f"{r['rows']:.3g}", f"{r['source_rows']:.4g}", f"{r['lr']:.3g}",
                     f"{b1:.4g}, {b2:.6g}, {eps:.3g}", f"{r['effective_updates_per_query']:.3g}",
                     f"{r['multiple_of_source']:.2f}x",
                     r["below_m"] or "-", r["update"], str(r["reset_every"]),
                     "-" if r["stat_tracker"] is None else f"{100 * r['stat_tracker']:.0f}%", r["clip"]))
    return title, rows
