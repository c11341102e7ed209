"""The progress display of a run: one bar for the whole run and one for the current stage."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator


class Progress:
    """A rich progress display, or nothing when disabled (no terminal, a sweep worker, an analysis)."""

    def __init__(self, enabled: bool, total_epochs: int):
        self.bar = None
        self.stage = None
        if enabled:
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
        if self.bar is not None:
            info = f"test {metrics['test_acc']:.3f}" if "test_acc" in metrics else ""
            self.bar.update(self.stage, advance=1, info=info)
            self.bar.update(self.total, advance=advance_total)

    def skip(self, epochs: int) -> None:
        if self.bar is not None:
            self.bar.update(self.total, advance=epochs)


SILENT = Progress(False, 0)
