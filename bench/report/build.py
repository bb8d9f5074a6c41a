"""The leaderboard (Markdown, CSV, HTML), the figures (PNG and PDF) and the HTML
report, built only from the DuckDB store (plus the image grids that evaluation
saves next to each run's checkpoints).

Everything is deterministic: the same database gives byte-identical tables.
"""

from __future__ import annotations

import functools
import html
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from bench.report.analysis import (R2_BAR, Curve, GaoFit, GoldShape, change_verdict, fraction_level, gao_fit,
                                   gold_shape, interpolate_at, interval_mean, load_curves, matched_level, mean_ci,
                                   normalised_auc, paired_changes)
from bench.report.figures import (GOLD, KL, curve_figures, diagnostics_figure, diversity_figures,  # noqa: F401
                                  gao_figures, kl_figures, level_figures, method_styles, themed,
                                  training_figures)
from bench.report.calibration import (LAST_PROXY_CAPTION, LAST_PROXY_HEADER, PLANTED_HEADER, calibrate,
                                      control_params, last_proxy_rows, planted_rows)
from bench.report.frames import FINISHED, figure_frames
from bench.spec.plan import ComparisonPlan


def higher_is_better(reward: str) -> bool:
    from bench.spec.catalog import rewards

    if reward == KL:
        return False
    return rewards.get(reward).meta.get("higher_is_better", True) if reward in rewards else True


@dataclass
class Cell:
    mean: float | None
    ci: float | None = None
    values: tuple = ()
    """The per-seed values behind the mean (for comparisons between methods)."""

    def text(self, digits: int = 3) -> str:
        if self.mean is None:
            return "-"
        return f"{self.mean:.{digits}f}" + (f" ± {self.ci:.{digits}f}" if self.ci is not None else "")


@dataclass
class Board:
    train_reward: str
    prompt_set: str
    level: float
    """The matched in-domain level: every run of the `level_methods` reaches it."""
    columns: list[str] = field(default_factory=list)
    rows: list[tuple[str, int, list[Cell]]] = field(default_factory=list)
    """(method, number of seeds, one Cell per column)."""
    verdicts: dict[str, str] = field(default_factory=dict)
    """method -> 'improves' / 'flat' / 'worsens': the change of the in-domain score from query 0 to the
    final checkpoint, judged by its 95% CI (see `change_cell`)."""
    level_methods: list[str] = field(default_factory=list)
    """The methods whose runs set the level: those that improve (all, when none does), less the companion
    papers' methods when another improves (see `build_boards`)."""
    level_with_companions: float | None = None
    """The level an improving companion method would have set with the others; None when none was left out."""
    level_judged_on: str = ""
    """The prompt set whose verdicts chose `level_methods` (the seen set when there is one)."""
    gold_shapes: dict[str, dict[str, GoldShape]] = field(default_factory=dict)
    """gold reward -> method -> how its curve moved (rises then falls, falls, rises, flat)."""
    seeds: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """method -> its runs' seeds, in the order of every Cell's values (for comparisons paired by seed)."""
    gao: dict[str, dict[str, list[tuple[int, GaoFit | None, GaoFit | None]]]] = field(default_factory=dict)
    """gold reward -> method -> per seed (seed, RL fit, best-of-n fit) of the gold gain against sqrt(KL)."""
    level_rule: str = ""
    """How the level was set when not by the highest level every setting run reaches: 'fixed by plan ...' or
    '<fraction> of the median best gain'."""


def _agg(values: list[float | None]) -> Cell:
    vals = [v for v in values if v is not None]
    if len(vals) < len(values) or not vals:
        # shown as '-'; the per-seed values (None where a run never reached the level) still pair by seed
        return Cell(None, values=tuple(values) if vals else ())
    return Cell(*mean_ci(vals), values=tuple(vals))


def change_cell(con, runs: list[Curve], reward: str) -> Cell:
    """The paired fixed-seed change of `reward` from query 0 to the final checkpoint.
    One seed: mean and 95% CI over the evaluation images (the seed's own noise only);
    two or more: mean and CI over the seeds' mean changes (run-to-run noise, as every
    other column)."""
    per_run = [paired_changes(con, c.run_id, reward, c.prompt_set) for c in runs]
    if not all(per_run):
        return Cell(None)
    if len(per_run) == 1:
        return Cell(*mean_ci(per_run[0])) if len(per_run[0]) > 1 else Cell(per_run[0][0])
    return Cell(*mean_ci([sum(d) / len(d) for d in per_run]))


def _row_cells(runs, xs, sign, level, change, others, gold, with_kl: bool, co_primary: ComparisonPlan | None):
    """One method's cells on a board, in the board's column order: the training reward's final value, change and
    queries to the level (with the KL there), every other score at the level and its AUC, the gold scores' peaks
    and drops after them, and the plan's co-primary interval mean when the board has one. `xs` holds each run's
    training-reward curve in the better-is-higher direction (`sign` undoes it)."""
    cells = [_agg([sign * xs[c.run_id][-1] for c in runs]), change,
             _agg([interpolate_at(xs[c.run_id], [float(q) for q in c.queries], level) for c in runs])]
    if with_kl:
        cells.append(_agg([interpolate_at(xs[c.run_id], c.scores[KL], level) for c in runs]))
    for key in ("level", "auc"):
        for r in others:
            s = 1.0 if higher_is_better(r) else -1.0
            fn = interpolate_at if key == "level" else normalised_auc
            cells.append(_agg([_signed(fn(xs[c.run_id], [s * v for v in c.scores[r]], level), s) for c in runs]))
    for g in gold:
        cells.append(_agg([max(c.scores[g]) for c in runs]))
    for g in gold:
        cells.append(_agg([max(c.scores[g]) - c.scores[g][-1] for c in runs]))
    if co_primary is not None:
        low, high = sorted(sign * v for v in co_primary.auc_interval)
        s = 1.0 if higher_is_better(co_primary.primary_score) else -1.0
        cells.append(_agg([_signed(interval_mean(xs[c.run_id], [s * v for v in c.scores[co_primary.primary_score]],
                                                 low, high), s) for c in runs]))
    return cells


def _sort_rows(board: Board, others: list[str]) -> None:
    """Sort a board's rows by the first non-gold out-of-domain score at the matched level, best first (in that
    score's own direction); methods that never reach the level last, then by name."""
    if not others:
        return
    first = next((r for r in others if r not in GOLD), others[0])
    key_col = board.columns.index(f"{first} @ level")
    s = 1.0 if higher_is_better(first) else -1.0
    board.rows.sort(key=lambda row: (row[2][key_col].mean is None, -s * (row[2][key_col].mean or 0.0), row[0]))


def build_boards(con, plan: ComparisonPlan | None = None, curves: list[Curve] | None = None) -> list[Board]:
    """The leaderboards, one per training reward and prompt set, under `plan`'s matched-level rule (the main
    command's plan when none is given). With `curves` and no database (`con` None: a study replayed from its
    exported checkpoint means), each change is taken over the seeds' mean changes, as a database gives it for
    two seeds or more (one seed has no interval, so no verdict), and the gold curves' shapes, which need
    every image, are left out."""
    from bench.spec.catalog import MAIN_PLAN

    plan = plan or MAIN_PLAN
    curves = load_curves(con) if curves is None else curves
    order = {"seen": 0, "unseen": 1, "compositional": 2}
    roles = _roles()
    # seen, unseen, compositional (then any other set by name): the order a reader asks in
    keys = sorted({(c.train_reward, c.prompt_set) for c in curves},
                  key=lambda k: (k[0], order.get(roles.get(k[1], ""), 9), k[1]))
    groups = {k: [c for c in curves if (c.train_reward, c.prompt_set) == k] for k in keys}
    changes, verdicts = _changes(con, groups)
    boards = []
    for (train_reward, pset), group in groups.items():
        sign = 1.0 if higher_is_better(train_reward) else -1.0
        xs = {c.run_id: [sign * v for v in c.scores[train_reward]] for c in group}
        methods = sorted({c.method for c in group})
        # A method that does not improve its training reward can only "reach" the start, and
        # would pin every comparison at the pretrained model; so the level is matched over
        # the methods that improve it (judged on the seen prompts, the largest set and the
        # one trained on; all methods when none improves). The others show "-" where they
        # never reach the level.
        judge = next((p for t, p in keys if t == train_reward and roles.get(p) == "seen"), pset)
        # a method its paper says does not learn (the catalog's expected_not_to_learn) never sets the level
        candidates = [m for m in methods if not _expected_flat(m)] or methods
        improving = [m for m in candidates if verdicts.get((train_reward, judge, m)) == "improves"] or candidates
        # The level answers the benchmark's question, the TDPO paper's (at one in-domain score, which method
        # keeps out-of-domain and gold scores?), so that paper's methods set it. A companion paper's method
        # (PRDP, dense DPO) is placed where it reaches the level; the level it would have set is kept.
        setters = ([m for m in improving if not _companion(m)] or improving) if plan.level_setters == "paper" \
            else improving
        fixed = plan.fixed_level is not None and plan.fixed_level[0] == train_reward \
            and roles.get(pset) == plan.primary_prompts

        def rule_level(among):
            if plan.level_fraction is not None:  # plan v3 of the main command: no barely-learning method pins it
                return fraction_level({m: [xs[c.run_id] for c in group if c.method == m] for m in among},
                                      plan.level_fraction)
            return matched_level([xs[c.run_id] for c in group if c.method in among])
        level = sign * plan.fixed_level[1] if fixed else rule_level(setters)
        with_companions = level if fixed else rule_level(improving)
        present = set.intersection(*(set(c.scores) for c in group))
        others = sorted(present - {train_reward, KL})
        cols = [f"{train_reward} final", f"{train_reward} change", "queries to level"]
        cols += [f"{KL} @ level"] if KL in present else []
        cols += [f"{r} @ level" for r in others] + [f"{r} AUC" for r in others]
        gold = [g for g in GOLD if g in others]
        cols += [f"{g} peak" for g in gold] + [f"{g} drop after peak" for g in gold]
        co_primary = fixed and plan.auc_score is not None and plan.primary_score in present
        cols += [plan.auc_score] if co_primary else []
        board = Board(train_reward, pset, sign * level, cols, verdicts={m: verdicts[train_reward, pset, m] for m in methods},
                      level_methods=setters, level_judged_on=judge,
                      level_with_companions=sign * with_companions if setters != improving and not fixed else None,
                      level_rule=f"fixed by plan {plan.label}" if fixed else
                      f"{plan.level_fraction:g} of the median best gain" if plan.level_fraction is not None else "")
        for method in methods:
            runs = sorted((c for c in group if c.method == method), key=lambda c: c.seed)
            cells = _row_cells(runs, xs, sign, level, changes[train_reward, pset, method], others, gold,
                               KL in present, plan if co_primary else None)
            board.rows.append((method, len(runs), cells))
            board.seeds[method] = tuple(c.seed for c in runs)
            for g in gold:
                shape = gold_shape(con, runs, g) if con is not None else None
                if shape is not None:
                    board.gold_shapes.setdefault(g, {})[method] = shape
                if KL in present:
                    board.gao.setdefault(g, {})[method] = [(c.seed, *_gao_fits(c, g)) for c in runs]
        _sort_rows(board, others)
        boards.append(board)
    return boards


def _changes(con, groups: dict[tuple, list[Curve]]) -> tuple[dict, dict]:
    """Per (training reward, prompt set, method): the change of the training reward from query 0 to the last
    checkpoint (`change_cell`; without a database, the mean of the seeds' mean changes) and its verdict."""
    changes, verdicts = {}, {}
    for (train_reward, pset), group in groups.items():
        for m in sorted({c.method for c in group}):
            runs = [c for c in group if c.method == m]
            changes[train_reward, pset, m] = cell = change_cell(con, runs, train_reward) if con is not None else \
                Cell(*mean_ci([c.scores[train_reward][-1] - c.scores[train_reward][0] for c in runs]))
            verdicts[train_reward, pset, m] = change_verdict(cell.mean, cell.ci, higher_is_better(train_reward))
    return changes, verdicts


def _gao_fits(c: Curve, gold: str) -> tuple[GaoFit | None, GaoFit | None]:
    """Gao et al.'s two forms fitted to one run: gold gain over query 0 against d = sqrt(KL to pretrained)."""
    d = [math.sqrt(max(k, 0.0)) for k in c.scores[KL]]
    gain = [v - c.scores[gold][0] for v in c.scores[gold]]
    return gao_fit(d, gain, "rl"), gao_fit(d, gain, "bon")


def _expected_flat(method: str) -> str | None:
    from bench.spec.catalog import methods

    return methods.get(method).meta.get("expected_not_to_learn") if method in methods else None


def _companion(method: str) -> str | None:
    from bench.spec.catalog import methods

    return methods.get(method).meta.get("companion") if method in methods else None


def _signed(v: float | None, s: float) -> float | None:
    return None if v is None else s * v


# ------------------------------------------------------------------------------ tables
def boards_markdown(boards: list[Board], compact: bool = False) -> str:
    """Markdown tables; `compact` (for the terminal) keeps the seen prompts and drops the AUC columns."""
    out = []
    roles = _roles()
    for b in boards:
        if compact and roles.get(b.prompt_set) not in ("seen", None):
            continue
        keep = [i for i, col in enumerate(b.columns) if not (compact and col.endswith(" AUC"))]
        out.append(f"### trained on {b.train_reward}, prompts {b.prompt_set} ({_level_text(b)})\n")
        out.append(_frame_md(board_frame(b, keep, ["method", "seeds", "verdict"])))
    return "\n".join(out)


def _level_text(b: Board) -> str:
    if b.level_rule.startswith("fixed"):
        return f"matched level {b.level:.3f}, {b.level_rule}"
    rule = f" ({b.level_rule})" if b.level_rule else ""
    left_out = sorted(m for m, _, _ in b.rows if m not in b.level_methods)
    if not left_out:
        return f"matched level {b.level:.3f}{rule}"
    flat = [m for m in left_out if _expected_flat(m)]
    companions = [m for m in left_out if _companion(m) and m not in flat]
    other = [m for m in left_out if m not in flat and m not in companions]
    parts = [f"matched level {b.level:.3f}{rule}, over the methods that improve on {b.level_judged_on}"]
    if companions:
        text = f"companion papers' methods, placed where they reach it: {', '.join(companions)}"
        if b.level_with_companions is not None:
            text += f" (with them the level would be {b.level_with_companions:.3f})"
        parts.append(text)
    if other:
        parts.append(f"not improving: {', '.join(other)}")
    if flat:
        parts.append(f"left out as their paper says they do not learn: {', '.join(flat)}")
    return "; ".join(parts)


def verdict_lines(boards: list[Board]) -> list[str]:
    """One line per training reward: which methods improved it on the seen prompts; and one
    per gold reward: whose gold score rose then fell (overoptimization), fell, rose or stayed flat."""
    lines = []
    roles = _roles()
    for b in boards:
        if roles.get(b.prompt_set) not in ("seen", None):
            continue
        by = {}
        for method, _, _ in b.rows:
            by.setdefault(b.verdicts.get(method, "-"), []).append(method)
        parts = [f"{v}: {', '.join(sorted(by[v]))}" for v in ("improves", "flat", "worsens", "-") if v in by]
        one_seed = sorted(m for m, n, _ in b.rows if n == 1)
        lines.append(f"{b.train_reward} on {b.prompt_set}, final checkpoint vs query 0 (paired fixed seeds, "
                     f"95% CI): " + "; ".join(parts)
                     + (f" [one seed ({', '.join(one_seed)}): {IMAGE_LEVEL}]" if one_seed else ""))
        for g, shapes in b.gold_shapes.items():
            lines.append(gold_line(g, b.prompt_set, shapes))
    return lines


def gold_line(gold: str, prompt_set: str, shapes: dict[str, GoldShape]) -> str:
    def change(c):
        return "-" if c[0] is None else f"{c[0]:+.2f}" + (f" ± {c[1]:.2f}" if c[1] is not None else "")

    parts = []
    for trend in ("rises then falls", "falls", "rises", "flat"):
        ms = sorted(m for m, s in shapes.items() if s.shape == trend)
        if not ms:
            continue
        if trend == "rises then falls":
            ms = [f"{m} (peak at {shapes[m].peak_queries}: {change(shapes[m].rise)}, then {change(shapes[m].fall)})"
                  for m in ms]
        parts.append(f"{trend}: {', '.join(ms)}")
    return f"{gold} on {prompt_set} (paired, 95% CI): " + "; ".join(parts)


def boards_frame(boards: list[Board]):
    """The leaderboard as one long, tidy DataFrame: a row per board, method and column, with the mean and 95%
    CI half-width over seeds, and for the skewed 'queries to level' a BCa bootstrap interval (3+ seeds)."""
    import pandas as pd

    from bench.report.analysis import bootstrap_ci

    rows = []
    for b in boards:
        for method, n, cells in b.rows:
            for col, c in zip(b.columns, cells):
                boot = bootstrap_ci(c.values) if col == "queries to level" and c.mean is not None else None
                rows.append((b.train_reward, b.prompt_set, b.level, method, n, verdict_text(b, method, n), col,
                             c.mean, c.ci, *(boot or (None, None))))
    return pd.DataFrame(rows, columns=["train_reward", "prompt_set", "matched_level", "method", "seeds", "verdict",
                                       "column", "mean", "ci95", "boot_low", "boot_high"]).astype(
        {"mean": float, "ci95": float, "boot_low": float, "boot_high": float, "matched_level": float})


def boards_csv(boards: list[Board]) -> str:
    return boards_frame(boards).to_csv(index=False, float_format="%.6g", lineterminator="\n")


IMAGE_LEVEL = "image-level, seed variance not included"
"""What a one-seed verdict's CI leaves out: it is over the evaluation images of one run."""


def verdict_text(b: Board, method: str, n: int) -> str:
    """The verdict, labelled when it rests on one seed (its CI is over images, not seeds)."""
    v = b.verdicts.get(method, "-")
    return f"{v} ({IMAGE_LEVEL})" if n == 1 and v != "-" else v


def _cell_text(b: Board, cells: list[Cell], i: int) -> str:
    return cells[i].text(0) if b.columns[i] == "queries to level" else cells[i].text()


def board_frame(b: Board, keep: list[int], lead: list[str]):
    """A board as a DataFrame of display strings: the lead columns (of method, seeds, verdict), then the
    kept ones; every table of the report (Markdown, HTML) is written from such a frame."""
    rows = []
    for method, n, cells in b.rows:
        first = {"method": method, "seeds": str(n), "verdict": verdict_text(b, method, n)}
        rows.append([first[k] for k in lead] + [_cell_text(b, cells, i) for i in keep])
    return _frame(lead + [b.columns[i] for i in keep], rows)


def _board_table(b: Board, keep: list[int], lead: list[str]) -> str:
    return _frame_html(board_frame(b, keep, lead))


def boards_html(boards: list[Board]) -> str:
    """Every board as two tables that fit a 1300 px screen: scores at the matched level, then
    what happened over the whole run (areas, gold peaks and drops)."""
    parts = []
    for b in boards:
        parts.append(f"<h3>trained on {html.escape(b.train_reward)}, prompts {html.escape(b.prompt_set)} "
                     f"<small>({html.escape(_level_text(b))})</small></h3>")
        at_level = [i for i, c in enumerate(b.columns) if not c.endswith((" AUC", " peak", " drop after peak"))]
        over_run = [i for i in range(len(b.columns)) if i not in at_level]
        parts.append(_board_table(b, at_level, ["method", "seeds", "verdict"]))
        if over_run:
            parts.append("<p><small>over the whole run:</small></p>" + _board_table(b, over_run, ["method"]))
    return "\n".join(parts)


SUMMARY_NOTE = ("change: the training reward's paired change from query 0 to the final checkpoint (95% CI); "
                "the other columns: each score where the method's in-domain curve first reaches the matched level "
                "(the highest level every improving method of the TDPO paper reaches), '-' where it never does.")


def summary_html(boards: list[Board]) -> str:
    """The first screen: per training reward, on the seen prompts, each method's verdict, its change,
    and one number per out-of-domain and gold score at the matched level."""
    roles = _roles()
    parts = []
    for b in boards:
        if roles.get(b.prompt_set) not in ("seen", None):
            continue
        keep = [b.columns.index(f"{b.train_reward} change")]
        keep += [i for i, c in enumerate(b.columns) if c.endswith(" @ level") and not c.startswith(KL)]
        parts.append(f"<p><b>trained on {html.escape(b.train_reward)}</b>, prompts {html.escape(b.prompt_set)} "
                     f"({html.escape(_level_text(b))})</p>" + _board_table(b, keep, ["method", "verdict"]))
    if parts:
        parts.append(f"<p><small>{html.escape(SUMMARY_NOTE)}</small></p>")
    return "\n".join(parts)


# ------------------------------------------------------------------------------ figures
# ------------------------------------------------------------------------------ the declared comparisons
def comparison_rows(boards: list[Board], plan: ComparisonPlan) -> list[dict]:
    """Every comparison the plan's pairs allow: per board and score at the matched level (KL aside), the
    first method minus the second over seeds, paired by seed on the seeds both ran (2 or more; a seed only one
    ran is left out), else Welch over all of each one's seeds, with
    its p-value and minimum detectable difference (80% power, 95% confidence). The plan's primary score and
    prompt set are primary; everything else is exploratory, its p-values Holm-adjusted as one family. Where a
    CI includes 0, the data rule out differences beyond the TOST bound at 5% ('no difference larger than X')."""
    from bench.report.analysis import holm, paired_comparison, welch_comparison

    roles = _roles()
    out = []
    for b in boards:
        rows = {m: cells for m, _, cells in b.rows}
        for focus, other in plan.primary:
            if focus not in rows or other not in rows:
                continue
            for i, col in enumerate(b.columns):
                if not (col.endswith(" @ level") or col == plan.auc_score) or col.startswith(KL):
                    continue
                score = col[:-len(" @ level")] if col.endswith(" @ level") else col
                sa, sc = b.seeds.get(focus, ()), b.seeds.get(other, ())
                # a run that never reaches the level has no value there: its seed leaves the pairs
                a_by = {seed: v for seed, v in zip(sa, rows[focus][i].values) if v is not None}
                c_by = {seed: v for seed, v in zip(sc, rows[other][i].values) if v is not None}
                sa, sc = tuple(a_by), tuple(c_by)
                a, c = list(a_by.values()), list(c_by.values())
                never = len(b.seeds.get(focus, ())) + len(b.seeds.get(other, ())) - len(a) - len(c)
                if len(a) < 2 or len(c) < 2:
                    continue
                common = [seed for seed in sa if seed in sc]
                if len(common) >= 2:  # a part-way grid: paired on the seeds both ran, the others left out
                    a, c = [a[sa.index(seed)] for seed in common], [c[sc.index(seed)] for seed in common]
                    comp = paired_comparison(a, c)
                else:
                    comp = welch_comparison(a, c)
                out.append(dict(primary=plan.is_primary(focus, other, score, roles.get(b.prompt_set, "")),
                                train_reward=b.train_reward, prompt_set=b.prompt_set, score=score,
                                focus=focus, other=other, comp=comp, better_up=higher_is_better(score),
                                never_reached=never))
    # Holm within each family: the exploratory rows decide on it; the primary rows too where the plan judges them
    # family-wise (version 4 on), else at 95% each with their family-wise p beside (what two primaries cost)
    for family in ([r for r in out if not r["primary"]], [r for r in out if r["primary"]]):
        for r, adj in zip(family, holm([r["comp"].p for r in family])):
            r["p_holm"] = adj
            r["family"] = len(family)
    for r in out:
        comp, up = r["comp"], 1.0 if r["better_up"] else -1.0
        significant = r["p_holm"] < 0.05 if not r["primary"] or plan.familywise else comp.p < 0.05
        if significant and comp.ci < abs(comp.diff):
            r["says"] = f"{r['focus']} {'better' if up * comp.diff > 0 else 'worse'}"
        else:
            r["says"] = f"no difference larger than {comp.equivalence_bound:.3g}"
    return sorted(out, key=lambda r: not r["primary"])


PRIMARY_RULE = {False: "only the exploratory ones are judged on it (the primaries at 95% each, as the plan declares)",
                True: "both families are judged on it (the plan declares its primaries family-wise)"}
"""How the primary comparisons are judged, in the report's words, by `ComparisonPlan.familywise`."""


COMPARISON_HEADER = ("role", "trained on", "prompts", "score at the matched level", "difference", "seeds",
                     "mean ± 95% CI", "design", "p", "p (Holm)", "min. detectable (80% power)", "at 95%")


def comparison_table(rows: list[dict]) -> list[tuple]:
    return [("primary" if r["primary"] else "exploratory", r["train_reward"], r["prompt_set"], r["score"],
             f"{r['focus']} - {r['other']}", str(r["comp"].n), f"{r['comp'].diff:+.4f} ± {r['comp'].ci:.4f}",
             "paired by seed" if r["comp"].paired else "Welch", f"{r['comp'].p:.3g}",
             f"{r['p_holm']:.3g}", f"{r['comp'].mdd:.3g}", r["says"]) for r in rows]


def plan_completeness(boards: list[Board], plan: ComparisonPlan) -> str | None:
    """A line when the database holds other seeds than the plan fixes for its primary methods (a study stopped
    part-way and resumed later is read in between): its results are interim, and its power statements hold only
    at the declared number. None when the plan fixes no number or every primary method has exactly it."""
    if plan.seeds is None:
        return None
    held: dict[str, set[int]] = {m: set() for pair in plan.primary for m in pair}
    for b in boards:
        for m in held:
            held[m] |= set(b.seeds.get(m, ()))
    if all(len(v) == plan.seeds for v in held.values()):
        return None
    counts = ", ".join(f"{m} {len(v)}" for m, v in held.items())
    return (f"Interim: plan {plan.label} fixes {plan.seeds} seeds per method; this database holds {counts}. "
            f"The comparisons below use the seeds present; the plan's power statements hold only at {plan.seeds}.")


def primary_sentences(rows: list[dict], plan: ComparisonPlan) -> list[str]:
    """The plan's question answered in words, one sentence per primary comparison."""
    out = []
    for r in rows:
        if not r["primary"]:
            continue
        c = r["comp"]
        design = "paired by seed" if c.paired else "Welch"
        resolving = (f"the data rule out a difference larger than {c.equivalence_bound:.3g} and could have "
                     f"detected one of {c.mdd:.3g} with 80% power")
        if r["says"].startswith("no difference") and plan.familywise and r["family"] > 1:
            # the interval is each comparison's own 95%: it may exclude zero where Holm over the family does not
            verdict = (f"no difference family-wise (Holm over the {r['family']} primary comparisons: p = "
                       f"{r['p_holm']:.3g}; alone {c.diff:+.3f} ± {c.ci:.3f}, p = {c.p:.3g}, {design}, {c.n} seeds): "
                       + resolving)
        elif r["says"].startswith("no difference"):
            verdict = f"no difference at 95% ({c.diff:+.3f} ± {c.ci:.3f}, {design}, {c.n} seeds): " + resolving
        else:
            verdict = (f"{r['says']} ({c.diff:+.3f} ± {c.ci:.3f}, {design}, {c.n} seeds, p = {c.p:.3g}; the data "
                       f"rule out a difference larger than {c.equivalence_bound:.3g}; the design detects {c.mdd:.3g} "
                       f"with 80% power)")
            if r["family"] > 1 and plan.familywise:
                verdict += f"; Holm over the {r['family']} primary comparisons: p = {r['p_holm']:.3g}"
            elif r["family"] > 1 and r["p_holm"] >= 0.05:  # declared at 95% each; family-wise it does not hold
                verdict += (f"; Holm over the {r['family']} primary comparisons: p = {r['p_holm']:.3g}, "
                            "not significant family-wise")
        if r.get("never_reached"):
            verdict += f" ({r['never_reached']} run(s) never reached the level and left their pairs)"
        where = "(the declared proxy interval)" if r["score"] == plan.auc_score else "at the matched level"
        out.append(f"{r['score']} {where} on {r['prompt_set']}, {r['focus']} - {r['other']}: {verdict}.")
    return out


def gao_rows(boards: list[Board]) -> list[tuple]:
    """Per board, gold reward and method: Gao et al.'s RL-form coefficients (mean over seeds, with a t 95%
    interval over seeds from 2 seeds on), the fitted peak, the KL and gold gain there, and how well each form
    fits. A form whose mean R² is below R2_BAR is marked and not ranked on. (Until 2026-12-07 the interval was
    a BCa bootstrap, which covers 83-87% over 7 seeds: tests/test_statistics.py measures both.)"""
    from bench.report.analysis import seed_interval

    def stat(values):
        vals = [v for v in values if v is not None]
        if not vals:
            return "-"
        m = sum(vals) / len(vals)
        low_high = seed_interval(vals) if len(vals) == len(values) else None
        return f"{m:.3g}" + (f" [{low_high[0]:.3g}, {low_high[1]:.3g}]" if low_high else "")

    out = []
    roles = _roles()
    for b in boards:
        if roles.get(b.prompt_set) not in ("seen", None):
            continue
        for g, per_method in b.gao.items():
            for method, fits in sorted(per_method.items()):
                rl = [f[1] for f in fits]
                bon = [f[2] for f in fits]
                if any(f is None for f in rl + bon):
                    continue
                r2_rl = sum(f.r2 for f in rl) / len(rl)
                r2_bon = sum(f.r2 for f in bon) / len(bon)
                better = "RL" if r2_rl >= r2_bon else "best-of-n"
                poor = max(r2_rl, r2_bon) < R2_BAR
                outside = sum(f.peak_extrapolated for f in rl)
                peak = stat([f.d_peak for f in rl]) + (f"; outside the measured d in {outside} of {len(rl)} seeds"
                                                       if outside else "")
                out.append((b.train_reward, b.prompt_set, g, method, str(len(fits)), stat([f.alpha for f in rl]),
                            stat([f.beta for f in rl]), peak, stat([f.kl_peak for f in rl]),
                            stat([f.gain_peak for f in rl]), f"{r2_rl:.2f}", f"{r2_bon:.2f}",
                            f"poor fit (R² < {R2_BAR:g}): not ranked" if poor else better))
    return out


def drift_rows(sets) -> list[tuple]:
    """Per training reward, prompt set and method, each image-statistics drift metric's change from query 0 to
    the final checkpoint (the same evaluation images, so the change is paired), mean over seeds ± 95% CI."""
    if sets.empty:
        return []
    sub = sets[sets["metric"].str.startswith("drift_")]
    out = []
    for (train_reward, pset, method), g in sub.groupby(["train_reward", "prompt_set", "method"], sort=True):
        cells = []
        for metric in ("drift_brightness", "drift_saturation", "drift_latent_sq"):
            changes = []
            for _, run in g[g["metric"] == metric].groupby("run_id"):
                run = run.sort_values("reward_queries")
                if len(run) >= 2 and int(run["reward_queries"].iloc[0]) == 0:
                    changes.append(float(run["value"].iloc[-1] - run["value"].iloc[0]))
            cells.append(Cell(*mean_ci(changes)).text(4) if changes else "-")
        out.append((train_reward, pset, method, *cells))
    return out


DRIFT_HEADER = ("trained on", "prompts", "method", "brightness change", "saturation change", "x0² change")


GAO_HEADER = ("trained on", "prompts", "gold", "method", "seeds", "alpha (RL)", "beta (RL)", "d* = sqrt(KL) at peak",
              "KL at peak", "gold gain at peak", "R² RL", "R² best-of-n", "better form")


# ------------------------------------------------------------------------------ overoptimization, diversity, compute, diagnostics
COMPUTE_HEADER = ("method", "runs", "reward queries", "UNet forward rows", "UNet backward rows", "VAE decodes",
                  "reward forwards", "encoder forwards (outside queries)", "gradient updates")


def compute_rows(con) -> list[tuple]:
    """Per training reward and method: what the final checkpoint had spent, mean over seeds."""
    rows = con.execute(f"""
        WITH last AS (SELECT c.* FROM checkpoints c
                      JOIN (SELECT run_id, max(reward_queries) AS q FROM checkpoints GROUP BY 1) m
                      ON c.run_id = m.run_id AND c.reward_queries = m.q)
        SELECT r.reward, r.method, count(*), avg(l.reward_queries), avg(l.unet_forward), avg(l.unet_backward),
               avg(l.vae_decodes), avg(l.reward_forwards), avg(l.encoder_forwards), avg(l.gradient_updates)
        FROM last l JOIN runs r USING (run_id) WHERE r.{FINISHED} GROUP BY 1, 2 ORDER BY 1, 2""").fetchall()

    def fmt(v):
        return "-" if v is None else f"{v:,.0f}"
    return [(f"{m} ({rw})", str(n), *(fmt(v) for v in vals)) for rw, m, n, *vals in rows]


CRITIC_HEADER = ("method", "runs", "explained variance, mean over epochs", "at the last epoch", "first step",
                 "middle step", "last step")


def critic_rows(con) -> tuple[list[tuple], dict[str, float]]:
    """The temporal critic's explained variance of the return (methods whose runs log it: the TDPO family), mean
    over each run's epochs then over its seeds, at the last epoch, and per denoising step (the first state
    sampled, the middle one, the last; each a mean over epochs and seeds). Returns the table and
    {method: mean over epochs and seeds} for the manipulation check."""
    runs = con.execute(f"""
        SELECT r.method, r.run_id, avg(m.value), arg_max(m.value, m.epoch)
        FROM train_metrics m JOIN runs r USING (run_id) WHERE r.{FINISHED}
        AND m.metric = 'critic_explained_variance' AND isfinite(m.value) GROUP BY 1, 2 ORDER BY 1, 2""").fetchall()
    steps = con.execute(f"""
        SELECT r.method, m.metric, avg(m.value) FROM train_metrics m JOIN runs r USING (run_id)
        WHERE r.{FINISHED} AND m.metric LIKE 'critic_ev_step_%' AND isfinite(m.value)
        GROUP BY 1, 2 ORDER BY 1, 2""").fetchall()
    by: dict[str, list] = {}
    for method, _run, mean, last in runs:
        by.setdefault(method, []).append((mean, last))
    per_step: dict[str, list[float]] = {}
    for method, _metric, v in steps:
        per_step.setdefault(method, []).append(v)
    rows, means = [], {}
    for method, vals in by.items():
        means[method] = sum(v[0] for v in vals) / len(vals)
        s = per_step.get(method, [])
        pick = [f"{s[i]:.2f}" for i in (0, len(s) // 2, len(s) - 1)] if s else ["-"] * 3
        rows.append((method, str(len(vals)), f"{means[method]:.3f}", f"{sum(v[1] for v in vals) / len(vals):.3f}",
                     *pick))
    return rows, means


def manipulation_check(means: dict[str, float], plan: ComparisonPlan) -> str | None:
    """The plan's manipulation check on its primary comparisons between methods with a critic: one sentence
    when a compared method's critic explains less of the return than the plan's declared threshold."""
    if plan.critic_ev_threshold is None:
        return None
    low = sorted({m for pair in plan.primary for m in pair if m in means and means[m] < plan.critic_ev_threshold})
    if not low:
        return None
    values = ", ".join(f"{m} {means[m]:.2f}" for m in low)
    return (f"The critic has no leverage here: this comparison does not test the reset (the critic's explained "
            f"variance of the return, mean over epochs and seeds: {values}; plan {plan.label} declares "
            f"{plan.critic_ev_threshold:g}).")


DIAGNOSTICS = ("ratio_at_old_maxdev", "clipfrac", "approx_kl", "clamp_fraction", "gap_to_target", "gap_moved", "cf_loss",
               "critic_explained_variance", "kl_penalty_ratio")
"""Per-epoch sanity metrics (see the report's Diagnostics section)."""
RATIO_TOLERANCE = 1e-4
"""The ratio at the old parameters must be 1: sampling-time and training-time log-probs come from the
same precision path. A deviation beyond this (the smallest PPO clip at SD scale) flags the run."""


def diagnostics(train, folder: Path, styles: dict) -> tuple[list[str], list[tuple]]:
    """From the train-metrics frame: a figure of every per-epoch sanity metric against reward queries, and a
    table of each run's last-epoch values with a flag where something is off."""
    frame = train[train["metric"].isin(DIAGNOSTICS)].sort_values(["run_id", "reward_queries"], kind="stable")
    frame = frame[["run_id", "method", "reward_queries", "metric", "value"]]
    if frame.empty:
        return [], []
    rows = [(run, m, q, k, None if v != v else float(v)) for run, m, q, k, v in frame.itertuples(index=False)]
    metrics = [m for m in DIAGNOSTICS if any(r[3] == m for r in rows)]
    pngs = diagnostics_figure(frame, folder, styles, metrics, RATIO_TOLERANCE)
    table = []
    for run in sorted({r[0] for r in rows}):
        mine = [r for r in rows if r[0] == run]
        last = {k: v for _, _, _, k, v in mine}  # ordered by queries: the last value wins
        worst_ratio = max((v for _, _, _, k, v in mine if k == "ratio_at_old_maxdev"), default=None)
        flags = []
        if worst_ratio is not None and worst_ratio > RATIO_TOLERANCE:
            flags.append(f"ratio at old parameters off by {worst_ratio:.1e}")
        if last.get("clipfrac") is not None and last["clipfrac"] > 0.9:
            flags.append("nearly every step clipped")
        if last.get("critic_explained_variance") is not None and last["critic_explained_variance"] < -1:
            flags.append("critic worse than a constant")
        table.append((run, mine[0][1], *[("-" if last.get(m) is None else f"{last[m]:.3g}") for m in metrics],
                      "; ".join(flags) or "ok"))
    return pngs, [("run", "method", *metrics, "check")] + table


def effective_tables(con) -> list[tuple[str, list[tuple]]]:
    """The scale rule's effective quantities at every scale the stored runs used."""
    from bench.spec.prompts import resolve_prompt_set
    from bench.spec.scale import effective_table_rows
    from bench.spec.runspec import RunSpec, scale_for

    scales = {}
    for (config,) in con.execute("SELECT config FROM runs ORDER BY run_id").fetchall():
        try:
            spec = RunSpec.from_dict(json.loads(config))
            prompts = len(resolve_prompt_set(spec.train_prompts)[1])
        except Exception:  # a run of an older version, or a prompt file gone: skip it here
            continue
        scale = scale_for(spec)
        scales[(scale, prompts, spec.backbone)] = None
    return [effective_table_rows(sc, n, bb) for sc, n, bb in scales]


def unfinished_line(runs: list[tuple[str, str]]) -> str:
    """The runs (run_id, status) that every table and figure leaves out (`frames.FINISHED`), named: a grid killed
    part-way leaves its runs 'running', and their logged training would otherwise enter the means."""
    left = sorted((status, run_id) for run_id, status in runs if status != "finished")
    if not left:
        return ""
    kinds = ", ".join(f"{sum(s == k for s, _ in left)} {k}" for k in sorted({s for s, _ in left}))
    names = ", ".join(r for _, r in left[:3]) + (f" and {len(left) - 3} more" if len(left) > 3 else "")
    return (f"{len(left)} run(s) not finished ({kinds}: {names}) are left out of every table and figure; "
            f"`python -m bench runs` lists them with their state.")


def below_m_line(effective: list[tuple[str, list[tuple]]], present: set[str]) -> str:
    """The methods of these runs whose updates per reward query are not m times their source's, with the
    multiple and why (a floor or a ceiling): a confound to read beside their results."""
    from bench.spec.scale import EFFECTIVE_HEADER

    multiple, why = EFFECTIVE_HEADER.index("x source"), EFFECTIVE_HEADER.index("not m because")
    parts = []
    for title, rows in effective:
        for r in rows:
            if r[0] in present and r[why] != "-":
                parts.append(f"{r[0]} {r[multiple]} ({r[why]})")
    return ("Updates per reward query other than m x the source's (read their results with it): "
            + "; ".join(parts) + ".") if parts else ""


def _frame(header, rows):
    import pandas as pd

    return pd.DataFrame([[str(v) for v in r] for r in rows], columns=[str(h) for h in header])


def _frame_html(frame) -> str:
    """An HTML table written by pandas (escaped, no index), in a box that scrolls if it must."""
    return f'<div class="scroll">{frame.to_html(index=False, border=0, escape=True)}</div>'


def _frame_md(frame) -> str:
    """A Markdown pipe table of a frame of strings, cells unpadded so that a row reads and greps as
    '| B | 1 | improves | ... |' (pandas' to_markdown pads every cell and needs tabulate)."""
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _table_html(header, rows) -> str:
    return _frame_html(_frame(header, rows))


def _table_md(header, rows) -> str:
    return _frame_md(_frame(header, rows))


ALIGNPROP_NOTE = ("AlignProp backpropagates through the reward: one of its reward queries returns the gradient of "
                  "the reward with respect to the image, not only a scalar. At an equal budget of reward queries it "
                  "therefore receives more information per query than the black-box methods (DDPO, TDPO, PRDP, "
                  "dense DPO); its sample efficiency is not comparable one for one.")


# ------------------------------------------------------------------------------ the report
def matched_grids(con, out_dir: Path, boards: list[Board]) -> list[tuple[str, str, int, str]]:
    """Per seen-set board and method: (method, run_id, queries, grid path) of the checkpoint of
    seed-order-first run whose in-domain score is closest to the matched level."""
    seen_roles = _roles()
    picks = []
    curves = load_curves(con)
    for b in boards:
        if seen_roles.get(b.prompt_set) != "seen":
            continue
        for method, _, _ in b.rows:
            runs = sorted((c for c in curves if c.method == method and c.prompt_set == b.prompt_set
                           and c.train_reward == b.train_reward), key=lambda c: c.seed)
            if not runs:
                continue
            c = runs[0]
            xs = c.scores[b.train_reward]
            k = min(range(len(xs)), key=lambda i: (abs(xs[i] - b.level), i))
            grid = out_dir / "runs" / c.run_id / "grids" / f"q{c.queries[k]:08d}.png"
            if grid.is_file():
                picks.append((method, c.run_id, c.queries[k], str(grid)))
    return picks


def _roles() -> dict[str, str]:
    from bench.spec.catalog import prompt_sets

    return {e.name: e.meta.get("role", "") for e in prompt_sets.entries()}


@dataclass
class ReportData:
    """What the report shows, read from the database once (figures already drawn into the report folder)."""

    boards: list
    pngs: list
    kl_pngs: list
    div_pngs: list
    diag_pngs: list
    diag_table: list
    gao_pngs: list
    compute: list
    critic: list
    critic_means: dict
    comparisons: list
    question: list
    """The comparisons as table rows."""
    sentences: list
    """The primary comparisons in words."""
    gao: list
    drift: list
    effective: list
    grids: list
    runs: list
    calibration: object = None
    """bench/report/calibration.py's Calibration: the A/A rate and the planted-effect power curve."""
    level_pngs: list = field(default_factory=list)
    """The first screen's figure: each seed's gold against the proxy, the level and the mean there."""

    @property
    def left_out(self) -> str:
        """The runs the report leaves out (not finished) in one line; empty when every run finished."""
        return unfinished_line([(r[0], r[6]) for r in self.runs])


def write_report(db_path: Path, report_dir: Path, out_dir: Path | None = None,
                 boards: list[Board] | None = None, plan: ComparisonPlan | None = None, calibration=None) -> Path:
    """Leaderboard files, figures and index.html under report_dir; returns the HTML path.
    `boards` (from `build_boards` on the same database and plan) and `calibration` (from `calibrate` on them) save
    computing them again; `plan`: the
    comparison plan whose rules judge the runs (the main command's when None)."""
    from bench.spec.catalog import MAIN_PLAN
    from bench.store.database import connect

    plan = plan or MAIN_PLAN
    report_dir = Path(report_dir)
    out_dir = Path(out_dir) if out_dir else Path(db_path).parent
    con = connect(db_path, read_only=True)
    try:
        data = _read_report(con, report_dir, out_dir, plan, boards, calibration)
    finally:
        con.close()
    report_dir.mkdir(parents=True, exist_ok=True)
    below_m = below_m_line(data.effective, {r[1] for r in data.runs})
    interim = plan_completeness(data.boards, plan)
    check = manipulation_check(data.critic_means, plan)
    (report_dir / "leaderboard.md").write_text(_leaderboard_md(data, plan, below_m, interim, check))
    (report_dir / "leaderboard.csv").write_text(boards_csv(data.boards))
    grid_html = _copy_grids(data.grids, report_dir / "grids")
    board_html = boards_html(data.boards)
    (report_dir / "leaderboard.html").write_text(_page("Leaderboard", board_html))
    body = _index_body(data, plan, db_path, below_m, interim, check, board_html, grid_html)
    index = report_dir / "index.html"
    index.write_text(_page("Reward overoptimization report", "\n".join(part for part in body if part)))
    (report_dir / "report.json").write_text(json.dumps({"figures": data.level_pngs + data.pngs,
                                                        "grids": [g[:3] for g in data.grids]},
                                                       indent=1))
    return index


def _read_report(con, report_dir: Path, out_dir: Path, plan: ComparisonPlan, boards, calibration=None) -> ReportData:
    """The boards, tables and figures of the report (figures drawn into report_dir/figures)."""
    boards = build_boards(con, plan) if boards is None else boards
    fig_dir = report_dir / "figures"
    if fig_dir.exists():
        shutil.rmtree(fig_dir)
    frames = figure_frames(con)
    styles = method_styles(sorted(set().union(*(f["method"] for f in frames.values()))))
    with themed():
        pngs = curve_figures(frames["curves"], fig_dir, styles) + training_figures(frames["train"], fig_dir, styles)
        kl_pngs = kl_figures(frames["curves"], fig_dir, styles)
        div_pngs = diversity_figures(frames["sets"], fig_dir, styles)
        diag_pngs, diag_table = diagnostics(frames["train"], fig_dir, styles)
        gao_pngs = gao_figures(frames["curves"], _mean_gao(boards), fig_dir, styles)
        level_pngs = level_figures(frames["curves"], _level_targets(boards, plan), fig_dir, styles)
    critic, critic_means = critic_rows(con)
    comparisons = comparison_rows(boards, plan)
    runs = con.execute("SELECT run_id, method, reward, suite, seed, budget, status FROM runs ORDER BY run_id").fetchall()
    return ReportData(boards=boards, pngs=pngs, kl_pngs=kl_pngs, div_pngs=div_pngs, diag_pngs=diag_pngs,
                      diag_table=diag_table, gao_pngs=gao_pngs, compute=compute_rows(con), critic=critic,
                      critic_means=critic_means, comparisons=comparisons, question=comparison_table(comparisons),
                      sentences=primary_sentences(comparisons, plan), gao=gao_rows(boards),
                      drift=drift_rows(frames["sets"]), effective=effective_tables(con),
                      grids=matched_grids(con, out_dir, boards), runs=runs, level_pngs=level_pngs,
                      calibration=calibration or (calibrate(load_curves(con), boards, comparisons, plan)
                                                  if comparisons else None))


def _leaderboard_md(data: ReportData, plan: ComparisonPlan, below_m, interim, check) -> str:
    md = (f"{below_m}\n\n" if below_m else "") + boards_markdown(data.boards)
    left_out = data.left_out
    if data.gao:
        md = ("### overoptimization coefficients (Gao et al. 2022: gold gain = d (alpha - beta ln d), d = sqrt(KL))"
              "\n\n" + _table_md(GAO_HEADER, data.gao) + "\n" + md)
    if interim:
        md = f"**{interim}**\n\n" + md
    if data.critic:
        md = ("### the temporal critic: explained variance of the return (the manipulation check of a reset)\n\n"
              + (f"**{check}**\n\n" if check else "") + _table_md(CRITIC_HEADER, data.critic) + "\n" + md)
    if data.question:
        cal = data.calibration
        md = (f"### the declared comparisons (plan {plan.label}; p (Holm): adjusted within the primary and within "
              f"the exploratory comparisons; {PRIMARY_RULE[plan.familywise]})\n\n"
              + "".join(f"- {s}\n" for s in data.sentences) + (f"- {cal.line()}\n" if cal else "") + "\n"
              + (_table_md(PLANTED_HEADER, planted_rows(cal)) + "\n" if cal and (cal.planted or cal.unpaired) else "")
              + (f"{LAST_PROXY_CAPTION}\n\n" + _table_md(LAST_PROXY_HEADER, last_proxy_rows(cal)) + "\n"
                 if cal and cal.at_last_proxy else "")
              + _table_md(COMPARISON_HEADER, data.question) + "\n" + md)
    if data.compute:
        md += "\n### compute at the final checkpoint (mean over seeds)\n\n" + _table_md(COMPUTE_HEADER, data.compute)
    if left_out:
        md = f"**{left_out}**\n\n" + md
    return md


def _copy_grids(grids, grid_dir: Path) -> list[str]:
    """The image grids at the matched level, copied into the report; their HTML figures."""
    if grid_dir.exists():
        shutil.rmtree(grid_dir)
    out = []
    for method, _run, q, path in grids:
        grid_dir.mkdir(parents=True, exist_ok=True)
        name = f"{method}_q{q:08d}.png"
        shutil.copyfile(path, grid_dir / name)
        out.append(f'<figure><img src="grids/{html.escape(name)}" alt="{html.escape(method)}">'
                   f"<figcaption>{html.escape(method)} at {q} queries</figcaption></figure>")
    return out


def _index_body(data: ReportData, plan: ComparisonPlan, db_path, below_m, interim, check, board_html,
                grid_html) -> list[str]:
    """index.html's sections, from the template's blocks (bench/report/templates/report.html)."""
    from bench.spec.scale import EFFECTIVE_HEADER

    esc, figs, boards = html.escape, _figures_html, data.boards
    question = data.question

    def bold(text):
        return _block("bold", text=esc(text)) if text else ""
    return [
        _block("header", n_runs=len(data.runs), methods=esc(", ".join(sorted({r[1] for r in data.runs}))),
               db=esc(str(db_path)), plan=esc(plan.label), declared=esc(plan.declared),
               primary=esc(", ".join(f"{a} vs {b}" for a, b in plan.primary)), score=esc(plan.primary_score),
               prompts=esc(plan.primary_prompts)),
        bold(data.left_out),
        bold(interim),
        _block("question", sentences="\n".join(bold(s) for s in data.sentences)
               + bold(check) + (f"<p>{esc(data.calibration.line())}</p>" if data.calibration else ""),
               figures=figs(data.level_pngs),
               # the line sits with the sentences; its tables follow the figure, so the first screen holds both
               calibration=_block("calibration", table=_calibration_tables_html(data.calibration))
               if data.calibration else "")
        if question or data.level_pngs else "",
        _block("summary", verdicts="\n".join(f"<p>{esc(line)}</p>" for line in verdict_lines(boards)),
               table=summary_html(boards)) if boards else "",
        _block("scores_note"),
        _block("comparisons", table=_table_html(COMPARISON_HEADER, question), primary_rule=esc(
            PRIMARY_RULE[plan.familywise])) if question else "",
        _block("leaderboard", below_m=bold(below_m),
               shapes_note=_block("shapes_note") if any(b.gold_shapes for b in boards) else "",
               boards=board_html or _block("no_scores")),
        _block("figures", figures=figs(data.pngs)),
        _block("gao", r2_bar=f"{R2_BAR:g}", table=_table_html(GAO_HEADER, data.gao) if data.gao else _block("no_gao"),
               figures=figs(p for p in data.gao_pngs if p.endswith(".png"))),
        _block("kl", figures=figs(data.kl_pngs) or _block("no_kl")),
        _block("diversity", figures=figs(data.div_pngs) or _block("no_diversity"),
               drift=_block("drift", table=_table_html(DRIFT_HEADER, data.drift)) if data.drift else ""),
        _block("compute", alignprop_note=esc(ALIGNPROP_NOTE),
               table=_table_html(COMPUTE_HEADER, data.compute) if data.compute else _block("no_compute")),
        _block("diagnostics", tolerance=f"{RATIO_TOLERANCE:g}", figures=figs(data.diag_pngs),
               table=_table_html(data.diag_table[0], data.diag_table[1:]) if data.diag_table
               else _block("no_diagnostics")),
        _block("critic", check=bold(check), table=_table_html(CRITIC_HEADER, data.critic)) if data.critic else "",
        _block("effective", tables="\n".join(f"<h3>{esc(title)}</h3>" + _table_html(EFFECTIVE_HEADER, rows)
                                             for title, rows in data.effective)),
        _block("samples", grids='<div class="grids">' + "".join(grid_html) + "</div>") if grid_html
        else _block("no_samples"),
        _block("runs", rows="".join("<tr>" + "".join(f"<td>{esc(str(v))}</td>" for v in r) + "</tr>"
                                    for r in data.runs)),
    ]


def _calibration_tables_html(cal) -> str:
    """The planted table, and under it, where a weight has no pair, the exploratory read at the last proxy."""
    html_ = _table_html(PLANTED_HEADER, planted_rows(cal)) if cal.planted or cal.unpaired else ""
    if cal.at_last_proxy:
        html_ += f"<p><small>{html.escape(LAST_PROXY_CAPTION)}</small></p>" + _table_html(LAST_PROXY_HEADER,
                                                                                      last_proxy_rows(cal))
    return html_


def _level_targets(boards: list[Board], plan: ComparisonPlan) -> list[tuple]:
    """(train reward, prompt set, score, level, proxy interval, {method: per-seed score at the level}) of the plan's
    primary score on its primary prompts, one per board the question is asked on: what the report's first figure
    draws, its means taken from the board's own cells (the comparisons' values). A control reward's
    board (a planted blend, read only through the calibration) is not one, and with a fixed level only that
    reward's board is."""
    roles = _roles()
    col = f"{plan.primary_score} @ level"
    return [(b.train_reward, b.prompt_set, plan.primary_score, b.level, plan.auc_interval,
             {m: cells[b.columns.index(col)].values for m, _, cells in b.rows} if col in b.columns else None)
            for b in boards if roles.get(b.prompt_set) == plan.primary_prompts
            and control_params(b.train_reward) is None
            and (plan.fixed_level is None or b.train_reward == plan.fixed_level[0])]


def _mean_gao(boards: list[Board]) -> dict:
    """(train reward, prompt set, gold) -> {method: (mean alpha, mean beta)} of the RL form, for the figure."""
    out = {}
    for b in boards:
        for g, per_method in b.gao.items():
            for method, fits in per_method.items():
                rl = [f[1] for f in fits]
                if rl and all(f is not None for f in rl):
                    out.setdefault((b.train_reward, b.prompt_set, g), {})[method] = (
                        sum(f.alpha for f in rl) / len(rl), sum(f.beta for f in rl) / len(rl))
    return out


def _page(title: str, body: str) -> str:
    return _block("page", title=html.escape(title), body=body) + "\n"


TEMPLATE = Path(__file__).with_name("templates") / "report.html"
"""The report's HTML, one block per section (`<!-- block: NAME -->`), filled with string.Template."""


@functools.lru_cache(maxsize=1)
def _blocks() -> dict[str, str]:
    import re

    parts = re.split(r"^<!-- block: ([a-z_]+) -->\n", TEMPLATE.read_text(), flags=re.M)
    return {name: text.strip("\n") for name, text in zip(parts[1::2], parts[2::2])}


def _block(name: str, **values) -> str:
    """A template block filled with its values (escaped by the caller); a missing value is an error, not a blank."""
    from string import Template

    return Template(_blocks()[name]).substitute(values)


def _figures_html(names) -> str:
    return "\n".join(f'<figure><img src="figures/{html.escape(p)}" alt="{html.escape(p)}"></figure>' for p in names)
