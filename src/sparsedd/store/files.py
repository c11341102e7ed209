"""Atomic file writes (write a temporary file, fsync, rename) and safe checkpoint loading."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    data = json.dumps(obj, indent=1, sort_keys=True).encode()
    _atomic_write(path, lambda f: f.write(data))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def save_tensors(path: Path, obj: Any) -> None:
    _atomic_write(path, lambda f: torch.save(obj, f))


def load_tensors(path: Path, device: str | torch.device = "cpu") -> Any:
    return torch.load(path, map_location=device, weights_only=True)


class FileCheckpointer:
    """Checkpoints of one training stage in one file.

    Saves at the end of an epoch when ``epoch_every_s`` seconds have passed since the last save
    (0: every epoch) and inside an epoch when ``every_s`` have (for long epochs).
    """

    def __init__(self, path: Path, every_s: float = 60.0, epoch_every_s: float = 1.0, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        self.every_s = every_s
        self.epoch_every_s = epoch_every_s
        self._last = time.monotonic()
        self._loaded: dict[str, Any] | None = None  # the last state read, until the next save

    def load(self) -> dict[str, Any] | None:
        """The saved state; read from disk once, then kept until the next save."""
        if self._loaded is None and self.path.exists():
            self._loaded = load_tensors(self.path)
        return self._loaded

    def due(self, end_of_epoch: bool) -> bool:
        if self.readonly:
            return False
        wait = self.epoch_every_s if end_of_epoch else self.every_s
        return time.monotonic() - self._last >= wait

    def save(self, state: dict[str, Any]) -> None:
        self._loaded = None
        save_tensors(self.path, state)
        self._last = time.monotonic()

    def clear(self) -> None:
        self._loaded = None
        if not self.readonly:
            self.path.unlink(missing_ok=True)
