"""The tidy DataFrames behind every figure, straight from DuckDB (`.df()`), in long form, with the run's
method, reward and seed joined in. The report draws from them and `load_results` returns them."""

from __future__ import annotations


FINISHED = "status = 'finished'"
"""The runs every table and figure reads: a run still training, killed (it stays 'running') or failed has logged
part of its training, which would enter the means beside finished runs (`unfinished_line` names them)."""
JOIN_RUN = f"JOIN (SELECT run_id, method, seed, reward AS train_reward FROM runs WHERE {FINISHED}) r USING (run_id)"


def curves_frame(con):
    """Mean score per run, prompt set, checkpoint and reward, long (the points of every curve)."""
    return con.execute(f"""SELECT run_id, method, seed, train_reward, prompt_set, reward_queries, reward,
                                  avg(value) AS value, count(*) AS images
                           FROM scores {JOIN_RUN} GROUP BY ALL ORDER BY ALL""").df()


def train_frame(con):
    return con.execute(f"SELECT * FROM train_metrics {JOIN_RUN} ORDER BY run_id, epoch, metric").df()


def sets_frame(con):
    import pandas as pd

    return con.execute(f"SELECT * FROM eval_metrics {JOIN_RUN} ORDER BY ALL").df() \
        if _has(con, "eval_metrics") else pd.DataFrame(columns=["run_id", "method", "seed", "train_reward",
                                                               "prompt_set", "reward_queries", "metric", "value"])


def figure_frames(con) -> dict:
    """The frames every figure of the report is drawn from (the same as `load_results`' curves,
    train_metrics and eval_metrics)."""
    return dict(curves=curves_frame(con), train=train_frame(con), sets=sets_frame(con))


def _has(con, table: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]).fetchone()[0])
