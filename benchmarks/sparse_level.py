"""The 98.8%-sparse LeNet-300-100 level against the dense step, timed in turns (issue 23).

Seconds per epoch of our one-network trainer on MNIST (batch 128, SGD lr 0.1): dense-masked at full
density, and at 98.8% sparsity (global magnitude of briefly trained weights, as `sparsedd bench`
makes it) computed compact (dense live blocks) and as ``--sparse auto`` decides. The three take turns for ``--rounds`` rounds; medians are printed with the
ratios to the dense step, so a load that comes and goes hits all of them alike.

    python benchmarks/sparse_level.py --data-dir ../shared/data [--threads 1] [--busy 1] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json

import torch

from sparsedd.bench.suite import BATCH, _magnitude_masks, _mnist_like, _model, _Timer, busy_cores, ours_steps
from sparsedd.training import TrainData
from sparsedd.training.measured import interleaved_medians
from sparsedd.training.sparse import SparsePolicy

WIDTHS = (784, 300, 100, 10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as sparsedd run trains MLPs)")
    ap.add_argument("--busy", type=int, default=0, help="other processes kept busy meanwhile")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    x, y, real = _mnist_like(args.data_dir, 60000, device)
    data = TrainData.clean(x, y, BATCH)
    (mask,) = _magnitude_masks(_model(WIDTHS, 0, device), data, [0.012], warm_steps=200)
    full = {n: torch.ones_like(m) for n, m in mask.items()}
    ipe = -(-x.shape[0] // BATCH)

    def epoch_seconds(m, policy):
        def timed() -> float:
            timer = _Timer(device, 5)
            ours_steps(_model(WIDTHS, 0, device), m, data, args.steps + 5, timer, policy)
            return timer.per_step() * ipe
        return timed

    timers = {"dense": epoch_seconds(full, SparsePolicy("off")),
              "compact_blocks": epoch_seconds(mask, SparsePolicy("on", kernel_below=0.0)),
              "auto": epoch_seconds(mask, SparsePolicy("auto"))}
    with busy_cores(args.busy):
        med = interleaved_medians(timers, args.rounds)
    out = {"s_per_epoch": med, "over_dense": {k: v / med["dense"] for k, v in med.items()},
           "threads": args.threads, "busy": args.busy, "rounds": args.rounds, "real_mnist": real}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
