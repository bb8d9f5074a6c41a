"""The bench cache folder (pure path logic): built placeholder pipelines, CLIP's BPE merges, the cost model's
calibrations."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$BENCH_CACHE, else ~/.cache/bench."""
    return Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "bench"))
