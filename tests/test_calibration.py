"""The resolving-power controls (bench/report/calibration.py) against answers known by construction: a null
rejects about alpha, an effect of known size is found at the computed power, both within simulation error."""

import math

import numpy as np
import pytest

from bench.report.calibration import (aa_false_positive_rate, paired_power, paired_t_rejects, power_curve,
                                      smallest_detectable, smallest_detectable_lambda)


def test_power_is_alpha_at_no_effect_and_the_inverse_holds():
    assert paired_power(0.0, 1.0, 7) == pytest.approx(0.05, abs=1e-12)
    d = smallest_detectable(0.38, 7)
    assert paired_power(d, 0.38, 7) == pytest.approx(0.8, abs=1e-9)
    # the usual approximation (t_0.975 + t_0.80) se is close to, and a little below, the exact noncentral value
    from scipy import stats

    approx = (stats.t.ppf(0.975, 6) + stats.t.ppf(0.8, 6)) * 0.38 / math.sqrt(7)
    assert approx < d < 1.05 * approx


def test_a_null_rejects_about_five_percent():
    """2,000 simulated studies with no difference (N = 5 pairs): rejections within 3 binomial standard errors
    of 5%."""
    rng = np.random.default_rng(1)
    hits = sum(paired_t_rejects(rng.normal(0, 1, 5), rng.normal(0, 1, 5)) for _ in range(2000))
    se = math.sqrt(0.05 * 0.95 / 2000)
    assert abs(hits / 2000 - 0.05) < 3 * se


@pytest.mark.parametrize("effect, sd, n", [(0.3, 0.38, 7), (0.5, 0.38, 5), (0.15, 0.38, 28)])
def test_an_effect_of_known_size_is_found_at_the_computed_power(effect, sd, n):
    rng = np.random.default_rng(2)
    sims = 2000
    hits = sum(paired_t_rejects(rng.normal(effect, sd, n), np.zeros(n)) for _ in range(sims))
    p = paired_power(effect, sd, n)
    assert abs(hits / sims - p) < 3 * math.sqrt(p * (1 - p) / sims)


def test_the_aa_control_counts_every_disjoint_split_and_finds_a_null_near_alpha():
    # 6 seeds, N = 3: C(6,3) x 3! pairings of the other three = 20 x 6 = 120 splits
    values = np.random.default_rng(3).normal(7.0, 0.4, 6)
    r = aa_false_positive_rate(values, 3)
    assert r.splits == 120 and r.n == 3 and 0.0 <= r.rate <= 1.0
    # many seeds of one method with no effect: sampled splits reject about 5%
    big = aa_false_positive_rate(np.random.default_rng(4).normal(7.0, 0.4, 400), 7, most=3000)
    assert big.splits == 3000 and abs(big.rate - 0.05) < 0.02
    with pytest.raises(ValueError, match="at least 8 seeds"):
        aa_false_positive_rate(values, 4)


def test_the_aa_rate_is_invariant_to_the_scores_location_and_scale():
    """The control reads differences of one method's seeds: shifting or rescaling every score changes nothing."""
    values = np.random.default_rng(5).normal(0, 1, 8)
    r = aa_false_positive_rate(values, 4)
    assert r.splits == 70 * 24  # C(8,4) x 4!
    assert aa_false_positive_rate(3.0 * values + 7.0, 4).rate == r.rate


def test_the_planted_power_curve_and_its_smallest_lambda():
    effects = {0.0: 0.0, 0.1: 0.1, 0.25: 0.25, 0.5: 0.5}  # gold rises 1:1 with lambda (by construction)
    curve = power_curve(effects, 0.38, 7)
    assert [lam for lam, _, _ in curve] == [0.0, 0.1, 0.25, 0.5]
    assert curve[0][2] == pytest.approx(0.05) and all(x[2] < y[2] for x, y in zip(curve, curve[1:]))
    lam = smallest_detectable_lambda(effects, 0.38, 7)
    assert lam == pytest.approx(smallest_detectable(0.38, 7), rel=1e-9)  # 1:1, so lambda equals the effect
    assert smallest_detectable_lambda({0.0: 0.0, 0.1: 0.05}, 0.38, 7) is None
