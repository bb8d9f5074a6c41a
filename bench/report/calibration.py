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
    # P(T <= -crit | nc) written as P(T >= crit | -nc): scipy's nct.cdf returns nan at some (df, nc), e.g. 3, 8
    power = float(stats.nct.sf(crit, df, nc) + stats.nct.sf(crit, df, -nc))
    if not math.isfinite(power):
        raise ValueError(f"the noncentral t gave no finite power (effect {effect}, sd {sd}, n {n})")
    return power


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


# ------------------------------------------------------------------------------ the report's calibration section
@dataclass(frozen=True)
class PlantedPoint:
    """One blend weight of the planted-effect control, read from the database."""
    weight: float
    effect: float
    """Mean over seeds of gold at the proxy level: the control's run minus the base method's at the same seed."""
    ci: float | None
    pairs: int
    power: float | None
    """The design's power against `effect` at N (the noncentral t with the primary comparisons' paired sd)."""


@dataclass(frozen=True)
class Calibration:
    aa: tuple[tuple[str, AARate], ...]
    """(method, its A/A rate) for each primary method with 4+ seeds at the level."""
    n: int | None
    """The design's N: the plan's seeds, else the primary comparisons' pairs."""
    sd: float | None
    """The largest paired sd of the primary comparisons (the conservative one for power)."""
    base: str = ""
    """The method trained on the blends (and, at weight 0, on the proxy)."""
    planted: tuple[PlantedPoint, ...] = ()
    smallest_weight: float | None = None
    """The smallest blend weight detected with 80% power at N (interpolated; None when none is)."""
    at_last_proxy: tuple[tuple[float, float, float | None, int], ...] = ()
    """Exploratory, only when a weight has no pair: (weight, mean, 95% CI, seeds) of `planted_at_last_proxy`."""
    unpaired: tuple[tuple[float, int, int, int], ...] = ()
    """(weight, planted runs, how many reach the level, how many have a base run at their seed) for each blend
    weight that gives no pair: its runs, or their base runs, never reach the level (the stop rule's cap), or
    were never trained, so it has no point on the curve."""

    @property
    def pooled_aa(self) -> AARate | None:
        if not self.aa:
            return None
        splits = sum(r.splits for _, r in self.aa)
        return AARate(sum(r.rate * r.splits for _, r in self.aa) / splits, splits, min(r.n for _, r in self.aa))

    def line(self) -> str:
        """The report's calibration sentence: the false-positive rate and the smallest planted effect detected."""
        aa = self.pooled_aa
        first = (f"false-positive rate {100 * aa.rate:.1f}% (A/A: {', '.join(m for m, _ in self.aa)}, {aa.n} seeds "
                 f"per stream, {aa.splits} splits; nominal 5%)" if aa else
                 "false-positive rate not measured (the A/A control needs 4+ seeds of a primary method)")
        if not self.planted:
            second = ("power against a planted effect not measured (" + ("no planted run gives a pair at the level"
                      if self.unpaired else "no run trained on a planted control, e.g. `--reward aesthetic+0.5gold`")
                      + ")")
        elif self.smallest_weight is None:
            second = (f"no planted blend weight up to {max(p.weight for p in self.planted):g} is detected with 80% "
                      f"power at N = {self.n}")
        else:
            second = (f"detects a method as good as blending gold into the training reward at weight "
                      f"w >= {self.smallest_weight:.2g} with 80% power at N = {self.n} ({self.base}, paired sd "
                      f"{self.sd:.3g})")
        weak = [p for p in self.planted if p.ci is None or abs(p.effect) <= p.ci]
        if weak:  # the power takes the effect as known: say when the measured effect is not distinguishable from 0
            points = ", ".join(f"w = {p.weight:g} ({p.effect:+.3g}" + (f" ± {p.ci:.3g}" if p.ci is not None else "")
                               + f", {p.pairs} pair{'s' if p.pairs != 1 else ''})" for p in weak)
            second += f"; the planted effect's 95% CI includes 0 at {points}: the power rests on its point estimate"
        if self.unpaired:  # a declared weight without a point is said, not dropped
            second += "; no pair at " + ", ".join(f"w = {w:g} ({_unpaired_text(n, k, b)})"
                                                 for w, n, k, b in self.unpaired)
        return f"Calibration: {first}; {second}."


def calibrate(curves, boards, comparisons, plan) -> Calibration:
    """The report's calibration from the database's runs: the A/A rate of each primary method's per-seed scores
    at the matched level (its primary board), and the planted-effect power curve from the runs trained on a
    control reward (catalog meta `control`, params proxy/gold/weight): per seed, gold at the proxy board's
    matched level, the control's run minus the same method's run on the proxy."""
    from bench.report.analysis import interpolate_at, mean_ci

    primaries = [r for r in comparisons if r["primary"]]
    paired = [r["comp"] for r in primaries if r["comp"].paired and r["comp"].n >= 2]
    sd = max((c.se * math.sqrt(c.n) for c in paired), default=None)
    n = plan.seeds or max((c.n for c in paired), default=None)
    aa = []
    if primaries:
        board = next(b for b in boards if (b.train_reward, b.prompt_set) ==
                     (primaries[0]["train_reward"], primaries[0]["prompt_set"]))
        col = board.columns.index(f"{plan.primary_score} @ level")
        methods = sorted({m for pair in plan.primary for m in pair})
        for method, _, cells in board.rows:
            values = [v for v in cells[col].values if v is not None]
            if method in methods and len(values) >= 4 and len(values) == len(cells[col].values):
                aa.append((method, aa_false_positive_rate(values, len(values) // 2)))
    points, base, runs, reached, based = {}, "", {}, {}, {}
    primary_set = primaries[0]["prompt_set"] if primaries else None  # the primary board's prompts
    levels = {(b.train_reward, b.prompt_set): b.level for b in boards}
    for w, p, c, partner in _planted_runs(curves, primary_set):
        level = levels.get((p["proxy"], c.prompt_set))
        gold = p["gold"]
        ours = interpolate_at(c.scores[p["proxy"]], c.scores[gold], level) if level is not None else None
        runs[w] = runs.get(w, 0) + 1
        reached[w] = reached.get(w, 0) + (ours is not None)
        based[w] = based.get(w, 0) + (partner is not None)  # a seed without its base run gives no pair either
        if ours is None or partner is None:
            continue
        theirs = interpolate_at(partner.scores[p["proxy"]], partner.scores[gold], level)
        if theirs is not None:
            points.setdefault(w, []).append(ours - theirs)
            base = c.method
    planted = []
    for w, diffs in sorted(points.items()):
        m, ci = mean_ci(diffs)
        power = paired_power(m, sd, n) if sd and n and n >= 2 else None
        planted.append(PlantedPoint(w, m, ci, len(diffs), power))
    smallest = (smallest_detectable_lambda({0.0: 0.0, **{p.weight: p.effect for p in planted}}, sd, n)
                if planted and sd and n and n >= 2 else None)
    unpaired = tuple((w, runs[w], reached[w], based[w]) for w in sorted(runs) if w not in points)
    last = tuple((w, *mean_ci(v), len(v)) for w, v in sorted(planted_at_last_proxy(curves, primary_set).items())) \
        if unpaired else ()
    return Calibration(tuple(aa), n, sd, base, tuple(planted), smallest, last, unpaired)


def planted_at_last_proxy(curves, prompt_set: str) -> dict[float, list[float]]:
    """Exploratory, for a planted weight whose runs stop below the declared level: per weight, per seed, gold of
    the planted run at its last checkpoint minus its base run's gold interpolated at the same proxy score (the
    planted run's last one; a seed whose base run never reaches it is left out). Each run is read at its own
    proxy score, so this is no fixed-level estimand and enters no power statement."""
    from bench.report.analysis import interpolate_at

    out: dict[float, list[float]] = {}
    for w, p, c, partner in _planted_runs(sorted(curves, key=lambda c: (c.train_reward, c.method, c.seed)),
                                          prompt_set):
        theirs = interpolate_at(partner.scores[p["proxy"]], partner.scores[p["gold"]], c.scores[p["proxy"]][-1]) \
            if partner is not None else None
        if theirs is not None:
            out.setdefault(w, []).append(c.scores[p["gold"]][-1] - theirs)
    return out


def control_params(reward: str) -> dict | None:
    """A planted control reward's params (proxy, gold, weight; catalog meta `control`), None for any other."""
    from bench.spec.catalog import rewards

    meta = rewards.get(reward).meta if reward in rewards else {}
    return meta["params"] if meta.get("control") else None


def _planted_runs(curves, prompt_set: str):
    """(weight, params, planted run, its base run or None) for each run on `prompt_set` trained on a planted
    control, in `curves`' order: the base run is the same method and seed trained on the control's proxy."""
    by_run = {(o.train_reward, o.prompt_set, o.method, o.seed): o for o in curves}
    for c in curves:
        p = control_params(c.train_reward)
        if p is not None and c.prompt_set == prompt_set:
            yield float(p["weight"]), p, c, by_run.get((p["proxy"], prompt_set, c.method, c.seed))


def _unpaired_text(runs: int, reached: int, based: int) -> str:
    """Why a blend weight has no pair: how many of its runs reach the level, and how many lack a base run."""
    return f"{reached} of {runs} planted runs reach the level" + (
        f"; {runs - based} without a base run at their seed" if based < runs else "")


LAST_PROXY_CAPTION = ("Exploratory, not declared: gold of each planted run at its last checkpoint minus its base "
                      "run's gold at the same proxy score (each run at its own proxy score; no power statement):")
LAST_PROXY_HEADER = ("blend weight w", "gold: planted - base (mean ± 95% CI)", "seeds")


def last_proxy_rows(cal: Calibration) -> list[tuple]:
    return [(f"{w:g}", f"{m:+.3f}" + (f" ± {ci:.3f}" if ci is not None else ""), str(k))
            for w, m, ci, k in cal.at_last_proxy]


PLANTED_HEADER = ("blend weight w", "gold at the level: control - base (mean ± 95% CI)", "pairs", "power at N")


def planted_rows(cal: Calibration) -> list[tuple]:
    """The planted table's rows by weight, a weight without a pair included (its effect '-', and why)."""
    rows = [(p.weight, f"{p.effect:+.3f}" + (f" ± {p.ci:.3f}" if p.ci is not None else ""), str(p.pairs),
             "-" if p.power is None else f"{100 * p.power:.0f}%") for p in cal.planted]
    rows += [(w, f"- ({_unpaired_text(n, k, b)})", "0", "-") for w, n, k, b in cal.unpaired]
    return [(f"{w:g}", *rest) for w, *rest in sorted(rows)]
