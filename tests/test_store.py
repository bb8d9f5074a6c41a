"""DuckDB store: shards, idempotent ingestion, atomic writes, and the lock."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from bench.store import atomic as bio
from bench.errors import BenchError
from bench.store.database import connect, ingest


def write_run(out: Path, run_id: str, status: str, epochs: int, started_at="2026-01-01T00:00:00+00:00"):
    d = out / "runs" / run_id
    bio.atomic_write_json(d / "run.json", dict(
        run_id=run_id, config_hash="abc", method="ddpo-2", reward="r", backbone="b", suite="s", seed=0, budget=10,
        config={"a": 1}, package_versions={"torch": "x"}, git_commit="deadbeef", started_at=started_at,
        finished_at=None, status=status, wall_time_s=None, world_size=1))
    bio.atomic_write_jsonl(d / "metrics.jsonl", [
        dict(run_id=run_id, epoch=e, reward_queries=e * 5, metric="reward_mean", value=float(e)) for e in range(1, epochs + 1)])
    bio.atomic_write_jsonl(d / "checkpoints.jsonl", [
        dict(run_id=run_id, reward_queries=q, mark_index=i, epoch=i, sampled_images=q, gradient_updates=i,
             wall_time_s=1.0, path=f"checkpoints/q{q:08d}.safetensors") for i, q in enumerate([0, 5, 10][:epochs + 1])])


def counts(db):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {t: con.execute(f"select count(*) from {t}").fetchone()[0] for t in ("runs", "checkpoints", "train_metrics")}
    finally:
        con.close()


def test_reingest_never_duplicates_and_updates_status(tmp_path):
    db = tmp_path / "bench.duckdb"
    write_run(tmp_path, "r1", "running", epochs=1)
    ingest(db, tmp_path)
    assert counts(db) == {"runs": 1, "checkpoints": 2, "train_metrics": 1}
    ingest(db, tmp_path)
    assert counts(db) == {"runs": 1, "checkpoints": 2, "train_metrics": 1}
    write_run(tmp_path, "r1", "finished", epochs=2)  # the run went on and finished
    write_run(tmp_path, "r2", "finished", epochs=2)
    written = ingest(db, tmp_path)
    # every changed file is read again and replaces its rows: r1's 3 + 2, r2's 3 + 2
    assert written["checkpoints"] == 3 + 3 and written["train_metrics"] == 2 + 2
    assert counts(db) == {"runs": 2, "checkpoints": 6, "train_metrics": 4}
    assert ingest(db, tmp_path)["checkpoints"] == 0  # nothing changed: nothing read
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("select status from runs where run_id='r1'").fetchone()[0] == "finished"
    assert json.loads(con.execute("select config from runs where run_id='r1'").fetchone()[0]) == {"a": 1}
    con.close()


def test_restarted_run_supersedes_rows_of_the_crashed_attempt(tmp_path):
    db = tmp_path / "bench.duckdb"
    write_run(tmp_path, "r1", "running", epochs=2)
    ingest(db, tmp_path)
    assert counts(db)["train_metrics"] == 2
    # the attempt crashed; a re-run started later and has done one epoch so far
    write_run(tmp_path, "r1", "running", epochs=1, started_at="2026-01-02T00:00:00+00:00")
    ingest(db, tmp_path)
    assert counts(db) == {"runs": 1, "checkpoints": 2, "train_metrics": 1}
    ingest(db, tmp_path)  # same attempt again: nothing deleted or duplicated
    assert counts(db) == {"runs": 1, "checkpoints": 2, "train_metrics": 1}


def test_atomic_write_keeps_old_file_on_crash(tmp_path, monkeypatch):
    path = tmp_path / "x.json"
    bio.atomic_write_json(path, {"v": 1})

    def boom(*a, **k):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        bio.atomic_write_json(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temporary left behind


def test_ingest_waits_for_another_writer(tmp_path):
    """Another process holding the database only delays ingestion; a lasting lock is a clear error."""
    db = tmp_path / "bench.duckdb"
    write_run(tmp_path, "r1", "finished", epochs=2)
    connect(db).close()  # a bench database (an empty DuckDB file that is not bench's is refused, not waited for)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('held', flush=True); time.sleep(float(sys.argv[2]))")
        , str(db), "3"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(BenchError, match="another process holds it"):
        connect(db, wait_s=0.5)
    t0 = time.monotonic()
    ingest(db, tmp_path)  # waits for the holder to exit
    assert time.monotonic() - t0 > 0.5
    holder.wait()
    assert counts(db)["checkpoints"] == 3


def test_a_rescored_shard_replaces_its_rows(tmp_path):
    db = tmp_path / "bench.duckdb"
    write_run(tmp_path, "r1", "finished", epochs=1)
    shard = tmp_path / "runs" / "r1" / "scores" / "aesthetic.jsonl"
    row = dict(run_id="r1", reward_queries=0, reward="aesthetic", prompt_set="s", prompt="p", sample_index=0,
               eval_seed=1, value=1.0)
    bio.atomic_write_jsonl(shard, [row])
    ingest(db, tmp_path)
    bio.atomic_write_jsonl(shard, [{**row, "value": 2.0}])  # `bench eval --force` re-scored it
    ingest(db, tmp_path)
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("select value from scores").fetchall() == [(2.0,)]
    con.close()


def test_a_corrupt_run_folder_is_quarantined_and_the_rest_ingested(tmp_path):
    db = tmp_path / "bench.duckdb"
    write_run(tmp_path, "good", "finished", epochs=2)
    write_run(tmp_path, "half", "finished", epochs=2)
    with open(tmp_path / "runs" / "half" / "metrics.jsonl", "a") as f:
        f.write('{"run_id": "half", "epoch": 3, "rew')  # a half-written line
    write_run(tmp_path, "trunc", "finished", epochs=1)
    (tmp_path / "runs" / "trunc" / "run.json").write_text('{"run_id": "tr')
    (tmp_path / "runs" / "empty").mkdir()
    added = ingest(db, tmp_path)
    assert added["quarantined"] == 3
    con = duckdb.connect(str(db), read_only=True)
    assert [r[0] for r in con.execute("select run_id from runs").fetchall()] == ["good"]
    reasons = dict(con.execute("select run_dir, reason from quarantine").fetchall())
    con.close()
    assert "metrics.jsonl:3: not valid JSON" in reasons["half"]
    assert "run.json: not valid JSON" in reasons["trunc"] and "no run.json" in reasons["empty"]
    from tests.conftest import run_cli

    r = run_cli("runs", "--db", str(db))
    assert r.returncode == 0 and "quarantined" in r.stdout and "half" in r.stdout
    # repaired: ingested on the next call, and off the quarantine list
    write_run(tmp_path, "half", "finished", epochs=2)
    assert ingest(db, tmp_path)["quarantined"] == 2


def test_a_run_marked_running_shows_stopped_when_no_writer_holds_its_folder(tmp_path, capsys):
    """A grid killed part-way leaves its runs 'running'. `bench runs` says 'stopped' (and that the same command
    resumes them) when OUT's writer lock is free, keeps 'running' while a writer holds it, and cannot tell (keeps
    'running') where no writer ever ran; a finished run is shown as it is."""
    from bench.store.commands import cmd_runs

    write_run(tmp_path, "alive", "running", epochs=1)
    write_run(tmp_path, "done", "finished", epochs=2)
    ingest(tmp_path / "bench.duckdb", tmp_path)

    def shown():
        cmd_runs(type("A", (), {"out": str(tmp_path), "db": None})())
        text = capsys.readouterr().out
        status = {line.split()[0]: line.split()[1] for line in text.splitlines()[1:3]}
        return status, text

    assert bio.writer_active(tmp_path) is None and shown()[0] == {"alive": "running", "done": "finished"}
    lock = bio.hold_writer_lock(tmp_path, "run")
    try:
        assert bio.writer_active(tmp_path) is True and shown()[0] == {"alive": "running", "done": "finished"}
    finally:
        lock.close()
    assert bio.writer_active(tmp_path) is False
    status, text = shown()
    assert status == {"alive": "stopped", "done": "finished"}
    assert "1 run(s) marked running, but no `bench run` holds" in text and "resumes each" in text


@pytest.mark.parametrize("text, shown", [("NaN", "NaN"), ("1e400", "1e400"), ("-Infinity", "-Infinity")])
def test_a_non_finite_value_quarantines_its_run_never_stored_as_null_or_inf(tmp_path, text, shown):
    """Python's json reads NaN as nan (DuckDB then stores NULL) and 1e400 as inf: both would enter the tables
    silently. The run is quarantined with the file, line and value; the other runs are ingested."""
    db = tmp_path / "bench.duckdb"
    write_run(tmp_path, "good", "finished", epochs=1)
    write_run(tmp_path, "odd", "finished", epochs=1)
    shard = tmp_path / "runs" / "odd" / "scores" / "aesthetic.jsonl"
    shard.parent.mkdir(exist_ok=True)
    shard.write_text('{"run_id": "odd", "reward_queries": 0, "reward": "aesthetic", "prompt_set": "s", "prompt": '
                     f'"p", "sample_index": 0, "eval_seed": 1, "value": {text}}}\n')
    assert ingest(db, tmp_path)["quarantined"] == 1
    con = duckdb.connect(str(db), read_only=True)
    assert [r[0] for r in con.execute("select run_id from runs").fetchall()] == ["good"]
    assert con.execute("select count(*) from scores").fetchone()[0] == 0
    reason = dict(con.execute("select run_dir, reason from quarantine").fetchall())["odd"]
    con.close()
    assert f"aesthetic.jsonl:1: a non-finite number ({shown})" in reason
