"""`sparsedd analyze RUN KIND`: the machinery that runs the registered analyses on the levels of a finished run,
each result cached in the store.

:class:`Analyzer` loads a run's config, data and stages, caches each result as a stage keyed by (kind, the
level's stage id, the settings), so asking again with the same settings reads the cached answer, and trains
the networks an analysis asks for (a level's seeds stacked where that pays). The analyses themselves (settings,
compute, trainings, figure) are records, one module each in :mod:`sparsedd.analysis.kinds`, imported here so
that :data:`ANALYSES` holds them all; :data:`ANALYSES` and :func:`parse_settings` live in
:mod:`sparsedd.analysis.base` and are re-exported here.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import pandas as pd
import torch

from .. import config as config_mod
from .. import config_load
from ..config import RunConfig, canonical_dict
from ..data import Dataset, fingerprint, load_dataset
from ..errors import SparseddError
from ..options import ExecOptions
from ..experiments.distance import learning_distance
from ..experiments.stages import data_key
from ..experiments.replicate import Replicate
from ..results import run_config
from ..store import Store
from ..training import TrainResult, train
from . import kinds  # noqa: F401  (the catalog: every analysis registers itself in ANALYSES)
from .base import ANALYSES, Training, parse_settings

__all__ = ["ANALYSES", "Analyzer", "parse_settings"]


def as_stored(result: dict[str, Any]) -> dict[str, Any]:
    """A result as the store gives it back (its keys sorted, at every depth, as its JSON is written): the same
    columns and fields in the same order whether an analysis was just computed or read from the store."""
    return json.loads(json.dumps(result, sort_keys=True))


def _silent(line: str) -> None:
    """No progress lines (the API's default, and between analyses)."""


class Analyzer:
    """Loads a run's config, data and stages, and runs analyses on its levels."""

    def __init__(self, store: Store, run_id: str, options: ExecOptions | None = None):
        self.store, self.run_id = store, run_id
        self.options = options or ExecOptions(progress=False)
        self.cfg: RunConfig = config_load.from_dict(run_config(store, run_id))
        self.links = store.index.run_stages(run_id)
        bad = [sid for sid in self.links.values() if not config_mod.is_id(sid)]
        if bad:  # stage ids name the folders read and written: a damaged or foreign index must not choose them
            raise SparseddError(f"the index of {store.root} links run {run_id} to {config_mod.brief(bad[0])}, which is "
                                f"not a stage id; the index is damaged")
        self._data = None
        self._reps: dict[int, Replicate] = {}
        self._trained: dict[tuple, tuple[dict[str, torch.Tensor], TrainResult]] = {}  # stacked, not yet recorded
        self.say: Callable[[str], None] = _silent  # a run-level analysis's line per level, while run() computes it

    def data(self) -> Dataset:
        """The run's data, loaded once and checked to be the data the store's results were made with."""
        if self._data is None:
            data = load_dataset(self.cfg.data, data_dir=self.options.data_dir)  # hashed on the CPU, then moved
            key = data_key(self.cfg)
            self.store.check_data({key: (self.cfg.data.name, fingerprint(data))}, {key})  # (the run's results)
            self._data = data.to(self.options.device)
        return self._data

    def replicate(self, seed: int) -> Replicate:
        if seed not in self._reps:
            self._reps[seed] = Replicate(self.cfg.with_seed(seed), self.run_id, self.data(), self.store, self.options)
        return self._reps[seed]

    def targets(self, levels: list[int] | None, seeds: list[int] | None) -> list[tuple[int, int, str]]:
        out = [(s, l, sid) for (s, l), sid in sorted(self._finished().items())
               if (levels is None or l in levels) and (seeds is None or s in seeds)]
        if not out:
            raise SparseddError(f"run {self.run_id} has no finished level among those asked; see `sparsedd show {self.run_id}`")
        return out

    def _finished(self) -> dict[tuple[int, int], str]:
        """The run's finished stages by (seed, level)."""
        return {k: v for k, v in self.links.items() if self.store.is_done(v)}

    def check_asked(self, kind: str, levels: list[int] | None, seeds: list[int] | None) -> None:
        """The levels and seeds a user asked (``--levels``, ``--seeds``) are the run's, and asked of an analysis
        that takes them (a run-level one reads every level and seed): else a one-line error, not a table that
        silently measured something else."""
        if not ANALYSES[kind].per_level and (levels or seeds):
            raise SparseddError(f"{kind} measures the whole run, every level and seed; ask for no levels or seeds "
                                "(--levels, --seeds)")
        done = self._finished()
        for asked, position, what in ((seeds, 0, "seed"), (levels, 1, "level")):
            have = sorted({k[position] for k in done})
            missing = [v for v in dict.fromkeys(asked or []) if v not in have]
            if missing:
                raise SparseddError(f"run {self.run_id} has no finished {what} {', '.join(map(str, missing))} (its "
                                    f"finished {what}s: {', '.join(map(str, have)) or 'none'}); see `sparsedd show "
                                    f"{self.run_id}`")

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
                try:
                    result = as_stored(compute())
                except BaseException:
                    self.store.drop_unstarted(sid)  # (e.g. a level merged without its weights): no empty folder left
                    raise
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

    def result_id(self, kind: str, target: str, settings: Any) -> str:
        return self.store.stage_id({"kind": f"analysis-{kind}", "target": target, "settings": canonical_dict(settings)})

    def against_ticket(self, kind: str, sid: str, s: Any, trainings: Callable[[], list[Training]], index: str) -> dict:
        """Train ``trainings`` (the networks that stand in for the level's ticket), cached as analysis ``kind``:
        each one's accuracies (numbered by ``index``), their mean test accuracy and the ticket's."""
        name = kind.replace("-", "_")

        def compute() -> dict:
            accs = []
            for i, t in enumerate(trainings()):
                res = self.fit(t)
                accs.append({index: i, "test_acc": res.final["test_acc"], "test_acc_best": res.final["test_acc_best"],
                             "train_acc_noisy": res.final["train_acc_noisy"]})
            ticket = self.store.done_info(sid)["metrics"]
            return {name: accs, "ticket_test_acc": ticket["test_acc"],
                    f"{name}_test_acc": sum(a["test_acc"] for a in accs) / len(accs)}
        return self.cached(kind, sid, s, compute)

    def run(self, kind: str, settings: Any, levels: list[int] | None = None, seeds: list[int] | None = None,
            progress: Callable[[str], None] | None = None) -> pd.DataFrame:
        """Rows of (seed, level, sparsity, result fields) for a per-level analysis, or a run-level table."""
        analysis = ANALYSES[kind]
        if not analysis.per_level:
            self.say = progress or _silent
            try:
                table = analysis.compute(self, settings)
            finally:
                self.say = _silent
            if not len(table):  # (e.g. a run with its dense level alone)
                raise SparseddError(f"{kind} found nothing to measure in run {self.run_id}: it has too few finished "
                                    f"levels; see `sparsedd show {self.run_id}`")
            return table
        targets = [t for t in self.targets(levels, seeds) if not (analysis.pruned_only and t[1] == 0)]
        if not targets:
            raise SparseddError(f"{kind} measures pruned levels, and run {self.run_id} has none finished among those "
                                f"asked (level 0 is the dense network); see `sparsedd show {self.run_id}`")
        if analysis.trainings is not None and self._writable() and self._may_stack(targets):
            self._compute_levels_stacked(kind, settings, targets, progress)
            progress = None  # each target was said as it was computed; what follows reads them back
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
            todo = {seed: analysis.trainings(self, seed, lv, sid, settings) for seed, lv, sid in here}

            def say(group: list[Training], level: int = level, todo: dict = todo) -> None:  # a line per stacked group
                if progress:
                    ids = {id(t) for t in group}  # (by identity: a Training holds tensors)
                    seeds = [seed for seed, ts in todo.items() if any(id(t) in ids for t in ts)]  # not those read back
                    progress(f"{kind}: seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))} level "
                             f"{level}, " + (f"{len(group)} networks stacked" if len(group) > 1 else "1 network"))
            stacked = self._train_stacked([t for ts in todo.values() for t in ts], say)
            for seed, lv, sid in here:
                if progress and not stacked:  # trained here one by one (or read back): said one by one
                    progress(f"{kind}: seed {seed} level {lv}")
                analysis.compute(self, seed, lv, sid, settings)

    def _may_stack(self, targets: list[tuple[int, int, str]]) -> bool:
        """Whether any level's trainings could stack: a fully connected run, with the options allowing it
        (else they are not built twice: the per-target loop builds and trains each alone)."""
        from ..experiments.batching import stacking_allowed

        return bool(targets) and stacking_allowed(self.replicate(targets[0][0]).new_model(0), self.options)

    def _train_stacked(self, todo: list[Training], starting: Callable[[list[Training]], None]) -> bool:
        """Train ``todo`` as one stacked computation where they can be (same architecture, schedule, data and
        masked layers; fresh optimizers) and that pays; their outcomes wait in ``_trained`` for :meth:`_fit`.
        Whether they were stacked."""
        from ..experiments.batching import stackable_training, stacked_size
        from ..training.planner import train_batched

        if len(todo) < 2:
            return False
        first = todo[0]
        same = all(t.cfg == first.cfg and sorted(t.mask) == sorted(first.mask) and t.optimizer_state is None
                   and (t.data.x is first.data.x or torch.equal(t.data.x, first.data.x))
                   and type(t.model) is type(first.model)
                   and [p.shape for p in t.model.parameters()] == [p.shape for p in first.model.parameters()]
                   for t in todo)
        k = (stacked_size(first.model, len(todo), first.cfg.batch_size, self.options)
             if same and stackable_training(first.data, first.cfg) else 1)
        if k < 2:
            return False
        for i in range(0, len(todo), k):
            group = todo[i:i + k]
            starting(group)
            finals, results = train_batched([t.model.state_dict() for t in group], [t.data for t in group],
                                            first.cfg, [t.mask for t in group],
                                            order_keys=[t.order_key for t in group], device=self.options.device,
                                            accel=self.options.accel)
            self._trained.update({t.key: (f, r) for t, f, r in zip(group, finals, results)})
        return True

    def fit(self, t: Training) -> TrainResult:
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
            self.say(f"distance: seed {seed} level {level}")
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

