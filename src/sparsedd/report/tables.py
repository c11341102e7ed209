"""A run's curve as text: the terminal table, Markdown, JSON rows, and the one-line title of a run."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from ..data.noise import describe
from .plots import summarize

LEVEL_FIELDS = ("level", "sparsity", "test_acc", "test_acc_best", "train_acc_noisy", "train_acc_clean",
                "memorized", "distance")
PERCENT = LEVEL_FIELDS[2:7]  # the fields shown as percentages


def run_title(cfg: dict[str, Any], run_id: str) -> str:
    """What a run is, in one line (from its stored config)."""
    noise = describe(cfg["data"]["noise_type"], cfg["data"]["noise"])
    return (f"{cfg['model']['name']} on {cfg['data']['name']}, {noise}, "
            f"{cfg['prune']['method']} {cfg['prune']['scope']}, "
            f"{cfg['retrain']['mode']} (run {run_id})")


def _num(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v


def level_rows(curve: pd.DataFrame) -> list[dict[str, Any]]:
    """One JSON row per level (and seed, when there are several); NaN as null."""
    multi = curve["seed"].nunique() > 1
    rows = []
    for _, r in curve.iterrows():
        row = {"level": int(r["level"])}
        if multi:
            row["seed"] = int(r["seed"])
        row.update({k: _num(float(r[k])) for k in LEVEL_FIELDS if k != "level"})
        rows.append(row)
    return rows


def mean_rows(curve: pd.DataFrame) -> list[dict[str, Any]]:
    """One JSON row per level: the mean over seeds of every level field, with ``seeds`` (how many) and,
    with several seeds, the standard deviation of each as ``<field>_sd``; NaN as null."""
    rows = []
    for level, g in curve.groupby("level"):
        row: dict[str, Any] = {"level": int(level), "seeds": int(g["seed"].nunique())}
        for k in LEVEL_FIELDS[1:]:
            row[k] = _num(float(g[k].mean()))
            if len(g) > 1:
                row[f"{k}_sd"] = _num(float(g[k].std(ddof=1)))
        rows.append(row)
    return rows


def curve_table(run_id: str, curve: pd.DataFrame):
    """The curve as a rich table (mean over seeds)."""
    from rich.table import Table

    seeds = curve["seed"].nunique()
    table = Table(title=f"run {run_id}" + (f" (mean of {seeds} seeds)" if seeds > 1 else ""),
                  caption="% of: sparsity: prunable weights removed; test, best: final and best test accuracy; "
                          "train, clean: train accuracy on the noisy and the true labels; "
                          "memo: corrupted examples fitted; dist: ||w - w_init||")
    for col in ("level", "sparsity", "test", "best", "train", "clean", "memo", "dist"):
        table.add_column(col, justify="right")
    cols = {c: summarize(curve, c) for c in LEVEL_FIELDS[2:]}
    for i, level in enumerate(cols["test_acc"]["level"]):
        table.add_row(str(int(level)), f"{100 * cols['test_acc']['sparsity'][i]:.2f}",
                      *(f"{100 * cols[c]['mean'][i]:.2f}" for c in PERCENT), f"{cols['distance']['mean'][i]:.2f}")
    return table


def curve_markdown(curve: pd.DataFrame) -> str:
    """The curve as a Markdown table (mean over seeds; min-max when there are several)."""
    cols = {c: summarize(curve, c) for c in LEVEL_FIELDS[2:]}
    multi = curve["seed"].nunique() > 1
    head = ["level", "sparsity %", "test acc %", "best test acc %", "train acc noisy %", "train acc clean %",
            "memorized %", "distance"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]

    def pct(c, i):
        m = f"{100 * cols[c]['mean'][i]:.2f}"
        return m + (f" ({100 * cols[c]['lo'][i]:.1f}-{100 * cols[c]['hi'][i]:.1f})" if multi else "")

    for i, level in enumerate(cols["test_acc"]["level"]):
        row = [str(int(level)), f"{100 * cols['test_acc']['sparsity'][i]:.2f}",
               *(pct(c, i) for c in PERCENT), f"{cols['distance']['mean'][i]:.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
