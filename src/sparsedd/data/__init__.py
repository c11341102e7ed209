"""Data sets as in-memory tensors: ``load_dataset(cfg)`` loads the data set registered as ``cfg.name``.

Label noise is not applied here: the caller applies :func:`sparsedd.data.noise.apply_noise`
to ``y_train`` (the clean labels), never to the test set; for asymmetric noise it passes
``dataset=ds.name`` and ``coarse=ds.coarse_train``, for the human noise types (CIFAR-10N / 100N)
``human=ds.human_train``, the published labels loaded with the data set. Augmentation is not
applied here either: ``Dataset.augment`` names the training augmentation (see :mod:`sparsedd.data.augment`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Callable

import torch

from ..config import DataConfig
from ..errors import SparseddError
from ..registry import Registry
from .download import default_cache_dir  # noqa: F401 (sparsedd.data.default_cache_dir: the cache root)


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
    # the published human labels of the training examples by noise type (CIFAR-N), loaded only for those
    # noise types; kept on the CPU, where label noise is applied
    human_train: dict[str, torch.Tensor] | None = None

    def to(self, device: str | torch.device) -> "Dataset":
        coarse = None if self.coarse_train is None else self.coarse_train.to(device)
        return Dataset(self.name, self.x_train.to(device), self.y_train.to(device),
                       self.x_test.to(device), self.y_test.to(device), self.num_classes,
                       coarse_train=coarse, augment=self.augment, human_train=self.human_train)


Folder = str | os.PathLike | None
Loader = Callable[..., dict[str, torch.Tensor]]


@dataclass(frozen=True)
class DatasetSpec:
    """What the code needs to know of a data set before (or without) loading it."""

    load: Loader  # (DataConfig, *, data_dir: Folder, cache_dir: Folder) -> x_train, y_train, x_test, y_test [, coarse_train]
    shape: tuple[int, ...]  # one input's shape, at the native image size
    classes: int
    num_train: int  # the full (or default) sizes, for data.num_train / num_test = 0
    num_test: int
    sizes: tuple[int, ...] = ()  # images: the sizes data.image_size may ask for, native first; (): not images
    augment: str = "none"  # what data.augment = default means

    @property
    def images(self) -> bool:
        return bool(self.sizes)

    def input_shape(self, image_size: int = 0) -> tuple[int, ...]:
        """One input's shape when loaded at ``image_size`` (0: native; ignored for data that are not images)."""
        return (*self.shape[:-2], image_size, image_size) if image_size and self.images else self.shape


DATASETS: Registry[DatasetSpec] = Registry("data set")


def spec_of(name: str) -> DatasetSpec:
    """The registered data set ``name``, or the user's own at the path ``name`` (:mod:`.files`: a .npz or
    .pt file, or an image folder), described from its header without loading it."""
    if name in DATASETS or not files.is_data_path(name):
        return DATASETS[name]
    facts = files.describe(name)
    side = facts["shape"][-1] if facts["images"] else 0
    return DatasetSpec(_load_file, shape=facts["shape"], classes=facts["classes"], num_train=facts["num_train"],
                       num_test=facts["num_test"], sizes=(side,) if side else ())


def _load_file(cfg: DataConfig, *, data_dir: Folder, cache_dir: Folder) -> dict[str, torch.Tensor]:
    return files.load(cfg.name, cfg.num_train, cfg.num_test)


def standard_augment(cfg: DataConfig) -> str:
    """The augmentation the trainer applies: ``cfg.augment`` with ``default`` resolved per data set
    (its registered ``augment``: crop-flip for cifar10, cifar100 and tinyimagenet, none for the others)."""
    spec = spec_of(cfg.name)
    if cfg.augment == "default":
        return spec.augment
    if cfg.augment == "crop-flip" and not spec.images:
        images = ", ".join(DATASETS.where(lambda s: s.images))
        raise SparseddError(
            f"data.augment = 'crop-flip' applies to images only ({images}), "
            f"not {cfg.name}; set data.augment to none or default"
        )
    return cfg.augment


def _check_image_size(cfg: DataConfig) -> None:
    spec = spec_of(cfg.name)
    if cfg.image_size and cfg.image_size not in spec.sizes:
        native = f"{cfg.name} images are {spec.sizes[0]}x{spec.sizes[0]}" if spec.images \
            else f"{cfg.name} is not an image data set"
        resizable = ", ".join(DATASETS.where(lambda s: len(s.sizes) > 1))
        raise SparseddError(
            f"data.image_size = {cfg.image_size} applies to {resizable} only ({native}); set data.image_size = 0"
        )


def load_dataset(cfg: DataConfig, *, data_dir: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> Dataset:
    """The data set ``cfg.name`` with clean labels, on ``device``; with the published human labels when
    ``cfg.noise_type`` is one of :data:`sparsedd.data.noise.HUMAN_NOISE`."""
    spec = spec_of(cfg.name)
    augment = standard_augment(cfg)
    _check_image_size(cfg)
    d = spec.load(cfg, data_dir=data_dir, cache_dir=cache_dir)
    human = None
    if cfg.noise_type in HUMAN_NOISE:  # a file of their own, fetched only when a run needs it
        human = cifarn.load_human_labels(cfg.name, d["y_train"], spec.classes, data_dir=data_dir, cache_dir=cache_dir)
    return Dataset(cfg.name, num_classes=spec.classes, augment=augment, human_train=human, **d).to(device)


def fingerprint(ds: Dataset) -> str:
    """The SHA-256 of a loaded data set's content: inputs and clean labels of both splits, and the superclasses
    and published human labels where loaded. Stage ids cover the data's configuration; this covers what
    was loaded under it, which a new release of a data generator or of numpy can change (the store keeps
    it per data key: :meth:`sparsedd.store.Store.check_data`). About 0.2 s for MNIST on one core."""
    parts = {"x_train": ds.x_train, "y_train": ds.y_train, "x_test": ds.x_test, "y_test": ds.y_test}
    if ds.coarse_train is not None:
        parts["coarse_train"] = ds.coarse_train
    parts.update({f"human_train/{k}": v for k, v in (ds.human_train or {}).items()})
    h = hashlib.sha256()
    for name in sorted(parts):
        array = parts[name].detach().cpu().contiguous().numpy()
        h.update(f"{name} {array.dtype} {array.shape}\n".encode())  # so that a reshape or a new dtype differs
        h.update(memoryview(array).cast("B"))
    return h.hexdigest()


# ----------------------------------------------------------------------------- the data sets

from . import cifar, cifarn, files, mnist, mnist1d, tinyimagenet  # noqa: E402
from .noise import HUMAN_NOISE  # noqa: E402


def _load_mnist(cfg: DataConfig, *, data_dir: Folder, cache_dir: Folder) -> dict[str, torch.Tensor]:
    return mnist.load_mnist(cfg.num_train, cfg.num_test, data_dir=data_dir, cache_dir=cache_dir)


def _load_mnist1d(cfg: DataConfig, *, data_dir: Folder, cache_dir: Folder) -> dict[str, torch.Tensor]:
    return mnist1d.load_mnist1d(cfg.num_train, cfg.num_test, cache_dir=cache_dir)  # generated, never in data_dir


def _cifar_loader(num_classes: int) -> Loader:
    def load(cfg: DataConfig, *, data_dir: Folder, cache_dir: Folder) -> dict[str, torch.Tensor]:
        return cifar.load_cifar(num_classes, cfg.num_train, cfg.num_test, data_dir=data_dir, cache_dir=cache_dir)
    return load


def _load_tinyimagenet(cfg: DataConfig, *, data_dir: Folder, cache_dir: Folder) -> dict[str, torch.Tensor]:
    return tinyimagenet.load_tinyimagenet(cfg.num_train, cfg.num_test, data_dir=data_dir, cache_dir=cache_dir,
                                          image_size=cfg.image_size or tinyimagenet.NATIVE_SIZE)


DATASETS.register("mnist", DatasetSpec(_load_mnist, shape=(1, 28, 28), classes=mnist.NUM_CLASSES,
                                       num_train=mnist.NUM_TRAIN, num_test=mnist.NUM_TEST, sizes=(28,)))
DATASETS.register("mnist1d", DatasetSpec(_load_mnist1d, shape=(40,), classes=mnist1d.NUM_CLASSES,
                                         num_train=mnist1d.NUM_TRAIN, num_test=mnist1d.NUM_TEST))
DATASETS.register("cifar10", DatasetSpec(_cifar_loader(10), shape=(3, 32, 32), classes=10, num_train=cifar.NUM_TRAIN,
                                         num_test=cifar.NUM_TEST, sizes=(32,), augment="crop-flip"))
DATASETS.register("cifar100", DatasetSpec(_cifar_loader(100), shape=(3, 32, 32), classes=100, num_train=cifar.NUM_TRAIN,
                                          num_test=cifar.NUM_TEST, sizes=(32,), augment="crop-flip"))
DATASETS.register("tinyimagenet", DatasetSpec(_load_tinyimagenet, shape=(3, 64, 64), classes=tinyimagenet.NUM_CLASSES,
                                              num_train=tinyimagenet.NUM_TRAIN, num_test=tinyimagenet.NUM_TEST,
                                              sizes=(tinyimagenet.NATIVE_SIZE, 32), augment="crop-flip"))
