"""Ground truth of the toy world, for evaluation only.

gold aesthetic (pixels only; images in [0,1], shape (B,3,H,W)):
    s = mean HSV saturation, c = std of luminance, m = mean luminance
    a_sat = exp(-((s - 0.45)/w)^2), w = 0.3 below the peak, 0.15 above ("garish")
    gold = 1 + 5*a_sat + 2*tanh(c/0.08) + 2*exp(-((m - 0.6)/0.3)^2)
It is NON-MONOTONE in saturation: it rises gently to s = 0.45 and falls
steeply beyond. About two thirds of rendered scenes have s < 0.45 (render.py
draws muted backgrounds more often), so rendered data mostly show "more
saturated is better". That is the misspecification the proxy inherits.

gold fidelity: a CNN trained on abundant renders predicts, for every
(color, shape) pair, how many such objects the image shows (0, 1, 2, 3). The
fidelity of an image to a toy caption is the product of the probabilities of
what the caption asks for, times a procedural check for a location ("on the
left": the centroid of the prompted color's pixels) or a background color (the
hue of the border pixels). It lies in [0, 1]; > 0.5 counts as a match.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench.toy.captions import parse_caption
from bench.toy.vocab import COLORS, SHAPES

PAIRS = [(c, s) for c in COLORS for s in SHAPES]
PAIR_INDEX = {p: i for i, p in enumerate(PAIRS)}
MAX_COUNT = 3
SAT_PEAK, SAT_RISE, SAT_FALL = 0.45, 0.3, 0.15


def image_stats(images: torch.Tensor) -> dict[str, torch.Tensor]:
    x = images.float().clamp(0, 1)
    mx, mn = x.max(dim=1).values, x.min(dim=1).values
    sat = ((mx - mn) / (mx + 1e-6)).mean(dim=(1, 2))
    lum = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    return {"saturation": sat, "contrast": lum.flatten(1).std(dim=1), "brightness": lum.mean(dim=(1, 2))}


def gold_aesthetic(images: torch.Tensor) -> torch.Tensor:
    st = image_stats(images)
    d = st["saturation"] - SAT_PEAK
    a_sat = torch.exp(-(d / torch.where(d < 0, SAT_RISE, SAT_FALL)) ** 2)
    a_con = torch.tanh(st["contrast"] / 0.08)
    a_bri = torch.exp(-((st["brightness"] - 0.6) / 0.3) ** 2)
    return 1.0 + 5.0 * a_sat + 2.0 * a_con + 2.0 * a_bri


class CountNet(nn.Module):
    """Small CNN: image (B,3,32,32) in [0,1] -> count logits (B, pairs, 4)."""

    def __init__(self, width: int = 48):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.GELU(), nn.Conv2d(w, w, 3, padding=1), nn.GELU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.GELU(), nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.GELU(),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.GELU(), nn.Conv2d(4 * w, 4 * w, 3, padding=1), nn.GELU(),
        )
        self.head = nn.Sequential(nn.Linear(4 * w * 2, 256), nn.GELU(), nn.Linear(256, len(PAIRS) * (MAX_COUNT + 1)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = self.features(images * 2 - 1)
        h = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return self.head(h).view(-1, len(PAIRS), MAX_COUNT + 1)


def count_targets(scenes) -> torch.Tensor:
    t = torch.zeros(len(scenes), len(PAIRS), dtype=torch.long)
    for i, sc in enumerate(scenes):
        for o in sc.objects:
            t[i, PAIR_INDEX[(o.color, o.shape)]] += 1
    return t.clamp(max=MAX_COUNT)


def _hue_deg(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pixel (hue in degrees, saturation, value) of (B,3,H,W)."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    mx, mn = x.max(dim=1).values, x.min(dim=1).values
    d = (mx - mn).clamp(min=1e-6)
    h = torch.where(mx == r, ((g - b) / d) % 6, torch.where(mx == g, (b - r) / d + 2, (r - g) / d + 4)) * 60.0
    return h, (mx - mn) / mx.clamp(min=1e-6), mx


def _hue_near(h: torch.Tensor, target: float, tol: float = 20.0) -> torch.Tensor:
    d = (h - target).abs() % 360.0
    return torch.minimum(d, 360.0 - d) <= tol


def location_prob(images: torch.Tensor, color: str, location: str) -> torch.Tensor:
    h, s, v = _hue_deg(images.float())
    m = (_hue_near(h, COLORS[color]) & (s > 0.45) & (v > 0.45)).float()
    mass = m.sum(dim=(1, 2))
    n = images.shape[-1]
    coords = torch.arange(n, dtype=torch.float32) + 0.5
    cx = (m * coords.view(1, 1, n)).sum(dim=(1, 2)) / mass.clamp(min=1)
    cy = (m * coords.view(1, n, 1)).sum(dim=(1, 2)) / mass.clamp(min=1)
    c, lo = {"left": (cx, True), "right": (cx, False), "top": (cy, True), "bottom": (cy, False)}[location]
    mid = n / 2
    p = torch.sigmoid((mid - c) / 1.5) if lo else torch.sigmoid((c - mid) / 1.5)
    return torch.where(mass >= 4, p, torch.zeros_like(p))


def background_prob(images: torch.Tensor, color: str) -> torch.Tensor:
    h, s, _ = _hue_deg(images.float())
    border = torch.ones_like(h, dtype=torch.bool)
    border[:, 2:-2, 2:-2] = False
    hit = (_hue_near(h, COLORS[color], 25.0) & (s > 0.3) & border).float().sum(dim=(1, 2))
    return hit / border[0].float().sum()


class GoldFidelity:
    """Fidelity of images to toy captions, in [0, 1]."""

    def __init__(self, net: CountNet, device="cpu"):
        self.device = torch.device(device)
        self.net = net.to(self.device).eval().requires_grad_(False)

    @torch.no_grad()
    def count_probs(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.float().to(self.device)).softmax(-1).cpu()

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        probs = self.count_probs(images)
        out = torch.ones(len(prompts))
        for i, prompt in enumerate(prompts):
            req = parse_caption(prompt)
            for color, shape, n in req.objects:
                out[i] *= probs[i, PAIR_INDEX[(color, shape)], min(n, MAX_COUNT)]
            if req.location:
                out[i] *= location_prob(images[i:i + 1].cpu(), req.objects[0][0], req.location)[0]
            if req.bg_color:
                out[i] *= background_prob(images[i:i + 1].cpu(), req.bg_color)[0].clamp(max=0.5) * 2
        return out


def noisy_views(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Augmentation for the gold classifier: mild blur and noise, so it stays
    calibrated on imperfect generated images, not only on crisp renders."""
    b = images.shape[0]
    k = torch.tensor([1.0, 2.0, 1.0])
    k = (k[:, None] * k[None, :]) / 16.0
    blurred = F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), k.expand(3, 1, 3, 3), groups=3)
    w = torch.rand(b, 1, 1, 1, generator=generator)
    x = images + w * (blurred - images)
    x = x + torch.randn(x.shape, generator=generator) * 0.04 * torch.rand(b, 1, 1, 1, generator=generator)
    return x.clamp(0, 1)


def predicted_attributes(images: torch.Tensor, count_probs: torch.Tensor) -> dict[str, list]:
    """Discrete attributes of each image, for diversity: `colour` (the colour the gold model most
    expects some object in: argmax_c sum_s P(count(c, s) >= 1)), `position` (the 3x3 cell of the
    foreground's centroid) and `size` (the foreground's area fraction in 4 bins). The foreground is
    every pixel farther than 0.25 (L1 over RGB) from the image's median border colour."""
    x = images.float().clamp(0, 1).cpu()
    b, _, h, w = x.shape
    border = torch.cat([x[:, :, 0], x[:, :, -1], x[:, :, :, 0], x[:, :, :, -1]], dim=2)  # (B, 3, 2h + 2w)
    bg = border.median(dim=2).values
    fg = ((x - bg[:, :, None, None]).abs().sum(dim=1) > 0.25).float()
    area = fg.mean(dim=(1, 2))
    ys = torch.arange(h, dtype=torch.float32) + 0.5
    xs = torch.arange(w, dtype=torch.float32) + 0.5
    mass = fg.sum(dim=(1, 2)).clamp(min=1)
    cy = (fg * ys.view(1, h, 1)).sum(dim=(1, 2)) / mass
    cx = (fg * xs.view(1, 1, w)).sum(dim=(1, 2)) / mass
    cell = (cy / h * 3).long().clamp(0, 2) * 3 + (cx / w * 3).long().clamp(0, 2)
    size = torch.bucketize(area, torch.tensor([0.05, 0.12, 0.25]))
    present = 1.0 - count_probs[:, :, 0]  # (B, pairs): P(count >= 1)
    per_colour = present.view(b, len(COLORS), len(SHAPES)).sum(dim=2)
    colour = per_colour.argmax(dim=1)
    names = list(COLORS)
    return {"colour": [names[i] for i in colour.tolist()], "position": cell.tolist(), "size": size.tolist()}
