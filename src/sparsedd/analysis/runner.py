"""`sparsedd analyze RUN KIND`: each analysis on the levels of a finished run, cached in the store.

Every analysis has a frozen settings dataclass; a result is a stage keyed by (kind, the level's
stage id, the settings), so asking again with the same settings reads the cached answer.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import pandas as pd
import torch

from .. import config as config_mod
from ..config import RunConfig, TrainConfig, canonical_dict
from ..data import Dataset, fingerprint, load_dataset
from ..errors import SparseddError
from ..options import ExecOptions
from ..experiments.distance import correct_distances, learning_distance
from ..experiments.stages import data_key
from ..experiments.replicate import Replicate
from ..experiments.retrain import level_train_config
from ..registry import Registry
from ..results import run_config
from ..rng import derive_seed, generator
from ..store import Store
from ..training import TrainData, TrainResult, train
from .curves import distance_table, phases_table
from .masks import shuffle_mask
from .hessian import hutchinson_trace, top_eigenvalue
from .interpolate import alphas as alpha_grid
from .interpolate import interpolate
from .landscape import filter_normalized_direction, loss_curve


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


ANALYSES: Registry[Analysis] = Registry("analysis")  # registered below the Analyzer

# sane maxima of the settings (numbers past these are typos that would never finish); the settings'
# numbers are 64-bit integers and finite floats, as config.coerce makes them
MAX_POINTS = 100_001  # landscape points
MAX_ITERATIONS = 100_000  # sharpness power iterations and trace samples
MAX_INITS = 1000  # reinit inits per level


@dataclass(frozen=True)
class RedenseSettings:
    epochs: int = 0  # 0: the run's train.epochs (paper: MNIST 200, CIFAR 160)
    lr: float = 0.0  # 0: the run's train.lr (paper: MNIST 0.1, CIFAR 0.001); constant
    carry_optimizer: bool = False  # start from the level's final optimizer state instead of a fresh one

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.lr < 0:
            raise SparseddError("redense: epochs and lr must be >= 0 (0: the run's value)")
        if self.epochs > config_mod.MAX_EPOCHS:
            raise SparseddError(f"redense: epochs must be at most {config_mod.MAX_EPOCHS}")


@dataclass(frozen=True)
class InterpolateSettings:
    step: float = 0.01  # alpha step (paper: 0.01)
    target: str = "redense"  # the other end: the level's re-dense solution, or the dense network (level 0)

    def __post_init__(self) -> None:
        if self.target not in ("redense", "dense") or not 0 < self.step <= 0.5:
            raise SparseddError("interpolate: target must be redense or dense and step in (0, 0.5]")


@dataclass(frozen=True)
class LandscapeSettings:
    radius: float = 1.0  # alpha in [-radius, radius]
    points: int = 41
    seed: int = 0  # the direction's seed
    all_weights: bool = False  # by default the direction is zero on pruned weights

    def __post_init__(self) -> None:
        if not 3 <= self.points <= MAX_POINTS or self.radius <= 0:
            raise SparseddError(f"landscape: points must be in [3, {MAX_POINTS}] and radius > 0")


@dataclass(frozen=True)
class SharpnessSettings:
    iters: int = 100  # power iterations at most
    tol: float = 1e-3  # relative change of the eigenvalue that stops the iteration
    trace_samples: int = 20  # Hutchinson samples
    subsample: int = 0  # 0: the full training set; else a seeded subsample of this size
    seed: int = 0

    def __post_init__(self) -> None:
        counts = (self.iters, self.trace_samples)
        if not all(1 <= n <= MAX_ITERATIONS for n in counts) or self.subsample < 0:
            raise SparseddError(f"sharpness: iters and trace_samples must be in [1, {MAX_ITERATIONS}], subsample >= 0")


@dataclass(frozen=True)
class ReinitSettings:
    inits: int = 1  # fresh random inits per level
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.inits <= MAX_INITS:
            raise SparseddError(f"reinit: inits must be in [1, {MAX_INITS}]")


@dataclass(frozen=True)
class RandomMaskSettings:
    """The paper code's random-mask control (``randomly_prune``): the level's mask shuffled, ``layerwise``
    (each layer's entries permuted: its density kept) or ``global`` (permuted over all layers: only the
    total kept), trained from the level's start weights as the level was."""

    strategy: str = "layerwise"
    masks: int = 1  # shuffled masks per level
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in ("layerwise", "global"):
            raise SparseddError(f"random-mask: strategy must be layerwise or global, got {self.strategy!r}")
        if not 1 <= self.masks <= MAX_INITS:
            raise SparseddError(f"random-mask: masks must be in [1, {MAX_INITS}]")


@dataclass(frozen=True)
class DistanceSettings:
    """What the distance is measured from: ``init``, the dense initialization under each level's mask (the
    distance recorded with every level); or ``start``, the weights each level started from under its mask
    (the rewind point for weight rewinding, the previous level's weights for finetuning and lr rewinding, the
    fresh init for reinit), which is what the paper's code measures its distance penalty from."""

    reference: str = "init"

    def __post_init__(self) -> None:
        if self.reference not in ("init", "start"):
            raise SparseddError(f"distance: reference must be init or start, got {self.reference!r}")


@dataclass(frozen=True)
class PhasesSettings:
    tol: float = 0.01  # the smallest accuracy change taken as real


def parse_settings(kind: str, sets: list[str]) -> Any:
    """The settings of analysis ``kind`` from ``--set key=value`` items (the rest at their defaults)."""
    cls = ANALYSES[kind].settings
    hints = {f.name: f.type for f in dataclasses.fields(cls)}
    values = {}
    for key, value in config_mod.parse_sets(sets).items():
        if key not in hints:
            raise SparseddError(f"unknown setting {key!r} for {kind}; valid: {', '.join(hints) or 'none'}")
        typ = {"int": int, "float": float, "bool": bool, "str": str}[hints[key]] if isinstance(hints[key], str) else hints[key]
        values[key] = config_mod.coerce(f"{kind}.{key}", value, typ)
    return cls(**values)


class Analyzer:
    """Loads a run's config, data and stages, and runs analyses on its levels."""

    def __init__(self, store: Store, run_id: str, options: ExecOptions | None = None):
        self.store, self.run_id = store, run_id
        self.options = options or ExecOptions(progress=False)
        correct_distances(store)
        self.cfg: RunConfig = config_mod.from_dict(run_config(store, run_id))
        self.links = store.index.run_stages(run_id)
        bad = [sid for sid in self.links.values() if not config_mod.is_id(sid)]
        if bad:  # stage ids name the folders read and written: a damaged or foreign index must not choose them
            raise SparseddError(f"the index of {store.root} links run {run_id} to {config_mod.brief(bad[0])}, which is "
                                f"not a stage id; the index is damaged")
        self._data = None
        self._reps: dict[int, Replicate] = {}
        self._trained: dict[tuple, tuple[dict[str, torch.Tensor], TrainResult]] = {}  # stacked, not yet recorded

    def data(self) -> Dataset:
        """The run's data, loaded once and checked to be the data the store's results were made with."""
        if self._data is None:
            data = load_dataset(self.cfg.data, data_dir=self.options.data_dir)  # hashed on the CPU, then moved
            self.store.check_data({data_key(self.cfg): (self.cfg.data.name, fingerprint(data))})
            self._data = data.to(self.options.device)
        return self._data

    def replicate(self, seed: int) -> Replicate:
        if seed not in self._reps:
            self._reps[seed] = Replicate(self.cfg.with_seed(seed), self.run_id, self.data(), self.store, self.options)
        return self._reps[seed]

    def targets(self, levels: list[int] | None, seeds: list[int] | None) -> list[tuple[int, int, str]]:
        done = {k: v for k, v in self.links.items() if self.store.is_done(v)}
        out = [(s, l, sid) for (s, l), sid in sorted(done.items())
               if (levels is None or l in levels) and (seeds is None or s in seeds)]
        if not out:
            raise SparseddError(f"run {self.run_id} has no finished level among those asked; see `sparsedd show {self.run_id}`")
        return out

    def model_at(self, seed: int, stage_id: str):
        rep = self.replicate(seed)
        final = self.store.final(stage_id)
        model = rep.new_model(0)
        model.load_state_dict(final["model"])
        mask = {n: m.to(self.options.device) for n, m in final["mask"].items()}
        return rep, model, mask, final

    # --- cached per-level analyses
    def cached(self, kind: str, target: str, settings: Any, compute: Callable[[], dict]) -> dict:
        key = {"kind": f"analysis-{kind}", "target": target, "settings": canonical_dict(settings)}
        sid = self.store.stage_id(key)
        if not self._writable():  # a store on read-only media, or not ours
            return self._stored_result(kind, sid)
        if not self.store.is_done(sid):
            self.data()  # loaded and checked before the analysis writes anything
        with self.store.lock(sid):  # the same analysis asked by two processes is computed once
            if not self.store.check_done(sid):  # not yet, or damaged: computed (again)
                self.data()  # (a damaged stage reaches here without the check above)
                self.store.begin_stage(sid, key)
                result = compute()
                self.store.finish_stage(sid, {"result": result})
            else:
                result = self.store.done_info(sid)["result"]
        self.store.index.record_analysis(sid, target, kind, key["settings"], result)
        return result

    def _stored_result(self, kind: str, sid: str) -> dict:
        """An analysis already computed, read from a store that cannot be written; one that is not there
        (or is damaged) cannot be computed there: a one-line error that says what to do."""
        if self.store.is_done(sid) and not self.store.stage_problems(sid):
            return self.store.done_info(sid)["result"]
        raise SparseddError(f"--root {self.store.root} cannot be written, and this {kind} analysis is not in it; "
                            "copy the store to a writable folder and analyze it there")

    def _redense_trainings(self, seed: int, level: int, sid: str, s: RedenseSettings) -> list[Training]:
        rep, model, mask, final = self.model_at(seed, sid)
        cfg = dataclasses.replace(rep.cfg.train, lr=s.lr or rep.cfg.train.lr, schedule="constant", milestones=(),
                                  warmup_epochs=0, epochs=s.epochs or rep.cfg.train.epochs)
        opt_state = final.get("optim") if s.carry_optimizer else None
        return [Training((self._sid("redense", sid, s),), model, rep.train_data, cfg, {}, (seed, "redense", level),
                         opt_state or None)]

    def redense(self, seed: int, level: int, sid: str, s: RedenseSettings) -> dict:
        def compute() -> dict:
            t = self._redense_trainings(seed, level, sid, s)[0]
            init = self.store.init(self.links[(seed, 0)])
            res = self._fit(t)
            state = {k: v.detach().cpu() for k, v in t.model.state_dict().items()}
            self.store.save_final(self._sid("redense", sid, s), state)
            return {**res.final, "distance": learning_distance(state, init), "history": res.history}
        return self.cached("redense", sid, s, compute)

    def _sid(self, kind: str, target: str, settings: Any) -> str:
        return self.store.stage_id({"kind": f"analysis-{kind}", "target": target, "settings": canonical_dict(settings)})

    def interpolate(self, seed: int, level: int, sid: str, s: InterpolateSettings) -> dict:
        def compute() -> dict:
            rep, model, mask, final = self.model_at(seed, sid)
            if s.target == "redense":
                self.redense(seed, level, sid, RedenseSettings())
                other = self.store.final(self._sid("redense", sid, RedenseSettings()))["model"]
            else:
                other = self.store.final(self.links[(seed, 0)])["model"]
            pts = interpolate(model, final["model"], other, alpha_grid(s.step), rep.train_data)
            ends = max(pts[0]["train_loss"], pts[-1]["train_loss"])
            return {"points": pts, "test_acc_sparse": pts[0]["test_acc"], "test_acc_other": pts[-1]["test_acc"],
                    "train_loss_barrier": max(p["train_loss"] for p in pts) - ends,
                    "test_acc_min": min(p["test_acc"] for p in pts)}
        return self.cached("interpolate", sid, s, compute)

    def landscape(self, seed: int, level: int, sid: str, s: LandscapeSettings) -> dict:
        def compute() -> dict:
            rep, model, mask, final = self.model_at(seed, sid)
            direction = filter_normalized_direction(final["model"], generator(s.seed, "landscape"),
                                                    None if s.all_weights else final["mask"])
            grid = [-s.radius + 2 * s.radius * i / (s.points - 1) for i in range(s.points)]
            pts = loss_curve(model, final["model"], direction, grid, rep.train_data)
            center = pts[len(pts) // 2]
            return {"points": pts, "train_loss_center": center["train_loss"], "test_loss_center": center["test_loss"],
                    "train_loss_edges": (pts[0]["train_loss"] + pts[-1]["train_loss"]) / 2}
        return self.cached("landscape", sid, s, compute)

    def sharpness(self, seed: int, level: int, sid: str, s: SharpnessSettings) -> dict:
        def compute() -> dict:
            rep, model, mask, final = self.model_at(seed, sid)
            x, y = rep.train_data.x, rep.train_data.y
            if s.subsample:
                idx = torch.randperm(x.shape[0], generator=generator(s.seed, "sharpness-subsample"))[:s.subsample]
                x, y = x[idx.to(x.device)], y[idx.to(y.device)]
            eig = top_eigenvalue(model, x, y, mask, iters=s.iters, tol=s.tol, generator=generator(s.seed, "power"))
            tr = hutchinson_trace(model, x, y, mask, samples=s.trace_samples, generator=generator(s.seed, "hutchinson"))
            return {"top_eigenvalue": eig.value, "iterations": eig.iterations, "rel_change": eig.rel_change,
                    "converged": eig.converged, "trace": tr.value, "trace_stderr": tr.stderr,
                    "trace_samples": tr.samples, "examples": int(x.shape[0])}
        return self.cached("sharpness", sid, s, compute)

    def _reinit_trainings(self, seed: int, level: int, sid: str, s: ReinitSettings) -> list[Training]:
        """Fresh networks under the level's mask, trained as the level was (same schedule and example order)."""
        self._check_ticket_run()
        rep, _, mask, _ = self.model_at(seed, sid)
        cfg = level_train_config(rep.cfg)
        key = self._sid("reinit", sid, s)
        return [Training((key, i), rep.new_model(derive_seed(seed, "reinit-analysis", s.seed, level, i)),
                         rep.train_data, cfg, mask, (seed, "order")) for i in range(s.inits)]

    def _check_ticket_run(self) -> None:
        if self.cfg.retrain.mode != "weight-rewind":
            raise SparseddError("the reinit analysis compares with winning tickets: use it on a weight-rewind run")

    def reinit(self, seed: int, level: int, sid: str, s: ReinitSettings) -> dict:
        self._check_ticket_run()
        return self._against_ticket("reinit", sid, s, lambda: self._reinit_trainings(seed, level, sid, s), "init")

    def _against_ticket(self, kind: str, sid: str, s: Any, trainings: Callable[[], list[Training]], index: str) -> dict:
        """Train ``trainings`` (the networks that stand in for the level's ticket), cached as analysis ``kind``:
        each one's accuracies (numbered by ``index``), their mean test accuracy and the ticket's."""
        name = kind.replace("-", "_")

        def compute() -> dict:
            accs = []
            for i, t in enumerate(trainings()):
                res = self._fit(t)
                accs.append({index: i, "test_acc": res.final["test_acc"], "test_acc_best": res.final["test_acc_best"],
                             "train_acc_noisy": res.final["train_acc_noisy"]})
            ticket = self.store.done_info(sid)["metrics"]
            return {name: accs, "ticket_test_acc": ticket["test_acc"],
                    f"{name}_test_acc": sum(a["test_acc"] for a in accs) / len(accs)}
        return self.cached(kind, sid, s, compute)

    def _random_mask_trainings(self, seed: int, level: int, sid: str, s: RandomMaskSettings) -> list[Training]:
        """The level's start weights under shuffled copies of its mask, trained as the level was."""
        rep, _, mask, _ = self.model_at(seed, sid)
        start = self.start_weights(seed, level, sid)
        key = self._sid("random-mask", sid, s)
        out = []
        for i in range(s.masks):
            model = rep.new_model(0)
            model.load_state_dict(start)
            shuffled = shuffle_mask({n: m.cpu() for n, m in mask.items()}, s.strategy,
                                    generator(seed, "random-mask", s.seed, level, i))
            out.append(Training((key, i), model, rep.train_data, level_train_config(rep.cfg),
                                {n: m.to(self.options.device) for n, m in shuffled.items()}, (seed, "order")))
        return out

    def random_mask(self, seed: int, level: int, sid: str, s: RandomMaskSettings) -> dict:
        return self._against_ticket("random-mask", sid, s, lambda: self._random_mask_trainings(seed, level, sid, s), "mask")

    def run(self, kind: str, settings: Any, levels: list[int] | None = None, seeds: list[int] | None = None,
            progress: Callable[[str], None] | None = None) -> pd.DataFrame:
        """Rows of (seed, level, sparsity, result fields) for a per-level analysis, or a run-level table."""
        analysis = ANALYSES[kind]
        if not analysis.per_level:
            return analysis.compute(self, settings)
        targets = [t for t in self.targets(levels, seeds) if not (analysis.pruned_only and t[1] == 0)]
        if analysis.trainings is not None and self._writable() and self._may_stack(targets):
            self._compute_levels_stacked(kind, settings, targets, progress)
        rows = []
        for seed, level, sid in targets:
            if progress:
                progress(f"{kind}: seed {seed} level {level}")
            result = analysis.compute(self, seed, level, sid, settings)
            metrics = self.store.done_info(sid)["metrics"]
            rows.append({"seed": seed, "level": level, "sparsity": metrics["sparsity"],
                         "level_test_acc": metrics["test_acc"], **result})
        return pd.DataFrame(rows)

    # --- the seeds of one level trained stacked (as `sparsedd run` trains a level's seeds)
    def _compute_levels_stacked(self, kind: str, settings: Any, targets: list[tuple[int, int, str]],
                                progress: Callable[[str], None] | None) -> None:
        """Level by level, the networks the analysis trains for all seeds at once where that pays, each
        level's results cached before the next level trains (an interruption loses one level at most)."""
        analysis = ANALYSES[kind]
        for level in sorted({t[1] for t in targets}):
            here = [t for t in targets if t[1] == level]
            todo = [x for seed, lv, sid in here for x in analysis.trainings(self, seed, lv, sid, settings)]
            said = f"{kind}: seeds {', '.join(str(t[0]) for t in here)} level {level}, {len(todo)} networks stacked"
            self._train_stacked(todo, lambda: progress(said) if progress else None)
            for seed, lv, sid in here:
                analysis.compute(self, seed, lv, sid, settings)

    def _may_stack(self, targets: list[tuple[int, int, str]]) -> bool:
        """Whether any level's trainings could stack: a fully connected run, with the options allowing it
        (else they are not built twice: the per-target loop builds and trains each alone)."""
        from ..experiments.batching import stacking_allowed

        return bool(targets) and stacking_allowed(self.replicate(targets[0][0]).new_model(0), self.options)

    def _train_stacked(self, todo: list[Training], starting: Callable[[], None]) -> None:
        """Train ``todo`` as one stacked computation where they can be (same architecture, schedule, data and
        masked layers; fresh optimizers) and that pays; their outcomes wait in ``_trained`` for :meth:`_fit`."""
        from ..experiments.batching import stackable_training, stacked_size
        from ..training.planner import train_batched

        if len(todo) < 2:
            return
        first = todo[0]
        same = all(t.cfg == first.cfg and sorted(t.mask) == sorted(first.mask) and t.optimizer_state is None
                   and (t.data.x is first.data.x or torch.equal(t.data.x, first.data.x))
                   and type(t.model) is type(first.model) for t in todo)
        k = (stacked_size(first.model, len(todo), first.cfg.batch_size, self.options)
             if same and stackable_training(first.data, first.cfg) else 1)
        if k < 2:
            return
        starting()
        for i in range(0, len(todo), k):
            group = todo[i:i + k]
            finals, results = train_batched([t.model.state_dict() for t in group], [t.data for t in group],
                                            first.cfg, [t.mask for t in group],
                                            order_keys=[t.order_key for t in group], device=self.options.device,
                                            accel=self.options.accel)
            self._trained.update({t.key: (f, r) for t, f, r in zip(group, finals, results)})

    def _fit(self, t: Training) -> TrainResult:
        """Train ``t.model``, or take its outcome from the stacked computation that trained it."""
        done = self._trained.pop(t.key, None)
        if done is None:
            return train(t.model, t.data, t.cfg, t.mask, order_key=t.order_key, optimizer_state=t.optimizer_state)
        state, result = done
        t.model.load_state_dict(state)
        return result

    def start_distances(self) -> dict[tuple[int, int], float]:
        """Each finished level's learning distance from the weights it started from (its start weights as the
        retraining mode picks them, under its mask), by (seed, level); level 0 from its init."""
        out = {}
        for seed, level, sid in self.targets(None, None):
            final = self.store.final(sid)
            start = self.store.init(self.links[(seed, 0)]) if level == 0 else self.start_weights(seed, level, sid)
            out[(seed, level)] = learning_distance(final["model"], start, final.get("mask"))
        return out

    def start_weights(self, seed: int, level: int, sid: str) -> dict[str, torch.Tensor]:
        """The weights pruned level ``sid`` started from, as its retraining mode picked them (before its mask)."""
        previous = self.store.final(self.store.stage_key(sid)["parent"])["model"]
        return self.replicate(seed).start_weights(level, previous, self.links[(seed, 0)])

    def _writable(self) -> bool:
        return os.access(self.store.root, os.W_OK | os.X_OK)


def _pending(kind: str, make: Callable[..., list[Training]]) -> Callable[..., list[Training]]:
    """The trainings of ``make`` at a level whose analysis is not computed yet (else none)."""
    def trainings(a: Analyzer, seed: int, level: int, sid: str, s: Any) -> list[Training]:
        return [] if a.store.is_done(a._sid(kind, sid, s)) else make(a, seed, level, sid, s)
    return trainings


def _figure(name: str) -> Callable[..., Any]:
    """The report's figure function ``name`` of :mod:`sparsedd.report.figures`, imported when drawn
    (matplotlib is not loaded to compute an analysis)."""
    def draw(rows: pd.DataFrame, title: str):
        from ..report import figures

        return getattr(figures, name)(rows, title)
    return draw


def _distance(a: Analyzer, s: DistanceSettings) -> pd.DataFrame:
    return distance_table(a.store, a.run_id, a.start_distances() if s.reference == "start" else None, s.reference)


ANALYSES.register("redense", Analysis(RedenseSettings, Analyzer.redense, pruned_only=True,
                                      trainings=_pending("redense", Analyzer._redense_trainings),
                                      figure=_figure("fig_redense"), summary="give pruned weights back, train on"))
ANALYSES.register("interpolate", Analysis(InterpolateSettings, Analyzer.interpolate, pruned_only=True,
                                          figure=_figure("fig_interpolate"), summary="loss along the line between solutions"))
ANALYSES.register("landscape", Analysis(LandscapeSettings, Analyzer.landscape, figure=_figure("fig_landscape"),
                                        summary="1-D loss landscape"))
ANALYSES.register("sharpness", Analysis(SharpnessSettings, Analyzer.sharpness, figure=_figure("fig_sharpness"),
                                        summary="top Hessian eigenvalue"))
ANALYSES.register("reinit", Analysis(ReinitSettings, Analyzer.reinit, pruned_only=True,
                                     trainings=_pending("reinit", Analyzer._reinit_trainings),
                                     figure=_figure("fig_reinit"), summary="the ticket's mask from a new init"))
ANALYSES.register("random-mask", Analysis(RandomMaskSettings, Analyzer.random_mask, pruned_only=True,
                                          trainings=_pending("random-mask", Analyzer._random_mask_trainings),
                                          figure=_figure("fig_random_mask"), summary="a random mask of the same sparsity"))
ANALYSES.register("distance", Analysis(DistanceSettings, _distance, per_level=False,
                                       summary="learning distance against test accuracy"))
ANALYSES.register("phases", Analysis(PhasesSettings, lambda a, s: phases_table(a.store, a.run_id, s.tol), per_level=False,
                                     summary="light, critical, sweet and collapsed phases"))
