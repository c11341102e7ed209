"""Issue 13, point 5: SIGTERM (what `timeout`, SLURM and container runtimes send) is handled as Ctrl-C
is: a sweep driver stops its workers before it exits (none is left running), a run keeps its
checkpoints and is marked partial; both exit with code 143 and one line."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY

LONG = [s for s in TINY if not s.startswith("train.epochs")] + ["train.epochs=500"]  # never ends by itself


def alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie (an exited child its parent has not waited for)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"ended before {what}: {proc.communicate()}"
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"no {what} after {timeout} s")


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_sigterm_to_a_sweep_driver_stops_its_workers(tmp_path, executor):
    if executor == "ray":
        pytest.importorskip("ray")
    sweep = tmp_path / "sweep.toml"
    base = "\n".join(f'"{k}" = {v}' for k, v in (s.split("=", 1) for s in LONG if not s.startswith("data.noise")))
    sweep.write_text(f'seeds = 1\n[base]\n{base}\n[grid]\n"data.noise" = [0.2, 0.4]\n')
    root = tmp_path / "root"
    cmd = [sys.executable, "-m", "sparsedd.cli", "sweep", str(sweep), "--root", str(root), "--workers", "2",
           "--executor", executor, "--no-progress", "--no-report", "--checkpoint-epoch", "0"]
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        def two_training_workers():
            pids = [int(p.read_text()) for p in root.glob("sweeps/*/pids/*.pid")]
            training = len(list(root.glob("stages/*/checkpoint.pt"))) == 2
            return pids if len(pids) == 2 and training and all(map(alive, pids)) else None

        workers = wait_for(two_training_workers, driver, "two workers training (the two dense stages)")
        driver.send_signal(signal.SIGTERM)
        out, err = driver.communicate(timeout=60)
    finally:
        driver.kill()
    assert driver.returncode == 143, err
    assert err.strip().splitlines()[-1] == "sparsedd: terminated (SIGTERM); run the same command again to resume"
    assert "Traceback" not in err
    assert not [pid for pid in workers if alive(pid)]  # before: still computing, under PID 1
    assert len(list(root.glob("stages/*/checkpoint.pt"))) == 2  # what they computed is kept for the rerun


def test_sigterm_to_a_run_keeps_its_checkpoint_and_marks_it_partial(tmp_path):
    root = tmp_path / "root"
    cmd = [sys.executable, "-m", "sparsedd.cli", "run", "--root", str(root), "--no-progress", "--checkpoint-epoch", "0",
           *[a for s in LONG for a in ("--set", s)]]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: list(root.glob("stages/*/checkpoint.pt")), proc, "checkpoint")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143 and "Traceback" not in err
    assert err.strip().splitlines() == ["sparsedd: terminated (SIGTERM); run the same command again to resume"]
    assert list(root.glob("stages/*/checkpoint.pt"))
    con = sqlite3.connect(root / "index.sqlite")
    assert con.execute("SELECT status, error FROM runs").fetchall() == [("partial", "interrupted")]
    con.close()
    assert json.loads((next(root.glob("runs/*/config.json"))).read_text())["config"]["train"]["epochs"] == 500


def test_a_sigterm_during_a_torch_save_ends_as_terminated_not_as_a_runtime_error(tmp_path, monkeypatch):
    """The signal's handler can run inside the file's write, which torch's writer calls from C++ and whose
    exception it wraps in a RuntimeError ("unexpected pos"): that reached the user as a traceback and exit 1
    (CI, stop 32). The save ends as Terminated, the file it replaces is intact and no temporary is left."""
    import sparsedd.store.files as files
    from sparsedd.cli import Terminated, _sigterm_as_interrupt
    from sparsedd.store.files import load_tensors, save_tensors

    path = tmp_path / "checkpoint.pt"
    save_tensors(path, {"w": torch.zeros(3)})
    real_fdopen = files.os.fdopen

    class SignalledMidWrite(io.RawIOBase):
        def __init__(self, fd):
            self.f, self.calls = real_fdopen(fd, "wb", buffering=0), 0

        def writable(self):
            return True

        def write(self, b):
            self.calls += 1
            if self.calls == 2:  # past the archive's first record
                os.kill(os.getpid(), signal.SIGTERM)
            return self.f.write(b)

        def fileno(self):
            return self.f.fileno()

        def close(self):
            self.f.close()
            super().close()

    monkeypatch.setattr(files.os, "fdopen", lambda fd, mode: io.BufferedWriter(SignalledMidWrite(fd), 64))
    with _sigterm_as_interrupt(), pytest.raises(Terminated):
        save_tensors(path, {"w": torch.ones(4096)})
    monkeypatch.undo()
    assert torch.equal(load_tensors(path)["w"], torch.zeros(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "checkpoint.pt.sha256"]


def test_an_interrupt_while_torch_reads_a_file_is_the_interrupt_not_damage(tmp_path, monkeypatch):
    """A checkpoint read that Ctrl-C or SIGTERM cuts short inside torch's reader can end as a SystemError whose
    context is the interrupt (the handler usually runs in Python code, and the interrupt comes as it is): taken
    for damage, the checkpoint would be set aside and the stage started over. It is the interrupt."""
    import sparsedd.store.files as files
    from sparsedd.cli import Terminated
    from sparsedd.store.files import load_tensors, save_tensors

    path = tmp_path / "checkpoint.pt"
    save_tensors(path, {"w": torch.ones(3)})

    def interrupted(*args, **kwargs):  # as torch 2.13's reader ends when the file's read raised
        try:
            raise Terminated()
        except Terminated:
            raise SystemError("<built-in method read of _io.BufferedReader> returned a result with an exception set")

    monkeypatch.setattr(files.torch, "load", interrupted)
    with pytest.raises(Terminated):
        load_tensors(path)
    monkeypatch.undo()
    assert torch.equal(load_tensors(path)["w"], torch.ones(3))


def test_sigterm_exits_143_even_where_a_library_re_raised_it_as_a_plain_keyboard_interrupt(monkeypatch, capsys,
                                                                                             tmp_path):
    """Ray's wait turns an interrupt raised inside it into a new KeyboardInterrupt, so the sweep driver
    (executor ray) answered SIGTERM with 130 and "interrupted" (seen under load). The CLI remembers the
    signal; Ctrl-C alone stays 130."""
    import sparsedd.cli as cli

    def like_rays_wait(args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(300):  # short sleeps: the signal may reach another thread, which does not wake this one
                time.sleep(0.1)
        except KeyboardInterrupt:
            raise KeyboardInterrupt() from None

    def ctrl_c(args):
        raise KeyboardInterrupt

    before = signal.getsignal(signal.SIGTERM)
    for command, code, line in ((like_rays_wait, 143, "terminated (SIGTERM)"), (ctrl_c, 130, "interrupted")):
        monkeypatch.setattr(cli, "cmd_ls", command)
        assert cli.main(["ls", "--root", str(tmp_path)]) == code
        assert capsys.readouterr().err.strip() == f"sparsedd: {line}; run the same command again to resume"
    assert signal.getsignal(signal.SIGTERM) is before  # the CLI's handler is gone after main


def test_a_wrapped_interrupt_marks_the_run_partial_and_exits_143(tmp_path, tiny_sets, capsys, monkeypatch):
    """An interrupt that reaches the run's status as another exception (a library wrapped it) marks the run
    partial, not failed, and the command ends as terminated."""
    import sparsedd.store.files as files
    from sparsedd.cli import Terminated, main

    real = files.checksum_of

    def wrapped_interrupt(path):
        if Path(path).name.startswith(".final.pt"):  # the first stage's weights, written at its end
            try:
                raise Terminated()
            except Terminated:
                raise RuntimeError("a library's error raised while the interrupt was handled")
        return real(path)

    monkeypatch.setattr(files, "checksum_of", wrapped_interrupt)
    root = tmp_path / "root"
    assert main(["run", "--root", str(root), "--no-progress", *[a for s in tiny_sets for a in ("--set", s)]]) == 143
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "sparsedd: terminated (SIGTERM); run the same command again to resume"
    con = sqlite3.connect(root / "index.sqlite")
    assert con.execute("SELECT status, error FROM runs").fetchall() == [("partial", "interrupted")]
    con.close()


def test_sweep_tasks_stop_on_a_wrapped_interrupt_instead_of_failing(monkeypatch):
    from sparsedd.sweep import worker
    from sparsedd.sweep.executors import InlineExecutor, Task

    def wrapped_interrupt(task):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("a library's error raised while the interrupt was handled")

    monkeypatch.setattr(worker, "run_task", wrapped_interrupt)
    with pytest.raises(KeyboardInterrupt):
        worker.run_task_or_error({})
    with pytest.raises(KeyboardInterrupt):
        InlineExecutor(1).start(Task("t", "runs", "one", {}))
