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
    from bench.spec.catalog import rewards

    if "test-counting" not in rewards:
        rewards.register("test-counting", "tests.helpers:CountingReward", "test double",
                         higher_is_better=True, differentiable=True)
    CountingReward.calls.clear()
    return CountingReward


def make_spec(method: str, reward: str = "test-counting", *, num_steps: int, samples_per_epoch: int, budget: int,
              train_batch_size: int = 64, sample_batch_size: int = 8, num_checkpoints: int = 1,
              multiplier: float = 8.0, latent_dims: int = 256, seed: int = 0, backbone: str = "tiny-random",
              suite: str = "tiny-random", train_prompts: str = "simple-animals", overrides: dict | None = None):
    """A RunSpec with the scale rule applied (the tiny-random backbone's latents are 4x8x8)."""
    from bench.spec.scale import Scale
    from bench.spec.runspec import RunSpec, resolve_hparams

    scale = Scale(num_steps=num_steps, samples_per_epoch=samples_per_epoch, latent_dims=latent_dims, budget=budget,
                  multiplier=multiplier)
    return RunSpec(method=method, reward=reward, backbone=backbone, suite=suite, seed=seed, budget=budget,
                   num_checkpoints=num_checkpoints, num_steps=num_steps, guidance_scale=5.0, eta=1.0,
                   samples_per_epoch=samples_per_epoch, train_batch_size=train_batch_size,
                   sample_batch_size=sample_batch_size, train_prompts=train_prompts, update_multiplier=multiplier,
                   latent_dims=latent_dims, hparams=resolve_hparams(method, overrides or {}, scale))


class NaNAfterReward(CountingReward):
    """Brightness, but NaN for every other image once more than `after` images were scored."""

    name = "test-nan"
    after = 16

    def score(self, images, prompts):
        out = super().score(images, prompts)
        if sum(CountingReward.calls) > self.after:
            out[::2] = float("nan")
        return out


def register_nan_reward(after: int = 16):
    from bench.spec.catalog import rewards

    if "test-nan" not in rewards:
        rewards.register("test-nan", "tests.helpers:NaNAfterReward", "test double",
                         higher_is_better=True, differentiable=False)
    NaNAfterReward.after = after
    CountingReward.calls.clear()
    return NaNAfterReward
