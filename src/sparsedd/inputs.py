"""Checks of the input that is not configuration: the folders and files a command is given, and the
device. Each is made before anything is written, and a failure is a one-line
:class:`~sparsedd.errors.SparseddError` that prints the path as given (never through rich markup,
where ``[bold]`` in a path would vanish)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import SparseddError

DEVICE_TYPES = ("cpu", "cuda", "mps")


def _nearest_existing(path: Path, what: str) -> Path:
    """``path`` or the closest of its parents that exists."""
    try:
        return next(q for q in (path, *path.parents) if q.exists())
    except OSError as e:  # e.g. a parent that may not be searched
        raise SparseddError(f"{what} {path} cannot be checked ({e.strerror or e}); give another path") from None


def folder(path: str | os.PathLike, what: str, *, writable: bool) -> Path:
    """``path`` as a folder a command may use: nothing but folders at it and above it, and with
    ``writable``, a place where it can be created or written (checked on its nearest existing folder)."""
    p = Path(path).expanduser()
    existing = _nearest_existing(p, what)
    if not existing.is_dir():
        where = "is a file" if existing == p else f"is inside {existing}, which is a file"
        raise SparseddError(f"{what} {p} {where}, not a folder; give a folder")
    if writable and not os.access(existing, os.W_OK | os.X_OK):
        raise SparseddError(f"{what} {p} cannot be written ({existing} is not writable); give a writable folder")
    if writable:
        _probe(p, existing, what)
    return p


def _probe(p: Path, existing: Path, what: str) -> None:
    """A file made and removed in ``existing``: what the permission bits do not tell (a read-only or virtual
    file system such as /proc, or root, whom every permission admits)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".sparsedd-probe-", dir=existing)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise SparseddError(f"{what} {p} cannot be written ({existing}: {e.strerror or e}); give a writable "
                            f"folder") from None


def output_file(path: str | os.PathLike, what: str, suffixes: tuple[str, ...]) -> Path:
    """``path`` as a file a command may write: one of ``suffixes`` (without the dot), not a folder, in a
    folder that can be created or written."""
    p = Path(path).expanduser()
    if p.suffix.lower().lstrip(".") not in suffixes:
        raise SparseddError(f"{what} {p}: cannot write {p.suffix or 'a file without a suffix'}; "
                            f"end the name with one of {', '.join('.' + s for s in suffixes)}")
    if p.is_dir():
        raise SparseddError(f"{what} {p} is a folder; give a file name")
    folder(p.parent, f"{what} {p}: its folder", writable=True)
    return p


def device(name: str, *, here: bool = True) -> str:
    """``name`` if it is a device torch knows (cpu, cuda, cuda:N, mps) and, with ``here``, one this machine
    has; ``here=False`` for devices of other machines (a Ray cluster's workers)."""
    import torch

    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise SparseddError(f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type not in DEVICE_TYPES:
        raise SparseddError(f"--device {name!r}: sparsedd runs on cpu, cuda or mps, not {dev.type}")
    if here and dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise SparseddError(f"--device {name}: this torch ({torch.__version__}) sees no CUDA device on this "
                                f"machine; use --device cpu (or auto), or install a CUDA build of torch")
        if dev.index is not None and dev.index >= count:
            raise SparseddError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    if here and dev.type == "mps" and not torch.backends.mps.is_available():
        raise SparseddError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    return name
