"""The results store: content-addressed stage folders plus an SQLite index.

Layout under the root (the names are in :mod:`.paths`)::

    index.sqlite              runs, run -> stage links, per-level and per-epoch metrics
    stages/<id>/stage.json    what the stage is (its key; the id is the key's hash)
    stages/<id>/checkpoint.pt while it trains; removed when it is done
    stages/<id>/final.pt      weights and mask at the end
    stages/<id>/done.json     metrics; written last, so its presence means "complete"
    runs/<id>/config.json     the run's full config

A stage is skipped when its done.json exists; the index rows are upserted, so replaying them is harmless.
Other packages read and write these files only through :class:`Store`'s methods.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Any, Iterator

import torch

from ..config import stable_hash
from .files import FileCheckpointer, load_tensors, read_json, save_tensors, write_json
from .index import Index
from .paths import (BATCH_POINTER, BATCH_RESULT, CHECKPOINT, DONE, FINAL, INDEX, INIT, LABELS, LOCKS, MIGRATIONS, REWIND,
                    RUN_CONFIG, RUNS, STAGE_KEY, STAGES)

StateDict = dict[str, torch.Tensor]


def default_root() -> Path:
    return Path(os.environ.get("SPARSEDD_ROOT") or "runs")


class Store:
    """``readonly``: a process that reads but never writes (the non-zero ranks of a distributed run)."""

    def __init__(self, root: str | Path | None = None, readonly: bool = False):
        self.root = Path(root) if root is not None else default_root()
        self.readonly = readonly
        self.index = Index(self.root / INDEX, readonly)

    # --- stages
    @staticmethod
    def stage_id(key: dict[str, Any]) -> str:
        return stable_hash(key)

    def stage_dir(self, stage_id: str) -> Path:
        return self.root / STAGES / stage_id

    def is_done(self, stage_id: str) -> bool:
        return (self.stage_dir(stage_id) / DONE).exists()

    def begin_stage(self, stage_id: str, key: dict[str, Any]) -> Path:
        d = self.stage_dir(stage_id)
        if self.readonly:
            return d
        if not (d / STAGE_KEY).exists():
            write_json(d / STAGE_KEY, key)
        for stale in d.glob(".*.tmp"):  # left by a write that was killed; never read
            stale.unlink(missing_ok=True)
        return d

    def finish_stage(self, stage_id: str, done: dict[str, Any]) -> None:
        if self.readonly:
            return
        write_json(self.stage_dir(stage_id) / DONE, done)
        (self.stage_dir(stage_id) / CHECKPOINT).unlink(missing_ok=True)

    def done_info(self, stage_id: str) -> dict[str, Any]:
        return read_json(self.stage_dir(stage_id) / DONE)

    def stage_key(self, stage_id: str) -> dict[str, Any]:
        """What the stage is (the key its id hashes)."""
        return read_json(self.stage_dir(stage_id) / STAGE_KEY)

    def stage_ids(self) -> list[str]:
        """Every stage folder of the store, sorted."""
        folder = self.root / STAGES
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    # --- one-time corrections of stores written by earlier versions
    def migrated(self) -> list[str]:
        path = self.root / MIGRATIONS
        return read_json(path)["applied"] if path.exists() else []

    def mark_migrated(self, name: str) -> None:
        if not self.readonly:
            write_json(self.root / MIGRATIONS, {"applied": sorted({*self.migrated(), name})})

    def checkpointer(self, stage_id: str, every_s: float = 60.0, epoch_every_s: float = 1.0) -> FileCheckpointer:
        return FileCheckpointer(self.stage_dir(stage_id) / CHECKPOINT, every_s, epoch_every_s, self.readonly)

    def _save(self, stage_id: str, name: str, obj: Any) -> None:
        if self.readonly:
            return
        save_tensors(self.stage_dir(stage_id) / name, obj)

    def _load(self, stage_id: str, name: str) -> Any:
        return load_tensors(self.stage_dir(stage_id) / name)

    # --- the files of a stage
    def save_final(self, stage_id: str, model: StateDict, mask: StateDict | None = None, optim: Any = None) -> None:
        """The weights at the end; a trained stage's with its mask and optimizer state (an analysis
        that retrains keeps the weights only)."""
        final = {"model": model} if mask is None else {"model": model, "mask": mask, "optim": optim}
        self._save(stage_id, FINAL, final)

    def final(self, stage_id: str) -> dict[str, Any]:
        """``{"model": ...}``, with ``"mask"`` and ``"optim"`` where :meth:`save_final` got them."""
        return self._load(stage_id, FINAL)

    def save_init(self, stage_id: str, model: StateDict) -> None:
        self._save(stage_id, INIT, {"model": model})

    def has_init(self, stage_id: str) -> bool:
        return (self.stage_dir(stage_id) / INIT).exists()

    def init(self, stage_id: str) -> StateDict:
        return self._load(stage_id, INIT)["model"]

    def save_labels(self, stage_id: str, labels: torch.Tensor, chosen: torch.Tensor, corrupted: torch.Tensor,
                    effective_rate: float) -> None:
        """The dense stage's noisy training labels, the examples drawn and those whose label changed."""
        self._save(stage_id, LABELS, {"labels": labels, "chosen": chosen, "corrupted": corrupted,
                                      "effective_rate": torch.tensor(effective_rate)})

    def labels(self, stage_id: str) -> dict[str, torch.Tensor]:
        return self._load(stage_id, LABELS)

    def save_rewind(self, stage_id: str, model: StateDict) -> None:
        self._save(stage_id, REWIND, {"model": model})

    def rewind(self, stage_id: str) -> StateDict:
        return self._load(stage_id, REWIND)["model"]

    # --- batches: stages trained together save their outcomes in the batch's folder first
    def point_to_batch(self, stage_id: str, batch_id: str) -> None:
        """Record that ``stage_id`` trains in batch ``batch_id``, so a resumed run finds its outcome."""
        if self.readonly:
            return
        write_json(self.stage_dir(stage_id) / BATCH_POINTER, {"batch": batch_id})

    def batch_of(self, stage_id: str) -> str | None:
        pointer = self.stage_dir(stage_id) / BATCH_POINTER
        return read_json(pointer)["batch"] if pointer.exists() else None

    def save_batch_result(self, batch_id: str, outcomes: dict[str, dict[str, Any]]) -> None:
        """Every member stage's outcome (weights, history, final metrics, optimizer state, seconds) by stage id."""
        self._save(batch_id, BATCH_RESULT, outcomes)

    def batch_result(self, batch_id: str) -> dict[str, dict[str, Any]] | None:
        """What :meth:`save_batch_result` saved; None while the batch has not finished."""
        path = self.stage_dir(batch_id) / BATCH_RESULT
        return load_tensors(path) if path.exists() else None

    @contextlib.contextmanager
    def lock(self, stage_id: str) -> Iterator[None]:
        """Hold the stage's lock: another process wanting the same stage waits, then finds it done.

        An advisory ``flock`` on ``locks/STAGE.lock``; the kernel drops it when its process dies,
        so a killed worker never leaves a stage locked.
        """
        if self.readonly:
            yield
            return
        path = self.root / LOCKS / f"{stage_id}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    # --- runs
    def run_dir(self, run_id: str) -> Path:
        return self.root / RUNS / run_id

    def register_run(self, run_id: str, config: dict[str, Any], preset: str | None, seeds: int, levels: int) -> None:
        if self.readonly:
            return
        write_json(self.run_dir(run_id) / RUN_CONFIG, {"config": config, "preset": preset})
        self.index.upsert_run(run_id, config, preset, seeds, levels)

    def run_config(self, run_id: str) -> dict[str, Any]:
        """The run's full config as registered (what ``config.from_dict`` reads)."""
        return read_json(self.run_dir(run_id) / RUN_CONFIG)["config"]


__all__ = ["Store", "FileCheckpointer", "Index", "default_root", "read_json", "write_json",
           "save_tensors", "load_tensors"]
