"""CIFAR-10 / CIFAR-100 from the python-pickle archives: found locally or downloaded, always md5-verified.

Each lookup folder (``data_dir/<name>/``, ``$SPARSEDD_DATA/<name>/``, the cache's ``<name>/``) may
hold the archive (``cifar-10-python.tar.gz``) or the folder it extracts to
(``cifar-10-batches-py/``). Pickles are only ever read after their md5 matched (the archive's, or
each extracted file's), and then with an unpickler that refuses everything but plain data and
numpy arrays.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import SparseddError
from .download import candidates, check_size, download_archive, verify_file

# the archive of each data set, its mirrors, and the folder it extracts to
FILES = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}
URLS = {
    "cifar10": ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                "https://cave.cs.toronto.edu/kriz/cifar-10-python.tar.gz"],
    "cifar100": ["https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                 "https://cave.cs.toronto.edu/kriz/cifar-100-python.tar.gz"],
}
FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
TRAIN_MEMBERS = {"cifar10": [f"data_batch_{i}" for i in range(1, 6)], "cifar100": ["train"]}
TEST_MEMBERS = {"cifar10": ["test_batch"], "cifar100": ["test"]}
# md5 of each file, by its path relative to the lookup folder (the archives, and the extracted pickles)
MD5 = {
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "cifar-10-batches-py/data_batch_1": "c99cafc152244af753f735de768cd75f",
    "cifar-10-batches-py/data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "cifar-10-batches-py/data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "cifar-10-batches-py/data_batch_4": "634d18415352ddfa80567beed471001a",
    "cifar-10-batches-py/data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "cifar-10-batches-py/test_batch": "40351d587109b95175f43aff81a1287e",
    "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
    "cifar-100-python/train": "16019d7e3df5f24257cddd939b257f8d",
    "cifar-100-python/test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
}
MEAN = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4865, 0.4409)}
STD = {"cifar10": (0.2470, 0.2435, 0.2616), "cifar100": (0.2673, 0.2564, 0.2762)}
NUM_TRAIN, NUM_TEST = 50_000, 10_000


def _name(num_classes: int) -> str:
    if num_classes not in (10, 100):
        raise SparseddError(f"CIFAR has 10 or 100 classes, not {num_classes}; use cifar10 or cifar100")
    return f"cifar{num_classes}"


def _members(name: str) -> list[str]:
    return [f"{FOLDERS[name]}/{m}" for m in TRAIN_MEMBERS[name] + TEST_MEMBERS[name]]


def locate(name: str, data_dir: str | os.PathLike | None = None,
           cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The archive, or the extracted folder, from the first lookup folder holding one (archive first)."""
    for folder in candidates(name, data_dir, cache_dir):
        archive = folder / FILES[name]
        if archive.is_file():
            return archive
        extracted = folder / FOLDERS[name]
        if all((folder / m).is_file() for m in _members(name)):
            return extracted
    return None


def fetch(name: str, data_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """The archive or extracted folder, downloading the archive into the first lookup folder if needed."""
    found = locate(name, data_dir, cache_dir)
    if found is not None:
        return found
    dest = candidates(name, data_dir, cache_dir)[0] / FILES[name]
    return download_archive(URLS[name], dest, MD5[FILES[name]])


# numpy arrays pickled by numpy 1.x (as in the official files) or 2.x; nothing else is callable
_reconstruct = np.zeros(0).__reduce__()[0]
_frombuffer = np.zeros(0).__reduce_ex__(5)[0]
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # how protocol 2 stores bytes under Python 3
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D102
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR data file") from None


def _unpickle(data: bytes, where: str) -> dict:
    bad = f"{where} is not a CIFAR python batch; delete it and run again to re-download it"
    try:
        d = _Unpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - any malformed pickle
        raise SparseddError(f"cannot unpickle ({' '.join(str(e).split())}): {bad}") from None
    if not isinstance(d, dict):
        raise SparseddError(f"not a dict: {bad}")
    return d


def _read_members(name: str, source: Path) -> dict[str, dict]:
    """Each train / test pickle of the verified archive or extracted folder, unpickled."""
    out = {}
    if source.is_dir():  # the extracted folder: each file verified on its own
        for m in _members(name):
            path = source.parent / m
            verify_file(path, MD5[m])
            out[m] = _unpickle(path.read_bytes(), str(path))
        return out
    verify_file(source, MD5[FILES[name]])
    wanted = set(_members(name))
    try:
        with tarfile.open(source, "r:gz") as tar:
            for info in tar:
                if info.name in wanted and info.isfile():
                    f = tar.extractfile(info)
                    assert f is not None
                    out[info.name] = _unpickle(f.read(), f"{source}:{info.name}")
    except (OSError, EOFError, tarfile.TarError, zlib.error) as e:
        raise SparseddError(
            f"cannot read {source} ({' '.join(str(e).split())}): the file is corrupt; "
            f"delete it and run again to re-download it"
        ) from None
    missing = sorted(wanted - set(out))
    if missing:
        raise SparseddError(f"{source} lacks {', '.join(missing)}; delete it and run again to re-download it")
    return out


def _batch(d: dict, label_key: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    bad = f"{where} does not hold CIFAR images and labels; delete it and run again to re-download it"
    if b"data" not in d or label_key not in d:
        raise SparseddError(f"missing {b'data'!r} or {label_key!r}: {bad}")
    x = np.asarray(d[b"data"])
    y = np.asarray(d[label_key])
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 or y.shape != (len(x),):
        raise SparseddError(f"unexpected shapes {x.shape} / {y.shape}: {bad}")
    return x, y.astype(np.int64)


def _labels(y: np.ndarray, num_classes: int, where: str) -> torch.Tensor:
    if y.size and not (0 <= y.min() and y.max() < num_classes):
        raise SparseddError(f"{where} holds labels outside [0, {num_classes}); delete it and run again to re-download it")
    return torch.from_numpy(np.ascontiguousarray(y))


def _images(x: np.ndarray, name: str) -> torch.Tensor:
    t = torch.from_numpy(x.copy()).view(-1, 3, 32, 32).to(torch.float32).div_(255.0)
    mean = torch.tensor(MEAN[name]).view(1, 3, 1, 1)
    std = torch.tensor(STD[name]).view(1, 3, 1, 1)
    return t.sub_(mean).div_(std)


def load_cifar(num_classes: int, num_train: int = 0, num_test: int = 0, *,
               data_dir: str | os.PathLike | None = None,
               cache_dir: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The first ``num_train`` / ``num_test`` examples (0: all), normalized, shape [N, 3, 32, 32].

    Training examples are in the archive's order (data_batch_1 to 5 for CIFAR-10). CIFAR-100 also
    returns ``coarse_train``, the superclass of each training example (for asymmetric noise).
    """
    name = _name(num_classes)
    check_size(name, "num_train", num_train, NUM_TRAIN)
    check_size(name, "num_test", num_test, NUM_TEST)
    source = fetch(name, data_dir, cache_dir)
    batches = _read_members(name, source)
    label_key = b"labels" if name == "cifar10" else b"fine_labels"
    parts = {}
    for split, members in (("train", TRAIN_MEMBERS[name]), ("test", TEST_MEMBERS[name])):
        xs, ys, cs = [], [], []
        for m in members:
            d = batches[f"{FOLDERS[name]}/{m}"]
            where = f"{source}:{m}"
            x, y = _batch(d, label_key, where)
            xs.append(x)
            ys.append(y)
            if name == "cifar100":
                _, c = _batch(d, b"coarse_labels", where)
                cs.append(c)
        parts[split] = (np.concatenate(xs), np.concatenate(ys), np.concatenate(cs) if cs else None)
    (x_tr, y_tr, c_tr), (x_te, y_te, _) = parts["train"], parts["test"]
    n_train = check_size(name, "num_train", num_train, len(x_tr))
    n_test = check_size(name, "num_test", num_test, len(x_te))
    out = {
        "x_train": _images(x_tr[:n_train], name),
        "y_train": _labels(y_tr[:n_train], num_classes, str(source)),
        "x_test": _images(x_te[:n_test], name),
        "y_test": _labels(y_te[:n_test], num_classes, str(source)),
    }
    if c_tr is not None:
        out["coarse_train"] = _labels(c_tr[:n_train], 20, str(source))
    return out

