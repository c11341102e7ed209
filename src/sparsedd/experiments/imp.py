"""The iterative pruning loop: a dense stage, then levels 1..L, one code path for every retraining mode.

    data (+ label noise) -> dense stage (seeded init)
    -> for each level: prune the previous weights -> start weights by retraining mode -> train under
       the mask -> record metrics

:func:`run_level` is that loop's body for every seed (and every run of a sweep task) at once, so that
jobs of one level can train together. Each stage is content-addressed (:mod:`.stages`): completed
stages are skipped, interrupted ones resume from their checkpoints.
"""

from __future__ import annotations

from typing import Callable

from ..config import RunConfig, canonical_dict
from ..options import ExecOptions
from ..store import Store
from .batching import train_level
from .distance import learning_distance
from .progress import Progress
from .replicate import Replicate
from .retrain import level_train_config
from .scheduler import check_fits, claim_level, load_data, run_status
from .stages import Job, data_key, dense_key, level_key, rewind_key

__all__ = ["run", "run_many", "run_level", "learning_distance", "Replicate", "Job", "check_fits",
           "data_key", "dense_key", "level_key", "rewind_key"]


def run(cfg: RunConfig, store: Store, *, preset: str | None = None, options: ExecOptions | None = None,
        dense_only: bool = False, started: Callable[[], None] | None = None) -> str:
    """Run (or resume) every seed of ``cfg``; returns the run id.

    ``dense_only``: compute the dense stages only, with no run recorded (a sweep computes the dense
    networks its runs share first, in parallel). ``started``: called once the data are loaded and checked
    and the run is recorded (the command line's "run ID -> ROOT", never before a refusal).
    """
    return run_many([(cfg, preset)], store, options=options, dense_only=dense_only, started=started)[0]


def run_many(items: list[tuple[RunConfig, str | None]], store: Store, *, options: ExecOptions | None = None,
             dense_only: bool = False, started: Callable[[], None] | None = None) -> list[str]:
    """Run several runs level by level together, so that their stages can train batched (a sweep's
    runs of one architecture and schedule, e.g. several noise rates); returns their run ids."""
    opts = options or ExecOptions()
    datasets = load_data([cfg for cfg, _ in items], opts, store)  # before anything is written
    if not dense_only:
        for cfg, preset in items:
            store.register_run(cfg.run_id, canonical_dict(cfg, full=True), preset, cfg.seeds, cfg.prune.levels)
    if started is not None:
        started()
    progress = Progress(opts.progress, _total_epochs(items, dense_only))
    run_id = (lambda cfg: None) if dense_only else (lambda cfg: cfg.run_id)
    reps = [Replicate(cfg.with_seed(seed), run_id(cfg), datasets[data_key(cfg)], store, opts, progress)
            for cfg, _ in items for seed in cfg.seed_list()]
    chains: list[list[str]] = [[] for _ in reps]  # each replicate's stage ids so far, level by level
    last = 0 if dense_only else max(cfg.prune.levels for cfg, _ in items)
    recorded = [] if dense_only else list(dict.fromkeys(cfg.run_id for cfg, _ in items))
    with run_status(store, recorded, lambda run_id: divergence(reps, run_id)), progress.running():
        for level in range(last + 1):  # level by level across seeds and runs, so levels can batch
            active = [i for i, r in enumerate(reps) if (dense_only or r.cfg.prune.levels >= level) and not r.diverged]
            run_level(level, [reps[i] for i in active], [chains[i] for i in active], store, opts, progress)
    return [cfg.run_id for cfg, _ in items]


def divergence(reps: list[Replicate], run_id: str) -> str | None:
    """Where a run's training diverged, as the note its status carries, or None where it did not."""
    return divergence_note([(r.cfg.seed, *r.diverged) for r in reps if r.run_id == run_id and r.diverged])


def divergence_note(where: list[tuple[int, int, int]]) -> str | None:
    """The note of a run whose training diverged at these (seed, level, epoch); None for none."""
    if not where:
        return None
    places = "; ".join(f"seed {seed} at level {level}, epoch {epoch}" for seed, level, epoch in where)
    return (f"training loss not finite ({places}); training stopped there and no later level was "
            f"computed; try a lower learning rate (train.lr, retrain.finetune_lr)")


def run_level(level: int, reps: list[Replicate], chains: list[list[str]], store: Store, options: ExecOptions,
              progress: Progress) -> None:
    """One level of every replicate: prune and pick the start weights (prepare), train (batched where
    that pays), record; stages already done are only linked."""
    with claim_level(level, reps, chains, store) as (jobs, followers):
        options.dist.barrier()  # rank 0 has written what the level's jobs read
        train_level(jobs, store, options, progress)
        for rep, sid in followers:
            rep.adopt(level, sid)


def _total_epochs(items: list[tuple[RunConfig, str | None]], dense_only: bool) -> int:
    return sum((cfg.train.epochs + (0 if dense_only else cfg.prune.levels) * level_train_config(cfg).epochs) * cfg.seeds
               for cfg, _ in items)
