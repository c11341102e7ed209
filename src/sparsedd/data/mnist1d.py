"""MNIST-1D, generated offline by the ``mnist1d`` package and cached as a ``.pt`` file."""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .download import default_cache_dir
from .download import read_cache, write_cache

NUM_CLASSES = 10
NUM_TRAIN, NUM_TEST = 4000, 1000
CACHE_VERSION = 1


def _args(num_train: int, num_test: int) -> Any:
    import mnist1d.data

    args = mnist1d.data.get_dataset_args()
    # make_dataset draws num_samples // 10 per class: round up, then split ourselves below
    args.num_samples = -(-(num_train + num_test) // NUM_CLASSES) * NUM_CLASSES
    args.train_split = num_train / args.num_samples
    return args


def _cache_key(num_train: int, num_test: int, args: Any) -> str:
    d = {k: v for k, v in vars(args).items() if k != "url"}
    d.update(num_train=num_train, num_test=num_test, version=CACHE_VERSION)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _generate(num_train: int, num_test: int, args: Any) -> dict[str, torch.Tensor]:
    """Call ``make_dataset`` with the global RNG states saved and restored around it."""
    import mnist1d.data

    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    try:
        d = mnist1d.data.make_dataset(args)
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])
    x = np.concatenate([d["x"], d["x_test"]]).astype(np.float32)
    y = np.concatenate([d["y"], d["y_test"]]).astype(np.int64)
    n = num_train + num_test
    return {
        "x_train": torch.from_numpy(x[:num_train]), "y_train": torch.from_numpy(y[:num_train]),
        "x_test": torch.from_numpy(x[num_train:n]), "y_test": torch.from_numpy(y[num_train:n]),
    }


def _read_cache(path: Path, num_train: int, num_test: int) -> dict[str, torch.Tensor] | None:
    d = read_cache(path, "MNIST-1D", "generating the data again", unverified_ok=False)
    if d is None:
        return None
    try:
        ok = d["x_train"].shape == (num_train, 40) and d["x_test"].shape == (num_test, 40)
        return d if ok and len(d["y_train"]) == num_train and len(d["y_test"]) == num_test else None
    except Exception:  # missing or foreign file: regenerate
        return None


def _write_cache(path: Path, d: dict) -> None:
    write_cache(path, d, "MNIST-1D")


def load_mnist1d(num_train: int = 0, num_test: int = 0, *,
                 cache_dir: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """``num_train`` / ``num_test`` examples (0: 4000 / 1000), x float32 [N, 40], y int64."""
    num_train = num_train or NUM_TRAIN
    num_test = num_test or NUM_TEST
    args = _args(num_train, num_test)
    folder = Path(cache_dir if cache_dir is not None else default_cache_dir()) / "mnist1d"
    path = folder / f"mnist1d-{num_train}-{num_test}-{_cache_key(num_train, num_test, args)}.pt"
    d = _read_cache(path, num_train, num_test)
    if d is None:
        d = _generate(num_train, num_test, args)
        _write_cache(path, d)
    return d
