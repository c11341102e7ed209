"""Data sets as in-memory tensors: ``load_dataset(cfg)`` dispatches on ``cfg.name``.

Label noise is not applied here: the caller applies :func:`sparsedd.data.noise.apply_noise`
to ``y_train`` (the clean labels), never to the test set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import DataConfig
from ..errors import SparseddError


@dataclass
class Dataset:
    name: str
    x_train: torch.Tensor  # float32
    y_train: torch.Tensor  # int64, the clean labels
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    def to(self, device: str | torch.device) -> "Dataset":
        return Dataset(self.name, self.x_train.to(device), self.y_train.to(device),
                       self.x_test.to(device), self.y_test.to(device), self.num_classes)


def default_cache_dir() -> Path:
    """$SPARSEDD_CACHE, else $XDG_CACHE_HOME/sparsedd, else ~/.cache/sparsedd."""
    if os.environ.get("SPARSEDD_CACHE"):
        return Path(os.environ["SPARSEDD_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "sparsedd"
    return Path.home() / ".cache" / "sparsedd"


def check_size(dataset: str, key: str, asked: int, available: int) -> int:
    """The number of examples to take: ``asked``, or all of them when 0."""
    if asked > available:
        raise SparseddError(
            f"data.{key} = {asked} but {dataset} has only {available}; ask for at most {available} (0: all)"
        )
    return asked or available


def load_dataset(cfg: DataConfig, *, data_dir: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> Dataset:
    """The data set ``cfg.name`` with clean labels, on ``device``."""
    if cfg.name == "mnist":
        from .mnist import NUM_CLASSES, load_mnist

        d = load_mnist(cfg.num_train, cfg.num_test, data_dir=data_dir, cache_dir=cache_dir)
    elif cfg.name == "mnist1d":
        from .mnist1d import NUM_CLASSES, load_mnist1d

        d = load_mnist1d(cfg.num_train, cfg.num_test, cache_dir=cache_dir)
    else:
        raise SparseddError(f"unknown data set {cfg.name!r}; choose mnist or mnist1d")
    return Dataset(cfg.name, num_classes=NUM_CLASSES, **d).to(device)
