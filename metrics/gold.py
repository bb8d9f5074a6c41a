"""Gold (ground-truth) rewards of the toy suite, for evaluation only: training
on them is refused. Definitions in bench/toy/gold.py."""

from __future__ import annotations

import torch

from bench.errors import BenchError
from metrics.base import Reward


def _toy_only(name: str, suite: str) -> None:
    if suite != "toy":
        raise BenchError(f"{name} exists only on the toy suite (it needs the renderer's ground truth), not {suite!r}")


class GoldAesthetic(Reward):
    name = "gold-aesthetic"
    higher_is_better = True

    def __init__(self, suite: str = "toy", **_):
        _toy_only(self.name, suite)

    @torch.no_grad()
    def score(self, images, prompts=None):
        from bench.toy.gold import gold_aesthetic

        return gold_aesthetic(images.detach().float().cpu()).float()


class GoldFidelity(Reward):
    name = "gold-fidelity"
    higher_is_better = True

    def __init__(self, suite: str = "toy", device="cpu", **_):
        _toy_only(self.name, suite)
        from safetensors.torch import load_file

        from bench.toy.gold import CountNet, GoldFidelity as Scorer
        from bench.spec.toy_assets import asset

        net = CountNet()
        net.load_state_dict(load_file(str(asset("gold-fidelity", "countnet.safetensors"))))
        self.scorer = Scorer(net, device)

    def score(self, images, prompts):
        return self.scorer.score(images, prompts)

    @torch.no_grad()
    def attributes(self, images) -> dict[str, list]:
        """Each image's discrete attributes as the gold model sees them (colour, position, size), for the
        diversity measures: bench/toy/gold.py's `predicted_attributes`."""
        from bench.toy.gold import predicted_attributes

        return predicted_attributes(images, self.scorer.count_probs(images))
