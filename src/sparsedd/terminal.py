"""The consoles sparsedd prints through: rich's, as wide as the terminal; where the output is a file or a
pipe (a log, a batch job, ``| grep``), wide enough for whole tables, which rich would otherwise cut at 80
columns with an ellipsis (run ids, presets and settings of ``ls`` among them)."""

from __future__ import annotations

import os
import sys
from typing import Any

from rich.console import Console

PIPE_WIDTH = 240  # columns where there is no terminal to ask (COLUMNS, when set, is taken instead)


def console(stderr: bool = False, **options: Any) -> Console:
    """A rich Console on stdout (or ``stderr``), with rich's ``options``, for tables and lines (not for
    ``Console.log``, which pads each line to the width)."""
    found = Console(stderr=stderr, **options)
    stream = sys.stderr if stderr else sys.stdout
    tty = getattr(stream, "isatty", lambda: False)()  # (not is_terminal: FORCE_COLOR makes a pipe one, 80 wide)
    if tty or os.environ.get("COLUMNS") or "width" in options:
        return found
    return Console(stderr=stderr, width=PIPE_WIDTH, **options)
