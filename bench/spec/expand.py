"""A grid's run specs from the command line's flags (pure Python, no torch): `bench run` validates the
environment, its output folder and the reward's weights (bench/run.py), and the spec layer the rest, in the
order the checks run."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from bench.errors import BenchError, check_positive


@dataclass
class GridInputs:
    """What the flags resolve to before the grid expands."""

    method_names: list[str]
    reward_entry: Any
    info: Any
    """The backbone (bench.spec.runspec.BackboneInfo): its suite, location and defaults."""
    budget: int
    seeds: list[int]
    overrides: dict[str, str] = field(default_factory=dict)
    """--set key=value, at the source scale."""
    train_prompts: str = ""


FLAG_LIMITS = (("num_steps", 1000), ("lora_rank", 1024), ("eval_per_prompt", 64), ("workers", 256),
               ("threads", 1024), ("guidance_scale", 100), ("samples_per_epoch", 10**6),
               ("train_batch_size", 10**6), ("num_checkpoints", 10**4), ("update_multiplier", 10**4))
"""The largest value each numeric flag takes."""


def grid_inputs(args) -> GridInputs:
    """Methods, reward, backbone and its defaults, budget, seeds and the numeric flags, each checked."""
    from bench.spec import catalog
    from bench.spec.runspec import parse_budget, parse_methods, parse_seeds, resolve_backbone

    method_names = parse_methods(args.methods)
    dupes = sorted({m for m in method_names if method_names.count(m) > 1})
    if dupes:
        raise BenchError(f"--methods names {', '.join(dupes)} twice")
    reward_entry = catalog.rewards.get(args.reward)
    if reward_entry.meta.get("eval_only"):
        raise BenchError(f"{args.reward!r} is a gold reward, for evaluation only; train on a proxy such as "
                         f"'aesthetic' (see `python -m bench list rewards`)")
    info = resolve_backbone(args.backbone or catalog.DEFAULT_BACKBONE)
    d = info.defaults
    budget = parse_budget(args.budget) if args.budget is not None else d["budget"]
    if args.eval_per_prompt is None:
        args.eval_per_prompt = d.get("eval_per_prompt", 1)
    if args.num_checkpoints is None:
        args.num_checkpoints = d.get("num_checkpoints", 10)
    seeds = parse_seeds(args.seeds)
    for flag in ("num_steps", "guidance_scale", "samples_per_epoch", "train_batch_size", "num_checkpoints",
                 "lora_rank", "eval_per_prompt", "update_multiplier", "workers", "threads"):
        check_positive("--" + flag.replace("_", "-"), getattr(args, flag))
    for flag, most in FLAG_LIMITS:
        if getattr(args, flag) is not None and getattr(args, flag) > most:
            raise BenchError(f"--{flag.replace('_', '-')} {getattr(args, flag)} is too large (at most {most}"
                             + (": the scheduler has 1000 training timesteps)" if flag == "num_steps" else ")"))
    if args.num_checkpoints > budget:
        raise BenchError(f"--num-checkpoints {args.num_checkpoints} exceeds the budget of {budget} reward queries: "
                         f"checkpoints sit at distinct query counts")
    return GridInputs(method_names, reward_entry, info, budget, seeds)


def method_settings(args, grid: GridInputs) -> None:
    """--set keys known to the chosen methods, the training prompts, and the methods this reward can train
    ('all' skips those that need a differentiable reward it is not); fills `grid`."""
    from bench.errors import did_you_mean
    from bench.spec import catalog
    from bench.spec.prompts import resolve_prompt_set
    from bench.spec.runspec import parse_overrides

    grid.overrides = parse_overrides(args.overrides)
    known = {k for m in grid.method_names for k in catalog.methods.get(m).meta.get("hparams", {})}
    for key in grid.overrides:
        if key not in known:
            raise did_you_mean(f"hyperparameter (--set) of {','.join(grid.method_names)}", key, known)
    grid.train_prompts, _ = resolve_prompt_set(args.train_prompts or grid.info.defaults["train_prompts"])
    differentiable = grid.reward_entry.meta["differentiable"]
    if args.methods.strip() == "all" and not differentiable:
        skipped = [m for m in grid.method_names if catalog.methods.get(m).meta.get("needs_differentiable_reward")]
        if skipped:  # 'all' means all that can train on this reward
            print(f"bench: skipping {', '.join(skipped)}: {args.reward!r} is not differentiable", file=sys.stderr)
            grid.method_names = [m for m in grid.method_names if m not in skipped]
    for m in grid.method_names:
        if catalog.methods.get(m).meta.get("needs_differentiable_reward") and not differentiable:
            raise BenchError(f"method {m!r} backpropagates through the reward, but {args.reward!r} is not "
                             f"differentiable; choose a differentiable reward (see `python -m bench list rewards`)")


def stop_rule_of(args, grid: GridInputs, num_checkpoints: int) -> tuple[float | None, int, str | None]:
    """--stop-level and --stop-margin, checked: a finite level, a margin below the number of marks, and training
    prompts that are a registered prompt set (the stop rule scores the fixed-seed images evaluation draws for that
    set, and evaluation draws them only for registered sets)."""
    import math

    level, margin = getattr(args, "stop_level", None), getattr(args, "stop_margin", None)
    reward = getattr(args, "stop_reward", None)
    if level is None:
        for flag, value in (("--stop-margin", margin), ("--stop-reward", reward)):
            if value is not None:
                raise BenchError(f"{flag} needs --stop-level")
        return None, 1, None
    if reward is not None:
        from bench.spec import catalog

        entry = catalog.rewards.get(reward)  # did-you-mean on a typo
        if entry.meta.get("eval_only") or entry.meta.get("control"):
            raise BenchError(f"--stop-reward {reward!r}: a run stops on a proxy reward, not a gold or control one")
        if reward == args.reward:
            reward = None  # the training reward: the default, so the run keeps one name
    if not math.isfinite(level) or abs(level) > 1e6:  # no reward's scale comes near 1e6: a larger one is a typo
        raise BenchError(f"--stop-level {level} is not a level on a reward's scale (a finite number within +-1e6)")
    margin = 1 if margin is None else margin
    if not 0 <= margin < num_checkpoints:
        raise BenchError(f"--stop-margin {margin} must be at least 0 and below --num-checkpoints ({num_checkpoints})")
    from bench.spec.catalog import prompt_sets

    if grid.train_prompts not in prompt_sets:
        raise BenchError(f"--stop-level needs registered training prompts (the fixed evaluation images are drawn per "
                         f"registered set); {grid.train_prompts!r} is a file")
    return float(level), int(margin), reward


def expand_grid(args, grid: GridInputs, inputs: str, shard: tuple[int, int] | None) -> list:
    """The grid's RunSpecs, seed-major (a grid stopped part-way, a study over several sessions, holds whole
    seeds: every method on seed 0, then seed 1, ..., which the paired-by-seed comparisons need); `shard` keeps
    the K-th of N deterministic slices."""
    from bench.spec import catalog
    from bench.spec.runspec import RunSpec, reset_rule_of, resolve_hparams, scale_rule_of
    from bench.spec.scale import Scale

    d = grid.info.defaults
    num_steps = args.num_steps or d["num_steps"]
    samples_per_epoch = args.samples_per_epoch or d["samples_per_epoch"]
    rule, multiplier, temperature = scale_rule_of(args, d)
    scale = Scale(num_steps=num_steps, samples_per_epoch=samples_per_epoch, latent_dims=d["latent_dims"],
                  budget=grid.budget, multiplier=multiplier, rule=rule, temperature=temperature,
                  reset_rule=reset_rule_of(args, d))
    hparams_of = {m: resolve_hparams(m, grid.overrides, scale) for m in grid.method_names}
    stop_level, stop_margin, stop_reward = stop_rule_of(args, grid, num_checkpoints=args.num_checkpoints)
    specs = [RunSpec(
        method=m, reward=args.reward, backbone=args.backbone or catalog.DEFAULT_BACKBONE, suite=grid.info.suite,
        seed=seed, budget=grid.budget, num_checkpoints=args.num_checkpoints, num_steps=num_steps,
        guidance_scale=args.guidance_scale or d["guidance_scale"], eta=d["eta"], samples_per_epoch=samples_per_epoch,
        train_batch_size=args.train_batch_size or d["train_batch_size"], sample_batch_size=d["sample_batch_size"],
        train_prompts=grid.train_prompts, lora_rank=args.lora_rank, mixed_precision=args.mixed_precision,
        update_multiplier=multiplier, latent_dims=d["latent_dims"], scale_rule=rule, noise_temperature=temperature,
        reset_rule=scale.reset_rule, stop_level=stop_level, stop_margin=stop_margin,
        stop_per_prompt=args.eval_per_prompt, stop_reward=stop_reward, inputs=inputs,
        hparams=hparams_of[m]) for seed in grid.seeds
        for m in grid.method_names]
    if shard is not None:
        k, n = shard
        total = len(specs)
        specs = [spec for i, spec in enumerate(specs) if i % n == k - 1]
        if not specs:
            raise BenchError(f"--shard {k}/{n}: the grid has only {total} run(s), so this slice is empty")
    return specs
