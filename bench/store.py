"""Results: per-run shard files, ingested by one writer into one DuckDB file.

Why shards: DuckDB allows one read-write process per database file, so training
processes never open the database. Each run writes its own folder of small files
(every file written atomically), and `ingest` (called by `bench run` at the end of
each run, or by `bench ingest`) is the only code that writes the database.
Primary keys plus INSERT OR IGNORE make re-ingesting never duplicate a row; the
`runs` row is replaced, so a run that finishes later updates its status.

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
        status VARCHAR,                  -- 'running' | 'finished'
        wall_time_s DOUBLE, world_size INTEGER
    """,
    # One row per saved LoRA checkpoint, at the common reward-query marks.
    "checkpoints": """
        run_id VARCHAR, reward_queries BIGINT, mark_index INTEGER, epoch INTEGER,
        sampled_images BIGINT,           -- images generated so far (>= reward_queries for none of our methods)
        gradient_updates BIGINT,         -- optimizer steps so far
        wall_time_s DOUBLE,              -- seconds since the run started
        path VARCHAR,                    -- LoRA safetensors, relative to the run folder
        unet_forward BIGINT, unet_backward BIGINT,   -- UNet rows so far (CFG: 2 per latent); bench/compute.py
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
}

COLUMNS = {
    "runs": ["run_id", "config_hash", "method", "reward", "backbone", "suite", "seed", "budget", "config",
             "package_versions", "git_commit", "started_at", "finished_at", "status", "wall_time_s", "world_size"],
    "checkpoints": ["run_id", "reward_queries", "mark_index", "epoch", "sampled_images", "gradient_updates",
                    "wall_time_s", "path", "unet_forward", "unet_backward", "vae_decodes", "reward_forwards",
                    "encoder_forwards", "sha256"],
    "train_metrics": ["run_id", "epoch", "reward_queries", "metric", "value"],
    "scores": ["run_id", "reward_queries", "reward", "prompt_set", "prompt", "sample_index", "eval_seed", "value"],
    "eval_metrics": ["run_id", "reward_queries", "prompt_set", "metric", "value"],
}


def connect(db_path: Path, read_only: bool = False, wait_s: float = 30.0):
    """Open the database, waiting a while if another process holds its lock."""
    import duckdb

    db_path = Path(db_path)
    if read_only and not db_path.exists():
        raise BenchError(f"no results database at {db_path}")
    db_path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            con = duckdb.connect(str(db_path), read_only=read_only)
            break
        except duckdb.IOException as e:
            if "lock" not in str(e).lower() or time.monotonic() > deadline:
                raise BenchError(f"cannot open {db_path}: another process holds it ({str(e).splitlines()[0][:160]}); "
                                 f"shards are kept, run `python -m bench ingest` later") from None
            time.sleep(0.5)
    if not read_only:
        for table, cols in SCHEMA.items():
            con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({cols})")
        for col, kind in (("unet_forward", "BIGINT"), ("unet_backward", "BIGINT"), ("vae_decodes", "BIGINT"),
                          ("reward_forwards", "BIGINT"), ("encoder_forwards", "BIGINT"), ("sha256", "VARCHAR")):
            con.execute(f"ALTER TABLE checkpoints ADD COLUMN IF NOT EXISTS {col} {kind}")  # databases from before
    return con


def _timestamp(value):
    import datetime as dt

    return dt.datetime.fromisoformat(value).astimezone(dt.timezone.utc).replace(tzinfo=None) if value else None


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _insert(con, table: str, rows: list[dict], replace: bool = False) -> int:
    if not rows:
        return 0
    cols = COLUMNS[table]
    values = [[json.dumps(r[c]) if isinstance(r.get(c), (dict, list)) else r.get(c) for c in cols] for r in rows]
    verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
    before = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    con.execute(f"CREATE TEMP TABLE IF NOT EXISTS stage_{table} AS SELECT * FROM {table} LIMIT 0")
    con.execute(f"DELETE FROM stage_{table}")
    con.executemany(f"INSERT INTO stage_{table} VALUES ({', '.join('?' * len(cols))})", values)
    con.execute(f"{verb} INTO {table} SELECT * FROM stage_{table}")
    return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0] - before


def ingest_run_dir(con, run_dir: Path) -> dict[str, int]:
    run = json.loads((run_dir / "run.json").read_text())
    stored = con.execute("SELECT started_at FROM runs WHERE run_id = ?", [run["run_id"]]).fetchone()
    if stored is not None and str(stored[0]) != str(_timestamp(run["started_at"])):
        # the run was restarted (an earlier attempt crashed): its old rows are superseded
        for table in ("checkpoints", "train_metrics", "scores", "eval_metrics"):
            con.execute(f"DELETE FROM {table} WHERE run_id = ?", [run["run_id"]])
    added = {"runs": _insert(con, "runs", [run], replace=True)}
    added["checkpoints"] = _insert(con, "checkpoints", _read_jsonl(run_dir / "checkpoints.jsonl"))
    added["train_metrics"] = _insert(con, "train_metrics", _read_jsonl(run_dir / "metrics.jsonl"))
    scores = [r for f in sorted((run_dir / "scores").glob("*.jsonl")) for r in _read_jsonl(f)]
    added["scores"] = _insert(con, "scores", scores)
    sets = [r for f in sorted((run_dir / "eval_metrics").glob("*.jsonl")) for r in _read_jsonl(f)]
    added["eval_metrics"] = _insert(con, "eval_metrics", sets)
    return added


def ingest(db_path: Path, out_dir: Path) -> dict[str, int]:
    """Ingest every run folder under out_dir/runs. Safe to repeat."""
    run_dirs = sorted(p.parent for p in (Path(out_dir) / "runs").glob("*/run.json"))
    totals = {t: 0 for t in SCHEMA}
    con = connect(db_path)
    try:
        con.execute("BEGIN TRANSACTION")
        for d in run_dirs:
            for k, v in ingest_run_dir(con, d).items():
                totals[k] += v
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    finally:
        con.close()
    return totals
