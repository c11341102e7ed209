"""``select``: the level a user would pick without test labels, and its regret against the test-set sweet spot.

A run with ``data.val_split`` holds out part of the noisy training set; each level then records its validation
accuracy (on noisy labels). Per seed, a rule picks one level: ``validation``, the best validation accuracy;
``min-distance``, the smallest learning distance from the init (the distance rule); ``dense``, level 0 (no
pruning, the baseline). Its regret is the test accuracy at the seed's best test level (the oracle sweet spot)
minus the test accuracy at the picked level; over seeds, its mean gets a t-interval
(:func:`sparsedd.analysis.stats.t_interval`) and a verdict as the claims give one
(:func:`sparsedd.analysis.claims.verdict`): "regret below ``tolerance``" holds when the whole interval lies
below it. ``spearman`` is the rule's score (validation accuracy; minus the distance) against test accuracy over
the levels, averaged over seeds: whether the rule's signal tracks the test curve at all. Only the levels every seed has finished are compared (a run
still going is analyzed as far as it got; ``levels`` says how far).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from ...errors import SparseddError
from ..base import ANALYSES, Analysis, Analyzer
from ..claims import MIN_SEEDS, OPEN, verdict
from ..stats import spearman, t_interval

# rule -> the column it maximizes (None: level 0), and the sign that makes larger better
RULES = {"validation": ("val", 1.0), "min-distance": ("distance", -1.0), "dense": (None, 1.0)}
STOPS = {"final": ("val_acc", "test_acc"), "best-val": ("val_acc_best", "test_acc_at_best_val")}
NEED_VAL = "select needs a validation split; run with --set data.val_split=0.1"


@dataclass(frozen=True)
class SelectSettings:
    stop: str = "final"  # final: each level's final network; best-val: its best-validation epoch (early stopping)
    tolerance: float = 0.01  # the regret (a fraction of the test set) below which a rule counts as good enough

    def __post_init__(self) -> None:
        if self.stop not in STOPS:
            raise SparseddError(f"select: stop must be final or best-val, got {self.stop!r}")
        if not 0.0 <= self.tolerance <= 1.0:
            raise SparseddError(f"select: tolerance must be in [0, 1] (a fraction of the test set), "
                                f"got {self.tolerance}")


def _common_levels(curve: pd.DataFrame) -> pd.DataFrame:
    """The rows of the levels every seed has."""
    per_seed = [set(g["level"]) for _, g in curve.groupby("seed")]
    common = set.intersection(*per_seed) if per_seed else set()
    return curve[curve["level"].isin(common)]


def _picks(g: pd.DataFrame, rule: str, val: str, test: str) -> tuple[int, float, float, float, int]:
    """One seed's picked level, its test accuracy, the seed's best test accuracy, the rule's Spearman rho, and
    the seed's best test level."""
    col, sign = RULES[rule]
    g = g.sort_values("level").reset_index(drop=True)
    if col is None:
        i, rho = 0, math.nan
    else:
        score = sign * g[val if col == "val" else col]
        i, rho = int(score.idxmax()), spearman(score, g[test])  # idxmax: the first (least sparse) of equals
    return int(g["level"][i]), float(g[test][i]), float(g[test].max()), rho, int(g["level"][g[test].idxmax()])


def selection_table(curve: pd.DataFrame, s: SelectSettings) -> pd.DataFrame:
    """One row per rule over a run's per-level rows (``sparsedd.results.run_curve``): the levels picked and
    the best test levels per seed, the mean test accuracies, the regret's mean and t-interval, its verdict."""
    val, test = STOPS[s.stop]
    if val not in curve or not curve[val].notna().any():
        raise SparseddError(NEED_VAL)
    curve = _common_levels(curve)
    if curve["level"].nunique() < 2:
        raise SparseddError("select needs at least two levels finished by every seed")
    seeds = [(int(seed), g) for seed, g in curve.groupby("seed")]
    rows = []
    for rule in RULES:
        picks = [(seed, *_picks(g, rule, val, test)) for seed, g in seeds]
        regret = [best - acc for _, _, acc, best, _, _ in picks]
        mean, lo, hi = t_interval(regret)
        said = verdict(lo, hi, "<", s.tolerance) if len(regret) >= MIN_SEEDS else OPEN
        rhos = [p[4] for p in picks if not math.isnan(p[4])]
        rows.append({"rule": rule, "stop": s.stop, "seeds": len(seeds), "levels": int(curve["level"].nunique()),
                     "picked": " ".join(str(p[1]) for p in picks),
                     "best_test_level": " ".join(str(p[5]) for p in picks),
                     "picked_test_acc": sum(p[2] for p in picks) / len(picks),
                     "best_test_acc": sum(p[3] for p in picks) / len(picks),
                     "regret": mean, "regret_lo": lo, "regret_hi": hi,
                     "verdict": f"regret < {s.tolerance:g}: {said}",
                     "spearman": sum(rhos) / len(rhos) if rhos else math.nan})
    return pd.DataFrame(rows)


def compute(a: Analyzer, s: SelectSettings) -> pd.DataFrame:
    from ...results import run_curve

    if not a.cfg.data.val_split:
        raise SparseddError(NEED_VAL)
    curve = run_curve(a.store, a.run_id)
    if not len(curve):
        raise SparseddError(f"run {a.run_id} has no finished level yet; see `sparsedd show {a.run_id}`")
    return selection_table(curve, s)


ANALYSES.register("select", Analysis(SelectSettings, compute, per_level=False,
                                     summary="the level picked by validation, and its regret"))
