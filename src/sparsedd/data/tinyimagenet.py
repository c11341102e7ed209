"""Tiny ImageNet (200 classes, 64x64) from ``tiny-imagenet-200.zip`` or its extracted folder.

Each lookup folder (``data_dir/tinyimagenet/``, ``$SPARSEDD_DATA/tinyimagenet/``, the cache's
``tinyimagenet/``) may hold the zip or the ``tiny-imagenet-200/`` folder it extracts to; when none
does, the zip is downloaded into the first one (md5-verified). Class ``i`` is line ``i`` of
``wnids.txt``. The test set is the official validation set, labelled by ``val/val_annotations.txt``
and kept in that file's order (the official test set has no labels).

Decoding the 110,000 JPEGs (with Pillow) is slow, so the decoded uint8 images are cached as one
``.pt`` per image size in ``cache_dir/tinyimagenet/``, keyed by the source (the zip's md5, or the
extracted folder's file listing) and the size; later loads read the cache only.

Training examples are ordered round-robin over the classes (image 0 of every class in wnids
order, then image 1 of every class, ...; within a class by the number in the file name), so
the first ``num_train`` examples are balanced over the classes.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import SparseddError
from .download import read_cache, write_cache
from .download import candidates, check_size, default_cache_dir, download_archive, verify_file

FILE = "tiny-imagenet-200.zip"
FOLDER = "tiny-imagenet-200"
URLS = ["http://cs231n.stanford.edu/tiny-imagenet-200.zip"]
MD5 = {FILE: "90528d7ca1a48142e341f4ef8d21d0de"}
MEAN, STD = (0.480, 0.448, 0.398), (0.277, 0.269, 0.282)
NUM_CLASSES = 200
NUM_TRAIN, NUM_TEST = 100_000, 10_000
NATIVE_SIZE = 64
CACHE_VERSION = 1
_CHUNK = 4096  # images downsampled at once


def locate(data_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The zip, or the extracted folder, from the first lookup folder holding one (zip first)."""
    for folder in candidates("tinyimagenet", data_dir, cache_dir):
        if (folder / FILE).is_file():
            return folder / FILE
        root = folder / FOLDER
        if (root / "wnids.txt").is_file() and (root / "val" / "val_annotations.txt").is_file():
            return root
    return None


def fetch(data_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    found = locate(data_dir, cache_dir)
    if found is not None:
        return found
    dest = candidates("tinyimagenet", data_dir, cache_dir)[0] / FILE
    return download_archive(URLS, dest, MD5[FILE])


# ----------------------------------------------------------------------------- reading the source


class _Source:
    """Files of the data set by their path below ``tiny-imagenet-200/``, from the zip or the folder."""

    def __init__(self, path: Path):
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        if path.is_dir():
            self.names = sorted(
                p.relative_to(path).as_posix() for sub in ("train", "val") if (path / sub).is_dir()
                for p in (path / sub).rglob("*") if p.is_file()
            ) + [n for n in ("wnids.txt",) if (path / n).is_file()]
        else:
            try:
                self.zip = zipfile.ZipFile(path)
            except (OSError, zipfile.BadZipFile) as e:
                raise self.corrupt(e) from None
            prefix = f"{FOLDER}/"
            self.names = [n[len(prefix):] for n in self.zip.namelist() if n.startswith(prefix) and not n.endswith("/")]

    def corrupt(self, e: object) -> SparseddError:
        return SparseddError(
            f"cannot read {self.path} ({' '.join(str(e).split())}): it is corrupt; delete it and run again to re-download it"
        )

    def read(self, name: str) -> bytes:
        try:
            if self.zip is not None:
                return self.zip.read(f"{FOLDER}/{name}")
            return (self.path / name).read_bytes()
        except KeyError:
            raise SparseddError(f"{self.path} lacks {FOLDER}/{name}; delete it and run again to re-download it") from None
        except (OSError, zipfile.BadZipFile, EOFError) as e:
            raise self.corrupt(e) from None

    def fingerprint(self) -> str:
        """The folder's file listing (names and sizes), hashed: a changed folder gets a new cache."""
        h = hashlib.sha256()
        for n in self.names:
            h.update(f"{n}\0{(self.path / n).stat().st_size}\n".encode())
        return h.hexdigest()[:16]

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def _number(name: str) -> tuple[int, str]:
    m = re.search(r"_(\d+)\.[A-Za-z]+$", name)
    return (int(m.group(1)) if m else -1, name)


def _layout(src: _Source) -> tuple[list[str], list[tuple[str, int]], list[tuple[str, int]]]:
    """The wnids, and the (file, label) pairs of the training and test (validation) sets, in order."""
    bad = f"{src.path} is not a Tiny ImageNet copy"
    wnids = [w.strip() for w in src.read("wnids.txt").decode("utf-8", "replace").splitlines() if w.strip()]
    if not 1 <= len(wnids) <= NUM_CLASSES or len(set(wnids)) != len(wnids):
        raise SparseddError(f"{bad}: wnids.txt must list up to {NUM_CLASSES} distinct wnids; delete it and run again")
    index = {w: i for i, w in enumerate(wnids)}
    per_class: list[list[str]] = [[] for _ in wnids]
    for n in src.names:
        parts = n.split("/")
        if len(parts) == 4 and parts[0] == "train" and parts[2] == "images" and parts[1] in index \
                and parts[3].lower().endswith((".jpeg", ".jpg")):
            per_class[index[parts[1]]].append(n)
    for files in per_class:
        files.sort(key=_number)
    train = [(files[r], c) for r in range(max(map(len, per_class))) for c, files in enumerate(per_class) if r < len(files)]
    test = []
    for line_no, line in enumerate(src.read("val/val_annotations.txt").decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1].strip() not in index:
            raise SparseddError(
                f"{bad}: line {line_no} of val/val_annotations.txt does not name an image and a wnid of wnids.txt; "
                f"delete it and run again"
            )
        test.append((f"val/images/{fields[0].strip()}", index[fields[1].strip()]))
    if not train or not test:
        raise SparseddError(f"{bad}: it has no training or no validation images; delete it and run again")
    return wnids, train, test


def _decoder() -> Callable[[bytes, str], np.ndarray]:
    try:
        from PIL import Image
    except ImportError:
        raise SparseddError("decoding Tiny ImageNet's JPEGs needs Pillow: pip install pillow, then run again") from None

    def decode(data: bytes, where: str) -> np.ndarray:
        try:
            with Image.open(io.BytesIO(data)) as im:
                a = np.array(im.convert("RGB"))
        except Exception as e:  # noqa: BLE001 - any undecodable image
            raise SparseddError(f"cannot decode {where} ({' '.join(str(e).split())}); delete it and run again") from None
        if a.shape != (NATIVE_SIZE, NATIVE_SIZE, 3):
            raise SparseddError(f"{where} is {a.shape[1]}x{a.shape[0]}, not 64x64; delete it and run again")
        return a

    return decode


def _decode_all(src: _Source, items: list[tuple[str, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    decode = _decoder()
    x = torch.empty((len(items), 3, NATIVE_SIZE, NATIVE_SIZE), dtype=torch.uint8)
    for i, (name, _) in enumerate(items):
        x[i] = torch.from_numpy(decode(src.read(name), f"{src.path}:{name}")).permute(2, 0, 1)
    return x, torch.tensor([label for _, label in items], dtype=torch.int64)


def downsample(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N, 3, S, S] -> uint8 [N, 3, size, size], by area averaging (rounded), in chunks."""
    if x.shape[-1] == size:
        return x
    out = torch.empty((*x.shape[:2], size, size), dtype=torch.uint8)
    for i in range(0, len(x), _CHUNK):
        y = F.interpolate(x[i:i + _CHUNK].float(), size=(size, size), mode="area")
        out[i:i + _CHUNK] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


# ----------------------------------------------------------------------------- the cache


def _read_cache(path: Path, size: int) -> dict[str, torch.Tensor] | None:
    d = read_cache(path, "decoded Tiny ImageNet", "decoding the images again")
    if d is None:
        return None
    try:
        ok = d["version"] == CACHE_VERSION and all(
            d[k].dtype == torch.uint8 and d[k].shape[1:] == (3, size, size) for k in ("x_train", "x_test")
        ) and d["y_train"].shape == (len(d["x_train"]),) and d["y_test"].shape == (len(d["x_test"]),)
        return d if ok else None
    except Exception:  # noqa: BLE001 - missing or foreign file: decode again
        return None


def _write_cache(path: Path, d: dict) -> None:
    write_cache(path, d, "the decoded Tiny ImageNet")


def _decoded(source: Path, size: int, cache_dir: str | os.PathLike | None) -> dict[str, torch.Tensor]:
    """uint8 images of the whole data set at ``size``, from the cache or decoded (and cached)."""
    folder = Path(cache_dir if cache_dir is not None else default_cache_dir()) / "tinyimagenet"
    src = _Source(source) if source.is_dir() else None
    try:
        key = src.fingerprint() if src is not None else MD5[FILE]
        name = hashlib.sha256(f"{CACHE_VERSION}/{key}".encode()).hexdigest()[:16]
        path = folder / f"tinyimagenet-{size}px-{name}.pt"
        d = _read_cache(path, size)
        if d is not None:
            return d
        native = folder / f"tinyimagenet-{NATIVE_SIZE}px-{name}.pt"
        d = _read_cache(native, NATIVE_SIZE) if size != NATIVE_SIZE else None
        if d is None:
            if src is None:
                verify_file(source, MD5[FILE])  # decode only a verified zip
                src = _Source(source)
            _, train, test = _layout(src)
            x_train, y_train = _decode_all(src, train)
            x_test, y_test = _decode_all(src, test)
            d = {"version": CACHE_VERSION, "x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
            if size == NATIVE_SIZE:
                _write_cache(path, d)
                return d
        d = dict(d, x_train=downsample(d["x_train"], size), x_test=downsample(d["x_test"], size))
        _write_cache(path, d)
        return d
    finally:
        if src is not None:
            src.close()


def _normalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return x.to(torch.float32).div_(255.0).sub_(mean).div_(std)


def load_tinyimagenet(num_train: int = 0, num_test: int = 0, *, data_dir: str | os.PathLike | None = None,
                      cache_dir: str | os.PathLike | None = None, image_size: int = 64) -> dict[str, torch.Tensor]:
    """The first ``num_train`` / ``num_test`` examples (0: all), normalized, [N, 3, image_size, image_size].

    ``image_size`` 64 is native; 32 averages 2x2 pixel blocks once, at load.
    """
    if image_size not in (32, 64):
        raise SparseddError(f"Tiny ImageNet can be loaded at 64x64 or 32x32, not {image_size}; set data.image_size to 32 or 64")
    check_size("tinyimagenet", "num_train", num_train, NUM_TRAIN)
    check_size("tinyimagenet", "num_test", num_test, NUM_TEST)
    d = _decoded(fetch(data_dir, cache_dir), image_size, cache_dir)
    n_train = check_size("tinyimagenet", "num_train", num_train, len(d["x_train"]))
    n_test = check_size("tinyimagenet", "num_test", num_test, len(d["x_test"]))
    return {
        "x_train": _normalize(d["x_train"][:n_train]), "y_train": d["y_train"][:n_train].clone(),
        "x_test": _normalize(d["x_test"][:n_test]), "y_test": d["y_test"][:n_test].clone(),
    }
