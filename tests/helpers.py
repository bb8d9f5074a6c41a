"""Test doubles registered into the catalog by the tests that need them."""

import torch

from metrics.base import Reward


class CountingReward(Reward):
    """Mean pixel brightness (differentiable); counts every image it is asked to score."""

    name = "test-counting"
    calls: list[int] = []

    def __init__(self, **_):
        pass

    def score(self, images, prompts):
        assert len(images) == len(prompts)
        CountingReward.calls.append(len(images))
        return images.float().mean(dim=(1, 2, 3)).cpu()

    def score_differentiable(self, images, prompts):
        assert len(images) == len(prompts)
        CountingReward.calls.append(len(images))
        return images.float().mean(dim=(1, 2, 3))

    def image_encoder(self):
        """A fixed 48-d feature (4x4 average-pooled RGB), L2-normalised, for the TDPO critic."""
        def encode(images):
            feats = torch.nn.functional.adaptive_avg_pool2d(images.float(), 4).flatten(1)
            return feats / (feats.norm(dim=-1, keepdim=True) + 1e-8)
        return encode


def register_counting_reward():
    from bench.catalog import rewards

    if "test-counting" not in rewards:
        rewards.register("test-counting", "tests.helpers:CountingReward", "test double",
                         higher_is_better=True, differentiable=True)
    CountingReward.calls.clear()
    return CountingReward
