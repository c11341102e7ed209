"""What an analysis is, as a record: :class:`Analysis` (settings, compute, trainings, figure, summary), the
:class:`Training` one may ask for, the :data:`ANALYSES` registry and the settings' sane maxima.

A leaf: it imports no analysis. Each analysis is one module of :mod:`sparsedd.analysis.kinds` that registers
itself here; the catalog (``analysis/kinds/__init__.py``) imports them all, and
:mod:`sparsedd.analysis.runner` (the machinery that runs them) imports the catalog, so whoever reads
:data:`ANALYSES` through either sees every analysis.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from .. import config_load
from ..errors import SparseddError
from ..registry import Registry

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from ..config import TrainConfig
    from ..training import TrainData


@dataclass(frozen=True)
class Analysis:
    """An analysis: its settings dataclass (which checks itself) and what it computes."""

    settings: type
    compute: Callable[..., Any]  # per level: (analyzer, seed, level, stage id, settings) -> dict; else (analyzer, settings) -> table
    per_level: bool = True  # False: one table over the run's levels
    pruned_only: bool = False  # per level, levels 1.. only (it compares a pruned network with another)
    # per level, the networks it would train there that are not computed yet: (analyzer, seed, level, stage
    # id, settings) -> [Training]; those of one level's seeds then train stacked where that pays
    trainings: Callable[..., list["Training"]] | None = None
    # the report's figure of a per-level analysis: (its rows over a run's seeds and levels, a title) -> a
    # matplotlib figure; None: the report shows its table only
    figure: Callable[..., Any] | None = None
    summary: str = ""  # what it measures, in a few words (`sparsedd analyze --help`)


@dataclass
class Training:
    """One network an analysis trains: what :func:`sparsedd.training.train` takes, and a key naming it."""

    key: tuple
    model: torch.nn.Module
    data: TrainData
    cfg: TrainConfig
    mask: dict[str, torch.Tensor]
    order_key: tuple
    optimizer_state: dict[str, Any] | None = field(default=None, repr=False)


# what an analysis's functions take first: a sparsedd.analysis.runner.Analyzer (the store, the run, its
# replicates and data, result ids, cached results, fitting), which imports the analyses and is not imported back
Analyzer = Any

ANALYSES: Registry[Analysis] = Registry("analysis")  # each analysis module of analysis/kinds/ registers itself

# sane maxima of the settings (numbers past these are typos that would never finish); the settings'
# numbers are 64-bit integers and finite floats, as config_load.coerce makes them
MAX_POINTS = 100_001  # landscape points
MAX_ITERATIONS = 100_000  # sharpness power iterations and trace samples
MAX_INITS = 1000  # reinit inits per level


def parse_settings(kind: str, sets: list[str]) -> Any:
    """The settings of analysis ``kind`` from ``--set key=value`` items (the rest at their defaults)."""
    cls = ANALYSES[kind].settings
    hints = {f.name: f.type for f in dataclasses.fields(cls)}
    values = {}
    for key, value in config_load.parse_sets(sets).items():
        if key not in hints:
            raise SparseddError(f"unknown setting {key!r} for {kind}; valid: {', '.join(hints) or 'none'}")
        typ = {"int": int, "float": float, "bool": bool, "str": str}[hints[key]] if isinstance(hints[key], str) else hints[key]
        values[key] = config_load.coerce(f"{kind}.{key}", value, typ)
    return cls(**values)


def pending(kind: str, make: Callable[..., list[Training]]) -> Callable[..., list[Training]]:
    """The trainings of ``make`` at a level whose analysis ``kind`` is not computed yet (else none): what
    :attr:`Analysis.trainings` takes."""
    def trainings(a: Any, seed: int, level: int, sid: str, s: Any) -> list[Training]:
        return [] if a.store.is_done(a.result_id(kind, sid, s)) else make(a, seed, level, sid, s)
    return trainings


def figure(name: str) -> Callable[..., Any]:
    """The report's figure function ``name`` of :mod:`sparsedd.report.figures`, imported when drawn
    (matplotlib is not loaded to compute an analysis)."""
    def draw(rows: pd.DataFrame, title: str):
        from ..report import figures

        return getattr(figures, name)(rows, title)
    return draw
