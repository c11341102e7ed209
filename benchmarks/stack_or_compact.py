"""Seconds per network of training steps on a finished run's real level masks, three ways: one network
dense-masked, one network compact (on its live units), and all the run's seeds stacked. Deeper levels
are made by pruning the level's masks further (global magnitude, the run's rate per level), so one
finished level is enough. This is the measurement behind ``--batch auto`` timing stacked against
compact on each level's real jobs (src/sparsedd/experiments/batching.py, docs/performance.md).

    python benchmarks/stack_or_compact.py RUN --root ROOT --data-dir DIR --level 11 --deeper 16,20,24 --threads 2

Ratios are against dense-masked in the same process; absolute times drift with the machine's load.
"""

from __future__ import annotations

import argparse

import torch

from sparsedd.analysis.runner import Analyzer
from sparsedd.experiments.batching import timed
from sparsedd.options import ExecOptions
from sparsedd.pruning import magnitude
from sparsedd.store import Store
from sparsedd.training import train
from sparsedd.training.planner import train_batched
from sparsedd.training.sparse import SparsePolicy


def deeper(final: dict, level: int, start: int, fraction: float) -> dict[str, torch.Tensor]:
    """The level's mask pruned ``level - start`` more rounds at once (global magnitude)."""
    if level == start:
        return final["mask"]
    weights = {n: final["model"][n] for n in final["mask"]}
    return magnitude(weights, final["mask"], fraction=1 - (1 - fraction) ** (level - start), scope="global")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run")
    p.add_argument("--root", required=True)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--level", type=int, required=True, help="a finished level of every seed")
    p.add_argument("--deeper", default="", help="comma-separated deeper levels to simulate")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    an = Analyzer(Store(a.root), a.run, ExecOptions(progress=False, data_dir=a.data_dir))
    seeds = sorted({s for s, level in an.links if level == a.level})
    reps = [an.model_at(s, an.links[(s, a.level)]) for s in seeds]
    cfg = an.cfg.train
    for level in [a.level] + [int(x) for x in a.deeper.split(",") if x]:
        masks = [deeper(final, level, a.level, an.cfg.prune.fraction) for _, _, _, final in reps]
        states = [final["model"] for _, _, _, final in reps]
        rep0 = reps[0][0]

        def single(mode: str) -> None:
            model = rep0.new_model(0)
            model.load_state_dict(states[0])
            train(model, rep0.train_data, cfg, masks[0], order_key=(0, "bench"), stop_iteration=a.steps,
                  sparse=SparsePolicy(mode))

        def stacked() -> None:
            train_batched([dict(s) for s in states], [r.train_data for r, *_ in reps], cfg, masks,
                          order_keys=[(k, "bench") for k in seeds], stop_iteration=a.steps)

        density = sum(float(m.sum()) for m in masks[0].values()) / sum(m.numel() for m in masks[0].values())
        device = torch.device(an.options.device)
        dense, compact = timed(lambda: single("off"), device), timed(lambda: single("on"), device)
        stack = timed(stacked, device) / len(seeds)
        print(f"level {level} (density {density:.4f}), s per {a.steps} steps per network: dense-masked {dense:.2f}, "
              f"compact {compact:.2f} ({compact / dense:.2f}x), {len(seeds)} stacked {stack:.2f} ({stack / dense:.2f}x)",
              flush=True)


if __name__ == "__main__":
    main()
