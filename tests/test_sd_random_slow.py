"""SD scale offline: Stable Diffusion v1.4's architecture (random weights, 128 px) trained end to end on the
native HPSv2 and ImageReward loaders, with random full-size reward checkpoints in the official formats
(scripts/random_reward_weights.py). Slow (minutes): `pytest -m slow`."""

import subprocess
import sys

import duckdb
import pytest

from tests.conftest import ROOT, run_cli


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    out = tmp_path_factory.mktemp("weights")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "random_reward_weights.py"), str(out)], check=True)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("reward", ["hpsv2", "imagereward"])
def test_sd_architecture_runs_end_to_end_offline_with_random_weights(reward, weights, tmp_path):
    env = {"BENCH_HPSV2": str(weights / "HPS_v2_compressed.pt"), "BENCH_IMAGEREWARD": str(weights / "ImageReward.pt"),
           "BENCH_BERT_TOKENIZER": str(weights / "bert-base-uncased")}
    r = run_cli("run", "--methods", "ddpo-2", "--backbone", "sd-v1-4-random-128", "--reward", reward, "--budget", "2",
                "--num-steps", "2", "--samples-per-epoch", "2", "--num-checkpoints", "1", "--no-eval",
                "--out", str(tmp_path), "--no-progress", "--workers", "1", env=env, timeout=3000)
    assert r.returncode == 0, r.stderr[-3000:]
    con = duckdb.connect(str(tmp_path / "bench.duckdb"), read_only=True)
    status, queries = con.execute("select r.status, max(c.reward_queries) from runs r join checkpoints c "
                                  "using (run_id) group by 1").fetchone()
    rewards = [v for (v,) in con.execute("select value from train_metrics where metric = 'reward_mean'").fetchall()]
    con.close()
    assert status == "finished" and queries == 2 and rewards and all(v == v for v in rewards)
