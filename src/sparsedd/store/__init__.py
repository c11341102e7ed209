"""The results store: content-addressed stage folders plus an SQLite index.

Layout under the root::

    index.sqlite              runs, run -> stage links, per-level and per-epoch metrics
    stages/<id>/stage.json    what the stage is (its key; the id is the key's hash)
    stages/<id>/checkpoint.pt while it trains; removed when it is done
    stages/<id>/final.pt      weights and mask at the end
    stages/<id>/done.json     metrics; written last, so its presence means "complete"
    runs/<id>/config.json     the run's full config

A stage is skipped when its done.json exists; the index rows are upserted, so replaying them is harmless.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Any, Iterator

from ..config import stable_hash
from .files import FileCheckpointer, load_tensors, read_json, save_tensors, write_json
from .index import Index


def default_root() -> Path:
    return Path(os.environ.get("SPARSEDD_ROOT") or "runs")


class Store:
    """``readonly``: a process that reads but never writes (the non-zero ranks of a distributed run)."""

    def __init__(self, root: str | Path | None = None, readonly: bool = False):
        self.root = Path(root) if root is not None else default_root()
        self.readonly = readonly
        self.index = Index(self.root / "index.sqlite", readonly)

    def exists(self) -> bool:
        return (self.root / "index.sqlite").exists()

    # --- stages
    @staticmethod
    def stage_id(key: dict[str, Any]) -> str:
        return stable_hash(key)

    def stage_dir(self, stage_id: str) -> Path:
        return self.root / "stages" / stage_id

    def is_done(self, stage_id: str) -> bool:
        return (self.stage_dir(stage_id) / "done.json").exists()

    def begin_stage(self, stage_id: str, key: dict[str, Any]) -> Path:
        d = self.stage_dir(stage_id)
        if self.readonly:
            return d
        if not (d / "stage.json").exists():
            write_json(d / "stage.json", key)
        for stale in d.glob(".*.tmp"):  # left by a write that was killed; never read
            stale.unlink(missing_ok=True)
        return d

    def finish_stage(self, stage_id: str, done: dict[str, Any]) -> None:
        if self.readonly:
            return
        write_json(self.stage_dir(stage_id) / "done.json", done)
        (self.stage_dir(stage_id) / "checkpoint.pt").unlink(missing_ok=True)

    def done_info(self, stage_id: str) -> dict[str, Any]:
        return read_json(self.stage_dir(stage_id) / "done.json")

    def checkpointer(self, stage_id: str, every_s: float = 60.0, epoch_every_s: float = 1.0) -> FileCheckpointer:
        return FileCheckpointer(self.stage_dir(stage_id) / "checkpoint.pt", every_s, epoch_every_s, self.readonly)

    def save(self, stage_id: str, name: str, obj: Any) -> None:
        if self.readonly:
            return
        save_tensors(self.stage_dir(stage_id) / name, obj)

    def load(self, stage_id: str, name: str) -> Any:
        return load_tensors(self.stage_dir(stage_id) / name)

    @contextlib.contextmanager
    def lock(self, stage_id: str) -> Iterator[None]:
        """Hold the stage's lock: another process wanting the same stage waits, then finds it done.

        An advisory ``flock`` on ``locks/STAGE.lock``; the kernel drops it when its process dies,
        so a killed worker never leaves a stage locked.
        """
        if self.readonly:
            yield
            return
        path = self.root / "locks" / f"{stage_id}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    # --- runs
    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    def register_run(self, run_id: str, config: dict[str, Any], preset: str | None, seeds: int, levels: int) -> None:
        if self.readonly:
            return
        write_json(self.run_dir(run_id) / "config.json", {"config": config, "preset": preset})
        self.index.upsert_run(run_id, config, preset, seeds, levels)


__all__ = ["Store", "FileCheckpointer", "Index", "default_root", "read_json", "write_json",
           "save_tensors", "load_tensors"]
