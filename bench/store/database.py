"""Results: per-run shard files, ingested by one writer into one DuckDB file.

Why shards: DuckDB allows one read-write process per database file, so training
processes never open the database. Each run writes its own folder of small files
(every file written atomically), and `ingest` (called by `bench run` at the end of
each run, or by `bench ingest`) is the only code that writes the database.
Every run is ingested in its own transaction, and a file whose signature (size,
mtime, inode) changed since the last ingest replaces its rows: the database reflects
the files (a re-scored shard, a resumed run), re-ingesting never duplicates a row, and
a run folder that cannot be read is quarantined without blocking the others.

Run folder layout (out/runs/<run_name>/):
    run.json             the `runs` row (status 'running', then 'finished')
    metrics.jsonl        `train_metrics` rows
    checkpoints.jsonl    `checkpoints` rows
    checkpoints/q00000256.safetensors   LoRA weights at 256 reward queries
    scores/*.jsonl       `scores` rows (evaluation; kl-to-pretrained.jsonl holds each image's KL)
    eval_metrics/*.jsonl `eval_metrics` rows (set-level evaluation metrics: diversity)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from bench.errors import BenchError

SCHEMA = {
    # One row per training run.
    "runs": """
        run_id VARCHAR PRIMARY KEY,      -- readable run name incl. config hash
        config_hash VARCHAR NOT NULL,    -- sha256[:12] of the full run spec
        method VARCHAR, reward VARCHAR, backbone VARCHAR, suite VARCHAR,
        seed INTEGER, budget BIGINT,
        config JSON,                     -- the full RunSpec
        package_versions JSON, git_commit VARCHAR,
        started_at TIMESTAMP, finished_at TIMESTAMP,
        status VARCHAR,                  -- 'running' | 'finished' | 'failed'
        wall_time_s DOUBLE, world_size INTEGER,
        error VARCHAR                    -- why a failed run failed (one line)
    """,
    # One row per saved LoRA checkpoint, at the common reward-query marks.
    "checkpoints": """
        run_id VARCHAR, reward_queries BIGINT, mark_index INTEGER, epoch INTEGER,
        sampled_images BIGINT,           -- images generated so far (>= reward_queries for none of our methods)
        gradient_updates BIGINT,         -- optimizer steps so far
        wall_time_s DOUBLE,              -- seconds since the run started
        path VARCHAR,                    -- LoRA safetensors, relative to the run folder
        unet_forward BIGINT, unet_backward BIGINT,   -- UNet rows so far (CFG: 2 per latent); bench/train/compute.py
        vae_decodes BIGINT, reward_forwards BIGINT,  -- latents decoded; images through the training reward
        encoder_forwards BIGINT,                     -- images through a reward encoder outside queries (TDPO critic)
        sha256 VARCHAR,                              -- of the LoRA file, verified before it is scored
        PRIMARY KEY (run_id, reward_queries)
    """,
    # Per-epoch training metrics, long format.
    "train_metrics": """
        run_id VARCHAR, epoch INTEGER, reward_queries BIGINT, metric VARCHAR, value DOUBLE,
        PRIMARY KEY (run_id, epoch, metric)
    """,
    # Per-image evaluation scores, long format (filled by the evaluation matrix).
    "scores": """
        run_id VARCHAR, reward_queries BIGINT, reward VARCHAR, prompt_set VARCHAR, prompt VARCHAR,
        sample_index INTEGER, eval_seed BIGINT, value DOUBLE,
        PRIMARY KEY (run_id, reward_queries, reward, prompt_set, prompt, sample_index)
    """,
    # Set-level evaluation metrics per checkpoint and prompt set (diversity), long format.
    "eval_metrics": """
        run_id VARCHAR, reward_queries BIGINT, prompt_set VARCHAR, metric VARCHAR, value DOUBLE,
        PRIMARY KEY (run_id, reward_queries, prompt_set, metric)
    """,
    # Which version of each run file the tables hold (size, mtime, inode): a changed file replaces its rows.
    "ingested": """
        run_id VARCHAR, file VARCHAR, signature VARCHAR, PRIMARY KEY (run_id, file)
    """,
    # Run folders that could not be read at the last ingest, and why (`bench runs` lists them).
    "quarantine": """
        run_dir VARCHAR PRIMARY KEY, reason VARCHAR
    """,
}

COLUMNS = {
    "runs": ["run_id", "config_hash", "method", "reward", "backbone", "suite", "seed", "budget", "config",
             "package_versions", "git_commit", "started_at", "finished_at", "status", "wall_time_s", "world_size",
             "error"],
    "checkpoints": ["run_id", "reward_queries", "mark_index", "epoch", "sampled_images", "gradient_updates",
                    "wall_time_s", "path", "unet_forward", "unet_backward", "vae_decodes", "reward_forwards",
                    "encoder_forwards", "sha256"],
    "train_metrics": ["run_id", "epoch", "reward_queries", "metric", "value"],
    "scores": ["run_id", "reward_queries", "reward", "prompt_set", "prompt", "sample_index", "eval_seed", "value"],
    "eval_metrics": ["run_id", "reward_queries", "prompt_set", "metric", "value"],
    "ingested": ["run_id", "file", "signature"],
    "quarantine": ["run_dir", "reason"],
}

SCHEMA_VERSION = 1
"""The results schema's version, recorded in the `bench_meta` table. A database bench wrote before the version
was recorded (bench's tables, some of today's columns and tables missing) is migrated in one transaction when it
is next written; a newer version is refused."""
MIGRATED = {"runs": {"error"}, "checkpoints": {"unet_forward", "unet_backward", "vae_decodes", "reward_forwards",
                                               "encoder_forwards", "sha256"}}
"""Columns that older bench databases lack; every other column of a bench table is there since the first."""
CORE_TABLES = ("runs", "checkpoints", "train_metrics", "scores")
META = "bench_meta"


class DatabaseBusy(BenchError):
    """Another process holds the database's lock (DuckDB allows one writer)."""


def _check_file(db_path: Path) -> None:
    """A --db that exists must be a regular file with DuckDB's magic bytes."""
    if db_path.is_dir():
        raise BenchError(f"--db {db_path} is a folder, not a DuckDB file")
    if not db_path.is_file():
        raise BenchError(f"--db {db_path} is not a regular file")
    with open(db_path, "rb") as f:
        head = f.read(12)
    if len(head) < 12 or head[8:12] != b"DUCK":
        raise BenchError(f"--db {db_path} is not a DuckDB database file")


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


def check_db(db_path: Path) -> str | None:
    """Find a --db problem before any training: a folder, a parent that is not a directory, no permission,
    not a DuckDB file, a truncated or corrupt one, or another program's database raise a one-line BenchError;
    a bench database held by another process returns a warning (training can go on, ingestion waits).
    Nothing is written: an existing file is only opened read-only."""
    import os

    db_path = Path(db_path)
    parent = db_path.parent if db_path.parent.exists() else next((p for p in db_path.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise BenchError(f"--db {db_path}: {parent} is not a directory")
    if db_path.exists() or db_path.is_symlink():
        _check_file(db_path)
        if not os.access(db_path, os.R_OK | os.W_OK):
            raise BenchError(f"--db {db_path}: permission denied (it must be readable and writable)")
        import duckdb

        try:
            con = duckdb.connect(str(db_path), read_only=True)
        except duckdb.Error as e:
            if "lock" in str(e).lower():
                return (f"{db_path} is held by another process ({_holder(e)}); training goes on and results are "
                        f"ingested once it is free (or later with `python -m bench ingest`)")
            raise BenchError(f"--db {db_path} cannot be read as a DuckDB database (truncated or corrupt?): "
                             f"{_first_line(e)}") from None
        try:
            schema_state(con, db_path)
        finally:
            con.close()
    elif not os.access(parent, os.W_OK | os.X_OK):
        raise BenchError(f"--db {db_path}: cannot write in {parent} (permission denied)")
    return None


def _table_columns(con) -> dict[str, set[str]]:
    rows = con.execute("SELECT table_name, column_name FROM information_schema.columns "
                       "WHERE table_schema = 'main'").fetchall()
    out: dict[str, set[str]] = {}
    for table, column in rows:
        out.setdefault(table, set()).add(column)
    return out


def schema_state(con, db_path: Path) -> str:
    """'current' for a bench results database of SCHEMA_VERSION, 'older' for one bench wrote before (it is
    migrated when next written), and a one-line BenchError for anything else: another program's database,
    bench's table names with other columns, an empty database, or a newer schema. Reads only."""
    import duckdb

    try:
        cols = _table_columns(con)
        version = None
        if META in cols:
            if cols[META] != {"key", "value"}:
                raise BenchError(f"{db_path} is not a bench results database (its {META} table is not bench's)")
            row = con.execute(f"SELECT value FROM {META} WHERE key = 'schema_version'").fetchone()
            version = row[0] if row else None
    except duckdb.Error as e:
        raise BenchError(f"{db_path} cannot be read as a DuckDB database: {_first_line(e)}") from None
    tables = set(cols) - {META}
    if not tables:
        raise BenchError(f"{db_path} holds no bench results (no tables); pass a new --db path and bench creates it")
    foreign = sorted(tables - set(COLUMNS))
    if foreign:
        raise BenchError(f"{db_path} is not a bench results database: it holds tables bench does not own "
                         f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); pass another --db")
    missing = [t for t in CORE_TABLES if t not in tables]
    if missing:
        raise BenchError(f"{db_path} holds no bench results (no {missing[0]} table); pass another --db")
    for table in sorted(tables):
        want = set(COLUMNS[table])
        if not want - MIGRATED.get(table, set()) <= cols[table] <= want:
            odd = sorted(cols[table] - want) or sorted(want - MIGRATED.get(table, set()) - cols[table])
            raise BenchError(f"{db_path} is not a bench results database: its {table!r} table has other columns "
                             f"({', '.join(odd[:5])}); pass another --db")
    if version is not None:
        if not str(version).isdigit():
            raise BenchError(f"{db_path}: its bench schema version {version!r} is not a number")
        if int(version) > SCHEMA_VERSION:
            raise BenchError(f"{db_path} has bench schema version {version}, newer than this harness's "
                             f"{SCHEMA_VERSION}; use a newer bench to read it")
    try:  # every row of every table, every column: a file cut short fails here, not after hours of training
        for table in sorted(tables | ({META} & set(cols))):
            con.execute(f"SELECT count(*), bit_xor(hash(t)) FROM {table} t").fetchone()
    except duckdb.Error as e:
        raise BenchError(f"{db_path} is damaged (truncated or corrupt: {_first_line(e)[:120]}); move it aside and "
                         f"rebuild it from the run folders: `python -m bench ingest --out OUT --db {db_path}`") from None
    complete = tables == set(COLUMNS) and all(cols[t] == set(COLUMNS[t]) for t in tables)
    return "current" if version is not None and int(version) == SCHEMA_VERSION and complete else "older"


def _migrate(con) -> None:
    """Create what a new or older bench database lacks, and record the schema version: one transaction."""
    con.execute("BEGIN TRANSACTION")
    try:
        for table, cols in SCHEMA.items():
            con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({cols})")
        con.execute("ALTER TABLE runs ADD COLUMN IF NOT EXISTS error VARCHAR")
        for col, sql_type in (("unet_forward", "BIGINT"), ("unet_backward", "BIGINT"), ("vae_decodes", "BIGINT"),
                          ("reward_forwards", "BIGINT"), ("encoder_forwards", "BIGINT"), ("sha256", "VARCHAR")):
            con.execute(f"ALTER TABLE checkpoints ADD COLUMN IF NOT EXISTS {col} {sql_type}")  # databases from before
        con.execute(f"CREATE TABLE IF NOT EXISTS {META} (key VARCHAR PRIMARY KEY, value VARCHAR)")
        con.execute(f"INSERT OR REPLACE INTO {META} VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def _holder(e) -> str:
    import re

    m = re.search(r"PID (\d+)", str(e))
    return f"PID {m.group(1)}" if m else "a lock"


def connect(db_path: Path, read_only: bool = False, wait_s: float = 30.0):
    """Open a bench results database, waiting up to `wait_s` if another process holds its lock (then
    DatabaseBusy). An existing file is first opened read-only and checked (`schema_state`): a database that
    is not bench's is refused before anything is written to it. A new file gets today's schema; an older
    bench schema is migrated in one transaction."""
    db_path = Path(db_path)
    existed = db_path.exists()
    if read_only and not existed:
        raise BenchError(f"no results database at {db_path}")
    if existed:
        _check_file(db_path)
        con = _open(db_path, True, wait_s)
        try:
            state = schema_state(con, db_path)
        except BaseException:
            con.close()
            raise
        if read_only:
            return con
        con.close()
        if state == "current":
            return _open(db_path, False, wait_s)
    parent = db_path.parent
    if parent.exists() and not parent.is_dir():
        raise BenchError(f"--db {db_path}: {parent} is not a directory")
    parent.mkdir(parents=True, exist_ok=True)
    con = _open(db_path, False, wait_s)
    _migrate(con)
    return con


def _open(db_path: Path, read_only: bool, wait_s: float):
    import duckdb

    deadline = time.monotonic() + wait_s
    while True:
        try:
            con = duckdb.connect(str(db_path), read_only=read_only)
            break
        except duckdb.Error as e:
            if "lock" not in str(e).lower():
                raise BenchError(f"cannot open {db_path} as a DuckDB database (truncated or corrupt?): "
                                 f"{_first_line(e)}") from None
            if time.monotonic() > deadline:
                raise DatabaseBusy(f"cannot open {db_path}: another process holds it ({_holder(e)}); the run "
                                   f"folders are kept, run `python -m bench ingest` later") from None
            time.sleep(0.5)
    return con


def open_results(db_path: Path):
    """A read-only connection to a results database, or a one-line BenchError when it is not one."""
    db_path = Path(db_path)
    if not db_path.exists():
        raise BenchError(f"no results database at {db_path}; run `python -m bench run` first or pass --db")
    return connect(db_path, read_only=True, wait_s=10.0)  # checked: a bench results database, or one line


def _timestamp(value):
    import datetime as dt

    return dt.datetime.fromisoformat(value).astimezone(dt.timezone.utc).replace(tzinfo=None) if value else None


class CorruptRun(Exception):
    """A run folder file that cannot be read: the run is quarantined, not ingested."""


class _NonFinite(ValueError):
    pass


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):  # 1e400 overflows to inf
        raise _NonFinite(text)
    return value


def _no_constant(text: str):
    raise _NonFinite(text)  # NaN, Infinity, -Infinity: the harness writes none (its metrics are checked finite)


def _read_jsonl(path: Path) -> list[dict]:
    """The rows of a run folder's JSON-lines file; a non-finite number quarantines the run (CorruptRun) rather than
    being stored as NULL or inf."""
    if not path.is_file():
        return []
    rows = []
    for lineno, line in enumerate(path.read_text(errors="strict").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, parse_float=_finite_float, parse_constant=_no_constant)
        except _NonFinite as e:
            raise CorruptRun(f"{path.parent.name}/{path.name}:{lineno}: a non-finite number ({e}); bench writes "
                             "only finite values, so the file is not what it wrote") from None
        except ValueError:
            raise CorruptRun(f"{path.parent.name}/{path.name}:{lineno}: not valid JSON (half-written?)") from None
        if not isinstance(row, dict) or "run_id" not in row:
            raise CorruptRun(f"{path.parent.name}/{path.name}:{lineno}: not a row of this table")
        rows.append(row)
    return rows


def _signature(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


def _insert_rows(con, table: str, rows: list[dict]) -> int:
    """INSERT OR REPLACE rows (columns COLUMNS[table]) through a DataFrame: fast for the large score shards."""
    if not rows:
        return 0
    import pandas as pd

    cols = COLUMNS[table]
    df = pd.DataFrame([{c: (json.dumps(r[c]) if isinstance(r.get(c), (dict, list)) else r.get(c)) for c in cols}
                       for r in rows], columns=cols)
    con.register("bench_rows", df)
    try:
        con.execute(f"INSERT OR REPLACE INTO {table} ({', '.join(cols)}) SELECT {', '.join(cols)} FROM bench_rows")
    except Exception as e:  # a value of the wrong type: the file is not what the harness wrote
        raise CorruptRun(f"rows of {table}: {str(e).splitlines()[0][:160]}") from None
    finally:
        con.unregister("bench_rows")
    return len(rows)


def _read_run(run_dir: Path) -> dict:
    """run.json of a run folder, validated; raises CorruptRun."""
    f = run_dir / "run.json"
    try:
        run = json.loads(f.read_text())
    except FileNotFoundError:
        raise CorruptRun(f"{run_dir.name}: no run.json") from None
    except (OSError, ValueError, UnicodeDecodeError):
        raise CorruptRun(f"{run_dir.name}/run.json: not valid JSON (truncated?)") from None
    need = ("run_id", "config_hash", "method", "status", "started_at", "config")
    if not isinstance(run, dict) or any(k not in run for k in need):
        raise CorruptRun(f"{run_dir.name}/run.json: not a run record (needs {', '.join(need)})")
    if run["run_id"] != run_dir.name:
        raise CorruptRun(f"{run_dir.name}/run.json: names another run ({run['run_id']!r})")
    try:
        run["started_at"], run["finished_at"] = _timestamp(run["started_at"]), _timestamp(run.get("finished_at"))
    except (TypeError, ValueError):
        raise CorruptRun(f"{run_dir.name}/run.json: a timestamp is not ISO 8601") from None
    return run


def ingest_run_dir(con, run_dir: Path) -> dict[str, int]:
    """Bring one run folder's rows into the database. A file whose signature (size, mtime, inode) changed
    since the last ingest replaces its rows, so a re-scored shard or a resumed run is reflected; an
    unchanged file is skipped."""
    run = _read_run(run_dir)
    run_id = run["run_id"]
    added = {t: 0 for t in ("runs", "checkpoints", "train_metrics", "scores", "eval_metrics")}
    stored = con.execute("SELECT started_at FROM runs WHERE run_id = ?", [run_id]).fetchone()
    if stored is not None and stored[0] != run["started_at"]:
        # the run was started over: every row of the earlier attempt is superseded
        for table in ("checkpoints", "train_metrics", "scores", "eval_metrics", "ingested"):
            con.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
    seen = dict(con.execute("SELECT file, signature FROM ingested WHERE run_id = ?", [run_id]).fetchall())
    files = {"run.json": run_dir / "run.json", "checkpoints.jsonl": run_dir / "checkpoints.jsonl",
             "metrics.jsonl": run_dir / "metrics.jsonl"}
    for folder in ("scores", "eval_metrics"):
        for f in sorted((run_dir / folder).glob("*.jsonl")):
            files[f"{folder}/{f.name}"] = f
    for name in set(seen) - {n for n, p in files.items() if p.is_file()}:
        # a shard that was deleted (re-evaluation with other settings): its rows are stale
        if name.startswith(("scores/", "eval_metrics/")):
            table, key = ("scores", "reward") if name.startswith("scores/") else ("eval_metrics", "metric")
            if table == "scores":
                con.execute("DELETE FROM scores WHERE run_id = ? AND reward = ?", [run_id, Path(name).stem])
            else:
                con.execute("DELETE FROM eval_metrics WHERE run_id = ?", [run_id])
        con.execute("DELETE FROM ingested WHERE run_id = ? AND file = ?", [run_id, name])
    for name, path in files.items():
        if not path.is_file():
            continue
        sig = _signature(path)
        if seen.get(name) == sig:
            continue
        if name == "run.json":
            added["runs"] += _insert_rows(con, "runs", [run])
        elif name == "checkpoints.jsonl":
            rows = _read_jsonl(path)
            con.execute("DELETE FROM checkpoints WHERE run_id = ?", [run_id])
            added["checkpoints"] += _insert_rows(con, "checkpoints", rows)
        elif name == "metrics.jsonl":
            rows = _read_jsonl(path)
            con.execute("DELETE FROM train_metrics WHERE run_id = ?", [run_id])
            added["train_metrics"] += _insert_rows(con, "train_metrics", rows)
        else:
            rows = _read_jsonl(path)
            table, key = ("scores", "reward") if name.startswith("scores/") else ("eval_metrics", "metric")
            for value in sorted({str(r.get(key)) for r in rows} | {path.stem}):
                con.execute(f"DELETE FROM {table} WHERE run_id = ? AND {key} = ?", [run_id, value])
            added[table] += _insert_rows(con, table, rows)
        con.execute("INSERT OR REPLACE INTO ingested VALUES (?, ?, ?)", [run_id, name, sig])
    return added


def ingest(db_path: Path, out_dir: Path, wait_s: float = 30.0) -> dict[str, int]:
    """Ingest every run folder under out_dir/runs, each in its own transaction: a folder that cannot be
    read is quarantined (reported here, listed by `bench runs`) and the others go in. Safe to repeat."""
    run_dirs = sorted(p for p in (Path(out_dir) / "runs").glob("*") if p.is_dir())
    totals = {t: 0 for t in ("runs", "checkpoints", "train_metrics", "scores", "eval_metrics")}
    broken: dict[str, str] = {}
    con = connect(db_path, wait_s=wait_s)
    try:
        for d in run_dirs:
            con.execute("BEGIN TRANSACTION")
            try:
                for k, v in ingest_run_dir(con, d).items():
                    totals[k] += v
                con.execute("COMMIT")
            except (CorruptRun, UnicodeDecodeError) as e:
                con.execute("ROLLBACK")
                broken[d.name] = str(e) if isinstance(e, CorruptRun) else f"{d.name}: a file is not UTF-8 text"
            except BaseException:
                con.execute("ROLLBACK")
                raise
        con.execute("BEGIN TRANSACTION")
        con.execute("DELETE FROM quarantine")
        for name, reason in broken.items():
            con.execute("INSERT INTO quarantine VALUES (?, ?)", [name, reason])
        con.execute("COMMIT")
    finally:
        con.close()
    for name, reason in broken.items():
        print(f"bench: quarantined run folder {name}: {reason}", file=sys.stderr)
    totals["quarantined"] = len(broken)
    return totals
