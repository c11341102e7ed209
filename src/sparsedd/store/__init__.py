"""The results store: content-addressed stage folders plus an SQLite index.

Layout under the root (the names are in :mod:`.paths`)::

    index.sqlite              runs, run -> stage links, per-level and per-epoch metrics
    stages/<id>/stage.json    what the stage is (its key; the id is the key's hash)
    stages/<id>/checkpoint.pt while it trains; removed when it is done
    stages/<id>/final.pt      weights and mask at the end
    stages/<id>/done.json     metrics; written last, so its presence means "complete"
    stages/<id>/results-only.json  a stage merged without its weights (sparsedd merge --results-only)
    runs/<id>/config.json     the run's full config
    data/<key>.json           the SHA-256 of the data its results were made with, per data key
    .../NAME.sha256           beside every file: its checksum, verified on every read (:mod:`.files`)

A stage is skipped when its done.json exists and its files are as written (:meth:`Store.check_done`);
a damaged one is computed again. The index rows are upserted, so replaying them is harmless.
Other packages read and write these files only through :class:`Store`'s methods.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import torch

from ..config import is_id, stable_hash
from ..errors import SparseddError, notice
from . import waiting
from .files import (DamagedFile, FileCheckpointer, copy_checked, load_tensors, read_json, readable_structure,
                    recorded_checksum, remove, same_bytes, save_tensors, set_aside, verify, write_json)
from .index import Index, remove_database, swap_database
from .paths import (BATCH_POINTER, BATCH_RESULT, CHECKPOINT, CHECKPOINT_BEFORE, CHECKSUM, CLAIMS, DATA, DONE, FINAL,
                    INDEX, INIT, LABELS, LOCKS, MIGRATIONS, MLRUNS, RESULTS_ONLY, REWIND, RUN_CONFIG, RUNS, STAGE_KEY,
                    STAGES, SWEEPS, WANDB)

# the files of a stage that are read once it is done (a batch's result too), and those every stage of a
# kind has (a damaged batch.json only sends the stage to train again: Store.batch_of)
STAGE_FILES = (STAGE_KEY, DONE, FINAL, INIT, LABELS, REWIND, BATCH_RESULT, RESULTS_ONLY)
WEIGHTS = (FINAL, INIT, LABELS, REWIND)  # what `sparsedd merge --results-only` leaves behind
CHECKPOINTS = (CHECKPOINT, CHECKPOINT_BEFORE)
REQUIRED = {"dense": (FINAL, INIT, LABELS), "level": (FINAL,), "rewind": (REWIND,), "analysis-redense": (FINAL,)}

StateDict = dict[str, torch.Tensor]


def default_root() -> Path:
    return Path(os.environ.get("SPARSEDD_ROOT") or "runs")


def read_data_record(path: Path) -> tuple[str | None, str | None]:
    """A data record's SHA-256, or why it is not what the store writes (``{"data": NAME, "sha256": 64 hex
    digits}``): (digest, None) or (None, why). A record that is present is this or damaged: it is never
    taken as the absence of a record."""
    try:
        rec = read_json(path)
    except DamagedFile as e:
        return None, e.why
    if not isinstance(rec, dict):
        return None, f"holds {type(rec).__name__}, not a record"
    digest = rec.get("sha256")
    if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
        return None, f"its sha256 is {digest!r}, not 64 hexadecimal digits"
    if not isinstance(rec.get("data"), str):
        return None, f"its data set name is {rec.get('data')!r}"
    return digest, None


class Store:
    """``readonly``: a process that reads but never writes (the non-zero ranks of a distributed run)."""

    def __init__(self, root: str | Path | None = None, readonly: bool = False, index: Any = None):
        """``index``: one standing in for the store's own (a Ray worker's buffer of index calls, which the
        sweep's driver replays); such a process leaves migrations to the driver, which opened the store."""
        self.root = Path(root) if root is not None else default_root()
        self.readonly = readonly
        self._index = index if index is not None else Index(self.root / INDEX, readonly)
        self._migrated = readonly or index is not None  # a read-only process reads the store as it is

    @property
    def index(self) -> Index:
        """The SQLite index, once the store is up to date (:meth:`migrate`)."""
        self.migrate()
        return self._index

    def migrate(self) -> None:
        """Apply the corrections of stores written by earlier versions not applied yet
        (:mod:`.migrations`), once per Store object, when it is first used: its index or a stage's record
        read. Not when it is made, so a command refused before it uses the store leaves it untouched. A
        store without stages needs none (:meth:`begin_stage` marks them applied before its first)."""
        if self._migrated:
            return
        self._migrated = True  # first: the corrections themselves read the index and the records
        if not (self.root / STAGES).is_dir():
            return
        from .migrations import MIGRATIONS, apply

        for name, earlier, correct in MIGRATIONS:
            apply(self, name, earlier, correct)

    # --- stages
    @staticmethod
    def stage_id(key: dict[str, Any]) -> str:
        return stable_hash(key)

    def stage_dir(self, stage_id: str) -> Path:
        return self.root / STAGES / stage_id

    def is_done(self, stage_id: str) -> bool:
        return (self.stage_dir(stage_id) / DONE).exists()

    def results_only(self, stage_id: str) -> bool:
        """Whether the stage was merged without its weights (``sparsedd merge --results-only``): its results are
        read (listed, shown, reported), and a run that passes it computes it again, with its weights."""
        return (self.stage_dir(stage_id) / RESULTS_ONLY).exists()

    def check_done(self, stage_id: str) -> bool:
        """Whether the stage is done with every file as it was written. A done stage with a damaged or
        missing file is reopened (the damaged files set aside, ``done.json`` removed) and said so: its
        inputs are known, so the caller computes it again. The caller holds the stage's lock."""
        if not self.is_done(stage_id):
            return False
        problems = self.stage_problems(stage_id)
        if not problems and self.results_only(stage_id):  # its weights were left where it was merged from
            if not self.readonly:
                self.reopen_stage(stage_id)
                notice(f"stage {self.stage_dir(stage_id)} holds results only (merged with --results-only): it is "
                       "computed again, with its weights")
            return False
        if not problems:
            self._tidy(stage_id)  # what a kill after done.json left: checkpoints, a checksum's temporary file
            return True
        if self.readonly:  # a non-zero rank: rank 0 reopens it, and every rank computes it again
            return False
        self.reopen_stage(stage_id)
        notice(f"stage {self.stage_dir(stage_id)} was complete but {'; '.join(problems)}: the damaged files are "
               "set aside and the stage is computed again")
        return False

    def stage_problems(self, stage_id: str, checkpoints: bool = False) -> list[str]:
        """What is wrong with the stage's files (and its checkpoints), one item per file (empty when nothing
        is): a file whose checksum does not match, a file without one that cannot be what it claims, a
        file a done stage must have missing."""
        d = self.stage_dir(stage_id)
        damaged = dict(self._damaged(d, STAGE_FILES + (CHECKPOINTS if checkpoints else ())))
        problems = [f"{name} is damaged ({why})" for name, why in damaged.items()]
        if self.is_done(stage_id) and STAGE_KEY not in damaged and (d / STAGE_KEY).exists() and \
                not self.results_only(stage_id):  # (its weights were left where it was merged from: not missing)
            kind = self.stage_key(stage_id).get("kind")
            problems += [f"{name} is missing" for name in REQUIRED.get(kind, ()) if not (d / name).exists()]
        return problems

    @staticmethod
    def _damaged(d: Path, names: tuple[str, ...]) -> list[tuple[str, str]]:
        out = []
        for name in names:
            path = d / name
            if not path.exists():
                continue
            try:
                verify(path)
                why = readable_structure(path)
            except DamagedFile as e:
                why = e.why
            if why:
                out.append((name, why))
        return out

    def reopen_stage(self, stage_id: str) -> list[str]:
        """Make a stage not done, its damaged files (checkpoints too) set aside as ``NAME.damaged``;
        returns their names."""
        d = self.stage_dir(stage_id)
        damaged = [name for name, _ in self._damaged(d, STAGE_FILES + CHECKPOINTS)]
        for name in damaged:
            set_aside(d / name)
        remove(d / DONE)
        remove(d / RESULTS_ONLY)
        return damaged

    def begin_stage(self, stage_id: str, key: dict[str, Any]) -> Path:
        d = self.stage_dir(stage_id)
        if self.readonly:
            return d
        if not (self.root / STAGES).is_dir():  # a new store: written by this version, no correction due
            self._mark_all_migrated()
        if not (d / STAGE_KEY).exists():
            write_json(d / STAGE_KEY, key)
        remove(d / RESULTS_ONLY)  # (a merge's, interrupted before its done.json): computed here, with weights
        self._tidy(stage_id)
        return d

    def drop_unstarted(self, stage_id: str) -> None:
        """Remove a stage folder that holds nothing but its key (a computation that failed before writing
        anything): what is left of a failure is a folder to resume from, or none."""
        d = self.stage_dir(stage_id)
        if self.readonly or not d.is_dir() or (d / DONE).exists():
            return
        if all(p.name in (STAGE_KEY, STAGE_KEY + CHECKSUM) or p.name.endswith(".tmp") for p in d.iterdir()):
            shutil.rmtree(d, ignore_errors=True)

    def finish_stage(self, stage_id: str, done: dict[str, Any]) -> None:
        if self.readonly:
            return
        write_json(self.stage_dir(stage_id) / DONE, done)
        self._tidy(stage_id)

    def _tidy(self, stage_id: str) -> None:
        """Remove the temporary files of killed writes (never read), and a done stage's checkpoints."""
        if self.readonly:
            return
        d = self.stage_dir(stage_id)
        for stale in d.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        if self.is_done(stage_id):
            for name in CHECKPOINTS:
                remove(d / name)

    def done_info(self, stage_id: str) -> dict[str, Any]:
        self.migrate()
        return read_json(self.stage_dir(stage_id) / DONE)

    def stage_key(self, stage_id: str) -> dict[str, Any]:
        """What the stage is (the key its id hashes)."""
        return read_json(self.stage_dir(stage_id) / STAGE_KEY)

    def stage_kind(self, stage_id: str) -> str | None:
        """The stage's kind (dense, level, rewind, batch, analysis-...); None where its key cannot be read."""
        try:
            key = self.stage_key(stage_id)
        except (OSError, DamagedFile):
            return None
        return key.get("kind") if isinstance(key, dict) else None

    def stage_ids(self) -> list[str]:
        """Every stage folder of the store, sorted."""
        folder = self.root / STAGES
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    # --- the data the results were made with
    def check_data(self, fingerprints: dict[str, tuple[str, str]], made_with: set[str] = frozenset()) -> None:
        """Refuse data whose content differs from the data this store's results under the same data key were
        made with: stage ids hash the data's configuration, not its content, so a stage computed on other
        data would otherwise be reused as if it were the same. ``fingerprints``: data key -> (data set name,
        SHA-256). Every key is compared before any record is written; a key's first check records it, and where
        the store already holds results of it (``made_with``: a store from before these records, or one whose
        record was deleted) it says that they are taken as these data's."""
        missing = {key: value for key, value in fingerprints.items() if self._recorded_data(key, *value) is None}
        if self.readonly or not missing:
            return
        for key, (name, fingerprint) in missing.items():
            with self.lock(f"data-{key}"):  # two processes with other data: the second one finds the first's record
                if self._recorded_data(key, name, fingerprint) is None:
                    write_json(self.root / DATA / f"{key}.json", {"data": name, "sha256": fingerprint})
                    if key in made_with:  # (a new key of new results is simply recorded)
                        notice(f"{self.root} holds results from before it recorded its data; the {name} data "
                               f"loaded now are taken as theirs (sha256 {fingerprint[:12]}), from now on checked")

    def _recorded_data(self, key: str, name: str, fingerprint: str) -> str | None:
        """The recorded SHA-256 of data key ``key`` (None: none yet); an error where it is not ``fingerprint``."""
        path = self.root / DATA / f"{key}.json"
        if not path.exists():
            return None
        recorded, why = read_data_record(path)
        if why is not None:
            raise SparseddError(f"{path} is damaged ({why}); if the {name} data loaded now are those the results in "
                                f"{self.root} were made with, delete it (the next run records them); otherwise "
                                f"use another --root") from None
        if recorded != fingerprint:
            raise SparseddError(
                f"the {name} data loaded now differ from those the results in {self.root} were made with (sha256 "
                f"{fingerprint[:12]} now, {recorded[:12]} recorded; a new release of a data generator or of numpy "
                f"can do this); use another --root for results on these data, or delete {path} to let this store "
                f"mix them")
        return recorded

    def data_records(self) -> list[Path]:
        """The data records of the store (``data/<key>.json``), sorted."""
        folder = self.root / DATA
        return sorted(folder.glob("*.json")) if folder.is_dir() else []

    def has_checkpoint(self, stage_id: str) -> bool:
        """Whether the stage has a checkpoint of its own (it started training alone, not in a batch)."""
        return (self.stage_dir(stage_id) / CHECKPOINT).exists()

    # --- one-time corrections of stores written by earlier versions
    def migrated(self) -> list[str]:
        path = self.root / MIGRATIONS
        return read_json(path)["applied"] if path.exists() else []

    def mark_migrated(self, name: str) -> None:
        if not self.readonly:
            write_json(self.root / MIGRATIONS, {"applied": sorted({*self.migrated(), name})})

    def _mark_all_migrated(self) -> None:
        """Every correction marked applied (a new store's), under the lock every writer of ``migrations.json``
        holds: two processes making one store at once would otherwise read each other's half-replaced file
        and sidecar as a damaged file."""
        from . import migrations

        with self.lock(migrations.LOCK):
            applied = set(self.migrated())
            markers = {m for name, earlier, _ in migrations.MIGRATIONS for m in (*earlier, name)}
            if not markers <= applied:
                write_json(self.root / MIGRATIONS, {"applied": sorted(applied | markers)})
        self._migrated = True

    def checkpointer(self, stage_id: str, every_s: float = 60.0, epoch_every_s: float = 1.0) -> FileCheckpointer:
        d = self.stage_dir(stage_id)
        return FileCheckpointer(d / CHECKPOINT, every_s, epoch_every_s, self.readonly, previous=d / CHECKPOINT_BEFORE)

    def _save(self, stage_id: str, name: str, obj: Any) -> None:
        if self.readonly:
            return
        save_tensors(self.stage_dir(stage_id) / name, obj)

    def _load(self, stage_id: str, name: str) -> Any:
        if self.results_only(stage_id) and not (self.stage_dir(stage_id) / name).exists():
            raise SparseddError(f"stage {self.stage_dir(stage_id)} holds results only (merged with --results-only): "
                                f"its {name} was left in the store it came from; `sparsedd run` of its run in "
                                f"{self.root} computes it again, or merge that store without --results-only")
        try:
            return load_tensors(self.stage_dir(stage_id) / name)
        except DamagedFile as e:
            raise DamagedFile(e.path, e.why, f"`sparsedd doctor --root {self.root} --repair` sets the stage aside, and "
                                             "the next `sparsedd run` that needs it computes it again") from None

    # --- the files of a stage
    def save_final(self, stage_id: str, model: StateDict, mask: StateDict | None = None, optim: Any = None) -> None:
        """The weights at the end; a trained stage's with its mask and optimizer state (an analysis
        that retrains keeps the weights only)."""
        final = {"model": model} if mask is None else {"model": model, "mask": mask, "optim": optim}
        self._save(stage_id, FINAL, final)

    def final(self, stage_id: str) -> dict[str, Any]:
        """``{"model": ...}``, with ``"mask"`` and ``"optim"`` where :meth:`save_final` got them."""
        return self._load(stage_id, FINAL)

    def save_init(self, stage_id: str, model: StateDict) -> None:
        self._save(stage_id, INIT, {"model": model})

    def has_init(self, stage_id: str) -> bool:
        return (self.stage_dir(stage_id) / INIT).exists()

    def init(self, stage_id: str) -> StateDict:
        return self._load(stage_id, INIT)["model"]

    def save_labels(self, stage_id: str, labels: torch.Tensor, chosen: torch.Tensor, corrupted: torch.Tensor,
                    effective_rate: float) -> None:
        """The dense stage's noisy training labels, the examples drawn and those whose label changed."""
        self._save(stage_id, LABELS, {"labels": labels, "chosen": chosen, "corrupted": corrupted,
                                      "effective_rate": torch.tensor(effective_rate)})

    def has_labels(self, stage_id: str) -> bool:
        return (self.stage_dir(stage_id) / LABELS).exists()

    def labels(self, stage_id: str) -> dict[str, torch.Tensor]:
        return self._load(stage_id, LABELS)

    def save_rewind(self, stage_id: str, model: StateDict) -> None:
        self._save(stage_id, REWIND, {"model": model})

    def rewind(self, stage_id: str) -> StateDict:
        return self._load(stage_id, REWIND)["model"]

    # --- batches: stages trained together save their outcomes in the batch's folder first
    def point_to_batch(self, stage_id: str, batch_id: str) -> None:
        """Record that ``stage_id`` trains in batch ``batch_id``, so a resumed run finds its outcome."""
        if self.readonly:
            return
        write_json(self.stage_dir(stage_id) / BATCH_POINTER, {"batch": batch_id})

    def batch_of(self, stage_id: str) -> str | None:
        pointer = self.stage_dir(stage_id) / BATCH_POINTER
        return self._recomputable(pointer, lambda: read_json(pointer)["batch"], "the stage is trained again")

    def save_batch_result(self, batch_id: str, outcomes: dict[str, dict[str, Any]]) -> None:
        """Every member stage's outcome (weights, history, final metrics, optimizer state, seconds) by stage id."""
        self._save(batch_id, BATCH_RESULT, outcomes)

    def batch_result(self, batch_id: str) -> dict[str, dict[str, Any]] | None:
        """What :meth:`save_batch_result` saved; None while the batch has not finished."""
        path = self.stage_dir(batch_id) / BATCH_RESULT
        return self._recomputable(path, lambda: load_tensors(path), "the batch is trained again")

    def _recomputable(self, path: Path, read, then: str) -> Any:
        """``read()`` of a file that is only a shortcut (what was computed can be computed again): None
        when it is missing, and when it is damaged, which is then set aside and said so."""
        if not path.exists():
            return None
        try:
            return read()
        except DamagedFile as e:
            aside = "" if self.readonly else f"; set aside as {set_aside(path).name}"
            notice(f"{e.path} is damaged ({e.why}){aside}: {then}")
            return None

    @contextlib.contextmanager
    def lock(self, stage_id: str) -> Iterator[None]:
        """Hold the stage's lock: another process wanting the same stage waits, then finds it done.

        An advisory ``flock`` on ``locks/STAGE.lock``; the kernel drops it when its process dies,
        so a killed worker never leaves a stage locked. A wait is reported on the terminal and given up
        after ``SPARSEDD_LOCK_TIMEOUT`` seconds (:mod:`.waiting`).
        """
        if self.readonly:
            yield
            return
        path = self.root / LOCKS / f"{stage_id}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as f:
            waiting.acquire(f, f"stage {stage_id} ({self.stage_dir(stage_id)})")
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def locked_stages(self) -> dict[str, str]:
        """The stages (and other locks) another process holds now, with who holds each."""
        folder = self.root / LOCKS
        held = {p.stem: waiting.held_by(p) for p in sorted(folder.glob("*.lock"))} if folder.is_dir() else {}
        return {name: who for name, who in held.items() if who}

    # --- runs
    def run_dir(self, run_id: str) -> Path:
        return self.root / RUNS / run_id

    # --- the index file, replaced whole by a rebuild (sparsedd doctor --repair)
    def fresh_index(self) -> Index:
        """An empty index beside the store's, to be filled and then put in its place (:meth:`replace_index`)."""
        path = self.root / (INDEX + ".rebuilding")
        remove_database(path)
        return Index(path)

    def replace_index(self, fresh: Index) -> bool:
        """Put ``fresh`` in the place of the store's index, the old one kept as ``index.sqlite.old``;
        whether there was an old one."""
        return swap_database(self.root / INDEX, fresh.path)

    # --- what sweeps and claims keep beside the runs
    def sweep_dir(self, sweep_id: str) -> Path:
        """A sweep's own folder (its record, logs, status and report)."""
        return self.root / SWEEPS / sweep_id

    def claims_file(self, result_id: str) -> Path:
        """Where a `sparsedd claims` result is kept."""
        return self.root / CLAIMS / f"{result_id}.json"

    def claims_files(self) -> list[Path]:
        """Every kept claims result, sorted."""
        folder = self.root / CLAIMS
        return sorted(folder.glob("*.json")) if folder.is_dir() else []

    # --- what `sparsedd export --to mlflow|wandb` keeps beside the runs by default
    def mlflow_dir(self) -> Path:
        """The local MLflow file store (``mlflow ui --backend-store-uri ROOT/mlruns``)."""
        return self.root / MLRUNS

    def wandb_dir(self) -> Path:
        """The folder W&B is given as its ``dir``: it keeps its offline runs in ``wandb/`` there (the root's)."""
        return self.root

    def wandb_record(self, run_id: str) -> Path:
        """What `sparsedd export --to wandb` logged of a run, beside W&B's offline runs."""
        return self.root / WANDB / f"sparsedd-{run_id}.json"

    def stage_checksums(self, stage_id: str) -> dict[str, dict[str, Any]]:
        """The checksums recorded for the stage's files when they were written (name -> ``{"sha256", "bytes"}``),
        each file verified against its own first; a file written before checksums existed has none."""
        d, out = self.stage_dir(stage_id), {}
        for name in STAGE_FILES:
            if not (d / name).exists():
                continue
            try:
                verify(d / name)
            except DamagedFile as e:
                raise DamagedFile(e.path, e.why, f"`sparsedd doctor --root {self.root} --repair` sets the stage aside, "
                                                 "and the next `sparsedd run` that needs it computes it again") from None
            rec = recorded_checksum(d / name)
            if rec is not None:
                out[name] = {"sha256": rec["sha256"], "bytes": rec["bytes"]}
        return out

    def register_run(self, run_id: str, config: dict[str, Any], preset: str | None, seeds: int, levels: int) -> None:
        if self.readonly:
            return
        write_json(self.run_dir(run_id) / RUN_CONFIG, {"config": config, "preset": preset})
        self.index.upsert_run(run_id, config, preset, seeds, levels)

    def run_config(self, run_id: str) -> dict[str, Any]:
        """The run's full config as registered (what ``config.from_dict`` reads)."""
        return self.run_record(run_id)["config"]

    def run_record(self, run_id: str) -> dict[str, Any]:
        """``{"config": ..., "preset": ...}`` as registered."""
        try:
            return read_json(self.run_dir(run_id) / RUN_CONFIG)
        except DamagedFile as e:
            raise DamagedFile(e.path, e.why, "run the run's `sparsedd run` command again: it writes it anew") from None

    def run_folders(self) -> list[str]:
        """The ids of the runs registered in the run folders (the index may lack some), sorted."""
        folder = self.root / RUNS
        return sorted(p.parent.name for p in folder.glob(f"*/{RUN_CONFIG}")) if folder.is_dir() else []

    # --- another store's stages, runs and data records brought in (`sparsedd merge`: sparsedd.merge)
    def is_store(self) -> bool:
        """Whether the root holds a store: its stage folder, its index, or a run folder named by a run id (a
        bare ``runs/`` is also the default store's own name: the folder above a store is not one)."""
        if (self.root / STAGES).is_dir() or (self.root / INDEX).exists():
            return True
        runs = self.root / RUNS
        return runs.is_dir() and any(is_id(p.name) and p.is_dir() for p in runs.iterdir())

    def pending_migrations(self) -> list[str]:
        """The corrections of :mod:`.migrations` this store's stages have not had yet (read, nothing applied)."""
        if not (self.root / STAGES).is_dir():
            return []
        from .migrations import MIGRATIONS

        applied = self.migrated()
        return [name for name, _, _ in MIGRATIONS if name not in applied]

    def prepare_merge(self) -> None:
        """Bring this store up to date before the stages of up-to-date stores are merged into it (a store
        without stages yet is marked up to date, as its first computed stage would mark it)."""
        if not self.readonly and not (self.root / STAGES).is_dir():
            self._mark_all_migrated()
        self.migrate()

    def recorded_data(self) -> dict[str, tuple[Path, str | None, str | None]]:
        """Each data key's record, with its SHA-256 or why it is damaged: key -> (path, digest, why)
        (:func:`read_data_record`)."""
        return {path.stem: (path, *read_data_record(path)) for path in self.data_records()}

    def merge_data_record(self, src: "Store", key: str) -> bool:
        """Copy ``src``'s record of data key ``key`` (verified) where this store has none; whether it did. The
        caller has compared the records of both stores."""
        path = self.root / DATA / f"{key}.json"
        if path.exists():
            return False
        with self.lock(f"data-{key}"):  # as check_data writes it
            if path.exists():
                return False
            copy_checked(src.root / DATA / f"{key}.json", path)
        return True

    def merge_run(self, src: "Store", run_id: str) -> bool:
        """Copy ``src``'s record of run ``run_id`` (its config.json, verified) where this store has none; whether
        it did."""
        dest = self.run_dir(run_id) / RUN_CONFIG
        if dest.exists():
            return False
        copy_checked(src.run_dir(run_id) / RUN_CONFIG, dest)
        return True

    def merge_stage(self, src: "Store", stage_id: str, results_only: bool = False) -> tuple[str, str]:
        """Bring ``src``'s stage in: (outcome, detail). "copied"; "completed": its weights given to this
        store's results-only copy of the same results; "there": done here already, left as it is;
        "unfinished": not done in ``src``, not copied; "weights": a stage of weights only, left with
        ``results_only``; "damaged": a file of ``src``'s is (``detail`` says which), and nothing of the stage is
        copied. Files are copied verified and atomically (:func:`.files.copy_checked`), ``done.json`` last,
        under this store's lock of the stage."""
        if not src.is_done(stage_id):
            return "unfinished", ""
        if self.is_done(stage_id) and not self.results_only(stage_id):  # not touched (nor locked), only compared:
            return "there", "" if self._same_weights(src, stage_id) else "other weights"
        try:
            plan = src._merge_plan(stage_id, results_only)
        except DamagedFile as e:
            return "damaged", f"{e.path.name} is damaged ({e.why})"
        if plan is None:
            return "weights", ""
        names, marker = plan
        if self.is_done(stage_id) and not self._completed_by(src, stage_id, names):
            return "there", ""
        problems = src.stage_problems(stage_id) if marker is None and RESULTS_ONLY not in names else \
            [f"{name} is damaged ({why})" for name, why in self._damaged(src.stage_dir(stage_id), tuple(names))]
        if problems:
            return "damaged", "; ".join(problems)
        with self.lock(stage_id):
            if not self.is_done(stage_id):
                return self._copy_stage(src, stage_id, names, marker, "copied")
            if self._completed_by(src, stage_id, names):
                return self._copy_stage(src, stage_id, [n for n in names if n in WEIGHTS], None, "completed")
            return "there", ""

    def _same_weights(self, src: "Store", stage_id: str) -> bool:
        """Whether ``src``'s final weights of a stage done in both are this store's, by their recorded checksums
        (a stage computed another way, e.g. under another --batch or --sparse choice, has the same id and, past
        float rounding grown over the epochs, other weights; where either has no record, taken as the same)."""
        mine, theirs = (recorded_checksum(store.stage_dir(stage_id) / FINAL) for store in (self, src))
        return mine is None or theirs is None or mine.get("sha256") == theirs.get("sha256")

    def _merge_plan(self, stage_id: str, results_only: bool) -> tuple[list[str], dict[str, Any] | None] | None:
        """The files of this done stage to copy into another store, ``done.json`` last, and the results-only
        record to write there (None: none); None where nothing is worth copying (weights only, left)."""
        d = self.stage_dir(stage_id)
        key = self.stage_key(stage_id)
        kind = key.get("kind") if isinstance(key, dict) else None
        if self.results_only(stage_id):  # merged here without its weights: so it goes on
            return None if kind == "rewind" else ([STAGE_KEY, RESULTS_ONLY, DONE], None)
        weights = [name for name in WEIGHTS if (d / name).exists()]
        if not results_only:
            return [STAGE_KEY, *weights, DONE], None
        if kind == "rewind":
            return None
        return [STAGE_KEY, DONE], ({"left": weights, "from": str(self.root)} if weights else None)

    def _completed_by(self, src: "Store", stage_id: str, names: list[str]) -> bool:
        """Whether this store's copy of the stage holds results only, and ``src``'s the same results with
        their weights."""
        return (self.results_only(stage_id) and RESULTS_ONLY not in names and any(n in WEIGHTS for n in names)
                and same_bytes(self.stage_dir(stage_id) / DONE, src.stage_dir(stage_id) / DONE))

    def _copy_stage(self, src: "Store", stage_id: str, names: list[str], marker: dict[str, Any] | None,
                    outcome: str) -> tuple[str, str]:
        """Copy ``names`` from ``src``'s stage folder (``marker`` written before ``done.json``); a file found
        damaged on the way takes back what was copied. The caller holds the stage's lock."""
        d, s = self.stage_dir(stage_id), src.stage_dir(stage_id)
        existed, written = d.exists(), []
        if outcome == "copied":
            remove(d / RESULTS_ONLY)  # (an interrupted merge's)
        try:
            for name in names:
                if name == DONE and marker is not None:
                    write_json(d / RESULTS_ONLY, marker)
                    written.append(RESULTS_ONLY)
                copy_checked(s / name, d / name)
                written.append(name)
        except DamagedFile as e:
            for name in written:
                if existed and name == STAGE_KEY:  # (this store's own partial stage keeps its key)
                    continue
                remove(d / name)
            if not existed:
                with contextlib.suppress(OSError):
                    d.rmdir()
            return "damaged", f"{e.path.name} is damaged ({e.why})"
        if outcome == "completed":
            remove(d / RESULTS_ONLY)
        self._tidy(stage_id)
        return outcome, ""


__all__ = ["Store", "FileCheckpointer", "Index", "DamagedFile", "default_root", "read_json", "write_json",
           "save_tensors", "load_tensors"]
