"""`sparsedd sweep FILE.toml`: many runs, locally in parallel, on a Ray cluster or as SLURM jobs.

Flow: read and check the whole sweep (nothing runs if any run's configuration is bad) -> skip runs
the index already has complete -> phase 1, the dense stages the pending runs need, one task per
(dense configuration, seed), each computed once however many runs share it -> phase 2, the runs
(all their seeds in one task, and runs of one architecture and schedule grouped into as many tasks
as there are workers, so seeds and runs can train batched) -> a failed task is retried up to
``retries`` times and then reported, without stopping the others -> the sweep's record in
``ROOT/sweeps/ID/`` and, when every run completed, an overlaid report there.

Every stage is content-addressed and locked while computed (:meth:`sparsedd.store.Store.lock`), so
sweeps that overlap, run twice, or run under another executor share their stages; a rerun skips
finished runs and resumes partial ones from their checkpoints.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.markup import escape

from ..config import canonical_dict, stable_hash
from ..errors import SparseddError
from ..experiments.stages import data_key, dense_key, retrain_key
from ..options import ExecOptions
from ..store import Store, write_json
from ..store.index import replay
from . import slurm as slurm_options
from .executors import InlineExecutor, LocalExecutor, RayExecutor, SlurmExecutor, Task
from .spec import Sweep, SweepRun, load_sweep, sweep_presets

# a run with one of these statuses is done: a diverged run diverges again (its stages are stored)
FINISHED = ("complete", "diverged")
MAX_WORKERS = 4096  # processes, Ray tasks or SLURM jobs at once

__all__ = ["Sweep", "SweepRun", "load_sweep", "sweep_presets", "run_sweep", "SweepOptions", "SweepResult"]


@dataclass(frozen=True)
class SweepOptions:
    executor: str = "local"  # local | ray | slurm | inline (this process, one task at a time)
    workers: int | None = None  # parallel tasks (local default: the cores; ray default: the cluster's CPUs;
    # slurm default: every task at once, up to MAX_WORKERS, queued by SLURM)
    address: str | None = None  # ray: an existing cluster (default: start a local one)
    cpus_per_task: float = 1.0  # ray resource requests
    gpus_per_task: float = 0.0
    slurm: dict[str, Any] = field(default_factory=dict)  # slurm: sbatch options over the sweep file's [slurm]
    retries: int | None = None  # default: the sweep file's (1)
    report: bool = True
    execution: ExecOptions = ExecOptions()  # carried whole into every task (threads: cores / workers when 0)


@dataclass
class SweepResult:
    sweep_id: str
    complete: list[str]
    failed: dict[str, str]  # run id -> error
    skipped: list[str]  # complete before this call
    folder: Path
    report: Path | None


def _dense_tasks(runs: list[SweepRun], store: Store, base: dict[str, Any]) -> list[Task]:

    tasks: dict[str, Task] = {}
    for r in runs:
        for seed in r.config.seed_list():
            sid = store.stage_id(dense_key(r.config.with_seed(seed)))
            if sid in tasks or store.is_done(sid):
                continue
            values = {**r.values, "seed": seed}
            tasks[sid] = Task(f"dense-{sid}", "dense", f"dense network, seed {seed} ({r.label})",
                              dict(base, runs=[{"preset": r.preset, "values": values, "seeds": 1}], dense_only=True))
    return list(tasks.values())


def _run_tasks(runs: list[SweepRun], base: dict[str, Any], workers: int) -> list[Task]:
    """Runs of one architecture, schedule and data set (label noise aside) go into the same task, so
    their levels can train batched; tasks hold at most ceil(runs / workers) runs, so every worker has
    a task."""
    size = max(1, math.ceil(len(runs) / workers))
    classes: dict[str, list[SweepRun]] = {}
    for r in runs:
        c = canonical_dict(r.config, full=True)
        key = stable_hash({"data": data_key(r.config), "model": c["model"], "train": c["train"],
                           "retrain": retrain_key(r.config.retrain), "levels": r.config.prune.levels})
        classes.setdefault(key, []).append(r)
    tasks = []
    for members in classes.values():
        for i in range(0, len(members), size):
            group = members[i:i + size]
            ids = tuple(r.run_id for r in group)
            tasks.append(Task(f"runs-{stable_hash(list(ids))}", "runs", "; ".join(r.label for r in group),
                              dict(base, runs=[{"preset": r.preset, "values": r.values, "seeds": r.seeds,
                                                "label": r.label} for r in group]), run_ids=ids))
    return tasks


def _split(task: Task) -> list[Task]:
    out = []
    for run_id, spec in zip(task.run_ids, task.spec["runs"]):
        t = Task(f"runs-{stable_hash([run_id])}", "runs", spec.get("label", run_id), dict(task.spec, runs=[spec]),
                 run_ids=(run_id,))
        t.attempts, t.errors = task.attempts - 1, list(task.errors)  # the group's try is not held against a run
        out.append(t)
    return out


class _Display:
    """A progress bar over the sweep's dense stages and runs, with done / running / failed / pending
    counts and an ETA for the current phase, plus a line for each finished, retried or failed task."""

    def __init__(self, enabled: bool, total: int, name: str):
        from .. import terminal
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = terminal.console(stderr=True)
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TextColumn("{task.fields[info]}"), console=self.console,
                            disable=not (enabled and self.console.is_terminal))  # (a log has the event lines)
        self.task = self.bar.add_task(f"sweep {escape(name)}", total=total, info="")  # a file name is no markup
        self.offset = 0  # runs and dense stages finished in earlier phases
        self.phase_start = time.time()

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        self.bar.__exit__(*exc)

    def event(self, text: str) -> None:
        self.console.print(text, highlight=False)  # also without the bar: these lines are the sweep's log

    def update(self, kind: str, done: int, running: int, failed: int, pending: int) -> None:
        info = f"{kind}: done {done}, running {running}, failed {failed}, pending {pending}"
        if done:  # the pace so far (completions per second, with the parallelism in it) for what is left
            eta = (time.time() - self.phase_start) / done * (running + pending)
            info += f", eta {eta / 60:.1f} min"
        self.bar.update(self.task, completed=self.offset + done + failed, info=info)


def _opening_line(sweep: Sweep, skipped: list[str], dense: list[Task], runs: list[Task], executor: str,
                  workers: int) -> str:
    # (slurm's default of workers is a cap, MAX_WORKERS: what matters is how many tasks can run at once)
    at_once = min(workers, max(len(dense), len(runs), 1))
    unit = "jobs at once" if executor == "slurm" else "workers"
    return (f"sweep {escape(sweep.name)} ({sweep.sweep_id}): {len(sweep.runs)} runs, {len(skipped)} already "
            f"complete; {len(dense)} dense stages to compute first; executor {executor}, {at_once} {unit}")


def _size(task: Task) -> int:
    """What a task counts for in the overview: its runs, or one dense stage."""
    return max(1, len(task.run_ids))


def _execute(tasks: list[Task], executor: Any, workers: int, retries: int, display: _Display,
             on_result: Callable[[Task, dict[str, Any]], None]) -> dict[str, tuple[Task, str]]:
    """Run ``tasks`` with at most ``workers`` at once; returns the failures (task key -> (task, error))."""
    pending: deque[Task] = deque(tasks)
    running: dict[str, Task] = {}
    failed: dict[str, tuple[Task, str]] = {}
    done = 0
    kind = "runs" if any(t.run_ids for t in tasks) else "dense stages"
    try:
        while pending or running:
            while pending and len(running) < workers:
                task = pending.popleft()
                executor.start(task)
                running[task.key] = task
            for task, ok, error, result in executor.poll():
                del running[task.key]
                if ok:
                    done += _size(task)
                    on_result(task, result)
                    display.event(f"[green]done[/green] {escape(task.label)}")
                    continue
                task.attempts += 1
                task.errors.append(error)
                if len(task.run_ids) > 1:  # a group: its runs go on alone, so one bad run fails only itself
                    display.event(f"[yellow]split[/yellow] {escape(task.label)}: {escape(error)}")
                    pending.extend(_split(task))
                elif task.attempts <= retries:
                    display.event(f"[yellow]retry {task.attempts}/{retries}[/yellow] {escape(task.label)}: "
                                  f"{escape(error)}")
                    pending.append(task)
                else:
                    failed[task.key] = (task, error)
                    display.event(f"[red]failed[/red] {escape(task.label)}: {escape(error)}")
            display.update(kind, done, sum(map(_size, running.values())), sum(_size(t) for t, _ in failed.values()),
                           sum(map(_size, pending)))
            time.sleep(0.1)
    except KeyboardInterrupt:
        executor.close()
        raise
    display.offset += done + sum(_size(t) for t, _ in failed.values())
    display.phase_start = time.time()
    return failed


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _checked_retries(sweep: Sweep, options: SweepOptions) -> int:
    """The options checked before anything is written; the retries a failed task gets."""
    if options.executor not in ("local", "ray", "slurm", "inline"):
        raise SparseddError(f"unknown executor {options.executor!r}; use local, ray, slurm or inline")
    if options.workers is not None and options.workers < 1:
        raise SparseddError("--workers must be >= 1")
    if options.workers is not None and options.workers > MAX_WORKERS:
        raise SparseddError(f"--workers must be at most {MAX_WORKERS}, got {options.workers}")
    retries = sweep.retries if options.retries is None else options.retries
    if retries < 0:
        raise SparseddError("--retries must be >= 0")
    return retries


def _executor(options: SweepOptions, folder: Path, slurm: dict[str, Any]) -> tuple[Any, int]:
    """The executor the options ask for, and how many tasks it runs at once."""
    if options.executor == "slurm":
        threads = options.execution.threads or max(1, slurm.get("cpus_per_task", 1))
        return SlurmExecutor(folder, threads, slurm), options.workers or MAX_WORKERS
    if options.executor == "inline":
        return InlineExecutor(options.execution.threads or _cores()), 1
    if options.executor == "local":
        workers = options.workers or _cores()
        return LocalExecutor(folder, options.execution.threads or max(1, _cores() // workers)), workers
    executor = RayExecutor(folder, options.execution.threads or max(1, int(options.cpus_per_task)),
                           options.address, options.workers, options.cpus_per_task, options.gpus_per_task)
    return executor, options.workers or max(1, int(executor.capacity() // max(options.cpus_per_task, 1)))


def run_sweep(source: str | Sweep, root: str | Path | None = None, options: SweepOptions = SweepOptions()
              ) -> SweepResult:
    sweep = source if isinstance(source, Sweep) else load_sweep(source)
    retries = _checked_retries(sweep, options)
    slurm = slurm_options.check(slurm_options.merged(sweep.slurm, options.slurm), "slurm options")
    if options.executor == "slurm":
        SlurmExecutor.require(slurm.get("cluster", "slurm"))  # before anything is written
    store = Store(root)
    folder = store.sweep_dir(sweep.sweep_id)
    folder.mkdir(parents=True, exist_ok=True)
    skipped = [r.run_id for r in sweep.runs if store.index.run_status(r.run_id) in FINISHED]
    todo = [r for r in sweep.runs if r.run_id not in skipped]
    executor, workers = _executor(options, folder, slurm)
    base = {"root": str(store.root), "options": options.execution.to_dict()}
    record = {"source": sweep.source, "name": sweep.name, "executor": options.executor, "workers": workers,
              **({"slurm": slurm} if options.executor == "slurm" else {}),
              "runs": [{"run_id": r.run_id, "label": r.label, "values": r.values, "seeds": r.seeds,
                        "preset": r.preset} for r in sweep.runs]}
    write_json(folder / "sweep.json", record)

    def on_result(task: Task, result: dict[str, Any]) -> None:
        replay(store.index, result.get("index_calls", []))

    dense = _dense_tasks(todo, store, base)
    runs = _run_tasks(todo, base, workers)
    failed: dict[str, str] = {}
    with _Display(options.execution.progress, len(dense) + len(todo), sweep.name) as display:
        display.event(_opening_line(sweep, skipped, dense, runs, options.executor, workers))
        try:
            dense_failed = _execute(dense, executor, workers, retries, display, on_result)
            # a run whose dense stage failed still runs: it computes that stage itself or fails with the cause
            run_failed = _execute(runs, executor, workers, retries, display, on_result)
        finally:
            executor.close()
    by_id = {r.run_id: r for r in todo}
    for task, error in run_failed.values():
        for run_id in task.run_ids:
            failed[run_id] = error
            if store.index.run_status(run_id) not in FINISHED:  # it may have failed before (or without) recording
                r = by_id[run_id]
                store.register_run(run_id, canonical_dict(r.config, full=True), r.preset, r.config.seeds,
                                   r.config.prune.levels)
                store.index.set_status(run_id, "failed", error)
    complete = [r.run_id for r in todo if r.run_id not in failed]
    report = None
    if not failed and options.report and sweep.runs:
        from ..report.html import write_report

        try:
            report = write_report(store.root, [r.run_id for r in sweep.runs], folder / "report")
        except Exception as e:  # noqa: BLE001 - the runs are done; a report problem should not hide that
            display.event(escape(f"report not written: {type(e).__name__}: {e}"))
    write_json(folder / "status.json", {"complete": complete + skipped, "failed": failed,
                                        "dense_failed": {t.label: e for t, e in dense_failed.values()},
                                        "time": time.time()})
    return SweepResult(sweep.sweep_id, complete, failed, skipped, folder, report)


def describe(sweep: Sweep) -> str:
    lines = [f"{sweep.name}: {len(sweep.runs)} runs (preset {sweep.preset or 'default'}, "
             f"seeds {sweep.seeds or 'from the config'}, retries {sweep.retries})"]
    for r in sweep.runs:
        lines.append(f"  {r.run_id}  {r.label}")
    return "\n".join(lines)


def plan_json(sweep: Sweep) -> str:
    """``sweep --dry-run --format json``: the runs the sweep would run, as :func:`describe` lists them."""
    return json.dumps({"sweep_id": sweep.sweep_id, "name": sweep.name, "preset": sweep.preset, "seeds": sweep.seeds,
                       "retries": sweep.retries, "runs": [{"run": r.run_id, "label": r.label, "axes": r.axes}
                                                          for r in sweep.runs]}, indent=1, default=str)


def as_json(result: SweepResult) -> str:
    return json.dumps({"sweep_id": result.sweep_id, "complete": result.complete, "failed": result.failed,
                       "skipped": result.skipped, "folder": str(result.folder),
                       "report": str(result.report) if result.report else None}, indent=1)
