"""The iterative pruning loop: dense stage, then levels 1..L, one code path for every retraining mode.

Flow of one replicate (one seed)::

    data (+ noise) -> dense stage (seeded init; saves init and final)
    -> for each level: prune(previous weights, previous mask) -> start weights by retrain mode
       -> train with mask -> metrics -> store

Each stage is content-addressed: the dense stage depends only on data, noise, model, training and
seed, so every pruning method and retraining mode shares it; level L's id chains level L-1's id
with the pruning and retraining settings. Completed stages are skipped, interrupted ones resume.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from ..config import RunConfig, canonical_dict, stable_hash
from ..data import Dataset, load_dataset
from ..data.noise import apply_noise
from ..errors import SparseddError
from ..models import build_model
from ..pruning import Mask, density, full_mask, get_strategy, gradient_saliency, layer_sparsity, remaining
from ..rng import derive_seed, generator
from ..store import Store
from ..config import TrainConfig
from ..training import TrainData, TrainResult, train
from ..training.batched import batchable, batching_pays, max_models, train_batched
from ..distributed import SINGLE, Dist
from ..training.loop import Accel
from ..training.sparse import SparsePolicy
from ..training.loop import iters_per_epoch
from .retrain import level_train_config, start_weights


@dataclass
class Runtime:
    """How to execute (not what to compute: none of this enters a stage id)."""

    device: str = "cpu"
    data_dir: str | None = None
    checkpoint_every_s: float = 60.0  # inside long epochs
    checkpoint_epoch_s: float = 1.0  # at epoch ends, at most this often (0: every epoch)
    progress: bool = True
    batch: str = "auto"  # seeds of a level trained together: auto (where measured faster on this machine), on, off
    channels_last: bool = False  # NHWC memory order for image models (faster convolutions on GPUs)
    dist: Dist = SINGLE  # data-parallel processes (torchrun); rank 0 writes the store
    compile: bool = False  # torch.compile the model
    sparse: str = "auto"  # compact execution of sparse fully connected levels: auto (measured crossover), on, off

    @property
    def accel(self) -> Accel:
        return Accel(channels_last=self.channels_last, compile=self.compile)

    @property
    def sparse_policy(self) -> SparsePolicy:
        return SparsePolicy(self.sparse)


def dense_key(cfg: RunConfig) -> dict[str, Any]:
    c = canonical_dict(cfg)
    return {"kind": "dense", "seed": cfg.seed, **{k: c.get(k, {}) for k in ("data", "model", "train")}}


def level_key(cfg: RunConfig, parent: str, level: int) -> dict[str, Any]:
    return {"kind": "level", "parent": parent, "level": level,
            "prune": cfg.prune.round_key(), "retrain": cfg.retrain.relevant()}


def rewind_key(dense_id: str, iteration: int) -> dict[str, Any]:
    return {"kind": "rewind", "dense": dense_id, "iteration": iteration}


def learning_distance(state: dict[str, torch.Tensor], init: dict[str, torch.Tensor]) -> float:
    """||w - w_init||_2 over all parameters (pruned weights are zero in ``state``)."""
    return float(torch.sqrt(sum(((state[k].double() - init[k].double()) ** 2).sum() for k in init)))


class _Progress:
    """A rich progress display with one bar for the whole run and one for the current stage."""

    def __init__(self, enabled: bool, total_epochs: int):
        self.enabled = enabled
        self.bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
            self.total = self.bar.add_task("all levels", total=total_epochs, info="")
            self.stage = None

    @contextlib.contextmanager
    def running(self) -> Iterator["_Progress"]:
        if self.bar is None:
            yield self
            return
        with self.bar:
            yield self

    def start_stage(self, name: str, epochs: int) -> None:
        if self.bar is not None:
            if self.stage is not None:
                self.bar.remove_task(self.stage)
            self.stage = self.bar.add_task(name, total=epochs, info="")

    def epoch(self, metrics: dict[str, Any], advance_total: int = 1) -> None:
        if self.bar is not None:
            info = f"test {metrics['test_acc']:.3f}" if "test_acc" in metrics else ""
            self.bar.update(self.stage, advance=1, info=info)
            self.bar.update(self.total, advance=advance_total)

    def skip(self, epochs: int) -> None:
        if self.bar is not None:
            self.bar.update(self.total, advance=epochs)


class Replicate:
    """One seed's chain of stages."""

    def __init__(self, cfg: RunConfig, run_id: str, data: Dataset, store: Store, rt: Runtime, progress: _Progress):
        self.cfg, self.run_id, self.data, self.store, self.rt, self.progress = cfg, run_id, data, store, rt, progress
        coarse = data.coarse_train.cpu() if data.coarse_train is not None else None
        noisy = apply_noise(data.y_train.cpu(), data.num_classes, cfg.data.noise, cfg.data.noise_type,
                            cfg.data.noise_seed, coarse=coarse, dataset=cfg.data.name)
        self.noise = noisy
        dev = data.x_train.device
        self.train_data = TrainData(data.x_train, noisy.labels.to(dev), data.y_train, data.x_test, data.y_test,
                                    noisy.corrupted.to(dev), augment=data.augment)
        self.input_shape = tuple(data.x_train.shape[1:])

    # --- helpers
    def new_model(self, seed: int) -> nn.Module:
        return build_model(self.cfg.model, self.input_shape, self.data.num_classes, seed).to(self.rt.device)

    def _train_stage(self, stage_id: str, model: nn.Module, mask: Mask, train_cfg, name: str,
                     stop_iteration: int | None = None):
        self.progress.start_stage(name, train_cfg.epochs)
        ckpt = self.store.checkpointer(stage_id, self.rt.checkpoint_every_s, self.rt.checkpoint_epoch_s)
        state = ckpt.load()  # kept by the checkpointer, so train() does not read it again
        if state is not None:  # epochs already done before the interruption
            self.progress.skip(len(state["history"]))
        return train(model, self.train_data, train_cfg, mask, order_key=(self.cfg.seed, "order"), checkpoint=ckpt,
                     stop_iteration=stop_iteration, on_epoch=self.progress.epoch, accel=self.rt.accel,
                     dist=self.rt.dist, sparse=self.rt.sparse_policy)

    def _finish(self, stage_id: str, level: int, model: nn.Module, mask: Mask, result, init: dict, seconds: float) -> dict:
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        metrics = dict(result.final)
        metrics.update({
            "level": level, "density": density(mask), "sparsity": 1.0 - density(mask), "remaining": remaining(mask),
            "layer_sparsity": layer_sparsity(mask), "distance": learning_distance(state, init),
            "effective_noise": self.noise.effective_rate, "seconds": seconds,
        })
        self.store.save_final(stage_id, state, {k: v.cpu() for k, v in mask.items()}, result.optimizer_state)
        self.store.index.record_epochs(stage_id, result.history)
        self.store.index.record_level(stage_id, level, metrics)
        self.store.finish_stage(stage_id, {"metrics": metrics, "history": result.history})
        return metrics

    def _replay_index(self, stage_id: str, level: int) -> None:
        """A stage done earlier (maybe by another run): make sure its rows are in the index."""
        info = self.store.done_info(stage_id)
        self.store.index.record_epochs(stage_id, info["history"])
        self.store.index.record_level(stage_id, level, info["metrics"])

    # --- stages: each is prepared (None when already done), trained alone or batched, then finished
    def stage(self, level: int, parent: str | None) -> tuple[str, dict[str, Any]]:
        """The id and key of this replicate's stage at ``level``."""
        key = dense_key(self.cfg) if level == 0 else level_key(self.cfg, parent, level)
        return self.store.stage_id(key), key

    def prepare(self, level: int, parent: str | None) -> tuple[str, Job | None]:
        """The stage id of ``level`` and, unless it is done, the job that trains it (the caller holds
        the stage's lock, so a stage another process is computing is waited for, not computed twice)."""
        cfg = self.cfg
        sid, key = self.stage(level, parent)
        if level == 0:
            self.dense_id = sid
        train_cfg = cfg.train if level == 0 else level_train_config(cfg)
        if self.store.is_done(sid):
            self._replay_index(sid, level)
            if self.run_id is not None:
                self.store.index.link(self.run_id, cfg.seed, level, sid)
            self.progress.skip(train_cfg.epochs)
            return sid, None
        self.store.begin_stage(sid, key)
        if level == 0:
            model = self.new_model(derive_seed(cfg.seed, "init"))
            if not self.store.has_init(sid):
                self.store.save_init(sid, model.state_dict())
                self.store.save_labels(sid, self.noise.labels, self.noise.chosen, self.noise.corrupted,
                                       self.noise.effective_rate)
            mask = full_mask(model, model.prunable_names(cfg.prune.layers))
            state = model.state_dict()
            name = f"seed {cfg.seed} dense"
        else:
            prev = self.store.final(parent)
            model = self.new_model(0)
            model.load_state_dict(prev["model"])
            # level 1 starts from this run's prunable layers, not the dense stage's mask: the dense stage
            # is shared by runs that prune different layers (prune settings are not part of its id)
            before = prev["mask"] if level > 1 else full_mask(model, model.prunable_names(cfg.prune.layers))
            mask = self.prune(level, model, {n: m.to(self.rt.device) for n, m in before.items()})
            fresh = self.new_model(derive_seed(cfg.seed, "reinit", level)).state_dict() if cfg.retrain.mode == "reinit" else {}
            rewind = self.rewind_point(self.dense_id) if cfg.retrain.mode == "weight-rewind" else {}
            state = start_weights(cfg.retrain.mode, previous=prev["model"], rewind=rewind, fresh=fresh)
            name = f"seed {cfg.seed} level {level}/{cfg.prune.levels}"
        return sid, Job(sid, level, state, mask, train_cfg, name)

    def adopt(self, level: int, sid: str) -> None:
        """Take the stage another replicate of this process computed as this replicate's own."""
        if level == 0:
            self.dense_id = sid
        self._replay_index(sid, level)
        if self.run_id is not None:
            self.store.index.link(self.run_id, self.cfg.seed, level, sid)
        self.progress.skip(self.cfg.train.epochs if level == 0 else level_train_config(self.cfg).epochs)

    def train_job(self, job: "Job") -> tuple[nn.Module, TrainResult]:
        model = self.new_model(0)
        model.load_state_dict(job.state)
        return model, self._train_stage(job.sid, model, job.mask, job.train_cfg, job.name)

    def finish(self, job: "Job", model: nn.Module, result: TrainResult, seconds: float) -> None:
        init = self.store.init(self.dense_id)
        self._finish(job.sid, job.level, model, job.mask, result, init, seconds)
        if self.run_id is not None:
            self.store.index.link(self.run_id, self.cfg.seed, job.level, job.sid)

    def rewind_point(self, dense_id: str) -> dict[str, torch.Tensor]:
        """The dense run's weights at the rewind iteration, recomputed deterministically and cached."""
        k = self.cfg.retrain.rewind_iteration
        init = self.store.init(dense_id)
        if k == 0:
            return init
        sid = self.store.stage_id(rewind_key(dense_id, k))
        with self.store.lock(sid):
            return self._rewind_point(sid, dense_id, k, init)

    def _rewind_point(self, sid: str, dense_id: str, k: int, init: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not self.store.is_done(sid):
            self.store.begin_stage(sid, rewind_key(dense_id, k))
            model = self.new_model(0)
            model.load_state_dict(init)
            mask = full_mask(model, model.prunable_names(self.cfg.prune.layers))
            train(model, self.train_data, self.cfg.train, mask, order_key=(self.cfg.seed, "order"), stop_iteration=k)
            self.store.save_rewind(sid, model.state_dict())
            self.store.finish_stage(sid, {"iteration": k})
            return model.state_dict()
        return self.store.rewind(sid)

    def prune(self, level: int, model: nn.Module, mask: Mask) -> Mask:
        """The next mask from the previous level's weights; ranking happens on the CPU (deterministic)."""
        cfg = self.cfg.prune
        weights = {n: p.detach().cpu() for n, p in model.named_parameters() if n in mask}
        extra: dict[str, Any] = {"generator": generator(self.cfg.seed, "prune-random", level)}
        if cfg.method == "gradient":
            sal = gradient_saliency(model, self.train_data.x, self.train_data.y, mask,
                                    batches=cfg.gradient_batches, batch_size=self.cfg.train.batch_size,
                                    generator=generator(self.cfg.seed, "prune-gradient", level))
            extra["saliency"] = {n: v.cpu() for n, v in sal.items()}
        cpu_mask = {n: m.cpu() for n, m in mask.items()}
        new = get_strategy(cfg.method)(weights, cpu_mask, fraction=cfg.fraction, scope=cfg.scope, **extra)
        return {n: m.to(self.rt.device) for n, m in new.items()}


@dataclass
class Job:
    """A stage to train: its id, level, start weights (before masking), mask and schedule."""

    sid: str
    level: int
    state: dict[str, torch.Tensor]
    mask: Mask
    train_cfg: TrainConfig
    name: str


def _batch_dir_result(store: Store, job: Job, cache: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The saved outcome of a batched computation this stage was part of, if it finished (each batch's
    file read once per level, through ``cache``)."""
    bid = store.batch_of(job.sid)
    if bid is None:
        return None
    if bid not in cache:
        cache[bid] = store.batch_result(bid)
    return (bid, cache[bid]) if cache[bid] is not None else None


def _train_together(reps: list[Replicate], jobs: list[Job], store: Store, rt: Runtime, progress: _Progress) -> None:
    """Train the jobs of one level (one per seed) as one batched computation, then finish each.

    The K outcomes are saved together (``result.pt`` in the batch's folder) before any stage is
    finished, so a kill between two stages' finishing resumes from that file, not by retraining.
    """
    t0 = time.time()
    batch_key = {"kind": "batch", "stages": sorted(j.sid for j in jobs)}
    bid = store.stage_id(batch_key)
    store.begin_stage(bid, batch_key)
    for job in jobs:
        store.point_to_batch(job.sid, bid)
    ckpt = store.checkpointer(bid, rt.checkpoint_every_s, rt.checkpoint_epoch_s)
    progress.start_stage(f"seeds {', '.join(str(r.cfg.seed) for r in reps)} level {jobs[0].level} (batched)",
                         jobs[0].train_cfg.epochs)

    def on_epoch(rows: list[dict[str, Any]]) -> None:
        progress.epoch(rows[0], advance_total=len(rows))

    finals, results = train_batched([j.state for j in jobs], [r.train_data for r in reps], jobs[0].train_cfg,
                                    [j.mask for j in jobs], order_keys=[(r.cfg.seed, "order") for r in reps],
                                    device=rt.device, checkpoint=ckpt, on_epoch=on_epoch)
    seconds = (time.time() - t0) / len(jobs)
    store.save_batch_result(bid, {j.sid: {"model": f, "history": r.history, "final": r.final,
                                          "optim": r.optimizer_state, "seconds": seconds}
                                  for j, f, r in zip(jobs, finals, results)})
    ckpt.clear()
    saved = store.batch_result(bid)
    for rep, job in zip(reps, jobs):
        _finish_from_batch(rep, job, saved[job.sid])


def _finish_from_batch(rep: Replicate, job: Job, saved: dict[str, Any]) -> None:
    model = rep.new_model(0)
    model.load_state_dict(saved["model"])
    result = TrainResult(history=saved["history"], final=saved["final"], optimizer_state=saved["optim"])
    rep.finish(job, model, result, saved["seconds"])


def _batch_groups(todo: list[tuple[Replicate, Job]], rt: Runtime
                  ) -> tuple[list[list[tuple[Replicate, Job]]], list[tuple[Replicate, Job]]]:
    """The level's jobs split into groups to train batched (jobs of one architecture, schedule and
    data set, as many per group as fit in memory, where batching pays) and jobs to train alone."""
    if rt.batch == "off" or len(todo) < 2 or rt.compile or rt.dist.active:
        return [], todo
    classes: dict[tuple, list[tuple[Replicate, Job]]] = {}
    models: dict[tuple, nn.Module] = {}  # one of each class's architecture, for the decisions
    alone = []
    for rep, job in todo:
        model = rep.new_model(0)
        if (rep.train_data.augment != "none" or job.train_cfg.precision != "fp32"
                or not batchable(model) or _runs_compact(model, job, rt)):
            alone.append((rep, job))
            continue
        key = (id(rep.data), rep.cfg.model, job.train_cfg, tuple(sorted(job.mask)))
        classes.setdefault(key, []).append((rep, job))
        models.setdefault(key, model)
    groups = []
    for key, members in classes.items():
        model = models[key]
        bs = members[0][1].train_cfg.batch_size
        k = min(len(members), max_models(model, bs, rt.device))
        if k < 2 or (rt.batch == "auto" and not batching_pays(model, bs, k)):
            alone += members
            continue
        groups += [members[i:i + k] for i in range(0, len(members), k)]
    alone += [g[0] for g in groups if len(g) == 1]
    return [g for g in groups if len(g) > 1], alone


def _runs_compact(model: nn.Module, job: Job, rt: Runtime) -> bool:
    """Whether a stage would compute compact (then its seeds train one by one, each on its live units)."""
    return rt.sparse_policy.decide(model, job.mask, job.train_cfg.batch_size, job.train_cfg.precision) is not None


def check_fits(cfg: RunConfig, data: Dataset) -> None:
    """Checks that need the data's size."""
    if cfg.retrain.mode == "weight-rewind":
        total = cfg.train.epochs * iters_per_epoch(data.x_train.shape[0], cfg.train.batch_size)
        if cfg.retrain.rewind_iteration > total:
            raise SparseddError(f"retrain.rewind_iteration {cfg.retrain.rewind_iteration} is past the end of dense "
                                f"training ({total} iterations); choose a smaller value")


def run(cfg: RunConfig, store: Store, *, preset: str | None = None, runtime: Runtime | None = None,
        dense_only: bool = False) -> str:
    """Run (or resume) every replicate of ``cfg``; returns the run id.

    ``dense_only``: compute the dense stages only, with no run recorded (a sweep computes the dense
    networks its runs share first, in parallel).
    """
    return run_many([(cfg, preset)], store, runtime=runtime, dense_only=dense_only)[0]


def data_key(cfg: RunConfig) -> str:
    """Runs whose data differ only in label noise share one data set in memory (and can batch)."""
    d = canonical_dict(cfg, full=True)["data"]
    return stable_hash({k: v for k, v in d.items() if not k.startswith("noise")})


def run_many(items: list[tuple[RunConfig, str | None]], store: Store, *, runtime: Runtime | None = None,
             dense_only: bool = False) -> list[str]:
    """Run several runs level by level together, so that their stages can train batched (a sweep's
    runs of one architecture and schedule, e.g. several noise rates); returns their run ids."""
    rt = runtime or Runtime()
    datasets: dict[str, Dataset] = {}
    for cfg, _ in items:  # every data set loads (and every run is checked) before anything is written
        key = data_key(cfg)
        if key not in datasets:
            datasets[key] = load_dataset(cfg.data, data_dir=rt.data_dir, device=rt.device)
        check_fits(cfg, datasets[key])
    total = 0
    for cfg, preset in items:
        last = 0 if dense_only else cfg.prune.levels
        total += (cfg.train.epochs + last * level_train_config(cfg).epochs) * cfg.seeds
        if not dense_only:
            store.register_run(cfg.run_id, canonical_dict(cfg, full=True), preset, cfg.seeds, cfg.prune.levels)
    progress = _Progress(rt.progress, total)
    reps = [Replicate(cfg.with_seed(seed), None if dense_only else cfg.run_id, datasets[data_key(cfg)], store, rt,
                      progress) for cfg, _ in items for seed in cfg.seed_list()]
    run_ids = list(dict.fromkeys(cfg.run_id for cfg, _ in items))

    def status(state: str, error: str | None = None) -> None:
        if not dense_only:
            for run_id in run_ids:
                store.index.set_status(run_id, state, error)

    try:
        with progress.running():
            parents: dict[int, str | None] = {i: None for i in range(len(reps))}
            last_level = 0 if dense_only else max(cfg.prune.levels for cfg, _ in items)
            for level in range(last_level + 1):  # level by level across seeds and runs, so levels can batch
                active = [i for i, r in enumerate(reps) if dense_only or r.cfg.prune.levels >= level]
                with contextlib.ExitStack() as locks:  # this level's stages, held until they are finished
                    _level(level, reps, active, parents, locks, store, rt, progress)
    except KeyboardInterrupt:
        status("partial", "interrupted")
        raise
    except Exception as e:
        status("failed", f"{type(e).__name__}: {e}")
        raise
    status("complete")
    return [cfg.run_id for cfg, _ in items]


def _level(level: int, reps: list[Replicate], active: list[int], parents: dict[int, str | None],
           locks: contextlib.ExitStack, store: Store, rt: Runtime, progress: _Progress) -> None:
    """Prepare (under their locks), train and finish one level's stages of every active replicate.

    Locks are taken in the order of the stage ids, so processes never wait on each other in a
    cycle; a stage two replicates share (the dense network of two runs in one task) trains once.
    """
    sids = {i: reps[i].stage(level, parents[i])[0] for i in active}
    for sid in sorted(set(sids.values())):
        locks.enter_context(store.lock(sid))
    todo, followers, claimed = [], [], set()
    for i in active:
        rep, parent = reps[i], parents[i]
        parents[i] = sids[i]
        if sids[i] in claimed:  # another replicate of this task computes it
            followers.append((rep, sids[i]))
            continue
        claimed.add(sids[i])
        _, job = rep.prepare(level, parent)
        if job is not None:
            todo.append((rep, job))
    rt.dist.barrier()  # rank 0 has written what the level's jobs read
    pending, batches = [], {}
    for rep, job in todo:  # stages whose batched computation finished before an interruption
        done = _batch_dir_result(store, job, batches)
        if done is not None and job.sid in done[1]:
            _finish_from_batch(rep, job, done[1][job.sid])
        else:
            pending.append((rep, job))
    groups, alone = _batch_groups(pending, rt)
    for group in groups:
        _train_together([r for r, _ in group], [j for _, j in group], store, rt, progress)
    for rep, job in alone:
        t0 = time.time()
        model, result = rep.train_job(job)
        rep.finish(job, model, result, time.time() - t0)
        rt.dist.barrier()  # the stage is on disk before any rank reads it
    for rep, sid in followers:
        rep.adopt(level, sid)
