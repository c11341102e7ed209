"""Analyses of a run's whole curve (no training): learning distance against test accuracy, and the phases."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import SparseddError
from ..store import Store
from . import phases as phases_mod
from .stats import spearman


def distance_table(store: Store, run_id: str, distances: dict[tuple[int, int], float] | None = None,
                   reference: str = "init", unstable: str = "keep") -> pd.DataFrame:
    """The Spearman correlation of learning distance and test accuracy over levels (per seed and on the mean),
    with the levels and their distances. ``distances`` by (seed, level) replace the recorded ones (measured from
    the dense init under each level's mask) when the reference is another (``reference`` names it).
    ``unstable="drop"`` leaves out each seed's levels that ended unstable (see :func:`without_unstable`)."""
    from ..results import run_curve

    curve = without_unstable(run_curve(store, run_id).sort_values(["seed", "level"]), unstable)
    if distances is not None:
        curve = curve.assign(distance=[distances[(int(s), int(lv))] for s, lv in zip(curve["seed"], curve["level"])])
    out = []
    for seed, g in curve.groupby("seed"):
        out.append({"seed": int(seed), "reference": reference,
                    "spearman": spearman(g["distance"], g["test_acc"]),
                    "levels": [int(v) for v in g["level"]], "distances": [float(v) for v in g["distance"]]})
    mean = curve.groupby("level")[["distance", "test_acc"]].mean()
    out.append({"seed": "mean", "reference": reference,
                "spearman": spearman(mean["distance"], mean["test_acc"]),
                "levels": [int(v) for v in mean.index], "distances": [float(v) for v in mean["distance"]]})
    return pd.DataFrame(out)


UNSTABLE = ("keep", "drop")  # what the curve analyses do with the levels whose last epoch ended unstable


def check_unstable(unstable: str, what: str = "") -> None:
    if unstable not in UNSTABLE:
        raise SparseddError(f"{what}unstable must be one of {', '.join(UNSTABLE)}, got {unstable!r}")


def without_unstable(curve: pd.DataFrame, unstable: str) -> pd.DataFrame:
    """``curve`` as it is (``keep``), or without each seed's levels that ended unstable (``drop``: the
    ``unstable`` column of :func:`sparsedd.results.load`; a mean over seeds at such a level is then over
    the others)."""
    check_unstable(unstable)
    return curve[curve["unstable"] == ""] if unstable == "drop" and len(curve) else curve


def phases_without_unstable(run_id: str, root: Path) -> str:
    """The command that finds a run's phases without its levels that ended unstable (``show`` and the report say it)."""
    return f"sparsedd analyze {run_id} phases --root {shlex.quote(str(root))} --set unstable=drop"


def phases_table(store: Store, run_id: str, tol: float = 0.01, unstable: str = "keep") -> pd.DataFrame:
    """The phases per seed and on the seed mean: one row per (seed, phase) with level, sparsity, accuracy.
    The mean's rows also say in how many seeds the same phase was found within one level of it
    (``seeds_agree``, of ``seeds``). ``unstable="drop"`` leaves out each seed's levels that ended unstable
    (see :func:`without_unstable`)."""
    from ..results import run_curve

    curve = without_unstable(run_curve(store, run_id).sort_values(["seed", "level"]), unstable)
    curves: list[tuple[Any, pd.DataFrame]] = [(int(s), g) for s, g in curve.groupby("seed")]
    curves.append(("mean", curve.groupby("level")[["sparsity", "test_acc", "train_acc_noisy"]].mean().reset_index()))
    # a curve without its dense level (dropped as unstable) has no baseline to dip from: no phases
    found = {seed: phases_mod.detect(g["sparsity"].tolist(), g["test_acc"].tolist(), g["train_acc_noisy"].tolist(),
                                     tol=tol, levels=g["level"].tolist())
             for seed, g in curves if len(g) >= 3 and g["level"].iloc[0] == 0}
    per_seed = [p for seed, p in found.items() if seed != "mean"]
    rows = []
    for seed, p in found.items():
        for name in ("dense", "light_end", "critical", "sweet", "collapse", "train_leaves_full"):
            pt = getattr(p, name)
            if pt is None:
                continue
            acc_kind = "train_acc_noisy" if name == "train_leaves_full" else "test_acc"
            agree = (sum(1 for q in per_seed if getattr(q, name) is not None
                         and abs(getattr(q, name).level - pt.level) <= 1) if seed == "mean" else None)
            rows.append({"seed": seed, "found": p.found, "phase": name, "level": pt.level, "sparsity": pt.sparsity,
                         "acc": pt.acc, "acc_of": acc_kind, "note": p.reason, "seeds_agree": agree,
                         "seeds": len(per_seed)})
    return pd.DataFrame(rows)
