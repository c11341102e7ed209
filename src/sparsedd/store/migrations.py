"""The one-time corrections of stores written by earlier versions, which :meth:`Store.migrate` applies
when a store is first used (each named in ``ROOT/migrations.json`` once applied).

A correction is ``(name, markers of earlier corrections it supersedes, function(store) -> files
changed)``; a new one is one function and one entry in :data:`MIGRATIONS`. Each runs under the store's
lock of its name, so one process applies it and the others find it done.
"""

from __future__ import annotations

from typing import Any, Callable

from ..errors import SparseddError
from .files import DamagedFile

Store = Any  # a sparsedd.store.Store (which imports this module when it migrates: not imported back)

LOCK = "migrations"  # held by every writer of migrations.json (one correction at a time, and new stores' marks)
CORRECTION = "distance-over-unpruned-weights"  # the learning-distance rule in force
EARLIER = ("distance-over-parameters",)  # markers of earlier rules, each superseded by CORRECTION


def apply(store: Store, name: str, earlier: tuple[str, ...], correct: Callable[[Store], int]) -> int:
    """Apply one correction unless it is marked applied; returns how many stages it changed. A store on
    read-only media, or one whose index or marker file is damaged, is left as it is (uncorrected until a
    later opening, after ``sparsedd doctor --repair``: the command that opened it says what is damaged)."""
    try:
        if name in store.migrated():
            return 0
        with store.lock(LOCK):
            if name in store.migrated():
                return 0
            changed = correct(store)
            for marker in (*earlier, name):
                if marker not in store.migrated():
                    store.mark_migrated(marker)
    except (OSError, SparseddError):  # read-only media, another user's store, a damaged index or marker file
        return 0
    return changed


def correct_distances(store: Store) -> int:
    """Recompute every distance recorded under an earlier rule (levels, dense stages and re-dense
    analyses, :mod:`sparsedd.experiments.distance`), in their ``done.json`` and in the index; returns how
    many changed."""
    # (a results-only stage, merged from an up-to-date store without its weights, has nothing to recompute from)
    return sum(_correct_sound(store, sid) for sid in store.stage_ids()
               if store.is_done(sid) and not store.results_only(sid))


def _correct_sound(store: Store, sid: str) -> bool:
    try:
        return _correct(store, sid)
    except DamagedFile:  # left as it is: computed again, with the right distance, when next needed
        return False


def _correct(store: Store, sid: str) -> bool:
    from ..experiments.distance import learning_distance  # (torch code of the experiments, loaded when needed)

    key = store.stage_key(sid)
    kind = key.get("kind")
    if kind not in ("dense", "level", "analysis-redense"):
        return False
    info = store.done_info(sid)
    if kind == "analysis-redense":  # the pruned weights were given back: every weight is the network's
        final = store.final(sid)
        distance = learning_distance(final["model"], store.init(_dense_of(store, key["target"])))
        if distance == info["result"]["distance"]:
            return False
        info["result"]["distance"] = distance
        store.index.record_analysis(sid, key["target"], "redense", key["settings"], info["result"])
    else:
        final = store.final(sid)
        distance = learning_distance(final["model"], store.init(_dense_of(store, sid)), final.get("mask"))
        if distance == info["metrics"]["distance"]:
            return False
        info["metrics"]["distance"] = distance
        store.index.record_level(sid, info["metrics"]["level"], info["metrics"])
    store.finish_stage(sid, info)  # done.json rewritten atomically
    return True


def _dense_of(store: Store, sid: str) -> str:
    """The dense stage a level descends from (following the parents)."""
    key = store.stage_key(sid)
    while key["kind"] != "dense":
        sid = key["parent"]
        key = store.stage_key(sid)
    return sid


MIGRATIONS: tuple[tuple[str, tuple[str, ...], Callable[[Store], int]], ...] = (
    (CORRECTION, EARLIER, correct_distances),
)
