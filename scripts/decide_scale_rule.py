"""The scale rule's decision on the development reward (docs/decisions/scale-rule.md): reads the two grids (the
count rule and the sde rule, DDPO-100 on jpeg-compressibility, seeds 0-4) and applies the rule declared there
before they ran.

    python scripts/decide_scale_rule.py OUT_COUNT OUT_SDE
"""

import statistics as st
import sys
from math import sqrt

import duckdb
from scipy.stats import t as student_t

CHANGE = """
    with s as (select r.seed, s.prompt, s.sample_index, s.eval_seed, s.reward_queries q, s.value
               from scores s join runs r using (run_id)
               where r.method = ? and s.reward = ? and s.prompt_set = 'toy-seen')
    select b.q, a.seed, avg(b.value - a.value)
    from s a join s b on a.seed = b.seed and a.prompt = b.prompt and a.sample_index = b.sample_index
                     and a.eval_seed = b.eval_seed and a.q = 0 and b.q > 0
    group by 1, 2 order by 1, 2"""
COST = """select sum(m.value) / (select sum(budget) from runs where method = ?) from train_metrics m join runs r
          using (run_id) where r.method = ? and m.metric in ('time_training_s', 'time_sampling_s')"""
METHOD = "ddpo-100"


def read(out: str) -> tuple[dict, dict, float]:
    """{mark: {seed: proxy change}}, {mark: {seed: gold-fidelity change}}, seconds of sampling and training per
    reward query."""
    con = duckdb.connect(f"{out}/bench.duckdb", read_only=True)
    try:
        res = []
        for reward in ("jpeg-compressibility", "gold-fidelity"):
            by: dict = {}
            for q, seed, v in con.execute(CHANGE, [METHOD, reward]).fetchall():
                by.setdefault(q, {})[seed] = v
            res.append(by)
        cost = con.execute(COST, [METHOD, METHOD]).fetchone()[0]
    finally:
        con.close()
    return res[0], res[1], cost


def summary(by_seed: dict) -> tuple[float, float, float, int]:
    """(mean, sd over seeds, 95% t half-width, seeds)."""
    v = list(by_seed.values())
    sd = st.stdev(v)
    return st.mean(v), sd, student_t.ppf(0.975, len(v) - 1) * sd / sqrt(len(v)), len(v)


def main(count_out: str, sde_out: str) -> int:
    data = {"count": read(count_out), "sde": read(sde_out)}
    snr = {}
    for rule, (proxy, gold, cost) in data.items():
        print(f"## {rule}: {cost:.3f} s of sampling and training per reward query")
        snr[rule] = []
        for q in sorted(proxy):
            m, sd, half, n = summary(proxy[q])
            gm, gsd, ghalf, _ = summary(gold[q])
            snr[rule].append(m / sd)
            seeds = " ".join(f"{proxy[q][s]:+.4f}" for s in sorted(proxy[q]))
            print(f"  {q:>5} queries: proxy {m:+.4f} +- {half:.4f} (sd {sd:.4f}, mean/sd {m / sd:.2f}, {n} seeds: "
                  f"{seeds}); gold-fidelity {gm:+.4f} +- {ghalf:.4f} (sd {gsd:.4f})")
    last = max(data["count"][0])
    c, s = summary(data["count"][0][last]), summary(data["sde"][0][last])
    learns = s[0] >= 0.5 * c[0] and s[0] - s[2] > 0
    quieter = st.mean(snr["sde"]) > st.mean(snr["count"])
    ratio = data["sde"][2] / data["count"][2]
    cheap = ratio <= 1.25
    print(f"1. learning: sde gain {s[0]:+.4f} +- {s[2]:.4f} vs count {c[0]:+.4f}: "
          f"{'holds' if learns else 'fails'} (at least half of count's, CI above 0)")
    print(f"2. noise: mean over the marks of mean/sd, sde {st.mean(snr['sde']):.2f} vs count "
          f"{st.mean(snr['count']):.2f}: {'holds' if quieter else 'fails'}")
    print(f"3. cost: sde / count seconds per query {ratio:.2f}: {'holds' if cheap else 'fails'} (at most 1.25)")
    print(f"decision: the toy's default scale rule is {'sde' if learns and quieter and cheap else 'count'}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2]))
