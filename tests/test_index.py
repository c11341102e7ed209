"""Issue 13, point 3: the index. A store that cannot be written is read (ls, show, plot, report,
results.load) with nothing created; a damaged index is a one-line error that names its repair;
`sparsedd doctor` checks every stage and rebuilds the index from the stage folders; a lock another
process holds is waited for on the terminal and given up after a timeout."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import sparsedd.experiments.progress as progress
from conftest import TINY
from sparsedd import config_load
from sparsedd.cli import main
from sparsedd.experiments import ExecOptions, run
from sparsedd.experiments.stages import stage_chain
from sparsedd.results import load
from sparsedd.store import Store

OPTIONS = ExecOptions(progress=False, batch="off", sparse="off", checkpoint_epoch_s=0)
COMPLETE = config_load.load(None, None, TINY, 1)  # levels 0..2
PARTIAL = config_load.load(None, None, TINY + ["prune.levels=3"], 1)  # shares levels 0..2, stopped in level 3


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """A store with a complete run (and an analysis of it), a partial run interrupted in its last level
    (a checkpoint there), and a dense stage no run uses."""
    root = tmp_path_factory.mktemp("made")
    store = Store(root)
    run(COMPLETE, store, options=OPTIONS)
    assert main(["analyze", COMPLETE.run_id, "landscape", "--root", str(root), "--levels", "1", "--set", "points=3",
                 "--no-progress"]) == 0
    real = progress.Progress.epoch
    calls = [0]

    def interrupt_in_level_3(self, metrics, advance_total=1):
        calls[0] += 1
        if calls[0] == 2:  # level 3's second epoch (levels 0..2 are done): its first checkpoint is written
            raise KeyboardInterrupt
        real(self, metrics, advance_total)

    progress.Progress.epoch = interrupt_in_level_3
    try:
        with pytest.raises(KeyboardInterrupt):
            run(PARTIAL, store, options=OPTIONS)
    finally:
        progress.Progress.epoch = real
    run(COMPLETE.with_seed(7), store, options=OPTIONS, dense_only=True)
    return root


@pytest.fixture
def root(made, tmp_path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(made, copy)
    return copy


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def views(root: Path, capsys) -> dict:
    """Everything the index answers, as the commands and results.load show it (but a partial run's note
    "interrupted", which only the index knew)."""
    res = load(root)
    listed = json.loads(cli(capsys, "ls", "--root", str(root), "--format", "json")[1])
    return {"ls": [{k: v for k, v in row.items() if k != "error"} for row in listed],
            "show": [json.loads(cli(capsys, "show", r, "--root", str(root), "--format", "json")[1])
                     for r in (COMPLETE.run_id, PARTIAL.run_id)],
            "epochs": res.epochs.sort_values(["run_id", "seed", "level", "epoch"]).to_json(orient="records"),  # NaN: null
            "analyses": res.analyses[["run_id", "seed", "level", "kind", "result"]].to_dict("records")}


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


# --- a store that cannot be written ---------------------------------------------------------------------

READER = """
import json, sys
from sparsedd.cli import main
from sparsedd.results import load
root, out, run_id = sys.argv[1:4]
codes = [main(["ls", "--root", root, "--format", "json"]), main(["show", run_id, "--root", root]),
         main(["plot", run_id, "--root", root, "--out", out + "/curve.png"]),
         main(["report", run_id, "--root", root, "--out", out + "/report"]),
         main(["analyze", run_id, "landscape", "--root", root, "--levels", "1", "--set", "points=3", "--no-progress"]),
         main(["analyze", run_id, "landscape", "--root", root, "--levels", "2", "--set", "points=3", "--no-progress"]),
         main(["run", "--root", root, "--no-progress", *sys.argv[4:]])]
print("RESULT", json.dumps({"codes": codes, "levels": len(load(root).levels)}))
"""


def bound_by_permissions() -> None:
    """In a child started by root: give up the capabilities that let root write whatever the permission
    bits say (dropped from the bounding set too, so that exec does not give them back)."""
    libc = ctypes.CDLL(None, use_errno=True)
    overriding = (1, 2, 3)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
    for cap in overriding:
        if libc.prctl(24, cap, 0, 0, 0):  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
    header, sets = (ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()  # capability API version 3
    if libc.capget(header, sets):
        raise OSError(ctypes.get_errno(), "capget")
    for i in range(3):  # effective, permitted, inheritable (capabilities 0..31)
        sets[i] &= ~sum(1 << cap for cap in overriding)
    if libc.capset(header, sets):
        raise OSError(ctypes.get_errno(), "capset")


@pytest.fixture
def read_only(made, tmp_path):
    """The store copied and made read-only (folders 0555, files 0444), a writable folder for the outputs."""
    root, out = tmp_path / "store", tmp_path / "out"
    shutil.copytree(made, root)
    out.mkdir()
    paths = [root, *root.rglob("*")]
    for p in paths:
        os.chmod(p, 0o555 if p.is_dir() else 0o444)
    yield root, out
    for p in paths:
        os.chmod(p, 0o755)


def test_a_read_only_store_is_listed_shown_plotted_reported_loaded_and_analyzed_creating_nothing(read_only):
    root, out = read_only
    assert not list(root.glob("index.sqlite-*"))  # no WAL files, and SQLite cannot make them there
    before = snapshot(root)
    how = {"preexec_fn": bound_by_permissions} if os.geteuid() == 0 else {}
    probe = subprocess.run([sys.executable, "-c", f"open({str(root / 'probe')!r}, 'w')"], capture_output=True, **how)
    assert b"PermissionError" in probe.stderr  # the store really cannot be written
    tiny = [a for s in TINY for a in ("--set", s)]
    res = subprocess.run([sys.executable, "-c", READER, str(root), str(out), COMPLETE.run_id, *tiny],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ, MPLCONFIGDIR=str(out)), **how)
    assert res.returncode == 0, res.stderr
    # the stored analysis is shown; one not stored, and a run, cannot be computed there: one line each
    assert json.loads(res.stdout.split("RESULT ")[-1]) == {"codes": [0, 0, 0, 0, 0, 2, 2], "levels": 3 + 3}
    assert "landscape analysis is not in it; copy the store to a writable folder" in res.stderr
    assert f"--root {root} cannot be written ({root} is not writable); give a writable folder" in res.stderr
    assert (out / "curve.png").stat().st_size > 0 and (out / "report" / "index.html").exists()
    assert snapshot(root) == before and "Traceback" not in res.stderr


# --- a damaged index ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage, why", [
    (lambda p: p.write_bytes(b"not a database " * 300), "file is not a database"),
    (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "database disk image is malformed"),
])
def test_a_damaged_index_is_one_line_that_names_the_repair(root, capsys, damage, why):
    damage(root / "index.sqlite")
    for argv in (["ls"], ["show", COMPLETE.run_id], ["run", *[a for s in TINY for a in ("--set", s)], "--no-progress"]):
        code, out, err = cli(capsys, *argv, "--root", str(root))
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert f"the index {root}/index.sqlite is damaged ({why}); rebuild it from the stage folders: " \
               f"sparsedd doctor --root {root} --repair" in err


@pytest.mark.parametrize("cell, why", [("garbage", "a config cell is not JSON"),
                                       ("[1, 2]", "config cell holds list, not a configuration")])
def test_a_config_cell_that_is_not_a_configuration_is_a_damaged_index_that_doctor_repairs(root, capsys, cell, why):
    import sqlite3

    before = views(root, capsys)
    con = sqlite3.connect(root / "index.sqlite")
    con.execute("UPDATE runs SET config = ? WHERE run_id = ?", (cell, COMPLETE.run_id))
    con.commit()
    con.close()
    for argv in (["ls"], ["show", COMPLETE.run_id]):
        code, out, err = cli(capsys, *argv, "--root", str(root))
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert f"the index {root}/index.sqlite is damaged (" in err and why in err
        assert f"sparsedd doctor --root {root} --repair" in err
    code, out, _ = cli(capsys, "doctor", "--root", str(root))
    assert code == 1 and any(line.startswith("index: damaged (") and why in line for line in out.splitlines())
    assert cli(capsys, "doctor", "--root", str(root), "--repair")[0] == 0
    assert views(root, capsys) == before


# --- sparsedd doctor -------------------------------------------------------------------------------------------


def test_doctor_reports_partial_and_orphaned_stages_of_a_sound_store(root, capsys):
    code, out, _ = cli(capsys, "doctor", "--root", str(root))
    assert code == 0
    lines = out.splitlines()
    # dense, levels 1 and 2 (shared), the partial level 3, the analysis, the orphaned dense stage
    assert lines[0] == f"store {root}: 6 stages (5 complete, 1 partial; 1 of the complete ones used by no run), 2 runs"
    level3 = stage_chain(PARTIAL)[(0, 3)]
    orphan = stage_chain(COMPLETE.with_seed(7))[(7, 0)]
    assert f"  partial   {level3}  level 3            interrupted; resumes from its checkpoint when a run needs it" in lines
    assert any(line.startswith(f"  orphaned  {orphan}  dense") for line in lines)
    assert lines[-1] == "index: ok"


@pytest.mark.parametrize("damage", ["deleted", "garbage", "emptied"])
def test_doctor_rebuilds_the_index_from_the_stage_folders(root, capsys, damage):
    before = views(root, capsys)
    index = root / "index.sqlite"
    if damage == "deleted":
        index.unlink()
        code, out, _ = cli(capsys, "ls", "--root", str(root))
        assert out.strip() == (f"no runs in {root}'s index, but 2 in its run folders: `sparsedd doctor --root {root} "
                               "--repair` rebuilds the index")
    else:
        index.write_bytes(b"garbage" * 100 if damage == "garbage" else b"")
    code, out, _ = cli(capsys, "doctor", "--root", str(root))
    problem = {"deleted": "index: missing", "garbage": "index: damaged (file is not a database)",
               "emptied": "index: tables missing: runs, run_stages, levels, analyses, epochs"}[damage]
    assert code == 1 and problem in out.splitlines()
    assert f"to repair: sparsedd doctor --root {root} --repair" in out
    code, out, _ = cli(capsys, "doctor", "--root", str(root), "--repair")
    assert code == 0
    assert "index rebuilt from the stage folders: 2 runs, 6 links, 4 stages' metrics, 1 analyses" in out
    assert (root / "index.sqlite.old").exists() == (damage != "deleted")
    assert views(root, capsys) == before  # statuses (complete, partial), links, metrics, epochs, analyses
    assert cli(capsys, "doctor", "--root", str(root))[0] == 0


def test_doctor_repairs_damaged_stages_and_the_next_run_computes_them_again(root, capsys):
    sid = stage_chain(COMPLETE)[(0, 2)]
    final = root / "stages" / sid / "final.pt"
    final.write_bytes(final.read_bytes()[:100])
    level3 = stage_chain(PARTIAL)[(0, 3)]
    checkpoint = root / "stages" / level3 / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:-1000])
    code, out, _ = cli(capsys, "doctor", "--root", str(root))
    assert code == 1
    assert f"  damaged   {sid}  level 2            final.pt is damaged (truncated: 100 of its" in out
    assert f"  damaged   {level3}  level 3            checkpoint.pt is damaged (truncated:" in out
    code, out, _ = cli(capsys, "doctor", "--root", str(root), "--repair")
    assert code == 0 and f"stage {sid} (level 2): set aside final.pt.damaged; the next run that needs it" in out
    assert f"stage {level3} (level 3): set aside checkpoint.pt.damaged" in out
    assert not Store(root).is_done(sid) and not checkpoint.exists()
    assert [r["levels_done"] for r in json.loads(cli(capsys, "ls", "--root", str(root), "--format", "json")[1])] == [2, 2]
    assert cli(capsys, "run", *[a for s in TINY for a in ("--set", s)], "--root", str(root), "--no-progress")[0] == 0
    assert Store(root).is_done(sid) and cli(capsys, "doctor", "--root", str(root))[0] == 0


# --- locks held by another process -----------------------------------------------------------------------

HOLD_INDEX = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("PRAGMA locking_mode=EXCLUSIVE")
con.execute("BEGIN EXCLUSIVE")
con.execute("DELETE FROM runs WHERE 0")
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""

HOLD_STAGE = """
import sys, time
from sparsedd.store import Store
with Store(sys.argv[1]).lock(sys.argv[2]):
    print("held", flush=True)
    time.sleep(60)
"""


def holding(code: str, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_locked_index_is_waited_for_on_the_terminal_then_given_up(root, capsys, monkeypatch):
    monkeypatch.setenv("SPARSEDD_INDEX_TIMEOUT", "2")
    holder = holding(HOLD_INDEX, str(root / "index.sqlite"), "60")
    try:
        t0 = time.monotonic()
        code, _, err = cli(capsys, "ls", "--root", str(root))
        assert time.monotonic() - t0 < 15
    finally:
        holder.kill()
        holder.wait()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2 and "Traceback" not in err
    assert lines[0].startswith(f"sparsedd: waiting for the index {root}/index.sqlite: another process holds its lock "
                               "(waited 1 s; giving up after 2 s, SPARSEDD_INDEX_TIMEOUT)")
    assert lines[1].startswith(f"sparsedd: error: gave up waiting for the index {root}/index.sqlite after 2 s")


def test_a_short_index_wait_is_said_and_then_the_command_goes_on(root, capsys):
    holder = holding(HOLD_INDEX, str(root / "index.sqlite"), "2.5")
    try:
        code, out, err = cli(capsys, "ls", "--root", str(root), "--format", "json")
    finally:
        holder.wait()
    assert code == 0 and len(json.loads(out)) == 2
    assert err.startswith(f"sparsedd: waiting for the index {root}/index.sqlite")


def test_a_stage_another_process_computes_is_waited_for_then_given_up(root, capsys, monkeypatch):
    monkeypatch.setenv("SPARSEDD_LOCK_TIMEOUT", "2")
    dense = stage_chain(COMPLETE)[(0, 0)]
    holder = holding(HOLD_STAGE, str(root), dense)
    try:
        code, _, err = cli(capsys, "run", *[a for s in TINY for a in ("--set", s)], "--root", str(root),
                           "--no-progress")
    finally:
        holder.kill()
        holder.wait()
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err
    assert lines[0].startswith(f"sparsedd: waiting for stage {dense} ({root}/stages/{dense}): process {holder.pid} "
                               "holds its lock (waited 1 s; giving up after 2 s, SPARSEDD_LOCK_TIMEOUT)")
    assert lines[-1].startswith(f"sparsedd: error: gave up waiting for stage {dense}")


def test_doctor_leaves_a_stage_being_computed_alone(root, capsys):
    dense = stage_chain(COMPLETE)[(0, 0)]
    holder = holding(HOLD_STAGE, str(root), dense)
    try:
        code, out, _ = cli(capsys, "doctor", "--root", str(root))
        assert code == 0 and f"  busy      {dense}  dense              being computed by process {holder.pid} now" in out
        assert "index: ok (its rows are compared with the stage folders when no stage is being computed or damaged)" in out
        code, out, _ = cli(capsys, "doctor", "--root", str(root), "--repair")
        assert code == 0 and "nothing to repair" in out  # nothing else is wrong
        (root / "index.sqlite").write_bytes(b"garbage")  # something to repair: refused while a stage is computed
        code, _, err = cli(capsys, "doctor", "--root", str(root), "--repair")
        assert code == 2 and f"1 stages are being computed now ({dense} by process {holder.pid})" in err
    finally:
        holder.kill()
        holder.wait()


def test_doctor_writes_a_damaged_run_config_anew_from_the_index(root, capsys):
    config = root / "runs" / COMPLETE.run_id / "config.json"
    before = config.read_text()
    config.write_text(before[:40])
    code, out, _ = cli(capsys, "doctor", "--root", str(root))
    assert code == 1 and f"  run {COMPLETE.run_id}: its config.json cannot be read ({config} is damaged (truncated" in out
    code, out, _ = cli(capsys, "doctor", "--root", str(root), "--repair")
    assert code == 0 and f"run {COMPLETE.run_id}: config.json written anew from the index" in out
    assert json.loads(config.read_text()) == json.loads(before)
    assert cli(capsys, "doctor", "--root", str(root))[0] == 0


@pytest.mark.parametrize("schedule", ["iterative", "oneshot"])
def test_the_chain_doctor_recomputes_is_the_one_runs_link(tmp_path, schedule):
    cfg = config_load.load(None, None, TINY + ["train.epochs=1", f"prune.schedule={schedule}"], 2)
    store = Store(tmp_path)
    run(cfg, store, options=OPTIONS)
    assert store.index.run_stages(cfg.run_id) == stage_chain(cfg)


def test_a_rebuilt_index_keeps_a_diverged_run_diverged(tmp_path, capsys):
    root = tmp_path / "store"
    sets = [a for s in TINY + ["train.lr=10000", "train.momentum=0.9"] for a in ("--set", s)]
    assert cli(capsys, "run", *sets, "--root", str(root), "--no-progress")[0] == 0
    before = load(root).runs[["run_id", "status", "error"]].to_dict("records")
    assert before[0]["status"] == "diverged" and "training loss not finite (seed 0 at level 0" in before[0]["error"]
    (root / "index.sqlite").unlink()
    assert cli(capsys, "doctor", "--root", str(root), "--repair")[0] == 0
    assert load(root).runs[["run_id", "status", "error"]].to_dict("records") == before


# --- the index against the stages (issue 24, item 2) -----------------------------------------------------


def _sql(root: Path, statement: str, params: tuple = ()) -> None:
    import sqlite3

    con = sqlite3.connect(root / "index.sqlite")
    with con:
        con.execute(statement, params)
    con.close()


def test_doctor_on_a_healthy_store_reports_nothing_and_repair_changes_no_file(root, capsys):
    code, out, _ = cli(capsys, "doctor", "--root", str(root))
    assert code == 0 and out.splitlines()[-1] == "index: ok" and "differ" not in out
    before = snapshot(root)
    ls_before = cli(capsys, "ls", "--root", str(root), "--format", "json")[1]
    code, out, _ = cli(capsys, "doctor", "--root", str(root), "--repair")
    assert code == 0 and "nothing to repair: no file was changed" in out
    assert snapshot(root) == before and not (root / "index.sqlite.old").exists()
    assert cli(capsys, "ls", "--root", str(root), "--format", "json")[1] == ls_before  # the partial run's note kept


def doctor_finds(root: Path, capsys, *lines: str) -> None:
    """doctor reports each of ``lines`` (exit 1); --repair fixes them, and doctor is then content."""
    code, out, _ = cli(capsys, "doctor", "--root", str(root))
    assert code == 1 and f"to repair: sparsedd doctor --root {root} --repair" in out
    for line in lines:
        assert f"  {line}" in out, out
    assert cli(capsys, "doctor", "--root", str(root), "--repair")[0] == 0
    assert cli(capsys, "doctor", "--root", str(root))[0] == 0


def test_a_changed_number_in_the_index_is_found_and_repaired(root, capsys):
    sid = stage_chain(COMPLETE)[(0, 1)]
    want = json.loads(cli(capsys, "show", COMPLETE.run_id, "--root", str(root), "--format", "json")[1])
    _sql(root, "UPDATE levels SET test_acc = 0.9 WHERE stage_id = ?", (sid,))
    _sql(root, "UPDATE epochs SET train_loss_running = 7.0 WHERE stage_id = ? AND epoch = 1", (sid,))
    doctor_finds(root, capsys, f"levels {sid}: test_acc is 0.9 in the index, ",
                 f"epochs {sid} 1: train_loss_running is 7.0 in the index, ")
    assert json.loads(cli(capsys, "show", COMPLETE.run_id, "--root", str(root), "--format", "json")[1]) == want


def test_a_deleted_stage_folder_is_a_difference_and_its_run_partial_after_repair(root, capsys):
    sid = stage_chain(COMPLETE)[(0, 2)]
    shutil.rmtree(root / "stages" / sid)
    doctor_finds(root, capsys, f"levels {sid}: in the index, but the stage folders have no such finished stage",
                 f"run_stages {COMPLETE.run_id} 0 2: in the index, but the stage folders have no such finished stage",
                 f"runs {COMPLETE.run_id}: status is 'complete' in the index, 'partial' in the stage folders")
    rows = {r["run"]: r for r in json.loads(cli(capsys, "ls", "--root", str(root), "--format", "json")[1])}
    assert rows[COMPLETE.run_id]["status"] == "partial"


# --- smaller things doctor and --root got wrong (issue 24, item 7) ------------------------------------------


def test_doctor_reports_every_unreadable_stage_not_only_the_first(root, capsys):
    from sparsedd.store.files import write_json

    chain = stage_chain(COMPLETE)
    bad = [chain[(0, 1)], chain[(0, 2)]]
    for sid in bad:  # JSON with a valid checksum, but not a stage key: doctor used to stop at the first
        write_json(root / "stages" / sid / "stage.json", ["not", "a", "stage"])
    code, out, err = cli(capsys, "doctor", "--root", str(root))
    assert code == 1 and "Traceback" not in err
    for sid in bad:
        assert f"  damaged   {sid}  ?" in out and "stage.json is damaged (not a JSON object)" in out
    assert cli(capsys, "doctor", "--root", str(root), "--repair")[0] == 0
    run(COMPLETE, Store(root), options=OPTIONS)  # computed again
    assert cli(capsys, "doctor", "--root", str(root))[0] == 0


def test_doctor_repair_of_a_read_only_store_says_it_needs_a_writable_one(root, capsys, monkeypatch):
    (root / "index.sqlite").write_bytes(b"garbage")
    before = snapshot(root)
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == root and mode & os.W_OK else real(p, mode))
    code, out, err = cli(capsys, "doctor", "--root", str(root), "--repair")
    assert code == 2 and err.strip() == (f"sparsedd: error: doctor --repair needs a store it can write, and {root} is "
                                         "read-only; repair a writable copy of it, or run as a user who may write it")
    assert snapshot(root) == before


def test_an_index_that_is_a_folder_is_reported_and_repaired(root, capsys):
    want = views(root, capsys)
    (root / "index.sqlite").unlink()
    (root / "index.sqlite").mkdir()
    code, out, err = cli(capsys, "ls", "--root", str(root))
    assert code == 2 and "index.sqlite" in err and "sparsedd doctor" in err and len(err.strip().splitlines()) == 1
    code, out, _ = cli(capsys, "doctor", "--root", str(root))
    assert code == 1 and any(line.startswith("index: ") and "folder" in line for line in out.splitlines()), out
    assert cli(capsys, "doctor", "--root", str(root), "--repair")[0] == 0
    assert (root / "index.sqlite").is_file() and (root / "index.sqlite.old").is_dir()
    got = views(root, capsys)
    assert got["show"] == want["show"] and got["epochs"] == want["epochs"]
    (root / "index.sqlite").unlink()
    (root / "index.sqlite").mkdir()  # again: the folder kept from the first repair makes way
    assert cli(capsys, "doctor", "--root", str(root), "--repair")[0] == 0
    assert (root / "index.sqlite").is_file() and views(root, capsys)["show"] == want["show"]


def test_errors_name_sparsedd_root_when_the_store_came_from_it(tmp_path, capsys, monkeypatch):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    monkeypatch.setenv("SPARSEDD_ROOT", str(not_a_folder))
    code, _, err = cli(capsys, "ls")
    assert code == 2 and f"SPARSEDD_ROOT {not_a_folder} is a file, not a folder" in err and "--root" not in err
    code, _, err = cli(capsys, "ls", "--root", str(not_a_folder))
    assert code == 2 and f"--root {not_a_folder} is a file" in err


def test_a_stage_recorded_again_keeps_only_its_new_history(tmp_path):
    """A stage computed again (after damage) may stop at other epochs (a GPU's rounding, stop_loss): its rows
    replace the old ones rather than leaving epochs the new history does not have (found by review)."""
    index = Store(tmp_path).index
    index.record_epochs("a" * 16, [{"epoch": e, "test_acc": 0.5} for e in (1, 2, 3)])
    index.record_epochs("b" * 16, [{"epoch": 1, "test_acc": 0.4}])
    index.record_epochs("a" * 16, [{"epoch": e, "test_acc": 0.6} for e in (1, 2)])
    rows = index._query("SELECT stage_id, epoch, test_acc FROM epochs ORDER BY stage_id, epoch")
    assert [tuple(r.values()) for r in rows] == [("a" * 16, 1, 0.6), ("a" * 16, 2, 0.6), ("b" * 16, 1, 0.4)]


def test_doctor_counts_the_records_of_stacked_training_apart_from_the_stages(tmp_path, capsys):
    """A sound store of stacked seeds is all complete (found by audit: '44 stages (36 complete)' read as if eight
    were unfinished; they were the records of the levels' stacked trainings)."""
    root = tmp_path / "runs"
    args = ["run", "--root", str(root), "--no-progress", "--seeds", "2", "--batch", "on", "--sparse", "off"]
    assert main(args + [a for s in TINY for a in ("--set", s)]) == 0
    capsys.readouterr()
    assert main(["doctor", "--root", str(root)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == f"store {root}: 9 stages (6 complete, 3 records of stages trained stacked), 1 runs", first
