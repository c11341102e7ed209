"""GPU checks of the paths the CPU test suite runs on CPU: compact (sparse) execution and batched
training on CUDA equal dense-masked single-model training within tolerance.

    python benchmarks/gpu_check.py --data-dir DIR   # DIR/mnist/ holds MNIST
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from sparsedd.bench import suite as b
from sparsedd.config import TrainConfig
from sparsedd.pruning import full_mask
from sparsedd.training import train
from sparsedd.training.batched import train_batched
from sparsedd.training.sparse import CompactMLP, SparsePolicy


def max_diff(a: dict, c: dict) -> float:
    return max(float((a[k].float().cpu() - c[k].float().cpu()).abs().max()) for k in a)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    dev = torch.device(args.device)
    x, y, real = b._mnist_like(args.data_dir, 6000, dev)
    data = b._train_data(x, y)
    widths = (784, 300, 100, 10)
    base = b._model(widths, 0, dev)
    masks = b._magnitude_masks(base, data, [0.012, 0.2], warm_steps=40)
    cfg = TrainConfig(lr=0.05, momentum=0.5, weight_decay=5e-4, batch_size=128, epochs=2, eval_every=1)
    out = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "torch": torch.__version__, "mnist_real_data": real}
    for name, mask in (("density_0.012", masks[0]), ("density_0.2", masks[1])):
        runs = {}
        for kernel in (None, 0.0, 1.01):
            m = b._model(widths, 0, dev)
            pol = SparsePolicy("off") if kernel is None else SparsePolicy("on", kernel_below=kernel)
            res = train(m, data, cfg, mask, order_key=(0, "o"), sparse=pol)
            runs[kernel] = (m.state_dict(), res.final["test_acc"])
        c = CompactMLP(b._model(widths, 0, dev).state_dict(), mask, kernel_below=1.01)
        out[name] = {"live_units": c.live_units, "constant_units": c.const_units, "kernels_csr": c.kernels,
                     "max_weight_diff_compact_dense_blocks": max_diff(runs[None][0], runs[0.0][0]),
                     "max_weight_diff_compact_csr": max_diff(runs[None][0], runs[1.01][0]),
                     "test_acc": {str(k): v[1] for k, v in runs.items()}}
    # batched (K=4, different masks and seeds) against one by one
    full = full_mask(base, base.prunable_names())
    ms = [full, masks[1], masks[0], full]
    states = [b._model(widths, k, dev).state_dict() for k in range(4)]
    finals, _ = train_batched(states, [data] * 4, cfg, ms, order_keys=[(k, "o") for k in range(4)], device=dev)
    diffs = []
    for k in range(4):
        m = b._model(widths, 0, dev)
        m.load_state_dict(states[k])
        train(m, data, cfg, ms[k], order_key=(k, "o"), sparse=SparsePolicy("off"))
        diffs.append(max_diff(m.state_dict(), finals[k]))
    out["batched_vs_single_max_weight_diff"] = diffs
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    ok = all(v < 1e-3 for v in diffs) and all(
        out[n][k] < 1e-3 for n in ("density_0.012", "density_0.2")
        for k in ("max_weight_diff_compact_dense_blocks", "max_weight_diff_compact_csr"))
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
