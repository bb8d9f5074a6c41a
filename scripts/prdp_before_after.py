"""PRDP before and after its footing changed (issue: the fair comparison), on the development reward.

Reads two grids trained with the same command but for PRDP's settings, and prints, per grid, the paired change of
the JPEG reward on the seen prompts (query 0 against the last mark, the same fixed-seed images), and PRDP's own
diagnostics over epochs: `gap_to_target` (the pairs' mean log-ratio gap over their mean target dr / beta),
`ratio_gap` (that gap, averaged over the epoch's updates) and `gap_moved` (with `update_data=whole`: how far the
epoch's updates moved the gap of the pairs they fit, positive toward the targets).

    python scripts/prdp_before_after.py OUT_BEFORE OUT_AFTER

The grids behind the README's numbers (one seed each, 640 queries, T = 10, 32 images per epoch):
    bench run --methods prdp --reward jpeg-compressibility --budget 640 --seeds 0 --workers 1 --threads 1 \
        --out OUT_BEFORE --set beta=auto --set update_data=groups      # the old rules
    bench run --methods prdp --reward jpeg-compressibility --budget 640 --seeds 0 --workers 1 --threads 1 \
        --out OUT_AFTER                                                # today's defaults
"""

import statistics as st
import sys
from math import sqrt

import duckdb

PER_IMAGE = """
    with s as (select s.prompt, s.sample_index, s.eval_seed, s.reward_queries q, s.value
               from scores s where s.reward = 'jpeg-compressibility' and s.prompt_set = 'toy-seen')
    select a.prompt, a.sample_index, a.eval_seed, b.value - a.value
    from s a join s b on a.prompt = b.prompt and a.sample_index = b.sample_index and a.eval_seed = b.eval_seed
                     and a.q = 0 and b.q = (select max(q) from s)
    order by 1, 2, 3"""


def read(out: str) -> tuple[dict, dict[str, list[float]]]:
    con = duckdb.connect(f"{out}/bench.duckdb", read_only=True)
    try:
        if con.execute("select count(distinct run_id) from runs").fetchone()[0] != 1:
            raise SystemExit(f"{out}: expected exactly one run")
        change = {(p, i, e): d for p, i, e, d in con.execute(PER_IMAGE).fetchall()}
        diag: dict[str, list[float]] = {}
        for metric, value in con.execute("select metric, value from train_metrics where metric in "
                                         "('gap_to_target', 'ratio_gap', 'gap_moved', 'beta') order by epoch").fetchall():
            if value is not None:
                diag.setdefault(metric, []).append(value)
    finally:
        con.close()
    return change, diag


def mean_ci(xs: list[float]) -> str:
    return f"{st.mean(xs):+.5f} +- {1.96 * st.stdev(xs) / sqrt(len(xs)):.5f}"


def halves(xs: list[float]) -> str:
    h = len(xs) // 2
    return f"first half {st.mean(xs[:h]):.3g}, second half {st.mean(xs[h:]):.3g} (over {len(xs)} epochs)"


def main(before: str, after: str) -> int:
    runs = {"before": read(before), "after": read(after)}
    for name, (change, diag) in runs.items():
        print(f"{name}: JPEG reward change, query 0 -> last mark, {len(change)} images: {mean_ci(list(change.values()))}"
              " (minus kB; image-level 95% CI; one seed: seed variance not included)")
        print(f"  beta {diag['beta'][0]:.4g}; gap_to_target {halves(diag['gap_to_target'])}; ratio_gap > 0 in "
              f"{sum(g > 0 for g in diag['ratio_gap'])} of {len(diag['ratio_gap'])} epochs")
        if diag.get("gap_moved"):
            moved = diag["gap_moved"]
            print(f"  gap_moved > 0 in {sum(g > 0 for g in moved)} of {len(moved)} epochs, mean {st.mean(moved):+.3g}")
    a, b = runs["before"][0], runs["after"][0]
    keys = sorted(set(a) & set(b))
    print(f"after - before, paired by image ({len(keys)}): {mean_ci([b[k] - a[k] for k in keys])}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: python scripts/prdp_before_after.py OUT_BEFORE OUT_AFTER", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2]))
