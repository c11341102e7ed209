"""CIFAR-10N / CIFAR-100N: the human re-annotations of the CIFAR training images (Wei et al., ICLR 2022).

One file per data set, published in the authors' repository (UCSC-REAL/cifar-10-100n): a dict saved
with ``torch.save`` whose values are numpy int arrays of one label per training image, in the CIFAR
training order (``clean_label``, ``aggre_label``, ``random_label1..3``, ``worse_label`` for CIFAR-10;
``clean_label``, ``noisy_label`` for CIFAR-100). It is looked up beside the CIFAR archive
(``data_dir/<name>/``, ``$SPARSEDD_DATA/<name>/``, the cache's ``<name>/``), downloaded there when
missing, and read only after its md5 matched.

``torch.load(weights_only=True)`` refuses numpy arrays, and a plain ``torch.load`` would run whatever
the pickle names, so the pickle is read with the CIFAR loader's unpickler (numpy arrays and plain data
only), in both of torch's file formats (the zip archive since torch 1.6, and the older pickle stream).
A file whose values are tensors is handed to ``torch.load(weights_only=True)``, which reads tensors safely.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import SparseddError
from .download import candidates, download_archive, verify_file
from .cifar import _Unpickler
from .noise import HUMAN_NOISE

FILES = {"cifar10": "CIFAR-10_human.pt", "cifar100": "CIFAR-100_human.pt"}
URLS = {name: [f"https://github.com/UCSC-REAL/cifar-10-100n/raw/main/data/{f}",
               f"https://raw.githubusercontent.com/UCSC-REAL/cifar-10-100n/main/data/{f}"]
        for name, f in FILES.items()}
# md5 of the published files, as another public CIFAR-N loader checks them (not confirmed against the
# files themselves: no network here); a mismatch stops the load, so a wrong value shows at once
MD5 = {"CIFAR-10_human.pt": "96644db5574813cae939af5f7f2a0aec",
       "CIFAR-100_human.pt": "a67b45c1d7992051865b5c755bd68bb1"}
CLEAN_KEY = "clean_label"
# what torch's legacy format writes before the object: a magic number, the protocol, the system info
_LEGACY_MAGIC, _LEGACY_PROTOCOL = 0x1950A86A20F9469CFC6C, 1001


def fetch(name: str, data_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """The label file from the first lookup folder holding it, downloaded into the first one if none does."""
    folders = candidates(name, data_dir, cache_dir)
    for folder in folders:
        if (folder / FILES[name]).is_file():
            return folder / FILES[name]
    return download_archive(URLS[name], folders[0] / FILES[name], MD5[FILES[name]])


class _HasTensors(Exception):
    """The pickle names tensors: a file that torch.load(weights_only=True) reads safely."""


class _LabelUnpickler(_Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D102
        if module.split(".")[0] == "torch":
            raise _HasTensors
        return super().find_class(module, name)

    def persistent_load(self, pid: object) -> object:  # noqa: D102
        raise _HasTensors


def _read_pickle(raw: bytes) -> object:
    """The object a torch.save file holds, read with the restricted unpickler."""
    if raw[:4] == b"PK\x03\x04":  # the zip format: the object is the archive's data.pkl
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            pkl = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(pkl) != 1:
                raise ValueError("no data.pkl in the archive")
            return _LabelUnpickler(io.BytesIO(z.read(pkl[0])), encoding="latin1").load()
    stream = io.BytesIO(raw)
    head = [_LabelUnpickler(stream, encoding="latin1").load() for _ in range(3)]  # magic, protocol, system info
    if head[:2] != [_LEGACY_MAGIC, _LEGACY_PROTOCOL]:
        raise ValueError("not a torch.save file")
    return _LabelUnpickler(stream, encoding="latin1").load()


def _read(path: Path) -> object:
    try:
        return _read_pickle(path.read_bytes())
    except _HasTensors:
        return torch.load(path, weights_only=True)


def read_label_file(path: Path) -> dict[str, np.ndarray]:
    """Each integer array of the file, by its key, flattened to int64 (not yet checked against any data)."""
    bad = f"{path} is not a CIFAR-N label file; delete it and run again to re-download it"
    try:
        d = _read(path)
    except Exception as e:  # noqa: BLE001 - any malformed file or refused global
        raise SparseddError(f"cannot read {path} ({' '.join(str(e).split())}): {bad}") from None
    if not isinstance(d, dict) or CLEAN_KEY not in d:
        raise SparseddError(f"no {CLEAN_KEY!r} in it: {bad}")
    out = {}
    for key, value in d.items():
        a = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        if a.dtype.kind in "iu":  # label sets; whatever else the file holds is not read
            out[str(key)] = a.reshape(-1).astype(np.int64)
    return out


def _check_clean(sets: dict[str, np.ndarray], clean: torch.Tensor, path: Path) -> None:
    """The file's clean labels must be the loaded training labels, in order: else the human labels would
    be attached to the wrong images."""
    ours = clean.cpu().numpy()
    theirs = sets.get(CLEAN_KEY, np.zeros(0, np.int64))
    if len(theirs) < len(ours) or not np.array_equal(theirs[:len(ours)], ours):
        raise SparseddError(
            f"{path} does not match the CIFAR training labels loaded (its {CLEAN_KEY} differs from them): the "
            f"label file and the CIFAR files do not belong together; use the published files of both"
        )


def _label_set(sets: dict[str, np.ndarray], key: str, n: int, num_classes: int, path: Path) -> torch.Tensor:
    """The first ``n`` labels of ``key``, checked to be one class per training image."""
    if key not in sets:
        raise SparseddError(f"{path} lacks {key!r}; delete it and run again to re-download it")
    labels = sets[key]
    if len(labels) != len(sets[CLEAN_KEY]) or (n and not (0 <= labels[:n].min() and labels[:n].max() < num_classes)):
        raise SparseddError(f"{path}: {key} is not one label in [0, {num_classes}) per training image; "
                            f"delete it and run again to re-download it")
    return torch.from_numpy(np.ascontiguousarray(labels[:n]))


def load_human_labels(name: str, clean: torch.Tensor, num_classes: int, *, data_dir: str | os.PathLike | None = None,
                      cache_dir: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The published human labels of ``name``'s first ``len(clean)`` training images, by noise type (the
    :data:`~sparsedd.data.noise.HUMAN_NOISE` types of ``name``). ``clean``: the training labels the CIFAR
    loader read (the first ``data.num_train``), which the file's ``clean_label`` must begin with."""
    wanted = {t: key for t, (source, key) in HUMAN_NOISE.items() if source == name}
    if not wanted:
        raise SparseddError(f"no human labels are published for {name}; they exist for {', '.join(FILES)}")
    path = fetch(name, data_dir, cache_dir)
    verify_file(path, MD5[FILES[name]])
    sets = read_label_file(path)
    _check_clean(sets, clean, path)
    return {t: _label_set(sets, key, clean.numel(), num_classes, path) for t, key in wanted.items()}
