"""Leaderboard numbers on a small synthetic DuckDB, determinism, and the report in a real browser."""

import html
import json
import shutil
import subprocess

import pytest

from bench.report.analysis import first_crossing, interpolate_at, matched_level, mean_ci, normalised_auc

# run -> (method, seed, x = aesthetic, y = pickscore, gold-aesthetic) at queries 0, 10, 20
CURVES = {
    "A_s0": ("A", 0, [1, 3, 5], [10, 8, 4], [5, 7, 6]),
    "A_s1": ("A", 1, [1, 2, 4], [10, 9, 5], [5, 6, 6.5]),
    "B_s0": ("B", 0, [1, 2, 3], [10, 10, 9], [5, 5.5, 5.2]),
}


def make_db(path):
    from bench.store.database import connect

    con = connect(path)
    for run_id, (method, seed, *_rest) in CURVES.items():
        con.execute("INSERT INTO runs (run_id, config_hash, method, reward, backbone, suite, seed, budget, status) "
                    "VALUES (?, 'h', ?, 'aesthetic', 'toy', 'toy', ?, 20, 'finished')", [run_id, method, seed])
    for run_id, (_, _, xs, ys, gs) in CURVES.items():
        for q, x, y, g in zip((0, 10, 20), xs, ys, gs):
            for reward, v in (("aesthetic", x), ("pickscore", y), ("gold-aesthetic", g)):
                for i, d in enumerate((-0.5, 0.5)):  # two images whose mean is the curve value
                    con.execute("INSERT INTO scores VALUES (?, ?, ?, 'toy-seen', 'a red circle', ?, 1, ?)",
                                [run_id, q, reward, i, v + d])
    con.close()


def test_interpolation_auc_and_ci_by_hand():
    assert first_crossing([1, 3, 5], 3) == (0, 1.0)
    assert first_crossing([1, 2, 4], 3) == (1, 0.5)
    assert first_crossing([1, 2, 1.5], 3) is None
    assert interpolate_at([1, 2, 4], [10, 9, 5], 3) == pytest.approx(7.0)
    # the FIRST crossing counts, even if the curve comes back later
    assert interpolate_at([1, 4, 2, 5], [0, 3, 100, 100], 2.5) == pytest.approx(1.5)
    # (1,10)-(2,9): 9.5; (2,9)-(3,7): 8 -> 17.5 over a range of 2
    assert normalised_auc([1, 2, 4], [10, 9, 5], 3) == pytest.approx(8.75)
    assert normalised_auc([1, 2], [7, 3], 1) == 7
    assert matched_level([[1, 3, 5], [1, 2, 4], [1, 2, 3]]) == 3
    assert matched_level([[1, 0.5], [1, 2]]) == 1  # a run that never rises pins the level at the start
    m, h = mean_ci([8.0, 7.0])  # sd 0.7071, t(1) = 12.706
    assert m == 7.5 and h == pytest.approx(12.7062 * 0.70710678 / 2 ** 0.5, rel=1e-5)
    m, h = mean_ci([1.0, 2.0, 3.0, 4.0])  # sd 1.2910, t(3) = 3.182
    assert m == 2.5 and h == pytest.approx(3.182446 * 1.2909944 / 2, rel=1e-6)
    assert mean_ci([3.0]) == (3.0, None)


def test_t_quantiles_are_exact_at_every_df_and_welch_by_hand():
    """t_0.975 at df 1..30 is the printed table to its 3 decimals; beyond 30 df it is t, not the normal's 1.960
    (t(31) = 2.040, t(95) = 1.985: 1-4% wider); Welch's fractional df is used as it is. Welch's CI by hand."""
    from bench.report.analysis import t975, welch_ci

    printed = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
               2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
               2.045, 2.042]
    assert [round(t975(df), 3) for df in range(1, 31)] == printed
    assert t975(31) == pytest.approx(2.0395, abs=1e-4) and t975(95) == pytest.approx(1.9853, abs=1e-4)
    assert t975(500) > 1.96 and 4.303 > t975(2.306) > 3.182  # between t(2) and t(3)
    # a = (1, 2, 3): var 1; b = (2, 4, 9): mean 5, var 13; se^2 = 1/3 + 13/3 = 4.6667
    # df = 4.6667^2 / ((1/3)^2/2 + (13/3)^2/2) = 21.778 / 9.4444 = 2.3059 -> t(2.3059) = 3.799
    diff, h = welch_ci([1, 2, 3], [2, 4, 9])
    assert diff == pytest.approx(-3.0) and h == pytest.approx(3.7994 * (14 / 3) ** 0.5, rel=1e-3)
    assert welch_ci([1, 1], [2, 2]) == (-1.0, 0.0)


def test_bootstrap_interval_of_a_skewed_quantity():
    """BCa bootstrap for queries-to-level: it holds the mean, leans toward the long tail, is reproducible, and
    is absent where there is nothing to resample."""
    from bench.report.analysis import bootstrap_ci

    queries = [100.0, 110.0, 120.0, 130.0, 900.0]  # one slow seed
    low, high = bootstrap_ci(queries)
    mean = sum(queries) / 5
    assert low < mean < high
    assert high - mean > mean - low  # skewed: the interval reaches further toward the slow seed
    assert low >= 100.0 and high <= 900.0  # a mean of resamples stays within the data
    assert bootstrap_ci(queries) == (low, high)  # fixed seed
    assert bootstrap_ci([5.0, 6.0]) is None and bootstrap_ci([7.0, 7.0, 7.0]) is None


def test_leaderboard_on_a_synthetic_database(tmp_path):
    """Under main plan v2's level (the highest level every improving method reaches: B's best, 3)."""
    from bench.report.build import build_boards
    from bench.spec.catalog import MAIN_PLAN_V2
    from bench.store.database import connect

    make_db(tmp_path / "b.duckdb")
    con = connect(tmp_path / "b.duckdb", read_only=True)
    (board,) = build_boards(con, MAIN_PLAN_V2)
    con.close()
    assert board.level == 3 and board.train_reward == "aesthetic" and board.prompt_set == "toy-seen"
    cols = board.columns
    assert cols == ["aesthetic final", "aesthetic change", "queries to level", "gold-aesthetic @ level", "pickscore @ level",
                    "gold-aesthetic AUC", "pickscore AUC", "gold-aesthetic peak", "gold-aesthetic drop after peak"]
    rows = {m: (n, dict(zip(cols, cells))) for m, n, cells in board.rows}
    assert [m for m, _, _ in board.rows] == ["B", "A"]  # sorted by pickscore at the level, higher first
    n, a = rows["A"]
    assert n == 2
    assert a["aesthetic final"].mean == pytest.approx(4.5)
    assert a["aesthetic final"].ci == pytest.approx(12.7062 * 0.70710678 / 2 ** 0.5, rel=1e-5)
    assert a["queries to level"].mean == pytest.approx((10 + 15) / 2)
    # two seeds: the change is averaged over seeds (4 and 3), its CI over seeds too -> not clear
    assert a["aesthetic change"].mean == pytest.approx(3.5)
    assert a["aesthetic change"].ci == pytest.approx(12.7062 * 0.70710678 / 2 ** 0.5, rel=1e-5)
    assert board.verdicts == {"A": "flat", "B": "improves"}
    assert a["pickscore @ level"].mean == pytest.approx((8 + 7) / 2)
    assert a["pickscore AUC"].mean == pytest.approx((9 + 8.75) / 2)
    assert a["gold-aesthetic peak"].mean == pytest.approx((7 + 6.5) / 2)
    assert a["gold-aesthetic drop after peak"].mean == pytest.approx((1 + 0) / 2)
    _, b = rows["B"]
    assert b["pickscore @ level"].mean == pytest.approx(9) and b["pickscore @ level"].ci is None
    assert b["queries to level"].mean == pytest.approx(20)
    # one seed: the CI is over the two paired images, whose change is 2 for both
    assert (b["aesthetic change"].mean, b["aesthetic change"].ci) == (pytest.approx(2.0), pytest.approx(0.0))
    assert b["pickscore AUC"].mean == pytest.approx((10 + 9.5) / 2)
    assert b["gold-aesthetic drop after peak"].mean == pytest.approx(0.3)


def _add_flat_run(con, run_id: str, method: str, xs) -> None:
    """One more seed-0 run: aesthetic `xs` at queries 0, 10, 20 (two images at +-0.5), other scores constant."""
    con.execute("INSERT INTO runs (run_id, config_hash, method, reward, backbone, suite, seed, budget, status) "
                "VALUES (?, 'h', ?, 'aesthetic', 'toy', 'toy', 0, 20, 'finished')", [run_id, method])
    for q, x in zip((0, 10, 20), xs):
        for reward, v in (("aesthetic", x), ("pickscore", 10.0), ("gold-aesthetic", 5.0)):
            for i, d in enumerate((-0.5, 0.5)):
                con.execute("INSERT INTO scores VALUES (?, ?, ?, 'toy-seen', 'a red circle', ?, 1, ?)",
                            [run_id, q, reward, i, v + d])


def test_the_default_level_is_a_fraction_of_the_median_best_gain(tmp_path):
    """Main plan v3 (the default): start 1 + 0.75 x the median best gain of the improving methods (B alone: 2),
    so 2.5; crossings by hand: A_s0 (1, 3) at 7.5 queries, A_s1 (2, 4) at 12.5, B (2, 3) at 15. The flat C
    neither sets nor reaches it. With no improving method every method sets it: gains A (4 + 3) / 2, C 0,
    median 1.75, level 1 + 0.75 x 1.75."""
    from bench.report.build import boards_markdown, build_boards
    from bench.spec.catalog import MAIN_PLAN
    from bench.store.database import connect

    assert MAIN_PLAN.version == 3 and MAIN_PLAN.level_fraction == 0.75 and MAIN_PLAN.level_setters == "all"
    make_db(tmp_path / "b.duckdb")
    con = connect(tmp_path / "b.duckdb")
    _add_flat_run(con, "C_s0", "C", (1.0, 0.9, 1.0))
    (board,) = build_boards(con)
    assert board.level_methods == ["B"] and board.level == pytest.approx(2.5)
    rows = {m: dict(zip(board.columns, cells)) for m, _, cells in board.rows}
    assert rows["A"]["queries to level"].mean == pytest.approx((7.5 + 12.5) / 2)
    assert rows["B"]["queries to level"].mean == pytest.approx(15)
    assert rows["C"]["queries to level"].mean is None
    assert "matched level 2.500 (0.75 of the median best gain), over the methods that improve" in boards_markdown([board])
    con.execute("DELETE FROM scores WHERE run_id = 'B_s0'")
    (board,) = build_boards(con)
    con.close()
    assert board.level_methods == ["A", "C"] and board.level == pytest.approx(1 + 0.75 * 1.75)


def test_a_method_that_does_not_improve_does_not_pin_the_matched_level(tmp_path):
    """Under main plan v2's level rule (the highest level every improving method reaches)."""
    from bench.report.build import boards_markdown, build_boards
    from bench.spec.catalog import MAIN_PLAN_V2
    from bench.store.database import connect

    make_db(tmp_path / "b.duckdb")
    con = connect(tmp_path / "b.duckdb")
    _add_flat_run(con, "C_s0", "C", (1.0, 0.9, 1.0))  # C never learns: its paired change is exactly 0
    (board,) = build_boards(con, MAIN_PLAN_V2)
    con.close()
    # over all runs the level would be C's start, 1.0; over the improving method (B) it is 3
    assert board.verdicts == {"A": "flat", "B": "improves", "C": "flat"}
    assert board.level_methods == ["B"] and board.level == 3
    rows = {m: dict(zip(board.columns, cells)) for m, _, cells in board.rows}
    assert rows["C"]["queries to level"].mean is None and rows["C"]["pickscore @ level"].mean is None
    assert rows["A"]["pickscore @ level"].mean == pytest.approx(7.5)  # A still reaches 3 in both seeds
    assert [m for m, _, _ in board.rows][-1] == "C"  # a missing value sorts last
    assert "matched level 3.000, over the methods that improve on toy-seen; not improving: A, C" in boards_markdown([board])
    # when no method improves, every method sets the level (C pins it at the start)
    con = connect(tmp_path / "b.duckdb")
    con.execute("DELETE FROM scores WHERE run_id = 'B_s0'")
    (board,) = build_boards(con, MAIN_PLAN_V2)
    con.close()
    assert board.level_methods == ["A", "C"] and board.level == 1.0


def test_a_companion_papers_method_is_placed_at_the_level_but_does_not_set_it(tmp_path):
    """Under a 'paper' level rule (main plan v1) PRDP (the catalog's companion flag) improves a little: B alone
    sets the level, PRDP is shown as not reaching it, and the level it would have set is printed beside. Under
    main plan v2 ('all', as the default v3) PRDP sets it with B."""
    from bench.report.build import boards_markdown, build_boards
    from bench.spec.catalog import MAIN_PLAN_V1, MAIN_PLAN_V2
    from bench.store.database import connect

    make_db(tmp_path / "b.duckdb")
    con = connect(tmp_path / "b.duckdb")
    _add_flat_run(con, "P_s0", "prdp", (1.0, 1.2, 1.5))  # both images +0.5: the paired change is clear
    (board,) = build_boards(con, MAIN_PLAN_V1)
    (board_v2,) = build_boards(con, MAIN_PLAN_V2)
    con.close()
    assert MAIN_PLAN_V2.level_setters == "all" and MAIN_PLAN_V2.version == 2
    assert sorted(board_v2.level_methods) == ["B", "prdp"] and board_v2.level == 1.5
    assert board_v2.level_with_companions is None
    assert board.verdicts["prdp"] == "improves"
    assert board.level_methods == ["B"] and board.level == 3 and board.level_with_companions == 1.5
    rows = {m: dict(zip(board.columns, cells)) for m, _, cells in board.rows}
    assert rows["prdp"]["queries to level"].mean is None and rows["B"]["queries to level"].mean == 20
    assert ("matched level 3.000, over the methods that improve on toy-seen; companion papers' methods, placed "
            "where they reach it: prdp (with them the level would be 1.500); not improving: A") in boards_markdown([board])


def test_paired_change_pairs_images_by_prompt_and_seed(tmp_path):
    """A small consistent rise on images whose scores spread widely: paired, it is clear;
    the unpaired difference of means would have a CI far wider than the rise."""
    from bench.report.analysis import change_verdict, paired_changes
    from bench.store.database import connect

    con = connect(tmp_path / "p.duckdb")
    start = {("p0", 0): 1.0, ("p0", 1): 5.0, ("p1", 0): 2.0, ("p1", 1): 8.0}
    final = {("p0", 0): 1.3, ("p0", 1): 5.2, ("p1", 0): 2.4, ("p1", 1): 8.1}
    # inserted final-first and in reverse key order, so pairing cannot rely on row order
    for q, values in ((20, dict(reversed(final.items()))), (10, {k: 0.0 for k in start}), (0, start)):
        for (prompt, i), v in values.items():
            con.execute("INSERT INTO scores VALUES ('R', ?, 'aesthetic', 'toy-seen', ?, ?, ?, ?)",
                        [q, prompt, i, 100 + i, v])
    con.execute("INSERT INTO scores VALUES ('R', 20, 'aesthetic', 'toy-unseen', 'p0', 0, 100, 99.0)")
    diffs = paired_changes(con, "R", "aesthetic", "toy-seen")
    assert diffs == pytest.approx([0.3, 0.2, 0.4, 0.1])  # ordered by prompt, sample
    m, h = mean_ci(diffs)  # mean 0.25, sd sqrt(0.05 / 3), t(3) = 3.182
    assert m == pytest.approx(0.25) and h == pytest.approx(3.182446 * (0.05 / 3) ** 0.5 / 2, rel=1e-6)
    assert change_verdict(m, h) == "improves"
    assert paired_changes(con, "R", "aesthetic", "toy-unseen") == []  # no query-0 partner
    con.close()
    assert change_verdict(-0.3, 0.1) == "worsens"
    assert change_verdict(-0.3, 0.1, higher_is_better=False) == "improves"
    assert change_verdict(0.05, 0.1) == "flat"
    assert change_verdict(1.0, None) == "-"


def _gold_db(path, runs: dict):
    """runs: run_id -> (method, seed, gold per checkpoint (0, 10, 20) per image (4 images)); aesthetic rises
    1 -> 3 -> 5 on every image, pickscore constant."""
    from bench.store.database import connect

    con = connect(path)
    for run_id, (method, seed, gold) in runs.items():
        con.execute("INSERT INTO runs (run_id, config_hash, method, reward, backbone, suite, seed, budget, status) "
                    "VALUES (?, 'h', ?, 'aesthetic', 'toy', 'toy', ?, 20, 'finished')", [run_id, method, seed])
        for k, q in enumerate((0, 10, 20)):
            for i in range(4):
                for reward, v in (("aesthetic", 1.0 + 2 * k), ("pickscore", 10.0), ("gold-aesthetic", gold[k][i])):
                    con.execute("INSERT INTO scores VALUES (?, ?, ?, 'toy-seen', 'a red circle', ?, 1, ?)",
                                [run_id, q, reward, i, v])
    return con


def test_gold_shape_picks_the_peak_on_one_half_and_tests_it_on_the_other(tmp_path):
    """The overoptimization evidence, split-half: images 0 and 2 choose the peak, images 1 and 3 test it.
    B rises 0.5 to its peak at 10 queries, then falls 0.3, on every image (CIs 0); A's two seeds disagree on
    the rise (over seeds, t(1) = 12.706: flat); D falls from the start, images 1 and 3 twice as fast; E has a
    peak at 10 only on the images that choose it: on the others it is flat, and the test says so (choosing the
    peak on the tested images would have called it 'rises then falls')."""
    from bench.report.build import build_boards, gold_line, verdict_lines

    same = lambda *g: [[v] * 4 for v in g]
    con = _gold_db(tmp_path / "g.duckdb", {
        "B_s0": ("B", 0, same(5.0, 5.5, 5.2)),
        "A_s0": ("A", 0, same(5.0, 7.0, 6.0)),
        "A_s1": ("A", 1, same(5.0, 6.0, 6.5)),
        "D_s0": ("D", 0, [[5.0] * 4, [4.5, 4.0, 4.5, 4.0], [4.0, 3.0, 4.0, 3.0]]),
        "E_s0": ("E", 0, [[5.0] * 4, [6.0, 5.0, 6.0, 5.0], [5.0, 5.0, 5.0, 5.0]]),
    })
    (board,) = build_boards(con)
    con.close()
    shapes = board.gold_shapes["gold-aesthetic"]
    b = shapes["B"]
    assert (b.shape, b.peak_queries) == ("rises then falls", 10)
    assert b.rise == (pytest.approx(0.5), pytest.approx(0.0)) and b.fall == (pytest.approx(-0.3), pytest.approx(0.0))
    a = shapes["A"]
    # the selection half's mean curve over seeds (5, 6.5, 6.25) peaks at 10; the test half's rises are 2 and 1
    assert a.peak_queries == 10 and a.rise == (pytest.approx(1.5), pytest.approx(12.7062 * 0.70710678 / 2 ** 0.5, rel=1e-5))
    assert a.shape == "flat"
    d = shapes["D"]
    # peak at the pretrained model; on the test images (1, 3) the total change is -2 on both: CI 0
    assert d.peak_queries == 0 and d.shape == "falls" and d.total == (pytest.approx(-2.0), pytest.approx(0.0))
    e = shapes["E"]
    assert e.peak_queries == 10 and e.rise == (pytest.approx(0.0), pytest.approx(0.0)) and e.shape == "flat"
    line = gold_line("gold-aesthetic", "toy-seen", shapes)
    assert line == ("gold-aesthetic on toy-seen (paired, 95% CI): rises then falls: B (peak at 10: +0.50 ± 0.00, "
                    "then -0.30 ± 0.00); falls: D; flat: A, E")
    assert line in verdict_lines([board])


def test_report_files_are_byte_identical_when_rebuilt(tmp_path):
    from bench.report.build import write_report

    make_db(tmp_path / "b.duckdb")
    write_report(tmp_path / "b.duckdb", tmp_path / "r1")
    write_report(tmp_path / "b.duckdb", tmp_path / "r2")
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.html", "index.html"):
        assert (tmp_path / "r1" / name).read_bytes() == (tmp_path / "r2" / name).read_bytes(), name
    md = (tmp_path / "r1" / "leaderboard.md").read_text()
    # B reaches the default level 2.5 halfway from 10 to 20 queries
    assert "| B | 1 | improves (image-level, seed variance not included) | 3.000 | 2.000 ± 0.000 | 15 |" in md
    figs = json.loads((tmp_path / "r1" / "report.json").read_text())["figures"]
    assert "cross_reward_aesthetic_toy-seen.png" in figs and "gold_vs_proxy_aesthetic_toy-seen.png" in figs
    assert all((tmp_path / "r1" / "figures" / f).stat().st_size > 1000 for f in figs)
    assert (tmp_path / "r1" / "figures" / "cross_reward_aesthetic_toy-seen.pdf").is_file()


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_report_renders_in_headless_chromium(tmp_path):
    """The page is rendered by a real browser; the screenshot must not be blank."""
    from PIL import Image, ImageStat

    from bench.report.build import write_report

    browser = _chromium()
    assert browser, "chromium is missing: scripts/setup.sh installs Debian's chromium package"
    make_db(tmp_path / "b.duckdb")
    index = write_report(tmp_path / "b.duckdb", tmp_path / "report")
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1200,1600", index.as_uri()],
                   check=True, capture_output=True, timeout=120)
    print(f"screenshot of the report (1200 x 1600): {shot}")  # shown by pytest -rP
    img = Image.open(shot).convert("L")
    stat = ImageStat.Stat(img)
    assert img.size == (1200, 1600)
    assert stat.stddev[0] > 10  # text, tables and plots, not a blank page
    dark = sum(img.histogram()[:128]) / (img.size[0] * img.size[1])
    assert dark > 0.002  # some ink: headings and table text


@pytest.mark.heavy
def test_run_evaluates_every_checkpoint_then_eval_adds_a_reward_and_reproduces(tmp_path):
    """`bench run` scores each checkpoint with every toy reward on all three prompt sets and
    writes the report; `bench eval` adds a reward later; re-evaluation reproduces the images."""
    import duckdb

    from tests.conftest import run_main  # in-process: four interpreters' imports saved

    common = ["--budget", "16", "--num-steps", "3", "--samples-per-epoch", "8", "--train-batch-size", "8",
              "--num-checkpoints", "1", "--out", str(tmp_path), "--no-progress", "--eval-per-prompt", "1"]
    r = run_main("run", "--methods", "ddpo-2", "--reward", "aesthetic", *common, "--no-eval")
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_main("eval", "--out", str(tmp_path), "--rewards", "aesthetic,gold-aesthetic", "--no-progress",
                "--per-prompt", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    con = duckdb.connect(str(tmp_path / "bench.duckdb"), read_only=True)
    assert {x for (x,) in con.execute("select distinct reward from scores").fetchall()} == {"aesthetic",
                                                                                           "gold-aesthetic"}
    con.close()
    # the run command evaluates what is missing for finished runs, then reports
    r = run_main("run", "--methods", "ddpo-2", "--reward", "aesthetic", *common)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "report at" in r.stdout and "| method | seeds | verdict | aesthetic final | aesthetic change" in r.stdout
    assert "aesthetic on toy-seen, final checkpoint vs query 0 (paired fixed seeds, 95% CI): " in r.stdout
    con = duckdb.connect(str(tmp_path / "bench.duckdb"), read_only=True)
    counts = con.execute("""select reward, prompt_set, count(distinct run_id), count(distinct reward_queries), count(*)
                            from scores group by 1, 2 order by 1, 2""").fetchall()
    # the image-statistics drift of every checkpoint and prompt set (diversity needs 2+ images per prompt: none)
    drift = con.execute("""select metric, count(*), min(value) from eval_metrics group by 1 order by 1""").fetchall()
    con.close()
    assert [(m, n) for m, n, _ in drift] == [("drift_brightness", 6), ("drift_latent_sq", 6),
                                             ("drift_saturation", 6)] and all(v > 0 for _, _, v in drift)
    rewards = ["aesthetic", "gold-aesthetic", "gold-fidelity", "hpsv2", "jpeg-compressibility", "kl-to-pretrained",
               "pickscore"]
    sets = {"toy-compositional": 4, "toy-seen": 48, "toy-unseen": 8}
    # 1 run x 2 checkpoints x n prompts x 1 image per prompt (one method: evaluation does not depend on it)
    assert counts == [(rw, ps, 1, 2, 2 * n) for rw in rewards for ps, n in sorted(sets.items())]
    assert (tmp_path / "report" / "index.html").is_file() and (tmp_path / "report" / "leaderboard.csv").is_file()
    run_dir = next(p for p in (tmp_path / "runs").iterdir() if p.name.startswith("ddpo-2"))
    assert sorted(p.name for p in (run_dir / "grids").iterdir()) == ["q00000000.png", "q00000016.png"]
    before = (run_dir / "scores" / "aesthetic.jsonl").read_text()
    grid = (run_dir / "grids" / "q00000016.png").read_bytes()
    # re-scored as `bench eval` scored it, at the same thread count (a CPU GEMM's sums split by threads)
    r = run_main("eval", "--out", str(tmp_path), "--rewards", "aesthetic", "--force", "--no-progress",
                "--per-prompt", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (run_dir / "scores" / "aesthetic.jsonl").read_text() == before  # same seeds, same images, same scores
    assert (run_dir / "grids" / "q00000016.png").read_bytes() == grid


def test_load_results_gives_tidy_frames(tmp_path):
    from bench import load_results

    make_db(tmp_path / "b.duckdb")
    res = load_results(tmp_path / "b.duckdb")
    assert set(res.runs["run_id"]) == set(CURVES)
    # 3 runs x 3 checkpoints x 3 rewards x 2 images, with the run's method and seed joined in
    assert len(res.scores) == 54 and {"method", "seed", "train_reward"} <= set(res.scores.columns)
    a = res.curves.query("run_id == 'A_s1' and reward == 'aesthetic'").sort_values("reward_queries")
    assert a["value"].tolist() == [1, 2, 4] and a["images"].tolist() == [2, 2, 2]
    level = res.leaderboard.query("method == 'A' and column == 'pickscore @ level'")
    # A at the default level 2.5: pickscore 10 - 0.75 x 2 = 8.5 and 9 - 0.25 x 4 = 8.0
    assert level["mean"].iloc[0] == pytest.approx(8.25)


def test_runs_not_finished_are_left_out_of_every_table_and_named(tmp_path):
    """A grid killed part-way leaves its runs 'running' with part of their training logged. A running and a failed
    run of method A (aesthetic 100 at every mark, a critic explained variance of 0.9 against the finished runs'
    0.1, 99 updates against 5) change no board, frame, critic or compute row; `runs` still lists them and the
    report names them."""
    from bench import load_results
    from bench.report.build import build_boards, compute_rows, critic_rows, unfinished_line
    from bench.store.database import connect

    def fill(path, extra):
        make_db(path)
        con = connect(path)
        runs = [("A_s0", "finished"), ("A_s1", "finished")] + extra
        for run_id, status in extra:
            con.execute("INSERT INTO runs (run_id, config_hash, method, reward, backbone, suite, seed, budget, "
                        "status) VALUES (?, 'h', 'A', 'aesthetic', 'toy', 'toy', 7, 20, ?)", [run_id, status])
        for run_id, status in runs:
            bad = status != "finished"
            for epoch in (0, 1):
                con.execute("INSERT INTO train_metrics VALUES (?, ?, 10, 'critic_explained_variance', ?)",
                            [run_id, epoch, 0.9 if bad else 0.1])
            con.execute("INSERT INTO checkpoints (run_id, reward_queries, mark_index, epoch, gradient_updates) "
                        "VALUES (?, 10, 0, 1, ?)", [run_id, 99 if bad else 5])
            if bad:
                for q in (0, 10, 20):
                    for reward in ("aesthetic", "pickscore", "gold-aesthetic"):
                        con.execute("INSERT INTO scores VALUES (?, ?, ?, 'toy-seen', 'a red circle', 0, 1, 100.0)",
                                    [run_id, q, reward])
        con.close()
        con = connect(path, read_only=True)
        try:
            return (build_boards(con), critic_rows(con), compute_rows(con),
                    con.execute("SELECT run_id, status FROM runs").fetchall())
        finally:
            con.close()

    clean = fill(tmp_path / "clean.duckdb", [])
    killed = fill(tmp_path / "killed.duckdb", [("A_s7", "running"), ("A_x", "failed")])
    assert [(b.level, b.rows) for b in killed[0]] == [(b.level, b.rows) for b in clean[0]]
    assert killed[1] == clean[1] and killed[1][1] == {"A": pytest.approx(0.1)}
    assert killed[2] == clean[2] and killed[2][0][1] == "2"
    res = load_results(tmp_path / "killed.duckdb")
    assert set(res.runs["run_id"]) == set(CURVES) | {"A_s7", "A_x"}
    for frame in (res.scores, res.curves, res.checkpoints, res.train_metrics):
        assert not {"A_s7", "A_x"} & set(frame["run_id"])
    assert unfinished_line(clean[3]) == ""
    assert unfinished_line(killed[3]) == ("2 run(s) not finished (1 failed, 1 running: A_x, A_s7) are left out of "
                                          "every table and figure; `python -m bench runs` lists them with their state.")


def _wide_db(path):
    """The toy's full matrix shape: 13 methods, every toy reward, all three prompt sets."""
    from bench.store.database import connect

    con = connect(path)
    rewards = ("aesthetic", "pickscore", "hpsv2", "jpeg-compressibility", "gold-aesthetic", "gold-fidelity",
               "kl-to-pretrained")
    for k in range(13):
        run_id = f"method-number-{k:02d}_s0"
        con.execute("INSERT INTO runs (run_id, config_hash, method, reward, backbone, suite, seed, budget, status) "
                    "VALUES (?, 'h', ?, 'aesthetic', 'toy', 'toy', 0, 20, 'finished')", [run_id, run_id[:-3]])
        for pset in ("toy-compositional", "toy-unseen", "toy-seen"):
            for q in (0, 10, 20):
                for j, reward in enumerate(rewards):
                    for i in range(2):
                        v = 5.0 + 0.01 * k * q + 0.1 * j + (0.3 if i else -0.3) if q else 5.0 + 0.1 * j
                        con.execute("INSERT INTO scores VALUES (?, ?, ?, ?, 'p', ?, 1, ?)",
                                    [run_id, q, reward, pset, i, v])
    con.close()


def test_report_first_screen_summary_role_order_and_no_horizontal_scroll(tmp_path):
    """The summary (verdicts, change, one number per other score at the matched level) comes first;
    prompt sets run seen, unseen, compositional; at 1300 px nothing scrolls sideways (measured by
    Chromium's layout: page width and every table's width against its box)."""
    from bench.report.build import write_report

    _wide_db(tmp_path / "b.duckdb")
    index = write_report(tmp_path / "b.duckdb", tmp_path / "report")
    page = index.read_text()
    assert page.index("<h2>Summary</h2>") < page.index("<h2>Leaderboard</h2>")
    # the first screen's one figure: gold against the proxy at the matched level (the Gao fit comes later)
    first = page[:page.index("<h2>Summary</h2>")]
    assert first.count("<img") == 1 and 'src="figures/level_gold-aesthetic_aesthetic_toy-seen.png"' in first
    summary = page[page.index("<h2>Summary</h2>"):page.index("<h2>Leaderboard</h2>")]
    # one table (seen prompts) with method, verdict, change and the five other scores at the level
    head = summary[summary.index("<thead>"):summary.index("</thead>")]
    assert head.count("<th>") == 8 and "aesthetic change" in head and "gold-fidelity @ level" in head
    assert "kl-to-pretrained" not in head and "AUC" not in head
    board = page[page.index("<h2>Leaderboard</h2>"):]
    seen, unseen, comp = (board.index(f"prompts {p} ") for p in ("toy-seen", "toy-unseen", "toy-compositional"))
    assert seen < unseen < comp
    browser = _chromium()
    assert browser, "chromium is missing: scripts/setup.sh installs Debian's chromium package"
    probe = tmp_path / "report" / "probe.html"
    script = ("<script>window.onload=()=>{const t=[...document.querySelectorAll('table')];"
              "document.body.insertAdjacentHTML('beforeend','<pre id=\"m\">'+JSON.stringify({page:"
              "document.documentElement.scrollWidth,tables:t.map(x=>[x.parentElement.scrollWidth,x.parentElement.clientWidth])})"
              "+'</pre>')}</script>")
    probe.write_text(page.replace("</body>", script + "</body>"))
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1300,900",
                          "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    start = dom.rindex('<pre id="m">') + len('<pre id="m">')  # the element, not the script's text
    m = json.loads(html.unescape(dom[start:dom.index("</pre>", start)]))
    # the summary, two tables per board (3 prompt sets), the overoptimization coefficients, the runs table;
    # each fits its box
    assert m["page"] <= 1300 and len(m["tables"]) == 9
    assert all(w <= box for w, box in m["tables"]), m["tables"]


def test_method_styles_are_fixed_and_distinct():
    """A method keeps its colour in every figure whatever else is plotted; the 13 methods are told apart."""
    import seaborn as sns

    from bench.spec.catalog import methods
    from bench.report.build import method_styles

    every = method_styles(methods.names())
    pairs = {(tuple(st["color"]), st["linestyle"]) for st in every.values()}
    assert len(pairs) == len(every) == len(methods.names())
    assert method_styles(["tdpo"]) == {"tdpo": every["tdpo"]}
    assert method_styles(["alignprop", "tdpo-r"]) == {m: every[m] for m in ("alignprop", "tdpo-r")}
    assert all(tuple(st["color"]) in [tuple(c) for c in sns.color_palette("colorblind", 10)] for st in every.values())
    # a method outside the catalog comes after it, never taking a catalog method's style
    n = len(methods.names())
    new = method_styles(["zz-new", "tdpo"])
    assert new["tdpo"] == every["tdpo"]
    assert new["zz-new"] == dict(color=sns.color_palette("colorblind", 10)[n % 10], linestyle="-" if n < 10 else "--",
                                 marker="o" if n < 10 else "s")
    # past ten, a repeated colour is told apart by its dash and its marker
    names = list(methods.names())
    assert every[names[10]]["color"] == every[names[0]]["color"]
    assert (every[names[10]]["linestyle"], every[names[10]]["marker"]) == ("--", "s")
    assert (every[names[0]]["linestyle"], every[names[0]]["marker"]) == ("-", "o")


def test_figures_are_seaborn_lines_on_the_frames_in_fixed_styles(tmp_path):
    """The report's figures are seaborn lines drawn from the tidy frames: the mean over seeds with a band
    only where there are several seeds, each method in its fixed colour; a cross-reward path keeps
    checkpoint order rather than sorting by x."""
    import matplotlib
    import numpy as np
    import pandas as pd

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.report.figures import mean_path, method_lines, method_styles, themed, wide_points
    from bench.report.frames import figure_frames
    from bench.store.database import connect

    make_db(tmp_path / "b.duckdb")
    con = connect(tmp_path / "b.duckdb", read_only=True)
    frames = figure_frames(con)
    con.close()
    points = wide_points(frames["curves"])
    styles = method_styles(["A", "B"])
    with themed():
        fig, ax = plt.subplots()
        method_lines(ax, points, "reward_queries", "aesthetic", styles)
        by_colour = {tuple(np.round(matplotlib.colors.to_rgb(line.get_color()), 6)): line for line in ax.lines}
        a = by_colour[tuple(np.round(styles["A"]["color"], 6))]
        b = by_colour[tuple(np.round(styles["B"]["color"], 6))]
        assert list(a.get_xdata()) == [0, 10, 20] and list(a.get_ydata()) == pytest.approx([1, 2.5, 4.5])
        assert list(b.get_ydata()) == pytest.approx([1, 2, 3])
        # the band: over A's two seeds (2 and 3 at query 10) it spans them; over B's one seed it is empty
        height = {}
        for band in ax.collections:
            colour = tuple(np.round(band.get_facecolor()[0][:3], 6))
            ys = [y for path in band.get_paths() for x, y in path.vertices if x == 10]
            height[colour] = max(ys) - min(ys) if ys else 0.0  # matplotlib drops an empty polygon
        assert height[tuple(np.round(styles["A"]["color"], 6))] == pytest.approx(1.0)
        assert height[tuple(np.round(styles["B"]["color"], 6))] == 0
        plt.close(fig)
        # a stopped run (A_s1 ends at 10 queries): A's mean line ends where both seeds still are, instead of
        # drawing A_s0 alone at 20 (5, where the mean of both was 4.5)
        fig, ax = plt.subplots()
        stopped = points[~((points["run_id"] == "A_s1") & (points["reward_queries"] == 20))]
        method_lines(ax, stopped, "reward_queries", "aesthetic", styles)
        lines = {tuple(np.round(matplotlib.colors.to_rgb(line.get_color()), 6)): line for line in ax.lines}
        a = lines[tuple(np.round(styles["A"]["color"], 6))]
        assert list(a.get_xdata()) == [0, 10] and list(a.get_ydata()) == pytest.approx([1, 2.5])
        assert list(lines[tuple(np.round(styles["B"]["color"], 6))].get_xdata()) == [0, 10, 20]
        plt.close(fig)
        means = mean_path(points, ["aesthetic", "pickscore"])
        a_path = means[means["method"] == "A"]
        assert list(a_path["aesthetic"]) == pytest.approx([1, 2.5, 4.5])
        assert list(a_path["pickscore"]) == pytest.approx([10, 8.5, 4.5])
        fig, ax = plt.subplots()
        zigzag = pd.DataFrame(dict(method="A", reward_queries=[0, 10, 20], x=[1.0, 3.0, 2.0], y=[5.0, 6.0, 7.0]))
        method_lines(ax, zigzag, "x", "y", styles, path=True)
        assert list(ax.lines[0].get_xdata()) == [1.0, 3.0, 2.0] and not ax.collections
        plt.close(fig)


def test_an_outlier_method_is_drawn_off_scale_so_the_others_stay_readable():
    """Three methods move the proxy by 1 and 1.5; AlignProp by 3 in x and 3 in y (10x the others' y span):
    the axes cover the others, AlignProp is named as off scale on the axis it dominates."""
    import pandas as pd

    from bench.report.figures import inlier_limits

    rows = []
    for method, dx, dy in (("a", 1.0, 0.2), ("b", 1.5, 0.3), ("alignprop", 3.0, -3.0)):
        for k in range(3):
            rows.append({"method": method, "reward_queries": 10 * k, "x": 7 + dx * k / 2, "y": 7 + dy * k / 2})
    means = pd.DataFrame(rows)
    xlim, ylim, off = inlier_limits(means, "x", "y")
    assert off == {"y": ["alignprop"]}           # x: 3 is only 2x the next span (1.5): not an outlier
    assert xlim == pytest.approx((7 - 0.08 * 3, 10 + 0.08 * 3))
    assert ylim == pytest.approx((7 - 0.08 * 0.3, 7.3 + 0.08 * 0.3))
    two = means[means["method"] != "b"]
    assert inlier_limits(two, "x", "y")[2] == {}  # with two methods nothing is an outlier
    # two wide methods (the 15-method main command: AlignProp and PRDP on HPSv2): both off scale, as neither is
    # 2.5x the other but the narrower is 2.5x the next; the others' span sets the axis
    rows = []
    for method, dy in (("a", 0.2), ("b", 0.3), ("c", 0.25), ("d", 0.1), ("e", 0.3), ("prdp", -1.0),
                       ("alignprop", -2.0)):
        for k in range(3):
            rows.append({"method": method, "reward_queries": 10 * k, "x": 7 + k, "y": 7 + dy * k / 2})
    _, ylim, off = inlier_limits(pd.DataFrame(rows), "x", "y")
    assert off == {"y": ["alignprop", "prdp"]}
    assert ylim == pytest.approx((7 - 0.08 * 0.3, 7.3 + 0.08 * 0.3))
    # at most a third of the methods: with 3 methods only one can be off scale, however wide the second
    three = pd.DataFrame([r for r in rows if r["method"] in ("a", "prdp", "alignprop")])
    assert inlier_limits(three, "x", "y")[2] == {}  # 2.0 is not 2.5x 1.0, and prdp cannot go without alignprop


def test_a_study_read_part_way_is_marked_interim_with_the_seeds_it_holds():
    from bench.report.build import Board, plan_completeness
    from bench.spec.plan import ComparisonPlan

    plan = ComparisonPlan(name="s", version=3, declared="before", level_setters="paper",
                          primary=(("tdpo-r", "tdpo"), ("tdpo-r", "ddpo-100")), primary_score="gold-aesthetic",
                          primary_prompts="seen", seeds=3)
    seen = Board("aesthetic", "toy-seen", 1.0, seeds={"tdpo-r": (0, 1), "tdpo": (0, 1, 2), "ddpo-100": (0,)})
    unseen = Board("aesthetic", "toy-unseen", 1.0, seeds={"tdpo-r": (2,), "alignprop": (0, 1, 2, 3)})
    line = plan_completeness([seen, unseen], plan)  # tdpo-r's seed 2 is scored on another board: 3 in all
    assert line.startswith("Interim: plan s v3 fixes 3 seeds per method; this database holds ")
    assert "tdpo-r 3, tdpo 3, ddpo-100 1." in line  # alignprop is not a primary method: not counted
    seen.seeds["ddpo-100"] = (0, 1, 2)
    assert plan_completeness([seen, unseen], plan) is None  # every primary method has exactly 3
    seen.seeds["tdpo"] = (0, 1, 2, 3)
    assert "tdpo 4" in plan_completeness([seen, unseen], plan)  # more than declared is flagged too
    assert plan_completeness([seen], ComparisonPlan(**{**plan.__dict__, "seeds": None})) is None


def test_gold_shape_reads_stopped_runs_over_their_common_marks(tmp_path):
    """A run that stopped early (the stop rule) has fewer marks: the shape is read over the marks every run has
    (0 and 10 here), not dropped. Both seeds rise 0.5 on every image by 10."""
    from bench.report.build import build_boards

    same = lambda *g: [[v] * 4 for v in g]
    con = _gold_db(tmp_path / "s.duckdb", {"B_s0": ("B", 0, same(5.0, 5.5, 5.2)), "B_s1": ("B", 1, same(5.0, 5.5, 5.0))})
    con.execute("DELETE FROM scores WHERE run_id = 'B_s1' AND reward_queries = 20")
    (board,) = build_boards(con)
    con.close()
    shape = board.gold_shapes["gold-aesthetic"]["B"]
    assert shape.peak_queries == 10 and shape.rise[0] == pytest.approx(0.5) and shape.total[0] == pytest.approx(0.5)
