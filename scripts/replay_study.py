"""Recompute a study's declared comparisons and its calibration from stored checkpoint means, without its database.

    python scripts/replay_study.py docs/overoptimization-v4/checkpoint_means.csv --study overoptimization
    python scripts/replay_study.py docs/overoptimization-v4/checkpoint_means.csv OUT/bench.duckdb \
        --study overoptimization

Run folders and databases are not kept; a study's exported means (scripts/export_study.py) are. Each SOURCE is
such a CSV or a results database (its finished runs); their runs are read together, so runs added after a
database was lost join the exported ones (a run_id in two sources is refused). Prints, as markdown, the plan's
primary comparisons (the report's sentences and table rows) and its calibration line with the planted-effect
table (and, where a planted weight gives no pair at the level, an exploratory read at each run's last proxy
score): the same functions as `bench report`, on the same curves (the boards are built without per-image data:
each in-domain change is the mean of the seeds' changes, as the report has it for two seeds or more, and the gold
curves' shapes are left out; the primary comparisons and the calibration use neither).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def read_curves(sources: list[Path]) -> list:
    """The curves of every source, checked for a run given twice (ValueError; BenchError for a file that is not
    a results database)."""
    from bench.report.analysis import load_checkpoint_means, load_curves
    from bench.store.database import open_results

    curves, where = [], {}
    for i, src in enumerate(sources):
        if src.suffix == ".csv":
            got = load_checkpoint_means(src)
        else:
            con = open_results(src)  # a bench results database, or one line
            try:
                got = load_curves(con)
            finally:
                con.close()
        for c in got:  # one entry per run and prompt set: a run seen under an earlier source is given twice
            if where.setdefault(c.run_id, i) != i:
                raise ValueError(f"run {c.run_id} is in both {sources[where[c.run_id]]} and {src}")
        curves += got
    return curves


def replay(curves: list, plan) -> str:
    """The markdown: the primary sentences, their table rows, the calibration line and the planted table."""
    from bench.report.build import (COMPARISON_HEADER, _table_md, build_boards, comparison_rows, comparison_table,
                                    plan_completeness, primary_sentences)
    from bench.report.calibration import (LAST_PROXY_CAPTION, LAST_PROXY_HEADER, PLANTED_HEADER, calibrate,
                                          last_proxy_rows, planted_rows)

    boards = build_boards(None, plan, curves=curves)
    rows = comparison_rows(boards, plan)
    primaries = [r for r in rows if r["primary"]]
    runs = len({c.run_id for c in curves})
    out = [f"# Plan {plan.label} replayed from checkpoint means ({runs} runs)", ""]
    interim = plan_completeness(boards, plan)
    out += [interim, ""] if interim else []
    out += [f"- {s}" for s in primary_sentences(rows, plan)] or ["(no primary comparison: the plan's methods are "
                                                                 "not in these runs)"]
    out += ["", _table_md(COMPARISON_HEADER, comparison_table(primaries)).rstrip()] if primaries else []
    if primaries:
        cal = calibrate(curves, boards, rows, plan)
        out += ["", cal.line()]
        if cal.planted or cal.unpaired:
            out += ["", _table_md(PLANTED_HEADER, planted_rows(cal)).rstrip()]
        if cal.at_last_proxy:  # where the declared read has no pair, what the runs show, labelled as what it is
            out += ["", LAST_PROXY_CAPTION, "", _table_md(LAST_PROXY_HEADER, last_proxy_rows(cal)).rstrip()]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sources", type=Path, nargs="+", help="checkpoint-means CSVs and/or results databases")
    ap.add_argument("--study", required=True, help="the study whose plan declares the comparisons")
    a = ap.parse_args(argv)
    for src in a.sources:
        if not src.is_file():
            print(f"error: {src} is not a file", file=sys.stderr)
            return 2
        if src.suffix not in (".csv", ".duckdb"):
            print(f"error: {src}: a source is a checkpoint-means .csv or a results .duckdb", file=sys.stderr)
            return 2
    from bench.errors import BenchError
    from bench.report.command import plan_of

    try:
        plan = plan_of(a.study)  # did-you-mean before anything heavy
        curves = read_curves(a.sources)
    except (BenchError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(replay(curves, plan))
    return 0


if __name__ == "__main__":
    sys.exit(main())
