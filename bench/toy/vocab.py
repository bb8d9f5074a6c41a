"""The toy world's vocabulary: shapes, colors, counts and locations, shared by the renderer, the caption
parser and the gold rewards."""

from __future__ import annotations

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring", "star", "bar")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "diamond": "diamonds",
           "cross": "crosses", "ring": "rings", "star": "stars", "bar": "bars"}
# Hue in degrees; the names are what captions and the gold fidelity scorer use.
COLORS = {"red": 0.0, "orange": 30.0, "yellow": 58.0, "green": 120.0, "cyan": 185.0, "blue": 228.0,
          "purple": 282.0}
COUNTS = {1: "a", 2: "two", 3: "three"}
LOCATIONS = ("left", "right", "top", "bottom")


def article(color: str) -> str:
    return "an" if color[0] in "aeiou" else "a"


def vocabulary() -> list[str]:
    words = {"a", "an", "and", "on", "the", "background", "two", "three", *LOCATIONS, *SHAPES,
             *PLURALS.values(), *COLORS}
    return sorted(words)
