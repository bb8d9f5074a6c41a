"""The results database as tidy pandas DataFrames, for notebooks and the report alike.

Every frame comes straight from DuckDB (`.df()`), in long form, with the run's method, reward, suite and
seed joined in, so `res.scores.groupby(["method", "reward_queries", "reward"])["value"].mean()` is the
matrix behind every figure. `runs` lists every stored run with its status; the other frames hold the finished
runs only, as the report does (a run still training or killed part-way has logged part of its training).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Results:
    runs: "object"
    """One row per run, finished or not: run_id, method, reward (the training reward), suite, seed, budget, status,
    config..."""
    checkpoints: "object"
    """One row per checkpoint: reward queries, epoch, gradient updates, compute counts, with the run's method."""
    train_metrics: "object"
    """Per-epoch training metrics, long: run_id, method, seed, epoch, reward_queries, metric, value."""
    scores: "object"
    """Per evaluation image, long: run_id, method, seed, train_reward, reward_queries, reward, prompt_set,
    prompt, sample_index, eval_seed, value (reward 'kl-to-pretrained' is each image's KL)."""
    eval_metrics: "object"
    """Set-level evaluation metrics (diversity), long: run_id, method, seed, reward_queries, prompt_set, metric."""
    curves: "object"
    """Mean score per run, prompt set, checkpoint and reward: the points of every cross-reward curve."""
    leaderboard: "object"
    """The report's leaderboard, long: train_reward, prompt_set, matched_level, method, seeds, verdict,
    column, mean, ci95 (half-width, Student t over seeds), boot_low/boot_high (BCa bootstrap interval of
    'queries to level', 3+ seeds)."""


def load_results(db) -> Results:
    from bench.report.build import boards_frame, build_boards
    from bench.report.frames import JOIN_RUN, figure_frames
    from bench.store.database import open_results

    con = open_results(Path(db))
    try:
        runs = con.execute("SELECT * FROM runs ORDER BY run_id").df()
        checkpoints = con.execute(f"SELECT * FROM checkpoints {JOIN_RUN} ORDER BY run_id, reward_queries").df()
        frames = figure_frames(con)
        scores = con.execute(f"SELECT * FROM scores {JOIN_RUN} ORDER BY ALL").df()
        board = boards_frame(build_boards(con))
    finally:
        con.close()
    return Results(runs, checkpoints, frames["train"], scores, frames["sets"], frames["curves"], board)
