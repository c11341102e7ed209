"""Read results back as pandas DataFrames: ``sparsedd.results.load(root)``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .config import is_id
from .errors import SparseddError
from .store import DamagedFile, Store
from .store.index import EPOCH_COLUMNS, LEVEL_COLUMNS


@dataclass
class Results:
    runs: pd.DataFrame  # one row per run: run_id, preset, seeds, levels, status, error, config (dict)
    levels: pd.DataFrame  # one row per run, seed and level: sparsity, accuracies, distance, unstable, ...
    epochs: pd.DataFrame  # one row per run, seed, level and epoch
    analyses: pd.DataFrame  # one row per run, seed, level, analysis kind and settings; result as a dict

    @property
    def run_id(self) -> str:
        """The run, when these are the results of one (as :func:`sparsedd.run` returns them)."""
        if len(self.runs) != 1:
            raise SparseddError(f"these results hold {len(self.runs)} runs, not one; see .runs")
        return str(self.runs["run_id"].iloc[0])

    def only(self, run_ids: list[str]) -> "Results":
        """The rows of these runs alone."""
        def pick(df: pd.DataFrame) -> pd.DataFrame:
            return df[df["run_id"].isin(run_ids)].reset_index(drop=True) if len(df) else df

        return Results(pick(self.runs), pick(self.levels), pick(self.epochs), pick(self.analyses))


def load(root: str | Path | None = None) -> Results:
    """Every run of a store. Metrics are floats, NaN where the index holds NULL (``memorized`` without label
    noise, a diverged run's losses); rows whose run id is not an id (16 hex digits) are left out."""
    index = Store(root).index
    runs = pd.DataFrame(index.run_rows(),
                        columns=["run_id", "config", "preset", "seeds", "levels", "status", "error", "created", "updated"])
    levels = _numeric(_frame(index.level_rows(), ["run_id", "seed", "stage_id", "level", *LEVEL_COLUMNS,
                                                  "layer_sparsity"]), LEVEL_COLUMNS)
    epochs = _numeric(_frame(index.epoch_rows(), ["run_id", "seed", "level", "stage_id", "epoch", *EPOCH_COLUMNS]),
                      EPOCH_COLUMNS)
    analyses = pd.DataFrame(index.analysis_rows(),
                            columns=["run_id", "seed", "level", "analysis_id", "target", "kind", "settings", "result"])
    levels["sparsity_of"] = levels["run_id"].map(_sparsity_of(runs)) if len(levels) else pd.Series(dtype=object)
    unstable = _unstable_stages(epochs)
    levels["unstable"] = pd.Series([unstable.get(sid, "") for sid in levels["stage_id"]], index=levels.index,
                                   dtype=object)
    return Results(*(_valid_ids(df) for df in (runs, levels, epochs, analyses)))


def _sparsity_of(runs: pd.DataFrame) -> dict[str, str]:
    """What each run's sparsity counts (its ``prune.count``): ``prunable``, the weights it may prune, or
    ``all-masked``, every conv and linear weight, those it never prunes included (the paper's code)."""
    def count(cfg: Any) -> str:
        prune = cfg.get("prune") if isinstance(cfg, dict) else None
        return prune.get("count", "prunable") if isinstance(prune, dict) else "prunable"
    return {r: count(c) for r, c in zip(runs["run_id"], runs["config"])}


def _unstable_stages(epochs: pd.DataFrame) -> dict[str, str]:
    """The stages whose last epoch ended unstable, with how (``evaluation`` or ``training``: the rule of
    :func:`sparsedd.training.loop.unstable_end`, applied to the index's epoch rows)."""
    from .training.loop import unstable_kind

    if not len(epochs):
        return {}
    rows = epochs.drop_duplicates(["stage_id", "epoch"]).sort_values(["stage_id", "epoch"])  # a stage shared by runs
    running = rows["train_loss_running"]
    best = running.where(np.isfinite(running)).groupby(rows["stage_id"]).min()
    last = rows.groupby("stage_id").tail(1)
    kinds = {sid: unstable_kind(evaluated, run, best[sid])
             for sid, evaluated, run in zip(last["stage_id"], last["train_loss"], last["train_loss_running"])}
    return {sid: kind for sid, kind in kinds.items() if kind}


def _frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    """The rows; with their columns where there are none, so a run's rows are selected without a special case."""
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=columns)


def _numeric(df: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """Metric columns as floats: a column NULL in every row would otherwise hold None objects, and SQLite
    keeps whatever a foreign index put in a REAL column."""
    for column in columns:
        if column in df:
            df[column] = pd.to_numeric(df[column], errors="coerce").astype(float)
    return df


def _valid_ids(df: pd.DataFrame) -> pd.DataFrame:
    """The rows whose run id is an id: a damaged or foreign index may hold others, which would otherwise
    name files and enter pages."""
    if "run_id" not in df or not len(df):
        return df
    return df[df["run_id"].map(is_id)].reset_index(drop=True)


def run_config(store: Store, run_id: str) -> dict[str, Any]:
    """The run's full config as registered: its ``config.json``, else the index's copy (both are written
    when the run is registered), else a one-line error."""
    try:
        cfg = store.run_config(run_id)
    except (OSError, ValueError, KeyError, TypeError, DamagedFile):  # missing, damaged or not the expected shape
        cfg = None
    if not isinstance(cfg, dict):
        try:
            cfg = next((r["config"] for r in store.index.run_rows() if r["run_id"] == run_id), None)
        except ValueError:  # the index's copy is not JSON either
            cfg = None
    if not isinstance(cfg, dict):
        raise SparseddError(f"run {run_id} has no readable configuration (neither {store.run_dir(run_id)}/config.json "
                            f"nor its index row); run it again with `sparsedd run` to record it")
    return cfg


def resolve_run(store: Store, run: str) -> str:
    """A full run id from an id or a unique prefix of one (only ids of 16 hex digits are considered)."""
    if not run:
        raise SparseddError("give a run id or a prefix of one; `sparsedd ls` lists the runs")
    matches = [i for i in store.index.run_ids() if is_id(i) and i.startswith(run)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        if any(is_id(i) and i.startswith(run) for i in store.run_folders()):  # registered, the index lost it
            raise SparseddError(f"run {run!r} has a folder in {store.root} but is not in its index; "
                                f"`sparsedd doctor --root {store.root} --repair` rebuilds the index")
        raise SparseddError(f"no run {run!r} in {store.root}; `sparsedd ls --root {store.root}` lists the runs")
    raise SparseddError(f"run prefix {run!r} is ambiguous ({len(matches)} runs); give more characters")


def run_curve(store: Store, run_id: str) -> pd.DataFrame:
    """The per-level rows of one run (all seeds), sorted by seed and level."""
    levels = load(store.root).levels
    if not len(levels):
        return levels
    return levels[levels["run_id"] == run_id].reset_index(drop=True)
