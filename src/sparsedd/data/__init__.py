"""Data sets as in-memory tensors: ``load_dataset(cfg)`` dispatches on ``cfg.name``.

Label noise is not applied here: the caller applies :func:`sparsedd.data.noise.apply_noise`
to ``y_train`` (the clean labels), never to the test set; for asymmetric noise it passes
``dataset=ds.name`` and ``coarse=ds.coarse_train``. Augmentation is not applied here either:
``Dataset.augment`` names the training augmentation (see :mod:`sparsedd.data.augment`).
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
    coarse_train: torch.Tensor | None = None  # int64 superclass of each training example (CIFAR-100)
    augment: str = "none"  # the training augmentation: none or crop-flip

    def to(self, device: str | torch.device) -> "Dataset":
        coarse = None if self.coarse_train is None else self.coarse_train.to(device)
        return Dataset(self.name, self.x_train.to(device), self.y_train.to(device),
                       self.x_test.to(device), self.y_test.to(device), self.num_classes,
                       coarse_train=coarse, augment=self.augment)


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


IMAGE_DATASETS = ("mnist", "cifar10", "cifar100", "tinyimagenet")
NATIVE_SIZE = {"mnist": 28, "cifar10": 32, "cifar100": 32, "tinyimagenet": 64}


def standard_augment(cfg: DataConfig) -> str:
    """The augmentation the trainer applies: ``cfg.augment`` with ``default`` resolved per data set.

    default: crop-flip for cifar10, cifar100 and tinyimagenet, none for mnist and mnist1d.
    """
    if cfg.augment == "default":
        return "crop-flip" if cfg.name in ("cifar10", "cifar100", "tinyimagenet") else "none"
    if cfg.augment == "crop-flip" and cfg.name not in IMAGE_DATASETS:
        raise SparseddError(
            f"data.augment = 'crop-flip' applies to images only ({', '.join(IMAGE_DATASETS)}), "
            f"not {cfg.name}; set data.augment to none or default"
        )
    return cfg.augment


def _check_image_size(cfg: DataConfig) -> None:
    if cfg.image_size and cfg.name != "tinyimagenet" and cfg.image_size != NATIVE_SIZE.get(cfg.name):
        native = f"{cfg.name} images are {NATIVE_SIZE[cfg.name]}x{NATIVE_SIZE[cfg.name]}" if cfg.name in NATIVE_SIZE \
            else f"{cfg.name} is not an image data set"
        raise SparseddError(
            f"data.image_size = {cfg.image_size} applies to tinyimagenet only ({native}); set data.image_size = 0"
        )


def load_dataset(cfg: DataConfig, *, data_dir: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> Dataset:
    """The data set ``cfg.name`` with clean labels, on ``device``."""
    augment = standard_augment(cfg)
    _check_image_size(cfg)
    if cfg.name == "mnist":
        from .mnist import NUM_CLASSES, load_mnist

        d = load_mnist(cfg.num_train, cfg.num_test, data_dir=data_dir, cache_dir=cache_dir)
    elif cfg.name == "mnist1d":
        from .mnist1d import NUM_CLASSES, load_mnist1d

        d = load_mnist1d(cfg.num_train, cfg.num_test, cache_dir=cache_dir)
    elif cfg.name in ("cifar10", "cifar100"):
        from .cifar import load_cifar

        NUM_CLASSES = 10 if cfg.name == "cifar10" else 100
        d = load_cifar(NUM_CLASSES, cfg.num_train, cfg.num_test, data_dir=data_dir, cache_dir=cache_dir)
    elif cfg.name == "tinyimagenet":
        from .tinyimagenet import NUM_CLASSES, load_tinyimagenet

        d = load_tinyimagenet(cfg.num_train, cfg.num_test, data_dir=data_dir, cache_dir=cache_dir,
                              image_size=cfg.image_size or 64)
    else:
        raise SparseddError(f"unknown data set {cfg.name!r}; choose mnist, mnist1d, cifar10, cifar100 or tinyimagenet")
    return Dataset(cfg.name, num_classes=NUM_CLASSES, augment=augment, **d).to(device)


# ----------------------------------------------------------------------------- shared by the loaders


def candidates(name: str, data_dir: str | os.PathLike | None, cache_dir: str | os.PathLike | None) -> list[Path]:
    """The folders searched for data set ``name``, in order: data_dir/name, $SPARSEDD_DATA/name, the cache's."""
    out = []
    if data_dir is not None:
        out.append(Path(data_dir) / name)
    if os.environ.get("SPARSEDD_DATA"):
        out.append(Path(os.environ["SPARSEDD_DATA"]) / name)
    out.append(Path(cache_dir if cache_dir is not None else default_cache_dir()) / name)
    return out


def verify_file(path: Path, md5: str) -> None:
    """SparseddError unless the raw bytes of ``path`` have this md5 (streamed, not loaded at once)."""
    from .download import md5_of

    try:
        ok = md5_of(path) == md5
    except OSError as e:
        raise SparseddError(f"cannot read {path} ({' '.join(str(e).split())}); check its permissions and run again") from None
    if not ok:
        raise SparseddError(
            f"checksum mismatch for {path}: the file is corrupt; delete it and run again to re-download it"
        )


def download_archive(urls: list[str], dest: Path, md5: str) -> Path:
    """Download an archive whose published md5 is that of the archive file itself."""
    from .download import download

    return download(urls, dest, md5, raw=True)

