"""The consoles sparsedd prints through: rich's, as wide as the terminal; where the output is a file or a
pipe (a log, a batch job, ``| grep``), wide enough for whole tables, which rich would otherwise cut at 80
columns with an ellipsis (run ids, presets and settings of ``ls`` among them)."""

from __future__ import annotations

import os
from typing import Any

from rich.console import Console

PIPE_WIDTH = 240  # columns where there is no terminal to ask (COLUMNS, when set, is taken instead)


def console(stderr: bool = False, **options: Any) -> Console:
    """A rich Console on stdout (or ``stderr``), with rich's ``options``."""
    found = Console(stderr=stderr, **options)
    if found.is_terminal or os.environ.get("COLUMNS") or "width" in options:
        return found
    return Console(stderr=stderr, width=PIPE_WIDTH, **options)
