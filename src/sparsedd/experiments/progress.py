"""The progress display of a run: on a terminal, one bar for the whole run and one for the current
stage; elsewhere (a log file, a batch job, a GPU node without a terminal), one line per finished
stage with its time and the run's, so a log shows where the time goes."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any, Iterator, TextIO


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """A rich progress display (``mode="bar"``), log lines (``"lines"``) or nothing (``"off"``: a sweep
    worker, an analysis, ``--no-progress``). ``enabled`` picks the bar on a terminal, else the lines."""

    def __init__(self, enabled: bool, total_epochs: int, mode: str | None = None, out: TextIO | None = None):
        self.bar = None
        self.stage = None
        self.out = out
        self.total_epochs, self.done_epochs, self.skipped_epochs = total_epochs, 0, 0
        self.started = time.monotonic()
        self.mode = mode or ("off" if not enabled else "bar" if _terminal() else "lines")
        if self.mode == "bar":
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                           TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
            self.total = self.bar.add_task("all levels", total=total_epochs, info="")

    @contextlib.contextmanager
    def running(self) -> Iterator["Progress"]:
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
        self.done_epochs += advance_total
        if self.bar is not None:
            info = f"test {metrics['test_acc']:.2%}" if "test_acc" in metrics else ""  # (as the log lines)
            self.bar.update(self.stage, advance=1, info=info)
            self.bar.update(self.total, advance=advance_total)

    def skip(self, epochs: int) -> None:
        self.skipped_epochs += epochs
        if self.bar is not None:
            self.bar.update(self.total, advance=epochs)

    def finished(self, name: str, metrics: dict[str, Any], seconds: float, stacked: int = 1) -> None:
        """A stage is done: in line mode, one line with its result, its time, and the run's so far. A stage
        trained in one computation with others (``stacked`` networks) shows that computation's time."""
        if self.mode != "lines":
            return
        elapsed = time.monotonic() - self.started
        left = self.total_epochs - self.done_epochs - self.skipped_epochs
        eta = f", eta {_duration(elapsed / self.done_epochs * left)}" if self.done_epochs and left > 0 else ""
        test = metrics.get("test_acc")
        result = f"sparsity {metrics.get('sparsity', 0.0):.2%}" + (f", test {test:.2%}" if test is not None else "")
        took = _duration(seconds) if stacked == 1 else f"{_duration(seconds * stacked)} for {stacked} stacked"
        line = (f"[{time.strftime('%H:%M:%S')}] {name}: {result}, {took}; "
                f"epochs {self.done_epochs + self.skipped_epochs}/{self.total_epochs}, elapsed {_duration(elapsed)}{eta}")
        print(line, file=self.out or sys.stderr, flush=True)


def _terminal() -> bool:
    from rich.console import Console

    return Console().is_terminal


SILENT = Progress(False, 0)
