"""One run of a grid, data-parallel over the processes of `accelerate launch` (a Ray task that asked for
more than one GPU starts it: `accelerate launch --num_processes N -m bench.task RUN.json`). RUN.json holds
the run's spec, the grid's options and the action ('train', 'resume' or 'evaluate')."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(path: str) -> int:
    from bench.grid import GridOptions, execute
    from bench.train.runner import make_accelerator
    from bench.spec.runspec import RunSpec

    job = json.loads(Path(path).read_text())
    opts = GridOptions(**{**job["opts"], "out": Path(job["opts"]["out"]), "db": Path(job["opts"]["db"]),
                          "progress": False, "workers": 1, "launcher": "local"})
    spec = RunSpec.from_dict(job["spec"])
    accelerator = make_accelerator(spec.mixed_precision)
    execute(spec, opts, accelerator, None, job["action"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
