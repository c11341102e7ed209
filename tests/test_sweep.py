"""Sweeps: file checks, expansion, local and Ray executors equal to one-by-one runs, killed workers,
and the store under concurrent writers."""

import contextlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sparsedd.cli import main
from sparsedd.experiments import ExecOptions, run
from sparsedd.store import Store
from sparsedd.sweep import SweepOptions, load_sweep, run_sweep

SMALL = """
preset = "mnist1d-quick"
seeds = 1
[base]
"data.num_train" = 240
"data.num_test" = 120
"model.hidden" = [32, 32]
"train.epochs" = {epochs}
"train.batch_size" = 32
"train.eval_every" = 1
"prune.levels" = 2
[grid]
"data.noise" = [0.2, 0.4]
"retrain.mode" = ["finetune", "weight-rewind"]
"""


def small(tmp_path, epochs=3) -> Path:
    f = tmp_path / "small.toml"
    f.write_text(SMALL.format(epochs=epochs))
    return f


def finals(store: Store, run_id: str) -> list[dict]:
    return [store.final(sid) for sid in store.index.run_stages(run_id).values()]


def count_rows(store: Store, table: str) -> int:
    with contextlib.closing(sqlite3.connect(store.root / "index.sqlite")) as con:
        return con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


_REFERENCES: dict[str, Path] = {}  # sweep file text -> a store of its runs computed one by one (this session)


def one_by_one(tmp_path, sweep_file) -> Store:
    """The sweep's runs computed one by one, in a store of this test's own: computed once per sweep file
    text in a session (several tests compare against the same runs) and copied, since some write to it."""
    text = Path(sweep_file).read_text()
    if text not in _REFERENCES:
        ref = Store(tmp_path / "one-by-one-reference")
        for r in load_sweep(str(sweep_file)).runs:
            run(r.config, ref, preset=r.preset, options=ExecOptions(progress=False, sparse="off", batch="off"))
        _REFERENCES[text] = ref.root
    shutil.copytree(_REFERENCES[text], tmp_path / "one-by-one")
    return Store(tmp_path / "one-by-one")


def assert_same_results(store: Store, ref: Store, sweep_file) -> None:
    for r in load_sweep(str(sweep_file)).runs:
        got, want = finals(store, r.run_id), finals(ref, r.run_id)
        assert len(got) == len(want) == 3, r.label
        for a, b in zip(got, want):
            for k in a["model"]:
                assert torch.equal(a["model"][k], b["model"][k]), (r.label, k)
    for table in ("levels", "epochs", "run_stages"):
        assert count_rows(store, table) == count_rows(ref, table), table
    statuses = {row["status"] for row in store.index.run_rows()}
    assert statuses == {"complete"}


# --- the file --------------------------------------------------------------------------------

def test_expansion_grid_times_zip(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('preset = "mnist1d-quick"\nseeds = 2\n[base]\ntrain.epochs = 7\n'
                 '[grid]\n"data.noise" = [0.2, 0.4]\n[zip]\n"train.lr" = [0.1, 0.05]\n"train.batch_size" = [128, 64]\n')
    sw = load_sweep(str(f))
    assert [r.label for r in sw.runs] == [
        "data.noise=0.2 train.lr=0.1 train.batch_size=128", "data.noise=0.2 train.lr=0.05 train.batch_size=64",
        "data.noise=0.4 train.lr=0.1 train.batch_size=128", "data.noise=0.4 train.lr=0.05 train.batch_size=64"]
    cfg = sw.runs[3].config
    assert (cfg.data.noise, cfg.train.lr, cfg.train.batch_size, cfg.train.epochs, cfg.seeds) == (0.4, 0.05, 64, 7, 2)
    assert len({r.run_id for r in sw.runs}) == 4 and sw.retries == 1


def test_sweep_presets_expand():
    for name, axis, n in (("paper-mnist-noise", "data.noise", 3), ("paper-mnist-pruners", "prune.method", 3),
                          ("paper-mnist-retrain", "retrain.mode", 4)):
        sw = load_sweep(name)
        assert len(sw.runs) == n and all(axis in r.axes for r in sw.runs)
        assert all(r.config.model.name == "lenet-300-100" and r.config.seeds == 5 for r in sw.runs)


@pytest.mark.parametrize("text,message", [
    ('presets = "mnist1d-quick"\n', "unknown key 'presets'"),
    ('[grid]\n"data.noise" = []\n', "grid axis 'data.noise' is empty"),
    ('[grid]\n"data.noise" = 0.2\n', "must be a list"),
    ('[zip]\n"train.lr" = [0.1, 0.05]\n"train.batch_size" = [128]\n', "equal lengths (train.lr has 2, train.batch_size has 1)"),
    ('[grid]\n"train.lr" = [0.1]\n[zip]\n"train.lr" = [0.2]\n', "both a grid and a zip axis"),
    ('[grid]\n"train.nope" = [1, 2]\n', "run 1 (train.nope=1)"),
    ('[grid]\n"data.noise" = [0.2, 1.5]\n', "run 2 (data.noise=1.5)"),
    ('[grid]\n"data.noise" = [0.2, 0.2]\n', "runs 1 and 2 are the same configuration"),
    ('seeds = 0\n', "seeds must be an integer >= 1"),
    ('[grid\n', "not valid TOML"),
])
def test_malformed_sweep_file_one_line_error_and_nothing_runs(tmp_path, capsys, text, message):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    root = tmp_path / "root"
    assert main(["sweep", str(f), "--root", str(root), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not root.exists()


def test_dry_run_lists_runs(tmp_path, capsys):
    assert main(["sweep", str(small(tmp_path)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 runs" in out and "data.noise=0.4 retrain.mode=weight-rewind" in out
    # (found by audit) --format json is honoured, and flags the real sweep refuses are refused here too
    assert main(["sweep", str(small(tmp_path)), "--dry-run", "--format", "json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert len(plan["runs"]) == 4 and plan["runs"][3]["axes"] == {"data.noise": 0.4, "retrain.mode": "weight-rewind"}
    assert main(["sweep", str(small(tmp_path)), "--dry-run", "--address", "1.2.3.4"]) == 2
    assert "--address and --gpus-per-task apply to --executor ray" in capsys.readouterr().err


# --- executors -------------------------------------------------------------------------------

def test_local_sweep_equals_one_by_one_shares_dense_and_resumes(tmp_path, capsys):
    f = small(tmp_path)
    root = tmp_path / "root"
    opts = SweepOptions(workers=2, execution=ExecOptions(sparse="off", batch="off", progress=False))
    res = run_sweep(str(f), root, opts)
    assert len(res.complete) == 4 and not res.failed and res.report is not None and res.report.exists()
    store = Store(root)
    assert_same_results(store, one_by_one(tmp_path, f), f)
    # the dense network of each noise rate was computed once (phase 1), for two runs each
    dense = [p for p in (root / "stages").iterdir() if json.loads((p / "stage.json").read_text())["kind"] == "dense"]
    assert len(dense) == 2
    assert len(list((res.folder / "logs").glob("dense-*"))) == 2
    # again: nothing to do; the CLI says so
    logs = sorted((res.folder / "logs").iterdir())
    assert main(["sweep", str(f), "--root", str(root), "--workers", "2", "--no-progress", "--sparse", "off",
                 "--batch", "off"]) == 0
    assert "0 runs complete, 4 were already" in capsys.readouterr().out
    assert sorted((res.folder / "logs").iterdir()) == logs


def test_inline_sweep_equals_one_by_one_and_fails_one_run_only(tmp_path, monkeypatch):
    """The inline executor (tasks in this process) gives the local executor's results; a task that raises
    fails its run, retried, without stopping the sweep."""
    f = small(tmp_path, epochs=2)
    opts = SweepOptions(executor="inline", report=False, execution=ExecOptions(sparse="off", batch="off",
                                                                               progress=False))
    res = run_sweep(str(f), tmp_path / "inline", opts)
    assert len(res.complete) == 4 and not res.failed and not (res.folder / "logs").exists()
    assert_same_results(Store(tmp_path / "inline"), one_by_one(tmp_path, f), f)
    import sparsedd.sweep.worker as worker

    calls = []

    def broken(task):
        calls.append(task)
        raise RuntimeError("boom")

    monkeypatch.setattr(worker, "run_task", broken)
    g = tmp_path / "other.toml"
    g.write_text(SMALL.format(epochs=1).replace('"retrain.mode" = ["finetune", "weight-rewind"]', ""))
    res = run_sweep(str(g), tmp_path / "inline", SweepOptions(executor="inline", retries=1, execution=opts.execution))
    assert len(res.failed) == 2 and all("RuntimeError: boom" in e for e in res.failed.values())


FAILS_WHEN_TRAINED = """
import torch.nn as nn


class Fails(nn.Linear):
    def forward(self, x):
        if not x.is_meta:  # (the model check runs on the meta device: it passes)
            raise ValueError("this model fails when trained")
        return super().forward(x)


def build(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), Fails(40, num_classes))
"""


def test_failed_run_is_reported_retried_and_does_not_stop_the_others(tmp_path, monkeypatch):
    (tmp_path / "fails_when_trained.py").write_text(FAILS_WHEN_TRAINED)  # a run that fails in its worker
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path))
    f = tmp_path / "s.toml"
    f.write_text(SMALL.format(epochs=2).replace('"model.hidden" = [32, 32]\n', "").replace(
        '"retrain.mode" = ["finetune", "weight-rewind"]',
        '[zip]\n"model.name" = ["mlp", "fails_when_trained:build"]\n"model.hidden" = [[32, 32], []]'))
    res = run_sweep(str(f), tmp_path / "root", SweepOptions(workers=2, retries=1, report=False, execution=ExecOptions(progress=False)))
    assert len(res.complete) == 2 and len(res.failed) == 2
    assert all("this model fails when trained" in e for e in res.failed.values())
    rows = sorted(Store(tmp_path / "root").index.run_rows(), key=lambda r: r["status"])
    assert [r["status"] for r in rows] == ["complete", "complete", "failed", "failed"]
    assert len(list((res.folder / "logs").glob("runs-*.1.log"))) >= 1  # failing tasks were tried twice
    assert main(["sweep", str(f), "--root", str(tmp_path / "root"), "--no-progress", "--retries", "0"]) == 1


@pytest.fixture
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_sweep_equals_one_by_one_and_shares_with_local(tmp_path, ray_cluster):
    f = small(tmp_path)
    res = run_sweep(str(f), tmp_path / "ray", SweepOptions(executor="ray", workers=2,
                                                          execution=ExecOptions(sparse="off", batch="off", progress=False)))
    assert len(res.complete) == 4 and not res.failed
    ref = one_by_one(tmp_path, f)
    assert_same_results(Store(tmp_path / "ray"), ref, f)
    # across executors: the one-by-one store already has every run complete
    again = run_sweep(str(f), ref.root, SweepOptions(executor="ray", workers=2, execution=ExecOptions(progress=False)))
    assert len(again.skipped) == 4 and not again.complete


def _kill_a_worker_mid_run(root: Path, proc: subprocess.Popen) -> int:
    """Wait until a run task's worker is training (its PID file exists, a level is under way), then SIGKILL it."""
    deadline = time.time() + 240
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError("the sweep ended before a worker could be killed")
        pids = list(root.glob("sweeps/*/pids/runs-*.pid"))
        if pids:
            time.sleep(0.3)  # into the run's training
            pid = int(pids[0].read_text())
            try:
                os.kill(pid, signal.SIGKILL)
                return pid
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    raise AssertionError("no worker to kill")


@pytest.mark.parametrize("executor", ["local", "ray", "slurm"])
def test_worker_killed_mid_run_then_sweep_completes(tmp_path, executor):
    if executor in ("ray", "slurm"):
        pytest.importorskip({"ray": "ray", "slurm": "submitit"}[executor])
    f = small(tmp_path, epochs=10)
    root = tmp_path / "root"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "sparsedd.cli", "sweep", str(f), "--root", str(root), "--executor", executor,
           "--workers", "2", "--sparse", "off", "--batch", "off", "--no-progress", "--no-report", "--format", "json"]
    cmd += ["--slurm", "cluster=local"] if executor == "slurm" else []  # submitit's jobs as processes of this machine
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _kill_a_worker_mid_run(root, proc)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    result = json.loads(out[out.index("{\n"):])  # Ray may print its own lines about the dead worker first
    assert len(result["complete"]) == 4 and not result["failed"]
    store = Store(root)
    assert_same_results(store, one_by_one(tmp_path, f), f)
    con = sqlite3.connect(root / "index.sqlite")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # one row per stage and epoch: 2 dense stages + 4 runs x 2 levels, 10 epochs each
    assert con.execute("SELECT COUNT(*) FROM levels").fetchone()[0] == 2 + 4 * 2
    assert con.execute("SELECT COUNT(*) FROM epochs").fetchone()[0] == (2 + 4 * 2) * 10


# --- the store under concurrency -----------------------------------------------------------------

def _hammer(root: str, writer: int, n: int) -> None:
    store = Store(root)
    store.register_run("shared-run", {"x": 1}, None, 1, n)
    for i in range(n):
        sid = f"w{writer}-s{i}"
        store.index.record_epochs(sid, [{"epoch": e + 1, "lr": 0.1, "test_acc": 0.5} for e in range(5)])
        store.index.record_level(sid, i, {"test_acc": 0.5, "sparsity": 0.1, "layer_sparsity": {"a": 0.1}})
        store.index.link("shared-run", writer, i, sid)
        store.index.set_status("shared-run", "partial")


def test_four_concurrent_writers_lose_nothing(tmp_path):
    ctx = mp.get_context("spawn")
    n = 60
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path), w, n)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    con = sqlite3.connect(tmp_path / "index.sqlite")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("SELECT COUNT(*) FROM levels").fetchone()[0] == 4 * n
    assert con.execute("SELECT COUNT(*) FROM epochs").fetchone()[0] == 4 * n * 5
    assert con.execute("SELECT COUNT(*) FROM run_stages").fetchone()[0] == 4 * n
    assert con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1


def _hold(root: str, out: str, tag: str, wait: float) -> None:
    with Store(root).lock("stage-x"):
        with open(out, "a") as f:
            f.write(f"{tag}-in\n")
        time.sleep(wait)
        with open(out, "a") as f:
            f.write(f"{tag}-out\n")


def test_stage_lock_excludes_other_processes_and_dies_with_its_holder(tmp_path):
    ctx = mp.get_context("spawn")
    out = tmp_path / "order.txt"
    first = ctx.Process(target=_hold, args=(str(tmp_path), str(out), "a", 1.0))
    first.start()
    while not out.exists() or not out.read_text():  # the holder is inside the lock once it wrote its line
        time.sleep(0.01)
    second = ctx.Process(target=_hold, args=(str(tmp_path), str(out), "b", 0.0))
    second.start()
    first.join()
    second.join()
    assert out.read_text().split() == ["a-in", "a-out", "b-in", "b-out"]
    # a holder killed with SIGKILL releases the lock
    out.unlink()
    holder = ctx.Process(target=_hold, args=(str(tmp_path), str(out), "c", 60.0))
    holder.start()
    while not out.exists() or not out.read_text():  # the holder is inside the lock once it wrote its line
        time.sleep(0.01)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    _hold(str(tmp_path), str(out), "d", 0.0)
    assert out.read_text().split() == ["c-in", "d-in", "d-out"]


def test_bad_options(tmp_path, capsys):
    f = small(tmp_path)
    assert main(["sweep", str(f), "--root", str(tmp_path / "r"), "--workers", "0", "--no-progress"]) == 2
    assert "--workers must be >= 1" in capsys.readouterr().err
    assert main(["sweep", str(f), "--root", str(tmp_path / "r"), "--address", "x:1"]) == 2
    assert "--address" in capsys.readouterr().err


def test_runs_of_one_task_share_stages_and_batch(tmp_path, monkeypatch):
    """Runs trained together (one sweep task): a shared dense stage trains once; runs of one
    architecture batch across runs; the results equal one-by-one runs."""
    import sparsedd.experiments.batching as imp
    from sparsedd.experiments.imp import run_many

    f = small(tmp_path)
    sw = load_sweep(str(f))
    ref = one_by_one(tmp_path, f)
    trained, batched = [], []
    real_train, real_together = imp.Replicate.train_job, imp.train_together
    monkeypatch.setattr(imp.Replicate, "train_job", lambda self, job: (trained.append(job.sid), real_train(self, job))[1])
    monkeypatch.setattr(imp, "train_together",
                        lambda group, *a: (batched.append(len(group)), real_together(group, *a))[1])
    store = Store(tmp_path / "together")
    ids = run_many([(r.config, r.preset) for r in sw.runs], store, options=ExecOptions(progress=False, sparse="off",
                                                                                 batch="off"))
    assert ids == [r.run_id for r in sw.runs]
    assert len(trained) == len(set(trained)) == 2 + 4 * 2  # two dense stages, each trained once
    assert_same_results(store, ref, f)
    # batched across runs: the 2 dense stages (one per noise rate) as one computation, then at each level
    # the 2 finetuning runs together and the 2 rewinding runs together (their schedules differ)
    trained.clear()
    store = Store(tmp_path / "batched")
    run_many([(r.config, r.preset) for r in sw.runs], store, options=ExecOptions(progress=False, sparse="off", batch="on"))
    assert batched == [2, 2, 2, 2, 2] and not trained
    for r in sw.runs:
        for a, b in zip(finals(store, r.run_id), finals(ref, r.run_id)):
            for k in a["model"]:
                assert torch.allclose(a["model"][k], b["model"][k], atol=1e-5), (r.label, k)


def test_every_execution_option_reaches_the_sweep_tasks(tmp_path, monkeypatch):
    """The sweep command builds one options object from its flags and every task (dense stages and
    runs) receives all of it; only the thread count is the executor's, and workers show no display."""
    import dataclasses

    import sparsedd.sweep as sweep_mod
    from sparsedd.options import ExecOptions
    from sparsedd.sweep.worker import task_options

    received = []

    class Recording:  # stands in for the local executor: records what each task would be started with
        def __init__(self, work_dir, threads):
            self.threads, self.done = threads, []

        def start(self, task):
            received.append(task_options(dict(task.spec, threads=self.threads)))
            self.done.append(task)

        def poll(self):
            out = [(t, True, "", {"run_ids": list(t.run_ids), "index_calls": []}) for t in self.done]
            self.done = []
            return out

        def close(self):
            pass

    monkeypatch.setattr(sweep_mod, "LocalExecutor", Recording)
    import torch  # --device is checked against this machine's devices: two GPUs, as far as the check knows

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    (tmp_path / "data").mkdir()  # (a --data-dir of this machine must exist)
    flags = ["--device", "cuda:1", "--data-dir", str(tmp_path / "data"), "--threads", "3", "--batch", "off",
             "--sparse", "on", "--channels-last", "--compile", "--capture", "on", "--checkpoint-every", "7", "--checkpoint-epoch", "0",
             "--no-progress"]
    assert main(["sweep", str(small(tmp_path)), "--root", str(tmp_path / "root"), "--no-report", *flags]) == 0
    expected = ExecOptions(device="cuda:1", data_dir=str(tmp_path / "data"), threads=3, batch="off", sparse="on",
                           channels_last=True, compile=True, capture="on", checkpoint_every_s=7.0, checkpoint_epoch_s=0.0,
                           progress=False)
    defaults = ExecOptions()
    changed = [f.name for f in dataclasses.fields(ExecOptions) if getattr(expected, f.name) != getattr(defaults, f.name)]
    assert set(changed) == {f.name for f in dataclasses.fields(ExecOptions)} - {"dist"}  # so a dropped one shows
    assert len(received) == 2 + 2  # the two dense stages (one per noise rate), then the runs in two tasks
    assert all(r == expected for r in received)
