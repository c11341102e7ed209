"""GPU checks of the paths the CPU test suite runs on CPU: compact (sparse) execution and batched
training on CUDA equal dense-masked single-model training within tolerance; captured training (CUDA
graphs, sparsedd.training.captured) against eager training: the weights after two epochs and the
seconds per epoch, for LeNet-300-100 on MNIST (one network, and K = 8 stacked) and ResNet-18 on
CIFAR-shaped images (fp32, and bf16 with channels-last); ResNet-18s side by side against one by one
(weights after the same steps, seconds per model-step for K = 2..4).

    python benchmarks/gpu_check.py --data-dir DIR   # DIR/mnist/ holds MNIST; sized for minutes on a GPU (never run on one yet)
    python benchmarks/gpu_check.py --device cpu --quick   # tiny sizes: the script's own smoke test (CI)

Exit 0 and "OK" when every comparison is within its tolerance (and, on a GPU, every captured run was
captured); 1 and "MISMATCH" otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from sparsedd.bench import suite as b
from sparsedd.config import ModelConfig, TrainConfig
from sparsedd.models import build_model
from sparsedd.pruning import full_mask
from sparsedd.training import TrainData, train
from sparsedd.training.captured import CapturedExecution, CapturedStackedExecution
from sparsedd.training.core import Accel
from sparsedd.training.loop import run_epochs
from sparsedd.training.planner import prepare_single, stacked_execution, train_batched
from sparsedd.training.measured import sync
from sparsedd.training.sparse import CompactMLP, SparsePolicy
from sparsedd.training.planner import train_together

# sizes: (MNIST examples, CIFAR-shaped images for the captured checks, images for side by side, timed
# steps, the conv nets' width: 0 is the paper's)
FULL, QUICK = (6000, 10_000, 4096, 20, 0), (300, 160, 64, 1, 4)


def max_diff(a: dict, c: dict) -> float:
    return max(float((a[k].float().cpu() - c[k].float().cpu()).abs().max()) for k in a)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test of this script; no meaning in the figures)")
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    n_mnist, n_images, n_side, steps, width = QUICK if args.quick else FULL
    x, y, real = b._mnist_like(args.data_dir, n_mnist, dev)
    data = TrainData.clean(x, y, n_mnist // 5)
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
    out["captured"] = captured_checks(x, y, dev, n_images, width)
    out["captured_stacked"] = captured_stacked_check(data, widths, cfg, dev)
    out["side_by_side"] = side_by_side_times(dev, n_side, steps, width)
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    checks = [*out["captured"].values(), out["captured_stacked"], out["side_by_side"]["equality"]]
    ok = all(v < 1e-3 for v in diffs) and all(c["ok"] for c in checks) and all(
        out[n][k] < 1e-3 for n in ("density_0.012", "density_0.2")
        for k in ("max_weight_diff_compact_dense_blocks", "max_weight_diff_compact_csr"))
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


def epoch_seconds(ex, cfg: TrainConfig, keys: list[tuple]) -> list[float]:
    """Run the execution's epochs; the seconds of each (the device synchronized at each epoch's end)."""
    dev = ex.device
    marks = []

    def on_epoch(rows):
        sync(dev)
        marks.append(time.perf_counter())

    sync(dev)
    marks.append(time.perf_counter())
    run_epochs(ex, cfg, keys, on_epoch=on_epoch)
    return [b - a for a, b in zip(marks, marks[1:])]


def timed_training(model, data: TrainData, cfg: TrainConfig, mask: dict, accel: Accel) -> dict:
    """Train, with the seconds of each epoch; whether the steps were captured."""
    ex = prepare_single(model, data, cfg, mask, order_key=(0, "o"), accel=accel)
    epochs = epoch_seconds(ex, cfg, [(0, "o")])
    ex.finish()
    return {"state": {k: v.detach().clone() for k, v in model.state_dict().items()}, "epoch_s": epochs,
            "captured": isinstance(ex, CapturedExecution) and ex.graph.graph is not None}


def captured_checks(x: torch.Tensor, y: torch.Tensor, dev: torch.device, n_images: int, width: int) -> dict:
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
        model_cfg = ModelConfig("mlp", (300, 100)) if model_name == "mlp" else ModelConfig(model_name, width=width)
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
                     "ok": (runs["on"]["captured"] or dev.type != "cuda") and diff < tol}
        print(name, json.dumps({k: v for k, v in out[name].items()}), file=sys.stderr, flush=True)
    return out


def captured_stacked_check(data: TrainData, widths: tuple[int, ...], cfg: TrainConfig, dev: torch.device,
                           k: int = 8) -> dict:
    """K = 8 stacked LeNets (sparsedd.training.batched), captured against eager: weights after two
    epochs (tolerance 1e-3) and the seconds of the last epoch per model."""
    states = [b._model(widths, i, dev).state_dict() for i in range(k)]
    net = b._model(widths, 0, dev)
    masks = [full_mask(net, net.prunable_names())] * k
    runs = {}
    for capture in ("off", "on"):
        ex = stacked_execution(states, [data] * k, cfg, masks, dev, Accel(capture=capture))
        last_epoch_s = epoch_seconds(ex, cfg, [(i, "o") for i in range(k)])[-1]
        captured = isinstance(ex, CapturedStackedExecution) and ex.graph.graph is not None
        runs[capture] = (ex.states(), last_epoch_s / k, captured)
    diff = max(max_diff(a, c) for a, c in zip(runs["off"][0], runs["on"][0]))
    out = {"k": k, "max_weight_diff": diff, "tolerance": 1e-3, "captured": runs["on"][2],
           "eager_epoch_s_per_model": runs["off"][1], "captured_epoch_s_per_model": runs["on"][1],
           "speedup": runs["off"][1] / runs["on"][1], "ok": (runs["on"][2] or dev.type != "cuda") and diff < 1e-3}
    print("lenet_stacked_k8", json.dumps(out), file=sys.stderr, flush=True)
    return out


def side_by_side_times(dev: torch.device, n_images: int, steps: int, width: int) -> dict:
    """ResNet-18s (CIFAR-shaped, batch 128) side by side (sparsedd.training.together, each on its own
    CUDA stream): the weights of K = 3 after ``steps`` steps against the same networks trained one by one
    (tolerance 5e-2, as for the captured ResNet-18), and the seconds per model-step one by one and side
    by side for K = 2, 3, 4, eager fp32 and captured bf16 with channels-last."""
    from sparsedd.training.planner import measure_together

    g = torch.Generator().manual_seed(0)
    xs = torch.randn(n_images, 3, 32, 32, generator=g).to(dev)
    ys = torch.randint(0, 10, (n_images,), generator=g).to(dev)
    data = TrainData(xs, ys, ys, xs[:512], ys[:512], torch.arange(0, device=dev), augment="crop-flip")
    out = {"equality": side_by_side_equality(data, steps, dev, width)}
    for name, precision, accel in (("fp32_eager", "fp32", Accel()),
                                   ("bf16_channels_last_captured", "bf16", Accel(channels_last=True, capture="on"))):
        cfg = TrainConfig(lr=0.05, momentum=0.9, batch_size=128, epochs=100, eval_every=10 ** 6,  # stopped early
                          precision=precision)
        make = lambda: build_model(ModelConfig("resnet18", width=width), (3, 32, 32), 10, seed=0).to(dev)  # noqa: E731
        for k in (2, 3, 4) if steps > 1 else (2,):  # --quick: K = 2 only
            out[f"{name}_k{k}"] = measure_together(make, data, cfg, k, accel, steps=steps,
                                                   warmup=4 if steps > 1 else 1)
            print(name, k, json.dumps(out[f"{name}_k{k}"]), file=sys.stderr, flush=True)
    return out


def side_by_side_equality(data: TrainData, steps: int, dev: torch.device, width: int, k: int = 3) -> dict:
    cfg = TrainConfig(lr=0.05, momentum=0.9, batch_size=min(128, data.n), epochs=steps, eval_every=10 ** 6)

    def models():
        return [build_model(ModelConfig("resnet18", width=width), (3, 32, 32), 10, seed=i).to(dev) for i in range(k)]

    keys = [(i, "o") for i in range(k)]
    alone, together = models(), models()
    for i, m in enumerate(alone):
        train_together([m], [data], cfg, [full_mask(m, m.prunable_names("all"))], order_keys=[keys[i]],
                       stop_iteration=steps)
    train_together(together, [data] * k, cfg, [full_mask(m, m.prunable_names("all")) for m in together],
                   order_keys=keys, stop_iteration=steps)
    diff = max(max_diff(a.state_dict(), c.state_dict()) for a, c in zip(alone, together))
    out = {"k": k, "steps": steps, "max_weight_diff": diff, "tolerance": 5e-2, "ok": diff < 5e-2}
    print("side_by_side_equality", json.dumps(out), file=sys.stderr, flush=True)
    return out


if __name__ == "__main__":
    sys.exit(main())
