"""The method interface: what the harness asks of a method, in two parts.

1. **The trainer** (`methods/<name>.py`, imports torch; named by the catalog entry's target):

       class Method:
           def __init__(self, ctx: TrainContext): ...
           def train_epoch(self, n: int, epoch: int) -> dict[str, float]:
               '''Sample n images on this process, score each once with ctx.reward (n reward
               queries), and train on them. Returns the epoch's training metrics.'''
           def training_state(self) -> dict: ...          # what resume restores (optimizers, trackers)
           def load_training_state(self, state: dict) -> None: ...
           gradient_updates: int                          # optimizer steps so far

2. **The update shape** (`UpdateShape` below, torch-free; named by the entry's `shape`): everything the
   core needs to know about the method's updates without running it, so that `bench list`, validation and
   the plan stay instant. The scale rule (bench/spec/scale.py), the cost model (bench/grid.py) and the FLOP
   floor (bench/perf.py) ask the shape; none of them switches on a method's name or kind.

   - `derive`: the quantities the scale rule gives the method at a run's scale (its update's size);
   - `schedule`: the update the `--effective` table prints, how updates fall per epoch, and which floor binds;
   - `update_rows` / `source_update_rows`: rows (sample-steps, chains or pairs) per update, at the run's scale
     and at the source's: the batch size the optimiser sees, which the "sde" scale rule scales by;
   - `planned_epoch`: the UNet, encoder and decoder rows one epoch will count (the compute counters);
   - `train_seconds`: the cost model's seconds of one epoch's training.

A built-in method's shape is in methods/shapes.py; a plugin may reuse one (a DDPO variant is a
`PolicyGradient`) or bring its own subclass. `Schedule` and `Cost` are the small records they exchange.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol


class Method(Protocol):
    """A trainer (see the module docstring); `bench.train.runner` drives it."""

    gradient_updates: int

    def train_epoch(self, n: int, epoch: int) -> dict[str, float]: ...

    def training_state(self) -> dict: ...

    def load_training_state(self, state: dict) -> None: ...


@dataclass(frozen=True)
class Schedule:
    """How a method's updates fall over a run at some scale (for `--effective` and the run's update count)."""

    update: str
    """One update, in words ("8 samples x 10 steps")."""
    per_epoch: int | None = None
    """Updates per epoch where fixed (the references' windows); None: the run's carried schedule."""
    most: Callable[[int], int] | None = None
    """The most updates an epoch of n images holds (a floor: one row, chain or pair each), or None."""
    least: int = 1
    """The fewest updates per epoch: 1, or 0 where data waits in a buffer for the next update."""
    floor: str = ""
    """Which floor binds, in words ("floor: one sample-step per update"), or ''."""


@dataclass(frozen=True)
class Cost:
    """The cost model's calibrated calls, for `UpdateShape.train_seconds` (seconds)."""

    fwd: Callable[[float], float]
    """A UNet forward of `rows` latents."""
    fb: Callable[[float], float]
    """A UNet forward and backward of `rows` latents."""
    chunked: Callable[[float, Callable], float]
    """`rows` latents in calls of at most train_batch_size, the last one smaller, each costing `cost(rows)`."""
    decode: float
    """One VAE decode."""
    sampling: float
    """One epoch's sampling with classifier-free guidance (every image, every step)."""


class UpdateShape:
    """The base of every shape: no derived quantities, no training rows. Subclasses override what they use."""

    lockstep = False
    """Whether seeds of the method make the same UNet calls and backwards in the same order, so a grid may
    train them together (bench/train/lockstep.py): checked for the per-step policy-gradient methods only."""
    samples_with_gradients = False
    """Whether sampling is training (AlignProp samples with gradients): its sampling rows count as training."""

    def derive(self, src: dict, hp: dict, out: dict, scale) -> None:
        """Add to `out` (the effective hyperparameters) the quantities the scale rule derives for this method."""

    def schedule(self, src: dict, hp: dict, scale) -> Schedule:
        raise NotImplementedError

    def update_rows(self, src: dict, hp: dict, scale) -> float:
        """Rows per update at `scale` (`hp` already effective)."""
        raise NotImplementedError

    def source_update_rows(self, src: dict) -> float:
        """Rows per update in the source's own setting."""
        raise NotImplementedError

    def planned_epoch(self, meta: dict, hp: dict, spec, before: int, n: int, out: dict, state: dict) -> None:
        """Add one epoch's (`n` images after `before` queries) training rows to `out["training"]` and
        `out["critic encoding"]` ([forward, backward, encoder, decodes]); `state` carries across epochs."""
        raise NotImplementedError

    def train_seconds(self, spec, hp: dict, cost: Cost) -> float:
        """The cost model's seconds of one epoch's training at spec's scale (sampling excluded unless the method
        samples with gradients, where the returned value replaces it)."""
        raise NotImplementedError

    def sampling_factor(self, hp: dict) -> float:
        """Sampling's cost relative to guided sampling (0.5 where a method samples at guidance 1: one pass)."""
        return 0.5 if float(hp.get("rollout_guidance", 0.0)) == 1.0 else 1.0
