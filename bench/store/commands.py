"""`bench ingest` and `bench runs`, and the run summary table `bench run` prints after ingestion."""

from __future__ import annotations

from pathlib import Path

from bench.errors import BenchError


def _db_of(args) -> tuple[Path, Path]:
    out = Path(args.out)
    return out, (Path(args.db) if args.db else out / "bench.duckdb")


def cmd_ingest(args) -> int:
    out, db = _db_of(args)
    if not (out / "runs").is_dir():
        raise BenchError(f"no run folders under {out / 'runs'}; pass the --out of a `bench run`")
    from bench.store.database import check_db

    check_db(db)
    from bench.store.database import ingest

    added = ingest(db, out)
    print("ingested: " + ", ".join(f"{v} new {k} rows" for k, v in added.items()) + f" into {db}")
    return 0


def cmd_runs(args) -> int:
    out, db = _db_of(args)
    from bench.store.database import open_results

    con = open_results(db)
    try:
        ids = [r[0] for r in con.execute("SELECT run_id FROM runs ORDER BY run_id").fetchall()]
        broken = con.execute("SELECT run_dir, reason FROM quarantine ORDER BY 1").fetchall() \
            if _has_table(con, "quarantine") else []
        failed = con.execute("SELECT run_id, error FROM runs WHERE status = 'failed' ORDER BY 1").fetchall() \
            if _has_column(con, "runs", "error") else []
    finally:
        con.close()
    from bench.store.atomic import writer_active

    stopped = print_summary(db, ids, stopped=writer_active(out) is False)
    if stopped:
        print(f"stopped      {stopped} run(s) marked running, but no `bench run` holds {out} (it was killed or "
              f"interrupted): the same `bench run` command resumes each from its last checkpoint")
    for run_id, error in failed:
        print(f"failed       {run_id}: {error}")
    for run_dir, reason in broken:
        print(f"quarantined  {run_dir}: {reason} (fix or remove the folder, then `bench ingest`)")
    return 0


def _has_table(con, name: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]).fetchone()[0])


def _has_column(con, table: str, column: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = ? AND column_name = ?",
                            [table, column]).fetchone()[0])


def print_summary(db: Path, run_ids: list[str], stopped: bool = False) -> int:
    """The runs' table, one per suite. `stopped`: no process trains them now (the grid has ended, or no writer holds
    OUT), so a run still marked 'running' shows as 'stopped'; returns how many did."""
    from bench.store.database import connect

    con = connect(db, read_only=True)
    try:
        rows = con.execute("""
            WITH r AS (SELECT run_id, epoch, value FROM train_metrics WHERE metric = 'reward_mean'),
                 f AS (SELECT run_id, arg_min(value, epoch) AS first, arg_max(value, epoch) AS last,
                              max(epoch) AS epochs FROM r GROUP BY run_id),
                 u AS (SELECT run_id, max(gradient_updates) AS updates, max(reward_queries) AS queries
                       FROM checkpoints GROUP BY run_id)
            SELECT runs.suite, runs.run_id, runs.status, u.queries, f.epochs, u.updates, f.first, f.last,
                   runs.wall_time_s
            FROM runs LEFT JOIN f USING (run_id) LEFT JOIN u USING (run_id)
            WHERE runs.run_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY runs.suite, runs.run_id
        """, [run_ids]).fetchall()
    finally:
        con.close()
    if stopped:
        rows = [(*r[:2], "stopped" if r[2] == "running" else r[2], *r[3:]) for r in rows]
    header = ("run", "status", "queries", "epochs", "updates", "reward@1st", "reward@last", "wall s")
    suites = sorted({r[0] for r in rows})
    for suite in suites:  # one table per suite: toy and real results never mix
        if len(suites) > 1:
            print(f"suite {suite}:")
        table = [header] + [(r[1], r[2], r[3], r[4], r[5], f"{r[6]:.4g}" if r[6] is not None else "-",
                             f"{r[7]:.4g}" if r[7] is not None else "-", f"{r[8]:.0f}" if r[8] else "-")
                            for r in rows if r[0] == suite]
        widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
        for row in table:
            print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    return sum(r[2] == "stopped" for r in rows)
