"""MNIST from the four IDX files (gzipped or not): found locally or downloaded, always md5-verified."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import SparseddError
from .download import check_size, default_cache_dir
from .download import download, md5_of, read_bytes

MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]
# md5 of the uncompressed files
FILES = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
MEAN, STD = 0.1307, 0.3081
NUM_CLASSES = 10
NUM_TRAIN, NUM_TEST = 60_000, 10_000


def candidates(data_dir: str | os.PathLike | None, cache_dir: str | os.PathLike | None) -> list[Path]:
    """The folders searched, in order: data_dir/mnist, $SPARSEDD_DATA/mnist, the cache's mnist."""
    out = []
    if data_dir is not None:
        out.append(Path(data_dir) / "mnist")
    if os.environ.get("SPARSEDD_DATA"):
        out.append(Path(os.environ["SPARSEDD_DATA"]) / "mnist")
    out.append(Path(cache_dir if cache_dir is not None else default_cache_dir()) / "mnist")
    return out


def _file_in(folder: Path, name: str) -> Path | None:
    for p in (folder / name, folder / f"{name}.gz"):
        if p.is_file():
            return p
    return None


def locate(data_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None) -> dict[str, Path] | None:
    """The four files from the first candidate folder holding all of them, or None."""
    for folder in candidates(data_dir, cache_dir):
        found = {name: _file_in(folder, name) for name in FILES}
        if all(found.values()):
            return found  # type: ignore[return-value]
    return None


def fetch(data_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """The four files, downloading the missing ones into the first candidate folder if needed."""
    found = locate(data_dir, cache_dir)
    if found is not None:
        return found
    folder = candidates(data_dir, cache_dir)[0]
    out = {}
    for name, md5 in FILES.items():
        out[name] = _file_in(folder, name) or download(
            [f"{m}{name}.gz" for m in MIRRORS], folder / f"{name}.gz", md5
        )
    return out


def parse_idx(data: bytes, where: str | os.PathLike = "<bytes>") -> np.ndarray:
    """A uint8 array from IDX bytes (magic 0x0000080N, N big-endian int32 sizes, then the data)."""
    bad = f"{where} is not a valid IDX file; delete it and run again to re-download it"
    if len(data) < 4 or data[:3] != b"\x00\x00\x08" or not 1 <= data[3] <= 3:
        raise SparseddError(f"bad magic number: {bad}")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise SparseddError(f"truncated header: {bad}")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    if len(data) != 4 + 4 * ndim + int(np.prod(shape)):
        raise SparseddError(f"size does not match the header {shape}: {bad}")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def read_verified(path: Path, md5: str) -> np.ndarray:
    """Read (gunzipping if needed), check the md5 of the uncompressed bytes, parse the IDX."""
    data = read_bytes(path)
    if md5_of(data) != md5:
        raise SparseddError(
            f"checksum mismatch for {path}: the file is corrupt; delete it and run again to re-download it"
        )
    return parse_idx(data, path)


def _images(a: np.ndarray, where: Path) -> torch.Tensor:
    if a.ndim != 3 or a.shape[1:] != (28, 28):
        raise SparseddError(f"{where} does not hold 28x28 images; delete it and run again to re-download it")
    x = torch.from_numpy(a.copy()).to(torch.float32).div_(255.0)
    return x.sub_(MEAN).div_(STD).unsqueeze(1)


def _labels(a: np.ndarray, where: Path) -> torch.Tensor:
    if a.ndim != 1 or a.size and a.max() >= NUM_CLASSES:
        raise SparseddError(f"{where} does not hold digit labels; delete it and run again to re-download it")
    return torch.from_numpy(a.astype(np.int64))


def load_mnist(num_train: int = 0, num_test: int = 0, *, data_dir: str | os.PathLike | None = None,
               cache_dir: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The first ``num_train`` / ``num_test`` examples (0: all), normalized, shape [N, 1, 28, 28]."""
    n_train = check_size("mnist", "num_train", num_train, NUM_TRAIN)
    n_test = check_size("mnist", "num_test", num_test, NUM_TEST)
    paths = fetch(data_dir, cache_dir)
    arr = {name: read_verified(p, FILES[name]) for name, p in paths.items()}
    p = paths
    return {
        "x_train": _images(arr["train-images-idx3-ubyte"][:n_train], p["train-images-idx3-ubyte"]),
        "y_train": _labels(arr["train-labels-idx1-ubyte"][:n_train], p["train-labels-idx1-ubyte"]),
        "x_test": _images(arr["t10k-images-idx3-ubyte"][:n_test], p["t10k-images-idx3-ubyte"]),
        "y_test": _labels(arr["t10k-labels-idx1-ubyte"][:n_test], p["t10k-labels-idx1-ubyte"]),
    }
