"""Sweep files: a base configuration plus axes over any config key, expanded into runs.

    preset = "mnist1d-quick"          # optional base preset
    seeds = 3                         # optional, as --seeds
    retries = 1                       # optional: how often a failed run is tried again
    [base]                            # dotted config keys, as with --set
    "train.epochs" = 200
    [grid]                            # the product of these lists
    "data.noise" = [0.2, 0.4, 0.8]
    [zip]                             # aligned lists of equal length, combined with the grid
    "train.lr" = [0.1, 0.05]
    "train.batch_size" = [128, 64]
    [slurm]                           # optional: sbatch options for --executor slurm (sweep/slurm.py)
    partition = "gpu"

Every run's configuration is built and checked when the file is read, so a bad key or value
anywhere stops the sweep before anything runs.
"""

from __future__ import annotations

import itertools
import math
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .. import config as config_mod

from .. import config_load
from ..config import RunConfig, stable_hash
from ..errors import SparseddError
from . import slurm as slurm_options

TOP_KEYS = ("preset", "seeds", "retries", "base", "grid", "zip", "slurm")
MAX_RUNS = 10_000  # a grid past this is a typo (and would take minutes just to check)
MAX_RETRIES = 100


@dataclass(frozen=True)
class SweepRun:
    index: int
    preset: str | None
    values: dict[str, Any]  # dotted keys: base, then this run's grid and zip values
    seeds: int | None
    axes: dict[str, Any]  # the grid and zip values alone (what tells runs apart)
    config: RunConfig = field(compare=False)

    @property
    def run_id(self) -> str:
        return self.config.run_id

    @property
    def label(self) -> str:
        return " ".join(f"{k}={_text(v)}" for k, v in self.axes.items()) or "base"


@dataclass(frozen=True)
class Sweep:
    name: str
    source: str
    preset: str | None
    seeds: int | None
    retries: int
    runs: list[SweepRun]
    slurm: dict[str, Any] = field(default_factory=dict)  # sbatch options, checked (sweep/slurm.py); in no id

    @property
    def sweep_id(self) -> str:
        return stable_hash([r.run_id for r in self.runs])


def sweep_presets() -> list[str]:
    folder = resources.files("sparsedd").joinpath("presets", "sweeps")
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, list):
        return "[" + ",".join(_text(x) for x in v) + "]"
    return str(v)


def _read(source: str) -> tuple[str, str, dict[str, Any]]:
    path = Path(source)
    if path.exists():
        name, text = path.stem, config_load.read_text_file(path, "sweep file")
    elif source in sweep_presets():
        name = source
        text = resources.files("sparsedd").joinpath("presets", "sweeps", f"{source}.toml").read_text()
    else:
        raise SparseddError(f"sweep file {source!r} not found; give a TOML file or one of: {', '.join(sweep_presets())}")
    try:
        return name, str(path) if path.is_file() else f"sweep preset {source}", tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SparseddError(f"sweep file {source}: not valid TOML ({e})") from None
    except RecursionError:  # arrays nested thousands deep
        raise SparseddError(f"sweep file {source}: not valid TOML (nested too deep)") from None


def _table(doc: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise SparseddError(f"{where}: [{key}] must be a table of dotted config keys")
    return config_load.flatten(value)


def _check_model(cfg: RunConfig) -> None:
    """What a run checks before it loads its data (the model takes the data set's inputs, the counts hold on
    its declared size), so a sweep stops before anything runs rather than failing that run in a worker."""
    from ..experiments.scheduler import check_declared_fit

    check_declared_fit(cfg)


def load_sweep(source: str) -> Sweep:
    """Read, expand and check a sweep file (a path, or the name of a sweep preset)."""
    name, where, doc = _read(source)
    unknown = [k for k in doc if k not in TOP_KEYS]
    if unknown:
        raise SparseddError(f"{where}: unknown key {unknown[0]!r}; a sweep file has {', '.join(TOP_KEYS)}")
    preset = doc.get("preset")
    if preset is not None and not isinstance(preset, str):
        raise SparseddError(f"{where}: preset must be a preset name")
    seeds = doc.get("seeds")
    if seeds is not None and (not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1):
        raise SparseddError(f"{where}: seeds must be an integer >= 1, got {config_mod.brief(seeds)}")
    retries = doc.get("retries", 1)
    if not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries <= MAX_RETRIES:
        raise SparseddError(f"{where}: retries must be an integer in [0, {MAX_RETRIES}], "
                            f"got {config_mod.brief(retries)}")
    base, grid, zipped = _table(doc, "base", where), _table(doc, "grid", where), _table(doc, "zip", where)
    slurm = slurm_options.check(doc.get("slurm", {}), where)
    for kind, axes in (("grid", grid), ("zip", zipped)):
        for k, v in axes.items():
            if not isinstance(v, list):
                raise SparseddError(f"{where}: {kind} axis {k!r} must be a list of values, got {config_mod.brief(v)}")
            if not v:
                raise SparseddError(f"{where}: {kind} axis {k!r} is empty; give at least one value")
    if seeds is not None and "seeds" in {*base, *grid, *zipped}:
        raise SparseddError(f"{where}: seeds is given at the top and as a config key; keep one")
    both = sorted(set(grid) & set(zipped))
    if both:
        raise SparseddError(f"{where}: {both[0]!r} is both a grid and a zip axis; use one")
    lengths = {k: len(v) for k, v in zipped.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{k} has {n}" for k, n in lengths.items())
        raise SparseddError(f"{where}: the zip lists must have equal lengths ({shown})")
    count = math.prod(len(v) for v in grid.values()) * (len(next(iter(zipped.values()))) if zipped else 1)
    if count > MAX_RUNS:
        raise SparseddError(f"{where}: the axes make {count} runs; a sweep has at most {MAX_RUNS}")
    zip_rows = [dict(zip(zipped, row)) for row in zip(*zipped.values())] if zipped else [{}]
    grid_rows = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())] if grid else [{}]
    runs: list[SweepRun] = []
    seen: dict[str, int] = {}
    for g in grid_rows:
        for z in zip_rows:
            axes = {**g, **z}
            values = {**base, **axes}
            label = " ".join(f"{k}={_text(v)}" for k, v in axes.items()) or "base"
            try:
                cfg = config_load.load(preset, values=values, seeds=seeds)
                _check_model(cfg)
            except SparseddError as e:
                raise SparseddError(f"{where}, run {len(runs) + 1} ({label}): {e}") from None
            if cfg.run_id in seen:
                raise SparseddError(f"{where}: runs {seen[cfg.run_id] + 1} and {len(runs) + 1} are the same "
                                    f"configuration ({label}); remove the repeated value")
            seen[cfg.run_id] = len(runs)
            runs.append(SweepRun(len(runs), preset, values, seeds, axes, cfg))
    return Sweep(name, where, preset, seeds, retries, runs, slurm)
