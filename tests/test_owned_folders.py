"""The harness owns only what it wrote (bench/store/atomic.py): a report replaces its folder whole, refuses a
folder holding a user's files, and an interrupted report leaves the old one whole."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, run_cli
from tests.test_report import make_db


def _digest(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_report_never_deletes_a_users_files(tmp_path):
    make_db(tmp_path / "b.duckdb")
    report = tmp_path / "report"
    (report / "figures").mkdir(parents=True)
    (report / "grids").mkdir()
    (report / "figures" / "holiday.png").write_bytes(b"mine")
    (report / "grids" / "notes.txt").write_text("mine too")
    r = run_cli("report", "--db", str(tmp_path / "b.duckdb"), "--out", str(report))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "holds 2 file(s) bench did not write" in lines[0], r.stderr
    assert (report / "figures" / "holiday.png").read_bytes() == b"mine"
    assert (report / "grids" / "notes.txt").read_text() == "mine too"
    # bench run checks its report folder before any training
    r = run_cli("run", "--methods", "ddpo-2", "--out", str(tmp_path / "o"), "--report-dir", str(report))
    assert r.returncode == 2 and "bench did not write" in r.stderr and not (tmp_path / "o").exists()


def test_a_report_replaces_its_own_folder_and_a_legacy_one(tmp_path):
    from bench.store.atomic import MANIFEST

    make_db(tmp_path / "b.duckdb")
    report = tmp_path / "report"
    report.mkdir()
    (report / "index.html").write_text("an old report, from before manifests")
    (report / "leaderboard.md").write_text("old")
    r = run_cli("report", "--db", str(tmp_path / "b.duckdb"), "--out", str(report))
    assert r.returncode == 0, r.stderr
    listed = json.loads((report / MANIFEST).read_text())["files"]
    assert sorted(listed) == sorted(f for f in _digest(report) if f != MANIFEST)
    assert "index.html" in listed and (report / "leaderboard.md").read_text() != "old"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report.bench-")]  # no temporary left


@pytest.mark.heavy
def test_a_killed_report_leaves_the_old_one_whole(tmp_path):
    """kill -9 at several points of a second report over a complete one: the old report is whole each time."""
    make_db(tmp_path / "b.duckdb")
    report = tmp_path / "report"
    r = run_cli("report", "--db", str(tmp_path / "b.duckdb"), "--out", str(report))
    assert r.returncode == 0, r.stderr
    before = _digest(report)
    assert len(before) >= 5
    for delay in (0.5, 2.5):
        p = subprocess.Popen([sys.executable, "-m", "bench", "report", "--db", str(tmp_path / "b.duckdb"),
                              "--out", str(report)], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(delay)
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        after = _digest(report)
        if p.returncode == 0:  # it finished first: the new report is whole instead
            assert set(after) == set(before)
            before = after
        else:
            assert after == before, delay
    # what a killed report left beside the folder is only bench's own temporary (removed by the next report)
    assert all(p.name.startswith(".report.bench-") for p in tmp_path.iterdir() if p.name not in ("report", "b.duckdb"))


def test_the_readme_main_commands_default_folders_hold_nothing_the_checkout_ships(tmp_path):
    """The README's main command writes its report to reports/ and its runs to results/ in the checkout: a
    tracked file in reports/ (there was a README.md) made `bench run --methods all` refuse the folder on every
    fresh clone. What git tracks there must be what the report would accept."""
    from bench.store.atomic import REPORT_FILES, check_owned_folder

    tracked = subprocess.run(["git", "ls-files", "reports"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    assert tracked == []
    clone = tmp_path / "reports"  # the default report folder as a fresh clone has it: only tracked files
    clone.mkdir()
    for name in tracked:
        (clone / name).write_text("tracked")
    check_owned_folder(clone, "report folder", legacy=REPORT_FILES)  # raises (one line) on a foreign file
