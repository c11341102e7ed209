"""The numerics of the ``memorization`` analysis (a leaf: numpy, pandas and :mod:`.stats`): which corrupted
training examples each level's network fits, read from the analysis's per-level results, the level at
which each stops being fitted, and whether the examples freed last are the hardest by the dense network's
loss (Spearman's rho, per seed).

A per-level result (``analysis/kinds/memorization.py``) holds ``fitted_examples``: 0/1 per corrupted
example, in the order of the sorted training-set indices of the corrupted examples (``examples``, kept
with level 0 beside the dense network's per-example losses ``loss_clean`` and ``loss_noisy``). The report's
figure (``report/figures.py``) and the run table read the same rows through the functions below.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .stats import spearman, t_interval

NEVER = -1  # the "last level fitted" of an example no level fits


def fitted_matrix(rows: pd.DataFrame) -> tuple[list[int], np.ndarray]:
    """One seed's levels (ascending) and its levels x corrupted examples 0/1 matrix of ``fitted_examples``."""
    rows = rows.sort_values("level")
    return [int(v) for v in rows["level"]], np.asarray([list(f) for f in rows["fitted_examples"]], dtype=np.int8)


def last_fitted(levels: list[int], matrix: np.ndarray) -> np.ndarray:
    """Per example, the last level at which it is fitted (:data:`NEVER` when none is)."""
    lv = np.asarray(levels)[:, None] * np.ones_like(matrix, dtype=np.int64)
    return np.where(matrix.astype(bool), lv, NEVER).max(axis=0)


def freeing_order(levels: list[int], matrix: np.ndarray) -> np.ndarray:
    """The examples' order for the level x example picture: by the level at which each stops being fitted
    (its last fitted level), then by how many levels fit it, then by index (a stable sort)."""
    return np.lexsort((matrix.sum(axis=0), last_fitted(levels, matrix)))


def transitions(previous: list[int] | None, current: list[int]) -> tuple[int | None, int | None]:
    """(forgotten, fitted again) from one level to the next: examples fitted before and not now, and the
    reverse; (None, None) without a previous level."""
    if previous is None:
        return None, None
    p, c = np.asarray(previous, dtype=bool), np.asarray(current, dtype=bool)
    return int((p & ~c).sum()), int((~p & c).sum())


def seed_summary(seed: Any, rows: pd.DataFrame) -> dict[str, Any]:
    """One seed's row of the run table: counts over its levels and the Spearman correlations of each
    example's last fitted level with the dense network's loss on its clean and on its noisy label."""
    levels, m = fitted_matrix(rows)
    last = last_fitted(levels, m)
    dense = rows[rows["level"] == 0]
    loss = {k: (np.asarray(dense[k].iloc[0], dtype=float) if len(dense) else np.full(m.shape[1], np.nan))
            for k in ("loss_clean", "loss_noisy")}
    ordered = rows.sort_values("level")
    return {"seed": seed, "levels": len(levels), "corrupted": int(m.shape[1]), "fitted_dense": int(m[0].sum()),
            "fitted_last_level": int(m[-1].sum()), "forgotten": int(ordered["forgotten"].fillna(0).sum()),
            "refitted": int(ordered["refitted"].fillna(0).sum()), "fitted_at_every_level": int(m.all(axis=0).sum()),
            "median_last_fitted": float(np.median(last)),
            "spearman_clean_loss": spearman(last, loss["loss_clean"]),
            "spearman_noisy_loss": spearman(last, loss["loss_noisy"]),
            "fitted": [int(v) for v in m.sum(axis=1)],
            "forgotten_by_level": [None if pd.isna(v) else int(v) for v in ordered["forgotten"]],
            "refitted_by_level": [None if pd.isna(v) else int(v) for v in ordered["refitted"]],
            "last_fitted": [int(v) for v in last]}


def run_table(rows: pd.DataFrame) -> pd.DataFrame:
    """The per-seed rows of :func:`seed_summary` and a ``mean`` row: the seeds' mean of each count, the mean
    Spearman rho with its 95% t interval over seeds, and, when every seed has the same corrupted examples
    (the label noise is drawn by ``data.noise_seed``, not by the seed), the mean pairwise Spearman rho of
    the seeds' last fitted levels (``seed_agreement``: are the same examples freed last?)."""
    per_seed = [seed_summary(int(seed), g) for seed, g in rows.groupby("seed")]
    out = pd.DataFrame(per_seed)
    mean: dict[str, Any] = {"seed": "mean"}
    for col in ("levels", "corrupted", "fitted_dense", "fitted_last_level", "forgotten", "refitted",
                "fitted_at_every_level", "median_last_fitted"):
        mean[col] = float(out[col].mean())
    for col in ("spearman_clean_loss", "spearman_noisy_loss"):
        mean[col], mean[f"{col}_lo"], mean[f"{col}_hi"] = t_interval(out[col].tolist())
    lasts = [r["last_fitted"] for r in per_seed]
    same = len({len(v) for v in lasts}) == 1 and len({tuple(g[g["level"] == 0]["examples"].iloc[0])
                                                      for _, g in rows.groupby("seed") if (g["level"] == 0).any()}) <= 1
    pairs = [spearman(lasts[i], lasts[j]) for i in range(len(lasts)) for j in range(i + 1, len(lasts))]
    mean["seed_agreement"] = float(np.nanmean(pairs)) if same and pairs and not np.all(np.isnan(pairs)) else None
    return pd.concat([out, pd.DataFrame([mean])], ignore_index=True)
