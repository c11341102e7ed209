"""One sweep task (a run, or the dense stages runs share) in the process that executes it.

A task holds one run or several runs of one architecture and schedule, which then train level by
level together (batched where that pays). Local executor: ``python -m sparsedd.sweep.worker
TASK.json RESULT.json`` in a subprocess.
Ray executor: :func:`run_task` as a Ray task, with ``buffer_index`` set, so the index rows go back
to the driver instead of into an SQLite file on a shared file system. SLURM executor: a
:class:`SlurmTask` as a submitit job, likewise buffered.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from ..errors import reraise_interrupt


def task_options(task: dict[str, Any]):
    """The sweep's execution options as the driver sent them, with this task's thread count and no display."""
    from ..options import ExecOptions

    return ExecOptions.from_dict(task["options"]).replace(progress=False, threads=max(1, int(task.get("threads", 1))))


def run_task(task: dict[str, Any]) -> dict[str, Any]:
    from .. import config_load
    from ..experiments import run_many
    from ..store import Store
    from ..store.index import BufferedIndex

    if task.get("pid_file"):  # renamed into place: a reader never sees it empty (a flaky test did once)
        pid_file = Path(task["pid_file"])
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        partial = pid_file.with_name(pid_file.name + ".partial")
        partial.write_text(str(os.getpid()))
        os.replace(partial, pid_file)
    options = task_options(task)
    options.apply_threads(None)
    items = [(config_load.load(r.get("preset"), values=r["values"], seeds=r.get("seeds")), r.get("preset"))
             for r in task["runs"]]
    store = Store(task["root"], index=BufferedIndex() if task.get("buffer_index") else None)
    run_ids = run_many(items, store, options=options, dense_only=task.get("dense_only", False))
    calls = store.index.calls if task.get("buffer_index") else []
    return {"run_ids": run_ids, "index_calls": calls}


def one_line(e: Exception) -> str:
    """What the driver shows of a task's error: a SparseddError's message, else the exception's last line."""
    from ..errors import SparseddError

    if isinstance(e, SparseddError):
        return str(e)
    lines = [ln.strip() for ln in f"{type(e).__name__}: {e}".splitlines() if ln.strip()]
    return lines[-1]


def run_task_or_error(task: dict[str, Any]) -> dict[str, Any]:
    """:func:`run_task`, or ``{"error": one line}`` when it raises (the traceback printed to the task's log)."""
    try:
        return run_task(task)
    except Exception as e:  # noqa: BLE001 - reported to the driver, which retries or records it
        reraise_interrupt(e)  # stopped, not failed
        traceback.print_exc()
        return {"error": one_line(e)}


class SlurmTask:
    """A sweep task as a submitit job. Preempted, or at its time limit (SLURM's signal ahead of the
    end), it is requeued by submitit as the same job (``checkpoint``), and resumes from its stages'
    checkpoints; submitit requeues a job at most a few times, after which it fails and the driver retries it."""

    def __call__(self, task: dict[str, Any]) -> dict[str, Any]:
        return run_task_or_error(task)

    def checkpoint(self, task: dict[str, Any]) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, task)


def main(argv: list[str]) -> int:
    from ..errors import SparseddError

    task_file, result_file = argv
    task = json.loads(Path(task_file).read_text())
    try:
        result = run_task(task)
    except SparseddError as e:
        print(f"sparsedd: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - reported to the driver, which retries or records it
        reraise_interrupt(e)  # stopped, not failed
        traceback.print_exc()
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    tmp = Path(result_file).with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, result_file)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
