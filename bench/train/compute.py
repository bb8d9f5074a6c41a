"""Compute accounting: what a run spends besides reward queries.

Counts are in rows (one latent or image through a model): a guided UNet call on B latents is 2B
forward rows (classifier-free guidance runs the conditional and unconditional halves), and 2B
backward rows if a gradient flows back through it. Gradient checkpointing's recomputation is a
real second forward and is counted as one. The TDPO critic's encoder calls embed the decoded
x_t of every step: they are forward passes of the reward's image encoder that the budget does
not count as queries (T per sample), so they are counted apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

FIELDS = ("unet_forward", "unet_backward", "vae_decodes", "reward_forwards", "encoder_forwards")


@dataclass
class ComputeCounts:
    unet_forward: int = 0
    """Rows through the UNet (classifier-free guidance: 2 per latent)."""
    unet_backward: int = 0
    """Rows a gradient flowed back through."""
    vae_decodes: int = 0
    """Latents decoded to images."""
    reward_forwards: int = 0
    """Images through the training reward (the reward queries, plus nothing else)."""
    encoder_forwards: int = 0
    """Images through a reward's image encoder outside the queries (the TDPO critic's states)."""

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def unet_output(self, out: torch.Tensor) -> torch.Tensor:
        """Count a UNet call's rows forward, and backward once a gradient reaches its output."""
        rows = out.shape[0]
        self.unet_forward += rows
        if out.requires_grad:
            def count(grad, rows=rows):
                self.unet_backward += rows
                return grad
            out.register_hook(count)
        return out

    def recomputed(self, out: torch.Tensor, rows: int) -> torch.Tensor:
        """Count `rows` forward rows once a gradient reaches `out`: gradient checkpointing's recomputation.
        Its second forward does not reach `unet_output` (torch's non-reentrant checkpoint stops recomputing
        once it has every saved tensor), so the caller counts it here."""
        if out.requires_grad:
            def count(grad):
                self.unet_forward += rows
                return grad
            out.register_hook(count)
        return out
