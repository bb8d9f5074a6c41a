"""End to end through the command line: rows in DuckDB, skip on re-run."""

import json

import duckdb
import pytest

from tests.conftest import run_cli


@pytest.mark.slow  # the grid, marks and update counts are also checked by test_report, test_plugins, test_budget, test_ddpo
def test_run_ddpo_jpeg_end_to_end(tmp_path):
    args = ["run", "--methods", "ddpo-2,ddpo-100", "--reward", "jpeg-compressibility", "--budget", "24",
            "--num-steps", "4", "--samples-per-epoch", "16", "--train-batch-size", "8", "--num-checkpoints", "2",
            "--update-multiplier", "8", "--out", str(tmp_path), "--no-progress", "--no-eval",
            "--workers", "1"]  # one process: grid workers would each pay the imports again (test_grid covers them)
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    db = tmp_path / "bench.duckdb"
    con = duckdb.connect(str(db), read_only=True)
    runs = con.execute("select run_id, method, status, suite, budget, config, package_versions, git_commit "
                       "from runs order by method").fetchall()
    assert [(m, s, su, b) for _, m, s, su, b, *_ in runs] == [
        ("ddpo-100", "finished", "toy", 24), ("ddpo-2", "finished", "toy", 24)]
    for run_id, method, *_, config, versions, commit in runs:
        cfg = json.loads(config)
        assert cfg["method"] == method and cfg["num_steps"] == 4 and cfg["hparams"]["lr"] in (3e-4, 1e-4)
        assert json.loads(versions)["torch"] and commit
        assert run_id.startswith(f"{method}_jpeg-compressibility_toy_s0_")
    marks = con.execute("select run_id, list(reward_queries order by reward_queries) from checkpoints group by 1").fetchall()
    assert all(m == [0, 12, 24] for _, m in marks) and len(marks) == 2
    # epochs of 16 are cut at the marks 12, 24: 2 epochs of 12
    epochs = dict(con.execute("select run_id, count(distinct epoch) from train_metrics group by 1").fetchall())
    assert set(epochs.values()) == {2}
    updates = dict(con.execute("select r.method, max(c.gradient_updates) from checkpoints c join runs r using (run_id) "
                               "group by 1").fetchall())
    # the scale rule at T=4, S=16, m=8: ddpo-2 makes 8 * 2 * 16/256 = 1 update per epoch of 16 samples x 4 steps
    # (whole: an epoch cut to 12 still makes 1, its data is never dropped); ddpo-100 8 * 100/256 = 3.125 updates
    # per query, each 64/50 = 1.28 sample-steps (1 or 2 rows): exactly 3.125 * 24 = 75 over the run
    assert updates == {"ddpo-2": 2 * 1, "ddpo-100": 75}
    rewards = con.execute("select value from train_metrics where metric = 'reward_mean'").fetchall()
    assert all(-10 < v < 0 for (v,) in rewards)  # minus kB of a 32x32 JPEG
    n_rows = con.execute("select (select count(*) from checkpoints) + (select count(*) from train_metrics)").fetchone()[0]
    fwd, bwd = con.execute("select sum(f), sum(b) from (select arg_max(unet_forward, reward_queries) f, "
                           "arg_max(unet_backward, reward_queries) b from checkpoints group by run_id)").fetchone()
    per_method = dict(con.execute("select method, arg_max(unet_backward, reward_queries) from checkpoints "
                                  "join runs using (run_id) group by method").fetchall())
    con.close()
    # the FLOP floor's rows: sampling is 2 runs x 24 images x 2 T (CFG) = 384 forward rows, training the rest
    from bench.perf import floor_rows

    rows, summary = floor_rows(db, tmp_path, repeat=1, batch=8)  # a small probe: the rows are under test
    table = {r[0]: r for r in rows}
    assert table["sampling"][1:3] == ("384", "0") and table["training"][1:3] == (f"{fwd - 384:,}", f"{bwd:,}")
    assert table["evaluation"][1] == "0" and table["whole grid"][1] == f"{fwd:,}"  # --no-eval
    assert table["sampling"][4] == "48" and table["whole grid"][4] == "48"  # every image decoded once, nothing else
    assert summary["costs"]["forward"] > 0 and summary["costs"]["backward"] > 0 and summary["ratio"] > 0
    # training per method: each method's own backward rows, and together the training phase's rows and seconds
    by = {r[0]: r for r in summary["training_by_method"]}
    assert {m: by[m][2] for m in by} == {m: f"{b:,}" for m, b in per_method.items()}
    assert sum(int(r[1].replace(",", "")) for r in by.values()) == fwd - 384
    assert abs(sum(float(r[5]) for r in by.values()) - float(table["training"][6])) < 0.15
    # a copy of the database away from its run folders: their seconds are read there, so it is refused, not zero
    import shutil

    (tmp_path / "away").mkdir()
    shutil.copy(db, tmp_path / "away" / "bench.duckdb")
    away = run_cli("perf", "--db", str(tmp_path / "away" / "bench.duckdb"))
    assert away.returncode == 2 and "2 of the 2 runs" in away.stderr and len(away.stderr.strip().splitlines()) == 1, \
        away.stderr

    again = run_cli(*args)
    assert again.returncode == 0 and again.stdout.count("skip ") == 2, again.stdout
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("select (select count(*) from checkpoints) + (select count(*) from train_metrics)").fetchone()[0] == n_rows
    con.close()
    assert "reward@last" in again.stdout  # the summary table


@pytest.mark.slow  # a learning check (about 30 s); AlignProp's machinery is in test_alignprop, test_budget, test_resume
def test_alignprop_raises_the_toy_aesthetic(tmp_path):
    """AlignProp on the default (toy) backbone: the proxy aesthetic goes up within a small budget."""
    r = run_cli("run", "--methods", "alignprop", "--reward", "aesthetic", "--budget", "64", "--num-steps", "6",
                "--samples-per-epoch", "16", "--train-batch-size", "8", "--num-checkpoints", "2",
                "--out", str(tmp_path), "--no-progress", "--no-eval")
    assert r.returncode == 0, r.stderr[-3000:]
    con = duckdb.connect(str(tmp_path / "bench.duckdb"), read_only=True)
    rewards = [v for (v,) in con.execute("select value from train_metrics where metric = 'reward_mean' "
                                         "order by epoch").fetchall()]
    queries = con.execute("select max(reward_queries) from checkpoints").fetchone()[0]
    con.close()
    assert queries == 64 and len(rewards) == 4
    # one update per epoch of 16 (the scale rule at m = 8): the last two epochs are well above the first
    assert sum(rewards[2:]) / 2 > rewards[0] + 0.25, rewards


def test_alignprop_refuses_a_non_differentiable_reward(tmp_path):
    r = run_cli("run", "--methods", "alignprop", "--reward", "jpeg-compressibility", "--out", str(tmp_path))
    assert r.returncode == 2 and "not differentiable" in r.stderr and len(r.stderr.strip().splitlines()) == 1
