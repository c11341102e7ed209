"""Read results back as pandas DataFrames: ``sparsedd.results.load(root)``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .errors import SparseddError
from .store import Store


@dataclass
class Results:
    runs: pd.DataFrame  # one row per run: run_id, preset, seeds, levels, status, error, config (dict)
    levels: pd.DataFrame  # one row per run, seed and level: sparsity, accuracies, distance, ...
    epochs: pd.DataFrame  # one row per run, seed, level and epoch
    analyses: pd.DataFrame  # one row per run, seed, level, analysis kind and settings; result as a dict


def load(root: str | Path | None = None) -> Results:
    store = Store(root)
    q = store.index.query
    runs = pd.DataFrame([dict(r) for r in q("SELECT * FROM runs ORDER BY created")],
                        columns=["run_id", "config", "preset", "seeds", "levels", "status", "error", "created", "updated"])
    runs["config"] = runs["config"].map(json.loads)
    levels = pd.DataFrame([dict(r) for r in q(
        "SELECT rs.run_id, rs.seed, l.* FROM run_stages rs JOIN levels l ON l.stage_id = rs.stage_id "
        "ORDER BY rs.run_id, rs.seed, rs.level")])
    if len(levels):
        levels["layer_sparsity"] = levels["layer_sparsity"].map(json.loads)
    epochs = pd.DataFrame([dict(r) for r in q(
        "SELECT rs.run_id, rs.seed, rs.level, e.* FROM run_stages rs JOIN epochs e ON e.stage_id = rs.stage_id "
        "ORDER BY rs.run_id, rs.seed, rs.level, e.epoch")])
    analyses = pd.DataFrame([dict(r) for r in q(
        "SELECT rs.run_id, rs.seed, rs.level, a.* FROM run_stages rs JOIN analyses a ON a.target = rs.stage_id "
        "ORDER BY rs.run_id, a.kind, rs.seed, rs.level")],
        columns=["run_id", "seed", "level", "analysis_id", "target", "kind", "settings", "result"])
    for col in ("settings", "result"):
        analyses[col] = analyses[col].map(json.loads)
    return Results(runs, levels, epochs, analyses)


def resolve_run(store: Store, run: str) -> str:
    """A full run id from an id or a unique prefix of one."""
    ids = [r["run_id"] for r in store.index.query("SELECT run_id FROM runs")]
    matches = [i for i in ids if i.startswith(run)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise SparseddError(f"no run {run!r} in {store.root}; `sparsedd ls --root {store.root}` lists the runs")
    raise SparseddError(f"run prefix {run!r} is ambiguous ({len(matches)} runs); give more characters")


def run_curve(store: Store, run_id: str) -> pd.DataFrame:
    """The per-level rows of one run (all seeds), sorted by seed and level."""
    levels = load(store.root).levels
    if not len(levels):
        return levels
    return levels[levels["run_id"] == run_id].reset_index(drop=True)
