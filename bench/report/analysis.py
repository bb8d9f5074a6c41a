"""Numbers for the leaderboard, read from the DuckDB store (or from a study's exported checkpoint means).

A run's cross-reward curve is the path, in checkpoint order (reward queries),
of points (x, y): x the mean in-domain score (the run's training reward) of a
checkpoint on a prompt set, y the mean of another reward on the same images.
Every run of a suite shares the point at query 0 (the pretrained model, the same
evaluation seeds).

Definitions (all on the "better is up" scale: a reward whose higher_is_better
is False is negated before and after):
- matched level L: the highest in-domain level that EVERY compared run reaches,
  i.e. min over runs of max over checkpoints of x (never below x at query 0).
  The leaderboard compares the runs of the methods whose in-domain score improves
  (paired change, 95% CI above zero; all methods when none does): a method that
  does not learn would pin the level at the pretrained model. Of those, the
  methods of the benchmark's paper (TDPO's) set L when any improves; a companion
  paper's method (catalog flag `companion`: PRDP, dense DPO) is compared at L
  like the others, and the level it would have set is reported beside. The
  other methods are shown where they reach L, and as missing where they never do;
- y at level L: linear interpolation on the segment where the path FIRST
  reaches x >= L;
- AUC: the area under the path from query 0 to that first crossing,
  trapezoid rule in x, divided by (L - x0): the mean out-of-domain score over
  the in-domain range both compared methods cover (y0 when L = x0);
- queries to reach a target: the reward queries interpolated at the first
  crossing of the target on the path, None if never reached;
- mean and 95% CI over seeds: Student t, n - 1 degrees of freedom (scipy.stats; quantiles to
  3 decimals as in printed tables); a BCa bootstrap interval for skewed quantities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def t975(df: float) -> float:
    """Two-sided 95% (upper 97.5%) quantile of Student's t at `df` degrees of freedom, exact at every df (Welch's
    fractional ones too). Until 2026-12-06 it was rounded to 3 decimals, at floor(df), and the normal's 1.960
    beyond 30 df, which made intervals over 31+ values (images, pairs) 1-4% too narrow."""
    from scipy import stats

    return float(stats.t.ppf(0.975, max(float(df), 1.0)))


def mean_ci(values) -> tuple[float, float | None]:
    """Mean and the half-width of its 95% confidence interval over the values (None for one value)."""
    v = np.asarray(values, dtype=float)
    m = float(v.sum() / len(v))
    if len(v) < 2:
        return m, None
    return m, t975(len(v) - 1) * float(np.sqrt(((v - m) ** 2).sum() / (len(v) - 1))) / math.sqrt(len(v))


def seed_interval(values) -> tuple[float, float] | None:
    """The t 95% interval (low, high) of a mean over seeds: the interval for the Gao coefficients. At a handful of
    seeds a bootstrap's resamples hold too little of the spread (BCa over 7 seeds covers 83-87%); t covers 95%
    for normal values at every n. None below 2 values."""
    m, ci = mean_ci(values)
    return None if ci is None else (m - ci, m + ci)


def bootstrap_ci(values, statistic=np.mean, seed: int = 0, resamples: int = 9999) -> tuple[float, float] | None:
    """95% BCa bootstrap interval (low, high) of a statistic over the values: for skewed quantities such as
    the reward queries a method needs to reach a level. Fixed seed, so the report is reproducible. None
    below 3 values or when every value is the same."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    if len(v) < 3 or np.all(v == v[0]):
        return None
    res = stats.bootstrap((v,), statistic, confidence_level=0.95, n_resamples=resamples, method="BCa",
                          rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def welch_ci(a, b) -> tuple[float, float]:
    """mean(a) - mean(b) and the half-width of its 95% CI (Welch: unequal variances,
    Welch-Satterthwaite degrees of freedom). Both need 2+ values."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    diff = float(a.mean() - b.mean())
    if va + vb == 0:
        return diff, 0.0
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return diff, t975(df) * float(np.sqrt(va + vb))


def first_crossing(xs: list[float], level: float) -> tuple[int, float] | None:
    """(segment index i, fraction f) such that the path point xs[i] + f*(xs[i+1]-xs[i]) is
    the first to reach `level`; (0, 0.0) if xs[0] already does; None if never."""
    if xs[0] >= level:
        return 0, 0.0
    for i in range(len(xs) - 1):
        if xs[i + 1] >= level:  # every earlier point is below the level
            return i, (level - xs[i]) / (xs[i + 1] - xs[i])
    return None


def interpolate_at(xs: list[float], ys: list[float], level: float) -> float | None:
    hit = first_crossing(xs, level)
    if hit is None:
        return None
    i, f = hit
    return ys[i] if f == 0.0 else ys[i] + f * (ys[i + 1] - ys[i])


def normalised_auc(xs: list[float], ys: list[float], level: float) -> float | None:
    """Trapezoid area under the path up to its first crossing of `level`, over (level - x0)."""
    hit = first_crossing(xs, level)
    if hit is None:
        return None
    i, f = hit
    if level <= xs[0]:
        return ys[0]
    px = np.append(np.asarray(xs[:i + 1], dtype=float), xs[i] + f * (xs[i + 1] - xs[i]))
    py = np.append(np.asarray(ys[:i + 1], dtype=float), ys[i] + f * (ys[i + 1] - ys[i]))
    return float(np.trapezoid(py, px)) / (level - xs[0])


def interval_mean(xs: list[float], ys: list[float], low: float, high: float, points: int = 31) -> float | None:
    """The mean of y at the first crossing of each of `points` evenly spaced proxy levels in [low, high]: the
    area under y against the proxy over the interval, divided by its width (trapezoid rule over the levels).
    A level the run starts above counts at its start. None when the run never reaches `high`."""
    if first_crossing(xs, high) is None:
        return None
    values = np.array([interpolate_at(xs, ys, float(level)) for level in np.linspace(low, high, points)])
    return float(np.trapezoid(values, dx=1.0)) / (points - 1)


def fraction_level(curves: dict[str, list[list[float]]], fraction: float) -> float:
    """The main command's level rule from plan version 3: the common start (the highest query-0 score) plus
    `fraction` of the median over methods of each method's best gain over its start (mean over its seeds).
    `curves`: method -> its runs' in-domain curves (sign-adjusted: higher is better)."""
    start = max(xs[0] for runs in curves.values() for xs in runs)
    gains = [float(np.mean([max(xs) - xs[0] for xs in runs])) for runs in curves.values()]
    return start + fraction * float(np.median(gains))


def matched_level(curves: list[list[float]]) -> float:
    """The highest level every curve reaches (and never below their common start)."""
    return max(min(max(xs) for xs in curves), max(xs[0] for xs in curves))


@dataclass
class Curve:
    run_id: str
    method: str
    seed: int
    train_reward: str
    prompt_set: str
    queries: list[int]
    scores: dict[str, list[float]]
    """reward name -> mean score per checkpoint, in query order."""


def load_curves(con) -> list[Curve]:
    """Per run and prompt set, the mean score of every reward at every checkpoint
    (only checkpoints scored by every reward of the run are kept)."""
    from bench.report.frames import FINISHED

    return curves_from_means(con.execute(f"""
        SELECT r.run_id, r.method, r.seed, r.reward, s.prompt_set, s.reward_queries, s.reward, avg(s.value)
        FROM scores s JOIN runs r USING (run_id) WHERE r.{FINISHED}
        GROUP BY ALL ORDER BY r.run_id, s.prompt_set, s.reward_queries, s.reward
    """).fetchall())


MEANS_COLUMNS = ("method", "seed", "run_id", "train_reward", "prompt_set", "reward", "reward_queries", "images",
                 "mean")
"""A study's exported checkpoint means (scripts/export_study.py writes them to docs/, read back by
`load_checkpoint_means`): per finished run, prompt set, reward and checkpoint, the mean score and how many images."""


def load_checkpoint_means(path) -> list[Curve]:
    """The curves of a checkpoint-means CSV (`MEANS_COLUMNS`), as `load_curves` reads them from a database.
    Raises ValueError, naming the file and line, on a missing column, a non-finite or unreadable number, or a
    checkpoint given twice."""
    import csv

    rows, seen = [], set()
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in MEANS_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{path}: no column {missing[0]!r} (a checkpoint-means CSV has "
                             f"{', '.join(MEANS_COLUMNS)})")
        for line, r in enumerate(reader, start=2):
            try:
                seed, q, value = int(r["seed"]), int(r["reward_queries"]), float(r["mean"])
            except ValueError as e:
                raise ValueError(f"{path}:{line}: {e}") from None
            if not math.isfinite(value):
                raise ValueError(f"{path}:{line}: the mean of {r['reward']} is {value}")
            key = (r["run_id"], r["prompt_set"], q, r["reward"])
            if key in seen:
                raise ValueError(f"{path}:{line}: {r['run_id']} {r['prompt_set']} {r['reward']} at {q} queries twice")
            seen.add(key)
            rows.append((r["run_id"], r["method"], seed, r["train_reward"], r["prompt_set"], q, r["reward"], value))
    return curves_from_means(sorted(rows, key=lambda r: (r[0], r[4], r[5], r[6])))


def curves_from_means(rows) -> list[Curve]:
    """Curves from (run_id, method, seed, training reward, prompt set, queries, reward, mean) rows sorted by run,
    prompt set, queries and reward: only checkpoints scored by every reward of the run are kept, and a run's
    prompt set without its training reward is left out."""
    grouped: dict[tuple, dict] = {}
    for run_id, method, seed, train_reward, pset, q, reward, value in rows:
        g = grouped.setdefault((run_id, pset), dict(method=method, seed=seed, train_reward=train_reward, pts={}))
        g["pts"].setdefault(q, {})[reward] = value
    curves = []
    for (run_id, pset), g in grouped.items():
        rewards = set.intersection(*(set(v) for v in g["pts"].values()))
        if g["train_reward"] not in rewards:
            continue
        qs = sorted(q for q, v in g["pts"].items() if rewards <= set(v))
        curves.append(Curve(run_id, g["method"], g["seed"], g["train_reward"], pset, qs,
                            {r: [g["pts"][q][r] for q in qs] for r in sorted(rewards)}))
    return curves


def paired_changes(con, run_id: str, reward: str, prompt_set: str,
                   q_from: int = 0, q_to: int | None = None) -> list[float]:
    """Per evaluation image, the score at checkpoint `q_to` (default: the run's last scored
    checkpoint) minus the score of the same prompt and evaluation seed at `q_from` (default:
    query 0, the pretrained model). Pairing on the fixed evaluation seed removes the
    prompt- and noise-level spread, so a small but consistent rise is visible where two
    unpaired means would overlap."""
    rows = con.execute("""
        WITH s AS (SELECT * FROM scores WHERE run_id = ? AND reward = ? AND prompt_set = ?)
        SELECT b.value - a.value
        FROM s a JOIN s b USING (prompt, sample_index, eval_seed)
        WHERE a.reward_queries = ? AND b.reward_queries = coalesce(?, (SELECT max(reward_queries) FROM s))
              AND b.reward_queries <> a.reward_queries
        ORDER BY prompt, sample_index, eval_seed
    """, [run_id, reward, prompt_set, q_from, q_to]).fetchall()
    return [r[0] for r in rows]


@dataclass
class GoldShape:
    """How a gold (ground-truth) score moved during a run: the evidence for overoptimization."""
    shape: str
    """'rises then falls', 'falls', 'rises' or 'flat' (each change judged by its paired 95% CI)."""
    peak_queries: int
    """The checkpoint where the mean gold score (over seeds) is highest."""
    rise: tuple[float | None, float | None]
    """Paired change from query 0 to the peak (mean, 95% CI)."""
    fall: tuple[float | None, float | None]
    """Paired change from the peak to the final checkpoint (mean, 95% CI; <= 0)."""
    total: tuple[float | None, float | None]
    """Paired change from query 0 to the final checkpoint."""


def image_matrix(con, run_ids: list[str], reward: str, prompt_set: str, queries: list[int]) -> list[np.ndarray]:
    """Per run, its scores as checkpoints x images, the images (prompt, sample index, evaluation seed) in one
    sorted order shared by every run and checkpoint (those every run has at every checkpoint)."""
    per_run = []
    for run_id in run_ids:
        rows = con.execute("SELECT reward_queries, prompt, sample_index, eval_seed, value FROM scores "
                           "WHERE run_id = ? AND reward = ? AND prompt_set = ?", [run_id, reward, prompt_set]).fetchall()
        per_run.append({(q, (p, i, s)): v for q, p, i, s, v in rows})
    keys = sorted(set.intersection(*({k for q2, k in d if q2 == q} for d in per_run for q in queries)))
    return [np.array([[d[(q, k)] for k in keys] for q in queries], dtype=float) for d in per_run]


def gold_shape(con, runs: list[Curve], gold: str) -> GoldShape | None:
    """Classify a method's gold curve on one prompt set with the split-half test (`split_half_shape`): the
    peak is chosen on half of the seeds (4+ seeds; half of the evaluation images below that) and the rise to it
    and fall after it are tested on the other half, so choosing the peak does not bias the test. Needs 4+
    images per checkpoint."""
    if not runs or any(gold not in c.scores for c in runs):
        return None
    # the marks every run has: runs that stopped early (the stop rule) are read over their common first marks
    queries = runs[0].queries[:min(len(c.queries) for c in runs)]
    if any(c.queries[:len(queries)] != queries for c in runs) or len(queries) < 2:
        return None
    arrays = image_matrix(con, [c.run_id for c in runs], gold, runs[0].prompt_set, queries)
    if arrays[0].shape[1] < 4:
        return None
    return GoldShape(*split_half_shape(arrays, queries))


def change_verdict(mean: float | None, ci: float | None, higher_is_better: bool = True) -> str:
    """'improves' / 'worsens' when the 95% CI of the change excludes 0 (judged in the
    reward's own direction), 'flat' when it does not, '-' when there is no CI."""
    if mean is None or ci is None:
        return "-"
    better = mean if higher_is_better else -mean
    if better - ci > 0:
        return "improves"
    if better + ci < 0:
        return "worsens"
    return "flat"


# ------------------------------------------------------------------------------ comparisons that fit the design
@dataclass
class Comparison:
    """One method minus another on one score, over seeds."""
    diff: float
    ci: float
    """Half-width of the 95% CI."""
    p: float
    """Two-sided p-value of 'no difference'."""
    n: int
    """Seeds (pairs for a paired comparison)."""
    mdd: float
    """Minimum detectable difference: the true difference this design finds at 95% confidence with 80% power,
    given the observed spread: (t_0.975 + t_0.80) x the standard error, at the design's degrees of freedom."""
    paired: bool
    se: float = 0.0
    """Standard error of the difference."""
    df: float = 1.0
    """Degrees of freedom of its t distribution."""

    @property
    def equivalence_bound(self) -> float:
        """The smallest margin D for which two one-sided tests at 5% (TOST) reject |difference| >= D: the data
        rule out a difference larger than this. |diff| + t_0.95(df) se, the far end of the 90% interval (the
        95% interval's far end, used until 2026-12-06, is a 2.5% test each side: too wide)."""
        from scipy import stats

        return abs(self.diff) + (float(stats.t.ppf(0.95, self.df)) * self.se if self.se else 0.0)


def _mdd(se: float, df: float, alpha: float = 0.05, power: float = 0.8) -> float:
    from scipy import stats

    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * se)


def paired_comparison(a, b) -> Comparison:
    """a - b paired by seed (a[i] and b[i] share seed i): the seed's own luck cancels, which is what makes
    methods that are bit-identical until they diverge (TDPO and TDPO-R before the first reset) comparable.
    Student t on the n - 1 differences' spread. Needs 2+ pairs."""
    from scipy import stats

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(d)
    m = float(d.mean())
    se = float(d.std(ddof=1)) / math.sqrt(n)
    if se == 0:
        return Comparison(m, 0.0, 0.0 if m else 1.0, n, 0.0, True, 0.0, n - 1)
    p = float(2 * stats.t.sf(abs(m) / se, n - 1))
    return Comparison(m, t975(n - 1) * se, p, n, _mdd(se, n - 1), True, se, n - 1)


def welch_comparison(a, b) -> Comparison:
    """a - b over independent seeds (Welch: unequal variances, Welch-Satterthwaite degrees of freedom)."""
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    diff, ci = welch_ci(a, b)
    if va + vb == 0:
        return Comparison(diff, 0.0, 0.0 if diff else 1.0, min(len(a), len(b)), 0.0, False)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    se = math.sqrt(va + vb)
    return Comparison(diff, ci, float(2 * stats.t.sf(abs(diff) / se, df)), min(len(a), len(b)), _mdd(se, df), False,
                      se, df)


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error at the nominal level), in the input's order:
    the i-th smallest p times (m - i + 1), made monotone, capped at 1."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def seeds_for_half_width(sd: float, half_width: float, most: int = 1000) -> int | None:
    """The fewest pairs n whose paired 95% CI half-width, t_0.975(n - 1) x sd / sqrt(n), is at most
    `half_width` (the study's power rule); None beyond `most`."""
    from scipy import stats

    for n in range(2, most + 1):
        if stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n) <= half_width:
            return n
    return None


# ------------------------------------------------------------------------------ the gold peak, chosen and tested apart
def split_half_shape(curves: list[np.ndarray], queries: list[int]) -> tuple[str, int, tuple, tuple, tuple]:
    """The gold curve's shape with the peak chosen on one half of the data and tested on the other, so the
    choice does not bias the test toward 'rises then falls'.

    `curves`: one array per seed (in seed order), checkpoints x images, the images in a fixed order shared by
    every seed and checkpoint (same prompt and evaluation seed in the same column).

    - **4+ seeds: split by seed.** The seeds at odd positions choose the peak (the highest mean over their
      images, earliest on ties); the others test it, each over all its images: the paired change from query 0
      to the peak (rise) and from the peak to the last checkpoint (fall), a t interval over the testing seeds.
      A seed's own luck moves all its images together, so choosing on other images of the same seeds (the rule
      until 2026-12-07) picked that luck's peak and tested it on the same luck: 6.5-12% false rises against
      2.5% nominal, measured in tests/test_statistics.py.
    - **1 to 3 seeds: split by image** (too few seeds to spare): even columns choose, odd columns test, the
      change over the seeds' mean changes (2-3 seeds) or over the images (1 seed). Seed luck is not held out
      here, which the report's shape note says.

    Returns (shape, peak queries, rise, fall, total), each change as (mean, 95% CI)."""
    k = len(curves)
    if k >= 4:
        choose = [curves[i] for i in range(1, k, 2)]
        test = [curves[i] for i in range(0, k, 2)]
        cols_choose = cols_test = slice(None)
    else:
        choose = test = curves
        cols_choose, cols_test = slice(0, None, 2), slice(1, None, 2)
    select = np.mean([c[:, cols_choose].mean(axis=1) for c in choose], axis=0)
    peak = int(max(range(len(select)), key=lambda i: (select[i], -i)))
    last = len(queries) - 1

    def change(i: int, j: int) -> tuple[float | None, float | None]:
        if i == j:
            return 0.0, None
        per_seed = [c[j, cols_test] - c[i, cols_test] for c in test]
        return mean_ci(per_seed[0]) if len(per_seed) == 1 else mean_ci([d.mean() for d in per_seed])

    rise, fall, total = change(0, peak), change(peak, last), change(0, last)
    up = lambda c: c[1] is not None and c[0] - c[1] > 0
    down = lambda c: c[1] is not None and c[0] + c[1] < 0
    shape = "rises then falls" if up(rise) and down(fall) else "falls" if down(total) else \
        "rises" if up(total) else "flat"
    return shape, queries[peak], rise, fall, total


# ------------------------------------------------------------------------------ overoptimization coefficients
R2_BAR = 0.5
"""Below this R², a fitted form describes the run poorly: its coefficients are reported but not ranked on."""


@dataclass
class GaoFit:
    """Gao, Schulman and Hilton (2022): gold gain against d = sqrt(KL to the initial policy).
    RL form: R(d) = d (alpha - beta ln d); best-of-n form: R(d) = d (alpha - beta d)."""
    form: str
    alpha: float
    beta: float
    r2: float
    d_peak: float | None
    """Where the fitted curve peaks (RL: exp(alpha / beta - 1); best-of-n: alpha / (2 beta)); None when beta <= 0
    (no peak: the curve never turns down)."""
    gain_peak: float | None
    """The fitted gold gain at the peak (RL: beta d*; best-of-n: alpha^2 / (4 beta))."""
    d_measured: tuple[float, float] | None = None
    """The smallest and largest d > 0 the fit saw: a peak outside them is the form's extrapolation, not a
    measurement (a run stopped early, or one whose first checkpoint is already past the peak)."""

    @property
    def kl_peak(self) -> float | None:
        return None if self.d_peak is None else self.d_peak ** 2

    @property
    def peak_extrapolated(self) -> bool:
        """True when the fitted peak lies outside the measured d (no peak: False)."""
        if self.d_peak is None or self.d_measured is None:
            return False
        return not self.d_measured[0] <= self.d_peak <= self.d_measured[1]


def gao_fit(d, gain, form: str = "rl") -> GaoFit | None:
    """Least squares of gain on the form's two terms (linear in alpha and beta, no intercept: R(0) = 0).
    Points at d = 0 are kept (they fit exactly). None with fewer than 3 points at d > 0."""
    d, gain = np.asarray(d, dtype=float), np.asarray(gain, dtype=float)
    if np.sum(d > 0) < 3:
        return None
    if form == "rl":
        with np.errstate(divide="ignore", invalid="ignore"):
            dlog = np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)
        design = np.stack([d, -dlog], axis=1)
    elif form == "bon":
        design = np.stack([d, -d * d], axis=1)
    else:
        raise ValueError(form)
    (alpha, beta), *_ = np.linalg.lstsq(design, gain, rcond=None)
    fitted = design @ np.array([alpha, beta])
    ss_tot = float(((gain - gain.mean()) ** 2).sum())
    r2 = 1.0 - float(((gain - fitted) ** 2).sum()) / ss_tot if ss_tot > 0 else 0.0
    alpha, beta = float(alpha), float(beta)
    seen = (float(d[d > 0].min()), float(d.max()))
    if beta <= 0:
        return GaoFit(form, alpha, beta, r2, None, None, seen)
    if form == "rl":
        d_peak = math.exp(alpha / beta - 1.0) if alpha / beta - 1.0 < 700 else None
        return GaoFit(form, alpha, beta, r2, d_peak, None if d_peak is None else beta * d_peak, seen)
    return GaoFit(form, alpha, beta, r2, alpha / (2 * beta), alpha ** 2 / (4 * beta), seen)


def gao_curve(fit: GaoFit, d) -> np.ndarray:
    d = np.asarray(d, dtype=float)
    if fit.form == "rl":
        return d * (fit.alpha - fit.beta * np.log(np.where(d > 0, d, 1.0)))
    return d * (fit.alpha - fit.beta * d)
