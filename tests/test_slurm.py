"""`sparsedd sweep --executor slurm`: the sbatch options (sweep file's [slurm] table and --slurm), checked
before anything runs; the executor's results and errors (submitit's debug cluster, in this process); a
tiny sweep as submitit jobs on this machine (its LocalExecutor) equal to the same sweep inline."""

import json
import sys
from pathlib import Path

import pytest

from sparsedd.cli import main
from sparsedd.errors import SparseddError
from sparsedd.options import ExecOptions
from sparsedd.store import Store
from sparsedd.sweep import SweepOptions, load_sweep, run_sweep
from sparsedd.sweep import slurm as S
from sparsedd.sweep.executors import SlurmExecutor, Task
from test_sweep import SMALL, assert_same_results

# --- the options ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, want", [(90, 90), ("90", 90), ("90:30", 91), ("4:00:00", 240), ("1-12", 2160),
                                         ("1-0:30", 1470), ("2-00:00:01", 2881), (" 10 ", 10)])
def test_time_in_sbatch_forms(value, want):
    assert S.minutes("time", value) == want


def test_options_checked_and_mapped_to_submitit(monkeypatch):
    table = {"partition": "gpu", "time": "4:00:00", "gpus_per_node": 1, "cpus_per_task": 4, "mem_gb": 15.5,
             "account": "lab", "qos": "high", "setup": "module load cuda", "additional_parameters": {"mail-type": "END"}}
    got = S.check(table, "f.toml")
    assert got["time"] == 240 and got["setup"] == ["module load cuda"]
    params = S.submitit_parameters(got, "sparsedd-abc")
    assert params == {"name": "sparsedd-abc", "timeout_min": 240, "slurm_partition": "gpu", "gpus_per_node": 1,
                      "cpus_per_task": 4, "mem_gb": 15.5, "slurm_account": "lab", "slurm_qos": "high",
                      "slurm_setup": ["module load cuda"], "slurm_additional_parameters": {"mail-type": "END"}}
    assert S.submitit_parameters({}, "n")["timeout_min"] == S.DEFAULT_MINUTES  # not submitit's 5 minutes
    import submitit  # submitit takes every parameter we make, for SLURM (its sbatch file) and for local jobs

    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # as if srun were here
    submitit.AutoExecutor(folder="/nonexistent/never-written", cluster="local").update_parameters(**params)
    ex = submitit.AutoExecutor(folder="/nonexistent/never-written", cluster="slurm")
    ex.update_parameters(**params)
    sbatch = ex._executor._make_submission_file_text("python -m x", "u")
    for line in ("--partition=gpu", "--time=240", "--gpus-per-node=1", "--cpus-per-task=4", "--mem=15872MB",
                 "--account=lab", "--qos=high", "--mail-type=END", "--job-name=sparsedd-abc"):
        assert f"#SBATCH {line}" in sbatch, line
    assert "module load cuda" in sbatch
    flags = S.parse_flags(["time=04:00:00", "partition=gpu", "gpus_per_node=2", 'setup=["a", "b"]',
                           "additional_parameters.reservation=dd", "qos = high prio"])
    assert S.check(flags, "--slurm") == {"time": 240, "partition": "gpu", "gpus_per_node": 2, "setup": ["a", "b"],
                                         "additional_parameters": {"reservation": "dd"}, "qos": "high prio"}
    both = S.merged(got, S.check(flags, "--slurm"))
    assert both["gpus_per_node"] == 2 and both["additional_parameters"] == {"mail-type": "END", "reservation": "dd"}


@pytest.mark.parametrize("table, words", [
    ({"partion": "gpu"}, "unknown slurm option 'partion'"),
    ({"time": "four hours"}, "slurm time must be minutes"),
    ({"time": 0}, "between 1 minute"),
    ({"time": "400-00:00"}, "between 1 minute"),
    ({"gpus_per_node": -1}, "gpus_per_node must be an integer >= 0"),
    ({"cpus_per_task": 0}, "cpus_per_task must be an integer >= 1"),
    ({"cpus_per_task": 2.5}, "cpus_per_task must be an integer"),
    ({"mem_gb": float("nan")}, "mem_gb must be a number > 0"),
    ({"mem_gb": True}, "mem_gb must be a number > 0"),
    ({"partition": ""}, "partition must be a non-empty string"),
    ({"setup": [1]}, "setup must be a list of shell lines"),
    ({"additional_parameters": "x"}, "additional_parameters must be a table"),
    ({"cluster": "pbs"}, "cluster must be one of slurm, local"),
])
def test_bad_options_are_one_line_errors(table, words):
    with pytest.raises(SparseddError) as e:
        S.check(table, "f.toml")
    assert words in str(e.value) and str(e.value).startswith("f.toml: ") and "\n" not in str(e.value)


def _sweep_file(tmp_path, slurm: str = "", epochs: int = 2) -> Path:
    f = tmp_path / "s.toml"
    f.write_text(SMALL.format(epochs=epochs).replace('"retrain.mode" = ["finetune", "weight-rewind"]\n', "") + slurm)
    return f


@pytest.mark.parametrize("slurm, flags, words", [
    ('[slurm]\npartion = "gpu"\n', [], "unknown slurm option 'partion'"),
    ("[slurm]\ntime = -5\n", [], "slurm time must be between"),
    ("", ["--slurm", "gpus_per_node=many"], "--slurm: slurm gpus_per_node must be an integer"),
    ("", ["--slurm", "partition"], "--slurm expects KEY=VALUE"),
])
def test_bad_slurm_options_stop_the_sweep_before_anything_is_written(tmp_path, capsys, slurm, flags, words):
    root = tmp_path / "root"
    assert main(["sweep", str(_sweep_file(tmp_path, slurm)), "--root", str(root), "--executor", "slurm",
                 "--no-progress", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1
    assert not (root / "sweeps").exists()


def test_slurm_flags_need_the_slurm_executor_and_the_table_is_ignored_by_the_others(tmp_path, capsys):
    f = _sweep_file(tmp_path, '[slurm]\npartition = "gpu"\ntime = "1:00:00"\n')
    assert load_sweep(str(f)).slurm == {"partition": "gpu", "time": 60}
    plain = tmp_path / "plain"
    plain.mkdir()
    assert load_sweep(str(f)).sweep_id == load_sweep(str(_sweep_file(plain))).sweep_id  # the table is in no id
    assert main(["sweep", str(f), "--root", str(tmp_path / "r"), "--slurm", "partition=x", "--no-progress"]) == 2
    assert "--slurm applies to --executor slurm" in capsys.readouterr().err
    assert main(["sweep", str(f), "--dry-run"]) == 0  # the table does not stop a local sweep


def test_without_submitit_a_one_line_error_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit raises ImportError
    root = tmp_path / "root"
    assert main(["sweep", str(_sweep_file(tmp_path)), "--root", str(root), "--executor", "slurm", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'sparsedd[slurm]'" in err and len(err.splitlines()) == 1
    assert not (root / "sweeps").exists()


def test_without_slurm_on_this_machine_a_one_line_error_says_what_to_do(tmp_path, capsys, monkeypatch):
    import shutil

    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "srun" else real(name, *a, **k))
    root = tmp_path / "root"
    assert main(["sweep", str(_sweep_file(tmp_path)), "--root", str(root), "--executor", "slurm", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs SLURM's commands" in err and 'cluster = "local"' in err and len(err.splitlines()) == 1
    assert not (root / "sweeps").exists()


# --- the executor -----------------------------------------------------------------------------------

def test_results_and_errors_come_back_as_from_the_other_executors(tmp_path, monkeypatch):
    """On submitit's debug cluster (jobs run in this process, so run_task can be replaced): a result comes
    back whole; a task's error as one line; the spec asks for buffered index rows."""
    import sparsedd.sweep.worker as worker

    seen = []

    def fake(spec):
        seen.append(spec)
        if spec["what"] == "boom":
            raise RuntimeError("first line\nboom")
        if spec["what"] == "bad":
            raise SparseddError("a bad value")
        return {"run_ids": ["r"], "index_calls": [("set_status", ("r", "complete"), {})]}

    monkeypatch.setattr(worker, "run_task", fake)
    monkeypatch.setattr(SlurmExecutor, "POLL_S", 0.0)
    ex = SlurmExecutor(tmp_path, 3, {"cluster": "debug"})
    tasks = [Task(f"t{i}", "runs", what, {"what": what}) for i, what in enumerate(("ok", "boom", "bad"))]
    for t in tasks:
        ex.start(t)
    out = {t.label: (ok, error, result) for t, ok, error, result in ex.poll()}
    assert out == {"ok": (True, "", {"run_ids": ["r"], "index_calls": [("set_status", ("r", "complete"), {})]}),
                   "boom": (False, "boom", None), "bad": (False, "a bad value", None)}
    assert all(s["buffer_index"] and s["threads"] == 3 for s in seen)
    assert not ex.running and ex.poll() == []
    from submitit.core.utils import FailedJobError

    def refused(*args):
        raise FailedJobError("sbatch: error: Batch job submission failed\nsbatch: error: invalid partition: gpuu\n")

    monkeypatch.setattr(ex.executor, "submit", refused)
    with pytest.raises(SparseddError, match=r"^SLURM refused the job of ok: sbatch: error: invalid partition: gpuu "):
        ex.start(tasks[0])
    ex.close()


def test_a_slurm_sweep_on_this_machine_equals_the_same_sweep_inline_and_resumes(tmp_path, capsys):
    """Each task a submitit job (its LocalExecutor: a process per job, as a SLURM node would run it):
    the same weights and index rows as inline, the index written by the driver alone, the jobs' logs
    in the sweep's slurm/ folder; run again, nothing is submitted."""
    f = _sweep_file(tmp_path, '[slurm]\ncluster = "local"\ntime = 30\npartition = "ignored-here"\n')
    inline = run_sweep(str(f), tmp_path / "inline", SweepOptions(executor="inline", report=False, execution=ExecOptions(
        threads=1, sparse="off", batch="off", progress=False)))
    assert len(inline.complete) == 2
    root = tmp_path / "root"
    args = ["sweep", str(f), "--root", str(root), "--executor", "slurm", "--threads", "1",
            "--sparse", "off", "--batch", "off", "--no-progress", "--no-report", "--format", "json",
            "--slurm", "cpus_per_task=1"]
    assert main(args) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    # SLURM's default of --workers is a cap: the opening line says how many jobs can run at once
    assert "executor slurm, 2 jobs at once" in " ".join(captured.err.split())
    assert len(result["complete"]) == 2 and not result["failed"]
    assert_same_results(Store(root), Store(tmp_path / "inline"), f)
    folder = Path(result["folder"])
    assert folder == Store(root).sweep_dir(result["sweep_id"])
    logs = sorted((folder / "slurm").glob("*_log.err"))
    assert len(logs) == 2 + 2  # two dense stages, then two runs
    for err in logs:  # submitit's own lines, in one of the job's two logs
        assert "Starting with JobEnvironment" in err.read_text() + err.with_suffix(".out").read_text()
    record = json.loads((folder / "sweep.json").read_text())
    assert record["executor"] == "slurm" and record["slurm"] == {"cluster": "local", "time": 30,
                                                                 "partition": "ignored-here", "cpus_per_task": 1}
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert len(again["skipped"]) == 2 and not again["complete"]
    assert sorted((folder / "slurm").glob("*_log.err")) == logs


@pytest.mark.parametrize("sigint", ["delivered", "lost"])
def test_stopping_the_sweep_cancels_its_jobs(tmp_path, monkeypatch, sigint):
    """close() (Ctrl-C or SIGTERM to the driver) cancels the jobs still queued or running: here a local job, whose
    processes are all gone after it. submitit cancels a local job by one SIGINT, which was seen lost under load
    (the job ran on to its end): close() then kills the job's processes after STOP_WAIT_S."""
    import os
    import time

    from sparsedd.sweep import executors

    monkeypatch.setattr(executors, "STOP_WAIT_S", 3.0)
    started = tmp_path / "started"
    ex = SlurmExecutor(tmp_path, 1, {"cluster": "local", "time": 5})
    # cloudpickled whole: no sparsedd task, just a long job, which writes its process id when it runs
    ex.function = lambda spec: (open(str(started), "w").write(str(os.getpid())), time.sleep(120))
    ex.start(Task("t", "runs", "long", {}))
    (task, job), = ex.running.values()
    deadline = time.time() + 120
    while not (started.exists() and started.read_text()) and time.time() < deadline:
        time.sleep(0.2)
    assert job.state == "RUNNING" and ex.poll() == [] and ex.running
    if sigint == "lost":
        monkeypatch.setattr(job, "cancel", lambda check=True: None)
    ex.close()
    assert job._process.poll() is not None and not ex.running  # close() waits for it
    pid = int(started.read_text())
    for _ in range(100):  # the job's own process: stopped by the controller, or killed with it
        if not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] == "Z":
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the job's process {pid} is still running")
