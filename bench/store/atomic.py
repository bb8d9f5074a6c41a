"""Atomic file writes: a temporary name in the same folder, fsync, then rename,
so a crash never leaves a half-written file under the final name."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from bench.errors import BenchError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n").encode())


def atomic_write_jsonl(path: Path, rows) -> None:
    atomic_write_bytes(path, "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rows).encode())


def check_out_dir(out: Path) -> None:
    """--out must be a folder we can write (or create)."""
    if out.exists() and not out.is_dir():
        raise BenchError(f"--out {out} is a file, not a folder")
    parent = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise BenchError(f"--out {out}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BenchError(f"--out {out}: cannot write in {parent} (permission denied)")


# ------------------------------------------------------------------------------ one writer per output folder
WRITER_LOCK = ".bench-lock"
"""In an output folder: the advisory lock its writer holds (`bench run`, `bench eval`) and who that is."""


def hold_writer_lock(out: Path, command: str):
    """Take OUT's writer lock (flock on OUT/.bench-lock) or refuse in one line naming the holder. The lock lives
    as long as the returned file object (the process, in practice) and goes with it, even on kill -9. Two
    writers would both train the same run folders; every write being atomic kept the result right, by luck."""
    import fcntl
    import time

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    f = open(out / WRITER_LOCK, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise BenchError(f"--out {out} is in use by {holder}; wait for it to end or choose another --out") from None
    f.seek(0)
    f.truncate()
    f.write(f"`bench {command}` (PID {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
    f.flush()
    return f


def writer_active(out: Path) -> bool | None:
    """Whether a `bench run` or `bench eval` holds OUT's writer lock now; None when OUT has no lock file (no writer
    ever ran there, or the database lives elsewhere). Tested with a shared lock, released at once."""
    import fcntl

    try:
        f = open(Path(out) / WRITER_LOCK)
    except OSError:
        return None
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return False


# ------------------------------------------------------------------------------ folders the harness owns
MANIFEST = ".bench-manifest.json"
"""In a folder the harness writes whole (a report): every file it wrote, so that a later write replaces only
its own files and refuses a folder that holds someone else's."""

REPORT_FILES = ("index.html", "leaderboard.md", "leaderboard.csv", "leaderboard.html", "report.json")
"""Files a report folder from before manifests held that can only be the harness's: such a folder is still its
own. Its figures and grids cannot be told from a user's pictures, so a folder holding them is refused once."""


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def check_owned_folder(folder: Path, what: str, legacy: tuple[str, ...] = ()) -> None:
    """A folder the harness may replace whole: absent, empty, or holding only what its manifest lists (or, with
    no manifest, only files matching `legacy`). Anything else is refused in one line: bench never deletes a
    file it did not write."""
    import fnmatch

    folder = Path(folder)
    if not folder.exists():
        return
    if not folder.is_dir() or folder.is_symlink():
        raise BenchError(f"{what} {folder} is not a folder bench can replace (a file or a link)")
    files = _files(folder)
    try:
        owned = set(json.loads((folder / MANIFEST).read_text())["files"]) | {MANIFEST}
    except FileNotFoundError:
        owned = {f for f in files if any(fnmatch.fnmatch(f, pat) for pat in legacy)}
    except (OSError, ValueError, KeyError, TypeError):
        raise BenchError(f"{what} {folder}: its manifest {MANIFEST} is unreadable; move the folder aside") from None
    foreign = [f for f in files if f not in owned]
    if foreign:
        why = "" if (folder / MANIFEST).exists() else f", and no {MANIFEST} of its own (a report from before bench " \
            "kept one is refused once too)"
        raise BenchError(f"{what} {folder} holds {len(foreign)} file(s) bench did not write (e.g. {foreign[0]}){why}; "
                         f"choose another folder or move them: bench replaces its folders whole")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def replace_folder(folder: Path, build, what: str = "folder", legacy: tuple[str, ...] = ()):
    """Build a folder's new contents in a fresh sibling (`build(tmp)`), list them in its manifest, then put it in
    place of the old one in one step, so an interrupted write leaves the old folder whole. Returns build's value.
    Leftover siblings of earlier interrupted writes are removed first (their names are bench's own)."""
    import shutil

    folder = Path(folder)
    check_owned_folder(folder, what, legacy)
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in folder.parent.glob(f".{folder.name}.bench-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.bench-", dir=folder.parent))
    try:
        value = build(tmp)
        atomic_write_json(tmp / MANIFEST, {"files": [f for f in _files(tmp) if f != MANIFEST]})
        if not folder.exists():
            os.rename(tmp, folder)
        elif _exchange(tmp, folder):
            shutil.rmtree(tmp, ignore_errors=True)  # now the old contents
        else:  # no atomic exchange here: the old folder is set aside first, and restored if the swap fails
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.bench-old-", dir=folder.parent))
            os.rename(folder, old / "x")
            try:
                os.rename(tmp, folder)
            except OSError:
                os.rename(old / "x", folder)
                raise
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return value
