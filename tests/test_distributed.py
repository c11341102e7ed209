"""A run on 2 processes (torchrun, gloo, CPU) matches the single-process run of the same global batch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY

# 240 examples in batches of 35: slices of 18 and 17 per rank, and a last batch of 30.
SETS = [s for s in TINY if not s.startswith("train.batch_size")] + ["train.batch_size=35", "train.momentum=0.9",
                                                                    "train.weight_decay=1e-3", "prune.levels=2"]


def finals(root: Path) -> dict[str, dict]:
    return {p.parent.name: torch.load(p, weights_only=True) for p in (root / "stages").glob("*/final.pt")}


# MNIST images cropped and flipped: each process augments its part of a global batch as one process augments
# the whole batch (before, every process drew the crops of its own first images, and the runs differed)
AUGMENTED = ["data.name=mnist", "data.augment=crop-flip", "data.num_test=120"]


@pytest.mark.parametrize("extra", [[], AUGMENTED], ids=["mnist1d", "augmented-mnist"])
def test_two_processes_match_one(tmp_path, request, extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    args = [a for s in SETS + extra for a in ("--set", s)] + ["--no-progress", "--device", "cpu"]
    if extra:
        args += ["--data-dir", str(request.getfixturevalue("shared_mnist"))]
    single = subprocess.run([sys.executable, "-m", "sparsedd.cli", "run", "--root", str(tmp_path / "one"), *args],
                            env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "sparsedd.cli", "run", "--root", str(tmp_path / "two"), *args],
                         env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "on 2 processes" in ddp.stdout
    a, b = finals(tmp_path / "one"), finals(tmp_path / "two")
    assert a.keys() == b.keys() and len(a) == 3  # the same stage ids: how it ran is not part of them
    for sid in a:
        for n in a[sid]["mask"]:
            assert torch.equal(a[sid]["mask"][n], b[sid]["mask"][n])
        for n, v in a[sid]["model"].items():
            # stated tolerance: summing a batch's gradient in two halves changes only float rounding
            assert torch.allclose(v, b[sid]["model"][n], atol=1e-5, rtol=1e-4), (sid, n)
