"""A run's curve as text: the terminal table, Markdown, JSON rows, and the one-line title of a run."""

from __future__ import annotations

import math
import numbers
from typing import Any

import pandas as pd

from ..data.noise import describe
from .plots import summarize

LEVEL_FIELDS = ("level", "sparsity", "test_acc", "test_acc_best", "train_acc_noisy", "train_acc_clean",
                "memorized", "distance")
PERCENT = LEVEL_FIELDS[2:7]  # the fields shown as percentages
VAL_FIELDS = ("val_acc", "val_acc_best", "test_acc_at_best_val")  # a run with data.val_split records these too


def _fields(curve: pd.DataFrame) -> tuple[str, ...]:
    """The level fields of ``curve`` (without ``level``): the validation ones where a level has them."""
    return LEVEL_FIELDS[1:] + tuple(k for k in VAL_FIELDS if k in curve and curve[k].notna().any())


def run_title(cfg: dict[str, Any], run_id: str) -> str:
    """What a run is, in one line (from its stored config, which a foreign store may leave incomplete)."""
    try:
        noise = describe(cfg["data"]["noise_type"], cfg["data"]["noise"])
        return (f"{cfg['model']['name']} on {cfg['data']['name']}, {noise}, "
                f"{cfg['prune']['method']} {cfg['prune']['scope']}, "
                f"{cfg['retrain']['mode']} (run {run_id})")
    except (KeyError, TypeError, ValueError):
        return f"run {run_id} (its stored configuration is incomplete)"


def json_value(v: Any) -> Any:
    """A scalar as strict JSON holds it: a metric that is NULL (``memorized`` without label noise) or not
    finite (a diverged run) is null, numpy numbers are Python numbers."""
    if v is None or isinstance(v, (str, bool)):
        return v
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        return float(v) if math.isfinite(v) else None
    return v


def scalar_columns(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` without its columns of lists or dicts (a table shows them; JSON and the store keep them)."""
    return df[[c for c in df.columns if not df[c].map(lambda v: isinstance(v, (list, dict))).any()]]


def json_safe(obj: Any) -> Any:
    """``obj`` with every value made strict JSON (:func:`json_value`), through dicts and lists."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return json_value(obj)


def level_rows(curve: pd.DataFrame) -> list[dict[str, Any]]:
    """One JSON row per level (and seed, when there are several); NULL and non-finite values as null."""
    multi, fields = curve["seed"].nunique() > 1, _fields(curve)
    rows = []
    for _, r in curve.iterrows():
        row = {"level": int(r["level"])}
        if multi:
            row["seed"] = int(r["seed"])
        row.update({k: json_value(r[k]) for k in fields})
        if "unstable" in r:  # how its last epoch ended unstable ("evaluation", "training"), "" where it did not
            row["unstable"] = r["unstable"]
        if "sparsity_of" in r:
            row["sparsity_of"] = r["sparsity_of"]
        rows.append(row)
    return rows


def mean_rows(curve: pd.DataFrame) -> list[dict[str, Any]]:
    """One JSON row per level: the mean over seeds of every level field, with ``seeds`` (how many) and,
    with several seeds, the standard deviation of each as ``<field>_sd``; NaN as null."""
    rows, fields = [], _fields(curve)
    for level, g in curve.groupby("level"):
        row: dict[str, Any] = {"level": int(level), "seeds": int(g["seed"].nunique())}
        for k in fields:
            row[k] = json_value(g[k].mean())
            if len(g) > 1:
                row[f"{k}_sd"] = json_value(g[k].std(ddof=1))
        rows.append(row)
    return rows


def _cell(v: Any, scale: float = 1.0) -> str:
    """A table cell: the value scaled to two decimals, or '-' where it is NULL or not finite."""
    v = json_value(v)
    return "-" if v is None else f"{scale * v:.2f}"


def sparsity_words(curve: pd.DataFrame) -> str:
    """What the curve's sparsity counts, in words (its runs' ``prune.count``)."""
    counts = set(curve["sparsity_of"]) if "sparsity_of" in curve else {"prunable"}
    if counts == {"all-masked"}:
        return "every conv and linear weight (those never pruned counted too, as the paper's code does)"
    return "prunable weights" if counts == {"prunable"} else "weights (prunable or every weight, by run)"


def dropped_words(dropped: list[tuple[int, int]] | None) -> str:
    """What the means leave out (``show --unstable drop``), in words; "" where nothing was left out."""
    if not dropped:
        return ""
    which = ", ".join(f"seed {s} level {lv}" for s, lv in dropped[:5]) + (f" and {len(dropped) - 5} more"
                                                                          if len(dropped) > 5 else "")
    return f"the means leave out the levels that ended unstable (--unstable drop): {which}"


def curve_table(run_id: str, curve: pd.DataFrame, dropped: list[tuple[int, int]] | None = None):
    """The curve as a rich table (mean over seeds, without the ``dropped`` (seed, level) pairs' rows, which
    ``curve`` no longer has)."""
    from rich.table import Table

    seeds = curve["seed"].nunique()
    table = Table(title=f"run {run_id}" + (f" (mean of {seeds} seeds" + ("; fewer where levels were left out)"
                                                                        if dropped else ")") if seeds > 1 else ""),
                  caption=f"% of: sparsity: {sparsity_words(curve)} removed; test, best: final and best test accuracy; "
                          "train, clean: train accuracy on the noisy and the true labels; "
                          "memo: corrupted examples fitted; dist: ||w - w_init|| over the weights the level has; "
                          "-: none (memo without label noise) or not finite (a diverged run)"
                          + (f"; {dropped_words(dropped)}" if dropped else ""))
    for col in ("level", "sparsity", "test", "best", "train", "clean", "memo", "dist"):
        table.add_column(col, justify="right")
    cols = {c: summarize(curve, c) for c in LEVEL_FIELDS[2:]}
    for i, level in enumerate(cols["test_acc"]["level"]):
        table.add_row(str(int(level)), _cell(cols['test_acc']['sparsity'][i], 100),
                      *(_cell(cols[c]['mean'][i], 100) for c in PERCENT), _cell(cols['distance']['mean'][i]))
    return table


def curve_markdown(curve: pd.DataFrame, dropped: list[tuple[int, int]] | None = None) -> str:
    """The curve as a Markdown table (mean over seeds; min-max where a level has several), with a line after it
    naming the ``dropped`` (seed, level) pairs where there are any."""
    cols = {c: summarize(curve, c) for c in LEVEL_FIELDS[2:]}
    head = ["level", "sparsity %", "test acc %", "best test acc %", "train acc noisy %", "train acc clean %",
            "memorized %", "distance"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]

    def pct(c, i):
        m = _cell(cols[c]['mean'][i], 100)
        if cols[c]['n'][i] < 2 or m == "-":  # one seed there: no range (also where the others were dropped)
            return m
        return m + f" ({100 * cols[c]['lo'][i]:.1f}-{100 * cols[c]['hi'][i]:.1f})"

    for i, level in enumerate(cols["test_acc"]["level"]):
        row = [str(int(level)), _cell(cols['test_acc']['sparsity'][i], 100),
               *(pct(c, i) for c in PERCENT), _cell(cols['distance']['mean'][i])]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines + ([f"\n{dropped_words(dropped).capitalize()}."] if dropped else []))
