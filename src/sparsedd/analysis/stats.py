"""The project's statistics, from scipy.stats: the t confidence interval of a mean and Spearman's rho.

One place, so that the claims (:mod:`sparsedd.analysis.claims`) and the distance table
(:mod:`sparsedd.analysis.curves`, shown by the report) compute them the same way. scipy is imported
inside the functions: importing the report or the command line stays as quick as before.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np

CONFIDENCE = 0.95


def _numbers(values: Sequence[float | None]) -> np.ndarray:
    return np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)


def t_interval(values: Sequence[float | None], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean, lower, upper) of the two-sided Student t confidence interval of the mean:
    mean +- t_{(1 + confidence) / 2, n - 1} * sd / sqrt(n), sd with n - 1. NaN and None values are dropped;
    all three are NaN without a value, the bounds NaN with one; values that are all equal give lower = upper
    = mean (scipy's ``t.interval`` would answer NaN for a zero scale, so only the quantile is scipy's)."""
    from scipy import stats

    if not 0.0 < confidence < 1.0:
        raise ValueError("t_interval needs 0 < confidence < 1")
    v = _numbers(values)
    if len(v) == 0:
        return math.nan, math.nan, math.nan
    mean = float(v.mean())
    if len(v) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2.0, len(v) - 1)) * float(v.std(ddof=1)) / math.sqrt(len(v))
    return mean, mean - half, mean + half


def spearman(x: Sequence[float | None], y: Sequence[float | None]) -> float:
    """Spearman's rho of two aligned series (ties get their average rank), over the pairs where both are
    numbers: a pair with a NaN or None is left out, as pandas' ``corr`` does. NaN when fewer than two pairs
    remain or either side is constant over them (no warning)."""
    from scipy import stats

    a, b = np.asarray(list(x), dtype=float), np.asarray(list(y), dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"spearman needs series of one length, not {len(a)} and {len(b)}")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if len(a) < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return math.nan
    with warnings.catch_warnings():  # e.g. two pairs only: rho is +-1 exactly, scipy may warn about its p-value
        warnings.simplefilter("ignore")
        return float(stats.spearmanr(a, b).statistic)
