"""GPU checks of the paths the CPU test suite runs on CPU: compact (sparse) execution and batched
training on CUDA equal dense-masked single-model training within tolerance, and captured training
(CUDA graphs, sparsedd.training.captured) against eager training: the weights after two epochs and
the seconds per epoch, for LeNet-300-100 on MNIST and ResNet-18 on CIFAR-shaped images (fp32, and
bf16 with channels-last).

    python benchmarks/gpu_check.py --data-dir DIR   # DIR/mnist/ holds MNIST; about 2-4 minutes on one GPU
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from sparsedd.bench import suite as b
from sparsedd.config import TrainConfig
from sparsedd.pruning import full_mask
from sparsedd.config import ModelConfig
from sparsedd.models import build_model
from sparsedd.training import TrainData, train
from sparsedd.training.captured import CapturedExecution
from sparsedd.training.execution import Accel, prepare_single
from sparsedd.training.loop import run_epochs
from sparsedd.training.measured import sync
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
    out["captured"] = captured_checks(x, y, dev)
    out["side_by_side"] = side_by_side_times(dev)
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    ok = all(v < 1e-3 for v in diffs) and all(c["ok"] for c in out["captured"].values()) and all(
        out[n][k] < 1e-3 for n in ("density_0.012", "density_0.2")
        for k in ("max_weight_diff_compact_dense_blocks", "max_weight_diff_compact_csr"))
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


def timed_training(model, data: TrainData, cfg: TrainConfig, mask: dict, accel: Accel) -> dict:
    """Train, with the seconds of each epoch (the device synchronized at each epoch's end); whether the
    steps were captured."""
    ex = prepare_single(model, data, cfg, mask, order_key=(0, "o"), accel=accel)
    marks = [time.perf_counter()]

    def on_epoch(rows):
        sync(data.x.device)
        marks.append(time.perf_counter())

    sync(data.x.device)
    marks[0] = time.perf_counter()
    run_epochs(ex, cfg, [(0, "o")], on_epoch=on_epoch)
    ex.finish()
    epochs = [b - a for a, b in zip(marks, marks[1:])]
    return {"state": {k: v.detach().clone() for k, v in model.state_dict().items()}, "epoch_s": epochs,
            "captured": isinstance(ex, CapturedExecution) and ex.graph is not None}


def captured_checks(x: torch.Tensor, y: torch.Tensor, dev: torch.device, n_images: int = 10_000) -> dict:
    """Captured against eager training: weight differences after the same steps (a stated tolerance:
    1e-3 for LeNet, where only the kernels' summation order may differ; ResNet-18 with batch norm and
    cuDNN's own algorithm choices is compared at 5e-2) and the steady-state seconds per epoch."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n_images, 3, 32, 32, generator=g).to(dev)
    labels = torch.randint(0, 10, (n_images,), generator=g).to(dev)
    cases = {
        "lenet_mnist_fp32": ("mlp", x.flatten(1), y, "none", "fp32", False, 1e-3),
        "resnet18_cifar_fp32": ("resnet18", images, labels, "crop-flip", "fp32", False, 5e-2),
        "resnet18_cifar_bf16_channels_last": ("resnet18", images, labels, "crop-flip", "bf16", True, 5e-2),
    }
    out = {}
    for name, (model_name, xs, ys, augment, precision, channels_last, tol) in cases.items():
        data = TrainData(xs, ys, ys, xs[:n_images // 5], ys[:n_images // 5], torch.arange(0, device=dev), augment=augment)
        cfg = TrainConfig(lr=0.05, momentum=0.9, weight_decay=5e-4, batch_size=128, epochs=2, eval_every=2,
                          precision=precision)
        model_cfg = ModelConfig("mlp", (300, 100)) if model_name == "mlp" else ModelConfig(model_name)
        runs = {}
        for capture in ("off", "on", "again"):  # "again": the captured run repeated (same seed, same GPU)
            model = build_model(model_cfg, tuple(xs.shape[1:]), 10, seed=0).to(dev)
            mask = full_mask(model, model.prunable_names("all"))
            accel = Accel(channels_last=channels_last, capture="on" if capture == "again" else capture)
            runs[capture] = timed_training(model, data, cfg, mask, accel)
        diff = max_diff(runs["off"]["state"], runs["on"]["state"])
        repeat = max_diff(runs["on"]["state"], runs["again"]["state"])
        eager_s, captured_s = runs["off"]["epoch_s"][-1], runs["on"]["epoch_s"][-1]
        out[name] = {"max_weight_diff": diff, "tolerance": tol, "captured": runs["on"]["captured"],
                     "repeat_max_weight_diff": repeat,  # 0: the same seed on the same GPU gives the same run
                     "eager_epoch_s": eager_s, "captured_epoch_s": captured_s, "speedup": eager_s / captured_s,
                     "ok": runs["on"]["captured"] and diff < tol}
        print(name, json.dumps({k: v for k, v in out[name].items()}), file=sys.stderr, flush=True)
    return out


def side_by_side_times(dev: torch.device, n_images: int = 4096) -> dict:
    """Seconds per model-step of ResNet-18s (CIFAR-shaped, batch 128) trained one by one and side by
    side (sparsedd.training.together, each on its own CUDA stream), for K = 2, 3, 4, eager fp32 and
    captured bf16 with channels-last. Equality with one-by-one training is a CPU test."""
    from sparsedd.training.together import measure_together

    g = torch.Generator().manual_seed(0)
    xs = torch.randn(n_images, 3, 32, 32, generator=g).to(dev)
    ys = torch.randint(0, 10, (n_images,), generator=g).to(dev)
    data = TrainData(xs, ys, ys, xs[:512], ys[:512], torch.arange(0, device=dev), augment="crop-flip")
    out = {}
    for name, precision, accel in (("fp32_eager", "fp32", Accel()),
                                   ("bf16_channels_last_captured", "bf16", Accel(channels_last=True, capture="on"))):
        cfg = TrainConfig(lr=0.05, momentum=0.9, batch_size=128, epochs=1, eval_every=10 ** 6, precision=precision)
        make = lambda: build_model(ModelConfig("resnet18"), (3, 32, 32), 10, seed=0).to(dev)  # noqa: E731
        for k in (2, 3, 4):
            out[f"{name}_k{k}"] = measure_together(make, data, cfg, k, accel, steps=20)
            print(name, k, json.dumps(out[f"{name}_k{k}"]), file=sys.stderr, flush=True)
    return out


if __name__ == "__main__":
    sys.exit(main())
