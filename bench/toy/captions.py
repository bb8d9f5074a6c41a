"""The toy caption grammar, parsed back into requirements (for gold fidelity and
for validating toy prompt files)."""

from __future__ import annotations

from dataclasses import dataclass

from bench.errors import BenchError
from bench.toy.vocab import COLORS, LOCATIONS, PLURALS, SHAPES

_SINGULAR = {p: s for s, p in PLURALS.items()}
_NUMBERS = {"a": 1, "an": 1, "two": 2, "three": 3}


@dataclass(frozen=True)
class Requirement:
    kind: str
    objects: tuple[tuple[str, str, int], ...]   # (color, shape, count)
    location: str | None = None
    bg_color: str | None = None


def _object(words: list[str], caption: str) -> tuple[str, str, int]:
    if len(words) != 3 or words[0] not in _NUMBERS or words[1] not in COLORS:
        raise BenchError(f"not a toy caption: {caption!r}")
    n, color, noun = _NUMBERS[words[0]], words[1], words[2]
    shape = noun if n == 1 else _SINGULAR.get(noun)
    if shape not in SHAPES:
        raise BenchError(f"not a toy caption: {caption!r} (unknown shape {noun!r})")
    return color, shape, n


def parse_caption(caption: str) -> Requirement:
    w = caption.lower().split()
    if "and" in w:
        i = w.index("and")
        return Requirement("pair", (_object(w[:i], caption), _object(w[i + 1:], caption)))
    if len(w) == 6 and w[3:5] == ["on", "the"] and w[5] in LOCATIONS:
        return Requirement("location", (_object(w[:3], caption),), location=w[5])
    if len(w) == 7 and w[3] == "on" and w[-1] == "background" and w[5] in COLORS:
        return Requirement("background", (_object(w[:3], caption),), bg_color=w[5])
    obj = _object(w, caption)
    return Requirement("count" if obj[2] > 1 else "single", (obj,))
