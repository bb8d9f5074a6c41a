"""The one reward interface: images and prompts in, one score per image out.

images: float tensor (B, 3, H, W) in [0, 1]; prompts: list of B strings.
Scores come back as a float32 CPU tensor of shape (B,).
"""

from __future__ import annotations

from typing import Callable

import torch


class Reward:
    name: str = "reward"
    higher_is_better: bool = True
    """Sort direction for leaderboards."""
    differentiable: bool = False
    """True if `score_differentiable` can backpropagate into the images (AlignProp)."""

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def score_differentiable(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError(f"reward {self.name!r} is not differentiable")

    def image_encoder(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The reward's own frozen image encoder (images in [0,1] -> features), if it
        has one. The TDPO temporal critic embeds the decoded x_t with it."""
        return None

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.score(images, prompts)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[0,1] floats -> uint8 values as the reference does: (x*255).round().clamp(0,255)."""
    return (images.detach().float() * 255).round().clamp(0, 255).to(torch.uint8)
