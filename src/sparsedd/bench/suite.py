"""`sparsedd bench` (without --preset): our trainers against the training loop common lottery-ticket code uses.

Measured in one process, as seconds per model-epoch (one pass over the training set), on MNIST-shaped
data with LeNet-300-100 and on MNIST-1D with the demo MLP (batch 128, SGD lr 0.1):

(a) ``reference``: a ``DataLoader`` over a ``TensorDataset`` (batch 128, shuffle), the mask multiplied
    into the weights before every forward pass (as OpenLTH's ``PrunedModel`` does), one model at a time;
(b) ``single``: :func:`sparsedd.training.train` at full density;
(c) ``batched``: :func:`sparsedd.training.planner.train_batched` with K = 8 and 32 (per model);
(d) ``sparse``: our trainer at 98.8% sparsity (the automatic policy picks compact execution);
(b') and (c') ``captured``: (b) and (c) with every full-batch step replayed as a CUDA graph
    (:mod:`sparsedd.training.captured`; on a GPU only, unless ``--capture on`` asks for them on a CPU,
    where the graph's static step runs eagerly);
(e) ``curve`` (LeNet): the 25 levels of the paper's MNIST curve, density 0.8^L, L = 0..24: the sum of
    our per-epoch time at each level's density against 25 times (a).

Each figure is the median of ``rounds`` measurements taken in turn, so drift of a shared machine
hits all of them alike; ratios are against (a) measured in the same run. Masks come from global
magnitude pruning of a network trained for a few steps (not random masks: those leave no dead units).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from ..config import DataConfig, TrainConfig
from ..data import load_dataset
from ..errors import SparseddError
from ..models.mlp import MLP
from ..rng import global_rng_kept
from ..pruning import density, full_mask, magnitude
from ..training import TrainData, train
from ..training.captured import WARMUP_STEPS
from ..training.core import Accel
from ..training.planner import train_batched
from ..training.measured import sync, threads as at_threads  # (`threads` is bench_model's argument)
from ..training.sparse import CompactMLP, SparsePolicy

BATCH = 128
LR = 0.1
SPARSITY = 0.988
LEVELS = 25
SEEDS = 5  # the paper's MNIST figure


class _Timer:
    """Seconds per step over the steps after ``warmup``, from stamps taken after each step."""

    def __init__(self, device: torch.device, warmup: int):
        self.device, self.warmup, self.stamps = device, warmup, []

    def start(self) -> None:
        sync(self.device)
        self.stamps = [time.perf_counter()]

    def __call__(self, _: int = 1) -> None:
        sync(self.device)
        self.stamps.append(time.perf_counter())

    def per_step(self) -> float:
        s = self.stamps[self.warmup:]
        return (s[-1] - s[0]) / (len(s) - 1)


def reference_steps(model: MLP, mask: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, steps: int,
                    timer: _Timer, seed: int = 0) -> None:
    """(a): the common loop. ``steps`` SGD steps through a shuffling DataLoader, the mask multiplied
    into the weights before every forward pass."""
    params = dict(model.named_parameters())
    masked = [(params[n], m.to(params[n].dtype)) for n, m in mask.items()]
    device = x.device  # on a GPU, such code keeps the data set on the CPU and moves each batch
    loader = DataLoader(TensorDataset(x.cpu(), y.cpu()), batch_size=BATCH, shuffle=True,
                        generator=torch.Generator().manual_seed(seed), pin_memory=device.type == "cuda")
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    model.train()
    done = 0
    timer.start()
    while done < steps:
        for xb, yb in loader:
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            with torch.no_grad():
                for p, m in masked:
                    p.mul_(m)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            timer()
            if done == steps:
                break


def gemm_floor_steps(widths: tuple[int, ...], x: torch.Tensor, steps: int, timer: _Timer) -> None:
    """Only the matrix products of a dense training step (forward, weight and input gradients): the
    arithmetic floor no dense one-model trainer goes below."""
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(o, i, generator=g).to(x.device) * 0.05 for i, o in zip(widths[:-1], widths[1:])]
    xb = x[:BATCH].flatten(1).contiguous()
    grad_out = torch.randn(xb.shape[0], widths[-1], generator=g).to(x.device)
    timer.start()
    for _ in range(steps):
        acts = [xb]
        for w in ws:
            acts.append(acts[-1] @ w.t())
        gz = grad_out
        for i in reversed(range(len(ws))):
            gz.t() @ acts[i]
            if i:
                gz = gz @ ws[i]
        timer()


def _cfg(n: int, steps: int) -> TrainConfig:
    """Plain SGD as in (a), with enough epochs for ``steps`` steps (no evaluation is reached)."""
    return TrainConfig(optimizer="sgd", lr=LR, batch_size=BATCH, epochs=steps // math.ceil(n / BATCH) + 1,
                       eval_every=10 ** 6)


def ours_steps(model: MLP, mask, data: TrainData, steps: int, timer: _Timer, sparse: SparsePolicy,
               accel: Accel = Accel(capture="off")) -> None:
    timer.start()
    train(model, data, _cfg(data.n, steps), mask, order_key=(0, "bench"), stop_iteration=steps, on_step=timer,
          sparse=sparse, accel=accel)


def batched_steps(states, masks, data: TrainData, steps: int, timer: _Timer,
                  accel: Accel = Accel(capture="off")) -> None:
    K = len(states)
    timer.start()
    train_batched(states, [data] * K, _cfg(data.n, steps), masks, order_keys=[(k, "bench") for k in range(K)],
                  device=data.x.device, stop_iteration=steps, on_step=timer, accel=accel)


def _magnitude_masks(model: MLP, data: TrainData, densities: list[float], warm_steps: int) -> list[dict]:
    """Global magnitude masks at each density, from the weights after ``warm_steps`` steps of training."""
    net = copy.deepcopy(model)
    names = net.prunable_names("default")
    full = full_mask(net, names)
    train(net, data, _cfg(data.n, warm_steps), full, order_key=(1, "warm"), stop_iteration=warm_steps)
    w = {n: p.detach().cpu() for n, p in net.named_parameters() if n in names}
    cpu_full = {n: m.cpu() for n, m in full.items()}
    return [{n: m.to(data.x.device) for n, m in
             (magnitude(w, cpu_full, fraction=1 - d, scope="global") if d < 1 else cpu_full).items()}
            for d in densities]


def _model(widths: tuple[int, ...], seed: int, device: torch.device) -> MLP:
    with global_rng_kept():  # (the common loop's init: PyTorch's default, seeded; the caller's RNG left alone)
        torch.manual_seed(seed)
        return MLP(widths[0], widths[1:-1], widths[-1]).to(device)


def bench_model(name: str, x: torch.Tensor, y: torch.Tensor, widths: tuple[int, ...], *, steps: int, warmup: int,
                rounds: int, ks: tuple[int, ...], curve: bool, device: torch.device,
                progress: Callable[[str], None], captured: bool = False,
                threads: tuple[int, int] | None = None, measured: bool = True) -> dict[str, Any]:
    """``threads``: (ours, reference) torch threads, each column run on its own (None: the process's).
    ``measured``: the automatic decisions measured on this machine (else fixed ones: a quick check of the code)."""
    ours_t, ref_t = threads or (torch.get_num_threads(), torch.get_num_threads())
    n = x.shape[0]
    ipe = math.ceil(n / BATCH)
    data = TrainData.clean(x, y, BATCH)
    base = _model(widths, 0, device)
    names = base.prunable_names("default")
    full = full_mask(base, names)
    levels = [0.8 ** L for L in range(LEVELS)] if curve else []
    masks = _magnitude_masks(base, data, [1 - SPARSITY, *levels], warm_steps=min(ipe, 4 * steps))
    sparse_mask, level_masks = masks[0], masks[1:]
    policy = SparsePolicy("auto") if measured else SparsePolicy("auto", crossover=0.1, kernel_below=0.1)
    with at_threads(ours_t):  # the crossover is measured (and cached) at the threads our trainer runs on
        kernel = policy.decide(base, sparse_mask, BATCH, "fp32")
    structure = CompactMLP(base.state_dict(), sparse_mask, kernel_below=kernel or 0.0)
    total = warmup + steps
    samples: dict[str, list[float]] = {}

    def measure(key: str, fn: Callable[[_Timer], None], per: int = 1, warm: int = warmup) -> None:
        timer = _Timer(device, warm)
        with at_threads(ref_t if key in ("reference", "gemm_floor") else ours_t):
            fn(timer)
        samples.setdefault(key, []).append(timer.per_step() / per * ipe)

    on = Accel(capture="on")
    cap_warm = max(warmup, WARMUP_STEPS + 1)  # the steps before and at the capture are not replays

    for r in range(rounds):
        progress(f"{name}: round {r + 1}/{rounds}")
        measure("reference", lambda t: reference_steps(_model(widths, 0, device), full, x, y, total, t))
        measure("gemm_floor", lambda t: gemm_floor_steps(widths, x, total, t))
        measure("single", lambda t: ours_steps(_model(widths, 0, device), full, data, total, t, SparsePolicy("off")))
        for k in (*ks, *([SEEDS] if curve else [])):
            states = [_model(widths, i, device).state_dict() for i in range(k)]
            measure(f"batched_{k}", lambda t: batched_steps(states, [full] * k, data, total, t), per=k)
        measure("sparse", lambda t: ours_steps(_model(widths, 0, device), sparse_mask, data, total, t, policy))
        if captured:
            off = SparsePolicy("off")
            measure("captured_single", lambda t: ours_steps(_model(widths, 0, device), full, data, cap_warm + steps, t,
                                                            off, on), warm=cap_warm)
            for k in ks:
                states = [_model(widths, i, device).state_dict() for i in range(k)]
                measure(f"captured_batched_{k}", lambda t: batched_steps(states, [full] * k, data, cap_warm + steps, t,
                                                                         on), per=k, warm=cap_warm)
        for L, m in enumerate(level_masks):
            measure(f"level_{L}", lambda t: ours_steps(_model(widths, 0, device), m, data, total, t, policy))

    med = {k: statistics.median(v) for k, v in samples.items()}
    out = _columns(med, ks, sparse_mask, kernel, structure, n, ipe, base, (ours_t, ref_t))
    if captured:
        _captured_columns(out, med, ks)
    if curve:
        with at_threads(ours_t):
            _curve_levels(out, med, base, policy, level_masks, measured)
    return out


def _columns(med: dict[str, float], ks: tuple[int, ...], sparse_mask: dict, kernel: float | None, structure: CompactMLP,
             n: int, ipe: int, base: MLP, threads: tuple[int, int]) -> dict[str, Any]:
    """(a) to (d) and their ratios, from the medians of the timed columns."""
    out: dict[str, Any] = {
        "reference_s": med["reference"], "single_s": med["single"],
        "batched_s": {str(k): med[f"batched_{k}"] for k in ks}, "sparse_s": med["sparse"],
        "ratios_to_reference": {
            "single": med["reference"] / med["single"],
            "batched": {str(k): med["reference"] / med[f"batched_{k}"] for k in ks},
            "sparse": med["reference"] / med["sparse"],
        },
        "batched_speedup_over_single": {str(k): med["single"] / med[f"batched_{k}"] for k in ks},
        "sparse_over_single": med["sparse"] / med["single"],
        "gemm_floor_s": med["gemm_floor"],  # matrix products only: (a) / this bounds any dense one-model speedup
        "sparse_density": density(sparse_mask),
        "sparse_execution": "dense-masked" if kernel is None else "compact",
        "sparse_structure": {"live_units": structure.live_units, "constant_units": structure.const_units,
                             "kernels": structure.kernels},
        "train_examples": n, "steps_per_epoch": ipe, "parameters": sum(p.numel() for p in base.parameters()),
        "threads": {"ours": threads[0], "reference": threads[1]},
    }
    return out


def _captured_columns(out: dict[str, Any], med: dict[str, float], ks: tuple[int, ...]) -> None:
    """(b') and (c'): ratios against (a) and against their eager counterparts (b) and (c)."""
    cap = {"single": med["captured_single"], "batched": {str(k): med[f"captured_batched_{k}"] for k in ks}}
    out["captured_s"] = cap
    out["ratios_to_reference"]["captured"] = {
        "single": med["reference"] / cap["single"],
        "batched": {str(k): med["reference"] / v for k, v in cap["batched"].items()}}
    out["captured_speedup_over_eager"] = {
        "single": med["single"] / cap["single"],
        "batched": {str(k): med[f"batched_{k}"] / v for k, v in cap["batched"].items()}}


def _curve_levels(out: dict[str, Any], med: dict[str, float], base: MLP, policy: SparsePolicy,
                  level_masks: list[dict], measured: bool) -> None:
    """(e): each level's time, how it executes, and its time per model with the paper's 5 seeds."""
    from ..training.planner import batching_pays

    pays = batching_pays(base, BATCH, SEEDS) if measured else False
    compacts = [policy.decide(base, m, BATCH, "fp32") is not None for m in level_masks]
    out["levels"] = []
    for L, (m, compact) in enumerate(zip(level_masks, compacts)):
        # what `sparsedd run` does with the paper's 5 seeds: compact levels one by one, the others
        # batched where batching pays on this machine (its time per model does not depend on the mask)
        five = med[f"level_{L}"] if compact or not pays else med[f"batched_{SEEDS}"]
        out["levels"].append({"level": L, "density": density(m), "s": med[f"level_{L}"],
                              "execution": "compact" if compact else "dense-masked", "s_per_model_5_seeds": five})
    out["batching_pays_5_seeds"] = pays


def _mnist_like(data_dir: str | None, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, bool]:
    try:
        d = load_dataset(DataConfig(name="mnist", num_train=n), data_dir=data_dir, device=device)
        return d.x_train, d.y_train, True
    except SparseddError:
        g = torch.Generator().manual_seed(0)
        return (torch.rand(n, 1, 28, 28, generator=g).to(device), torch.randint(0, 10, (n,), generator=g).to(device),
                False)


def run_suite(*, quick: bool = False, device: str = "cpu", data_dir: str | None = None, rounds: int | None = None,
              steps: int | None = None, progress: Callable[[str], None] = lambda _: None,
              capture: str = "auto", threads: int = 0, busy: int = 0) -> dict[str, Any]:
    """The whole benchmark; ``quick`` makes every size tiny and fixes the automatic decisions instead of
    measuring them (for the test suite: no meaning in the times).
    ``capture``: the captured columns (b') and (c') on a GPU (auto), never (off), or also on a CPU (on).
    ``threads``: torch threads of every column (0: ours as ``sparsedd run`` trains these models, the
    reference loop at torch's default). ``busy``: processes kept busy (one core each) while it runs."""
    with busy_cores(busy):
        return _suite(quick=quick, device=device, data_dir=data_dir, rounds=rounds, steps=steps, progress=progress,
                      capture=capture, threads=threads, busy=busy)


@contextlib.contextmanager
def busy_cores(count: int):
    """``count`` other processes, each spinning on a core, for the duration (a machine someone else uses)."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(count)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _threads(threads: int, device: torch.device) -> tuple[int, int]:
    """(ours, reference) thread counts for the fully connected models of this benchmark."""
    from ..options import ExecOptions

    if threads:
        return threads, threads
    ours = ExecOptions(device=device.type).threads_for("mlp") or torch.get_num_threads()
    return ours, torch.get_num_threads()


def _suite(*, quick: bool, device: str, data_dir: str | None, rounds: int | None, steps: int | None,
           progress: Callable[[str], None], capture: str, threads: int, busy: int) -> dict[str, Any]:
    dev = torch.device(device)
    thread_counts = _threads(threads, dev)
    captured = capture == "on" or (capture == "auto" and dev.type == "cuda")
    rounds = rounds or (1 if quick else 3)
    steps = steps or (2 if quick else 60)
    warmup = 1 if quick else 5
    ks = (8, 32)
    n_mnist, n_1d = (3 * BATCH, 2 * BATCH) if quick else (60000, None)
    x, y, real = _mnist_like(data_dir, n_mnist, dev)
    d1 = load_dataset(DataConfig(name="mnist1d", num_train=n_1d or 8000, num_test=BATCH if quick else 4000),
                      data_dir=data_dir, device=dev)
    lenet = bench_model("lenet", x, y, (784, 300, 100, 10), steps=steps, warmup=warmup, rounds=rounds, ks=ks,
                        curve=True, device=dev, progress=progress, captured=captured, threads=thread_counts,
                        measured=not quick)
    mlp = bench_model("mnist1d_mlp", d1.x_train, d1.y_train, (d1.x_train.shape[1], 256, 256, 10), steps=steps,
                      warmup=warmup, rounds=rounds, ks=ks, curve=False, device=dev, progress=progress,
                      captured=captured, threads=thread_counts, measured=not quick)
    ours = sum(level["s"] for level in lenet["levels"])
    ours_5 = sum(level["s_per_model_5_seeds"] for level in lenet["levels"])
    reference = LEVELS * lenet["reference_s"]
    return {
        "lenet": lenet, "mnist1d_mlp": mlp,
        "curve": {"reference_s": reference, "ours_s": ours, "speedup": reference / ours,
                  "ours_5_seeds_s_per_model": ours_5, "speedup_5_seeds": reference / ours_5},
        "meta": {"quick": quick, "device": str(dev), "threads": thread_counts[0], "reference_threads": thread_counts[1],
                 "busy_processes": busy, "cores": os.cpu_count(), "torch": torch.__version__,
                 "rounds": rounds, "steps_timed": steps, "warmup_steps": warmup, "mnist_real_data": real,
                 "batch_size": BATCH, "lr": LR, "captured": captured,
                 "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"},
    }


TARGETS = [  # (label, value from the result, at least)
    ("(b) LeNet single vs reference", lambda r: r["lenet"]["ratios_to_reference"]["single"], 1.3),
    ("(b) MNIST-1D MLP single vs reference", lambda r: r["mnist1d_mlp"]["ratios_to_reference"]["single"], 3.0),
    ("(c) MNIST-1D MLP K=32 vs single", lambda r: r["mnist1d_mlp"]["batched_speedup_over_single"]["32"], 2.0),
    ("(c) LeNet K=8 vs single", lambda r: r["lenet"]["batched_speedup_over_single"]["8"], 1.3),
    ("(d) LeNet single / sparse (98.8%)", lambda r: 1 / r["lenet"]["sparse_over_single"], 1 / 0.3),
    ("(d) MNIST-1D MLP single / sparse (98.8%)", lambda r: 1 / r["mnist1d_mlp"]["sparse_over_single"], 1 / 0.3),
    ("(e) LeNet curve vs reference", lambda r: r["curve"]["speedup"], 3.0),
]


def format_table(r: dict[str, Any]) -> str:
    meta = r["meta"]
    load = f", {meta['busy_processes']} other process(es) busy" if meta.get("busy_processes") else ", no other load"
    lines = [f"seconds per model-epoch ({meta['device']}, ours on {meta['threads']} thread(s), (a) on "
             f"{meta.get('reference_threads', meta['threads'])}{load}, "
             f"median of {meta['rounds']} rounds of {meta['steps_timed']} steps)", ""]
    lines.append(f"{'':>14} {'(a) reference':>14} {'(b) single':>12} {'(c) K=8':>10} {'(c) K=32':>10} {'(d) 98.8%':>10}")
    for key in ("lenet", "mnist1d_mlp"):
        m = r[key]
        vals = [m["reference_s"], m["single_s"], m["batched_s"]["8"], m["batched_s"]["32"], m["sparse_s"]]
        lines.append(f"{key:>14} " + " ".join(f"{v:>{w}.4g}" for v, w in zip(vals, (14, 12, 10, 10, 10))))
        ratios = [m["reference_s"] / v for v in vals]
        lines.append(f"{'x vs (a)':>14} " + " ".join(f"{v:>{w}.2f}" for v, w in zip(ratios, (14, 12, 10, 10, 10))))
    if r["meta"].get("captured"):
        lines += ["", f"captured as CUDA graphs{'' if r['meta']['device'].startswith('cuda') else ' (no GPU: eager)'}:",
                  f"{'':>14} {'(b) single':>12} {'(c) K=8':>10} {'(c) K=32':>10}   x vs eager (b), (c)"]
        for key in ("lenet", "mnist1d_mlp"):
            cap, fast = r[key]["captured_s"], r[key]["captured_speedup_over_eager"]
            vals = [cap["single"], cap["batched"]["8"], cap["batched"]["32"]]
            gains = [fast["single"], fast["batched"]["8"], fast["batched"]["32"]]
            lines.append(f"{key:>14} " + " ".join(f"{v:>{w}.4g}" for v, w in zip(vals, (12, 10, 10)))
                         + "   " + " ".join(f"{g:.2f}" for g in gains))
    c = r["curve"]
    lines += ["", f"(e) LeNet curve, 25 levels: reference {c['reference_s']:.4g} s, ours {c['ours_s']:.4g} s, "
                  f"{c['speedup']:.2f}x; with the paper's 5 seeds (batched where that pays) "
                  f"{c['ours_5_seeds_s_per_model']:.4g} s per model, {c['speedup_5_seeds']:.2f}x", "", "targets:"]
    for label, get, want in TARGETS:
        got = get(r)
        lines.append(f"  {label:<42} {got:6.2f}x  (target >= {want:.2f}x)  {'met' if got >= want else 'NOT met'}")
    return "\n".join(lines)
