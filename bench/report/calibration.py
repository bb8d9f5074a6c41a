"""The design's resolving power, measured rather than assumed (issue: "a benchmark that knows its own resolving
power"): the false-positive rate of a negative control (A/A) and the power of the primary comparison against an
effect of known size.

- **A/A:** one method's per-seed scores at the matched level, split into two disjoint streams of n seeds and
  compared exactly as a primary comparison (paired by position, the paired t test at 5%). Over the splits, the
  share that reject is the design's false-positive rate at N = n; it should be near 5%, and a rate well above it
  says the analysis, not the methods, makes differences (seed-level selection, a level that depends on N).
- **Power against an effect of known size:** a planted effect (a training reward blended with lambda x the gold
  reward moves gold at a fixed proxy level by a measured amount) is detected by the paired t test with the
  probability of the noncentral t; `smallest_detectable` inverts it. A reader gets an interpretable scale: "this
  design detects a method as good as blending X% of the true reward into training".

Pure numpy/scipy on per-seed numbers; the study's runs supply them.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np


def paired_t_rejects(a, b, alpha: float = 0.05) -> bool:
    """The primary comparison's test, as the report runs it: two-sided paired t on a[i] - b[i], at level alpha."""
    from bench.report.analysis import paired_comparison

    return paired_comparison(a, b).p < alpha


@dataclass(frozen=True)
class AARate:
    """A negative control's false-positive rate over the disjoint splits of one method's seeds."""
    rate: float
    """Share of splits whose two streams the primary test calls different."""
    splits: int
    """Distinct splits tried (stream A's seeds, stream B's seeds, the pairing by position)."""
    n: int
    """Seeds per stream: the N the rate holds for."""

    @property
    def se(self) -> float:
        """Binomial standard error of the rate as if the splits were independent (they share seeds, so this is
        a lower bound on its uncertainty)."""
        return math.sqrt(max(self.rate * (1 - self.rate), 1e-12) / self.splits)


def aa_false_positive_rate(per_seed, n: int, alpha: float = 0.05, most: int = 5000, seed: int = 0) -> AARate:
    """The A/A rate from `per_seed` (one method's scores, one per seed) at N = n per stream: every way (or, past
    `most`, a seeded sample of the ways) to draw two disjoint streams of n seeds, stream A's i-th paired with
    stream B's i-th as the study pairs by seed."""
    values = np.asarray(per_seed, dtype=float)
    k = len(values)
    if not 2 <= n <= k // 2:
        raise ValueError(f"an A/A control at N = {n} needs at least {2 * n} seeds of one method; it has {k}")
    rng = np.random.default_rng(seed)
    total = math.comb(k, n) * math.comb(k - n, n) * math.factorial(n)
    if total <= most:
        splits = ((a, b) for a in itertools.combinations(range(k), n)
                  for rest in [tuple(i for i in range(k) if i not in a)]
                  for b in itertools.permutations(rest, n))
    else:
        def sample():
            for _ in range(most):
                order = rng.permutation(k)
                yield tuple(order[:n]), tuple(order[n:2 * n])
        splits = sample()
    hits = count = 0
    for a, b in splits:
        hits += paired_t_rejects(values[list(a)], values[list(b)], alpha)
        count += 1
    return AARate(hits / count, count, n)


def paired_power(effect: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Probability that the two-sided paired t test at alpha rejects, for a true mean difference `effect`
    whose pairs have standard deviation `sd`, with n pairs (the noncentral t, exact)."""
    from scipy import stats

    if n < 2 or sd <= 0:
        raise ValueError("power needs 2+ pairs and a positive sd")
    df = n - 1
    crit = float(stats.t.ppf(1 - alpha / 2, df))
    nc = effect / (sd / math.sqrt(n))
    return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))


def smallest_detectable(sd: float, n: int, power: float = 0.8, alpha: float = 0.05) -> float:
    """The smallest true difference the paired t test detects with probability `power` (the noncentral t
    inverted; the report's (t_0.975 + t_0.80) x se is its usual approximation)."""
    from scipy.optimize import brentq

    hi = sd
    while paired_power(hi, sd, n, alpha) < power:
        hi *= 2
    return float(brentq(lambda e: paired_power(e, sd, n, alpha) - power, 0.0, hi, xtol=1e-12 * sd))


def power_curve(effect_by_lambda: dict[float, float], sd: float, n: int, alpha: float = 0.05) -> list[tuple]:
    """(lambda, planted effect, power) per blend weight: the planted control's effect on gold at the fixed proxy
    level (measured), and the probability the design detects it at N = n with the study's paired sd."""
    return [(lam, eff, paired_power(eff, sd, n, alpha)) for lam, eff in sorted(effect_by_lambda.items())]


def smallest_detectable_lambda(effect_by_lambda: dict[float, float], sd: float, n: int, power: float = 0.8,
                               alpha: float = 0.05) -> float | None:
    """The smallest blend weight detected with probability `power`, interpolated linearly in lambda between the
    measured weights (None when even the largest is not)."""
    target = smallest_detectable(sd, n, power, alpha)
    pts = sorted(effect_by_lambda.items())
    for (l0, e0), (l1, e1) in zip(pts, pts[1:]):
        if e0 < target <= e1:
            return l0 + (target - e0) / (e1 - e0) * (l1 - l0)
    if pts and pts[0][1] >= target:
        return pts[0][0]
    return None
