"""Shared fixtures. Tiny seeded models are built from config (no downloads), in
the spirit of diffusers' get_dummy_components."""

import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# One cache for the whole session (tiny pipelines are built once), inherited by
# the CLI subprocesses the tests start.
os.environ.setdefault("BENCH_CACHE", tempfile.mkdtemp(prefix="bench-test-cache-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("MKL_DYNAMIC", "FALSE")  # as `python -m bench` does: thread-count-stable sums
if os.environ.get("PYTEST_XDIST_WORKER"):
    # under pytest-xdist the workers share the cores: one thread each (and in the CLI runs they start)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ["TRANSFORMERS_VERBOSITY"] = "error"
os.environ["DIFFUSERS_VERBOSITY"] = "error"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: longer than CI should wait for; run with -m slow")
    config.addinivalue_line("markers", "heavy: one of the longest default tests; collected first (see below)")


def pytest_collection_modifyitems(config, items):
    """The longest tests first (a stable sort): xdist hands tests out in collection order, so the workers then
    end together on short tests rather than one idling while the other finishes a long one."""
    items.sort(key=lambda item: item.get_closest_marker("heavy") is None)


@pytest.fixture(scope="session")
def tiny_dir():
    from bench.tiny import tiny_random_pipeline_dir

    return str(tiny_random_pipeline_dir())


@pytest.fixture
def backbone(tiny_dir):
    """A fresh tiny backbone with LoRA, T=5 to keep tests fast."""
    import torch

    from bench.train.backbone import build_backbone

    torch.manual_seed(0)
    bb = build_backbone(tiny_dir, num_steps=5, guidance_scale=5.0, eta=1.0)
    bb.add_lora(4)
    return bb


def run_cli(*args, env=None, timeout=600):
    import subprocess

    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
