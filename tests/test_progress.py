"""Issue 12, point 5: progress is visible without a terminal (a log, a batch job, a GPU node): one line
per finished stage with its result, its time and the run's, so a log shows where the time goes."""

from __future__ import annotations

import io
import re
import subprocess
import sys

from conftest import TINY
from sparsedd.experiments.progress import Progress

LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] seed (\d) (dense|level (\d)/2): sparsity (\d+\.\d\d)%, test \d+\.\d\d%, \d+s(?: for 2 stacked)?; "
                  r"epochs (\d+)/(\d+), elapsed \d+s(, eta \d+s)?$")


def test_lines_say_each_stage_its_time_and_what_is_left():
    out = io.StringIO()
    p = Progress(True, total_epochs=6, mode="lines", out=out)
    for _ in range(2):
        p.epoch({"test_acc": 0.5})
    p.finished("seed 0 dense", {"sparsity": 0.0, "test_acc": 0.5}, 3.2)
    p.skip(2)  # a stage done before
    for _ in range(2):
        p.epoch({})
    p.finished("seed 0 level 2/2", {"sparsity": 0.36, "test_acc": 0.625}, 62)
    p.finished("seed 1 level 2/2", {"sparsity": 0.36, "test_acc": 0.625}, 62, stacked=5)  # a fifth of 5m10s
    first, second, third = out.getvalue().splitlines()
    assert first.endswith("] seed 0 dense: sparsity 0.00%, test 50.00%, 3s; epochs 2/6, elapsed 0s, eta 0s")
    assert second.endswith("] seed 0 level 2/2: sparsity 36.00%, test 62.50%, 1m02s; epochs 6/6, elapsed 0s")
    assert third.endswith("] seed 1 level 2/2: sparsity 36.00%, test 62.50%, 5m10s for 5 stacked; epochs 6/6, elapsed 0s")
    quiet = io.StringIO()
    for mode in ("off", "bar"):
        Progress(True, 6, mode=mode, out=quiet).finished("seed 0 dense", {"test_acc": 0.5}, 1.0)
    assert quiet.getvalue() == ""


def test_a_run_without_a_terminal_logs_a_line_per_stage(tmp_path):
    args = [sys.executable, "-m", "sparsedd.cli", "run", "--root", str(tmp_path), "--seeds", "2", "--batch", "on",
            *[a for s in TINY for a in ("--set", s)]]
    res = subprocess.run(args, capture_output=True, text=True, timeout=300)  # stderr is a pipe, not a terminal
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.startswith("[")]
    assert len(lines) == 2 * 3, res.stderr  # 2 seeds x (dense + levels 1, 2)
    matches = [LINE.match(line) for line in lines]
    assert all(matches), lines
    assert all(" for 2 stacked; " in line for line in lines), lines  # the seeds of a level trained as one
    total = {m.group(6) for m in matches}
    assert len(total) == 1 and matches[-1].group(5) == total.pop()  # the last line: every epoch done


def test_no_progress_silences_the_lines(monkeypatch):
    from sparsedd.cli import _options, build_parser
    from sparsedd.experiments import progress as progress_mod

    monkeypatch.setattr(progress_mod, "_terminal", lambda: False)  # as under a pipe
    for flags, mode in (([], "lines"), (["--no-progress"], "off")):
        options = _options(build_parser().parse_args(["run", *flags]))
        assert progress_mod.Progress(options.progress, 10).mode == mode


def test_stages_taken_from_a_finished_batch_count_as_done_for_the_eta():
    # a kill between the records of a batch's stages: the next call records them from the batch's
    # saved outcome without training; their epochs must count, or the eta assumes they are still ahead
    import types

    import torch

    from sparsedd.config import TrainConfig
    from sparsedd.experiments.batching import train_level
    from sparsedd.experiments.stages import Job

    net = torch.nn.Linear(2, 2)
    saved = {"model": net.state_dict(), "history": [], "final": {}, "optim": {}, "seconds": 1.0}
    jobs = [Job(sid, 1, {}, {}, TrainConfig(epochs=7), f"seed {i} level 1", "dense") for i, sid in enumerate("ab")]
    store = types.SimpleNamespace(batch_of=lambda sid: "batch", batch_result=lambda bid: {"a": saved, "b": saved})
    recorded = []
    rep = types.SimpleNamespace(new_model=lambda _: torch.nn.Linear(2, 2),
                                record=lambda job, model, result, seconds, stacked=1: recorded.append(job.sid))
    progress = Progress(False, total_epochs=21, mode="off")
    train_level([(rep, j) for j in jobs], store, types.SimpleNamespace(batch="off"), progress)
    assert recorded == ["a", "b"] and progress.skipped_epochs == 14 and progress.done_epochs == 0


def test_the_bar_shows_test_accuracy_as_the_lines_do():
    p = Progress(True, total_epochs=2, mode="bar")
    p.start_stage("seed 0 dense", 2)
    p.epoch({"test_acc": 0.14})
    assert p.bar.tasks[1].fields["info"] == "test 14.00%"  # (found by audit: "test 0.140" here, 14.00% in the log)
