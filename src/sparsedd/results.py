"""Read results back as pandas DataFrames: ``sparsedd.results.load(root)``."""

from __future__ import annotations

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
    index = Store(root).index
    runs = pd.DataFrame(index.run_rows(),
                        columns=["run_id", "config", "preset", "seeds", "levels", "status", "error", "created", "updated"])
    levels = pd.DataFrame(index.level_rows())
    epochs = pd.DataFrame(index.epoch_rows())
    analyses = pd.DataFrame(index.analysis_rows(),
                            columns=["run_id", "seed", "level", "analysis_id", "target", "kind", "settings", "result"])
    return Results(runs, levels, epochs, analyses)


def resolve_run(store: Store, run: str) -> str:
    """A full run id from an id or a unique prefix of one."""
    matches = [i for i in store.index.run_ids() if i.startswith(run)]
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
