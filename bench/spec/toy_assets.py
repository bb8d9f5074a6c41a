"""Where the committed toy-suite assets live (bench/toy/assets/), and their loaders' error messages: the toy
backbone's location, in the spec layer with the other backbones' and the rewards' weight lookup.

BENCH_TOY_ASSETS points the loaders at another build (for example a --quick
build in a test)."""

from __future__ import annotations

import os
from pathlib import Path

from bench.errors import BenchError

DEFAULT_ASSETS = Path(__file__).resolve().parents[1] / "toy" / "assets"
REBUILD = "rebuild it with: python -m bench.toy.build"


def assets_root() -> Path:
    return Path(os.environ.get("BENCH_TOY_ASSETS", DEFAULT_ASSETS))


def asset(*parts: str) -> Path:
    path = assets_root().joinpath(*parts)
    if not path.exists():
        raise BenchError(f"toy-suite asset missing: {path} ({REBUILD})")
    return path


def pipeline_dir() -> Path:
    asset("pipeline", "model_index.json")
    return assets_root() / "pipeline"
