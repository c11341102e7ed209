"""Verified downloads: mirrors tried in turn, md5 of the decompressed bytes, atomic rename."""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.request
import zlib
from pathlib import Path
from typing import Any

from ..errors import SparseddError

TIMEOUT_S = 30.0
_GZIP_MAGIC = b"\x1f\x8b"


def _one_line(err: object) -> str:
    return " ".join(str(err).split())


def read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it is gzipped; SparseddError when it cannot be read."""
    try:
        data = Path(path).read_bytes()
        return gzip.decompress(data) if data[:2] == _GZIP_MAGIC else data
    except (OSError, EOFError, zlib.error) as e:
        raise SparseddError(
            f"cannot read {path} ({_one_line(e)}): the file is corrupt; delete it and run again to re-download it"
        ) from None


def md5_of(data: str | os.PathLike | bytes) -> str:
    """The md5 hex digest of some bytes, or of a file's raw (not decompressed) content."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return hashlib.md5(data).hexdigest()
    h = hashlib.md5()
    with open(data, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch(url: str, tmp: Path) -> None:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as r, open(tmp, "wb") as f:
        for chunk in iter(lambda: r.read(1 << 20), b""):
            f.write(chunk)


def download(urls: list[str], dest: Path, md5_uncompressed: str, *, raw: bool = False) -> Path:
    """Download ``dest`` from the first mirror that serves it with the right md5.

    The md5 is that of the decompressed bytes (gzip files), or of the file as it is with ``raw``
    (archives such as ``.tar.gz`` and ``.zip`` are published with the md5 of the archive itself).
    The bytes go to a temporary file in ``dest``'s folder that is renamed into place only once
    verified, so no partial file is ever left behind.
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SparseddError(f"cannot create {dest.parent} ({_one_line(e)}); choose a writable data folder") from None
    failures: list[str] = []
    bad_checksum = False
    for url in urls:
        fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        os.close(fd)
        tmp = Path(name)
        try:
            _fetch(url, tmp)
            try:
                ok = md5_of(tmp if raw else read_bytes(tmp)) == md5_uncompressed
            except SparseddError:
                ok = False
            if ok:
                os.replace(tmp, dest)
                return dest
            bad_checksum = True
            failures.append(f"{url}: checksum mismatch")
        except (OSError, ValueError) as e:  # URLError, timeouts and HTTP errors are OSErrors
            failures.append(f"{url}: {_one_line(e)}")
        finally:
            tmp.unlink(missing_ok=True)
    if bad_checksum:
        raise SparseddError(
            f"checksum mismatch for the downloaded {dest.name} ({'; '.join(failures)}); "
            f"nothing was kept: run again, or put a good copy of {dest.name} in {dest.parent} by hand"
        )
    raise SparseddError(
        f"could not download {dest.name} from any mirror ({'; '.join(failures)}); "
        f"if you have the data, give --data-dir (or SPARSEDD_DATA) the folder holding {dest.parent.name}/; else put "
        f"the file in {dest.parent} by hand and run again"
    )


def read_cache(path: Path, what: str, remedy: str, unverified_ok: bool = True) -> Any:
    """What :func:`write_cache` cached at ``path``, verified against its checksum; None when there is
    nothing there, and when the file is damaged, which is said with what happens instead.
    ``unverified_ok=False``: a cache without a checksum (written before checksums existed) is not
    read either (for data that is cheap to make again, so that every cache read is a verified one)."""
    from ..errors import notice
    from ..store.files import DamagedFile, checksum_path, load_tensors

    if not path.exists():
        return None
    if not unverified_ok and not checksum_path(path).exists():
        notice(f"the {what} cache {path} has no checksum (an older version wrote it); {remedy}")
        return None
    try:
        return load_tensors(path)
    except DamagedFile as e:
        notice(f"the {what} cache {e.path} is damaged ({e.why}); {remedy}")
        return None


def write_cache(path: Path, tensors: dict, what: str) -> None:
    """Cache ``tensors`` at ``path`` atomically; a cache that cannot be written is only a warning."""
    import warnings

    from ..store.files import save_tensors

    try:
        save_tensors(path, tensors)
    except OSError as e:
        warnings.warn(f"could not cache {what} in {path.parent}: {e}", stacklevel=3)


# ----------------------------------------------------------------------------- shared by the loaders


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
    return download(urls, dest, md5, raw=True)
