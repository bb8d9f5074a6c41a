"""The schedule that makes updates per query exact where whole numbers do not divide (bench/train/updates.py,
bench/spec/scale.py): sizes with an exact mean, every row once, the fraction of an update carried over epochs."""

import numpy as np
import pytest
import torch

from bench.spec.scale import half_up, updates_this_epoch
from bench.train.updates import scheduled_windows, window_sizes, windows


def test_window_sizes_have_the_exact_mean_and_cover_every_row():
    # the TDPO family on the toy: 320 rows in 200 updates -> 120 of 2 rows and 80 of 1 (mean 1.6)
    sizes = window_sizes(np.random.default_rng(0), 320, 200)
    assert len(sizes) == 200 and sum(sizes) == 320
    assert sizes.count(2) == 120 and sizes.count(1) == 80
    assert sizes == window_sizes(np.random.default_rng(0), 320, 200)  # seeded
    assert sizes != window_sizes(np.random.default_rng(1), 320, 200)  # ... and shuffled, not sorted
    assert window_sizes(np.random.default_rng(0), 10, 3) in ([4, 3, 3], [3, 4, 3], [3, 3, 4])
    assert window_sizes(np.random.default_rng(0), 5, 9) == [1] * 5  # a floor: one row per update


def test_updates_carry_their_fraction_across_epochs():
    # dense DPO on the toy: 8/3 updates per query, 32-query epochs -> 85, 86, 85 (round(85.33), round(170.67)...)
    per_query = 16 * 4000 / 24000
    counts = [updates_this_epoch(q, 32, per_query) for q in (0, 32, 64)]
    assert counts == [85, 86, 85] and sum(counts) == 256 == half_up(per_query * 96)
    # an epoch cut at a mark into 16 + 16 queries gets the same total as one of 32
    assert updates_this_epoch(0, 16, per_query) + updates_this_epoch(16, 16, per_query) == 85
    assert updates_this_epoch(0, 1, 0.125) == 1  # at least one: an epoch's data is never dropped
    assert updates_this_epoch(0, 32, 6.25, most=10) == 10
    assert half_up(2.5) == 3 and half_up(6.25 * 32) == 200 and half_up(0.1 * 3 * 5) == 2  # 1.5000000000000002


def _rows(ws):
    return [(int(s), int(t)) for w in ws for s, t in zip(w.samples, w.steps)]


@pytest.mark.parametrize("order", ["timestep", "minibatch"])
def test_scheduled_windows_use_every_row_once_in_the_loop_order(order):
    rng = np.random.default_rng(3)
    n, T = 6, 4
    perm = torch.as_tensor(rng.permutation(n))
    t_perm = torch.as_tensor(np.stack([rng.permutation(T) for _ in range(n)]))
    sizes = window_sizes(rng, n * T, 15)  # 24 rows, mean 1.6
    ws = scheduled_windows(perm, t_perm, 1, order, sizes)
    assert [len(w) for w in ws] == sizes
    assert sorted(_rows(ws)) == [(i, j) for i in range(n) for j in range(T)]
    flat = _rows(ws)
    if order == "timestep":  # step position outer: the first n rows are every sample at its first position
        assert flat[:n] == [(int(perm[k]), int(t_perm[k, 0])) for k in range(n)]  # t_perm rows by position
    else:  # minibatch of one sample outer: the first T rows are one sample's T steps in its permuted order
        assert flat[:T] == [(int(perm[0]), int(t_perm[0, j])) for j in range(T)]
    with pytest.raises(ValueError, match="sum to"):
        scheduled_windows(perm, t_perm, 1, order, sizes[:-1])


@pytest.mark.parametrize("order,batch,acc", [("minibatch", 2, 3), ("timestep", 3, 1), ("minibatch", 6, 4)])
def test_constant_sizes_are_the_references_windows(order, batch, acc):
    """Where the rule's size is whole, cutting the loop's rows every batch x accumulation rows is exactly the
    references' grouping of micro-steps (the methods keep the references' path there, bit for bit)."""
    rng = np.random.default_rng(0)
    n, T = 6, 4
    perm = torch.as_tensor(rng.permutation(n))
    t_perm = torch.as_tensor(np.stack([rng.permutation(T) for _ in range(n)]))
    ref = windows(perm, t_perm, batch, acc, order)
    cut = scheduled_windows(perm, t_perm, batch, order, [batch * acc] * (n * T // (batch * acc)))
    assert _rows(ref) == _rows(cut) and [len(w) for w in ref] == [len(w) for w in cut]
