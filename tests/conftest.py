"""Shared fixtures. Tiny seeded models are built from config (no downloads), in
the spirit of diffusers' get_dummy_components."""

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# One cache for the whole session (tiny pipelines are built once), inherited by the xdist workers and the CLI
# subprocesses the tests start; the process that made it removes it at exit (each session left one behind).
if "BENCH_CACHE" not in os.environ:
    os.environ["BENCH_CACHE"] = tempfile.mkdtemp(prefix="bench-test-cache-")
    atexit.register(shutil.rmtree, os.environ["BENCH_CACHE"], ignore_errors=True)
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


def run_main(*args):
    """`python -m bench ARGS` in this process: the same parser and commands as `run_cli`, without a new
    interpreter's imports (torch and diffusers cost about 9 s a process on CPU). For commands that train or
    score in-process (`--workers 1`); a test about exit codes before torch, killing, environment variables or
    plugins on a path keeps `run_cli`. Torch's thread count is restored, as a finished process would leave it."""
    import contextlib
    import io
    from types import SimpleNamespace

    import torch

    from bench.cli import main

    threads, out, err = torch.get_num_threads(), io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main([str(a) for a in args])
            except SystemExit as e:  # argparse's usage errors
                rc = e.code if isinstance(e.code, int) else 1
    finally:
        torch.set_num_threads(threads)
    return SimpleNamespace(returncode=rc, stdout=out.getvalue(), stderr=err.getvalue())
