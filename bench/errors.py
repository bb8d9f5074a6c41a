"""User-facing errors. The CLI prints them as one line and exits 2."""

import difflib


class BenchError(Exception):
    """An input error that the CLI reports as a single line with exit code 2."""


def did_you_mean(kind: str, name: str, available) -> BenchError:
    """An 'unknown name' error with close matches and the full list of names."""
    available = sorted(available)
    close = difflib.get_close_matches(name, available, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return BenchError(f"unknown {kind} {name!r}.{hint} Available: {', '.join(available)}")
