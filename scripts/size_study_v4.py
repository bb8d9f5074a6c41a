"""Study v4's power rule (docs/decisions/study-v4.md) on its pilot: the probe's final-regime grid OUT (TDPO,
TDPO-R, seeds 0-4) and v3's stored DDPO-100 (docs/overoptimization-v3/checkpoint_means.csv; its code path is
unchanged since v3). Per primary: the paired differences at the fixed level, their sd and its one-sided 80%
upper confidence limit, the seeds for a 95% half-width of 0.15 at each, and the detectable difference at the
cap. Reads only.

    python scripts/size_study_v4.py OUT
"""

import csv
import math
import statistics as st
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report.analysis import interpolate_at, interval_mean, seeds_for_half_width  # noqa: E402
from bench.report.calibration import smallest_detectable  # noqa: E402
from bench.spec.catalog import V4_LEVEL  # noqa: E402

CAP, HALF_WIDTH, SEEDS = 12, 0.15, range(5)
INTERVAL = (7.0, V4_LEVEL)


def curves_from_csv() -> dict:
    out: dict = {}
    for r in csv.DictReader((ROOT / "docs/overoptimization-v3/checkpoint_means.csv").open()):
        if r["prompt_set"] == "toy-seen" and r["method"] == "ddpo-100":
            out.setdefault(("ddpo-100", int(r["seed"])), {}).setdefault(r["reward"], []).append(
                (int(r["reward_queries"]), float(r["mean"])))
    return out


def curves_from_db(out: str) -> dict:
    import duckdb

    con = duckdb.connect(f"{out}/bench.duckdb", read_only=True)
    rows = con.execute("""select r.method, r.seed, s.reward, s.reward_queries, avg(s.value) from scores s
                          join runs r using (run_id) where s.prompt_set = 'toy-seen' group by all""").fetchall()
    con.close()
    res: dict = {}
    for method, seed, reward, q, v in rows:
        res.setdefault((method, seed), {}).setdefault(reward, []).append((q, v))
    return res


def readings(curve: dict) -> tuple:
    xs = [v for _, v in sorted(curve["aesthetic"])]
    ys = [v for _, v in sorted(curve["gold-aesthetic"])]
    return interpolate_at(xs, ys, V4_LEVEL), interval_mean(xs, ys, *INTERVAL)


def main(out: str) -> None:
    from scipy.stats import chi2

    curves = {**curves_from_csv(), **curves_from_db(out)}
    for other in ("tdpo", "ddpo-100"):
        for k, label in ((0, f"gold at aesthetic {V4_LEVEL}"), (1, f"gold over aesthetic {INTERVAL}")):
            diffs, dropped = [], []
            for seed in SEEDS:
                a, b = curves.get(("tdpo-r", seed)), curves.get((other, seed))
                va, vb = (readings(a)[k] if a else None), (readings(b)[k] if b else None)
                (diffs.append(va - vb) if va is not None and vb is not None else dropped.append(seed))
            n = len(diffs)
            print(f"## TDPO-R - {other}, {label}: {', '.join(f'{d:+.3f}' for d in diffs)} (left out: {dropped or 'none'})")
            if n < 2:
                continue
            sd = st.stdev(diffs)
            sd80 = sd * math.sqrt((n - 1) / chi2.ppf(0.20, n - 1))
            print(f"mean {st.mean(diffs):+.3f}; sd {sd:.3f} ({n} pairs), one-sided 80% upper limit {sd80:.3f}")
            for name, s in (("sd", sd), ("sd80", sd80)):
                need = seeds_for_half_width(s, HALF_WIDTH, most=10**5)
                print(f"  at {name}: {need} seeds for +-{HALF_WIDTH}; at the cap of {CAP}: detects "
                      f"{smallest_detectable(s, CAP):.3f} with 80% power")
            print()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/size_study_v4.py OUT")
    main(sys.argv[1])
