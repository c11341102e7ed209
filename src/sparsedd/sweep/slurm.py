"""The sbatch options of a sweep run on SLURM: the ``[slurm]`` table of a sweep file, and
``sparsedd sweep --slurm KEY=VALUE`` (repeatable, over the table), checked before anything runs.

    [slurm]
    partition = "gpu"
    time = "4:00:00"              # per task: minutes, or [D-]HH:MM[:SS] (default 60)
    gpus_per_node = 1
    cpus_per_task = 4             # also the task's torch threads unless --threads says
    mem_gb = 16
    account = "my-lab"
    qos = "normal"
    setup = ["module load cuda", "source ~/sparsedd/.venv/bin/activate"]   # lines run before the task
    [slurm.additional_parameters]                                          # any other sbatch option
    reservation = "dd-study"

The table says how to execute, not what to compute: it enters no run or sweep id, and the other
executors ignore it (one file runs locally and on a cluster).
"""

from __future__ import annotations

import datetime
import math
import re
import tomllib
from typing import Any

from ..config import brief, check_number
from ..errors import SparseddError

DEFAULT_MINUTES = 60  # submitit's own default would be 5
MAX_MINUTES = 366 * 24 * 60
CLUSTERS = ("slurm", "local")  # local: submitit's LocalExecutor, the same jobs as processes of this machine

# key -> (what it holds, submitit's parameter name (AutoExecutor: generic, or slurm_ for SLURM only))
KEYS: dict[str, tuple[str, str]] = {
    "partition": ("str", "slurm_partition"),
    "time": ("time", "timeout_min"),
    "gpus_per_node": ("count", "gpus_per_node"),
    "cpus_per_task": ("positive", "cpus_per_task"),
    "mem_gb": ("amount", "mem_gb"),
    "account": ("str", "slurm_account"),
    "qos": ("str", "slurm_qos"),
    "constraint": ("str", "slurm_constraint"),
    "exclude": ("str", "slurm_exclude"),
    "job_name": ("str", "name"),
    "setup": ("lines", "slurm_setup"),
    "additional_parameters": ("table", "slurm_additional_parameters"),
    "cluster": ("cluster", ""),
}


def minutes(key: str, value: Any) -> int:
    """A SLURM time limit in whole minutes (rounded up): an integer of minutes, or a text in one of sbatch's
    forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    if isinstance(value, int) and not isinstance(value, bool):
        total = value * 60
    elif isinstance(value, datetime.time):  # TOML reads 04:00:00 unquoted as a time of day
        total = (value.hour * 60 + value.minute) * 60 + value.second
    elif isinstance(value, str) and (m := re.fullmatch(r"(?:(\d{1,4})-)?(\d{1,6})(?::(\d{1,6}))?(?::(\d{1,6}))?",
                                                          value.strip())):
        days, parts = m.group(1), [int(p) for p in m.group(2, 3, 4) if p is not None]
        if days is not None:
            h, mi, s = (parts + [0, 0])[:3]
            total = ((int(days) * 24 + h) * 60 + mi) * 60 + s
        else:
            scale = {1: (60,), 2: (60, 1), 3: (3600, 60, 1)}[len(parts)]
            total = sum(p * f for p, f in zip(parts, scale))
    else:
        raise SparseddError(f"slurm {key} must be minutes or a time like \"4:00:00\" or \"1-12:00\", got {brief(value)}")
    result = math.ceil(total / 60)
    if not 1 <= result <= MAX_MINUTES:
        raise SparseddError(f"slurm {key} must be between 1 minute and {MAX_MINUTES // (24 * 60)} days, "
                            f"got {brief(value)}")
    return result


def _value(key: str, kind: str, value: Any) -> Any:
    if kind == "str":
        if not isinstance(value, (str, int)) or isinstance(value, bool) or str(value).strip() == "":
            raise SparseddError(f"slurm {key} must be a non-empty string, got {brief(value)}")
        return str(value)
    if kind in ("count", "positive", "amount"):
        number = isinstance(value, int) or (kind == "amount" and isinstance(value, float))
        least = {"count": 0, "positive": 1}.get(kind, 0)
        if isinstance(value, bool) or not number or not (value >= least if kind != "amount" else value > 0):
            what = f"an integer >= {least}" if kind != "amount" else "a number > 0"
            raise SparseddError(f"slurm {key} must be {what}, got {brief(value)}")
        check_number(f"slurm {key}", value)
        return value
    if kind == "time":
        return minutes(key, value)
    if kind == "lines":
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SparseddError(f"slurm {key} must be a list of shell lines, got {brief(value)}")
        return list(value)
    if kind == "cluster":
        if value not in CLUSTERS:
            raise SparseddError(f"slurm {key} must be one of {', '.join(CLUSTERS)}, got {brief(value)}")
        return value
    if not isinstance(value, dict) or not all(isinstance(v, (str, int, float, bool)) for v in value.values()):
        raise SparseddError(f"slurm {key} must be a table of sbatch options (name = value), got {brief(value)}")
    return {str(k): v for k, v in value.items()}


def check(table: Any, where: str) -> dict[str, Any]:
    """The ``[slurm]`` table, each value checked and in its canonical form (time in minutes); a one-line
    error naming ``where`` for an unknown key or a bad value."""
    if not isinstance(table, dict):
        raise SparseddError(f"{where}: [slurm] must be a table of sbatch options")
    out = {}
    for key, value in table.items():
        if key not in KEYS:
            raise SparseddError(f"{where}: unknown slurm option {brief(key)}; the options are {', '.join(KEYS)}")
        try:
            out[key] = _value(key, KEYS[key][0], value)
        except SparseddError as e:
            raise SparseddError(f"{where}: {e}") from None
    return out


def parse_flags(items: list[str]) -> dict[str, Any]:
    """``--slurm KEY=VALUE`` items as a table: a value is read as TOML where it is one (``4``, ``true``,
    ``["a", "b"]``), else as text; ``additional_parameters.NAME=VALUE`` sets one sbatch option."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SparseddError(f"--slurm expects KEY=VALUE, got {brief(item)}")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except (tomllib.TOMLDecodeError, RecursionError):
            value = text.strip()
        head, dot, name = key.partition(".")
        if dot and head == "additional_parameters" and name:
            out.setdefault(head, {})[name] = value
        else:
            out[key] = value
    return out


def merged(table: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """The sweep file's table with the command line's options over it (``additional_parameters`` by name)."""
    out = {**table, **flags}
    if isinstance(table.get("additional_parameters"), dict) and isinstance(flags.get("additional_parameters"), dict):
        out["additional_parameters"] = {**table["additional_parameters"], **flags["additional_parameters"]}
    return out


def submitit_parameters(options: dict[str, Any], name: str) -> dict[str, Any]:
    """The checked options as ``submitit.AutoExecutor.update_parameters`` keywords."""
    params: dict[str, Any] = {"name": name, "timeout_min": DEFAULT_MINUTES}
    for key, value in options.items():
        if KEYS[key][1]:
            params[KEYS[key][1]] = value
    return params
