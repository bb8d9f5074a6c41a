"""The scale rule (bench/spec/scale.py) on hand-computed cases, and the fidelity fixes it carries."""

import math

import pytest

from bench.spec.catalog import methods
from bench.spec.scale import SOURCE_LATENT_DIMS, Scale, effective_hparams, ppo_shape, stat_tracker_activity

TOY = Scale(num_steps=10, samples_per_epoch=32, latent_dims=256, budget=640, multiplier=8.0)
SD = Scale(num_steps=50, samples_per_epoch=256, latent_dims=SOURCE_LATENT_DIMS, budget=25_600, multiplier=1.0)


def eff(method, scale, **over):
    entry = methods.get(method)
    return effective_hparams(entry, {**entry.meta["hparams"], **over}, scale)


def test_sd_scale_is_the_source_setting():
    """At the source's own scale the rule is the identity: Table 1 of the TDPO paper."""
    assert ppo_shape(methods.get("ddpo-2").meta["source"], SD) == (128, 50, 2.0)
    assert ppo_shape(methods.get("ddpo-100").meta["source"], SD) == (8, 16, 100.0)
    assert ppo_shape(methods.get("tdpo").meta["source"], SD) == (128, 1, 100.0)
    for m in ("ddpo-2", "tdpo-r", "prdp"):
        assert eff(m, SD)["clip_range"] == methods.get(m).meta["hparams"]["clip_range"]
    assert eff("dense-dpo", SD)["pairs_per_step"] == 32 and eff("dense-dpo", SD)["delta"] == 5e-4
    assert eff("tdpo-r", SD)["reset_every"] == 10  # every 10 of 100 epochs
    assert eff("alignprop", SD)["update_samples"] == 128


def test_toy_shapes_by_hand():
    # updates per epoch U = m * U0 * S / S0 = 8 * U0 * 32 / 256 = U0
    # ddpo-2: U = 2, tau = round(50 * 10/50) = 10, b = round(32 * 10 / (2 * 10)) = 16
    assert ppo_shape(methods.get("ddpo-2").meta["source"], TOY) == (16, 10, 2.0)
    # ddpo-100: U = 100, tau = round(16 * 10/50) = round(3.2) = 3, b = round(320 / 300) = 1
    assert ppo_shape(methods.get("ddpo-100").meta["source"], TOY) == (1, 3, 100.0)
    # tdpo: U = 100, tau = max(1, round(0.2)) = 1, b = round(320 / 100) = 3
    assert ppo_shape(methods.get("tdpo").meta["source"], TOY) == (3, 1, 100.0)
    # updates per query are m times the source's for every method
    for m in ("ddpo-2", "ddpo-100", "tdpo", "alignprop", "prdp", "dense-dpo"):
        src = methods.get(m).meta["source"]
        assert eff(m, TOY)["updates_per_query"] == pytest.approx(8 * src["updates_per_epoch"] / src["samples_per_epoch"])
    # alignprop: U = 8 * 2 * 32/256 = 2 updates of 16 chains
    assert eff("alignprop", TOY)["update_samples"] == 16


def test_bounds_scale_with_one_over_sqrt_latent_dims():
    # sqrt(16384 / 256) = 8
    assert eff("ddpo-100", TOY)["clip_range"] == pytest.approx(8e-4)
    assert eff("prdp", TOY)["clip_range"] == pytest.approx(8e-6)
    assert eff("dense-dpo", TOY)["delta"] == pytest.approx(4e-3)
    half = Scale(num_steps=10, samples_per_epoch=32, latent_dims=4 * 32 * 32, budget=640, multiplier=8.0)
    assert eff("tdpo", half)["clip_range"] == pytest.approx(2e-4)  # sqrt(16384 / 4096) = 2


def test_pairs_discounts_periods_and_coefficients():
    # dense DPO: 4000 * 32 / 24000 = 5.33 pair uses per query, 8 * 4000/24000 = 1.33 updates per query -> 4 pairs
    assert eff("dense-dpo", TOY)["pairs_per_step"] == 4
    assert eff("dense-dpo", TOY)["gamma"] == pytest.approx(0.9 ** 5)
    # 640 / 32 = 20 epochs: every 10th of the run -> every 2 epochs
    assert eff("tdpo-r", TOY)["reset_every"] == 2
    # tdpo-kl: 0.1 / (0.2 * T * clip): 0.1 / (0.2 * 10 * 8e-4) = 62.5 on the toy, 0.1 / (0.2 * 50 * 1e-4) = 100 on SD
    assert eff("tdpo-kl", TOY)["kl_penalty_coef"] == pytest.approx(62.5)
    assert eff("tdpo-kl", SD)["kl_penalty_coef"] == pytest.approx(100.0)
    assert eff("tdpo", TOY)["kl_penalty_coef"] == 0.0
    # PRDP: updates per epoch 8 * 10 * 32 / 512 = 5; beta = sigma * D * T: D * T = 256 * 10
    assert eff("prdp", TOY)["updates_per_epoch"] == pytest.approx(5.0)
    assert eff("prdp", TOY)["beta_nats_per_unit"] == 2560
    # a numeric override at the source scale goes through the same rule
    assert eff("ddpo-2", TOY, clip_range=2e-4)["clip_range"] == pytest.approx(1.6e-3)


def test_stat_tracker_activity_by_hand():
    # one prompt, 4 samples per epoch, min count 6: the buffer holds 4, then 8 -> first epoch falls back, second not
    s = Scale(num_steps=10, samples_per_epoch=4, budget=8)
    assert stat_tracker_activity(1, s, min_count=6, buffer_size=32) == 0.5
    # a buffer smaller than min_count never activates
    assert stat_tracker_activity(1, s, min_count=6, buffer_size=5) == 0.0


def test_effective_table_lists_every_method():
    from bench.spec.listing import effective_table

    title, rows = effective_table("toy")
    assert {r[0] for r in rows} == set(methods.names())
    by = {r[0]: r for r in rows}
    # the toy default: T=10, S=32, m=16: ddpo-100 U=200, tau 3, b=round(320/600)=1 (the floor: 8.56x);
    # tdpo U=200, tau 1, b=round(1.6)=2 -> 160 updates (12.80x)
    assert by["ddpo-100"][4] == "1 samples x 3 steps" and by["tdpo"][4] == "2 samples x 1 steps"
    assert by["ddpo-100"][3] == "floor: one sample per update" and by["ddpo-2"][3] == "-"
    assert by["ddpo-2"][2] == "16.00x" and by["tdpo"][2] == "12.80x" and by["ddpo-100"][2] == "8.56x"
    assert "m=16" in title


def test_list_methods_effective_cli():
    from tests.conftest import run_cli

    r = run_cli("list", "methods", "--effective")
    assert r.returncode == 0, r.stderr
    assert "updates/query" in r.stdout and "sd-v1-4:" in r.stdout and "toy:" in r.stdout
    assert "kl coef 62.5" in r.stdout or "kl coef" in r.stdout
    assert math.isfinite(float(r.stdout.split("ddpo-100")[1].split()[0]))


@pytest.mark.parametrize("T,S,D,m", [(10, 32, 4 * 8 * 8, 16.0), (50, 256, 4 * 64 * 64, 1.0), (20, 64, 4 * 16 * 16, 8.0),
                                      (6, 16, 4 * 8 * 8, 4.0)])
def test_every_method_below_m_says_why(T, S, D, m):
    """At the toy and SD defaults and two other scales: every method gets m times its source's updates per
    query, or its row says why not: a floor (one sample, chain or prompt group per update) or rounding. At SD
    scale (m = 1) nothing is below m. The hand-checked toy rows: DDPO-100 would need 0.53 samples per update
    (floor, 8.56x); the TDPO family 1.6 samples, rounded to 2 (12.8x); PRDP one prompt group (3.2x)."""
    from bench.spec.scale import Scale, effective_rows

    rows = {r["method"]: r for r in effective_rows(Scale(num_steps=T, samples_per_epoch=S, latent_dims=D,
                                                         multiplier=m), 48)}
    for name, r in rows.items():
        if r["multiple_of_source"] < m * (1 - 1e-9):
            assert r["below_m"].startswith(("floor:", "rounding")), (name, r)
        else:
            assert r["below_m"] == "", (name, r)
    if m == 1.0:
        assert all(not r["below_m"] for r in rows.values())
    if (T, S, m) == (10, 32, 16.0):
        assert rows["ddpo-100"]["multiple_of_source"] == pytest.approx(8.5625, rel=1e-3)
        assert rows["ddpo-100"]["below_m"] == "floor: one sample per update"
        assert rows["tdpo-r"]["below_m"] == "rounding: 2 samples for 1.6"
        assert rows["tdpo-r"]["multiple_of_source"] == pytest.approx(12.8)
        assert rows["prdp"]["below_m"] == "floor: one prompt group per update"
        assert rows["grpo"]["below_m"] == "" and rows["ddpo-2"]["below_m"] == ""
