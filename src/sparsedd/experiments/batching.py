"""Training a level's jobs together: which jobs batch, and the batch's file protocol.

Jobs of one architecture, schedule and data set (seeds of a run, or runs of a sweep task) train as
one stacked computation where that measured faster on this machine. The K outcomes are saved
together in the batch's folder (``result.pt``) before any stage is recorded, and each stage points
to its batch (``batch.json``), so a kill between two stages' records resumes from that file.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
from torch import nn

from ..config import TrainConfig
from ..options import ExecOptions
from ..store import Store
from ..training import TrainData, TrainResult, train
from ..training.batched import batchable, max_models
from ..training.core import iters_per_epoch
from ..training.planner import batching_pays, together_pays, train_batched
from ..training.measured import sync
from ..training.planner import train_together as train_side_by_side
from .progress import Progress
from .replicate import Replicate
from .stages import Job, batch_key

Pair = tuple[Replicate, Job]
MAX_SIDE_BY_SIDE = 4  # conv nets trained side by side (issue 12 asks for K = 1..4)


def train_level(pairs: list[Pair], store: Store, options: ExecOptions,
                progress: Progress) -> None:
    """Train and record every job of a level: finished batches first, then in batches where that pays, then alone."""
    pending, batches = [], {}
    for rep, job in pairs:  # stages whose batched computation finished before an interruption
        done = finished_batch(store, job, batches)
        if done is not None:
            progress.skip(job.train_cfg.epochs)  # trained before an interruption: not this call's epochs (eta)
            record_from_batch(rep, job, done)
        else:
            pending.append((rep, job))
    groups, alone = batch_groups(pending, options, store)
    for group in groups:
        train_together(group, store, options, progress)
    for rep, job in alone:
        rep.train_and_record(job)
        options.dist.barrier()  # the stage is on disk before any rank reads it


def finished_batch(store: Store, job: Job, cache: dict[str, Any]) -> dict[str, Any] | None:
    """This stage's saved outcome from a batched computation that finished, if any (each batch's file
    read once per level, through ``cache``)."""
    bid = store.batch_of(job.sid)
    if bid is None:
        return None
    if bid not in cache:
        cache[bid] = store.batch_result(bid)
    return cache[bid].get(job.sid) if cache[bid] is not None else None


def train_together(group: list[Pair], store: Store, options: ExecOptions,
                   progress: Progress) -> None:
    """Train the jobs of one group as one batched computation, save the K outcomes, then record each."""
    reps, jobs = [r for r, _ in group], [j for _, j in group]
    t0 = time.time()
    key = batch_key([j.sid for j in jobs])
    bid = store.stage_id(key)
    store.begin_stage(bid, key)
    for job in jobs:
        store.point_to_batch(job.sid, bid)
    ckpt = store.checkpointer(bid, options.checkpoint_every_s, options.checkpoint_epoch_s)
    progress.start_stage(f"seeds {', '.join(str(r.cfg.seed) for r in reps)} level {jobs[0].level} (batched)",
                         jobs[0].train_cfg.epochs)
    finals, results = _train_group(reps, jobs, options, ckpt,
                                   on_epoch=lambda rows: progress.epoch(rows[0], advance_total=len(rows)))
    seconds = (time.time() - t0) / len(jobs)
    store.save_batch_result(bid, {j.sid: {"model": f, "history": r.history, "final": r.final,
                                         "optim": r.optimizer_state, "seconds": seconds, "stacked": len(jobs),
                                         "execution": r.execution}
                                 for j, f, r in zip(jobs, finals, results)})
    ckpt.clear()
    saved = store.batch_result(bid)
    for rep, job in group:
        record_from_batch(rep, job, saved[job.sid])


def _train_group(reps: list[Replicate], jobs: list[Job], options: ExecOptions, ckpt,
                 on_epoch) -> tuple[list[dict[str, Any]], list[TrainResult]]:
    """The K networks' final states and results: stacked into one network (fully connected models), or
    side by side, each its own execution (conv nets; :mod:`sparsedd.training.together`)."""
    cfg, masks, keys = jobs[0].train_cfg, [j.mask for j in jobs], [(r.cfg.seed, "order") for r in reps]
    if batchable(reps[0].new_model(0)):
        return train_batched([j.state for j in jobs], [r.train_data for r in reps], cfg, masks, order_keys=keys,
                             device=options.device, checkpoint=ckpt, on_epoch=on_epoch, accel=options.accel)
    models = [rep.new_model(0) for rep in reps]
    for model, job in zip(models, jobs):
        model.load_state_dict(job.state)
    results = train_side_by_side(models, [r.train_data for r in reps], cfg, masks, order_keys=keys,
                                 accel=options.accel, checkpoint=ckpt, on_epoch=on_epoch)
    return [{k: v.detach().cpu() for k, v in m.state_dict().items()} for m in models], results


def record_from_batch(rep: Replicate, job: Job, saved: dict[str, Any]) -> None:
    model = rep.new_model(0)
    model.load_state_dict(saved["model"])
    result = TrainResult(history=saved["history"], final=saved["final"], optimizer_state=saved["optim"],
                         execution=saved.get("execution", "stacked"))  # (older batch files lack it)
    rep.record(job, model, result, saved["seconds"], saved.get("stacked", 1))  # (older batch files lack it)


def batch_groups(pairs: list[Pair], options: ExecOptions, store: Store) -> tuple[list[list[Pair]], list[Pair]]:
    """The level's jobs split into groups to train batched (jobs of one architecture, schedule and
    data set, as many per group as fit in memory, where batching pays) and jobs to train alone."""
    if options.batch == "off" or len(pairs) < 2 or options.compile or options.dist.active:
        return [], pairs
    classes: dict[tuple, list[Pair]] = {}
    models: dict[tuple, nn.Module] = {}  # one of each class's architecture, for the decisions
    alone = []
    for rep, job in pairs:
        model = rep.new_model(0)
        if rep.objective_active(job) or (batchable(model) and not stackable_training(rep.train_data, job.train_cfg)):
            alone.append((rep, job))
            continue
        key = (id(rep.data), rep.cfg.model, job.train_cfg, tuple(sorted(job.mask)))
        classes.setdefault(key, []).append((rep, job))
        models.setdefault(key, model)
    groups = []
    for key, members in classes.items():
        model = models[key]
        k = _group_size(model, members, options)
        compact = [p for p in members if batchable(model) and runs_compact(model, p[1], options)]
        if compact and not (k >= 2 and _stack_rather_than_compact(members[:k], compact[0], options, store)):
            alone += compact  # each on its live units (the stacked computation is dense-masked)
            members = [p for p in members if all(p is not c for c in compact)]
            k = _group_size(model, members, options) if len(members) >= 2 else 1
        if k < 2:
            alone += members
            continue
        groups += [members[i:i + k] for i in range(0, len(members), k)]
    alone += [g[0] for g in groups if len(g) == 1]
    return [g for g in groups if len(g) > 1], alone


def _group_size(model: nn.Module, members: list[Pair], options: ExecOptions) -> int:
    """How many of these jobs train together (1: alone): as many as fit, where that pays (``--batch auto``:
    measured once per machine; conv nets side by side only on a GPU, where their steps can overlap)."""
    rep, job = members[0]
    if batchable(model):
        return stacked_size(model, len(members), job.train_cfg.batch_size, options)
    k = min(len(members), MAX_SIDE_BY_SIDE)
    if options.batch == "on":
        return k
    return k if together_pays(lambda: rep.new_model(0), rep.train_data, job.train_cfg, k, options.accel) else 1


def stacking_allowed(model: nn.Module, options: ExecOptions) -> bool:
    """Whether networks like ``model`` may train stacked under these options (fully connected; not
    ``--batch off``, ``--compile`` or distributed)."""
    return options.batch != "off" and not options.compile and not options.dist.active and batchable(model)


def stackable_training(data: TrainData, cfg: TrainConfig) -> bool:
    """Whether the stacked MLP can train on this data under this schedule (no augmentation, fp32, no stop on
    convergence: a converged network would train on beside the others)."""
    return data.augment == "none" and cfg.precision == "fp32" and cfg.stop_loss == 0


def stacked_size(model: nn.Module, n: int, batch_size: int, options: ExecOptions) -> int:
    """How many of ``n`` networks like ``model`` train as one stacked computation (1: each alone): as
    many as fit, for fully connected nets, where ``--batch`` allows and (``auto``) it measured faster
    on this machine."""
    if n < 2 or not stacking_allowed(model, options):
        return 1
    k = min(n, max_models(model, batch_size, options.device))
    return k if k >= 2 and (options.batch == "on" or batching_pays(model, batch_size, k)) else 1


def _stack_rather_than_compact(group: list[Pair], compact: Pair, options: ExecOptions, store: Store) -> bool:
    """For jobs that could train stacked or each alone on its live units: what the flags ask (``--sparse on``:
    compact; ``--batch on``: stacked); the way an interrupted level started (so that it resumes from its
    checkpoints, and bit for bit); compact for levels too short to time; else whichever is faster per
    network on this level's real weights and masks (:func:`stacked_vs_compact_seconds`)."""
    if options.sparse == "on" or options.batch == "on":
        return options.sparse != "on"
    jobs = [job for _, job in group]
    if any(store.batch_of(job.sid) for job in jobs):
        return True
    if any(store.has_checkpoint(job.sid) for job in jobs):
        return False
    if _level_steps(group) < 10 * PROBE_STEPS:  # the probe would cost more than it could save
        return False
    stacked, alone = stacked_vs_compact_seconds(group, compact, options)
    return stacked < alone


PROBE_STEPS = 30  # timed steps of each way, after as many to warm up: under a second for LeNet-300-100 on a CPU


def _level_steps(group: list[Pair]) -> int:
    rep, job = group[0]
    return job.train_cfg.epochs * iters_per_epoch(rep.train_data.x.shape[0], job.train_cfg.batch_size)


def stacked_vs_compact_seconds(group: list[Pair], compact: Pair, options: ExecOptions) -> tuple[float, float]:
    """Seconds per network of ``PROBE_STEPS`` training steps: the group stacked, and ``compact``'s job alone
    on its live units. Timed on copies of the level's start weights (the jobs' own are not touched, nor any
    random stream of theirs), because the one-off measurements on synthetic masks misjudge it: for
    paper-mnist-lenet's 5 seeds on the 2-core build machine they chose compact, and real levels then
    trained about 1.3x slower than stacked (docs/performance.md)."""
    reps, jobs = [r for r, _ in group], [j for _, j in group]
    cfg = jobs[0].train_cfg
    steps = min(PROBE_STEPS, _level_steps(group))

    def stacked() -> None:
        train_batched([dict(j.state) for j in jobs], [r.train_data for r in reps], cfg, [j.mask for j in jobs],
                      order_keys=[(r.cfg.seed, "probe") for r in reps], device=options.device,
                      stop_iteration=steps, accel=options.accel)

    def alone() -> None:
        rep, job = compact
        model = rep.new_model(0)
        model.load_state_dict(job.state)
        train(model, rep.train_data, cfg, job.mask, order_key=(rep.cfg.seed, "probe"), stop_iteration=steps,
              accel=options.accel, sparse=options.sparse_policy)

    device = torch.device(options.device)
    return timed(stacked, device) / len(jobs), timed(alone, device)


def timed(work: Callable[[], None], device: torch.device) -> float:
    """Seconds of ``work``'s second call (the first warms it up)."""
    work()
    sync(device)
    start = time.perf_counter()
    work()
    sync(device)
    return time.perf_counter() - start


def runs_compact(model: nn.Module, job: Job, options: ExecOptions) -> bool:
    """Whether a stage would compute compact (then its seeds train one by one, each on its live units)."""
    return options.sparse_policy.decide(model, job.mask, job.train_cfg.batch_size, job.train_cfg.precision) is not None
