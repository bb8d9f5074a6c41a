"""User-facing errors. The CLI prints them as one line and exits 2."""

import argparse
import difflib
import math
import re


class BenchError(Exception):
    """An input error that the CLI reports as a single line with exit code 2."""


def did_you_mean(kind: str, name: str, available) -> BenchError:
    """An 'unknown name' error with close matches and the full list of names."""
    available = sorted(available)
    close = difflib.get_close_matches(name, available, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return BenchError(f"unknown {kind} {name!r}.{hint} Available: {', '.join(available)}")


class RunFailed(Exception):
    """A run stopped by a failure of its own (not bad input): reported in one line, the run marked
    failed, the other runs of the grid go on. The CLI exits 1."""


class NonFinite(RunFailed):
    """A non-finite number in training: the run stops at the first one."""


def check_finite(name: str, value) -> None:
    """Raise NonFinite naming `name` (and how many values) if `value` holds NaN or infinity."""
    import math

    import numpy as np

    if isinstance(value, float):
        if not math.isfinite(value):
            raise NonFinite(f"non-finite {name} ({value})")
        return
    if hasattr(value, "detach"):  # a torch tensor
        import torch

        bad = int((~torch.isfinite(value.detach())).sum())
        total = value.numel()
    else:
        arr = np.asarray(value, dtype=np.float64)
        bad, total = int((~np.isfinite(arr)).sum()), arr.size
    if bad:
        raise NonFinite(f"non-finite {name} ({bad} of {total} values)")


def check_positive(name: str, value):
    """A flag's value must be a positive finite number (None: not given)."""
    import math

    if value is not None and not (math.isfinite(value) and value > 0):  # NaN compares false: refuse it too
        raise BenchError(f"{name} must be a positive finite number, got {value}")
    return value


def env_whole(name: str, default: int | None, lowest: int = 1, highest: int = 1 << 16) -> int | None:
    """A whole number from the environment, checked as a flag is (ASCII digits, in range); unset or empty (the
    shell's way of unsetting) gives `default`."""
    import os
    import re

    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if not re.fullmatch(r"[0-9]{1,9}", text) or not lowest <= int(text) <= highest:
        raise BenchError(f"environment variable {name}={text!r} must be a whole number from {lowest} to {highest}")
    return int(text)


# ------------------------------------------------------------------ argument types of the command line
def whole(text: str) -> int:
    """An ASCII whole number (argparse's int takes '٣' and other Unicode digits)."""
    t = text.strip().replace("_", "")
    if not re.fullmatch(r"[+-]?[0-9]+", t):
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(t)


def number(text: str) -> float:
    """An ASCII finite decimal number (no nan, inf or Unicode digits)."""
    t = text.strip()
    if not re.fullmatch(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", t) or not math.isfinite(float(t)):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")  # 1e400 reads as inf
    return float(t)
