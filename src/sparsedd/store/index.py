"""The SQLite index of runs, stages and metrics (the stage folders are the source of truth)."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

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


class Index:
    def __init__(self, path: Path, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly  # a non-zero rank of a distributed run: rank 0 writes

    def connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA busy_timeout=60000")
        con.executescript(SCHEMA)
        _add_new_columns(con)
        return con

    def _write(self, sql: str, rows: list[tuple]) -> None:
        """One transaction; many processes may write at once (WAL, a busy timeout, then retries)."""
        if self.readonly:
            return
        for attempt in range(8):
            try:
                con = self.connect()
                try:
                    with con:
                        con.execute("BEGIN IMMEDIATE")
                        con.executemany(sql, rows)
                    return
                finally:
                    con.close()
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e) or attempt == 7:
                    raise
                time.sleep(0.05 * 2 ** attempt)

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
        self._write(f"INSERT OR REPLACE INTO epochs (stage_id, epoch, {cols}) VALUES (?, ?, {marks})", rows)

    def record_level(self, stage_id: str, level: int, metrics: dict[str, Any]) -> None:
        cols = ", ".join(LEVEL_COLUMNS)
        marks = ", ".join("?" for _ in LEVEL_COLUMNS)
        row = (stage_id, level, *(metrics.get(c) for c in LEVEL_COLUMNS), json.dumps(metrics.get("layer_sparsity", {})))
        self._write(f"INSERT OR REPLACE INTO levels (stage_id, level, {cols}, layer_sparsity) VALUES (?, ?, {marks}, ?)", [row])

    def record_analysis(self, analysis_id: str, target: str, kind: str, settings: dict[str, Any],
                        result: dict[str, Any]) -> None:
        self._write("INSERT OR REPLACE INTO analyses VALUES (?, ?, ?, ?, ?)",
                    [(analysis_id, target, kind, json.dumps(settings, sort_keys=True), json.dumps(result))])

    # --- reads; an index not written yet reads as empty
    def _query(self, sql: str, params: tuple = ()) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        con = self.connect()
        con.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in con.execute(sql, params).fetchall()]
        finally:
            con.close()

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
        return [{**r, "config": json.loads(r["config"])} for r in self._query("SELECT * FROM runs ORDER BY created")]

    def level_rows(self) -> list[dict[str, Any]]:
        """One row per run, seed and level: its metrics, with the layer sparsities as a dict."""
        rows = self._query("SELECT rs.run_id, rs.seed, l.* FROM run_stages rs JOIN levels l ON l.stage_id = rs.stage_id "
                           "ORDER BY rs.run_id, rs.seed, rs.level")
        return [{**r, "layer_sparsity": json.loads(r["layer_sparsity"])} for r in rows]

    def epoch_rows(self) -> list[dict[str, Any]]:
        """One row per run, seed, level and epoch."""
        return self._query("SELECT rs.run_id, rs.seed, rs.level, e.* FROM run_stages rs "
                           "JOIN epochs e ON e.stage_id = rs.stage_id ORDER BY rs.run_id, rs.seed, rs.level, e.epoch")

    def analysis_rows(self) -> list[dict[str, Any]]:
        """One row per run, seed, level and cached analysis, with its settings and result as dicts."""
        rows = self._query("SELECT rs.run_id, rs.seed, rs.level, a.* FROM run_stages rs "
                           "JOIN analyses a ON a.target = rs.stage_id ORDER BY rs.run_id, a.kind, rs.seed, rs.level")
        return [{**r, "settings": json.loads(r["settings"]), "result": json.loads(r["result"])} for r in rows]


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
