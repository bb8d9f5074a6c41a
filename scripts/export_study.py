"""Keep a study's stored results in docs/ (run folders are not tracked): its leaderboards, the report's figures
that answer its question, and every run's per-checkpoint means, enough to recompute every comparison.

    python scripts/export_study.py OUT/bench.duckdb OUT/report docs/overoptimization-v4
    python scripts/export_study.py OUT2/bench.duckdb --add-to docs/overoptimization-v4   # runs added later

Writes DEST/checkpoint_means.csv (per run, prompt set, reward and checkpoint: the mean score over the evaluation
images and how many, from `bench.load_results(DB).curves`; `scripts/replay_study.py` recomputes the study's
primary comparisons and calibration from it) and copies REPORT's leaderboard.md, leaderboard.csv
and the seen-prompt figures named in FIGURES. Files already in DEST that it does not write are left as they are.
"""

import argparse
import csv
import math
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FIGURES = ("level_gold-aesthetic_aesthetic_toy-seen.png", "gao_gold-aesthetic_aesthetic_toy-seen.png",
           "eval_reward_vs_queries_aesthetic_toy-seen.png")
"""The figures the study's tables are read with: gold against the proxy (its question), Gao's fit of gold against
the KL distance, and every reward against the queries spent."""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("db", type=Path)
    ap.add_argument("report", type=Path, nargs="?", help="the folder `bench report` wrote (OUT/report)")
    ap.add_argument("dest", type=Path, nargs="?")
    ap.add_argument("--add-to", type=Path, metavar="DEST",
                    help="only add DB's runs to DEST/checkpoint_means.csv (runs trained after the study's database "
                         "was lost; its leaderboards and figures are left as they are)")
    a = ap.parse_args(argv)
    if (a.add_to is None) != (a.report is not None and a.dest is not None) or (a.add_to and a.report):
        print("error: give DB REPORT DEST, or DB --add-to DEST", file=sys.stderr)
        return 2
    means = (a.add_to or a.dest) / "checkpoint_means.csv"
    missing = [p for p in ((a.db, means) if a.add_to else
                           (a.db, a.report / "leaderboard.md", a.report / "leaderboard.csv",
                            *(a.report / "figures" / f for f in FIGURES))) if not p.is_file()]
    if missing:
        print(f"error: {missing[0]} is missing" + ("" if a.add_to or missing[0] == a.db else
                                                   " (run `python -m bench report` first)"), file=sys.stderr)
        return 2
    import pandas as pd

    from bench import load_results
    from bench.errors import BenchError
    from bench.report.analysis import MEANS_COLUMNS as COLUMNS  # read back by scripts/replay_study.py

    try:
        rows = load_results(a.db).curves.rename(columns={"value": "mean"})[list(COLUMNS)]
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.add_to:
        kept = pd.read_csv(means)
        if list(kept.columns) != list(COLUMNS):
            print(f"error: {means} has columns {list(kept.columns)}, not {list(COLUMNS)}", file=sys.stderr)
            return 2
        both = sorted(set(kept["run_id"]) & set(rows["run_id"]))
        if both:
            print(f"error: {both[0]} is already in {means}", file=sys.stderr)
            return 2
        rows = pd.concat([kept, rows], ignore_index=True)
    # checked after the merge: a non-finite or unreadable mean in the kept file is refused too, not rewritten
    bad = rows[~pd.to_numeric(rows["mean"], errors="coerce").map(math.isfinite)]
    if len(bad):
        where = f"{a.db} or {means}" if a.add_to else a.db
        print(f"error: a non-finite mean in {where}: {bad.iloc[0].to_dict()}", file=sys.stderr)
        return 2
    rows = rows.sort_values(["method", "seed", "run_id", "prompt_set", "reward", "reward_queries"], kind="stable")
    means.parent.mkdir(parents=True, exist_ok=True)
    tmp = means.with_name(means.name + ".tmp")  # written whole, then renamed: an interrupted export keeps the old
    with tmp.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(COLUMNS)
        w.writerows(rows.itertuples(index=False, name=None))
    tmp.replace(means)
    if a.add_to:
        print(f"added {rows['run_id'].nunique() - kept['run_id'].nunique()} runs to {means} "
              f"({rows['run_id'].nunique()} runs in all)")
        return 0
    for name in ("leaderboard.md", "leaderboard.csv"):
        shutil.copyfile(a.report / name, a.dest / name)
    for name in FIGURES:
        shutil.copyfile(a.report / "figures" / name, a.dest / name)
    print(f"wrote {len(rows)} checkpoint means of {rows['run_id'].nunique()} runs, 2 leaderboards and "
          f"{len(FIGURES)} figures to {a.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
