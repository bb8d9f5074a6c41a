"""Methods and rewards from outside the tree, through Python entry points.

A package declares, in its pyproject.toml,

    [project.entry-points."overopt_bench.methods"]
    my-method = "my_package.register:MY_METHOD"

    [project.entry-points."overopt_bench.rewards"]
    my-reward = "my_package.register:MY_REWARD"

The entry point's name is the registered name; its object is a dict of the same fields a built-in's
registration in bench/spec/catalog.py has (`target`, `summary` and the entry's metadata). A method may start from
a built-in with `like="ddpo-2"`: it takes that entry's shape, source and hyperparameters, and its own `hparams`
override them. The module the entry point names must be import-light (no torch): it is read by `bench list` and
by validation; the trainer and the reward named by `target` are imported only when a run needs them.

Plugins are read once, the first time a registry is asked for a name. A broken plugin is one clear line
naming its entry point and package (exit 2), never a traceback.
"""

from __future__ import annotations

import math
from typing import Any

from bench.errors import BenchError

GROUPS = {"method": "overopt_bench.methods", "reward": "overopt_bench.rewards"}
"""The entry-point group of each registry kind that takes plugins."""

METHOD_SOURCE_KEYS = ("samples_per_epoch", "num_steps", "updates_per_epoch")


def _entry_points(group: str) -> list:
    from importlib.metadata import entry_points

    return sorted(entry_points(group=group), key=lambda ep: ep.name)


def load_into(registry) -> None:
    """Register every plugin of `registry.kind` (no-op for kinds without a group)."""
    group = GROUPS.get(registry.kind)
    if group is None:
        return
    for ep in _entry_points(group):
        where = f"plugin {registry.kind} {ep.name!r} ({group} entry point {ep.value!r}" + \
            (f" of package {ep.dist.name}" if getattr(ep, "dist", None) is not None else "") + ")"
        try:
            spec = ep.load()
        except Exception as e:  # an import error in someone else's package: one line, theirs to fix
            raise BenchError(f"{where} could not be imported: {type(e).__name__}: {e}") from None
        if callable(spec):
            spec = spec()
        if not isinstance(spec, dict):
            raise BenchError(f"{where} must be a dict of registration fields (target, summary, ...), got "
                             f"{type(spec).__name__}")
        fields = dict(spec)
        _check_name(ep.name, registry, where)
        fields = CHECKS[registry.kind](fields, registry, where)
        target, summary = fields.pop("target"), fields.pop("summary")
        registry.register(ep.name, target, summary, plugin=ep.dist.name if getattr(ep, "dist", None) else ep.value,
                          **fields)


def _check_name(name: str, registry, where: str) -> None:
    from bench.spec.values import safe_component

    try:
        safe_component(name, "name")
    except BenchError as e:
        raise BenchError(f"{where}: {e}") from None
    if name in registry._entries:
        raise BenchError(f"{where}: the name {name!r} is already registered (a built-in or another plugin)")


def _need(fields: dict, key: str, kinds, where: str) -> Any:
    if key not in fields:
        raise BenchError(f"{where}: missing field {key!r}")
    if not isinstance(fields[key], kinds):
        raise BenchError(f"{where}: field {key!r} has the wrong type ({type(fields[key]).__name__})")
    return fields[key]


def _target(fields: dict, key: str, where: str) -> None:
    value = _need(fields, key, str, where)
    module, sep, attr = value.partition(":")
    if not sep or not module or not attr:
        raise BenchError(f"{where}: {key} must be 'module:attribute', got {value!r}")


def _method_fields(fields: dict, registry, where: str) -> dict:
    like = fields.pop("like", None)
    if like is not None:
        if like not in registry._entries:
            raise BenchError(f"{where}: like={like!r} names no built-in method")
        base = registry._entries[like].meta
        own = fields.pop("hparams", {})
        if not isinstance(own, dict):
            raise BenchError(f"{where}: field 'hparams' must be a dict")
        merged = {k: v for k, v in base.items() if k not in ("companion", "expected_not_to_learn", "family")}
        merged.update(fields)
        merged["hparams"] = {**base["hparams"], **own}
        fields = merged
    _target(fields, "target", where)
    _need(fields, "summary", str, where)
    _target(fields, "shape", where)
    source = _need(fields, "source", dict, where)
    for key in METHOD_SOURCE_KEYS:
        v = source.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise BenchError(f"{where}: source.{key} must be a positive number, got {v!r}")
    hp = _need(fields, "hparams", dict, where)
    from bench.spec.values import HPARAM_RANGES, Range

    ranges = fields.get("hparam_ranges", {})
    if not isinstance(ranges, dict):
        raise BenchError(f"{where}: field 'hparam_ranges' must be a dict of key: (low, high)")
    declared = {}
    for key, r in ranges.items():
        if not (isinstance(r, (tuple, list)) and len(r) == 2 and all(isinstance(x, (int, float)) for x in r)
                and r[0] <= r[1]):
            raise BenchError(f"{where}: hparam_ranges[{key!r}] must be (low, high), got {r!r}")
        declared[key] = Range(float(r[0]), float(r[1]))
    for key in ("lr", "adam_beta1", "adam_beta2", "adam_eps", "weight_decay", "max_grad_norm"):
        if key not in hp:
            raise BenchError(f"{where}: hparams lacks {key!r} (every method's optimiser is declared)")
    for key, value in hp.items():
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if numeric and key not in HPARAM_RANGES and key not in declared:
            raise BenchError(f"{where}: hyperparameter {key!r} has no declared range (add hparam_ranges)")
    fields["hparam_ranges"] = declared
    return fields


def _reward_fields(fields: dict, registry, where: str) -> dict:
    _target(fields, "target", where)
    _need(fields, "summary", str, where)
    _need(fields, "higher_is_better", bool, where)
    _need(fields, "differentiable", bool, where)
    suites = fields.get("suites")
    if suites is not None and (not isinstance(suites, (tuple, list)) or not all(isinstance(s, str) for s in suites)):
        raise BenchError(f"{where}: field 'suites' must be a list of suite names")
    if "sd_weights" in fields:  # "module:function" returning the files its weights come from on real SD
        _target(fields, "sd_weights", where)
    if "toy_assets" in fields and not isinstance(fields["toy_assets"], str):
        raise BenchError(f"{where}: field 'toy_assets' must be a folder name among the toy suite's assets")
    return fields


CHECKS = {"method": _method_fields, "reward": _reward_fields}
"""Each registry kind's check of a plugin's fields (returns the fields to register)."""
