"""Speed decisions measured once on this machine and cached (JSON in the data cache folder).

A key names everything the measurement depends on (implementation version, torch version,
device, the processor's or card's name, thread count, shapes), so a change of any of them measures
again; a cache folder shared by several machines (a home folder on a cluster) keeps each kind's own. The cache is written
atomically; a read-only or corrupt cache only costs a new measurement.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
from pathlib import Path
from typing import Any, Callable

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a wall-clock reading covers it (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cache_path(name: str, cache_dir: str | None = None) -> Path:
    from ..data import default_cache_dir

    if cache_dir is None:
        return Path(default_cache_dir()) / f"{name}.json"
    path = Path(cache_dir)
    return path if path.suffix == ".json" else path / f"{name}.json"


def machine_key(device: torch.device, *parts: Any) -> str:
    return "|".join([torch.__version__, str(device), hardware_name(device), f"threads={torch.get_num_threads()}",
                     *map(str, parts)])


def hardware_name(device: torch.device) -> str:
    """The card's name for a GPU, the processor's model for the CPU ("cpu" alone says nothing)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


@functools.cache
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cached(name: str, key: str, measure: Callable[[], dict[str, Any]], cache_dir: str | None = None,
           remeasure: bool = False, fields: dict[str, type | tuple[type, ...]] | None = None) -> dict[str, Any]:
    """``measure()``'s result for ``key``, measured once per machine and kept in the cache file ``name``. An
    entry is used only where it has ``fields`` (name -> type): a cache file damaged into other JSON, or edited,
    is measured again and written anew, never a traceback or a wrong choice."""
    path = cache_path(name, cache_dir)
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        table = {}
    if not isinstance(table, dict):
        table = {}
    entry = table.get(key)
    whole = isinstance(entry, dict) and all(isinstance(entry.get(f), t) for f, t in (fields or {}).items())
    if whole and not remeasure:
        return entry
    found = measure()
    table[key] = found
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass
    return found


@contextlib.contextmanager
def threads(count: int | None):
    """torch's CPU threads set to ``count`` inside the block (None: unchanged), then restored."""
    before = torch.get_num_threads()
    if count is not None and count != before:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def interleaved_medians(timers: dict[str, Callable[[], float]], rounds: int = 3) -> dict[str, float]:
    """Each timer's median over ``rounds`` rounds, the timers taking turns within a round: a load that
    comes and goes while a decision is measured slows all candidates alike, rather than deciding for
    the one timed while it lasted."""
    import statistics

    times: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(rounds):
        for name, timer in timers.items():
            times[name].append(timer())
    return {name: statistics.median(v) for name, v in times.items()}
