"""Kill a real run with SIGKILL mid-training, run the same command again: same weights, bit for bit."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY

SETS = [s for s in TINY if not s.startswith("train.epochs")] + ["train.epochs=30", "prune.levels=2"]


def command(root: Path, seeds: int = 1, execution: str = "dense") -> list[str]:
    cmd = [sys.executable, "-m", "sparsedd.cli", "run", "--root", str(root), "--no-progress", "--checkpoint-epoch", "0",
           "--seeds", str(seeds), "--sparse", "on" if execution == "compact" else "off",
           "--batch", "on" if seeds > 1 else "off"]
    for s in SETS:
        cmd += ["--set", s]
    return cmd


def finals(root: Path) -> dict[str, dict]:
    return {p.parent.name: torch.load(p, weights_only=True) for p in (root / "stages").glob("*/final.pt")}


@pytest.mark.parametrize("seeds,execution", [(1, "dense"), (2, "dense"), (1, "compact")])  # 2: batched seeds
def test_sigkill_then_resume_gives_identical_weights(tmp_path, seeds, execution):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    ref_root, root = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(command(ref_root, seeds, execution), check=True, env=env, capture_output=True, timeout=600)

    proc = subprocess.Popen(command(root, seeds, execution), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    # wait until level 1 is part-way: the dense stage is done and a checkpoint of the next stage exists
    while time.time() < deadline and proc.poll() is None:
        if len(list((root / "stages").glob("*/done.json"))) >= 1 and list((root / "stages").glob("*/checkpoint.pt")):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list((root / "stages").glob("*/checkpoint.pt"))

    res = subprocess.run(command(root, seeds, execution), env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    a, b = finals(ref_root), finals(root)
    assert a.keys() == b.keys() and len(a) == 3 * seeds
    for sid in a:
        for k, v in a[sid]["model"].items():
            assert torch.equal(v, b[sid]["model"][k]), (sid, k)
        for k, v in a[sid]["mask"].items():
            assert torch.equal(v, b[sid]["mask"][k])
    assert not list((root / "stages").glob("*/checkpoint.pt"))  # removed once stages are done
    assert not list(root.rglob("*.tmp"))  # temporary files of a killed write are cleaned up
    # the index agrees: one row per level, the run complete
    import sqlite3

    con = sqlite3.connect(root / "index.sqlite")
    assert con.execute("SELECT status FROM runs").fetchall() == [("complete",)]
    assert con.execute("SELECT COUNT(*) FROM levels").fetchone()[0] == 3 * seeds
    assert con.execute("SELECT COUNT(*) FROM epochs").fetchone()[0] == 90 * seeds


def test_what_a_kill_after_done_json_leaves_in_a_finished_stage_is_removed(tmp_path, tiny_sets):
    """A kill between writing done.json and removing the checkpoints, or while done.json's checksum is
    written, leaves them beside a finished stage (windows the test above may hit): the next run that
    passes the stage removes them."""
    from sparsedd import config_load
    from sparsedd.experiments import ExecOptions, run
    from sparsedd.store import Store

    cfg = config_load.load(None, None, tiny_sets, 1)
    store = Store(tmp_path)
    run(cfg, store, options=ExecOptions(progress=False))
    dense = store.index.run_stages(cfg.run_id)[(0, 0)]
    ckpt = store.checkpointer(dense)
    ckpt.save({"history": []})
    ckpt.save({"history": []})  # the first kept as the previous checkpoint
    assert (store.stage_dir(dense) / "checkpoint.prev.pt").exists()
    (store.stage_dir(dense) / ".done.json.sha256.x1y2z3.tmp").write_text("{")
    run(cfg, store, options=ExecOptions(progress=False))
    assert not list(store.stage_dir(dense).glob("checkpoint*")) and not list(tmp_path.rglob("*.tmp"))
