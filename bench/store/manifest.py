"""Content fingerprints of a run's inputs (pure Python: computed before torch loads).

A run's config hash covers the CONTENTS of what it reads, not only their paths: the training
prompts, the backbone's folder and the reward weights (on the toy, the whole assets folder, which
BENCH_TOY_ASSETS may point elsewhere). Edit a prompt file or swap a weights folder and the run is a
new run, never a finished one served from other inputs.

Files up to 64 MiB are hashed whole. Larger ones (SD's weights) by their size and their first and
last 4 MiB: a fingerprint that catches a different or truncated file without reading gigabytes on
every command.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

WHOLE = 64 << 20
EDGE = 4 << 20
SKIP_DIRS = {"_work", "__pycache__", ".git"}
SKIP_FILES = {"README.md", "suite.json"}
"""Model cards and the toy's measured bars: documentation of the weights, rewritten when the suite is
re-measured, so not part of what a run depends on (the weights and configs are)."""


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as f:
        if size <= WHOLE:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        else:
            h.update(f.read(EDGE))
            f.seek(size - EDGE)
            h.update(f.read(EDGE))
    return h.hexdigest()


def tree_digest(root: Path) -> str:
    """Digest of a file or of every file under a folder (relative paths and contents, sorted)."""
    root = Path(root)
    h = hashlib.sha256()
    if root.is_file():
        h.update(file_digest(root).encode())
        return h.hexdigest()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(n for n in filenames if n not in SKIP_FILES):
            p = Path(dirpath) / name
            h.update(str(p.relative_to(root)).encode() + b"\0" + file_digest(p).encode())
    return h.hexdigest()


def inputs_digest(parts: list) -> str:
    """Digest of a run's inputs: strings (prompts), and paths whose contents count."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            h.update(b"path\0" + (tree_digest(part).encode() if part.exists() else b"missing"))
        else:
            h.update(b"text\0" + str(part).encode())
    return h.hexdigest()[:16]
