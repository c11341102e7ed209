"""Atomic file writes (write a temporary file, fsync, rename), checksums, and safe checkpoint loading.

Every file written here gets its checksum beside it, ``NAME.sha256`` (the SHA-256 and the size of
its bytes, and the stage or run and file name it was written as: :func:`owner`, as JSON), and every
read verifies it: a byte flip or a truncation is a
:class:`DamagedFile` that names the file, never a silently wrong result. The checksum is removed
before its file is replaced and recorded after the new file is in place, so a checksum that exists
always describes its file. A file without one is read unverified where it was written before
checksums existed; in a stage folder whose ``stage.json`` has its checksum (every file of that stage
was written with one) it is damaged: its bytes cannot be trusted, so the stage is computed again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import SparseddError, cause_in, notice, reraise_interrupt
from .paths import CHECKSUM, DAMAGED, STAGE_KEY

_CHUNK = 1 << 20


class DamagedFile(SparseddError):
    """A file whose bytes are not those written: changed, truncated or unreadable."""

    def __init__(self, path: Path, why: str, advice: str = ""):
        self.path, self.why = Path(path), why
        super().__init__(f"{path} is damaged ({why})" + (f"; {advice}" if advice else ""))


def _temporary(path: Path, write) -> Path:
    """A temporary file beside ``path`` holding what ``write`` wrote, on disk (fsynced)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _file_mode())  # mkstemp's 0600 would hide a store shared with a group from it
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        # torch's writer wraps what its file's write raised in a RuntimeError: a full disk, and also the
        # KeyboardInterrupt or Terminated of a Ctrl-C or SIGTERM that arrived during the write
        reraise_interrupt(e)
        cause = _os_error(e)
        if cause is not None and cause is not e:
            raise OSError(cause.errno, cause.strerror, str(path)) from None
        raise
    return Path(tmp)


def _file_mode() -> int:
    """The mode a plain ``open`` would give a new file: 0666 less the user's umask (read without changing it
    for good: os.umask only reads by setting)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _os_error(e: BaseException | None) -> OSError | None:
    """The OSError with an errno behind ``e``, if any."""
    return cause_in(e, lambda c: isinstance(c, OSError) and c.errno is not None)


def _atomic_write(path: Path, write) -> None:
    tmp = _temporary(path, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_output(path: Path, data: bytes | str) -> None:
    """An output for people (a report's page, table or figure, a benchmark's JSON), written whole or not at
    all (a kill mid-write leaves the previous file, never a truncated one); no checksum: it is not read back."""
    raw = data.encode() if isinstance(data, str) else data
    _atomic_write(Path(path), lambda f: f.write(raw))


def save_figure(fig: Any, path: Path, **options: Any) -> None:
    """``fig.savefig(path, **options)``, written as :func:`write_output` writes (the format from the suffix)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=Path(path).suffix.lstrip(".").lower(), **options)
    write_output(path, buffer.getvalue())


# --- checksums
def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM)


def checksum_of(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return {"sha256": h.hexdigest(), "bytes": path.stat().st_size}


def owner(path: Path) -> str:
    """What a checksum binds its file to: the stage or run folder and the file's name
    (``6d902be30af42fbc/final.pt``), or the name alone outside such a folder (the store's own root may
    be renamed or moved; a data record's name holds its key). A valid file with its valid checksum,
    copied or moved to another stage, run or name, is then refused, not taken as that stage's."""
    folder = path.parent.name
    is_id = len(folder) == 16 and all(c in "0123456789abcdef" for c in folder)
    return f"{folder}/{path.name}" if is_id else path.name


def _recorded(path: Path) -> dict[str, Any] | None:
    """The checksum recorded for ``path``; None when there is none (or it cannot be read: the file
    itself may be fine, so it is read unverified rather than called damaged)."""
    try:
        rec = json.loads(checksum_path(path).read_bytes())
        return rec if isinstance(rec.get("sha256"), str) and isinstance(rec.get("bytes"), int) else None
    except (OSError, ValueError, AttributeError):
        return None


def _record(path: Path, checksum: dict[str, Any]) -> None:
    data = json.dumps({"sha256": checksum["sha256"], "bytes": checksum["bytes"], "of": owner(path)}).encode()
    _atomic_write(checksum_path(path), lambda f: f.write(data))


def verify(path: Path) -> None:
    """Raise :class:`DamagedFile` if ``path``'s bytes differ from those recorded when it was written."""
    rec = _recorded(path)
    if rec is None:
        if path.name != STAGE_KEY and checksum_path(path.with_name(STAGE_KEY)).exists():
            # a stage begun by a version that writes checksums wrote every one of its files with one
            raise DamagedFile(path, "its checksum is missing, though its stage wrote every file with one: "
                                    "it cannot be verified")
        return
    if "of" in rec and rec["of"] != owner(path):  # (checksums from before 2026-12 bind nothing)
        raise DamagedFile(path, f"its checksum was written for {rec['of']}, not for this file: a file copied or "
                                f"moved here from elsewhere")
    size = path.stat().st_size
    if size < rec["bytes"]:
        raise DamagedFile(path, f"truncated: {size} of its {rec['bytes']} bytes")
    if size != rec["bytes"] or checksum_of(path)["sha256"] != rec["sha256"]:
        raise DamagedFile(path, "its checksum does not match: the bytes changed after it was written")


def _checked_write(path: Path, write, previous: Path | None = None,
                   copied: tuple[Path, dict[str, Any] | None] | None = None) -> None:
    """Write atomically and record the checksum; ``previous``: keep the file being replaced there; ``copied``:
    the file the bytes are copied from and its recorded checksum, which they must match (None: none)."""
    tmp = _temporary(path, write)
    try:
        checksum = checksum_of(tmp)  # of the bytes on disk
        if copied is not None and copied[1] is not None and \
                (checksum["sha256"], checksum["bytes"]) != (copied[1]["sha256"], copied[1]["bytes"]):
            raise DamagedFile(copied[0], "its bytes changed while it was copied, or differ from its checksum")
        if previous is not None and path.exists():
            _keep_copy(path, previous)
        checksum_path(path).unlink(missing_ok=True)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _record(path, checksum)


def _keep_copy(path: Path, dest: Path) -> None:
    """Make ``dest`` a second name of ``path``'s bytes (a hard link), with its checksum.

    A link, not a rename: ``path`` keeps existing while it is replaced, so a process killed in the
    middle of a save (SIGTERM to a sweep's workers) always leaves the current file under its name.
    """
    rec = _recorded(path)
    checksum_path(dest).unlink(missing_ok=True)
    link = dest.with_name(f".{dest.name}.{os.getpid()}.link.tmp")  # *.tmp: a kill's leftover is cleaned up
    link.unlink(missing_ok=True)
    try:
        os.link(path, link)
    except OSError:  # a file system without hard links
        shutil.copyfile(path, link)
    os.replace(link, dest)
    if rec is not None:
        _record(dest, rec)


def copy_checked(src: Path, dest: Path) -> None:
    """Copy ``src`` to ``dest`` (another store's file, as ``sparsedd merge`` does) verified: ``src``'s bytes
    as its checksum recorded them, or, without one (a store from before checksums), visibly what it claims;
    the copy is checked against that checksum before it is put in place (a file that changes while it is
    copied is damaged, never half-taken), written atomically, with its checksum beside it. A file copied to
    the same stage or run folder and name stays bound to it (:func:`owner`)."""
    verify(src)
    rec = _recorded(src)
    why = readable_structure(src) if rec is None else None
    if why:
        raise DamagedFile(src, why)
    with open(src, "rb") as f:
        _checked_write(dest, lambda out: shutil.copyfileobj(f, out, _CHUNK), copied=(src, rec))


def same_bytes(a: Path, b: Path) -> bool:
    """Whether two files hold the same bytes, by their recorded checksums (or, without, their contents)."""
    ra, rb = _recorded(a), _recorded(b)
    ca = ra if ra is not None else checksum_of(a)
    cb = rb if rb is not None else checksum_of(b)
    return (ca["sha256"], ca["bytes"]) == (cb["sha256"], cb["bytes"])


def remove(path: Path) -> None:
    """Delete a file and its checksum."""
    checksum_path(path).unlink(missing_ok=True)
    path.unlink(missing_ok=True)


def set_aside(path: Path) -> Path:
    """Rename a damaged file to ``NAME.damaged`` (kept to look at, never read); returns the new path."""
    aside = path.with_name(path.name + DAMAGED)
    checksum_path(path).unlink(missing_ok=True)
    os.replace(path, aside)
    return aside


def write_bytes(path: Path, data: bytes) -> None:
    """``data`` at ``path``, atomically (a temporary file, fsynced, renamed): a file for others to read (an
    export), so without a checksum beside it; a failed write leaves nothing at ``path``."""
    _atomic_write(path, lambda f: f.write(data))


def recorded_checksum(path: Path) -> dict[str, Any] | None:
    """The checksum recorded for ``path`` when it was written (``{"sha256", "bytes", ...}``); None where there
    is none (a file from before checksums). Verify the file first (:func:`verify`) to know it still matches."""
    return _recorded(path)


# --- JSON and tensors
def write_json(path: Path, obj: Any) -> None:
    data = json.dumps(obj, indent=1, sort_keys=True).encode()
    _checked_write(path, lambda f: f.write(data))


def read_json(path: Path) -> Any:
    verify(path)
    try:
        return json.loads(path.read_bytes())
    except ValueError as e:  # a truncated file, or bytes that are not UTF-8
        raise DamagedFile(path, f"not valid JSON: {e}") from None


def save_tensors(path: Path, obj: Any, previous: Path | None = None) -> None:
    _checked_write(path, lambda f: torch.save(obj, f), previous)


def load_tensors(path: Path, device: str | torch.device = "cpu") -> Any:
    verify(path)
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:
        reraise_interrupt(e)  # a Ctrl-C or SIGTERM during the read (torch may end it as a SystemError): not damage
        if not isinstance(e, (RuntimeError, EOFError, ValueError, OSError, pickle.UnpicklingError,
                              zipfile.BadZipFile)):
            raise
        # torch reads a zip archive: a cut one fails as a "zip archive" RuntimeError, or an OSError near its end
        why = " ".join(str(e).split())[:200]  # torch's messages span lines
        raise DamagedFile(path, f"not a readable torch file: {why}") from None


def readable_structure(path: Path) -> str | None:
    """Why a file without a recorded checksum cannot be what it claims (truncated JSON, a torch file
    without its zip directory); None when nothing is visibly wrong."""
    try:
        if path.suffix == ".json":
            if not isinstance(json.loads(path.read_bytes()), dict):  # every JSON file of a store is an object
                return "not a JSON object"
        elif path.suffix == ".pt" and not zipfile.is_zipfile(path):
            return "not a readable torch file (truncated?)"
    except ValueError as e:
        return f"not valid JSON: {e}"
    return None


class FileCheckpointer:
    """Checkpoints of one training stage in one file, the one before it kept beside it.

    Saves at the end of an epoch when ``epoch_every_s`` seconds have passed since the last save
    (0: every epoch) and inside an epoch when ``every_s`` have (for long epochs). A damaged
    checkpoint is set aside and the previous one used, or none (the stage starts over): both
    resume exactly, only later or earlier.
    """

    def __init__(self, path: Path, every_s: float = 60.0, epoch_every_s: float = 1.0, readonly: bool = False,
                 previous: Path | None = None):
        self.path = Path(path)
        self.previous = Path(previous) if previous is not None else None
        self.readonly = readonly
        self.every_s = every_s
        self.epoch_every_s = epoch_every_s
        self._last = time.monotonic()
        self._loaded: dict[str, Any] | None = None  # the last state read, until the next save

    def load(self) -> dict[str, Any] | None:
        """The saved state; read from disk once, then kept until the next save."""
        if self._loaded is None:
            self._loaded = self._read_good()
        return self._loaded

    def _read_good(self) -> dict[str, Any] | None:
        damaged, state = [], None
        for path in (self.path, self.previous):
            if path is None or not path.exists():
                continue
            try:
                state = load_tensors(path)
                break
            except DamagedFile as e:
                damaged.append(e)
        for e in damaged:  # then the state, if any, is the previous checkpoint's
            then = "the stage resumes from the previous checkpoint" if state is not None else \
                "the stage starts again from its beginning"
            notice(f"checkpoint {e.path} is damaged ({e.why}); {self._set_aside(e.path)}{then}")
        return state

    def _set_aside(self, path: Path) -> str:
        """Set a damaged checkpoint aside (rank 0 does it for every process); says where it went."""
        if self.readonly:
            return ""
        try:
            return f"set aside as {set_aside(path).name}; "
        except OSError:
            return ""

    def due(self, end_of_epoch: bool) -> bool:
        if self.readonly:
            return False
        wait = self.epoch_every_s if end_of_epoch else self.every_s
        return time.monotonic() - self._last >= wait

    def save(self, state: dict[str, Any]) -> None:
        self._loaded = None
        save_tensors(self.path, state, previous=self.previous)
        self._last = time.monotonic()

    def clear(self) -> None:
        self._loaded = None
        if not self.readonly:
            for path in (self.path, self.previous):
                if path is not None:
                    remove(path)
