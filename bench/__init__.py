"""overopt-bench: benchmark reward fine-tuning of text-to-image diffusion models and measure reward
overoptimization. In a notebook:

    from bench import load_results
    res = load_results("results/bench.duckdb")
    res.scores.head()        # one row per evaluation image: run, method, seed, queries, reward, set, value
    res.curves               # per run, prompt set, checkpoint and reward: the mean score (tidy)
    res.leaderboard          # the report's leaderboard, long: one row per board, method and column

The package imports nothing heavy until a function runs (`python -m bench list` stays instant).
"""

from bench.version import __version__  # noqa: F401


def load_results(db="results/bench.duckdb"):
    """The results database as pandas DataFrames (see bench.report.results.Results)."""
    from bench.report.results import load_results as _load

    return _load(db)
