"""The scale rule (bench/spec/scale.py) on hand-computed cases, and the fidelity fixes it carries."""

import math

import pytest

from bench.spec.catalog import methods
from bench.spec.scale import SOURCE_LATENT_DIMS, Scale, effective_hparams, stat_tracker_activity
from methods.shapes import ppo_shape

TOY = Scale(num_steps=10, samples_per_epoch=32, latent_dims=256, budget=640, multiplier=8.0)
SD = Scale(num_steps=50, samples_per_epoch=256, latent_dims=SOURCE_LATENT_DIMS, budget=25_600, multiplier=1.0)


def eff(method, scale, **over):
    entry = methods.get(method)
    return effective_hparams(entry, {**entry.meta["hparams"], **over}, scale)


def test_sd_scale_is_the_source_setting():
    """At the source's own scale the rule is the identity: Table 1 of the TDPO paper."""
    # (loop width b, steps tau, rows z = S*T/U, updates U): every update whole, b * tau == z
    assert ppo_shape(methods.get("ddpo-2").meta["source"], SD) == (128, 50, 6400.0, 2.0)
    assert ppo_shape(methods.get("ddpo-100").meta["source"], SD) == (8, 16, 128.0, 100.0)
    assert ppo_shape(methods.get("tdpo").meta["source"], SD) == (128, 1, 128.0, 100.0)
    for m in ("ddpo-2", "tdpo-r", "prdp"):
        assert eff(m, SD)["clip_range"] == methods.get(m).meta["hparams"]["clip_range"]
    assert eff("dense-dpo", SD)["pairs_per_step"] == 32 and eff("dense-dpo", SD)["delta"] == 5e-4
    assert eff("tdpo-r", SD)["reset_every"] == 10  # every 10 of 100 epochs
    assert eff("alignprop", SD)["update_samples"] == 128
    assert eff("prdp", SD)["beta"] == 3e-5 and eff("dense-dpo", SD)["beta_tilde"] == 12.5


def test_toy_shapes_by_hand():
    # updates per epoch U = m * U0 * S / S0 = 8 * U0 * 32 / 256 = U0
    # ddpo-2: U = 2, z = 320 / 2 = 160 rows, tau = round(50 * 10/50) = 10, b = 160 / 10 = 16 (whole)
    assert ppo_shape(methods.get("ddpo-2").meta["source"], TOY) == (16, 10, 160.0, 2.0)
    # ddpo-100: U = 100, z = 3.2 rows, tau = round(16 * 10/50) = 3, b = round(3.2 / 3) = 1: not whole (3 != 3.2)
    assert ppo_shape(methods.get("ddpo-100").meta["source"], TOY) == (1, 3, 3.2, 100.0)
    # tdpo: U = 100, z = 3.2, tau = max(1, round(0.2)) = 1, b = round(3.2) = 3: not whole
    assert ppo_shape(methods.get("tdpo").meta["source"], TOY) == (3, 1, 3.2, 100.0)
    # the shape yields to the size: at m = 16, z = 1.6 < tau = 3 -> one sample (b = 1) over 1.6 steps
    assert ppo_shape(methods.get("ddpo-100").meta["source"], Scale(10, 32, 256, 640, 16.0)) == (1, 3, 1.6, 200.0)
    assert eff("ddpo-100", TOY)["update_rows"] == pytest.approx(3.2)
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
    # rule 7: the reference's critic makes 10 epochs x 100 = 1,000 updates between resets; TOY (m = 8) makes
    # 8 x 100 / 256 = 3.125 updates per query x 32 queries = 100 per epoch -> every 10 epochs of 20
    assert eff("tdpo-r", TOY)["reset_every"] == 10
    # m = 16 (the toy default): 200 per epoch -> 5; at 10 epochs (budget 320) still 5, where the share rule
    # (every tenth of the run) gave 1: a reset after every epoch
    m16 = Scale(num_steps=10, samples_per_epoch=32, latent_dims=256, budget=320, multiplier=16.0)
    assert eff("tdpo-r", m16)["reset_every"] == 5
    share = Scale(num_steps=10, samples_per_epoch=32, latent_dims=256, budget=320, multiplier=16.0,
                  reset_rule="share")
    assert eff("tdpo-r", share)["reset_every"] == 1
    assert eff("tdpo-r", Scale(**{**share.__dict__, "budget": 1920}))["reset_every"] == 6  # study v3: 60 epochs
    assert eff("tdpo-r", Scale(**{**m16.__dict__, "budget": 1920}))["reset_every"] == 5
    assert eff("tdpo-r", TOY, reset_every=7)["reset_every"] == 7  # a number is kept as given
    # tdpo-kl: 0.1 / (0.2 * T * clip): 0.1 / (0.2 * 10 * 8e-4) = 62.5 on the toy, 0.1 / (0.2 * 50 * 1e-4) = 100 on SD
    assert eff("tdpo-kl", TOY)["kl_penalty_coef"] == pytest.approx(62.5)
    assert eff("tdpo-kl", SD)["kl_penalty_coef"] == pytest.approx(100.0)
    assert eff("tdpo", TOY)["kl_penalty_coef"] == 0.0
    # PRDP: updates per epoch 8 * 10 * 32 / 512 = 5; beta 3e-5 * sqrt(256 / 16384) = 3.75e-6, so a pair's
    # target dr / beta stays the same number of clip ranges (clip 1e-6 * 8): (dr / beta) / clip is invariant
    assert eff("prdp", TOY)["updates_per_epoch"] == pytest.approx(5.0)
    assert eff("prdp", TOY)["beta"] == pytest.approx(3.75e-6)
    assert (0.5 / eff("prdp", TOY)["beta"]) / eff("prdp", TOY)["clip_range"] == pytest.approx((0.5 / 3e-5) / 1e-6)
    assert eff("prdp", TOY, beta="auto")["beta"] == "auto"  # the ablation: set from the first epoch's rewards
    assert eff("prdp", TOY)["beta_nats_per_unit"] == 2560  # beta=auto: sigma * D * T
    # dense DPO: beta_tilde 12.5 / 8, so beta_tilde * delta (the largest logit of a clamped log-ratio) is kept
    assert eff("dense-dpo", TOY)["beta_tilde"] * eff("dense-dpo", TOY)["delta"] == pytest.approx(12.5 * 5e-4)
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
    # the toy default: T=10, S=32, m=16: ddpo-100 U=200, z=1.6 rows < tau 3 -> one sample over 1.6 steps;
    # tdpo U=200, z=1.6 -> 1.6 samples x 1 step on average (schedules of 1 and 2): 16x, no floor anywhere
    assert by["ddpo-100"][8] == "1 sample x 1.6 steps" and by["tdpo"][8] == "1.6 samples x 1 steps"
    assert by["ddpo-2"][8] == "8 samples x 10 steps" and by["dense-dpo"][8] == "2 pairs x 1 step(s)"
    assert all(r[6] == "16.00x" and r[7] == "-" for r in rows if r[0] != "diffusion-nft"), rows
    # DiffusionNFT's updates wait for their data (one per 1152 / 16 = 72 images): the run of 1280 queries
    # holds 1280 / 72 = 17.8 of them, rounded to 18 whole ones, 18 / 17.78 x 16 = 16.20x
    assert by["diffusion-nft"][6:9] == ("16.20x", "whole updates in the run: 17.8 -> 18", "72 images x 9 noise levels")
    # rows per update beside the source's, and the count rule's optimiser: the source's own
    assert by["ddpo-100"][1:5] == ("1.6", "128", "0.0001", "0.9, 0.999, 1e-08")
    assert by["diffusion-nft"][1:3] == ("648", "1.037e+04")  # 72 images x 9 levels; 1,152 x 9 at the source
    assert "m=16" in title and "scale rule count" in title


def test_list_methods_effective_cli():
    from tests.conftest import run_cli

    r = run_cli("list", "methods", "--effective")
    assert r.returncode == 0, r.stderr
    assert "updates/query" in r.stdout and "sd-v1-4:" in r.stdout and "toy:" in r.stdout
    assert "kl coef 62.5" in r.stdout or "kl coef" in r.stdout
    assert math.isfinite(float(r.stdout.split("ddpo-100")[1].split()[0]))


@pytest.mark.parametrize("T,S,D,m", [(10, 32, 4 * 8 * 8, 16.0), (50, 256, 4 * 64 * 64, 1.0), (20, 64, 4 * 16 * 16, 8.0),
                                      (6, 16, 4 * 8 * 8, 4.0), (10, 32, 4 * 8 * 8, 64.0)])
def test_every_method_gets_m_or_a_marked_floor(T, S, D, m):
    """At the toy and SD defaults and three other scales, the run's updates (simulated by the schedule the
    methods follow) are m times the source's per query, or the row names a floor. m = 64 on the toy: DDPO-100
    and the TDPO family would need 0.4 sample-steps per update (floor: one), dense DPO 0.5 pairs."""
    from bench.spec.scale import Scale, effective_rows

    rows = {r["method"]: r for r in effective_rows(Scale(num_steps=T, samples_per_epoch=S, latent_dims=D,
                                                         multiplier=m), 48)}
    for name, r in rows.items():
        if r["below_m"].startswith("floor:"):
            assert r["multiple_of_source"] < m, (name, r)
        elif r["below_m"].startswith("whole updates in the run"):  # within half an update of m x source
            ideal = m * 25_600 / 1152  # m x the source's one update per 1,152 images, over Scale's default budget
            assert name == "diffusion-nft" and abs(r["effective_updates_per_query"] * 25_600 - ideal) <= 0.5, r
        elif r["below_m"]:  # an update holds at most one epoch's on-policy data
            assert r["below_m"].startswith("ceiling:") and r["multiple_of_source"] > m, (name, r)
        else:
            assert r["multiple_of_source"] == pytest.approx(m, rel=1e-3), (name, r)
    if m == 64.0:
        # a floor of one sample-step per update: T = 10 updates per sample, against 6.25 * 4 = 25 wanted
        assert rows["tdpo"]["below_m"] == "floor: one sample-step per update"
        assert rows["tdpo"]["effective_updates_per_query"] == pytest.approx(10)
        assert rows["dense-dpo"]["below_m"] == "floor: one pair per update"
        assert rows["ddpo-2"]["below_m"] == ""
    elif (T, S, m) == (6, 16, 4.0):
        # ddpo-2 wants 4 * 2 * 16 / 256 = 0.5 updates per epoch: one per epoch is the ceiling, 8x its source
        assert rows["ddpo-2"]["below_m"].startswith("ceiling:")
        assert rows["ddpo-2"]["multiple_of_source"] == pytest.approx(8.0)
    else:
        assert not any(r["below_m"] for n, r in rows.items() if n != "diffusion-nft"), rows


SDE_TOY = Scale(num_steps=10, samples_per_epoch=32, latent_dims=256, budget=1280, multiplier=4.0, rule="sde",
                temperature=16.0)


def test_sde_rule_by_hand():
    """Rule 10 at the toy's sde candidate (m = 4, tau = 16). DDPO-100: U = 4 x 100 x 32/256 = 50 updates of
    320/50 = 6.4 sample-steps against the source's 128: kappa = 0.05, kappa tau = 0.8: lr 1e-4 sqrt(0.8),
    1 - beta1 = 0.1 x 0.8, 1 - beta2 = 0.001 x 0.8, eps 1e-8 / sqrt(0.8). TDPO's critic learning rate too."""
    hp = eff("ddpo-100", SDE_TOY)
    assert hp["sde_kappa"] == pytest.approx(0.05)
    assert hp["lr"] == pytest.approx(1e-4 * math.sqrt(0.8))
    assert (hp["adam_beta1"], hp["adam_beta2"]) == (pytest.approx(0.92), pytest.approx(0.9992))
    assert hp["adam_eps"] == pytest.approx(1e-8 / math.sqrt(0.8))
    assert eff("tdpo", SDE_TOY)["critic_lr"] == pytest.approx(1e-4 * math.sqrt(0.8))
    # AlignProp: U = 4 x 2 x 32/256 = 1 update of 32 chains against 128: kappa tau = 0.25 x 16 = 4
    assert eff("alignprop", SDE_TOY)["lr"] == pytest.approx(1e-3 * 2) and \
        eff("alignprop", SDE_TOY)["adam_beta1"] == pytest.approx(0.6)
    # the count rule leaves the optimiser alone, and records no kappa (stored runs keep their hashes)
    assert "sde_kappa" not in eff("ddpo-100", TOY) and eff("ddpo-100", TOY)["lr"] == 1e-4


def test_sde_rule_is_the_identity_at_the_source_and_count_at_tau_one_over_kappa():
    sd = Scale(num_steps=50, samples_per_epoch=256, latent_dims=SOURCE_LATENT_DIMS, multiplier=1.0, rule="sde")
    for m in ("ddpo-2", "ddpo-100", "tdpo", "alignprop", "dense-dpo"):
        hp, src = eff(m, sd), methods.get(m).meta["hparams"]
        assert (hp["lr"], hp["adam_beta1"], hp["adam_beta2"], hp["adam_eps"]) == pytest.approx(
            (src["lr"], src["adam_beta1"], src["adam_beta2"], src["adam_eps"])), m
    # on the toy at m = 16, kappa = 1/80 for the per-step methods: tau = 80 gives the count rule's optimiser
    at80 = eff("ddpo-100", Scale(10, 32, 256, 1280, 16.0, rule="sde", temperature=80.0))
    assert (at80["lr"], at80["adam_beta2"]) == (pytest.approx(1e-4), pytest.approx(0.999))


@pytest.mark.parametrize("method", ["ddpo-100", "tdpo", "dense-dpo", "alignprop"])
def test_sde_time_per_query_does_not_depend_on_m(method):
    """Under rule 10 the SDE time a run covers per reward query, lr^2 x updates per query, is the same at every
    update multiplier (smaller updates are compensated), and 1 - beta per row is too; m only sets the cost.
    (Where no floor or ceiling binds: at m = 1 AlignProp's update would hold 8 epochs, and is held to one.)"""
    times, memories = [], []
    for m in (2.0, 4.0, 8.0, 16.0) if method != "alignprop" else (4.0, 8.0, 16.0, 16.0):
        hp = eff(method, Scale(10, 32, 256, 1280, m, rule="sde", temperature=4.0))
        times.append(hp["lr"] ** 2 * hp["updates_per_query"])
        memories.append((1 - hp["adam_beta2"]) * hp["updates_per_query"])
    assert times == pytest.approx([times[0]] * 4) and memories == pytest.approx([memories[0]] * 4)


def test_sde_rule_refuses_a_beta_below_zero():
    from bench.errors import BenchError

    with pytest.raises(BenchError, match="adam_beta1 0.9 at kappa x tau = 40 would be"):
        eff("alignprop", Scale(10, 32, 256, 1280, 4.0, rule="sde", temperature=160.0))


def test_scale_rule_flags_and_run_names(tmp_path):
    from bench.cli import build_parser
    from bench.run import build_specs
    from tests.conftest import run_cli

    def specs(*extra):
        args = build_parser().parse_args(["run", "--methods", "ddpo-100", "--reward", "jpeg-compressibility",
                                          "--out", str(tmp_path), *extra])
        return build_specs(args)[0]

    count, sde = specs(), specs("--scale-rule", "sde")
    # a count-rule spec hashes as before the rule existed (its dict has no rule fields), an sde one does not
    assert "scale_rule" not in count.to_dict() and sde.to_dict()["scale_rule"] == "sde"
    assert (sde.update_multiplier, sde.noise_temperature) == (4.0, 16.0)  # the toy's sde defaults
    assert sde.hp["lr"] == pytest.approx(1e-4 * math.sqrt(0.8)) and sde.run_name != count.run_name
    assert specs("--scale-rule", "sde", "--noise-temperature", "4").hp["lr"] == pytest.approx(1e-4 * math.sqrt(0.2))
    r = run_cli("run", "--noise-temperature", "4", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and r.stderr.strip() == \
        "error: --noise-temperature has no effect under --scale-rule count; use --scale-rule sde"


def test_the_reset_rule_flag_and_study_v3s_pinned_names(tmp_path):
    """Study version 3 pins the reset rule it ran under ('share'), so its run names (stored in
    docs/overoptimization-v3/checkpoint_means.csv) are what the study command still plans; a plain grid reads the
    period by updates and says so in its hash."""
    from bench.cli import build_parser
    from bench.run import build_specs

    def specs(*extra):
        return build_specs(build_parser().parse_args(["run", "--out", str(tmp_path), *extra]))

    v3 = {s.run_name for s in specs("--study", "overoptimization-v3")}
    stored = (__import__("pathlib").Path(__file__).parents[1] / "docs/overoptimization-v3/checkpoint_means.csv")
    assert v3 == {line.split(",")[2] for line in stored.read_text().splitlines()[1:]}
    (new,) = specs("--methods", "tdpo-r", "--budget", "1920")
    (old,) = specs("--methods", "tdpo-r", "--budget", "1920", "--reset-rule", "share")
    assert (new.hp["reset_every"], old.hp["reset_every"]) == (5, 6)
    assert new.to_dict()["reset_rule"] == "updates" and "reset_rule" not in old.to_dict()
    assert type(new).from_dict(new.to_dict()) == new and type(old).from_dict(old.to_dict()) == old


def test_the_reports_confound_line_reads_the_multiple_and_the_reason():
    """The report's line on methods off m reads the effective table's 'x source' and 'not m because' columns by
    name: at the toy default DiffusionNFT (whole updates) is named with its multiple, DDPO-100 (exactly m) not."""
    from bench.report.build import below_m_line
    from bench.spec.listing import effective_table

    line = below_m_line([effective_table("toy")], {"diffusion-nft", "ddpo-100"})
    assert line == ("Updates per reward query other than m x the source's (read their results with it): "
                    "diffusion-nft 16.20x (whole updates in the run: 17.8 -> 18).")
    assert below_m_line([effective_table("toy", "sde")], {"ddpo-100"}) == ""
