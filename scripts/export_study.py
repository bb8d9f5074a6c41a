"""Keep a study's stored results in docs/ (run folders are not tracked): its leaderboards, the report's figures
that answer its question, and every run's per-checkpoint means, enough to recompute every comparison.

    python scripts/export_study.py OUT/bench.duckdb OUT/report docs/overoptimization-v4

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
    ap.add_argument("report", type=Path, help="the folder `bench report` wrote (OUT/report)")
    ap.add_argument("dest", type=Path)
    a = ap.parse_args(argv)
    missing = [p for p in (a.db, a.report / "leaderboard.md", a.report / "leaderboard.csv",
                           *(a.report / "figures" / f for f in FIGURES)) if not p.is_file()]
    if missing:
        print(f"error: {missing[0]} is missing (run `python -m bench report` first)", file=sys.stderr)
        return 2
    from bench import load_results
    from bench.report.analysis import MEANS_COLUMNS as COLUMNS  # read back by scripts/replay_study.py

    curves = load_results(a.db).curves
    rows = curves.rename(columns={"value": "mean"})[list(COLUMNS)].sort_values(
        ["method", "seed", "run_id", "prompt_set", "reward", "reward_queries"])
    bad = rows[~rows["mean"].map(lambda v: math.isfinite(float(v)))]
    if len(bad):
        print(f"error: a non-finite mean in {a.db}: {bad.iloc[0].to_dict()}", file=sys.stderr)
        return 2
    a.dest.mkdir(parents=True, exist_ok=True)
    with (a.dest / "checkpoint_means.csv").open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(COLUMNS)
        w.writerows(rows.itertuples(index=False, name=None))
    for name in ("leaderboard.md", "leaderboard.csv"):
        shutil.copyfile(a.report / name, a.dest / name)
    for name in FIGURES:
        shutil.copyfile(a.report / "figures" / name, a.dest / name)
    print(f"wrote {len(rows)} checkpoint means of {rows['run_id'].nunique()} runs, 2 leaderboards and "
          f"{len(FIGURES)} figures to {a.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
