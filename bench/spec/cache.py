"""The bench cache folder (pure path logic): built placeholder pipelines, CLIP's BPE merges, the cost model's
calibrations."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$BENCH_CACHE, else ~/.cache/bench; a file there is refused in one line (every command reads it here)."""
    from bench.errors import BenchError

    root = Path(os.environ.get("BENCH_CACHE", "").strip() or Path.home() / ".cache" / "bench")
    if root.exists() and not root.is_dir():
        raise BenchError(f"BENCH_CACHE={root} is a file, not a folder; point it at a folder (or unset it)")
    return root
