"""Waiting for a lock another process holds: said on the terminal, given up after a timeout.

Two locks are waited for. The index's (SQLite) is held for the milliseconds of one write, so a long
wait means a process is stuck inside a transaction: given up after ``SPARSEDD_INDEX_TIMEOUT``
seconds (default 60). A stage's (``flock``) is held while another process computes the stage, which
can take hours: given up after ``SPARSEDD_LOCK_TIMEOUT`` seconds (default 24 hours). Short waits
are silent; from one second on the wait is reported, then at 4, 16, 64 s... (each 4 times the last).
"""

from __future__ import annotations

import fcntl
import os
import time
from typing import IO

from ..errors import SparseddError, notice

INDEX_TIMEOUT = ("SPARSEDD_INDEX_TIMEOUT", 60.0)
STAGE_LOCK_TIMEOUT = ("SPARSEDD_LOCK_TIMEOUT", 24 * 3600.0)
FIRST_REPORT_S = 1.0


def timeout_s(setting: tuple[str, float]) -> float:
    """The timeout in seconds, from its environment variable or its default."""
    name, default = setting
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # NaN too
        raise SparseddError(f"{name}={text!r}: expected a number of seconds >= 0")
    return value


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Waiter:
    """One wait for ``what``: :meth:`pause` sleeps a little, reports the wait when it grows, and
    raises a one-line :class:`SparseddError` once ``setting``'s timeout has passed."""

    def __init__(self, what: str, setting: tuple[str, float], advice: str):
        self.what, self.setting, self.advice = what, setting, advice
        self.timeout = timeout_s(setting)
        self.start = time.monotonic()
        self.next_report = FIRST_REPORT_S
        self.delay = 0.01

    def pause(self, holder: str = "another process") -> None:
        waited = time.monotonic() - self.start
        if waited >= self.timeout:
            raise SparseddError(f"gave up waiting for {self.what} after {duration(waited)}: {holder} holds its lock; "
                                f"{self.advice} (or wait longer: {self.setting[0]}=SECONDS)")
        if waited >= self.next_report:
            notice(f"waiting for {self.what}: {holder} holds its lock (waited {duration(waited)}; giving up after "
                   f"{duration(self.timeout)}, {self.setting[0]})")
            self.next_report = 4 * waited
        time.sleep(max(0.0, min(self.delay, self.timeout - waited)))
        self.delay = min(2 * self.delay, 0.5)


def acquire(f: IO[str], what: str) -> None:
    """Take the exclusive ``flock`` of the open lock file ``f`` (a stage's), waiting as above, then
    write this process's id into it so that a process waiting for it can say who holds it."""
    waiter = Waiter(what, STAGE_LOCK_TIMEOUT, "if that process is stuck, stop it and run again")
    while True:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            waiter.pause(_holder(f))
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()


def _holder(f: IO[str]) -> str:
    f.seek(0)
    pid = f.read().strip()
    return f"process {pid}" if pid.isdigit() else "another process"


def held_by(path) -> str | None:
    """Who holds the ``flock`` of the lock file at ``path`` ("process N"); None when nobody does."""
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(f)
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return None
