"""The parts of a compact training step at 98.8% sparsity (LeNet-300-100 on MNIST, batch 128, one thread)
that issue 23's changes made faster, each timed against what it replaced, in one process: the output
layer's product batch-major and feature-major; the backward pass reading the output's gradient as a
contiguous feature-major tensor and as the transposed view of a batch-major one; torch's ``opt.step``
and :func:`sparsedd.training.optim.direct_step`; ``loss_and_grad`` under ``no_grad`` and under inference
mode. Microseconds per call, the minimum over ``--repeats`` runs of ``--calls`` calls.

    python benchmarks/compact_step_parts.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from sparsedd.bench.suite import BATCH, _magnitude_masks, _mnist_like, _model
from sparsedd.training import TrainData
from sparsedd.training.optim import direct_step
from sparsedd.training.sparse import CompactMLP, _backward, _forward

WIDTHS = (784, 300, 100, 10)


def best_us(f, calls: int, repeats: int) -> float:
    f()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            f()
        times.append((time.perf_counter() - t) / calls * 1e6)
    return round(min(times), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--calls", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(1)
    x, y, real = _mnist_like(args.data_dir, 60000, torch.device("cpu"))
    data = TrainData.clean(x, y, BATCH)
    (mask,) = _magnitude_masks(_model(WIDTHS, 0, torch.device("cpu")), data, [0.012], warm_steps=200)
    net = CompactMLP(_model(WIDTHS, 0, torch.device("cpu")).state_dict(), mask)
    idx = torch.randperm(60000, generator=torch.Generator().manual_seed(0))[:BATCH]
    xb, yb = net.live_inputs(data.x).index_select(0, idx), data.y.index_select(0, idx)
    h = xb.t()
    out, saved = _forward(net, h, net.flat)
    g = torch.softmax(out, 1)
    g_fm = g.t().contiguous().t()  # the same values, its transpose contiguous: the layout the change moved away from
    last = net.views_of(net.flat).layers[-1]
    w2, b2, h2 = last["main"], last["bias_live_col"], saved[0][-1]
    t = lambda f: best_us(f, args.calls, args.repeats)  # noqa: E731
    opt = torch.optim.SGD(net.parameters(), lr=0.1, fused=True)
    net.loss_and_grad(xb, yb, True)
    step = direct_step(opt)
    loss_and_grad = CompactMLP.loss_and_grad.__wrapped__  # the method without its inference-mode decorator
    with torch.no_grad():
        no_grad = t(lambda: loss_and_grad(net, xb, yb, True))
    result = {
        "live_blocks": [ix["main"].shape for ix in net.index], "live_weights": [ix["main"].nnz for ix in net.index],
        "real_mnist": real,
        "output_product_batch_major": t(lambda: torch.addmm(b2.t(), h2.t(), w2.t())),
        "output_product_feature_major": t(lambda: torch.addmm(b2, w2, h2)),
        "backward_gradient_feature_major_contiguous": t(lambda: _backward(net, net.flat, saved, g_fm)),
        "backward_gradient_transposed_view": t(lambda: _backward(net, net.flat, saved, g)),
        "opt_step": t(opt.step), "direct_step": t(step),
        "loss_and_grad_no_grad": no_grad, "loss_and_grad_inference_mode": t(lambda: net.loss_and_grad(xb, yb, True)),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
