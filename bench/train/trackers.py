"""Experiment trackers (`--log-with tensorboard|wandb`): accelerate's trackers, offline by default.

What goes to a tracker (the run's own files stay the record; a tracker is for watching):
- per epoch: every training metric, as `train/<metric>`, at step = reward queries spent;
- per checkpoint: the mean of every score on every prompt set, as `eval/<prompt set>/<reward>`, and the
  fixed-seed grid of the seen prompts, as `grid`, at step = the checkpoint's reward queries.

TensorBoard writes event files under the run folder (`<run>/tb/`). W&B runs in offline mode (files under
`<run>/wandb/`, `wandb sync` uploads them) unless the user configured it (WANDB_MODE or WANDB_API_KEY set).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from bench.errors import BenchError, did_you_mean

KINDS = {"tensorboard": "tensorboard", "wandb": "wandb"}
"""--log-with value -> the package it needs."""


def check_available(tracker: str | None) -> None:
    """Before any heavy import: a known tracker whose package is installed, or one clear line."""
    if tracker is None:
        return
    if tracker not in KINDS:
        raise did_you_mean("tracker", tracker, KINDS)
    if importlib.util.find_spec(KINDS[tracker]) is None:
        how = "pip install -e .[trackers]" if tracker == "tensorboard" else "pip install wandb"
        raise BenchError(f"--log-with {tracker} needs the {KINDS[tracker]} package: {how}")


class Tracker:
    """One run's tracker; every call is a no-op when none was asked for."""

    def __init__(self, tracker: str | None, run_dir: Path, run_name: str, config: dict | None = None):
        self.tracker = tracker
        self._t = None
        if tracker is None:
            return
        check_available(tracker)
        run_dir = Path(run_dir)
        if tracker == "tensorboard":
            from accelerate.tracking import TensorBoardTracker

            self._t = TensorBoardTracker("tb", logging_dir=str(run_dir))
        else:
            from accelerate.tracking import WandBTracker

            if "WANDB_MODE" not in os.environ and "WANDB_API_KEY" not in os.environ:
                os.environ["WANDB_MODE"] = "offline"  # nothing leaves the machine unless the user set it up
            self._t = WandBTracker("overopt-bench", name=run_name, id=run_name, resume="allow", dir=str(run_dir),
                                   config=config or {})
        self._t.start()

    def log_train(self, metrics: dict, step: int) -> None:
        if self._t is not None:
            self._t.log({f"train/{k}": float(v) for k, v in metrics.items() if v is not None}, step=step)

    def log_eval(self, rows: list[dict]) -> None:
        """Means per (checkpoint, prompt set, reward) of score rows, one log call per checkpoint."""
        if self._t is None or not rows:
            return
        sums: dict[int, dict[str, list[float]]] = {}
        for r in rows:
            acc = sums.setdefault(int(r["reward_queries"]), {}).setdefault(f"eval/{r['prompt_set']}/{r['reward']}",
                                                                         [0.0, 0])
            acc[0] += float(r["value"])
            acc[1] += 1
        for q in sorted(sums):
            self._t.log({k: s / n for k, (s, n) in sums[q].items()}, step=q)

    def log_grids(self, grid_dir: Path) -> None:
        """The saved fixed-seed grids (grids/q<queries>.png), each at its checkpoint's step."""
        if self._t is None or not Path(grid_dir).is_dir():
            return
        import numpy as np
        from PIL import Image

        for path in sorted(Path(grid_dir).glob("q*.png")):
            image = np.asarray(Image.open(path).convert("RGB"))
            if self.tracker == "tensorboard":
                self._t.log_images({"grid": image[None]}, step=int(path.stem[1:]), dataformats="NHWC")
            else:
                self._t.log_images({"grid": [image]}, step=int(path.stem[1:]))

    def close(self) -> None:
        if self._t is not None:
            self._t.finish()
            self._t = None
