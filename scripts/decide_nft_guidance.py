"""DiffusionNFT's guidance decision on the development reward (README, "Deviations"): reads the two grids
(g = 1 and g = 5, seeds 0-2, evaluated with `bench eval --rewards jpeg-compressibility --per-prompt 2`) and
applies the rule declared before they ran.

    python scripts/decide_nft_guidance.py OUT_G1 OUT_G5
"""

import statistics as st
import sys
from math import sqrt

import duckdb

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447}
PAIRED_CHANGE = """
    with s as (select r.seed, s.prompt, s.sample_index, s.eval_seed, s.reward_queries q, s.value
               from scores s join runs r using (run_id)
               where s.reward = 'jpeg-compressibility' and s.prompt_set = 'toy-seen')
    select a.seed, count(*), avg(b.value - a.value), stddev_samp(b.value - a.value)
    from s a join s b on a.seed = b.seed and a.prompt = b.prompt and a.sample_index = b.sample_index
                     and a.eval_seed = b.eval_seed and a.q = 0 and b.q = (select max(q) from s)
    group by 1 order by 1"""


def changes(out: str) -> dict[int, tuple[int, float, float]]:
    """Per seed: images, mean paired change of the JPEG reward (query 0 to the last mark), its sd."""
    con = duckdb.connect(f"{out}/bench.duckdb", read_only=True)
    try:
        return {seed: (n, m, sd) for seed, n, m, sd in con.execute(PAIRED_CHANGE).fetchall()}
    finally:
        con.close()


def main(g1: str, g5: str) -> int:
    res = {1: changes(g1), 5: changes(g5)}
    for g, per_seed in res.items():
        for seed, (n, m, sd) in per_seed.items():
            print(f"g={g} seed {seed}: {n} images, change {m:+.5f} +- {1.96 * sd / sqrt(n):.5f} (image-level 95% CI)")
        ms = [m for _, m, _ in per_seed.values()]
        print(f"g={g}: mean over seeds {st.mean(ms):+.5f} +- {T975[len(ms) - 1] * st.stdev(ms) / sqrt(len(ms)):.5f}")
    seeds = sorted(set(res[1]) & set(res[5]))
    d = [res[5][s][1] - res[1][s][1] for s in seeds]
    mean, half = st.mean(d), T975[len(d) - 1] * st.stdev(d) / sqrt(len(d))
    print(f"g5 - g1, paired by seed: {mean:+.5f} +- {half:.5f} (95% t-CI over {len(d)} seeds)")
    choice = (5 if mean > 0 else 1) if abs(mean) > half else 5
    print(f"choice: g = {choice} ({'the CI excludes zero' if abs(mean) > half else 'the CI includes zero: 5 by the rule'})")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2]))
