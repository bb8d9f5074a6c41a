"""The update loop shared by the per-step policy-gradient methods (DDPO, TDPO).

An epoch's data is n sampled trajectories x T steps. Following the references,
each inner epoch shuffles the samples and permutes the T steps independently per
sample; a *micro-step* is one minibatch of samples at one (permuted) step
position. DDPO loops minibatch OUTER, timestep INNER; TDPO timestep OUTER,
minibatch INNER. An optimizer update accumulates `accumulation` consecutive
micro-steps (it may cross a minibatch or step boundary, as the references'
gradient accumulation does).

Fusing: inside one accumulation window no optimizer step happens, so the window's
rows (sample, step) can be evaluated in as few UNet calls as memory allows
(`max_rows` per call). The update's loss is the mean over the window's rows, which
equals the references' mean of equal-sized micro-step means; the gradient is the
same up to float rounding (tested), only the number of calls changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Window:
    """The rows of one optimizer update: sample index and step index per row."""

    samples: torch.Tensor
    steps: torch.Tensor

    def __len__(self) -> int:
        return len(self.samples)

    def chunks(self, max_rows: int):
        """(samples, steps) slices of at most `max_rows` rows."""
        for s in range(0, len(self), max(1, max_rows)):
            yield self.samples[s:s + max_rows], self.steps[s:s + max_rows]


def micro_steps(perm: torch.Tensor, t_perm: torch.Tensor, batch: int, order: str) -> list[tuple]:
    """(sample indices, step indices) per micro-step, in the method's loop order."""
    n, T = t_perm.shape
    starts = range(0, n, batch)
    if order == "minibatch":  # DDPO: minibatch outer, timestep inner
        pairs = [(s, j) for s in starts for j in range(T)]
    elif order == "timestep":  # TDPO: timestep outer, minibatch inner
        pairs = [(s, j) for j in range(T) for s in starts]
    else:
        raise ValueError(f"unknown loop order {order!r}")
    return [(perm[s:s + batch], t_perm[s:s + batch, j]) for s, j in pairs]


def windows(perm: torch.Tensor, t_perm: torch.Tensor, batch: int, accumulation: int, order: str) -> list[Window]:
    """The epoch's updates: consecutive groups of `accumulation` micro-steps."""
    steps = micro_steps(perm, t_perm, batch, order)
    out = []
    for w in range(0, len(steps), accumulation):
        group = steps[w:w + accumulation]
        out.append(Window(torch.cat([g[0] for g in group]), torch.cat([g[1] for g in group])))
    return out


def epoch_permutations(rng: np.random.Generator, n: int, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The references' per-inner-epoch shuffles: samples, then the T steps independently per sample."""
    perm = torch.as_tensor(rng.permutation(n))
    t_perm = torch.as_tensor(np.stack([rng.permutation(T) for _ in range(n)]))
    return perm, t_perm
