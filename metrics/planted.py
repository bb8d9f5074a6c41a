"""The planted-effect control (issue 45): a training reward whose benefit on gold is known in direction and
adjustable in size, proxy + weight x gold. A method trained on it gains gold at a fixed proxy level as the
weight grows; the report reads how large a weight the design detects, which gives its resolving power an
interpretable scale ("detects a method as good as blending X of the true reward into training").

Toy only (the gold reward needs the renderer's ground truth). A control, never a default: no default grid
trains on it, and `bench run --reward` names it explicitly."""

from __future__ import annotations

import torch

from metrics.base import Reward


class PlantedBlend(Reward):
    higher_is_better = True
    differentiable = False  # the gold term has no gradient

    def __init__(self, proxy: str, gold: str, weight: float, suite: str = "toy", device="cpu", **_):
        from bench.spec.catalog import rewards

        self.name = f"{proxy}+{weight:g}x{gold}"
        self.weight = float(weight)
        # the catalog's loaders directly: metrics sit below the training layer that usually loads rewards
        self.proxy, self.gold = (rewards.get(n).load()(suite=suite, device=device) for n in (proxy, gold))

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.proxy.score(images, prompts).float() + self.weight * self.gold.score(images, prompts).float()
