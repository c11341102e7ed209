"""One stage of a stored run, evaluated three ways: as `sparsedd` evaluates (batch norm on its running
statistics), with the statistics recomputed over the training set, and in training mode (each batch of
128 normalized by its own statistics, as during training). Where only the last works, the network
depends on per-batch normalization, and its final metrics are not what the mask learns (the
"evaluation" kind of `sparsedd.training.loop.unstable_end`). Also prints each batch norm's smallest
running variance.

    python benchmarks/bn_statistics.py RUN --root ROOT --seed 3 --level 9 [--data-dir ../shared/data]
"""

from __future__ import annotations

import argparse
import copy
import json

import torch
import torch.nn.functional as F

from sparsedd.analysis.runner import Analyzer
from sparsedd.errors import SparseddError
from sparsedd.experiments import ExecOptions
from sparsedd.results import resolve_run, run_curve
from sparsedd.store import Store
from sparsedd.training.core import evaluate

BATCH = 128


def recalibrated(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """A copy whose batch norms hold the training set's statistics (cumulative over batches), weights unchanged."""
    out = copy.deepcopy(model)
    for m in out.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    out.train()
    with torch.no_grad():
        for i in range(0, x.shape[0], BATCH):
            out(x[i:i + BATCH])
    return out.eval()


@torch.no_grad()
def batch_mode(model: torch.nn.Module, data) -> dict[str, float]:
    """Loss and accuracies with each batch normalized by its own statistics (training mode, nothing updated)."""
    net = copy.deepcopy(model).train()
    order = torch.randperm(data.x.shape[0], generator=torch.Generator().manual_seed(0))
    loss = hits = 0.0
    for i in range(0, data.x.shape[0], BATCH):
        idx = order[i:i + BATCH]
        out = net(data.x[idx])
        loss += float(F.cross_entropy(out, data.y[idx], reduction="sum"))
        hits += float((out.argmax(1) == data.y[idx]).sum())
    test = sum(float((net(data.x_test[i:i + BATCH]).argmax(1) == data.y_test[i:i + BATCH]).sum())
               for i in range(0, data.x_test.shape[0], BATCH))
    n = data.x.shape[0]
    return {"train_loss": loss / n, "train_acc_noisy": hits / n, "test_acc": test / data.x_test.shape[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--root", required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--level", type=int, required=True)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    store = Store(args.root, readonly=True)
    try:
        run_id = resolve_run(store, args.run)
    except SparseddError as e:
        ap.error(str(e))
    curve = run_curve(store, run_id)
    rows = curve[(curve.seed == args.seed) & (curve.level == args.level)]
    if not len(rows):
        ap.error(f"run {run_id} has no finished level {args.level} of seed {args.seed}; see `sparsedd show {run_id}`")
    sid = rows.iloc[0].stage_id
    analyzer = Analyzer(store, run_id, ExecOptions(progress=False, data_dir=args.data_dir))
    rep, model, _, final = analyzer.model_at(args.seed, sid)
    data = rep.train_data
    keep = ("test_acc", "train_loss", "train_acc_noisy")
    running = evaluate(model.eval(), data)
    again = evaluate(recalibrated(model, data.x), data)
    smallest = {k: float(v.min()) for k, v in final["model"].items() if k.endswith("running_var")}
    print(json.dumps({"stage": sid, "running_statistics": {k: running[k] for k in keep},
                      "recalibrated_statistics": {k: again[k] for k in keep}, "batch_statistics": batch_mode(model, data),
                      "smallest_running_var": smallest}, indent=1))


if __name__ == "__main__":
    main()
