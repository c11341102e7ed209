"""The SQLite index of runs, stages and metrics (the stage folders are the source of truth)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

from ..errors import SparseddError
from .waiting import INDEX_TIMEOUT, Waiter

EPOCH_COLUMNS = ("lr", "train_loss_running", "train_acc_running", "test_loss", "test_acc", "train_loss",
                 "train_acc_noisy", "train_acc_clean", "memorized", "val_loss", "val_acc")
LEVEL_COLUMNS = ("sparsity", "density", "remaining", "test_acc", "test_acc_best", "test_loss", "train_loss",
                 "train_acc_noisy", "train_acc_clean", "memorized", "distance", "effective_noise", "seconds",
                 "val_acc", "val_acc_best", "test_acc_at_best_val")

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runs (
  run_id TEXT PRIMARY KEY, config TEXT NOT NULL, preset TEXT, seeds INTEGER, levels INTEGER,
  status TEXT NOT NULL, error TEXT, created REAL, updated REAL);
CREATE TABLE IF NOT EXISTS run_stages (
  run_id TEXT NOT NULL, seed INTEGER NOT NULL, level INTEGER NOT NULL, stage_id TEXT NOT NULL,
  PRIMARY KEY (run_id, seed, level));
CREATE TABLE IF NOT EXISTS levels (
  stage_id TEXT PRIMARY KEY, level INTEGER, {", ".join(f"{c} REAL" for c in LEVEL_COLUMNS)},
  layer_sparsity TEXT);
CREATE TABLE IF NOT EXISTS analyses (
  analysis_id TEXT PRIMARY KEY, target TEXT NOT NULL, kind TEXT NOT NULL, settings TEXT, result TEXT);
CREATE TABLE IF NOT EXISTS epochs (
  stage_id TEXT NOT NULL, epoch INTEGER NOT NULL, {", ".join(f"{c} REAL" for c in EPOCH_COLUMNS)},
  PRIMARY KEY (stage_id, epoch));
"""


TABLES = ("runs", "run_stages", "levels", "analyses", "epochs")


def _with_columns(row: dict[str, Any], columns: tuple[str, ...]) -> dict[str, Any]:
    """The row with every metric column (NULL where the index predates one and has not been written since)."""
    return {**row, **{c: None for c in columns if c not in row}}


def _add_new_columns(con: sqlite3.Connection) -> None:
    """Metric columns added since an index was created (its rows keep NULL there)."""
    for table, columns in (("levels", LEVEL_COLUMNS), ("epochs", EPOCH_COLUMNS)):
        have = {row[1] for row in con.execute(f"PRAGMA table_info({table})")}
        for column in columns:
            if column not in have:
                try:
                    con.execute(f"ALTER TABLE {table} ADD COLUMN {column} REAL")
                except sqlite3.OperationalError as e:  # another process added it first
                    if "duplicate column" not in str(e):
                        raise


# what SQLite's error names say about the index (Python 3.11 gives them; older ones fall back on the text)
_BUSY = ("SQLITE_BUSY", "SQLITE_LOCKED")
_DAMAGED = ("SQLITE_CORRUPT", "SQLITE_NOTADB")
_UNUSABLE = ("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_IOERR", "SQLITE_FULL", "SQLITE_PERM")
BUSY_SLICE_S = 1.0  # SQLite's own busy wait; longer waits are ours (reported, given up after a timeout)


def _error_kind(e: sqlite3.DatabaseError) -> str:
    name = getattr(e, "sqlite_errorname", "") or ""
    text = str(e)
    if name.startswith(_BUSY) or "locked" in text or "busy" in text:
        return "busy"
    if name.startswith(_DAMAGED) or "malformed" in text or "not a database" in text:
        return "damaged"
    if name.startswith(_UNUSABLE) or "unable to open" in text or "readonly" in text:
        return "unusable"
    return "other"


class IndexDamaged(SparseddError):
    """The index file is not a readable SQLite database (truncated, overwritten, half-copied)."""

    def __init__(self, path: Path, why: str):
        self.why = why
        super().__init__(f"the index {path} is damaged ({why}); rebuild it from the stage folders: "
                         f"sparsedd doctor --root {path.parent} --repair")


def _decoded(path: Path, row: dict[str, Any], *columns: str) -> dict[str, Any]:
    """``row`` with its JSON columns decoded; a cell that is not JSON (an index edited or written over by
    something else) is a damaged index, with its repair, never a traceback."""
    try:
        return {**row, **{c: json.loads(row[c]) for c in columns}}
    except (TypeError, ValueError) as e:
        raise IndexDamaged(path, f"a {columns[0] if len(columns) == 1 else 'JSON'} cell is not JSON: {e}") from None


class Index:
    """Writes are one ``BEGIN IMMEDIATE`` transaction each, in WAL mode; reads write nothing and create
    no table, so a store on read-only media can be read. A lock held by another process is waited for
    (:class:`.waiting.Waiter`), a damaged file is a one-line error that names its repair."""

    def __init__(self, path: Path, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly  # a non-zero rank of a distributed run: rank 0 writes

    def _open_write(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=BUSY_SLICE_S, isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(SCHEMA)
            _add_new_columns(con)
        except BaseException:
            con.close()
            raise
        return con

    def _open_read(self) -> sqlite3.Connection:
        """A connection that only reads: where the index can be written, a plain one (SQLite's WAL files
        come and go with it, where a read-only one would leave them behind); where it cannot, read-only,
        or as an immutable file where even the WAL files cannot be made (read-only media: nothing can
        change it there while it is read). No table is created, nothing written."""
        if os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK):
            return sqlite3.connect(self.path, timeout=BUSY_SLICE_S, isolation_level=None)
        uri = self.path.resolve().as_uri()
        con = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=BUSY_SLICE_S, isolation_level=None)
        try:
            con.execute("SELECT COUNT(*) FROM sqlite_master")  # opens the file and its WAL now
            return con
        except sqlite3.OperationalError as e:
            con.close()
            if _error_kind(e) != "unusable":
                raise
        return sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None)

    def _run(self, op, write: bool) -> Any:
        """``op(connection)``, waiting while another process holds the index's lock; SQLite's errors
        about the file (damaged, locked too long, not writable) as one-line errors."""
        waiter = None
        if self.path.is_dir():  # SQLite says only "unable to open database file"
            raise IndexDamaged(self.path, "a folder, not a database file")
        while True:
            try:
                con = self._open_write() if write else self._open_read()
                try:
                    return op(con)
                finally:
                    con.close()
            except sqlite3.DatabaseError as e:
                kind = _error_kind(e)
                if kind == "busy":
                    waiter = waiter or Waiter(f"the index {self.path}", INDEX_TIMEOUT,
                                              "stop the process holding it (`fuser` names it)")
                    waiter.pause()
                    continue
                raise self._user_error(e, kind, write) from None

    def _user_error(self, e: sqlite3.DatabaseError, kind: str, write: bool) -> Exception:
        what = " ".join(str(e).split())
        if kind == "damaged":
            return IndexDamaged(self.path, what)
        if kind == "unusable":
            return SparseddError(f"cannot {'write' if write else 'read'} the index {self.path} ({what})")
        return e

    def _write(self, sql: str, rows: list[tuple], first: tuple[str, tuple] | None = None) -> None:
        """One transaction (``first``, a statement and its values, then ``sql`` on each row); many processes may
        write at once (WAL; a busy one waits)."""
        if self.readonly:
            return

        def transaction(con: sqlite3.Connection) -> None:
            with con:
                con.execute("BEGIN IMMEDIATE")
                if first is not None:
                    con.execute(*first)
                con.executemany(sql, rows)

        self._run(transaction, write=True)

    def upsert_run(self, run_id: str, config: dict[str, Any], preset: str | None, seeds: int, levels: int) -> None:
        now = time.time()
        self._write(
            "INSERT INTO runs VALUES (?, ?, ?, ?, ?, 'partial', NULL, ?, ?) "
            "ON CONFLICT(run_id) DO UPDATE SET status='partial', error=NULL, updated=excluded.updated, "
            "preset=COALESCE(excluded.preset, runs.preset)",
            [(run_id, json.dumps(config, sort_keys=True), preset, seeds, levels, now, now)])

    def set_status(self, run_id: str, status: str, error: str | None = None) -> None:
        self._write("UPDATE runs SET status=?, error=?, updated=? WHERE run_id=?",
                    [(status, error, time.time(), run_id)])

    def link(self, run_id: str, seed: int, level: int, stage_id: str) -> None:
        self._write("INSERT OR REPLACE INTO run_stages VALUES (?, ?, ?, ?)", [(run_id, seed, level, stage_id)])

    def record_epochs(self, stage_id: str, history: list[dict[str, Any]]) -> None:
        cols = ", ".join(EPOCH_COLUMNS)
        marks = ", ".join("?" for _ in EPOCH_COLUMNS)
        rows = [(stage_id, h["epoch"], *(h.get(c) for c in EPOCH_COLUMNS)) for h in history]
        # the stage's whole history replaces the one recorded (a stage computed again may have fewer epochs)
        self._write(f"INSERT OR REPLACE INTO epochs (stage_id, epoch, {cols}) VALUES (?, ?, {marks})", rows,
                    first=("DELETE FROM epochs WHERE stage_id = ?", (stage_id,)))

    def record_level(self, stage_id: str, level: int, metrics: dict[str, Any]) -> None:
        cols = ", ".join(LEVEL_COLUMNS)
        marks = ", ".join("?" for _ in LEVEL_COLUMNS)
        row = (stage_id, level, *(metrics.get(c) for c in LEVEL_COLUMNS), json.dumps(metrics.get("layer_sparsity", {})))
        self._write(f"INSERT OR REPLACE INTO levels (stage_id, level, {cols}, layer_sparsity) VALUES (?, ?, {marks}, ?)", [row])

    def record_analysis(self, analysis_id: str, target: str, kind: str, settings: dict[str, Any],
                        result: dict[str, Any]) -> None:
        self._write("INSERT OR REPLACE INTO analyses VALUES (?, ?, ?, ?, ?)",
                    [(analysis_id, target, kind, json.dumps(settings, sort_keys=True), json.dumps(result))])

    # --- reads; an index not written yet reads as empty, and so does one whose tables are missing
    def _query(self, sql: str, params: tuple = ()) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []

        def rows(con: sqlite3.Connection) -> list[dict[str, Any]]:
            con.row_factory = sqlite3.Row
            try:
                return [dict(r) for r in con.execute(sql, params).fetchall()]
            except sqlite3.OperationalError as e:
                if "no such table" in str(e):  # an empty file (SQLite's empty database)
                    return []
                raise

        return self._run(rows, write=False)

    def run_ids(self) -> list[str]:
        return [r["run_id"] for r in self._query("SELECT run_id FROM runs")]

    def run_status(self, run_id: str) -> str | None:
        """partial, complete or failed; None for a run the index does not have."""
        rows = self._query("SELECT status FROM runs WHERE run_id=?", (run_id,))
        return rows[0]["status"] if rows else None

    def run_stages(self, run_id: str) -> dict[tuple[int, int], str]:
        """The run's stage ids by (seed, level), in seed and level order."""
        rows = self._query("SELECT seed, level, stage_id FROM run_stages WHERE run_id=? ORDER BY seed, level",
                           (run_id,))
        return {(r["seed"], r["level"]): r["stage_id"] for r in rows}

    def run_rows(self) -> list[dict[str, Any]]:
        """One row per run, oldest first, with its config as a dict."""
        rows = [_decoded(self.path, r, "config") for r in self._query("SELECT * FROM runs ORDER BY created")]
        for r in rows:
            if not isinstance(r["config"], dict):  # JSON, but not a configuration's
                raise IndexDamaged(self.path, f"run {r['run_id']}'s config cell holds {type(r['config']).__name__}, "
                                              "not a configuration")
        return rows

    def level_rows(self) -> list[dict[str, Any]]:
        """One row per run, seed and level: its metrics, with the layer sparsities as a dict."""
        rows = self._query("SELECT rs.run_id, rs.seed, l.* FROM run_stages rs JOIN levels l ON l.stage_id = rs.stage_id "
                           "ORDER BY rs.run_id, rs.seed, rs.level")
        return [_decoded(self.path, _with_columns(r, LEVEL_COLUMNS), "layer_sparsity") for r in rows]

    def epoch_rows(self) -> list[dict[str, Any]]:
        """One row per run, seed, level and epoch (an index read, not written, by this version may lack
        the newest columns: they read as NULL, as they would once added)."""
        rows = self._query("SELECT rs.run_id, rs.seed, rs.level, e.* FROM run_stages rs "
                           "JOIN epochs e ON e.stage_id = rs.stage_id ORDER BY rs.run_id, rs.seed, rs.level, e.epoch")
        return [_with_columns(r, EPOCH_COLUMNS) for r in rows]

    def contents(self) -> dict[str, set]:
        """What the index holds, to compare with what the stage folders say (``sparsedd doctor``)."""
        return {"runs": {r["run_id"] for r in self._query("SELECT run_id FROM runs")},
                "links": {(r["run_id"], r["seed"], r["level"], r["stage_id"])
                          for r in self._query("SELECT * FROM run_stages")},
                "levels": {r["stage_id"] for r in self._query("SELECT stage_id FROM levels")},
                "analyses": {r["analysis_id"] for r in self._query("SELECT analysis_id FROM analyses")}}

    def table_rows(self) -> dict[str, list[dict[str, Any]]]:
        """Every row of every table, as stored (``sparsedd doctor`` compares them with the stage folders)."""
        return {table: self._query(f"SELECT * FROM {table}") for table in TABLES}

    def problem(self) -> str | None:
        """Why the index cannot be read as it is (missing, damaged, tables missing); None when it can."""
        if not self.path.exists():
            return "missing"

        def check(con: sqlite3.Connection) -> str | None:
            result = con.execute("PRAGMA integrity_check").fetchone()[0]
            if result != "ok":
                return f"damaged (integrity check: {' '.join(result.split())})"
            have = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            missing = [t for t in TABLES if t not in have]
            return f"tables missing: {', '.join(missing)}" if missing else None

        try:
            problem = self._run(check, write=False)
            if problem is None:  # every JSON cell decodes
                self.run_rows(), self.level_rows(), self.analysis_rows()
            return problem
        except IndexDamaged as e:
            return f"damaged ({e.why})"

    # --- rebuilding from the stage folders (sparsedd doctor --repair): a run's row as it was
    def restore_run(self, run_id: str, config: dict[str, Any], preset: str | None, seeds: int, levels: int, status: str,
                    error: str | None, created: float, updated: float) -> None:
        self._write("INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(run_id, json.dumps(config, sort_keys=True), preset, seeds, levels, status, error, created, updated)])

    def analysis_rows(self) -> list[dict[str, Any]]:
        """One row per run, seed, level and cached analysis, with its settings and result as dicts."""
        rows = self._query("SELECT rs.run_id, rs.seed, rs.level, a.* FROM run_stages rs "
                           "JOIN analyses a ON a.target = rs.stage_id ORDER BY rs.run_id, a.kind, rs.seed, rs.level")
        return [_decoded(self.path, r, "settings", "result") for r in rows]


class BufferedIndex:
    """Collects the index writes of a process that must not write the index itself (a Ray worker on
    another node): the driver replays them with :func:`replay` on the real index."""

    WRITES = ("upsert_run", "set_status", "link", "record_epochs", "record_level", "record_analysis")

    def __init__(self):
        self.calls: list[tuple[str, tuple, dict]] = []
        self.readonly = False

    def __getattr__(self, name: str):
        if name in BufferedIndex.WRITES:
            return lambda *args, **kwargs: self.calls.append((name, args, kwargs))
        if hasattr(Index, name):  # a read: the rows are in the driver's index, not here
            raise RuntimeError(f"a buffered index cannot be read ({name})")
        raise AttributeError(name)


def replay(index: Index, calls: list[tuple[str, tuple, dict]]) -> None:
    for name, args, kwargs in calls:
        getattr(index, name)(*args, **kwargs)


# --- replacing the index file (sparsedd doctor --repair)
def remove_database(path: Path) -> None:
    """A database and its WAL files gone (a folder in its place too: an index that was a folder, set aside)."""
    if path.is_dir():
        shutil.rmtree(path)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def swap_database(path: Path, fresh: Path) -> bool:
    """Put ``fresh`` in the place of ``path``, the old database (with its WAL files) kept as ``.old``."""
    aside = path.with_name(path.name + ".old")
    kept = path.exists()
    if kept:
        remove_database(aside)
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{path}{suffix}").exists():
                os.replace(f"{path}{suffix}", f"{aside}{suffix}")
    for suffix in ("-wal", "-shm"):  # nothing is left in them once its connections closed
        Path(f"{fresh}{suffix}").unlink(missing_ok=True)
    os.replace(fresh, path)
    return kept
