"""Declared ranges of values (pure Python): what a name must look like to become part of a file name, and every
method hyperparameter's range, choices and type. The spec layer validates against them before torch loads;
plugins declare their own keys' ranges with the same Range."""

from __future__ import annotations

from dataclasses import dataclass

from bench.errors import BenchError

SAFE_NAME = r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}"
"""What a value must look like to become part of a file name (no separators, no '..', no leading dot)."""


def safe_component(value, what: str) -> str:
    """`value` as a path component, or a one-line BenchError (path traversal, odd characters)."""
    import re

    text = str(value)
    if not re.fullmatch(SAFE_NAME, text) or ".." in text:
        raise BenchError(f"{what} {text!r} cannot be part of a file name (letters, digits, '.', '_', '+', '-'; "
                         f"at most 64 characters)")
    return text


NUMERIC_OR_AUTO = ("beta", "kl_penalty_coef", "reset_every", "reward_target")
"""Hyperparameters that take 'auto' (set by the scale rule or the run) or a number, whatever their preset."""


@dataclass(frozen=True)
class Range:
    """A hyperparameter's declared interval (source scale, before the scale rule)."""

    low: float
    high: float
    low_open: bool = False
    """True: the low end is excluded (a positive number)."""
    high_open: bool = False

    def __contains__(self, v) -> bool:
        above = v > self.low if self.low_open else v >= self.low
        below = v < self.high if self.high_open else v <= self.high
        return above and below

    @property
    def text(self) -> str:
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


FULL_TO_LORA_LR = 30.0
"""Scale rule 11's c (bench/spec/scale.py): a full-UNet source's learning rate times c on LoRA. 30 by version 2
of the decision of 2026-12-07 (docs/decisions/full-unet-lr.md: GRPO +0.0174 +- 0.0062 on jpeg over 5 fresh
seeds, "improves"); `--set full_to_lora_lr=1` reproduces the runs before the rule."""

PLANTED_WEIGHTS = (0.25, 0.5, 1.0)
"""The planted-effect control's declared blend weights w (training reward aesthetic + w x gold aesthetics; issue 45).
Both scores sit near 7 on the toy, so w = 1 weighs gold like the proxy; w = 0 is the base method itself."""

_BIG = 1e6       # no count or coefficient of a source comes near it: a larger value is a typo
_POS = Range(0.0, _BIG, low_open=True)
_NONNEG = Range(0.0, _BIG)
_AT_LEAST_1 = Range(1, 10**6)
_AT_LEAST_2 = Range(2, 10**6)
_UNIT = Range(0.0, 1.0, high_open=True)
_CLOSED_UNIT = Range(0.0, 1.0)
HPARAM_RANGES = {
    **dict.fromkeys(("lr", "critic_lr"), Range(0.0, 10.0, low_open=True)),
    **dict.fromkeys(("clip_range", "max_grad_norm", "adam_eps", "adv_clip_max", "delta", "beta_tilde", "loss_coeff",
                     "beta", "kl_horizon", "loss_weight", "nft_beta", "std_eps"), _POS),
    **dict.fromkeys(("weight_decay", "clip_range_critic", "cf_coef", "kl_penalty_coef", "init_kl_coef", "kl_target",
                     "dormant_threshold", "policy_dormant_threshold", "ref_coef"), _NONNEG),
    **dict.fromkeys(("stat_buffer_size", "stat_min_count", "num_inner_epochs", "encode_batch_size", "dormancy_batch",
                     "reset_every", "k_min", "k_group", "steps_per_pair"), _AT_LEAST_1),
    **dict.fromkeys(("images_per_prompt", "rollouts_per_prompt", "kept_per_prompt"), _AT_LEAST_2),
    "adam_beta1": _UNIT, "adam_beta2": _UNIT,
    "gamma": Range(0.0, 1.0, low_open=True),
    # DiffusionNFT: soft-update weights and the rollout sampler's eta are fractions; guidance as --guidance-scale
    **dict.fromkeys(("old_decay_per_update", "old_decay_max", "rollout_eta"), _CLOSED_UNIT),
    **dict.fromkeys(("rollout_guidance", "train_guidance"), Range(0.0, 100.0)),
    "reward_target": Range(-_BIG, _BIG),
    "full_to_lora_lr": Range(0.0, 1000.0, low_open=True),  # scale rule 11: a full-UNet source's rate on LoRA
}
"""Every numeric hyperparameter's declared range. `tests/test_validation.py` walks every key of every method
and tries a value outside each."""
HPARAM_CHOICES = {
    "critic_reset": ("none", "active", "dormant", "all"), "policy_reset": ("none", "active", "dormant", "all"),
    "activation": ("relu", "leaky_relu"), "kl_penalty": ("kl", "abs", "square", "clip", "approx"),
    "loss_form": ("abs", "linear"), "update_data": ("groups", "whole"),
}
INTEGER_HPARAMS = ("stat_buffer_size", "stat_min_count", "num_inner_epochs", "encode_batch_size", "dormancy_batch",
                   "k_min", "k_group", "steps_per_pair", "images_per_prompt", "rollouts_per_prompt", "kept_per_prompt",
                   "reset_every", "kl_horizon")
