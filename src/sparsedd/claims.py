"""`sparsedd claims`: the runs and analyses the paper's six claims need, built from one preset as a
sweep, then each claim measured over seeds (:mod:`sparsedd.analysis.claims`).

Flow: the base configuration (preset, then ``--set``, then ``--seeds``) -> one run per *role*, each
the base with one key changed (:data:`ROLES`) -> a :class:`~sparsedd.sweep.Sweep` built in code and
run by :func:`~sparsedd.sweep.run_sweep` (finished stages are reused, so a second call trains
nothing) -> the analyses the claims ask for, cached in the store as ``sparsedd analyze`` caches them
-> one row per claim, saved as ``ROOT/claims/<sweep id>.json`` (the report shows it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from . import config_load
from .analysis.claims import CLAIMS, CONFIDENCE
from .config import RunConfig, stable_hash
from .errors import SparseddError
from .options import ExecOptions
from .report.claims_text import markdown, table  # noqa: F401 (what `sparsedd claims` prints)
from .store import Store, write_json
from .sweep import Sweep, SweepOptions, SweepRun, run_sweep


def _heavier_noise(cfg: RunConfig) -> dict[str, Any]:
    from .data.noise import HUMAN_NOISE

    if cfg.data.noise_type in HUMAN_NOISE or cfg.data.noise > 0.8 + 1e-9:
        raise SparseddError("claims vary the label noise rate: the base needs a drawn noise type "
                            f"(not {cfg.data.noise_type}) and data.noise <= 0.8")
    return {"data.noise": round(cfg.data.noise + 0.2, 6)}


def _other_method(cfg: RunConfig) -> dict[str, Any]:
    return {"prune.method": "random" if cfg.prune.method != "random" else "magnitude"}


def _other_retrain(cfg: RunConfig) -> dict[str, Any]:
    return {"retrain.mode": "lr-rewind" if cfg.retrain.mode == "weight-rewind" else "weight-rewind"}


def _half_data(cfg: RunConfig) -> dict[str, Any]:
    from .data import spec_of

    return {"data.num_train": (cfg.data.num_train or spec_of(cfg.data.name).num_train) // 2}


# role -> the keys it changes in the base configuration
ROLES: dict[str, Callable[[RunConfig], dict[str, Any]]] = {
    "base": lambda cfg: {},
    "noise": _heavier_noise,  # claims 1, 2: 0.2 more label noise
    "method": _other_method,  # claim 1: random pruning (magnitude when the base prunes at random)
    "retrain": _other_retrain,  # claim 1: lr-rewind (weight-rewind when the base is not a lottery ticket run)
    "data": _half_data,  # claim 3: half the training set, the less complex data
}


@dataclass
class ClaimRuns:
    preset: str
    seeds: int
    sets: list[str]
    sweep: Sweep
    roles: dict[str, SweepRun]  # including "ticket": the weight-rewind run (base or retrain)
    claims: list[str]  # the claims measured (their numbers, as registered)

    def label(self, role: str) -> str:
        return self.roles[role].label


def select(only: list[int] | None) -> list[str]:
    names = list(CLAIMS.names())
    if only is None:
        return names
    bad = [n for n in only if str(n) not in names]
    if bad or not only:
        raise SparseddError(f"--only takes claim numbers among {', '.join(names)}, got {only}")
    return [n for n in names if int(n) in only]


def _ticket(base: RunConfig) -> str:
    """The role of the weight-rewind run, whose winning tickets claim 6 reads."""
    return "base" if base.retrain.mode == "weight-rewind" else "retrain"


def _roles(claims: list[str], base: RunConfig) -> list[str]:
    """The run roles the claims read ("ticket" standing for base or retrain)."""
    wanted = {_ticket(base) if r == "ticket" else r for n in claims for r in CLAIMS[n].roles}
    return [r for r in ROLES if r in wanted]


def build(preset: str | None, sets: list[str], seeds: int | None, only: list[int] | None = None) -> ClaimRuns:
    """The claims' runs as a sweep; every configuration checked before anything runs."""
    preset = preset or config_load.DEFAULT_PRESET
    claims = select(only)
    values = config_load.parse_sets(sets)
    base = config_load.load(preset, sets=sets, seeds=seeds)
    if base.seeds < 2:
        raise SparseddError("claims need at least 2 seeds for an interval over seeds (3 for a verdict); give "
                            "--seeds N (5 or more for intervals narrow enough to decide)")
    if base.prune.levels < 3:
        raise SparseddError("claims need prune.levels >= 3 (a dip, a rise and a collapse need levels to happen at)")
    runs: dict[str, SweepRun] = {}
    for i, role in enumerate(_roles(claims, base)):
        axes = ROLES[role](base)
        cfg = config_load.load(preset, values={**values, **axes}, seeds=base.seeds)
        runs[role] = SweepRun(i, preset, {**values, **axes}, base.seeds, axes, cfg)
    listed = list(runs.values())
    if _ticket(base) in runs:
        runs["ticket"] = runs[_ticket(base)]
    sweep = Sweep(f"claims-{preset}", f"sparsedd claims --preset {preset}", preset, base.seeds, 1, listed)
    return ClaimRuns(preset, base.seeds, list(sets), sweep, runs, claims)


class StoreEvidence:
    """What the claims read (:class:`sparsedd.analysis.claims.Evidence`), from the store; analyses are
    computed on first use and cached as stages, like ``sparsedd analyze``."""

    def __init__(self, store: Store, runs: ClaimRuns, options: ExecOptions, unstable: str = "keep",
                 progress: Callable[[str], None] | None = None):
        self.store, self.runs, self.options, self.unstable = store, runs, options, unstable
        self.progress = progress  # a line per level an analysis computes or reads (they can take hours)
        self._analyzers: dict[str, Any] = {}
        self._curves: dict[str, pd.DataFrame] = {}  # each role's curve read once (the claims ask for it many times)

    def curve(self, role: str) -> pd.DataFrame:
        """The role's curve; with ``unstable="drop"`` without the levels that ended unstable, and without the
        seeds left with no dense level or no pruned one (the measures take a seed's first level as its dense
        baseline and look for its best pruned level)."""
        from .analysis.curves import without_unstable
        from .results import run_curve

        if role not in self._curves:
            curve = without_unstable(run_curve(self.store, self.runs.roles[role].run_id), self.unstable)
            if len(curve):
                whole = [seed for seed, g in curve.groupby("seed")
                         if (g["level"] == 0).any() and (g["level"] > 0).any()]
                curve = curve[curve["seed"].isin(whole)]
            self._curves[role] = curve
        return self._curves[role].copy()  # (a caller may change its copy)

    def label(self, role: str) -> str:
        return self.runs.label(role)

    def train_config(self, role: str) -> Any:
        return self.runs.roles[role].config.train

    def analysis(self, role: str, kind: str, settings: dict[str, Any], levels: list[int]) -> pd.DataFrame:
        from .analysis.runner import Analyzer, parse_settings

        run_id = self.runs.roles[role].run_id
        if run_id not in self._analyzers:
            self._analyzers[run_id] = Analyzer(self.store, run_id, self.options)
        parsed = parse_settings(kind, [f"{k}={v}" for k, v in settings.items()])
        rows = self._analyzers[run_id].run(kind, parsed, levels, progress=self.progress)
        if self.unstable == "keep":
            return rows
        kept = set(zip(*(self.curve(role)[c].astype(int) for c in ("seed", "level"))))  # what the curve kept
        return rows[[(int(s), int(lv)) in kept for s, lv in zip(rows["seed"], rows["level"])]]


def ended_unstable(store: Store, runs: ClaimRuns) -> list[dict[str, Any]]:
    """The levels of the claims' runs whose last epoch ended unstable (the ``unstable`` column of
    :func:`sparsedd.results.load`): run, seed, level and how."""
    from .results import load

    levels = load(store.root).levels  # read once for all the runs
    if not len(levels):
        return []
    order = list(dict.fromkeys(r.run_id for r in runs.roles.values()))
    bad = levels[levels["run_id"].isin(order) & (levels["unstable"] != "")]
    bad = bad.assign(order=bad["run_id"].map(order.index)).sort_values(["order", "seed", "level"])
    return [{"run": r, "seed": int(s), "level": int(lv), "kind": k}
            for r, s, lv, k in zip(bad["run_id"], bad["seed"], bad["level"], bad["unstable"])]


def measure(evidence: Any, runs: ClaimRuns, progress: Callable[[str], None] | None = None,
            unstable: str = "keep") -> dict[str, Any]:
    """Every registered claim measured on ``evidence``: the JSON document ``sparsedd claims`` prints.
    ``unstable``: whether the evidence keeps or drops the levels that ended unstable (a dropped set of levels
    is another result, under another id)."""
    rows = []
    for name in runs.claims:
        claim = CLAIMS[name]
        if progress:
            progress(f"claim {name}")
        row = claim.measure(evidence).row()
        ids = list(dict.fromkeys(runs.roles[r].run_id for r in claim.roles))
        rows.append({"claim": int(name), "text": claim.text, "measure": row["measure"], "value": row["value"],
                     "ci": row["ci"], "threshold": row["threshold"], "verdict": row["verdict"], "runs": ids,
                     "test": row["test"], "combine": row["combine"], "parts": row["parts"]})
    key: list[Any] = [runs.sweep.sweep_id, runs.claims]
    if unstable != "keep":  # (keep: the id a result had before the choice existed)
        key.append({"unstable": unstable})
    return {"preset": runs.preset, "seeds": runs.seeds, "set": runs.sets,
            "id": stable_hash(key),
            "interval": f"two-sided {100 * CONFIDENCE:g}% Student t interval of the mean over seeds",
            "sweep": runs.sweep.sweep_id,
            "runs": {role: r.run_id for role, r in runs.roles.items()}, "claims": rows}


def run_claims(preset: str | None, sets: list[str], seeds: int | None, root: str | Path | None,
               options: ExecOptions, workers: int | None = None, executor: str = "local",
               progress: Callable[[str], None] | None = None, only: list[int] | None = None,
               unstable: str = "keep") -> tuple[dict[str, Any], Path]:
    """Build and run (or reuse) the claims' runs, measure the claims, save the result; returns it and its file
    (named by the runs, so a subset of the claims over other runs does not overwrite it). ``unstable="drop"``
    measures without the levels that ended unstable; the result lists those levels either way."""
    from .analysis.curves import check_unstable

    check_unstable(unstable, "--")  # refused before anything trains
    runs = build(preset, sets, seeds, only)
    result = run_sweep(runs.sweep, root, SweepOptions(executor=executor, workers=workers, report=False,
                                                                execution=options))
    if result.failed:
        first = next(iter(result.failed.items()))
        raise SparseddError(f"{len(result.failed)} of the claims' runs failed (run {first[0]}: {first[1]}); "
                            f"run the same command again to retry")
    store = Store(root)
    options.apply_threads(runs.sweep.runs[0].config.model.name)
    doc = measure(StoreEvidence(store, runs, options, unstable, progress), runs, progress, unstable)
    doc["unstable"] = {"levels": unstable, "ended": ended_unstable(store, runs)}
    path = store.claims_file(doc["id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, doc)
    return doc, path
