"""The common budget: exact reward-query counts and identical checkpoint marks."""

import json
from pathlib import Path

import pytest

from bench.train.budget import BudgetExceeded, CountedReward, RewardBudget
from bench.spec.runspec import RunSpec
from tests.helpers import CountingReward, make_spec, register_counting_reward


def test_epochs_end_on_marks():
    b = RewardBudget(50, [0, 25, 50])
    sizes = []
    while not b.exhausted:
        n = b.epoch_size(16)
        sizes.append(n)
        b.charge(n)
    assert sizes == [16, 9, 16, 9] and b.used == 50
    assert b.epoch_size(16) == 0
    with pytest.raises(BudgetExceeded):
        b.charge(1)


def test_marks_are_evenly_spaced():
    spec = RunSpec(method="m", reward="r", backbone="b", suite="s", seed=0, budget=256, num_checkpoints=10,
                   num_steps=5, guidance_scale=5.0, eta=1.0, samples_per_epoch=32, train_batch_size=8,
                   sample_batch_size=8, train_prompts="p")
    assert spec.checkpoint_marks() == [0, 26, 51, 77, 102, 128, 154, 179, 205, 230, 256]


def test_counted_reward_refuses_queries_beyond_the_allowance():
    r = CountedReward(CountingReward())
    r.allow(3)
    import torch
    r(torch.zeros(2, 3, 4, 4), ["a", "b"])
    with pytest.raises(BudgetExceeded):
        r(torch.zeros(2, 3, 4, 4), ["a", "b"])
    assert r.queries == 2


# the TDPO variants that differ from tdpo-r only in WHICH neurons a reset picks: their sampling, updates and
# budget are tdpo-r's code path, so the default suite checks tdpo and tdpo-r and these run with -m slow
_SAME_BUDGET_PATH = ("tdpo-reset-all", "tdpo-reset-dormant", "tdpo-r-leaky", "tdpo-policy-reset-dormant",
                     "tdpo-policy-reset-active")


def _every_method():
    from bench.spec.catalog import methods

    return [pytest.param(m, marks=pytest.mark.slow) if m in _SAME_BUDGET_PATH else m for m in methods.names()]


@pytest.mark.parametrize("method", _every_method())
def test_every_method_spends_exactly_the_budget(method, tmp_path, tiny_dir):
    """Each method, with a counting reward, makes exactly N queries and hits the same marks (one test per
    method, so pytest-xdist spreads them)."""
    from bench.train.runner import train_run

    register_counting_reward()
    CountingReward.calls.clear()
    # DiffusionNFT updates once per 1152 / m images: at m = 1 this run would end before its first update
    spec = make_spec(method, num_steps=3, samples_per_epoch=16, budget=40, num_checkpoints=4,
                     multiplier=100.0 if method == "diffusion-nft" else 1.0)
    train_run(spec, tmp_path, progress=False)
    assert sum(CountingReward.calls) == 40, method
    run_dir = tmp_path / "runs" / spec.run_name
    rows = [json.loads(l) for l in (run_dir / "checkpoints.jsonl").read_text().splitlines()]
    assert all((run_dir / r["path"]).is_file() for r in rows)
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    assert rows[-1]["sampled_images"] == 40 and rows[-1]["gradient_updates"] > 0
    assert [r["reward_queries"] for r in rows] == [0, 10, 20, 30, 40]
