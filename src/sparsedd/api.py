"""The Python API for notebooks and scripts: the same work, validation and errors as the command line.

    import sparsedd
    res = sparsedd.run("mnist1d-quick", overrides={"data.noise": 0.4}, seeds=2, root="runs")
    res.levels                                    # one row per seed and level (pandas)
    sparsedd.analyze(res.run_id, "distance", root="runs")
    sparsedd.load("runs").runs                    # every run of a store

Bad input raises :class:`sparsedd.errors.SparseddError` with the CLI's one-line message.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import SparseddError
from . import results as results_mod
from .results import Results


def options(**values: Any):
    """Execution options (:class:`sparsedd.options.ExecOptions`) with ``device="auto"`` resolved and the
    CLI's thread default; no progress display unless ``progress=True``."""
    from .options import ExecOptions, resolve_device

    values.setdefault("progress", False)
    values["device"] = resolve_device(values.get("device", "auto"))
    try:
        return ExecOptions(**values)
    except TypeError as e:  # an unknown keyword
        raise SparseddError(f"{e}; execution options are {', '.join(ExecOptions.__dataclass_fields__)}") from None


def _said(opts) -> Any:
    """With ``progress=True``: a line on stderr per level an analysis computes or reads (as the CLI logs them)."""
    return (lambda line: print(f"sparsedd: {line}", file=sys.stderr, flush=True)) if opts.progress else None


def run(preset: str | None = None, *, config: str | Path | None = None, overrides: dict[str, Any] | None = None,
        seeds: int | None = None, root: str | Path | None = None, model: str | None = None, data: str | None = None,
        **execution: Any) -> Results:
    """Run (or resume) an experiment; returns its results (``.run_id``, ``.levels``, ``.epochs``, ...).

    ``preset`` and ``config`` (a TOML file) as with ``sparsedd run``; ``overrides`` maps dotted config
    keys to values (``{"train.epochs": 10}``), like ``--set``; ``model`` and ``data`` set ``model.name``
    and ``data.name`` (a user's builder ``"package.module:function"``, a data file or image folder);
    ``execution``: any execution option (``device``, ``data_dir``, ``threads``, ``batch``, ``sparse``,
    ``progress``, ...).
    """
    from . import config_load
    from .experiments import run as run_experiment

    named = {k: v for k, v in (("model.name", model), ("data.name", data)) if v is not None}
    cfg = config_load.load(preset, config, seeds=seeds, values={**named, **dict(overrides or {})})
    opts = options(**execution)
    opts.apply_threads(cfg.model.name)
    store = _store(root, writable=True)
    run_id = run_experiment(cfg, store, preset=preset if preset or config else config_load.DEFAULT_PRESET,
                            options=opts)
    results = results_mod.load(store.root).only([run_id])
    if results.runs["status"].iloc[0] == "diverged":  # a result, not an error: said as the CLI says it
        warnings.warn(f"run {run_id} diverged: {results.runs['error'].iloc[0]}", stacklevel=2)
    return results


def _store(root: str | Path | None, writable: bool = False):
    """The store at ``root`` once it is known to be a folder (as the CLI's ``--root``)."""
    import os

    from .inputs import folder
    from .store import Store, default_root

    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise SparseddError(f"root must be a path (a str or pathlib.Path), got {type(root).__name__} {root!r}")
    return Store(folder(root if root is not None else default_root(), "root", writable=writable))


def load(root: str | Path | None = None) -> Results:
    """Every run of the store at ``root`` (default ``$SPARSEDD_ROOT`` or ``./runs``) as DataFrames; a root that
    is a file, or not a path, is a one-line :class:`SparseddError` (a folder without a store reads as empty)."""
    return results_mod.load(_store(root).root)


def analyze(run: str, kind: str, *, root: str | Path | None = None, settings: dict[str, Any] | None = None,
            levels: list[int] | None = None, seeds: list[int] | None = None, **execution: Any) -> pd.DataFrame:
    """One analysis of a run (an id or a unique prefix), as ``sparsedd analyze RUN KIND``: a table with a
    row per seed and level, or the run-level table of ``distance`` and ``phases``; cached in the store.
    ``progress=True``: a line on stderr per level a per-level analysis computes or reads; of the run-level
    ones, ``memorization`` says each level it computes and ``distance`` with ``reference=start`` each level it
    loads; ``phases``, ``select`` and ``distance`` from the init read the recorded curve and say nothing."""
    from .analysis.runner import Analyzer, parse_settings
    from .results import resolve_run

    parsed = parse_settings(kind, [f"{k}={v}" for k, v in (settings or {}).items()])
    opts = options(**execution)
    store = _store(root)
    run_id = resolve_run(store, run)
    analyzer = Analyzer(store, run_id, opts)
    opts.apply_threads(analyzer.cfg.model.name)
    analyzer.check_asked(kind, levels, seeds)
    return analyzer.run(kind, parsed, levels, seeds, progress=_said(opts))


def claims(preset: str | None = None, *, overrides: dict[str, Any] | None = None, seeds: int | None = None,
           only: list[int] | None = None, root: str | Path | None = None, workers: int | None = 1,
           unstable: str = "keep", **execution: Any) -> pd.DataFrame:
    """The paper's claims tested over seeds, as ``sparsedd claims``: runs what they need (reused from the
    store), saves the result and returns its rows (claim, setting, measure, value, interval, verdict).
    ``workers``: runs at once (1 runs them in this process; None: as many as cores); ``unstable="drop"``:
    measured without the levels that ended unstable; ``progress=True``: a line on stderr per claim and per
    level its analyses compute or read (hours on the paper's settings)."""
    from .claims import run_claims

    opts = options(**execution)
    sets = [f"{k}={_set_value(v)}" for k, v in (overrides or {}).items()]
    store = _store(root, writable=True)
    doc, _ = run_claims(preset, sets, seeds, store.root, opts, workers=workers,
                        executor="inline" if workers == 1 else "local", only=only, unstable=unstable,
                        progress=_said(opts))
    return pd.DataFrame(_claim_rows(doc))


def _claim_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """A row per claim (part ``""``) and per part of it (a setting, or a level)."""
    out = []
    for c in doc["claims"]:
        for part in [c] + (c["parts"] if len(c["parts"]) > 1 else []):
            where = "" if part is c else part.get("setting") or f"level {part.get('level', '')}"
            out.append({"claim": c["claim"], "part": where, "measure": part["measure"], "value": part["value"],
                        "ci_low": part["ci"][0], "ci_high": part["ci"][1], "test": part["test"],
                        "verdict": part["verdict"]})
    return out


def _set_value(value: Any) -> str:
    """A value as ``--set`` takes it (lists as ``[1, 2]``)."""
    return f"[{', '.join(map(str, value))}]" if isinstance(value, (list, tuple)) else str(value)


__all__ = ["run", "analyze", "load", "claims", "options", "Results"]
