"""The report's figures: curves with phases, learning distance, and one figure per analysis."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .plots import _ticks, dense_line, mark_unstable, sparsity_axis, sparsity_label, summarize  # noqa: E402

PHASE_COLORS = {"light": "#dfe9f5", "critical": "#f8dcdc", "sweet": "#dcf2dc", "collapsed": "#eeeeee"}


def _xaxis(ax, sparsity, label: str = "sparsity (%)") -> None:
    ticks, labels = _ticks(float(sparsity_axis(pd.Series(sparsity).to_numpy()).max()))
    ax.set_xticks(ticks, labels)
    ax.set_xlabel(label)
    ax.grid(alpha=0.3)


def _band(ax, levels: pd.DataFrame, col: str, label: str, color: str, scale: float = 100.0, ls: str = "-") -> None:
    s = summarize(levels, col)
    x = sparsity_axis(s["sparsity"].to_numpy())
    ax.plot(x, scale * s["mean"], marker="o", ms=3, color=color, ls=ls, label=label)
    if int(s["n"].max()) > 1:
        ax.fill_between(x, scale * s["lo"], scale * s["hi"], color=color, alpha=0.2)


def shade_phases(ax, phases: dict[str, Any] | None, last_sparsity: float) -> None:
    """Shade light, critical, sweet and collapsed phases from a phase-detection result (seed mean)."""
    if not phases or not phases.get("found"):
        return
    x = lambda p: float(sparsity_axis([p["sparsity"]])[0])  # noqa: E731
    end = float(sparsity_axis([last_sparsity])[0])
    spans = [("light", 0.0, x(phases["light_end"])), ("critical", x(phases["light_end"]), x(phases["critical"]))]
    collapse = phases.get("collapse")
    spans.append(("sweet", x(phases["critical"]), x(collapse) if collapse else end))
    if collapse:
        spans.append(("collapsed", x(collapse), end))
    for name, a, b in spans:
        if b > a:
            ax.axvspan(a, b, color=PHASE_COLORS[name], zorder=0, label=f"{name} phase")


def fig_curve(levels: pd.DataFrame, phases: dict[str, Any] | None, title: str, unstable: str = "keep"):
    """Test and train accuracy against sparsity, the ``phases`` shaded; the levels that ended unstable marked x,
    and left out of the lines and bands with ``unstable="drop"``."""
    from ..analysis.curves import without_unstable

    drawn = without_unstable(levels, unstable)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    shade_phases(ax, phases, float(levels["sparsity"].max()))
    _band(ax, drawn, "test_acc", "test accuracy", "tab:blue")
    if "test_acc_at_best_val" in drawn and drawn["test_acc_at_best_val"].notna().any():
        _band(ax, drawn, "test_acc_at_best_val", "at the best validation epoch", "tab:orange", ls=":")
    dense_line(ax, summarize(drawn, "test_acc"))
    mark_unstable(ax, levels, dropped=unstable == "drop")
    ax.set_ylabel("test accuracy (%)")
    _band(ax2, drawn, "train_acc_noisy", "train, noisy labels", "tab:red")
    _band(ax2, drawn, "train_acc_clean", "train, true labels", "tab:green", ls="--")
    ax2.set_ylabel("train accuracy (%)")
    for a in (ax, ax2):
        _xaxis(a, levels["sparsity"], sparsity_label(levels))
        a.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def fig_distance(levels: pd.DataFrame, spearman: float | None, title: str):
    fig, ax = plt.subplots(figsize=(6.5, 4))
    _band(ax, levels, "test_acc", "test accuracy", "tab:blue")
    ax.set_ylabel("test accuracy (%)", color="tab:blue")
    ax2 = ax.twinx()
    _band(ax2, levels, "distance", "learning distance", "tab:purple", scale=1.0)
    ax2.set_ylabel("||w - w_init||_2", color="tab:purple")
    _xaxis(ax, levels["sparsity"], sparsity_label(levels))
    rho = f", Spearman {spearman:.2f}" if spearman is not None else ""
    ax.set_title(f"learning distance and test accuracy{rho}\n{title}", fontsize=8)
    fig.tight_layout()
    return fig


def fig_overlay(curves: list[tuple[str, pd.DataFrame]], title: str):
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    all_s = pd.concat([c["sparsity"] for _, c in curves])
    for i, (label, levels) in enumerate(curves):
        _band(ax, levels, "test_acc", label, colors[i % len(colors)])
        if "test_acc_at_best_val" in levels and levels["test_acc_at_best_val"].notna().any():  # early stopping
            _band(ax, levels, "test_acc_at_best_val", f"{label}, at best validation", colors[i % len(colors)], ls=":")
    _xaxis(ax, all_s)
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def _per_level_lines(rows: pd.DataFrame, ykeys: list[tuple[str, str]], xlabel: str, title: str):
    fig, axes = plt.subplots(1, len(ykeys), figsize=(5.5 * len(ykeys), 4))
    axes = axes if len(ykeys) > 1 else [axes]
    cmap = plt.get_cmap("viridis")
    levels = sorted(rows["level"].unique())
    for ax, (key, label) in zip(axes, ykeys):
        for i, level in enumerate(levels):
            pts = pd.DataFrame(rows[rows["level"] == level].iloc[0]["points"])
            sp = rows[rows["level"] == level].iloc[0]["sparsity"]
            ax.plot(pts["alpha"], pts[key], color=cmap(i / max(len(levels) - 1, 1)),
                    label=f"level {level} ({100 * sp:.1f}%)")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def fig_interpolate(rows: pd.DataFrame, title: str):
    return _per_level_lines(rows, [("train_loss", "train loss"), ("test_loss", "test loss"), ("test_acc", "test accuracy")],
                            "alpha (0: sparse solution, 1: the other end)", f"linear interpolation\n{title}")


def fig_landscape(rows: pd.DataFrame, title: str):
    return _per_level_lines(rows, [("train_loss", "train loss"), ("test_loss", "test loss")],
                            "step along a filter-normalized direction", f"1-D loss landscape\n{title}")


def _vs_sparsity(rows: pd.DataFrame, series: list[tuple[str, str, str]], ylabel: str, title: str, scale: float = 100.0,
                 twin: tuple[str, str] | None = None):
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for col, label, color in series:
        _band(ax, rows, col, label, color, scale=scale)
    ax.set_ylabel(ylabel)
    if twin:
        ax2 = ax.twinx()
        _band(ax2, rows, twin[0], twin[1], "tab:gray", scale=1.0, ls=":")
        ax2.set_ylabel(twin[1])
        ax2.legend(fontsize=7, loc="lower right")
    _xaxis(ax, rows["sparsity"])
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig


def fig_redense(rows: pd.DataFrame, title: str):
    return _vs_sparsity(rows, [("level_test_acc", "sparse", "tab:blue"), ("test_acc", "re-dense", "tab:orange")],
                        "test accuracy (%)", f"re-dense training\n{title}")


def fig_reinit(rows: pd.DataFrame, title: str):
    return _vs_sparsity(rows, [("ticket_test_acc", "winning ticket", "tab:blue"),
                               ("reinit_test_acc", "random reinit, same mask", "tab:red")],
                        "test accuracy (%)", f"reinitialization against the ticket\n{title}")


def fig_random_mask(rows: pd.DataFrame, title: str):
    return _vs_sparsity(rows, [("ticket_test_acc", "winning ticket", "tab:blue"),
                               ("random_mask_test_acc", "shuffled mask, same start", "tab:green")],
                        "test accuracy (%)", f"random mask against the ticket\n{title}")


def fig_sharpness(rows: pd.DataFrame, title: str):
    return _vs_sparsity(rows, [("top_eigenvalue", "top Hessian eigenvalue", "tab:red")], "top eigenvalue",
                        f"sharpness (left) and Hessian trace (right)\n{title}", scale=1.0, twin=("trace", "Hessian trace"))


def fig_dense_control(rows: pd.DataFrame, title: str):
    """The pruned levels and their width-matched dense controls against the number of weights (log x): test
    accuracy (solid) and train accuracy on the noisy labels (dotted), the mean over seeds, each seed a dot."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    series = (("weights", "level_test_acc", "level_train_acc_noisy", "sparse (level)", "tab:blue"),
              ("dense_weights", "dense_test_acc", "dense_train_acc_noisy", "dense, width-matched", "tab:orange"))
    for wcol, acc, train, label, color in series:
        mean = rows.groupby("level")[[wcol, acc, train]].mean().sort_values(wcol)
        ax.scatter(rows[wcol], 100 * rows[acc], s=6, color=color, alpha=0.35)
        ax.plot(mean[wcol], 100 * mean[acc], marker="o", ms=3, color=color, label=f"{label}: test")
        ax.plot(mean[wcol], 100 * mean[train], ls=":", color=color, label=f"{label}: train (noisy labels)")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel(f"weights ({rows['count'].iloc[0]} counted)" if "count" in rows else "weights")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"width-matched dense control\n{title}", fontsize=8)
    fig.tight_layout()
    return fig


def fig_memorization(rows: pd.DataFrame, title: str):
    """Per seed (five at most), the level x corrupted example picture (dark: the level's network fits the
    example's noisy label; examples sorted by the level at which each stops being fitted), and the counts
    of examples fitted, forgotten and fitted again from level to level (seed mean)."""
    import numpy as np

    from ..analysis.memorization import fitted_matrix, freeing_order, run_table

    seeds = sorted(rows["seed"].unique())[:5]
    fig, axes = plt.subplots(1, len(seeds) + 1, figsize=(3.2 * len(seeds) + 4.5, 4))
    for ax, seed in zip(axes, seeds):
        levels, m = fitted_matrix(rows[rows["seed"] == seed])
        ax.imshow(m[:, freeing_order(levels, m)], aspect="auto", cmap="Greys", interpolation="nearest",
                  extent=(0, m.shape[1], levels[-1] + 0.5, levels[0] - 0.5))
        ax.set_xlabel("corrupted examples (by level freed)")
        ax.set_ylabel("level")
        ax.set_title(f"seed {seed}", fontsize=8)
    counts = rows.sort_values("level").groupby("level")[["fitted", "forgotten", "refitted"]].mean()
    ax = axes[-1]
    for col, label, color in (("fitted", "fitted", "black"), ("forgotten", "forgotten since the level before", "tab:red"),
                              ("refitted", "fitted again", "tab:green")):
        ax.plot(counts.index, counts[col], marker="o", ms=3, color=color, label=label)
    ax.set_xlabel("level")
    ax.set_ylabel("corrupted examples (seed mean)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center right")
    mean = run_table(rows).iloc[-1]
    rho = ", ".join(f"{k} {mean[f'spearman_{k}_loss']:.2f}" for k in ("clean", "noisy")
                    if not np.isnan(mean[f"spearman_{k}_loss"]))
    fig.suptitle(f"memorized noisy labels by level; Spearman (last level fitted, dense loss): {rho or 'n/a'}\n{title}",
                 fontsize=8)
    fig.tight_layout()
    return fig


def fig_stability(rows: pd.DataFrame, title: str):
    return _vs_sparsity(rows, [("test_error_barrier", "test error barrier", "tab:red"),
                               ("train_error_barrier", "train error barrier (noisy labels)", "tab:orange")],
                        "error barrier (percentage points)", f"stability: two copies on other data orders\n{title}",
                        twin=("level_test_acc", "level's test accuracy"))
