"""The leaderboard (Markdown, CSV, HTML), the figures (PNG and PDF) and the HTML
report, built only from the DuckDB store (plus the image grids that evaluation
saves next to each run's checkpoints).

Everything is deterministic: the same database gives byte-identical tables.
"""

from __future__ import annotations

import csv
import html
import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from bench.analysis import (Curve, change_verdict, interpolate_at, load_curves, matched_level, mean_ci,
                            normalised_auc, paired_changes)

GOLD = ("gold-aesthetic", "gold-fidelity")


def higher_is_better(reward: str) -> bool:
    from bench.catalog import rewards

    return rewards.get(reward).meta.get("higher_is_better", True) if reward in rewards else True


@dataclass
class Cell:
    mean: float | None
    ci: float | None = None

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
    """The methods whose runs set the level: those that improve (all, when none does)."""
    level_judged_on: str = ""
    """The prompt set whose verdicts chose `level_methods` (the seen set when there is one)."""


def _agg(values: list[float | None]) -> Cell:
    vals = [v for v in values if v is not None]
    if len(vals) < len(values) or not vals:
        return Cell(None)
    return Cell(*mean_ci(vals))


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


def build_boards(con) -> list[Board]:
    curves = load_curves(con)
    keys = sorted({(c.train_reward, c.prompt_set) for c in curves})
    groups = {k: [c for c in curves if (c.train_reward, c.prompt_set) == k] for k in keys}
    changes, verdicts = {}, {}
    for (train_reward, pset), group in groups.items():
        sign = 1.0 if higher_is_better(train_reward) else -1.0
        for m in sorted({c.method for c in group}):
            changes[train_reward, pset, m] = cell = change_cell(con, [c for c in group if c.method == m], train_reward)
            verdicts[train_reward, pset, m] = change_verdict(cell.mean, cell.ci, sign > 0)
    roles = _roles()
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
        improving = [m for m in methods if verdicts.get((train_reward, judge, m)) == "improves"] or methods
        level = matched_level([xs[c.run_id] for c in group if c.method in improving])
        others = sorted(set.intersection(*(set(c.scores) for c in group)) - {train_reward})
        cols = [f"{train_reward} final", f"{train_reward} change", "queries to level"]
        cols += [f"{r} @ level" for r in others] + [f"{r} AUC" for r in others]
        gold = [g for g in GOLD if g in others]
        cols += [f"{g} peak" for g in gold] + [f"{g} drop after peak" for g in gold]
        board = Board(train_reward, pset, sign * level, cols, verdicts={m: verdicts[train_reward, pset, m] for m in methods},
                      level_methods=improving, level_judged_on=judge)
        for method in methods:
            runs = sorted((c for c in group if c.method == method), key=lambda c: c.seed)
            cells = [_agg([sign * xs[c.run_id][-1] for c in runs]), changes[train_reward, pset, method],
                     _agg([interpolate_at(xs[c.run_id], [float(q) for q in c.queries], level) for c in runs])]
            for key in ("level", "auc"):
                for r in others:
                    s = 1.0 if higher_is_better(r) else -1.0
                    fn = interpolate_at if key == "level" else normalised_auc
                    cells.append(_agg([_signed(fn(xs[c.run_id], [s * v for v in c.scores[r]], level), s)
                                       for c in runs]))
            for g in gold:
                cells.append(_agg([max(c.scores[g]) for c in runs]))
            for g in gold:
                cells.append(_agg([max(c.scores[g]) - c.scores[g][-1] for c in runs]))
            board.rows.append((method, len(runs), cells))
        # sort by the first non-gold out-of-domain score at the matched level, best first (its own direction)
        if others:
            first = next((r for r in others if r not in GOLD), others[0])
            key_col = cols.index(f"{first} @ level")
            s = 1.0 if higher_is_better(first) else -1.0
            board.rows.sort(key=lambda row: (row[2][key_col].mean is None,
                                             -s * (row[2][key_col].mean or 0.0), row[0]))
        boards.append(board)
    return boards


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
        header = ["method", "seeds", "verdict"] + [b.columns[i] for i in keep]
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        for method, n, cells in b.rows:
            texts = [cells[i].text(0) if b.columns[i] == "queries to level" else cells[i].text() for i in keep]
            out.append("| " + " | ".join([method, str(n), b.verdicts.get(method, "-")] + texts) + " |")
        out.append("")
    return "\n".join(out)


def _level_text(b: Board) -> str:
    left_out = sorted(m for m, _, _ in b.rows if m not in b.level_methods)
    if not left_out:
        return f"matched level {b.level:.3f}"
    return (f"matched level {b.level:.3f}, over the methods that improve on {b.level_judged_on}; "
            f"not improving: {', '.join(left_out)}")


def verdict_lines(boards: list[Board]) -> list[str]:
    """One line per training reward: which methods improved it on the seen prompts."""
    lines = []
    roles = _roles()
    for b in boards:
        if roles.get(b.prompt_set) not in ("seen", None):
            continue
        by = {}
        for method, _, _ in b.rows:
            by.setdefault(b.verdicts.get(method, "-"), []).append(method)
        parts = [f"{v}: {', '.join(sorted(by[v]))}" for v in ("improves", "flat", "worsens", "-") if v in by]
        lines.append(f"{b.train_reward} on {b.prompt_set}, final checkpoint vs query 0 (paired fixed seeds, "
                     f"95% CI): " + "; ".join(parts))
    return lines


def boards_csv(boards: list[Board]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["train_reward", "prompt_set", "matched_level", "method", "seeds", "verdict", "column", "mean", "ci95"])
    for b in boards:
        for method, n, cells in b.rows:
            for col, c in zip(b.columns, cells):
                w.writerow([b.train_reward, b.prompt_set, f"{b.level:.6g}", method, n, b.verdicts.get(method, "-"),
                            col, "" if c.mean is None else f"{c.mean:.6g}", "" if c.ci is None else f"{c.ci:.6g}"])
    return buf.getvalue()


def boards_html(boards: list[Board]) -> str:
    parts = []
    for b in boards:
        parts.append(f"<h3>trained on {html.escape(b.train_reward)}, prompts {html.escape(b.prompt_set)} "
                     f"<small>({html.escape(_level_text(b))})</small></h3>")
        head = "".join(f"<th>{html.escape(h)}</th>" for h in ["method", "seeds", "verdict"] + b.columns)
        parts.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>')
        for method, n, cells in b.rows:
            texts = [c.text(0) if col == "queries to level" else c.text() for c, col in zip(cells, b.columns)]
            row = [method, str(n), b.verdicts.get(method, "-")] + texts
            parts.append("<tr>" + "".join(f"<td>{html.escape(t)}</td>" for t in row) + "</tr>")
        parts.append("</tbody></table></div>")
    return "\n".join(parts)


# ------------------------------------------------------------------------------ figures
def _mean_curve(curves: list[Curve], reward: str) -> tuple[list[int], list[float]]:
    """Mean over seeds per checkpoint (checkpoints every seed has)."""
    qs = sorted(set.intersection(*(set(c.queries) for c in curves)))
    return qs, [sum(c.scores[reward][c.queries.index(q)] for c in curves) / len(curves) for q in qs]


def _save(fig, folder: Path, name: str) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for ext in ("png", "pdf"):
        fig.savefig(folder / f"{name}.{ext}", dpi=110, bbox_inches="tight", metadata={"CreationDate": None}
                    if ext == "pdf" else {"Software": None})
        files.append(f"{name}.{ext}")
    return files


def make_figures(con, folder: Path) -> list[str]:
    """Cross-reward, sample-efficiency, neuron-state and gold-vs-proxy figures; returns PNG names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = load_curves(con)
    pngs = []
    methods = sorted({c.method for c in curves})
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))  # distinct hues first, their light shades after
    colors = {m: plt.get_cmap("tab20")(order[i % 20]) for i, m in enumerate(methods)}
    for train_reward, pset in sorted({(c.train_reward, c.prompt_set) for c in curves}):
        group = [c for c in curves if c.train_reward == train_reward and c.prompt_set == pset]
        for kind, chosen in (("cross_reward", [r for r in sorted(set.intersection(*(set(c.scores) for c in group)))
                                               if r != train_reward and r not in GOLD]),
                             ("gold_vs_proxy", [g for g in GOLD if all(g in c.scores for c in group)])):
            if not chosen:
                continue
            fig, axes = plt.subplots(1, len(chosen), figsize=(4.2 * len(chosen), 3.6), squeeze=False)
            for ax, r in zip(axes[0], chosen):
                for m in methods:
                    runs = [c for c in group if c.method == m]
                    if not runs:
                        continue
                    _, x = _mean_curve(runs, train_reward)
                    _, y = _mean_curve(runs, r)
                    ax.plot(x, y, marker="o", ms=3, lw=1.4, color=colors[m], label=m)
                    ax.plot(x[:1], y[:1], marker="*", ms=11, color="black", zorder=5)  # the pretrained model
                ax.set_xlabel(f"{train_reward} (in-domain)")
                ax.set_ylabel(r)
                ax.set_title(f"{r} vs {train_reward} — {pset}", fontsize=9)
                ax.grid(alpha=0.3)
            axes[0][-1].legend(fontsize=7, loc="best")
            pngs.append(_save(fig, folder, f"{kind}_{train_reward}_{pset}")[0])
            plt.close(fig)
        # sample efficiency on fixed evaluation seeds: the in-domain score against reward queries
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for m in methods:
            runs = [c for c in group if c.method == m]
            if runs:
                qs, y = _mean_curve(runs, train_reward)
                ax.plot(qs, y, marker="o", ms=3, lw=1.4, color=colors[m], label=m)
        ax.set_xlabel("reward queries")
        ax.set_ylabel(f"{train_reward} (fixed-seed evaluation)")
        ax.set_title(f"sample efficiency — {pset}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        pngs.append(_save(fig, folder, f"eval_reward_vs_queries_{train_reward}_{pset}")[0])
        plt.close(fig)
    rows = con.execute("""
        SELECT r.method, r.reward, t.reward_queries, t.epoch, t.metric, avg(t.value)
        FROM train_metrics t JOIN runs r USING (run_id)
        WHERE t.metric IN ('reward_mean', 'critic_dormant_fraction', 'critic_dormant_overlap', 'policy_dormant_fraction')
        GROUP BY ALL ORDER BY 1, 2, 3, 5""").fetchall()
    for train_reward in sorted({r[1] for r in rows}):
        sub = [r for r in rows if r[1] == train_reward and r[4] == "reward_mean"]
        if sub:
            fig, ax = plt.subplots(figsize=(5.5, 3.8))
            for m in sorted({r[0] for r in sub}):
                pts = [(q, v) for mm, _, q, _, _, v in sub if mm == m]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.3, color=colors.get(m), label=m)
            ax.set_xlabel("reward queries")
            ax.set_ylabel(f"training {train_reward} (epoch mean)")
            ax.set_title("sample efficiency", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            pngs.append(_save(fig, folder, f"sample_efficiency_{train_reward}")[0])
            plt.close(fig)
        neuron = [r for r in rows if r[1] == train_reward and r[4] != "reward_mean"]
        if neuron:
            metrics = sorted({r[4] for r in neuron})
            fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
            for ax, metric in zip(axes[0], metrics):
                for m in sorted({r[0] for r in neuron}):
                    pts = [(e, v) for mm, _, _, e, k, v in neuron if mm == m and k == metric]
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.3, color=colors.get(m), label=m)
                ax.set_xlabel("epoch")
                ax.set_ylabel(metric)
                ax.grid(alpha=0.3)
            axes[0][-1].legend(fontsize=7)
            pngs.append(_save(fig, folder, f"neuron_states_{train_reward}")[0])
            plt.close(fig)
    return pngs


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
    from bench.catalog import prompt_sets

    return {e.name: e.meta.get("role", "") for e in prompt_sets.entries()}


def write_report(db_path: Path, report_dir: Path, out_dir: Path | None = None,
                 boards: list[Board] | None = None) -> Path:
    """Leaderboard files, figures and index.html under report_dir; returns the HTML path.
    `boards` (from `build_boards` on the same database) saves building them again."""
    from bench.store import connect

    report_dir = Path(report_dir)
    out_dir = Path(out_dir) if out_dir else Path(db_path).parent
    con = connect(db_path, read_only=True)
    try:
        boards = build_boards(con) if boards is None else boards
        fig_dir = report_dir / "figures"
        if fig_dir.exists():
            shutil.rmtree(fig_dir)
        pngs = make_figures(con, fig_dir)
        grids = matched_grids(con, out_dir, boards)
        runs = con.execute("SELECT run_id, method, reward, suite, seed, budget, status FROM runs ORDER BY run_id").fetchall()
    finally:
        con.close()
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "leaderboard.md").write_text(boards_markdown(boards))
    (report_dir / "leaderboard.csv").write_text(boards_csv(boards))
    grid_dir = report_dir / "grids"
    if grid_dir.exists():
        shutil.rmtree(grid_dir)
    grid_html = []
    for method, _run, q, path in grids:
        grid_dir.mkdir(parents=True, exist_ok=True)
        name = f"{method}_q{q:08d}.png"
        shutil.copyfile(path, grid_dir / name)
        grid_html.append(f'<figure><img src="grids/{html.escape(name)}" alt="{html.escape(method)}">'
                         f"<figcaption>{html.escape(method)} at {q} queries</figcaption></figure>")
    board_html = boards_html(boards)
    (report_dir / "leaderboard.html").write_text(_page("Leaderboard", board_html))
    body = [
        "<h1>Reward overoptimization report</h1>",
        f"<p>{len(runs)} run(s): " + html.escape(", ".join(sorted({r[1] for r in runs}))) + ". Built from "
        f"<code>{html.escape(str(db_path))}</code>. Scores are means over fixed-seed evaluation images; "
        "± is the 95% confidence interval over seeds (shown only with two or more seeds), except in the "
        "<i>change</i> column: with one seed, its interval is over the paired evaluation images. The verdict says "
        "whether that interval of the in-domain change from query 0 to the final checkpoint excludes zero.</p>",
        "<h2>Leaderboard</h2>", *[f"<p>{html.escape(line)}</p>" for line in verdict_lines(boards)],
        board_html or "<p>No evaluation scores yet: run <code>python -m bench eval</code>.</p>",
        "<h2>Figures</h2>",
        *[f'<figure><img src="figures/{html.escape(p)}" alt="{html.escape(p)}"></figure>' for p in pngs],
        "<h2>Samples at the matched level</h2>",
        '<div class="grids">' + "".join(grid_html) + "</div>" if grid_html else "<p>No image grids.</p>",
        "<h2>Runs</h2><table><thead><tr><th>run</th><th>method</th><th>reward</th><th>suite</th><th>seed</th>"
        "<th>budget</th><th>status</th></tr></thead><tbody>"
        + "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>" for r in runs)
        + "</tbody></table>",
    ]
    index = report_dir / "index.html"
    index.write_text(_page("Reward overoptimization report", "\n".join(body)))
    (report_dir / "report.json").write_text(json.dumps({"figures": pngs, "grids": [g[:3] for g in grids]}, indent=1))
    return index


def _page(title: str, body: str) -> str:
    style = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#eef}"
             "td:first-child{text-align:left}figure{display:inline-block;margin:8px}"
             ".scroll{overflow-x:auto}img{max-width:100%;border:1px solid #ddd}.grids img{image-rendering:pixelated;width:256px}")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n{body}\n</body></html>\n")
