"""Training state for resuming a run where it stopped, saved with every checkpoint.

A snapshot is two files in the run folder's `state/`: `state.safetensors` (every tensor: LoRA,
optimizer moments, the critic, generator states, replay buffers) and `state.json` (everything
else: counters, the numpy generator's state, stat-tracker buffers, the structure that puts the
tensors back). Nothing is pickled. The JSON records the SHA-256 of the tensor file; a snapshot
whose tensors do not match it is refused. Both are written atomically, the JSON last, so a crash
while saving leaves the previous snapshot whole.

`pack(obj)` turns a nested structure of dicts (any keys), lists, tuples, tensors, numbers,
strings, bools and None into (JSON-able structure, tensors); `unpack` inverts it exactly.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from bench.errors import BenchError
from bench.store.atomic import atomic_write_bytes

STATE_DIR = "state"


def pack(obj, tensors: dict | None = None, prefix: str = "t") -> tuple[object, dict[str, torch.Tensor]]:
    tensors = {} if tensors is None else tensors

    def go(x, path: str):
        if isinstance(x, torch.Tensor):
            key = f"{prefix}{len(tensors)}"
            tensors[key] = x.detach().cpu().clone().contiguous()  # a copy: safetensors refuses shared storage
            return {"__tensor__": key}
        if isinstance(x, np.ndarray):
            return {"__ndarray__": go(torch.from_numpy(np.ascontiguousarray(x)), path)}
        if isinstance(x, dict):
            return {"__dict__": [[go(k, path), go(v, f"{path}.{k}")] for k, v in x.items()]}
        if isinstance(x, tuple):
            return {"__tuple__": [go(v, path) for v in x]}
        if isinstance(x, list):
            return [go(v, path) for v in x]
        if isinstance(x, (np.integer, np.floating, np.bool_)):
            return x.item()
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise TypeError(f"cannot save {type(x).__name__} at {path} in a training state")

    return go(obj, "state"), tensors


def unpack(obj, tensors: dict[str, torch.Tensor]):
    if isinstance(obj, list):
        return [unpack(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return unpack(obj["__ndarray__"], tensors).numpy()
        if "__tuple__" in obj:
            return tuple(unpack(v, tensors) for v in obj["__tuple__"])
        if "__dict__" in obj:
            return {_hashable(unpack(k, tensors)): unpack(v, tensors) for k, v in obj["__dict__"]}
    return obj


def _hashable(k):
    return tuple(k) if isinstance(k, list) else k


def state_folder(run_dir: Path, rank: int = 0) -> Path:
    return Path(run_dir) / STATE_DIR / f"rank{rank}"


def save_state(folder: Path, state: dict) -> None:
    from safetensors.torch import save

    structure, tensors = pack(state)
    blob = save(tensors) if tensors else save({"_empty": torch.zeros(0)})
    folder = Path(folder)
    atomic_write_bytes(folder / "state.safetensors", blob)
    meta = {"format": "bench-state-v1", "sha256": hashlib.sha256(blob).hexdigest(), "state": structure}
    atomic_write_bytes(folder / "state.json", json.dumps(meta).encode())


def load_state(folder: Path) -> dict | None:
    """The last snapshot in `folder`, or None if there is none. A snapshot that does not match its
    checksum or cannot be read raises a one-line BenchError naming the folder."""
    from safetensors.torch import load

    folder = Path(folder)
    meta_path, blob_path = folder / "state.json", folder / "state.safetensors"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        blob = blob_path.read_bytes()
    except (OSError, ValueError) as e:
        raise BenchError(f"cannot read the training state in {folder}: {e}; start over with --restart") from None
    if meta.get("format") != "bench-state-v1" or hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
        raise BenchError(f"the training state in {folder} is corrupt (checksum mismatch); start over with --restart")
    return unpack(meta["state"], load(blob))


# ------------------------------------------------------------------------------ shared pieces of method states
def optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    return optimizer.state_dict()


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    optimizer.load_state_dict(state)


def tracker_state(tracker) -> dict:
    return {"stats": {k: list(v) for k, v in tracker.stats.items()}}


def load_tracker_state(tracker, state: dict) -> None:
    from collections import deque

    tracker.stats = {k: deque(v, maxlen=tracker.buffer_size) for k, v in state["stats"].items()}


# ------------------------------------------------------------------------------ the run's own state
@dataclass
class RunState:
    """The one list of what a run's snapshot holds, besides the method's own `training_state()`: `capture` reads
    it from a live run and `restore` puts it back, so resume restores exactly what a snapshot saved."""

    epoch: int
    sampled: int
    """Images sampled so far (all processes)."""
    budget_used: int
    """Reward queries charged to the run's budget (all processes)."""
    queries: int
    """This process's counted reward queries, and `allowance` its grant for the epoch."""
    allowance: int
    counts: dict
    """The compute counters (bench/train/compute.py)."""
    elapsed: float
    """Seconds of the run before the snapshot (its wall time carries over a resume)."""
    lora: dict
    method: dict
    """The method's `training_state()`: optimizers, trackers, critics, buffers."""
    generator: torch.Tensor
    """The sampling-noise generator's state; `rng` the numpy generator's (prompts, shuffles), `torch_rng` torch's
    global one (dropout)."""
    rng: dict
    torch_rng: torch.Tensor
    scaler: dict
    """The fp16 loss scaler's state."""
    cpu_elapsed: float | None = None
    """The process's CPU seconds in the run before the snapshot (all its threads; None in a snapshot from before
    it was kept): the work the planner's stored timings read, free of pauses and of workers sharing cores."""

    @classmethod
    def capture(cls, run) -> "RunState":
        """From a live run (bench/train/runner.py's RunLoop)."""
        ctx = run.ctx
        return cls(epoch=run.epoch, sampled=run.sampled, budget_used=run.budget.used, queries=run.reward.queries,
                   allowance=run.reward.allowance, counts=ctx.backbone.counts.as_dict(), elapsed=run.elapsed(),
                   lora=ctx.backbone.lora_state_dict(), method=run.method.training_state(),
                   generator=ctx.generator.get_state(), rng=ctx.rng.bit_generator.state,
                   torch_rng=torch.get_rng_state(), scaler=ctx.scaler.state(), cpu_elapsed=run.cpu_elapsed())

    def restore(self, run) -> None:
        ctx = run.ctx
        run.epoch, run.sampled, run.budget.used = self.epoch, self.sampled, self.budget_used
        run.reward.queries, run.reward.allowance = self.queries, self.allowance
        for k, v in self.counts.items():
            setattr(ctx.backbone.counts, k, v)
        ctx.backbone.set_lora_state(self.lora)
        run.method.load_training_state(self.method)
        ctx.generator.set_state(self.generator)
        ctx.rng.bit_generator.state = self.rng
        torch.set_rng_state(self.torch_rng)
        ctx.scaler.load(self.scaler)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "RunState":
        missing = [f.name for f in fields(cls) if f.name not in d and f.default is MISSING]
        if missing:
            raise BenchError(f"a training state lacks {', '.join(missing)}; start over with --restart")
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})
