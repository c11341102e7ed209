"""Accuracy against sparsity, spaced like the paper's figures (one step per pruning level)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.backend_bases import FigureCanvasBase  # noqa: E402

from ..errors import SparseddError  # noqa: E402
from ..store.files import save_figure  # noqa: E402

IMAGE_TYPES = tuple(FigureCanvasBase.get_supported_filetypes())  # the suffixes savefig can write


def plain(text: str) -> str:
    """Text for a figure as it is: matplotlib reads $...$ as math, and a title or label from a store may hold '$'."""
    return text.replace("$", r"\$")


def sparsity_axis(sparsity: np.ndarray) -> np.ndarray:
    """x = -log(density): pruning rounds of a fixed fraction are evenly spaced."""
    return -np.log(np.clip(1.0 - np.asarray(sparsity, dtype=float), 1e-12, None))


def _ticks(max_x: float) -> tuple[list[float], list[str]]:
    """Sparsity ticks (in %) for an axis up to ``max_x``: steps of 10 for a shallow curve (below 63%, where the
    deep curve's 0, 50, 80, ... left one label), the deep ones' otherwise."""
    deep = [0, 50, 80, 90, 95, 98, 99, 99.5, 99.8, 99.9, 99.95, 99.98, 99.99]
    candidates = list(range(0, 70, 10)) if max_x < 1.0 else deep
    ticks: list[float] = []
    for s in candidates:  # keep neighbouring labels apart in proportion to their length
        x = -math.log(1 - s / 100)
        if ticks:
            width = 0.011 * max(max_x, 1e-9) * (len(f"{s:g}") + len(f"{ticks[-1]:g}"))
            if x - -math.log(1 - ticks[-1] / 100) < width:
                continue
        if x <= max_x * 1.02:
            ticks.append(s)
    return [-math.log(1 - s / 100) for s in ticks], [f"{s:g}" for s in ticks]


def summarize(levels: pd.DataFrame, column: str) -> pd.DataFrame:
    """Mean, min and max of ``column`` over seeds, per level."""
    g = levels.groupby("level")
    return pd.DataFrame({"sparsity": g["sparsity"].mean(), "mean": g[column].mean(),
                         "lo": g[column].min(), "hi": g[column].max(), "n": g[column].count()}).reset_index()


def dense_line(ax, test: pd.DataFrame) -> None:
    """The dense network's mean test accuracy as a dashed line, from ``test`` (:func:`summarize` of
    ``test_acc``); none where its first level is not level 0 (every seed's dense level dropped as unstable)."""
    if test["level"].iloc[0] == 0:
        ax.axhline(100 * test["mean"].iloc[0], color="gray", ls="--", lw=1, label="dense")


def mark_unstable(ax, levels: pd.DataFrame, column: str = "test_acc", dropped: bool = False) -> None:
    """An x at each seed's own ``column`` where its level ended unstable (``unstable`` of
    :func:`sparsedd.results.load`): the means drawn through them include a number its mask did not learn,
    unless they were ``dropped`` from the lines."""
    bad = levels[levels["unstable"].fillna("") != ""] if "unstable" in levels else levels.iloc[:0]
    if len(bad):
        ax.scatter(sparsity_axis(bad["sparsity"].to_numpy()), 100 * bad[column], marker="x", color="black", zorder=5,
                   label=f"ended unstable ({len(bad)} level(s) of a seed)" + (", not in the lines" if dropped else ""))


def sparsity_label(levels: pd.DataFrame) -> str:
    """The sparsity axis's label, saying what it counts when a run counts every conv and linear weight."""
    counts = set(levels["sparsity_of"].dropna()) if "sparsity_of" in levels else set()
    return "sparsity (%, of every conv and linear weight)" if counts == {"all-masked"} else "sparsity (%)"


def plot_curve(levels: pd.DataFrame, out: str | Path, title: str = "", unstable: str = "keep") -> Path:
    """Test accuracy, and train accuracy on the noisy and the true labels, against sparsity.

    With several seeds, lines are means and bands span the seeds' min to max. Levels that ended unstable
    are marked x; ``unstable="drop"`` leaves them out of the lines and bands.
    """
    from ..analysis.curves import without_unstable

    drawn = without_unstable(levels, unstable)
    if not len(drawn):
        raise SparseddError("every level ended unstable: nothing is left to draw with --unstable drop; plot with "
                            "--unstable keep")
    fig, (ax_test, ax_train) = plt.subplots(1, 2, figsize=(11, 4))
    series = ((ax_test, "test_acc", "test accuracy", "tab:blue", "-"),
              (ax_train, "train_acc_noisy", "train accuracy, noisy labels", "tab:red", "-"),
              (ax_train, "train_acc_clean", "train accuracy, true labels", "tab:green", "--"))
    for ax, col, label, color, ls in series:
        s = summarize(drawn, col)
        x = sparsity_axis(s["sparsity"].to_numpy())
        nseeds = int(s["n"].max())
        ax.plot(x, 100 * s["mean"], marker="o", ms=3, ls=ls, color=color, label=f"{label} (mean of {nseeds} seed(s))")
        if nseeds > 1:
            ax.fill_between(x, 100 * s["lo"], 100 * s["hi"], color=color, alpha=0.2, label="min to max over seeds")
        if col == "test_acc":
            dense_line(ax, s)
            mark_unstable(ax, levels, dropped=unstable == "drop")
    for ax, ylabel in ((ax_test, "test accuracy (%)"), (ax_train, "train accuracy (%)")):
        ticks, labels = _ticks(float(sparsity_axis(levels["sparsity"].to_numpy()).max()))
        ax.set_xticks(ticks, labels)
        ax.set_xlabel(sparsity_label(levels))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(plain(title), fontsize=10)
    fig.tight_layout()
    out = Path(out)
    save_figure(fig, out, dpi=120)  # (its folder made too)
    plt.close(fig)
    return out
