"""Procedural renderer of 32x32 RGB scenes with captions (numpy only, deterministic).

A scene is a background (hue, saturation, value, a soft vertical gradient) and
one to three objects, each a (color, shape) drawn at a position and size. The
caption says what a human would: "a red circle", "two blue stars", "a green ring
on the left", "a red circle and a yellow square", "a cyan bar on a purple
background". Attributes the caption leaves out (size, exact position,
background) are random, which gives the generator the variety real data has.

Background saturation is drawn skewed low (mostly muted, a thin tail of vivid
backgrounds). The toy gold aesthetic peaks at moderate saturation, so the data
mostly lie on its rising side: that is what lets a proxy fit on rendered labels
learn saturation as "more is better" (see bench/toy/gold.py).
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field

import numpy as np

from bench.toy.captions import parse_caption
from bench.toy.vocab import COLORS, COUNTS, LOCATIONS, PLURALS, SHAPES, article

SIZE = 32
SUPERSAMPLE = 2  # render at 64x64, box-filter down: cheap antialiasing

KINDS = ("single", "location", "count", "pair", "background")
KIND_WEIGHTS = (0.5, 0.12, 0.14, 0.12, 0.12)


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    cx: float   # centre, pixels in the 32x32 frame
    cy: float
    r: float    # radius-like size, pixels
    rgb: tuple[float, float, float]


@dataclass(frozen=True)
class Scene:
    caption: str
    kind: str
    objects: tuple[Obj, ...]
    bg_rgb: tuple[float, float, float]
    bg_saturation: float
    location: str | None = None
    bg_color: str | None = None
    meta: dict = field(default_factory=dict, compare=False)


def hue_distance(a: float, b: float) -> float:
    d = abs(a - b) % 360.0
    return min(d, 360.0 - d)


def hsv(h_deg: float, s: float, v: float) -> tuple[float, float, float]:
    return colorsys.hsv_to_rgb((h_deg % 360.0) / 360.0, s, v)


# --------------------------------------------------------------------------- shapes
def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test in normalised coordinates (u, v) = ((x-cx)/r, (y-cy)/r), y down."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.82
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.1
    if shape == "triangle":  # apex up
        return (v <= 0.8) & (np.abs(u) <= (v + 1.0) * 0.58)
    if shape == "cross":
        return ((np.abs(u) <= 0.32) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.32) & (np.abs(u) <= 1.0))
    if shape == "ring":
        d = u * u + v * v
        return (d <= 1.0) & (d >= 0.36)
    if shape == "star":  # five points, one up
        rho = np.sqrt(u * u + v * v)
        theta = np.arctan2(u, -v)
        return rho <= 0.42 + 0.62 * ((1 + np.cos(5 * theta)) / 2) ** 2
    if shape == "bar":
        return (np.abs(u) <= 1.05) & (np.abs(v) <= 0.36)
    raise ValueError(f"unknown shape {shape!r}")


_GRID = (np.arange(SIZE * SUPERSAMPLE) + 0.5) / SUPERSAMPLE


def draw(scene: Scene) -> np.ndarray:
    """Render a scene to a uint8 array (32, 32, 3)."""
    yy, xx = np.meshgrid(_GRID, _GRID, indexing="ij")
    bg = np.asarray(scene.bg_rgb, dtype=np.float32)
    grad = scene.meta.get("gradient", 0.0)
    shade = 1.0 + grad * (yy / SIZE - 0.5)  # soft lighting, darker or brighter towards the bottom
    img = np.clip(bg[None, None, :] * shade[..., None], 0, 1).astype(np.float32)
    for o in scene.objects:
        m = shape_mask(o.shape, (xx - o.cx) / o.r, (yy - o.cy) / o.r)
        img[m] = o.rgb
    img = img.reshape(SIZE, SUPERSAMPLE, SIZE, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return (img * 255.0 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------- sampling scenes
def _object_rgb(rng: np.random.Generator, color: str) -> tuple[float, float, float]:
    h = COLORS[color] + rng.uniform(-6, 6)
    return hsv(h, rng.uniform(0.65, 1.0), rng.uniform(0.7, 1.0))


def _background(rng, avoid_hues, color: str | None = None, max_saturation: float = 1.0):
    """Muted backgrounds are common and vivid ones rare (Beta(1.1, 3.2) saturation)."""
    if color is not None:
        h, s = COLORS[color] + rng.uniform(-6, 6), rng.uniform(0.55, 0.95)
    else:
        s = min(float(rng.beta(1.1, 3.2)), max_saturation)
        for _ in range(50):
            h = rng.uniform(0, 360)
            if s < 0.3 or all(hue_distance(h, a) >= 60 for a in avoid_hues):
                break
    v = rng.uniform(0.3, 0.95)
    return hsv(h, s, v), s


def _place(rng, radii, location: str | None):
    """Non-overlapping centres inside the frame; a location word confines the first object."""
    centres = []
    for r in radii:
        for _ in range(200):
            lo, hi = r + 1.0, SIZE - r - 1.0
            cx, cy = rng.uniform(lo, hi), rng.uniform(lo, hi)
            if location == "left":
                cx = rng.uniform(lo, min(hi, 11.0))
            elif location == "right":
                cx = rng.uniform(max(lo, 21.0), hi)
            elif location == "top":
                cy = rng.uniform(lo, min(hi, 11.0))
            elif location == "bottom":
                cy = rng.uniform(max(lo, 21.0), hi)
            elif len(radii) == 1:
                cx, cy = rng.uniform(11.0, 21.0), rng.uniform(11.0, 21.0)
            if all((cx - a) ** 2 + (cy - b) ** 2 >= (r + rb + 1.5) ** 2 for a, b, rb in centres):
                centres.append((cx, cy, r))
                break
        else:
            return None
    return centres


def sample_scene(rng: np.random.Generator, kind: str | None = None, color: str | None = None,
                 shape: str | None = None, max_bg_saturation: float = 1.0) -> Scene:
    """One random scene; `kind`, `color` and `shape` pin parts of it."""
    layout = kind or KINDS[rng.choice(len(KINDS), p=KIND_WEIGHTS)]
    color = color or list(COLORS)[rng.integers(len(COLORS))]
    shape = shape or SHAPES[rng.integers(len(SHAPES))]
    location = bg_color = None
    specs = [(shape, color)]
    if layout == "count":
        n = int(rng.integers(2, 4))
        specs = [(shape, color)] * n
        caption = f"{COUNTS[n]} {color} {PLURALS[shape]}"
    elif layout == "pair":
        while True:
            c2 = list(COLORS)[rng.integers(len(COLORS))]
            s2 = SHAPES[rng.integers(len(SHAPES))]
            if (c2, s2) != (color, shape):
                break
        specs = [(shape, color), (s2, c2)]
        caption = f"{article(color)} {color} {shape} and {article(c2)} {c2} {s2}"
    elif layout == "location":
        location = LOCATIONS[rng.integers(len(LOCATIONS))]
        caption = f"{article(color)} {color} {shape} on the {location}"
    elif layout == "background":
        while True:
            bg_color = list(COLORS)[rng.integers(len(COLORS))]
            if hue_distance(COLORS[bg_color], COLORS[color]) >= 60:
                break
        caption = f"{article(color)} {color} {shape} on {article(bg_color)} {bg_color} background"
    else:
        caption = f"{article(color)} {color} {shape}"
    radii = [rng.uniform(5.0, 8.0) if len(specs) == 1 else rng.uniform(3.6, 5.6) for _ in specs]
    centres = _place(rng, radii, location)
    while centres is None:  # crowded: shrink the objects until they fit
        radii = [r * 0.9 for r in radii]
        centres = _place(rng, radii, location)
    objects = tuple(Obj(s, c, cx, cy, r, _object_rgb(rng, c)) for (s, c), (cx, cy, r) in zip(specs, centres))
    bg_rgb, bg_s = _background(rng, [COLORS[c] for _, c in specs], bg_color, max_bg_saturation)
    return Scene(caption, layout, objects, bg_rgb, bg_s, location, bg_color,
                 meta={"gradient": float(rng.uniform(-0.3, 0.3))})


def render_dataset(n: int, seed: int, **kw) -> tuple[np.ndarray, list[Scene]]:
    """n scenes and their images (n, 32, 32, 3) uint8; deterministic given the seed."""
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, **kw) for _ in range(n)]
    images = np.stack([draw(s) for s in scenes]) if scenes else np.zeros((0, SIZE, SIZE, 3), np.uint8)
    return images, scenes


def scene_for_caption(caption: str, rng: np.random.Generator) -> Scene:
    """A random scene that the caption describes (used to render reference images).
    Rejection sampling: meant for single-object, count, location and background
    captions; a pair caption rarely matches and raises after 1000 tries."""
    req = parse_caption(caption)
    for _ in range(1000):
        s = sample_scene(rng, kind=req.kind, color=req.objects[0][0], shape=req.objects[0][1])
        if s.caption == caption:
            return s
    raise RuntimeError(f"could not render {caption!r}")

