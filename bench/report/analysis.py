"""Numbers for the leaderboard, read only from the DuckDB store.

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
    """Two-sided 95% (upper 97.5%) quantile of Student's t with floor(df) degrees of freedom, to 3 decimals as
    printed in statistics tables (12.706, 4.303, ...), and the normal's 1.960 beyond 30 df: the convention the
    leaderboard's CIs have always used, so its numbers do not move."""
    from scipy import stats

    k = max(int(math.floor(df)), 1)
    return round(float(stats.t.ppf(0.975, k) if k <= 30 else stats.norm.ppf(0.975)), 3)


def mean_ci(values) -> tuple[float, float | None]:
    """Mean and the half-width of its 95% confidence interval over the values (None for one value)."""
    v = np.asarray(values, dtype=float)
    m = float(v.sum() / len(v))
    if len(v) < 2:
        return m, None
    return m, t975(len(v) - 1) * float(np.sqrt(((v - m) ** 2).sum() / (len(v) - 1))) / math.sqrt(len(v))


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
    rows = con.execute("""
        SELECT r.run_id, r.method, r.seed, r.reward, s.prompt_set, s.reward_queries, s.reward, avg(s.value)
        FROM scores s JOIN runs r USING (run_id)
        GROUP BY ALL ORDER BY r.run_id, s.prompt_set, s.reward_queries, s.reward
    """).fetchall()
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


def paired_change(con, run_ids: list[str], reward: str, prompt_set: str,
                  q_from: int = 0, q_to: int | None = None) -> tuple[float | None, float | None]:
    """Mean and 95% CI of the paired change between two checkpoints. One run: over the
    evaluation images (the seed's own noise only); two or more: over the runs' mean changes
    (run-to-run noise). (None, None) when a run lacks either checkpoint."""
    per_run = [paired_changes(con, r, reward, prompt_set, q_from, q_to) for r in run_ids]
    if not per_run or not all(per_run):
        return None, None
    if len(per_run) == 1:
        return mean_ci(per_run[0])
    return mean_ci([sum(d) / len(d) for d in per_run])


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


def gold_shape(con, runs: list[Curve], gold: str) -> GoldShape | None:
    """Classify a method's gold curve on one prompt set. The peak is the checkpoint with the
    highest mean over seeds; 'rises then falls' needs both the rise to it and the fall after it
    to exclude zero. (The peak is chosen on the same images, so the two CIs are optimistic by
    the selection; the report says so.)"""
    if not runs or any(gold not in c.scores for c in runs):
        return None
    queries = runs[0].queries
    if any(c.queries != queries for c in runs) or len(queries) < 2:
        return None
    curve = [sum(c.scores[gold][i] for c in runs) / len(runs) for i in range(len(queries))]
    peak = queries[max(range(len(curve)), key=lambda i: (curve[i], -i))]
    ids, pset = [c.run_id for c in runs], runs[0].prompt_set
    rise = paired_change(con, ids, gold, pset, 0, peak) if peak != queries[0] else (0.0, None)
    fall = paired_change(con, ids, gold, pset, peak, queries[-1]) if peak != queries[-1] else (0.0, None)
    total = paired_change(con, ids, gold, pset, queries[0], queries[-1])
    sig_up = lambda c: c[0] is not None and c[1] is not None and c[0] - c[1] > 0
    sig_down = lambda c: c[0] is not None and c[1] is not None and c[0] + c[1] < 0
    if sig_up(rise) and sig_down(fall):
        shape = "rises then falls"
    elif sig_down(total):
        shape = "falls"
    elif sig_up(total):
        shape = "rises"
    else:
        shape = "flat"
    return GoldShape(shape, peak, rise, fall, total)


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
