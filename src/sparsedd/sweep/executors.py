"""Where sweep tasks execute: local subprocesses, Ray tasks or SLURM jobs on a cluster, or this process (inline).

Each exposes ``start(task)`` and ``poll() -> [(task, ok, error, result)]``; the driver in
:mod:`sparsedd.sweep` keeps up to ``workers`` tasks running, retries failures and shows progress.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SparseddError, reraise_interrupt


@dataclass
class Task:
    key: str  # unique within the sweep: "dense-<stage>" or "runs-<hash of its run ids>"
    kind: str  # dense | runs
    label: str
    spec: dict[str, Any]
    run_ids: tuple[str, ...] = ()
    attempts: int = 0
    errors: list[str] = field(default_factory=list)


STOP_WAIT_S = 10.0  # how long a terminated worker may take to exit before it is killed


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


class LocalExecutor:
    """Each task in its own ``python -m sparsedd.sweep.worker`` process, ``threads`` torch threads each.

    A process per task (not a pool whose worker processes outlive tasks): a worker that dies, even
    by SIGKILL, fails only its own task, which the driver starts again and which resumes from its
    checkpoints.
    """

    name = "local"

    def __init__(self, work_dir: Path, threads: int):
        self.work_dir = work_dir
        self.threads = threads
        self.running: dict[str, tuple[Task, subprocess.Popen, Path, Path, Any]] = {}

    def start(self, task: Task) -> None:
        n = task.attempts
        me = os.getpid()  # two drivers of one sweep at once keep to their own files
        spec_file = self.work_dir / "tasks" / f"{task.key}.{me}.json"
        result_file = self.work_dir / "tasks" / f"{task.key}.{me}.result.json"
        log_file = self.work_dir / "logs" / f"{task.key}.{me}.{n}.log"
        spec_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        result_file.unlink(missing_ok=True)
        spec = dict(task.spec, threads=self.threads, pid_file=str(self.work_dir / "pids" / f"{task.key}.pid"))
        spec_file.write_text(json.dumps(spec))
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        log = open(log_file, "w")
        proc = subprocess.Popen([sys.executable, "-m", "sparsedd.sweep.worker", str(spec_file), str(result_file)],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
        self.running[task.key] = (task, proc, result_file, log_file, log)

    def poll(self) -> list[tuple[Task, bool, str, dict[str, Any] | None]]:
        out = []
        for key, (task, proc, result_file, log_file, log) in list(self.running.items()):
            code = proc.poll()
            if code is None:
                continue
            log.close()
            del self.running[key]
            if code == 0 and result_file.exists():
                out.append((task, True, "", json.loads(result_file.read_text())))
            else:
                why = f"killed by signal {-code}" if code < 0 else _last_line(log_file.read_text(errors="replace"))
                out.append((task, False, why, None))
        return out

    def close(self) -> None:
        """Stop the running workers: SIGTERM, then SIGKILL for any still there after ``STOP_WAIT_S``.
        Their stages keep their checkpoints (a rerun resumes them)."""
        for task, proc, *_ in self.running.values():
            proc.terminate()
        for task, proc, _, _, log in self.running.values():
            try:
                proc.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
        self.running.clear()


class InlineExecutor:
    """Each task in this process, one after the other: no start-up cost, no isolation (a crash ends the
    sweep; its stages resume on the next call). For small sweeps and tests."""

    name = "inline"

    def __init__(self, threads: int):
        self.threads = threads
        self.finished: list[tuple[Task, bool, str, dict[str, Any] | None]] = []

    def start(self, task: Task) -> None:
        from .worker import one_line, run_task

        try:
            self.finished.append((task, True, "", run_task(dict(task.spec, threads=self.threads))))
        except Exception as e:  # noqa: BLE001 - reported to the driver, which retries or records it, as for a worker
            reraise_interrupt(e)  # Ctrl-C or SIGTERM, wrapped by a library: the sweep stops, no task failed
            self.finished.append((task, False, one_line(e), None))

    def poll(self) -> list[tuple[Task, bool, str, dict[str, Any] | None]]:
        out, self.finished = self.finished, []
        return out

    def close(self) -> None:
        pass


class RayExecutor:
    """Ray tasks with resource requests. Workers write stage files under the store's root (which
    must be a path every node reaches); the index rows come back to the driver, which writes them."""

    name = "ray"

    def __init__(self, work_dir: Path, threads: int, address: str | None, workers: int | None,
                 cpus_per_task: float, gpus_per_task: float):
        try:
            import ray
        except ImportError:
            raise SparseddError("the ray executor needs Ray: pip install 'sparsedd[ray]' (or ray)") from None
        self.ray = ray
        if not ray.is_initialized():
            ours = signal.getsignal(signal.SIGTERM)
            if address:
                ray.init(address=address, log_to_driver=False)
            else:  # a local cluster of this machine
                ray.init(num_cpus=workers or os.cpu_count(), include_dashboard=False, log_to_driver=False)
            # Ray's core worker puts its own SIGTERM handler in place (it aborts the process with a stack
            # dump); ours stops the sweep's tasks and keeps what they computed, as after Ctrl-C
            if callable(ours) and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, ours)
        from .worker import run_task

        self.work_dir = work_dir
        self.threads = threads
        self.remote = ray.remote(max_retries=0)(run_task).options(num_cpus=cpus_per_task, num_gpus=gpus_per_task)
        self.running: dict[Any, Task] = {}

    def capacity(self) -> int:
        return int(self.ray.cluster_resources().get("CPU", 1))

    def start(self, task: Task) -> None:
        spec = dict(task.spec, threads=self.threads, buffer_index=True,
                    pid_file=str(self.work_dir / "pids" / f"{task.key}.pid"))
        self.running[self.remote.remote(spec)] = task

    def poll(self) -> list[tuple[Task, bool, str, dict[str, Any] | None]]:
        if not self.running:
            return []
        ready, _ = self.ray.wait(list(self.running), num_returns=len(self.running), timeout=0)
        out = []
        for ref in ready:
            task = self.running.pop(ref)
            try:
                out.append((task, True, "", self.ray.get(ref)))
            except Exception as e:  # noqa: BLE001 - a task error or a dead worker: retried or recorded
                cause = getattr(e, "cause", None)
                text = f"{type(cause).__name__}: {cause}" if cause is not None else f"{type(e).__name__}: {e}"
                out.append((task, False, _last_line(text), None))
        return out

    def close(self) -> None:
        for ref in self.running:
            self.ray.cancel(ref, force=True)


def _state(job: Any) -> str:
    try:
        return str(job.state)
    except Exception:  # noqa: BLE001 - sacct unreachable: the log says more
        return "unknown"


class SlurmExecutor:
    """Each task a SLURM job submitted through submitit, with the sweep's sbatch options
    (:mod:`sparsedd.sweep.slurm`); submitit's files and the jobs' logs in the sweep's ``slurm/`` folder.

    As on Ray, the workers write stage files under the store's root, which must be on a file system
    every node shares, and send their index rows back to the driver, which alone writes
    ``index.sqlite``: SQLite's locking is not to be trusted on network file systems, and the jobs
    would write it from many nodes at once. ``cluster = "local"`` runs the same jobs as processes of
    this machine (submitit's LocalExecutor): a trial of a cluster sweep file, and the tests."""

    name = "slurm"
    POLL_S = 1.0  # each job's result file is looked for at most this often

    @staticmethod
    def require(cluster: str) -> Any:
        """submitit, or the one-line error that says how to install it (or that this machine has no SLURM)."""
        try:
            import submitit
        except ImportError:
            raise SparseddError("the slurm executor needs submitit: pip install 'sparsedd[slurm]' (or submitit)") from None
        if cluster == "slurm" and shutil.which("srun") is None:  # as submitit decides; it would raise later
            raise SparseddError("the slurm executor needs SLURM's commands (srun, sbatch), which this machine lacks: "
                                "run the sweep on the cluster, or set the slurm option cluster = \"local\" to run "
                                "its jobs here")
        return submitit

    def __init__(self, work_dir: Path, threads: int, options: dict[str, Any]):
        submitit = self.require(options.get("cluster", "slurm"))
        from .slurm import submitit_parameters
        from .worker import SlurmTask

        self.work_dir = work_dir
        self.threads = threads
        self.folder = work_dir / "slurm"
        self.executor = submitit.AutoExecutor(folder=self.folder, cluster=options.get("cluster", "slurm"))
        self.executor.update_parameters(**submitit_parameters(options, f"sparsedd-{work_dir.name}"))
        self.function = SlurmTask()
        self.running: dict[str, tuple[Task, Any]] = {}
        self.last_poll = 0.0

    def start(self, task: Task) -> None:
        spec = dict(task.spec, threads=self.threads, buffer_index=True,
                    pid_file=str(self.work_dir / "pids" / f"{task.key}.pid"))
        try:
            job = self.executor.submit(self.function, spec)
        except Exception as e:  # noqa: BLE001 - sbatch said no (a partition, account or limit): the sweep stops
            raise SparseddError(f"SLURM refused the job of {task.label}: {_last_line(str(e))} (what was finished "
                                "is kept; fix the slurm options and run the same command again)") from None
        self.running[task.key] = (task, job)

    def poll(self) -> list[tuple[Task, bool, str, dict[str, Any] | None]]:
        if not self.running or time.monotonic() - self.last_poll < self.POLL_S:
            return []
        self.last_poll = time.monotonic()
        out = []
        for key, (task, job) in list(self.running.items()):
            if not job.done():
                continue
            del self.running[key]
            try:
                result = job.result()
            except Exception:  # noqa: BLE001 - the job died (killed, out of time or memory, a node lost): retried
                out.append((task, False, f"job {job.job_id} ended without a result (state {_state(job)}; its log: "
                                         f"{job.paths.stderr})", None))
                continue
            if "error" in result:
                out.append((task, False, result["error"], None))
            else:
                out.append((task, True, "", result))
        return out

    def close(self) -> None:
        """Cancel the jobs still queued or running (scancel); their stages keep their checkpoints. A job of
        ``cluster = "local"`` still there after ``STOP_WAIT_S`` is killed with its processes: submitit stops it
        by one SIGINT, which was seen lost under load (the job then ran to its end)."""
        jobs = [job for _, job in self.running.values()]
        for job in jobs:
            try:
                job.cancel(check=False)
            except Exception:  # noqa: BLE001 - a job that ended meanwhile, or no scancel here: nothing to stop
                pass
        self.running.clear()
        deadline = time.monotonic() + STOP_WAIT_S
        for proc in [p for job in jobs if (p := getattr(job, "_process", None)) is not None]:  # local jobs
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_tree(proc.pid)
                proc.wait()


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and every process under it (Linux: /proc; elsewhere the process alone), the
    parent first, so that it starts no new one."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for children in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo += [int(c) for c in children.read_text().split()]
            except (OSError, ValueError):  # a thread or process that ended meanwhile
                pass
    for p in found:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
