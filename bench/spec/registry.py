"""Small registries, one per kind (methods, rewards, prompt sets, backbones).

An entry names its implementation as a "module:attribute" string that is only
imported on `load`, so listing and validating names never imports torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from bench.errors import did_you_mean


@dataclass(frozen=True)
class Entry:
    name: str
    """The registered name, as typed on the command line."""
    target: str
    """"module:attribute" of the implementation, imported lazily."""
    summary: str
    """One line for `bench list`."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Kind-specific metadata (presets, higher_is_better, file path, ...)."""

    def load(self):
        return load_target(self.target)


def load_target(target: str):
    """Import "module:attribute" (or just "module")."""
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, attr) if attr else obj


def shape_of(meta: dict[str, Any]):
    """The update shape (methods/base.py's UpdateShape) a method's entry names (`shape="module:Class"`),
    instantiated: what the scale rule, the cost model and the FLOP floor ask about a method's updates."""
    shape = meta.get("shape")
    if shape is None:
        raise KeyError("a method entry must name its update shape (shape='module:Class')")
    return (load_target(shape) if isinstance(shape, str) else shape)()


class Registry:
    """Entries of one kind. Methods and rewards also take plugins (bench/spec/plugins.py), read the first time a
    name is asked for, so registering the built-ins and `import bench.spec.catalog` stay cheap."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._plugins_read = False

    def _read_plugins(self) -> None:
        if not self._plugins_read:
            self._plugins_read = True  # first: a plugin's `like=` reads the built-ins through _entries
            from bench.spec.plugins import load_into

            load_into(self)

    def register(self, name: str, target: str, summary: str, **meta) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._entries[name] = Entry(name, target, summary, meta)

    def get(self, name: str) -> Entry:
        if name not in self._entries:
            self._read_plugins()
        try:
            return self._entries[name]
        except KeyError:
            raise did_you_mean(self.kind, name, self._entries) from None

    def __contains__(self, name: str) -> bool:
        if name not in self._entries:
            self._read_plugins()
        return name in self._entries

    def names(self) -> list[str]:
        self._read_plugins()
        return list(self._entries)

    def entries(self) -> list[Entry]:
        self._read_plugins()
        return list(self._entries.values())
