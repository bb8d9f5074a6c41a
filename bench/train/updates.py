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

Whole numbers: the scale rule gives an update's size as a real number of rows
(1.6 samples x 1 step for the TDPO family on the toy). Where it is whole, the
windows are the references' (`windows`). Where it is not, the epoch's rows, in
the method's loop order, are cut into windows of q and q+1 rows in a seeded
order (`window_sizes`, `scheduled_windows`), and the number of updates carries
its fraction across epochs (`updates_this_epoch`): every row is used exactly
once per inner epoch and the run gets exactly the rule's updates per query.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bench.spec.scale import updates_this_epoch


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


def window_sizes(rng: np.random.Generator, rows: int, updates: int) -> list[int]:
    """`rows` split into `updates` sizes of q or q + 1 (q = rows // updates), in a seeded random order: the
    mean size is rows / updates exactly and every row is in exactly one window."""
    updates = max(1, min(rows, updates))
    q, extra = divmod(rows, updates)
    sizes = np.array([q + 1] * extra + [q] * (updates - extra))
    return [int(v) for v in sizes[rng.permutation(updates)]]


def scheduled_windows(perm: torch.Tensor, t_perm: torch.Tensor, batch: int, order: str,
                      sizes: list[int]) -> list[Window]:
    """The epoch's rows in the method's loop order (micro-steps of `batch` samples), cut into consecutive
    windows of `sizes` rows (sum(sizes) == rows). A window may cross a step or minibatch boundary, as the
    references' gradient accumulation does."""
    steps = micro_steps(perm, t_perm, batch, order)
    samples = torch.cat([s for s, _ in steps])
    step_idx = torch.cat([j for _, j in steps])
    if sum(sizes) != len(samples):
        raise ValueError(f"window sizes sum to {sum(sizes)}, the epoch has {len(samples)} rows")
    out, start = [], 0
    for k in sizes:
        out.append(Window(samples[start:start + k], step_idx[start:start + k]))
        start += k
    return out


def epoch_windows(ctx, perm: torch.Tensor, t_perm: torch.Tensor, batch: int, accumulation: int, order: str,
                  n: int) -> list[Window]:
    """One inner epoch's updates for a per-step policy-gradient method: the references' windows where the
    rule's update is whole (`update_rows` == samples x steps), else the seeded schedule of sizes."""
    hp = ctx.hp
    rows_per_update = float(hp.get("update_rows", batch * ctx.world_size * accumulation)) / ctx.world_size
    if abs(rows_per_update - batch * accumulation) < 1e-9:
        return windows(perm, t_perm, batch, accumulation, order)
    rows = perm.numel() * t_perm.shape[1]
    k = updates_this_epoch(ctx.queries_before, n * ctx.world_size, hp["updates_per_query"], most=rows)
    return scheduled_windows(perm, t_perm, batch, order, window_sizes(ctx.rng, rows, k))


def epoch_permutations(rng: np.random.Generator, n: int, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The references' per-inner-epoch shuffles: samples, then the T steps independently per sample."""
    perm = torch.as_tensor(rng.permutation(n))
    t_perm = torch.as_tensor(np.stack([rng.permutation(T) for _ in range(n)]))
    return perm, t_perm
