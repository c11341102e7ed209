"""Who computes which stage: data loaded and checked before anything is written, stage locks taken
in id order, stages two replicates share computed once, and the run's status kept in the index."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from ..config import RunConfig
from ..config_check import check
from ..data import Dataset, fingerprint, load_dataset
from ..errors import SparseddError, interrupt_in, reraise_interrupt
from ..data import spec_of
from ..data.split import held_out
from ..models import check_takes
from ..options import ExecOptions
from ..store import Store
from ..training.core import iters_per_epoch
from .replicate import Replicate
from .retrain import RETRAIN_MODES
from .stages import Job, data_key, dense_key, parent_stage


def load_data(configs: list[RunConfig], options: ExecOptions, store: Store) -> dict[str, Dataset]:
    """Every run's data set (one in memory per data key), each checked to be the data the store's results
    were made with, and each run checked against the registries (a config built in Python skipped them)
    and its data."""
    datasets: dict[str, Dataset] = {}
    fingerprints: dict[str, tuple[str, str]] = {}
    for cfg in configs:
        check(cfg)
        key = data_key(cfg)
        if key not in datasets:
            data = load_dataset(cfg.data, data_dir=options.data_dir)  # hashed on the CPU, then moved
            fingerprints[key] = (cfg.data.name, fingerprint(data))
            datasets[key] = data.to(options.device)
        check_fits(cfg, datasets[key])
    made_with = {data_key(cfg) for cfg in configs  # the keys this store already has results of
                 if any(store.is_done(store.stage_id(dense_key(cfg.with_seed(s)))) for s in cfg.seed_list())}
    store.check_data(fingerprints, made_with)  # after every other check: a refused run writes nothing
    return datasets


def check_declared_fit(cfg: RunConfig) -> None:
    """The model takes the data set's declared input shape (and has the weights prune.layers names), checked
    before anything is loaded or said: a refused pair is one line, without a "run ID -> ROOT" line first."""
    check(cfg)
    spec = spec_of(cfg.data.name)
    check_takes(cfg.model, spec.input_shape(cfg.data.image_size), spec.classes, cfg.prune.layers)
    if cfg.data.num_train:  # (asked for: the loaded set has no more; a declared full size may be a user's guess)
        check_counts(cfg, cfg.data.num_train)


def check_fits(cfg: RunConfig, data: Dataset) -> None:
    """Checks that need the data: the model takes its inputs (and has the weights prune.layers names), and
    the counts of :func:`check_counts` hold on the examples loaded. Made before the run is registered."""
    check_takes(cfg.model, tuple(data.x_train.shape[1:]), data.num_classes, cfg.prune.layers)
    check_counts(cfg, data.x_train.shape[0])


def check_counts(cfg: RunConfig, n: int) -> None:
    """With ``n`` training examples: the validation split holds out some and leaves some, and the rewind point
    lies within dense training on what it leaves."""
    trained = trained_count(cfg, n)
    if RETRAIN_MODES[cfg.retrain.mode].start == "rewind":
        total = cfg.train.epochs * iters_per_epoch(trained, cfg.train.batch_size)
        rest = cfg.retrain.rewind_schedule == "rest"  # then a level trains from k on: k must leave a step
        if cfg.retrain.rewind_iteration > total or (rest and cfg.retrain.rewind_iteration == total):
            where = "at or past" if rest else "past"  # (with rest, rewinding to the last step leaves none to train)
            raise SparseddError(f"retrain.rewind_iteration {cfg.retrain.rewind_iteration} is {where} the end of dense "
                                f"training ({total} iterations); choose a smaller value")


def trained_count(cfg: RunConfig, n: int) -> int:
    """How many of the ``n`` training examples a network trains on: those ``data.val_split`` leaves, which must
    be some, as must the examples it holds out."""
    held = held_out(n, cfg.data.val_split)
    if cfg.data.val_split and not 0 < held < n:
        fit = (f"from {1 / n:.3g} to {1 - 1 / n:.6g} holds out 1 to {n - 1}" if n >= 2 else
               "a split needs at least 2 training examples")
        raise SparseddError(f"data.val_split = {cfg.data.val_split} holds out {held} of the {n} training examples; "
                            f"choose a fraction that holds out at least one and trains on at least one ({fit})")
    return n - held


@contextlib.contextmanager
def run_status(store: Store, run_ids: list[str], diverged: Callable[[str], str | None] = lambda run_id: None
               ) -> Iterator[None]:
    """Mark the runs complete when the block ends (diverged, with ``diverged(run_id)`` as the note, where
    a seed's training diverged), partial when interrupted, failed on an error."""
    try:
        yield
    except KeyboardInterrupt:
        for run_id in run_ids:
            store.index.set_status(run_id, "partial", "interrupted")
        raise
    except Exception as e:
        if interrupt_in(e) is not None:  # an interrupt that a library wrapped: partial, as above
            for run_id in run_ids:
                store.index.set_status(run_id, "partial", "interrupted")
            reraise_interrupt(e)
        for run_id in run_ids:
            store.index.set_status(run_id, "failed", f"{type(e).__name__}: {e}")
        raise
    for run_id in run_ids:
        note = diverged(run_id)
        store.index.set_status(run_id, "diverged" if note else "complete", note)


@contextlib.contextmanager
def claim_level(level: int, reps: list[Replicate], chains: list[list[str]], store: Store
                ) -> Iterator[tuple[list[tuple[Replicate, Job]], list[tuple[Replicate, str]]]]:
    """Lock and prepare one level's stages: yields the jobs to train and the (replicate, stage) pairs
    that follow another replicate's job of this task; the locks are held until the block ends.

    Locks are taken in the order of the stage ids, so processes never wait on each other in a
    cycle; a process that needs a stage another is computing waits, then finds it done.
    """
    parents = [parent_stage(rep.cfg, chain) if chain else None for rep, chain in zip(reps, chains)]
    sids = [rep.stage(level, parent)[0] for rep, parent in zip(reps, parents)]
    with contextlib.ExitStack() as locks:
        for sid in sorted(set(sids)):
            locks.enter_context(store.lock(sid))
        todo, followers, claimed = [], [], set()
        for rep, chain, parent, sid in zip(reps, chains, parents, sids):
            dense = chain[0] if chain else None
            chain.append(sid)
            if sid in claimed:  # another replicate of this task computes it
                followers.append((rep, sid))
                continue
            claimed.add(sid)
            _, job = rep.prepare(level, parent, dense)
            if job is not None:
                todo.append((rep, job))
        yield todo, followers
