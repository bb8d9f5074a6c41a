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


# ------------------------------------------------------------------------------ the report's calibration, wired
def _calibration_db(path):
    """Four seeds each: tdpo, tdpo-r and ddpo-100 trained on aesthetic, and ddpo-100 on the planted control
    aesthetic + 0.5 x gold. Aesthetic rises 1 -> 3 -> 5 in every run, so the matched level is 5 and a run's gold
    at the level is its gold at the last checkpoint: known by construction. Four more on aesthetic + 1 x gold
    rise only to 4: that weight gives no pair."""
    from bench.store.database import connect

    gold_last = {("tdpo", "aesthetic"): [7.0, 7.2, 6.8, 7.1], ("tdpo-r", "aesthetic"): [7.1, 7.1, 6.85, 7.05],
                 ("ddpo-100", "aesthetic"): [6.9, 7.0, 7.0, 6.8],
                 ("ddpo-100", "aesthetic+0.5gold"): [7.3, 7.5, 7.3, 7.2],  # + 0.4, 0.5, 0.3, 0.4 over ddpo-100
                 ("ddpo-100", "aesthetic+1gold"): [7.4, 7.4, 7.4, 7.4]}
    con = connect(path)
    for (method, reward), golds in gold_last.items():
        for seed, g in enumerate(golds):
            run_id = f"{method}_{reward}_s{seed}"
            con.execute("INSERT INTO runs (run_id, config_hash, method, reward, backbone, suite, seed, budget, "
                        "status) VALUES (?, 'h', ?, ?, 'toy', 'toy', ?, 20, 'finished')", [run_id, method, reward, seed])
            top = 4.0 if reward == "aesthetic+1gold" else 5.0
            for q, aes, gold in ((0, 1.0, 6.5), (10, 3.0, 6.7), (20, top, g)):
                scores = {"aesthetic": aes, "gold-aesthetic": gold}
                if reward != "aesthetic":
                    scores[reward] = aes + 0.5 * gold
                for name, v in scores.items():
                    for i, d in enumerate((-0.25, 0.25)):
                        con.execute("INSERT INTO scores VALUES (?, ?, ?, 'toy-seen', 'a red circle', ?, 1, ?)",
                                    [run_id, q, name, i, v + d])
    return con, gold_last


def test_the_report_calibrates_from_the_database(tmp_path):
    from bench.report.analysis import load_curves, mean_ci
    from bench.report.build import build_boards, comparison_rows
    from bench.report.calibration import calibrate, planted_rows
    from bench.spec.plan import ComparisonPlan

    con, gold = _calibration_db(tmp_path / "c.duckdb")
    plan = ComparisonPlan(name="t", version=1, declared="test", level_setters="all",
                          primary=(("tdpo-r", "tdpo"),), primary_score="gold-aesthetic", primary_prompts="seen")
    boards = build_boards(con, plan)
    rows = comparison_rows(boards, plan)
    curves = load_curves(con)
    cal = calibrate(curves, boards, rows, plan)
    con.close()
    # A/A on each primary method's own four per-seed values at the level, 2 seeds per stream
    assert dict(cal.aa) == {"tdpo": aa_false_positive_rate(gold["tdpo", "aesthetic"], 2),
                            "tdpo-r": aa_false_positive_rate(gold["tdpo-r", "aesthetic"], 2)}
    assert cal.aa[0][1].splits == 6 * 2  # C(4,2) first streams x 2 pairings of the other two
    # the primary's paired sd: differences 0.1, -0.1, 0.05, -0.05
    sd = float(np.std([0.1, -0.1, 0.05, -0.05], ddof=1))
    assert cal.sd == pytest.approx(sd) and cal.n == 4
    (point,) = cal.planted
    m, ci = mean_ci([0.4, 0.5, 0.3, 0.4])
    assert (point.weight, point.pairs, cal.base) == (0.5, 4, "ddpo-100")
    assert (point.effect, point.ci) == (pytest.approx(m), pytest.approx(ci))
    # noncentrality 0.4 / (sd / 2) = 8.76 at 3 df, where scipy's nct.cdf is nan: the lower tail is taken as
    # nct.sf at -nc, and the power is the upper tail's (the lower one is below 1e-9)
    from scipy import stats

    assert point.power == pytest.approx(paired_power(0.4, sd, 4)) and 0.999 < point.power < 1
    assert paired_power(0.4, sd, 4) == pytest.approx(stats.nct.sf(stats.t.ppf(0.975, 3), 3, 0.4 / (sd / 2)), abs=1e-9)
    # linear between (0, 0) and (0.5, 0.4): the weight whose effect is the smallest detectable one
    assert cal.smallest_weight == pytest.approx(0.5 * smallest_detectable(sd, 4) / 0.4, rel=1e-6)
    assert "false-positive rate" in cal.line() and f"w >= {cal.smallest_weight:.2g}" in cal.line()
    assert "includes 0" not in cal.line()  # 0.4 ± 0.13: the effect is measured apart from zero
    # exploratory, where w = 1 has no pair: each planted run at its own last proxy score (5 for w = 0.5: gold 7.3,
    # 7.5, 7.3, 7.2 against 6.9, 7.0, 7.0, 6.8; 4 for w = 1: 7.4 against the base's gold halfway from 6.7 at 3
    # to its last at 5: 6.8, 6.85, 6.85, 6.75)
    from bench.report.calibration import planted_at_last_proxy

    last = planted_at_last_proxy(curves, "toy-seen")
    assert last == {0.5: pytest.approx([0.4, 0.5, 0.3, 0.4]), 1.0: pytest.approx([0.6, 0.55, 0.55, 0.65])}
    assert cal.at_last_proxy == ((0.5, *[pytest.approx(x) for x in mean_ci([0.4, 0.5, 0.3, 0.4])], 4),
                                 (1.0, *[pytest.approx(x) for x in mean_ci([0.6, 0.55, 0.55, 0.65])], 4))
    # the report's first figure answers the question on the proxy's board, never on a planted control's
    from bench.report.build import _level_targets

    (target,) = _level_targets(boards, plan)
    assert (target[0], target[1]) == ("aesthetic", "toy-seen")
    # and draws the board's own per-seed values at the level, the comparisons' (gold at the last checkpoint here)
    assert {m: pytest.approx(v) for m, v in target[5].items()} == \
        {m: list(gold[m, "aesthetic"]) for m in ("ddpo-100", "tdpo", "tdpo-r")}
    # the weight whose runs never reach the level is said in the line and the table, not dropped
    assert cal.unpaired == ((1.0, 4, 0, 4),)
    assert cal.line().endswith("; no pair at w = 1 (0 of 4 planted runs reach the level).")
    assert [r[0] for r in planted_rows(cal)] == ["0.5", "1"] and planted_rows(cal)[1][1:] == (
        "- (0 of 4 planted runs reach the level)", "0", "-")
    _replayed_from_exported_means_equals(tmp_path, boards, rows, cal, plan)


def _replayed_from_exported_means_equals(tmp_path, boards, rows, cal, plan):
    """scripts/replay_study.py on the database's exported checkpoint means, the control runs in a second file
    (runs added after a database was lost), gives the database's boards, comparisons and calibration."""
    import csv
    import sys
    from pathlib import Path

    from bench import load_results
    from bench.report.analysis import MEANS_COLUMNS
    from bench.report.build import build_boards, comparison_rows

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import replay_study

    means = load_results(tmp_path / "c.duckdb").curves.rename(columns={"value": "mean"})[list(MEANS_COLUMNS)]
    control = means["train_reward"] != "aesthetic"
    for name, part in (("base.csv", means[~control]), ("control.csv", means[control])):
        part.to_csv(tmp_path / name, index=False)
    curves = replay_study.read_curves([tmp_path / "base.csv", tmp_path / "control.csv"])
    replayed = build_boards(None, plan, curves=curves)
    assert [(b.train_reward, b.prompt_set, b.level, b.columns, b.verdicts, b.seeds) for b in replayed] == \
        [(b.train_reward, b.prompt_set, b.level, b.columns, b.verdicts, b.seeds) for b in boards]
    for b, r in zip(boards, replayed):
        assert [(m, n, [(pytest.approx(c.mean), pytest.approx(c.ci), pytest.approx(c.values)) for c in cells])
                for m, n, cells in b.rows] == \
            [(m, n, [(c.mean, c.ci, c.values) for c in cells]) for m, n, cells in r.rows]
    again = comparison_rows(replayed, plan)
    assert [(r["comp"].diff, r["comp"].ci, r["p_holm"]) for r in again] == \
        [(pytest.approx(r["comp"].diff), pytest.approx(r["comp"].ci), pytest.approx(r["p_holm"])) for r in rows]
    assert cal.line() in replay_study.replay(curves, plan)
    with pytest.raises(ValueError, match="is in both"):
        replay_study.read_curves([tmp_path / "base.csv", tmp_path / "base.csv"])
    lines = (tmp_path / "control.csv").read_text().splitlines()
    (tmp_path / "bad.csv").write_text("\n".join(lines[:2] + [lines[2].rsplit(",", 1)[0] + ",nan"]) + "\n")
    with pytest.raises(ValueError, match="bad.csv:3: the mean of"):
        replay_study.read_curves([tmp_path / "bad.csv"])
    assert next(csv.reader([lines[0]])) == list(MEANS_COLUMNS)
    import export_study  # --add-to: a database's runs join a study's kept means, a run already there refused

    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "checkpoint_means.csv").write_text(lines[0] + "\n")
    assert export_study.main([str(tmp_path / "c.duckdb"), "--add-to", str(tmp_path / "kept")]) == 0
    assert replay_study.replay(replay_study.read_curves([tmp_path / "kept" / "checkpoint_means.csv"]), plan) == \
        replay_study.replay(curves, plan)
    assert export_study.main([str(tmp_path / "c.duckdb"), "--add-to", str(tmp_path / "kept")]) == 2
    for argv in ([str(tmp_path / "bad.csv"), "--study", "overoptimization"], [str(tmp_path / "none.csv"), "--study",
                 "overoptimization"], [str(tmp_path / "base.csv"), "--study", "overoptimisation"]):
        assert replay_study.main(argv) == 2  # one line on stderr, exit 2


def test_the_calibration_line_says_when_a_planted_effect_is_not_told_apart_from_zero():
    """Study v4's first planted weight: +0.774 ± 1.651 over 2 pairs. The power takes the effect as known, so the
    line says the effect's own interval includes 0; an effect of 0.4 ± 0.13 draws no such clause."""
    from bench.report.calibration import Calibration, PlantedPoint

    weak = Calibration((), 12, 0.324, "ddpo-100", (PlantedPoint(0.25, 0.774, 1.651, 2, 1.0),
                                                   PlantedPoint(0.5, 0.4, 0.13, 4, 1.0)), 0.093)
    assert weak.line().endswith("; the planted effect's 95% CI includes 0 at w = 0.25 (+0.774 ± 1.65, 2 pairs): "
                                "the power rests on its point estimate.")
    one = Calibration((), 12, 0.324, "ddpo-100", (PlantedPoint(1.0, 0.9, None, 1, 1.0),), None)
    assert "includes 0 at w = 1 (+0.9, 1 pair)" in one.line()  # one pair: no interval at all
    # a weight trained without its base runs: said, with why
    alone = Calibration((), 12, 0.324, "", (), None, unpaired=((0.5, 4, 3, 0),))
    assert alone.line().endswith("power against a planted effect not measured (no planted run gives a pair at the "
                                 "level); no pair at w = 0.5 (3 of 4 planted runs reach the level; 4 without a base "
                                 "run at their seed).")


def test_the_planted_reward_is_the_blend_and_stays_out_of_the_matrix():
    import torch

    from bench.evaluate import suite_rewards
    from bench.train.runner import load_reward

    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    prompts = ["a red circle", "a blue square", "two green triangles"]
    blend = load_reward("aesthetic+0.5gold", "toy", "cpu")
    expected = (load_reward("aesthetic", "toy", "cpu").score(images, prompts)
                + 0.5 * load_reward("gold-aesthetic", "toy", "cpu").score(images, prompts))
    assert torch.allclose(blend.score(images, prompts), expected)
    assert "aesthetic+0.5gold" not in suite_rewards("toy")                       # never scored by default
    assert suite_rewards("toy", "aesthetic+0.5gold")[-1] == "aesthetic+0.5gold"  # but a run's own reward is
    assert suite_rewards("toy", "aesthetic") == suite_rewards("toy")


def test_bench_report_prints_the_calibration_line(tmp_path, capsys, monkeypatch):
    """`bench report` prints the calibration line under the primary sentences, as the report's first screen does."""
    import bench.report.command as command
    from bench.spec.plan import ComparisonPlan

    con, _ = _calibration_db(tmp_path / "c.duckdb")
    con.close()
    plan = ComparisonPlan(name="t", version=1, declared="test", level_setters="all",
                          primary=(("tdpo-r", "tdpo"),), primary_score="gold-aesthetic", primary_prompts="seen")
    monkeypatch.setattr(command, "plan_of", lambda study: plan)
    command.print_and_write(tmp_path / "c.duckdb", tmp_path / "report", tmp_path, write=False)
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "Calibration:" in x)
    assert "false-positive rate" in line and "(A/A: tdpo, tdpo-r, 2 seeds per stream, 24 splits" in line
    assert "blending gold into the training reward at weight w >=" in line
