"""`sparsedd merge SRC... --root DST [--results-only]`: the stages and runs of other stores brought into one.

Checked before anything is written (a one-line error, exit code 2, DST untouched): every SRC is a folder
holding a store, not DST itself, and up to date with this version's corrections (:mod:`.store.migrations`);
DST is a folder (or can be made one) whose index is readable; no data record (``data/<key>.json``: the
SHA-256 of the data a data key's results were made with) of any store is damaged, and all stores that
record a data key record the same data for it (results made on other data under the same configuration
would otherwise be taken as the same: the stage ids hash the configuration, not the data).

Then, store by store: the data records DST lacks; every done stage, each file verified by its checksum
and copied atomically with its checksum, ``done.json`` last, under DST's lock of the stage
(:meth:`Store.merge_stage`: a stage with a damaged file is reported and skipped, a stage done in DST already
is left as it is, an unfinished one is left behind: the run that needs it computes it); the records of
its runs DST lacks. Last, DST's index rows of those runs and stages are upserted from DST's folders where
the index lacks them or says otherwise (:func:`.doctor.update_index`, the machinery of `doctor --repair`), so
a run's status is what DST's folders now say: complete when every stage of its chain is there, else the
more complete of the stores' statuses. Merging again changes no file.

``results_only``: the stages' records and results, the runs' records and the index rows, not the weights
(``final.pt``, ``init.pt``, ``labels.pt``; a rewind stage, which holds weights only, is left whole). Such a
stage is listed, shown and reported in DST like any other, ``doctor`` reports it as "results only" (sound),
and a run that passes it computes it again, with its weights (:meth:`Store.check_done`); a later merge
without ``--results-only`` of a store that has the same results with their weights gives them to it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from . import config_load
from .config import is_id
from .doctor import old_runs, update_index
from .errors import SparseddError
from .store import DamagedFile, Store

MANY = 20  # stages from which a terminal shows a progress bar
RANK = {"complete": 3, "diverged": 2, "partial": 1, "failed": 0}  # the more complete of two statuses


@dataclass
class Merged:
    """What a merge did."""

    root: Path
    results_only: bool
    sources: int = 0
    copied: int = 0
    there: int = 0
    other_weights: int = 0  # of those already there, how many the source had with other weights
    completed: int = 0  # results-only stages given their weights
    unfinished: int = 0
    weights: int = 0  # stages of weights only, left with results_only
    damaged_stages: int = 0
    runs_added: int = 0
    damaged_runs: int = 0
    index_rows: int = 0
    skipped: list[str] = field(default_factory=list)  # a line per stage or run skipped as damaged

    def summary(self) -> str:
        line = (f"merged {self.sources} {'store' if self.sources == 1 else 'stores'} into {self.root}: "
                f"{self.copied} stages copied, {self.there} already there, {self.damaged_stages} skipped as "
                f"damaged; {self.runs_added} runs added")
        line += f", {self.damaged_runs} skipped as damaged" if self.damaged_runs else ""
        line += (f"; {self.other_weights} of the stages already there had other weights in a source (computed "
                 "another way, e.g. another --batch or --sparse choice: this store's kept)" if self.other_weights else "")
        line += f"; {self.completed} results-only stages given their weights" if self.completed else ""
        line += f"; {self.unfinished} unfinished stages left (computed by the run that needs them)" \
            if self.unfinished else ""
        line += f"; {self.weights} stages of weights only left" if self.weights else ""
        return line + ("; results only: the weights stayed in the sources" if self.results_only else "")


def merge(paths: list[str], dst: Store, results_only: bool = False, progress: bool = True) -> Merged:
    """Merge the stores at ``paths`` into ``dst`` (see the module's text)."""
    sources = check_sources(paths, dst)
    check_data(sources, dst)
    problem = dst.index.problem()
    if problem is not None and problem.startswith("damaged"):
        raise SparseddError(f"the index of --root {dst.root} is {problem}; repair it first: sparsedd doctor --root "
                            f"{dst.root} --repair")
    dst.prepare_merge()
    for src in sources:
        for key in src.recorded_data():
            dst.merge_data_record(src, key)
    result = Merged(dst.root, results_only, len(sources))
    old, runs, stages = old_runs(dst), set(), set()
    with _bar(progress, sum(len(src.stage_ids()) for src in sources)) as advance:
        for src in sources:
            stages |= merge_stages(src, dst, results_only, result, advance)
            runs |= merge_runs(src, dst, result)
            for run_id, row in old_runs(src).items():  # what only the indexes know: the more complete status
                if run_id not in old or RANK.get(row["status"], 0) > RANK.get(old[run_id]["status"], 0):
                    old[run_id] = row
    result.index_rows = update_index(dst, old, sorted(runs), sorted(stages))
    return result


def check_sources(paths: list[str], dst: Store) -> list[Store]:
    """The stores to merge, each checked (one line where it is not one); read only, never written."""
    sources, seen = [], set()
    for text in paths:
        path = Path(text).expanduser()
        if not path.exists():
            raise SparseddError(f"SRC {path} does not exist; give the folder of a store (the --root it was run with)")
        if not path.is_dir():
            raise SparseddError(f"SRC {path} is a file, not a store; give the folder of a store (the --root it was "
                                "run with)")
        src = Store(path, readonly=True)
        if not src.is_store():
            raise SparseddError(f"SRC {path} is not a sparsedd store (it has no stages, runs or index); give the "
                                "folder of a store (the --root it was run with)")
        if path.resolve() == dst.root.resolve():
            raise SparseddError(f"SRC {path} is the --root store itself; merge other stores into it")
        if path.resolve() in seen:  # the same store named twice
            continue
        seen.add(path.resolve())
        pending = src.pending_migrations()
        if pending:
            raise SparseddError(f"SRC {path} was written by an earlier version and is not up to date yet "
                                f"({', '.join(pending)}); open it once with this version (`sparsedd doctor --root "
                                f"{path}` does), then merge it")
        sources.append(src)
    return sources


def check_data(sources: list[Store], dst: Store) -> None:
    """Refuse damaged data records, and stores that record different data for the same data key."""
    seen: dict[str, tuple[Path, str]] = {}
    for store in (dst, *sources):
        for key, (path, digest, why) in store.recorded_data().items():
            if why is not None:
                raise SparseddError(f"{path} is damaged ({why}): which data the results of {store.root} were made "
                                    "with cannot be told; `sparsedd doctor` reports it: repair or delete it, then merge")
            if key in seen and seen[key][1] != digest:
                other, theirs = seen[key]
                raise SparseddError(f"cannot merge: {other} and {path} record different data for the same data key "
                                    f"(sha256 {theirs[:12]} and {digest[:12]}): results made on other data cannot "
                                    "share a store; merge into another --root")
            seen.setdefault(key, (path, digest))


def merge_stages(src: Store, dst: Store, results_only: bool, result: Merged, advance: Callable[[], None]) -> set[str]:
    """Bring ``src``'s done stages into ``dst``; the ids of those ``dst`` now has done."""
    done = set()
    for sid in src.stage_ids():
        advance()
        if not is_id(sid):
            result.damaged_stages += 1
            result.skipped.append(f"skipped {src.stage_dir(sid)}: not a stage folder (its name is no stage id)")
            continue
        outcome, detail = dst.merge_stage(src, sid, results_only)
        if outcome == "damaged":
            result.damaged_stages += 1
            result.skipped.append(f"skipped stage {sid} of {src.root}: {detail}")
        elif outcome in ("copied", "there", "completed", "weights"):
            setattr(result, outcome, getattr(result, outcome) + 1)
            result.other_weights += detail == "other weights"
            if outcome != "weights":
                done.add(sid)
        elif outcome == "unfinished" and src.stage_kind(sid) != "batch":  # (a batch's folder: a shortcut only)
            result.unfinished += 1
    return done


def merge_runs(src: Store, dst: Store, result: Merged) -> set[str]:
    """Bring the records of ``src``'s runs ``dst`` lacks; the ids of ``src``'s runs ``dst`` now has."""
    have, runs = set(dst.run_folders()), set()
    for run_id in src.run_folders():
        if run_id not in have and is_id(run_id):
            try:
                config_load.from_dict(src.run_record(run_id)["config"])  # a configuration this version reads
                result.runs_added += dst.merge_run(src, run_id)
            except DamagedFile as e:
                result.damaged_runs += 1
                result.skipped.append(f"skipped run {run_id} of {src.root}: {e.path.name} is damaged ({e.why})")
                continue
            except (SparseddError, KeyError, TypeError, ValueError) as e:
                result.damaged_runs += 1
                result.skipped.append(f"skipped run {run_id} of {src.root}: its configuration cannot be read ({e})")
                continue
        runs.add(run_id)
    return runs & set(dst.run_folders())


@contextlib.contextmanager
def _bar(enabled: bool, total: int) -> Iterator[Callable[[], None]]:
    """A progress bar over the stages on a terminal, when there are many; else nothing."""
    from . import terminal

    console = terminal.console(stderr=True)
    if not (enabled and total >= MANY and console.is_terminal):
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("merging stages"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        task = bar.add_task("merge", total=total)
        yield lambda: bar.advance(task)
