"""A pruning round's selection at the paper's sizes, by the sort it used to take (``argsort(stable=True)``,
then the first k) and by :func:`sparsedd.pruning.select.lowest` (``kthvalue``, then a comparison), in one
process on one thread: seconds per call, the minimum over ``--repeats`` calls, and their ratio. The
scores are a freshly initialized model's weight magnitudes, the first round of global magnitude pruning
(20% of them go); the two selections are checked to be the same set.

    python benchmarks/prune_select.py
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from sparsedd.config import ModelConfig
from sparsedd.models import build_model
from sparsedd.pruning.select import lowest

MODELS = {"resnet18": ((3, 32, 32), 10), "vgg16": ((3, 32, 32), 10), "lenet-300-100": ((1, 28, 28), 10)}


def best_s(f, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fraction", type=float, default=0.2)
    args = ap.parse_args()
    if args.repeats < 1 or not 0 < args.fraction < 1:
        ap.error("--repeats must be at least 1 and --fraction in (0, 1)")  # one line, exit 2
    torch.set_num_threads(1)
    rows = []
    for name, (shape, classes) in MODELS.items():
        model = build_model(ModelConfig(name=name), shape, classes, seed=0)
        scores = torch.cat([p.detach().abs().flatten() for n, p in model.named_parameters() if n.endswith("weight")
                            and p.dim() > 1])
        k = round(args.fraction * scores.numel())
        by_sort = lambda: torch.argsort(scores, stable=True)[:k]  # noqa: E731
        by_selection = lambda: lowest(scores, k)  # noqa: E731
        assert set(by_sort().tolist()) == set(by_selection().tolist())
        sort_s, select_s = best_s(by_sort, args.repeats), best_s(by_selection, args.repeats)
        rows.append({"model": name, "weights": scores.numel(), "sort_s": round(sort_s, 4),
                     "selection_s": round(select_s, 4), "selection/sort": round(select_s / sort_s, 3)})
    print(json.dumps({"torch": torch.__version__, "threads": 1, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
