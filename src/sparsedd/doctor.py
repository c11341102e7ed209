"""`sparsedd doctor`: check every stage and the index of a store; with ``--repair``, set the damaged
stages aside (the next run that needs one computes it again) and rebuild the index.

The stage folders are the source of truth and hold everything the index does:

- the runs: ``runs/<id>/config.json`` (config and preset; created at that file's time);
- which stages a run has: the chain of stage ids recomputed from its config
  (:func:`sparsedd.experiments.stages.stage_chain`), each seed's as far as its stages are done;
- the metrics: each done stage's ``done.json`` (a level's metrics and epochs, an analysis's result).

A rebuilt run is complete when all its stages are done (diverged when a seed's training diverged,
which ends its chain), partial otherwise; what only the old index knew (a failed run's error, its
created time, a damaged config.json) is kept where it can be read.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import config as config_mod

from . import config_load
from .errors import SparseddError
from .experiments.imp import divergence_note
from .experiments.stages import stage_chain
from .store import DamagedFile, Store, read_data_record, read_json, write_json
from .store.index import Index
from .store.paths import BATCH_RESULT, CHECKPOINT, INDEX, RUN_CONFIG, RUNS, STAGES

# states of a stage worth a line; a complete, sound and used stage gets none
DAMAGED, PARTIAL, ORPHANED, BUSY = "damaged", "partial", "orphaned", "busy"
RESULTS_ONLY = "results only"  # complete, merged without its weights (`sparsedd merge --results-only`): sound


@dataclass
class Finding:
    state: str
    stage: str
    what: str  # "dense", "level 3", "analysis-redense", ...
    detail: str


@dataclass
class Examination:
    stages: int = 0
    complete: int = 0
    batch_records: int = 0  # sound results of stages trained stacked (each stage also has its own folder)
    findings: list[Finding] = field(default_factory=list)
    chains: dict[str, dict[tuple[int, int], str]] = field(default_factory=dict)  # run -> (seed, level) -> stage
    bad_runs: dict[str, str] = field(default_factory=dict)  # run -> why its config cannot be read
    index_problem: str | None = None
    index_lacks: dict[str, int] = field(default_factory=dict)  # what the folders have and the index does not
    index_differs: list[str] = field(default_factory=list)  # rows that say otherwise than the stage folders
    index_compared: bool = False  # whether its rows were compared (not while a stage is being computed)
    bad_data: dict[str, str] = field(default_factory=dict)  # data record -> why it is not one
    bad_claims: dict[str, str] = field(default_factory=dict)  # a `sparsedd claims` result -> how it is damaged

    def count(self, state: str) -> int:
        return sum(f.state == state for f in self.findings)

    @property
    def healthy(self) -> bool:
        return (not self.count(DAMAGED) and not self.bad_runs and not self.bad_data and not self.bad_claims
                and self.index_problem is None
                and not any(self.index_lacks.values()) and not self.index_differs)


def examine(store: Store) -> Examination:
    if not any((store.root / name).exists() for name in (STAGES, RUNS, INDEX)):
        raise SparseddError(f"no store at {store.root} (no {STAGES}/, {RUNS}/ or {INDEX} there); give its --root")
    ex = Examination()
    for run_id in store.run_folders():
        try:
            ex.chains[run_id] = stage_chain(config_load.from_dict(store.run_config(run_id)))
        except (SparseddError, KeyError, TypeError, ValueError) as e:  # damaged, or settings this version lacks
            ex.bad_runs[run_id] = str(e)
    used = {sid for chain in ex.chains.values() for sid in chain.values()}
    busy = store.locked_stages() if os.access(store.root, os.W_OK) else {}
    for sid in store.stage_ids():
        ex.stages += 1
        try:
            finding = _examine_stage(store, sid, used, busy.get(sid))
        except (OSError, SparseddError, ValueError, TypeError, AttributeError, KeyError) as e:
            # whatever one stage's folder holds, the others are still examined and reported
            finding = Finding(DAMAGED, sid, "?", f"cannot be examined ({type(e).__name__}: {e})")
        ex.complete += store.is_done(sid) and (finding is None or finding.state in (ORPHANED, RESULTS_ONLY))
        ex.batch_records += finding is None and store.stage_kind(sid) == "batch"
        if finding is not None:
            ex.findings.append(finding)
    for path in store.data_records():
        _, why = read_data_record(path)
        if why is not None:
            ex.bad_data[str(path)] = why
    ex.bad_claims = _damaged_claims(store)
    ex.index_problem = store.index.problem()
    if ex.index_problem is None:
        have, want = store.index.contents(), _folder_contents(store, ex.chains)
        ex.index_lacks = {k: len(want[k] - have[k]) for k in want}
        # not while a process computing a stage writes the index as it goes, nor before damaged stages and
        # runs are repaired (their rows would only repeat them)
        ex.index_compared = not busy and not ex.count(DAMAGED) and not ex.bad_runs
        if ex.index_compared:
            ex.index_differs = index_differences(store)
    return ex


def index_differences(store: Store) -> list[str]:
    """Every row of the index that says otherwise than the stage folders, a line each: the index the
    folders imply is built in a temporary folder and compared row by row with the store's (beyond
    what only the index knows: created and updated times; links a run has not reached yet)."""
    want, have = implied_rows(store, old_runs(store)), store.index.table_rows()
    lines = []
    for table, key in ROW_KEYS.items():
        w, h = _keyed(want[table], key), _keyed(have[table], key)
        for k in sorted(h.keys() - w.keys(), key=str):
            if table != "epochs":  # (a stage's epochs go with its levels row: one line for both)
                lines.append(f"{table} {_name(k)}: in the index, but the stage folders have no such "
                             f"{'finished stage' if table != 'runs' else 'run'}")
        for k in sorted(h.keys() & w.keys(), key=str):
            changed = [c for c in w[k] if c not in INDEX_ONLY and not _same(w[k][c], h[k].get(c))]
            if changed:
                c = changed[0]
                more = f" (and {len(changed) - 1} more columns)" if len(changed) > 1 else ""
                lines.append(f"{table} {_name(k)}: {c} is {_show(h[k].get(c))} in the index, "
                             f"{_show(w[k][c])} in the stage folders{more}")
    return lines  # (rows only the folders have are what the index lacks: Examination.index_lacks)


def implied_rows(store: Store, old: dict[str, dict[str, Any]], runs: list[str] | None = None,
                 stages: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """The rows the stage and run folders imply (of ``runs`` and ``stages`` only, where given), as
    :meth:`Index.table_rows` gives them: built in a temporary index."""
    with tempfile.TemporaryDirectory(prefix="sparsedd-doctor-") as tmp:
        fresh = Index(Path(tmp) / INDEX)
        _build_index(store, fresh, old, runs, stages)
        return fresh.table_rows()


def update_index(store: Store, old: dict[str, dict[str, Any]], runs: list[str], stages: list[str]) -> int:
    """Upsert into the store's index the rows its folders imply for ``runs`` and ``stages`` (``sparsedd
    merge``), where the index lacks them or says otherwise; returns how many rows were stale (0: nothing
    written). ``old``: what only an index knows of the runs (created times, a failed or interrupted run's
    status), as :func:`_restore_run` takes it."""
    want, have = implied_rows(store, old, runs, stages), store.index.table_rows()
    stale = 0
    for table, key in ROW_KEYS.items():
        h = _keyed(have[table], key)
        stale += sum(k not in h or any(c not in INDEX_ONLY and not _same(row[c], h[k].get(c)) for c in row)
                     for k, row in _keyed(want[table], key).items())
    if stale:
        _build_index(store, store.index, old, runs, stages)
    return stale


ROW_KEYS = {"runs": ("run_id",), "run_stages": ("run_id", "seed", "level"), "levels": ("stage_id",),
            "analyses": ("analysis_id",), "epochs": ("stage_id", "epoch")}
INDEX_ONLY = ("created", "updated")  # what the stage folders do not record (kept from the old index)


def _keyed(rows: list[dict[str, Any]], key: tuple[str, ...]) -> dict[tuple, dict[str, Any]]:
    return {tuple(r[c] for c in key): r for r in rows}


def _name(key: tuple) -> str:
    return " ".join(map(str, key))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:  # NaN (a diverged level's loss)
        return True
    if isinstance(a, str) and isinstance(b, str) and a[:1] in "{[" and b[:1] in "{[":  # JSON cells
        try:
            return json.loads(a) == json.loads(b)
        except ValueError:
            return False
    return a == b


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _examine_stage(store: Store, sid: str, used: set[str], holder: str | None) -> Finding | None:
    key = _key(store, sid)
    what = _label(key)
    if holder:  # its files change under us: looked at once it is free
        return Finding(BUSY, sid, what, f"being computed by {holder} now")
    problems = store.stage_problems(sid, checkpoints=True)
    if problems:
        return Finding(DAMAGED, sid, what, "; ".join(problems))
    d = store.stage_dir(sid)
    if key is not None and key.get("kind") == "batch":
        return None if (d / BATCH_RESULT).exists() else Finding(PARTIAL, sid, what, _interrupted(d))
    if not store.is_done(sid):
        return Finding(PARTIAL, sid, what, _interrupted(d))
    if store.results_only(sid):
        return Finding(RESULTS_ONLY, sid, what, "merged without its weights (--results-only): listed and shown; a run "
                                                "that passes it computes it again, with its weights")
    if key is not None and not _used(key, sid, used):
        return Finding(ORPHANED, sid, what, "complete, but no run uses it (kept: a run may need it again)")
    return None


def _key(store: Store, sid: str) -> dict[str, Any] | None:
    try:
        key = store.stage_key(sid)
    except (OSError, DamagedFile):  # reported with the stage's problems
        return None
    return key if isinstance(key, dict) else None  # (not a stage key: reported with the stage's problems)


def _label(key: dict[str, Any] | None) -> str:
    if not isinstance(key, dict):
        return "?"
    return f"level {key['level']}" if key.get("kind") == "level" else str(key.get("kind"))


def _interrupted(d: Path) -> str:
    if (d / CHECKPOINT).exists():  # sound: a damaged one is among the stage's problems
        return "interrupted; resumes from its checkpoint when a run needs it"
    return "started, nothing saved yet; starts over when a run needs it"


def _used(key: dict[str, Any], sid: str, used: set[str]) -> bool:
    kind = str(key.get("kind"))
    if kind in ("dense", "level"):
        return sid in used
    if kind == "rewind":
        return key.get("dense") in used
    if kind.startswith("analysis-"):
        return key.get("target") in used
    if kind == "batch":
        return any(s in used for s in key.get("stages", ()))
    return True


@dataclass
class RunState:
    """What the stage folders say of a run: its links, whether every seed finished, where seeds diverged."""

    links: list[tuple[str, int, int, str]]
    finished: bool
    diverged: list[tuple[int, int, int]]  # (seed, level, epoch)


def _run_state(store: Store, run_id: str, chain: dict[tuple[int, int], str]) -> RunState:
    """Each seed's done stages from level 0 up to its first stage not done, or to the one where its
    training diverged (which ends the seed's chain: no later level is computed)."""
    links, diverged, finished = [], [], 0
    seeds = sorted({seed for seed, _ in chain})
    for seed in seeds:
        for level in sorted(level for s, level in chain if s == seed):
            sid = chain[(seed, level)]
            if not store.is_done(sid):
                break
            links.append((run_id, seed, level, sid))
            metrics = store.done_info(sid).get("metrics", {})
            if metrics.get("diverged"):
                diverged.append((seed, level, int(metrics.get("diverged_epoch", 0))))
                finished += 1
                break
        else:
            finished += 1
    return RunState(links, finished == len(seeds), diverged)


def _folder_contents(store: Store, chains: dict[str, dict[tuple[int, int], str]]) -> dict[str, set]:
    """What the index should hold according to the folders (links aside: a run links a stage another
    run finished only once it gets there, so an index may lack those and be right)."""
    done = {sid: _key(store, sid) for sid in store.stage_ids() if store.is_done(sid)}
    return {"runs": set(chains),
            "levels": {sid for sid, key in done.items() if key and key.get("kind") in ("dense", "level")},
            "analyses": {sid for sid, key in done.items() if key and str(key.get("kind")).startswith("analysis-")}}


# --- the report
def _damaged_claims(store: Store) -> dict[str, str]:
    """The saved `sparsedd claims` results whose bytes are not those written, with how."""
    bad = {}
    for path in store.claims_files():
        try:
            read_json(path)
        except DamagedFile as e:
            bad[str(path)] = e.why
    return bad


def describe(store: Store, ex: Examination) -> list[str]:
    counts = [f"{ex.complete} complete"] + [f"{ex.count(s)} {s}" for s in (PARTIAL, DAMAGED, BUSY) if ex.count(s)]
    counts += [f"{ex.batch_records} records of stages trained stacked"] if ex.batch_records else []
    unused = f"; {ex.count(ORPHANED)} of the complete ones used by no run" if ex.count(ORPHANED) else ""
    unused += f"; {ex.count(RESULTS_ONLY)} of them results only" if ex.count(RESULTS_ONLY) else ""
    lines = [f"store {store.root}: {ex.stages} stages ({', '.join(counts)}{unused}), "
             f"{len(ex.chains) + len(ex.bad_runs)} runs"]
    lines += [f"  {f.state:<9} {f.stage}  {f.what:<18} {f.detail}" for f in ex.findings]
    lines += [f"  run {run_id}: its {RUN_CONFIG} cannot be read ({why})" for run_id, why in ex.bad_runs.items()]
    lines += [f"  data record {path} is damaged ({why})" for path, why in ex.bad_data.items()]
    lines += [f"  claims result {path} is damaged ({why})" for path, why in ex.bad_claims.items()]
    if ex.index_problem is not None:
        lines.append(f"index: {ex.index_problem}")
    elif any(ex.index_lacks.values()) or ex.index_differs:
        if any(ex.index_lacks.values()):
            lacks = ", ".join(f"{n} {k}" for k, n in ex.index_lacks.items() if n)
            lines.append(f"index: out of date; lacks what the stage folders hold ({lacks})")
        if ex.index_differs:
            lines.append(f"index: {len(ex.index_differs)} rows differ from the stage folders:")
            lines += [f"  {d}" for d in ex.index_differs]
    else:
        lines.append("index: ok" if ex.index_compared else
                     "index: ok (its rows are compared with the stage folders when no stage is being computed "
                     "or damaged)")
    if not ex.healthy:
        lines.append(f"to repair: sparsedd doctor --root {store.root} --repair (damaged stages are set aside and "
                     "computed again by the next run that needs them; the index is rebuilt from the stage folders)")
    return lines


# --- the repair
def repair(store: Store, ex: Examination) -> list[str]:
    """Set the damaged stages aside and rebuild the index; returns what was done, a line each. A healthy
    store is left exactly as it is."""
    if ex.healthy:
        return ["nothing to repair: no file was changed"]
    busy = store.locked_stages()
    if busy:
        name, who = next(iter(busy.items()))
        raise SparseddError(f"{len(busy)} stages are being computed now ({name} by {who}); repair when no "
                            f"sparsedd process uses {store.root}")
    lines = []
    for f in ex.findings:
        if f.state == DAMAGED:
            names = store.reopen_stage(f.stage)
            lines.append(f"stage {f.stage} ({f.what}): set aside {', '.join(n + '.damaged' for n in names) or 'nothing'}"
                         "; the next run that needs it computes it again")
    lines += [f"data record {path}: left as it is (what data the results were made with is known from it "
              "alone); delete it if the data a run loads now are those, and the next run records them"
              for path in ex.bad_data]
    for path in map(Path, ex.bad_claims):  # measured again from the stored runs by the command that made it
        path.rename(path.with_name(path.name + ".damaged"))
        lines.append(f"claims result {path}: set aside as {path.name}.damaged; the `sparsedd claims` command that "
                     "made it writes it anew")
    old = old_runs(store)
    lines += _restore_configs(store, ex, old)
    counts = rebuild_index(store, old)
    lines.append(f"index rebuilt from the stage folders: {counts['runs']} runs, {counts['links']} links, "
                 f"{counts['levels']} stages' metrics, {counts['analyses']} analyses"
                 + (f" (the old one is kept as {INDEX}.old)" if counts["old_kept"] else ""))
    return lines


def old_runs(store: Store) -> dict[str, dict[str, Any]]:
    """The old index's runs where it can be read (what only it knows survives the rebuild)."""
    if store.index.problem() is not None:
        return {}
    return {r["run_id"]: r for r in store.index.run_rows()}


def _restore_configs(store: Store, ex: Examination, old: dict[str, dict[str, Any]]) -> list[str]:
    """Rewrite a run's unreadable config.json from the old index, which holds the same config."""
    lines = []
    for run_id in list(ex.bad_runs):
        if run_id not in old:
            lines.append(f"run {run_id}: its {RUN_CONFIG} cannot be read and the index does not have it; "
                         "run its `sparsedd run` command again to register it anew")
            continue
        write_json(store.run_dir(run_id) / RUN_CONFIG, {"config": old[run_id]["config"], "preset": old[run_id]["preset"]})
        ex.chains[run_id] = stage_chain(config_load.from_dict(old[run_id]["config"]))
        del ex.bad_runs[run_id]
        lines.append(f"run {run_id}: {RUN_CONFIG} written anew from the index")
    return lines


def rebuild_index(store: Store, old: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Write a new index from the stage folders beside the old one, then put it in its place."""
    fresh = store.fresh_index()
    counts = _build_index(store, fresh, old)
    counts["old_kept"] = store.replace_index(fresh)
    return counts


def _build_index(store: Store, fresh: Index, old: dict[str, dict[str, Any]], runs: list[str] | None = None,
                 stages: list[str] | None = None) -> dict[str, int]:
    """Write into ``fresh`` (empty, or the store's own index: every write is an upsert) the rows the stage
    folders imply, of ``runs`` and ``stages`` only where given; counts of what was written."""
    counts = {"runs": 0, "links": 0, "levels": 0, "analyses": 0}
    for run_id in store.run_folders() if runs is None else runs:
        try:
            record = store.run_record(run_id)
            cfg = config_load.from_dict(record["config"])
        except (SparseddError, KeyError, TypeError, ValueError):  # reported; not in the new index
            continue
        state = _run_state(store, run_id, stage_chain(cfg))
        for link in state.links:
            fresh.link(*link)
        _restore_run(fresh, store, run_id, record, cfg, state, old.get(run_id))
        counts["runs"] += 1
        counts["links"] += len(state.links)
    for sid in store.stage_ids() if stages is None else stages:
        if store.is_done(sid):  # the damaged ones are not (any more): set aside before the rebuild
            table = _restore_stage(fresh, store, sid)
            if table is not None:
                counts[table] += 1
    return counts


def _restore_run(index: Index, store: Store, run_id: str, record: dict[str, Any], cfg: config_mod.RunConfig,
                 state: RunState, old: dict[str, Any] | None) -> None:
    created = os.stat(store.run_dir(run_id) / RUN_CONFIG).st_mtime
    note = divergence_note(state.diverged)
    status, error = ("partial", None) if not state.finished else ("diverged", note) if note else ("complete", None)
    if old is not None:
        created = old["created"] or created
        if not state.finished and old["status"] in ("failed", "partial"):  # failed, or "interrupted"
            status, error = old["status"], old["error"]
    index.restore_run(run_id, record["config"], record.get("preset"), cfg.seeds, cfg.prune.levels, status, error,
                      created, created if old is None else old["updated"] or created)


def _restore_stage(index: Index, store: Store, sid: str) -> str | None:
    """A done stage's rows: a dense or level stage's metrics and epochs, an analysis's result."""
    key, info = store.stage_key(sid), store.done_info(sid)
    kind = str(key.get("kind"))
    if kind in ("dense", "level"):
        index.record_epochs(sid, info.get("history", []))
        index.record_level(sid, key.get("level", 0), info["metrics"])
        return "levels"
    if kind.startswith("analysis-"):
        index.record_analysis(sid, key["target"], kind.removeprefix("analysis-"), key["settings"], info["result"])
        return "analyses"
    return None
