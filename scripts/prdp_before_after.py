"""PRDP before and after its footing changed (issue: the fair comparison), on the development reward.

Reads two grids trained with the same command but for PRDP's settings, and prints, per grid, the paired change of
the JPEG reward on the seen prompts (query 0 against the last mark, the same fixed-seed images), and PRDP's own
diagnostics over epochs: `gap_to_target` (the pairs' mean log-ratio gap over their mean target dr / beta),
`ratio_gap` (that gap, averaged over the epoch's updates) and `gap_moved` (with `update_data=whole`: how far the
epoch's updates moved the gap of the pairs they fit, positive toward the targets).

    python -m scripts.prdp_before_after OUT_BEFORE OUT_AFTER   (from the repository root)

The grids behind the README's numbers (one seed each, 640 queries, T = 10, 32 images per epoch):
    bench run --methods prdp --reward jpeg-compressibility --budget 640 --seeds 0 --workers 1 --threads 1 \
        --out OUT_BEFORE --set beta=auto --set update_data=groups      # the old rules
    bench run --methods prdp --reward jpeg-compressibility --budget 640 --seeds 0 --workers 1 --threads 1 \
        --out OUT_AFTER                                                # today's defaults
"""

import statistics as st
import sys

import duckdb

from bench.report.analysis import mean_ci, paired_changes


def read(out: str) -> tuple[list[float], dict[str, list[float]]]:
    """The run's paired per-image JPEG changes on the seen prompts (the report's `paired_changes`, in the order of
    prompt, sample and evaluation seed) and its PRDP diagnostics per epoch."""
    con = duckdb.connect(f"{out}/bench.duckdb", read_only=True)
    try:
        runs = con.execute("select run_id from runs").fetchall()
        if len(runs) != 1:
            raise SystemExit(f"{out}: expected exactly one run, found {len(runs)}")
        change = paired_changes(con, runs[0][0], "jpeg-compressibility", "toy-seen")
        diag: dict[str, list[float]] = {}
        for metric, value in con.execute("select metric, value from train_metrics where metric in "
                                         "('gap_to_target', 'ratio_gap', 'gap_moved', 'beta') order by epoch").fetchall():
            if value is not None:
                diag.setdefault(metric, []).append(value)
    finally:
        con.close()
    return change, diag


def fmt(values: list[float]) -> str:
    m, half = mean_ci(values)
    return f"{m:+.5f} +- {half:.5f}"


def halves(xs: list[float]) -> str:
    h = len(xs) // 2
    return f"first half {st.mean(xs[:h]):.3g}, second half {st.mean(xs[h:]):.3g} (over {len(xs)} epochs)"


def main(before: str, after: str) -> int:
    runs = {"before": read(before), "after": read(after)}
    for name, (change, diag) in runs.items():
        print(f"{name}: JPEG reward change, query 0 -> last mark, {len(change)} images: {fmt(change)}"
              " (minus kB; image-level 95% CI; one seed: seed variance not included)")
        print(f"  beta {diag['beta'][0]:.4g}; gap_to_target {halves(diag['gap_to_target'])}; ratio_gap > 0 in "
              f"{sum(g > 0 for g in diag['ratio_gap'])} of {len(diag['ratio_gap'])} epochs")
        if diag.get("gap_moved"):
            moved = diag["gap_moved"]
            print(f"  gap_moved > 0 in {sum(g > 0 for g in moved)} of {len(moved)} epochs, mean {st.mean(moved):+.3g}")
    a, b = runs["before"][0], runs["after"][0]
    if len(a) != len(b):
        raise SystemExit(f"the grids were evaluated on different images ({len(a)} and {len(b)})")
    print(f"after - before, paired by image ({len(a)}): {fmt([y - x for x, y in zip(a, b)])}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: python -m scripts.prdp_before_after OUT_BEFORE OUT_AFTER", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2]))
