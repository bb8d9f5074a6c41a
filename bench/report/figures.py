"""The report's figures: seaborn line plots on the tidy frames of `bench.report.frames`, in one theme
(`themed`), with one fixed colour and dash per method in every figure (`method_styles`).

Where a method has several seeds, a line is the mean over seeds and its band seaborn's 95% bootstrap
interval over seeds (seed 0, so a rebuilt report is byte-identical). A cross-reward path (one reward
against another, in checkpoint order) is drawn through the means over seeds, without a band.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

GOLD = ("gold-aesthetic", "gold-fidelity")
KL = "kl-to-pretrained"


def method_styles(methods) -> dict:
    """A fixed line style per method, the same in every figure of every report: the method's place in the
    catalog picks one of seaborn's 10 colour-blind-safe colours; past ten, the colours repeat dashed, with square
    markers where a figure marks its points (the main command has 15 methods). Methods outside the catalog
    follow it in name order."""
    import seaborn as sns

    from bench.spec.catalog import methods as registry

    palette = sns.color_palette("colorblind", 10)
    known = list(registry.names())
    extra = sorted(m for m in set(methods) if m not in known)
    order = {m: i for i, m in enumerate(known + extra)}
    return {m: dict(color=palette[order[m] % 10], linestyle="-" if order[m] < 10 else "--",
                    marker="o" if order[m] < 10 else "s") for m in methods}


@contextlib.contextmanager
def themed():
    """One theme for every figure, restored afterwards (a notebook's own settings are left alone):
    seaborn's whitegrid at paper scale with its colour-blind palette."""
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns

    with matplotlib.rc_context():
        sns.set_theme(style="whitegrid", context="paper", palette="colorblind")
        yield


def method_lines(ax, frame, x: str, y: str, styles: dict, *, marker: str | None = "o", path: bool = False,
                 units: str | None = None, lw: float = 1.4) -> None:
    """One seaborn line per method of `frame` in its fixed style. `path`: the rows are already one point
    per checkpoint, drawn in their order (a cross-reward curve); `units`: one line per unit (a run), no
    mean; otherwise the mean over rows at each x with a 95% bootstrap band over them (the seeds), drawn only at
    the x values every run of the method has: where a run stopped early (a study's stop rule), a mean over the
    runs still going would show the slow seeds alone (survivorship), so the method's line ends there."""
    import seaborn as sns

    if not path and units is None and "run_id" in frame.columns and not frame.empty:
        runs_at = frame.groupby(["method", x])["run_id"].transform("nunique")
        frame = frame[runs_at == frame["method"].map(frame.groupby("method")["run_id"].nunique())]
    ms = [m for m in styles if m in set(frame["method"])]
    if not ms:
        return
    several = not path and units is None and frame.groupby(["method", x]).size().max() > 1
    sns.lineplot(data=frame, x=x, y=y, hue="method", hue_order=ms, style="method", style_order=ms,
                 palette={m: styles[m]["color"] for m in ms},
                 dashes={m: "" if styles[m]["linestyle"] == "-" else (4, 2) for m in ms},
                 markers={m: styles[m].get("marker", marker) for m in ms} if marker else False, markersize=3,
                 linewidth=lw,
                 markeredgewidth=0, units=units, estimator=None if (path or units) else "mean",
                 errorbar=("ci", 95) if several else None, n_boot=1000, seed=0, sort=not path,
                 legend=False, ax=ax)


def legend(where, styles: dict, methods, marker: str | None = "o", outside: bool = False) -> None:
    """One legend entry per method (seaborn's own legend is off: this one is the same in every figure);
    beside the plot when it is long, so that it hides no line."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=styles[m]["color"], linestyle=styles[m]["linestyle"],
                      marker=styles[m].get("marker", marker) if marker else None,
                      markersize=3, linewidth=1.4, label=m) for m in styles if m in set(methods)]
    if not handles:
        return
    if outside or len(handles) > 6:  # to the right, off the lines (savefig's tight bounding box keeps it)
        where.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    else:
        where.legend(handles=handles, fontsize=7, loc="best")


def panel_grid(plt, n: int, cols: int = 3):
    """n panels, `cols` per row; returns (figure, the n axes in order), the spare axes hidden."""
    cols = max(1, min(cols, n))
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 3.3 * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.axis("off")
    fig.tight_layout(h_pad=2.5)
    return fig, flat[:n]


def save(fig, folder: Path, name: str) -> list[str]:
    """PNG and PDF, cropped to the figure's tight box. The box is measured once (one draw) and given to both
    saves: `bbox_inches="tight"` would draw the figure again for each file, a quarter of a report's time."""
    folder.mkdir(parents=True, exist_ok=True)
    fig.set_dpi(110)
    box = fig.get_tightbbox(fig.canvas.get_renderer()).padded(0.1)  # matplotlib's tight box and its pad_inches
    files = []
    for ext in ("png", "pdf"):
        fig.savefig(folder / f"{name}.{ext}", dpi=110, bbox_inches=box, metadata={"CreationDate": None}
                    if ext == "pdf" else {"Software": None})
        files.append(f"{name}.{ext}")
    return files


def wide_points(curves):
    """The curves frame (one row per run, prompt set, checkpoint and reward) made wide: one row per run,
    prompt set and checkpoint, a column per reward; only checkpoints scored by every reward of the run
    and prompt set are kept (as the leaderboard does)."""
    import pandas as pd

    if curves.empty:
        return pd.DataFrame()
    keys = ["run_id", "method", "seed", "train_reward", "prompt_set", "reward_queries"]
    wide = curves.pivot_table(index=keys, columns="reward", values="value", aggfunc="first").reset_index()
    wide.columns.name = None
    parts = []
    for _, g in wide.groupby(["run_id", "prompt_set"], sort=True):
        rewards = [c for c in g.columns if c not in keys and g[c].notna().any()]
        parts.append(g.dropna(subset=rewards)[keys + rewards])
    return pd.concat(parts, ignore_index=True).sort_values(keys, ignore_index=True)


def mean_path(points, columns: list[str]):
    """Per method and checkpoint, the mean over seeds of `columns`, on the checkpoints every seed of the
    method has, in checkpoint order."""
    seeds = points.groupby("method")["run_id"].nunique()
    g = points.groupby(["method", "reward_queries"], sort=True)
    out = g[columns].mean()
    out["n"] = g["run_id"].nunique()
    out = out.reset_index()
    return out[out["n"] == out["method"].map(seeds)].drop(columns="n")


OUTLIER_FACTOR = 2.5
"""The widest few methods on an axis are drawn off scale there when the narrowest of them spans more than this
many times the next method's span, so the others' paths stay readable (AlignProp moves the toy's proxy 7 -> 10
within a few queries; in the 15-method main command PRDP moves HPSv2 almost as far). At most a third of the
methods (at least one) can be outliers; the cut is the largest such gap."""


def inlier_limits(means, x: str, y: str, pad: float = 0.08) -> tuple[tuple, tuple, dict[str, list[str]]]:
    """Axis limits that every method's path fits, except the outliers' (see OUTLIER_FACTOR): ((x0, x1),
    (y0, y1), {axis: [outlier methods]}). With fewer than three methods nothing is an outlier."""
    limits, outliers = [], {}
    for col in (x, y):
        spans = means.groupby("method")[col].agg(lambda v: float(v.max() - v.min())).sort_values(ascending=False)
        k = 0
        if len(spans) >= 3:
            for j in range(1, max(1, len(spans) // 3) + 1):
                if spans.iloc[j - 1] > OUTLIER_FACTOR * max(spans.iloc[j], 1e-12):
                    k = j
        out = list(spans.index[:k])
        kept = means[~means["method"].isin(out)][col]
        lo, hi = float(kept.min()), float(kept.max())
        margin = pad * (hi - lo) if hi > lo else max(abs(hi), 1.0) * 0.05
        limits.append((lo - margin, hi + margin))
        if out:
            outliers[col] = out
    return limits[0], limits[1], outliers


def _mark_off_scale(ax, means, outliers: dict, x: str, y: str) -> None:
    """Say which method runs off the axes, and how far (its last point)."""
    notes = []
    for method in sorted({m for ms in outliers.values() for m in ms}):
        last = means[means["method"] == method].iloc[-1]
        notes.append(f"{method} off scale: ends at {x} {last[x]:.3g}, {y} {last[y]:.3g}")
    ax.text(0.01, 0.01, "\n".join(notes), transform=ax.transAxes, fontsize=6, va="bottom", ha="left", color="#444")


def curve_figures(curves, folder: Path, styles: dict) -> list[str]:
    """Per training reward and prompt set: cross-reward curves, gold against proxy, and the in-domain
    score against reward queries (the sample efficiency on the fixed evaluation seeds)."""
    import matplotlib.pyplot as plt

    points = wide_points(curves)
    pngs = []
    if points.empty:
        return pngs
    for (train_reward, pset), group in points.groupby(["train_reward", "prompt_set"], sort=True):
        group = group.dropna(axis=1, how="any")  # rewards every run of the group has
        present = [c for c in group.columns if c not in ("run_id", "method", "seed", "train_reward", "prompt_set",
                                                         "reward_queries")]
        for kind, chosen in (("cross_reward", [r for r in sorted(present) if r != train_reward and r not in GOLD
                                               and r != KL]),
                             ("gold_vs_proxy", [g for g in GOLD if g in present])):
            if not chosen or train_reward not in present:
                continue
            fig, axes = plt.subplots(1, len(chosen), figsize=(4.2 * len(chosen), 3.6), squeeze=False)
            for ax, r in zip(axes[0], chosen):
                means = mean_path(group, [train_reward, r])
                method_lines(ax, means, train_reward, r, styles, path=True)
                start = means[means["reward_queries"] == 0]
                ax.plot(start[train_reward], start[r], ls="none", marker="*", ms=11, color="black", zorder=5)
                xlim, ylim, off = inlier_limits(means, train_reward, r)
                if off:  # the others' paths at a readable scale; the outlier is drawn, clipped, and named
                    ax.set_xlim(*xlim)
                    ax.set_ylim(*ylim)
                    _mark_off_scale(ax, means, off, train_reward, r)
                ax.set_xlabel(f"{train_reward} (in-domain)")
                ax.set_ylabel(r)
                ax.set_title(f"{r} vs {train_reward} — {pset}", fontsize=9)
            legend(axes[0][-1], styles, group["method"])
            pngs.append(save(fig, folder, f"{kind}_{train_reward}_{pset}")[0])
            plt.close(fig)
        if train_reward not in present:
            continue
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        method_lines(ax, group, "reward_queries", train_reward, styles)
        ax.set_xlabel("reward queries")
        ax.set_ylabel(f"{train_reward} (fixed-seed evaluation)")
        ax.set_title(f"sample efficiency — {pset}", fontsize=9)
        legend(ax, styles, group["method"])
        pngs.append(save(fig, folder, f"eval_reward_vs_queries_{train_reward}_{pset}")[0])
        plt.close(fig)
    return pngs


NEURON_METRICS = ("critic_dormant_fraction", "critic_dormant_overlap", "policy_dormant_fraction")


def training_figures(train, folder: Path, styles: dict) -> list[str]:
    """Per training reward: the epoch-mean training reward against reward queries, and the neuron states
    (dormant fractions of the critic and the policy, the overlap of dormant sets) against epochs."""
    import matplotlib.pyplot as plt

    pngs = []
    if train.empty:
        return pngs
    for train_reward, sub in train.groupby("train_reward", sort=True):
        rew = sub[sub["metric"] == "reward_mean"]
        if not rew.empty:
            fig, ax = plt.subplots(figsize=(5.5, 3.8))
            method_lines(ax, rew, "reward_queries", "value", styles, marker=None, lw=1.3)
            ax.set_xlabel("reward queries")
            ax.set_ylabel(f"training {train_reward} (epoch mean)")
            ax.set_title("sample efficiency", fontsize=9)
            legend(ax, styles, rew["method"], marker=None)
            pngs.append(save(fig, folder, f"sample_efficiency_{train_reward}")[0])
            plt.close(fig)
        neuron = sub[sub["metric"].isin(NEURON_METRICS)]
        if not neuron.empty:
            metrics = sorted(set(neuron["metric"]))
            fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
            for ax, metric in zip(axes[0], metrics):
                method_lines(ax, neuron[neuron["metric"] == metric], "epoch", "value", styles, marker=None, lw=1.3)
                ax.set_xlabel("epoch")
                ax.set_ylabel(metric)
            legend(axes[0][-1], styles, neuron["method"], marker=None)
            pngs.append(save(fig, folder, f"neuron_states_{train_reward}")[0])
            plt.close(fig)
    return pngs


def kl_figures(curves, folder: Path, styles: dict) -> list[str]:
    """Gao et al. (2022)'s view: every reward (in-domain, gold, out-of-domain) against the KL of the
    policy to the pretrained model, one path per method (means over seeds per checkpoint)."""
    import matplotlib.pyplot as plt

    points = wide_points(curves)
    pngs = []
    if points.empty or KL not in points.columns:
        return pngs
    for (train_reward, pset), group in points.groupby(["train_reward", "prompt_set"], sort=True):
        group = group.dropna(subset=[KL]).dropna(axis=1, how="any")
        if group.empty:
            continue
        present = {c for c in group.columns if c not in ("run_id", "method", "seed", "train_reward", "prompt_set",
                                                         "reward_queries", KL)}
        panels = [train_reward] + [g for g in GOLD if g in present] + sorted(present - {train_reward, *GOLD})
        fig, axes = panel_grid(plt, len(panels))
        for ax, r in zip(axes, panels):
            means = mean_path(group, [KL, r])
            method_lines(ax, means, KL, r, styles, path=True)
            ax.set_xscale("symlog", linthresh=0.05)  # most methods stay below 1, AlignProp goes far
            # KL >= 0 (the linear-scale margin would reach into negative decades); room for the last marker
            ax.set_xlim(0, 1.3 * max(float(means[KL].max()), 0.05))
            ax.set_xlabel("KL to pretrained (summed over steps; symlog)", fontsize=8)
            ax.set_ylabel(r)
            ax.set_title(f"{r} vs KL — {pset}", fontsize=9)
        legend(fig, styles, group["method"], outside=True)
        pngs.append(save(fig, folder, f"reward_vs_kl_{train_reward}_{pset}")[0])
        plt.close(fig)
    return pngs


def diversity_figures(sets, folder: Path, styles: dict) -> list[str]:
    """Set-level diversity against reward queries, one panel per metric, per training reward and set."""
    import matplotlib.pyplot as plt

    pngs = []
    if sets.empty:
        return pngs
    for (train_reward, pset), sub in sets.groupby(["train_reward", "prompt_set"], sort=True):
        # diversity, then the image-statistics drift (bench/measures/drift.py) in a figure of its own
        for kind, metrics in (("diversity", sorted(m for m in set(sub["metric"]) if not m.startswith("drift_"))),
                              ("drift", sorted(m for m in set(sub["metric"]) if m.startswith("drift_")))):
            if not metrics:
                continue
            fig, axes = plt.subplots(1, len(metrics), figsize=(3.8 * len(metrics), 3.3), squeeze=False)
            for ax, metric in zip(axes[0], metrics):
                method_lines(ax, sub[sub["metric"] == metric], "reward_queries", "value", styles, lw=1.3)
                ax.set_xlabel("reward queries")
                ax.set_ylabel(metric)
                ax.set_title(f"{metric} — {pset}", fontsize=9)
            legend(axes[0][-1], styles, sub["method"])
            pngs.append(save(fig, folder, f"{kind}_{train_reward}_{pset}")[0])
            plt.close(fig)
    return pngs


def diagnostics_figure(diag, folder: Path, styles: dict, metrics: list[str], tolerance: float) -> list[str]:
    """Every per-epoch sanity metric against reward queries, one line per run in its method's style."""
    import matplotlib.pyplot as plt

    fig, axes = panel_grid(plt, len(metrics), cols=4)
    for ax, metric in zip(axes, metrics):
        method_lines(ax, diag[diag["metric"] == metric], "reward_queries", "value", styles, marker=None,
                     units="run_id", lw=1.1)
        if metric == "ratio_at_old_maxdev":
            ax.axhline(tolerance, color="red", lw=0.8, ls="--")
            ax.set_yscale("symlog", linthresh=1e-7)
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("reward queries", fontsize=8)
        ax.set_ylabel("")
    legend(fig, styles, diag["method"], marker=None, outside=True)
    pngs = [save(fig, folder, "diagnostics")[0]]
    plt.close(fig)
    return pngs


def gao_figures(curves, fits: dict, folder: Path, styles: dict) -> list[str]:
    """Gold gain over query 0 against d = sqrt(KL to the pretrained model), per method: the seeds' mean per
    checkpoint (markers, with the 95% CI over seeds from 2 seeds) and Gao et al.'s RL form d (alpha - beta ln d)
    at the seeds' mean coefficients (line; dotted below the first measured d).
    `fits`: (train_reward, prompt_set, gold) -> {method: (alpha, beta)}. One figure per key."""
    import matplotlib.pyplot as plt
    import numpy as np

    from bench.report.analysis import t975

    points = wide_points(curves)
    pngs = []
    if points.empty or KL not in points.columns:
        return pngs
    for (train_reward, pset, gold), per_method in sorted(fits.items()):
        group = points[(points["train_reward"] == train_reward) & (points["prompt_set"] == pset)]
        group = group.dropna(subset=[KL, gold])
        if group.empty or not per_method:
            continue
        group = group.assign(d=np.sqrt(group[KL].clip(lower=0.0)))
        start = group[group["reward_queries"] == 0].set_index("run_id")[gold]
        group = group.assign(gain=group[gold] - group["run_id"].map(start))
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        means = mean_path(group[group["method"].isin(list(per_method))], ["d", "gain"])
        for method, (alpha, beta) in sorted(per_method.items()):
            mine = means[means["method"] == method]
            if mine.empty:
                continue
            style = styles.get(method, {"color": None, "linestyle": "-"})
            ax.scatter(mine["d"], mine["gain"], s=14, color=style["color"], zorder=3)
            per_q = group[group["method"] == method].groupby("reward_queries")["gain"]
            n = per_q.count()
            if int(n.min()) >= 2:  # 95% CI over seeds of the gain at each checkpoint
                half = per_q.std(ddof=1) / np.sqrt(n) * [t975(k - 1) for k in n]
                ax.errorbar(mine["d"], mine["gain"], yerr=half.reindex(mine["reward_queries"]).to_numpy(),
                            fmt="none", ecolor=style["color"], elinewidth=0.8, capsize=2)
            d = np.linspace(1e-4, max(float(mine["d"].max()), 1e-3) * 1.05, 100)
            # the form is drawn solid over the d the checkpoints measured, dotted below the first one: there it is
            # extrapolation (study v4's peaks fall in that gap: nothing is measured between query 0 and 320)
            first = float(mine.loc[mine["d"] > 0, "d"].min()) if (mine["d"] > 0).any() else 0.0
            for part, dotted in ((d[d >= first], False), (np.append(d[d < first], first), True)):
                if len(part) > 1:
                    ax.plot(part, part * (alpha - beta * np.log(part)), color=style["color"],
                            linestyle=":" if dotted else style["linestyle"], linewidth=0.9 if dotted else 1.2)
        ax.axhline(0.0, color="#888", linewidth=0.8)
        ax.set_xlabel("d = sqrt(KL to pretrained)")
        ax.set_ylabel(f"{gold} gain over query 0")
        ax.set_title(f"{gold} vs d, fitted d(α − β ln d) — trained on {train_reward}, {pset}\n"
                     "(dotted: below the first measured d, the form's extrapolation)", fontsize=9)
        legend(ax, styles, list(per_method), outside=True)  # one axes: beside it, not past the figure
        pngs.append(save(fig, folder, f"gao_{gold}_{train_reward}_{pset}")[0])
        plt.close(fig)
    return pngs


def level_figures(curves, targets, folder: Path, styles: dict) -> list[str]:
    """The study's question in one figure per (train_reward, prompt_set, gold, level, interval[, at_level]) of
    `targets`: each seed's gold against the proxy in checkpoint order (thin), the matched level (dashed) and the
    declared proxy interval (shaded, when there is one), and per method the mean over seeds of gold at the run's
    first crossing of the level with its 95% t interval: the primary estimand, as the comparisons read it (a run
    that never reaches the level is drawn but leaves the mean). `at_level` ({method: per-seed values, None where
    a run never reaches it}, the board's cells) gives those values; without it they are read off the paths."""
    import matplotlib.pyplot as plt

    from bench.report.analysis import interpolate_at, mean_ci

    points = wide_points(curves)
    pngs = []
    for train_reward, pset, gold, level, interval, *given in targets:
        at_level = given[0] if given and given[0] is not None else None
        if points.empty or train_reward not in points.columns or gold not in points.columns:
            continue
        group = points[(points["train_reward"] == train_reward) & (points["prompt_set"] == pset)]
        group = group.dropna(subset=[train_reward, gold])
        if group.empty:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        if interval:
            ax.axvspan(*interval, color="#e6e6e6", linewidth=0, zorder=0)
        ax.axvline(level, color="#555", linestyle="--", linewidth=0.9, zorder=1)
        methods = [m for m in styles if m in set(group["method"])]
        span = float(group[train_reward].max() - group[train_reward].min()) or 1.0
        for k, method in enumerate(methods):
            style = styles[method]
            at = []
            for _, run in group[group["method"] == method].groupby("run_id", sort=True):
                run = run.sort_values("reward_queries")
                xs, ys = run[train_reward].tolist(), run[gold].tolist()
                ax.plot(xs, ys, color=style["color"], linestyle=style["linestyle"], linewidth=0.7, alpha=0.35)
                if at_level is None:  # else the board's values are drawn
                    at.append(interpolate_at(xs, ys, level))
            reached = [v for v in (at if at_level is None else at_level.get(method, ())) if v is not None]
            if reached:  # side by side at the level, so the intervals do not hide each other
                mean, half = mean_ci(reached)
                x = level + (k - (len(methods) - 1) / 2) * 0.015 * span
                ax.errorbar([x], [mean], yerr=[half or 0.0], fmt=style.get("marker", "o"), color=style["color"],
                            markersize=6, capsize=3, elinewidth=1.4, zorder=4)
        ax.set_xlabel(f"{train_reward} (in-domain)")
        ax.set_ylabel(gold)
        where = f"; shaded: the proxy interval [{interval[0]:g}, {interval[1]:g}]" if interval else ""
        ax.set_title(f"{gold} against {train_reward} — {pset}: each seed's path (thin);\nmean ± 95% CI at the "
                     f"matched level {level:.3g} (dashed){where}", fontsize=9)
        legend(ax, styles, methods, outside=True)
        pngs.append(save(fig, folder, f"level_{gold}_{train_reward}_{pset}")[0])
        plt.close(fig)
    return pngs
