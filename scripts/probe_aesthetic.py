"""The aesthetic probe (docs/decisions/probe-aesthetic.md): the paired spread of TDPO-R - TDPO in gold aesthetics
at the fixed proxy level L = 8.80 on the seen prompts, in the old regime (study v3's stored seeds 0-4) and the
final one (the grid OUT), and the final runs' critic explained variance. Reads only; decides nothing.

    python scripts/probe_aesthetic.py OUT
"""

import csv
import statistics as st
import sys
from math import sqrt
from pathlib import Path

import duckdb
from scipy.stats import chi2
from scipy.stats import t as student_t

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.report.analysis import interpolate_at  # noqa: E402  (the report's own crossing rule)

LEVEL = 8.80
SEEDS = range(5)
V3 = Path(__file__).resolve().parents[1] / "docs/overoptimization-v3/checkpoint_means.csv"
PAIR = ("tdpo-r", "tdpo")


def v3_curves() -> dict:
    """{(method, seed): {reward: [(queries, mean)]}} on toy-seen, from v3's stored checkpoint means."""
    out: dict = {}
    for r in csv.DictReader(V3.open()):
        if r["prompt_set"] == "toy-seen" and int(r["seed"]) in SEEDS and r["method"] in PAIR:
            out.setdefault((r["method"], int(r["seed"])), {}).setdefault(r["reward"], []).append(
                (int(r["reward_queries"]), float(r["mean"])))
    return {k: {rw: sorted(v) for rw, v in d.items()} for k, d in out.items()}


def db_curves(con) -> dict:
    out: dict = {}
    rows = con.execute("""select r.method, r.seed, s.reward, s.reward_queries, avg(s.value) from scores s
                          join runs r using (run_id) where s.prompt_set = 'toy-seen' group by all""").fetchall()
    for method, seed, reward, q, v in rows:
        out.setdefault((method, seed), {}).setdefault(reward, []).append((q, v))
    return {k: {rw: sorted(v) for rw, v in d.items()} for k, d in out.items()}


def gold_at_level(curve: dict) -> float | None:
    xs = [v for _, v in curve["aesthetic"]]
    ys = [v for _, v in curve["gold-aesthetic"]]
    return interpolate_at(xs, ys, LEVEL)


def arm(name: str, curves: dict) -> None:
    diffs, dropped = [], []
    for seed in SEEDS:
        a, b = (gold_at_level(curves[(m, seed)]) if (m, seed) in curves else None for m in PAIR)
        if a is None or b is None:
            dropped.append(seed)
        else:
            diffs.append(a - b)
    print(f"## {name}: TDPO-R - TDPO gold aesthetics at aesthetic {LEVEL} (toy-seen)")
    print(f"per seed: {', '.join(f'{d:+.3f}' for d in diffs)}; seeds dropped (a run never reached L): "
          f"{dropped or 'none'}")
    n = len(diffs)
    if n < 2:
        print("fewer than 2 pairs: no spread\n")
        return
    sd = st.stdev(diffs)
    lo, hi = (sd * sqrt((n - 1) / chi2.ppf(q, n - 1)) for q in (0.975, 0.025))
    half = student_t.ppf(0.975, n - 1) * sd / sqrt(n)
    print(f"mean {st.mean(diffs):+.3f} +- {half:.3f} (95% t, {n} pairs); paired sd {sd:.3f} "
          f"(95% CI {lo:.3f} to {hi:.3f})")
    for label, s in (("sd", sd), ("its upper 95% limit", hi)):
        k = 2
        while student_t.ppf(0.975, k - 1) * s / sqrt(k) > 0.15 and k < 10**5:
            k += 1
        print(f"seeds for a 95% half-width of 0.15 at the {label} ({s:.3f}): {k}")
    print()


def critic(con) -> None:
    rows = con.execute("""select r.method, r.seed, t.epoch, t.metric, t.value from train_metrics t
                          join runs r using (run_id) where t.metric like 'critic_e%' and isfinite(t.value)
                          order by 1, 2, 3""").fetchall()
    by: dict = {}
    for method, seed, epoch, metric, v in rows:
        by.setdefault(method, {}).setdefault(metric, {}).setdefault(seed, {})[epoch] = v
    print("## the critic's explained variance of the return (final arm)")
    for method, metrics in sorted(by.items()):
        ev = metrics.get("critic_explained_variance", {})
        if not ev:
            continue
        whole = [st.mean(e.values()) for e in ev.values()]
        last = [st.mean([v for k, v in e.items() if k > 0.75 * max(e)]) for e in ev.values()]
        below = sum(v < 0.1 for e in ev.values() for v in e.values()) / sum(len(e) for e in ev.values())
        print(f"{method}: mean over epochs {st.mean(whole):.3f} (per seed {', '.join(f'{w:.2f}' for w in whole)});"
              f" last quarter {st.mean(last):.3f}; epochs below 0.1: {below:.0%}")
        steps = sorted(k for k in metrics if k.startswith("critic_ev_step_"))
        cells = []
        for k in steps:
            vals = [v for e in metrics[k].values() for ep, v in e.items() if ep > 0.75 * max(e)]
            cells.append(f"{k[-2:]}: {st.mean(vals):.2f}" if vals else f"{k[-2:]}: -")
        print(f"  per step (x_T first), last quarter: {'; '.join(cells)}")
    print()


def side_check(new: dict, old: dict) -> None:
    print("## side check: the final arm's TDPO against v3's at the same seed (same code path)")
    for seed in SEEDS:
        if ("tdpo", seed) not in new or ("tdpo", seed) not in old:
            continue
        parts = []
        for reward in ("aesthetic", "gold-aesthetic"):
            a, b = dict(new[("tdpo", seed)][reward]), dict(old[("tdpo", seed)][reward])
            parts.append(f"{reward} {max(abs(a[q] - b[q]) for q in a if q in b):.4f}")
        print(f"seed {seed}: largest difference of a checkpoint mean: {'; '.join(parts)}")
    print()


def main(out: str) -> int:
    con = duckdb.connect(f"{out}/bench.duckdb", read_only=True)
    try:
        new = db_curves(con)
        old = v3_curves()
        arm("old regime (study v3, seeds 0-4)", old)
        arm("final regime", new)
        critic(con)
        side_check(new, old)
        secs = con.execute("""select sum(value) from train_metrics where metric like 'time_%_s'""").fetchone()[0]
        print(f"training-loop seconds over the runs (all phases): {secs:.0f}")
    finally:
        con.close()
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
