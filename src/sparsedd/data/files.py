"""A user's own data set, named by its path in ``data.name``: tensors in a ``.npz`` or ``.pt`` file, or a
folder of images.

- ``.npz`` / ``.pt``: arrays ``x_train``, ``y_train``, ``x_test``, ``y_test`` (inputs ``[N, ...]``, integer
  labels ``[N]`` from 0); a ``.pt`` file is a dict of tensors, read with ``weights_only=True``. Integer
  inputs (``uint8`` images) are divided by 255; float inputs are taken as they are.
- a folder: ``train/<class>/<image>`` and ``test/<class>/<image>`` (the class folders named alike in both;
  their sorted names are the classes 0, 1, ...), images of one size, in [0, 1]: grey (one channel) when
  the first training image is, RGB otherwise (the others converted alike).

A path is a name that contains a ``/`` or ends in ``.npz`` or ``.pt`` (``./mine`` for a folder here), so it
never shadows a registered data set. What is known before loading (shape, classes, sizes) is read from
the file's header or the first image; the content is verified by the store's data fingerprint like every
data set's, so a file changed under the same path is refused by a store made with the old one.
"""

from __future__ import annotations

import functools
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import SparseddError
from .download import check_size

ARRAYS = ("x_train", "y_train", "x_test", "y_test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def is_data_path(name: str) -> bool:
    return "/" in name or name.endswith((".npz", ".pt"))


def describe(name: str) -> dict[str, Any]:
    """shape (one input's), classes, num_train, num_test and whether the inputs are images; a one-line
    error for a path that is missing or not a data set in one of the forms above."""
    path = Path(name).expanduser()
    stamp = path.stat().st_mtime_ns if path.exists() else None
    return _describe(str(path.resolve()) if path.exists() else name, stamp)


@functools.lru_cache(maxsize=32)
def _describe(name: str, stamp: int | None) -> dict[str, Any]:
    path = Path(name)
    if stamp is None:
        raise SparseddError(f"data.name = {name!r} names a path that does not exist; give a .npz or .pt file or an "
                            f"image folder (train/<class>/..., test/<class>/...)")
    if path.is_dir():
        train, test = _image_files(path, "train"), _image_files(path, "test")
        c, h, w = _image_array(train[0][0], None).shape
        return {"shape": (c, h, w), "classes": len(_classes(path)), "num_train": len(train), "num_test": len(test),
                "images": True}
    arrays = _read_arrays(path)
    shape = tuple(arrays["x_train"].shape[1:])
    labels = np.concatenate([np.asarray(arrays["y_train"]), np.asarray(arrays["y_test"])])
    return {"shape": shape, "classes": int(labels.max()) + 1 if labels.size else 0,
            "num_train": len(arrays["y_train"]), "num_test": len(arrays["y_test"]), "images": len(shape) == 3}


def load(name: str, num_train: int, num_test: int) -> dict[str, torch.Tensor]:
    """The first ``num_train`` / ``num_test`` examples (0: all) as float inputs and int64 labels."""
    facts = describe(name)
    n_train = check_size(name, "num_train", num_train, facts["num_train"])
    n_test = check_size(name, "num_test", num_test, facts["num_test"])
    path = Path(name).expanduser()
    if path.is_dir():
        out = {}
        for split, n in (("train", n_train), ("test", n_test)):
            files = _image_files(path, split)[:n]
            out[f"x_{split}"] = torch.stack([_image_of_shape(f, facts["shape"]) for f, _ in files])
            out[f"y_{split}"] = torch.tensor([label for _, label in files], dtype=torch.int64)
        return out
    arrays = _read_arrays(path)
    return {"x_train": _inputs(arrays["x_train"][:n_train]), "y_train": _labels(arrays["y_train"][:n_train], name),
            "x_test": _inputs(arrays["x_test"][:n_test]), "y_test": _labels(arrays["y_test"][:n_test], name)}


def _read_arrays(path: Path) -> dict[str, Any]:
    """The four arrays of a .npz or .pt file, checked for presence and agreeing lengths."""
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        elif path.suffix == ".pt":
            arrays = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise SparseddError(f"data.name = {str(path)!r} is a file but not .npz or .pt; give one of those or an "
                                f"image folder")
    except (OSError, ValueError, zipfile.BadZipFile, RuntimeError, EOFError) as e:
        raise SparseddError(f"cannot read data file {path} ({' '.join(str(e).split()) or type(e).__name__}); "
                            f"it must hold {', '.join(ARRAYS)}") from None
    if not isinstance(arrays, dict) or any(k not in arrays for k in ARRAYS):
        have = ", ".join(sorted(arrays)) if isinstance(arrays, dict) else type(arrays).__name__
        raise SparseddError(f"data file {path} must hold {', '.join(ARRAYS)}; it holds {have or 'nothing'}")
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if len(x.shape) < 2 or len(y.shape) != 1 or x.shape[0] != y.shape[0]:
            raise SparseddError(f"data file {path}: x_{split} {list(x.shape)} and y_{split} {list(y.shape)} must be "
                                f"[N, ...] and [N]")
    if tuple(arrays["x_train"].shape[1:]) != tuple(arrays["x_test"].shape[1:]):
        raise SparseddError(f"data file {path}: x_train and x_test examples differ in shape")
    return arrays


def _inputs(x: Any) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    return t.float() / 255.0 if not t.is_floating_point() else t.float()


def _labels(y: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(y)) if not isinstance(y, torch.Tensor) else y
    if t.is_floating_point() or t.dtype == torch.bool or (t.numel() and int(t.min()) < 0):
        raise SparseddError(f"data file {name}: labels must be integers from 0 (class indices)")
    return t.long()


def _classes(root: Path) -> list[str]:
    train = root / "train"
    if not train.is_dir() or not (root / "test").is_dir():
        raise SparseddError(f"image folder {root} must hold train/<class>/... and test/<class>/...")
    return sorted(p.name for p in train.iterdir() if p.is_dir())


def _image_files(root: Path, split: str) -> list[tuple[Path, int]]:
    classes = _classes(root)
    files = []
    for label, name in enumerate(classes):
        folder = root / split / name
        files += [(p, label) for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES] \
            if folder.is_dir() else []
    unknown = sorted(p.name for p in (root / split).iterdir() if p.is_dir() and p.name not in classes)
    if unknown:
        raise SparseddError(f"image folder {root}: {split}/{unknown[0]} is not a class of train/; name the classes alike")
    if not files:
        raise SparseddError(f"image folder {root}: no images in {split}/<class>/ ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _image_of_shape(path: Path, shape: tuple[int, ...]) -> torch.Tensor:
    a = _image_array(path, shape[0])
    if a.shape != shape:
        raise SparseddError(f"image {path} is {a.shape[2]}x{a.shape[1]}, the first training image "
                            f"{shape[2]}x{shape[1]}; give images of one size")
    return torch.from_numpy(a)


def _image_array(path: Path, channels: int | None) -> np.ndarray:
    """One image as float32 [C, H, W] in [0, 1]; ``channels`` None: as the first image decides (grey or RGB)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            mode = "L" if channels == 1 or (channels is None and im.mode in ("L", "1", "I;16")) else "RGB"
            a = np.asarray(im.convert(mode), dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError) as e:
        raise SparseddError(f"cannot read image {path} ({' '.join(str(e).split())}); remove or replace it") from None
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
