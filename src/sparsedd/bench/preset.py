"""`sparsedd bench --preset NAME`: seconds per training epoch and per evaluation for a preset's model
and data shape, measured on a few batches (synthetic data of the right shape when the data set is absent),
beside a ceiling: the same model's bare step on one fixed batch (no data handling, masks or metrics),
captured as a CUDA graph on a GPU."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch
import torch.nn.functional as F

from .. import config_load
from ..data import Dataset, load_dataset, spec_of
from ..errors import SparseddError
from ..models import build_model
from ..pruning import full_mask, prunable_names
from ..training import TrainData, train
from ..training.captured import WARMUP_STEPS, StepGraph
from ..training.core import Accel, autocast, iters_per_epoch, predict
from ..training.measured import sync
from ..training.optim import build_optimizer
from ..training.planner import measure_together

EVAL_BATCH = 4096  # as in sparsedd.training.core.predict


def _data(cfg, data_dir, device, n: int) -> tuple[Dataset | None, tuple, int, int, int]:
    spec = spec_of(cfg.data.name)
    try:
        d = load_dataset(cfg.data, data_dir=data_dir, device=device)
        return d, tuple(d.x_train.shape[1:]), d.num_classes, d.x_train.shape[0], d.x_test.shape[0]
    except SparseddError:  # absent: a synthetic stand-in of the registered shape
        return (None, spec.input_shape(cfg.data.image_size), spec.classes, cfg.data.num_train or spec.num_train,
                cfg.data.num_test or spec.num_test)


def ceiling_step_s(model: torch.nn.Module, xb: torch.Tensor, yb: torch.Tensor, cfg, accel: Accel, *, steps: int,
                   warmup: int) -> tuple[float | None, str]:
    """Seconds per step of ``model``'s bare training step on the one batch ``xb``, ``yb`` (forward, loss,
    backward, the optimizer's step; no gather, augmentation, masks or metrics), and how it ran: captured
    as a CUDA graph on a GPU (SGD, whose fused step can be captured), eager elsewhere; None where it did
    not fit in memory. What the project's own step could approach. Timed as the project's step is, with
    the device synchronized after each step, so that the two compare."""
    dev = xb.device
    if accel.channels_last and xb.dim() == 4:
        model.to(memory_format=torch.channels_last)
        xb = xb.contiguous(memory_format=torch.channels_last)
    opt = build_optimizer(model.parameters(), cfg)
    model.train()

    def bare_step() -> None:
        with autocast(cfg.precision, dev):
            loss = F.cross_entropy(model(xb).float(), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    graph = StepGraph(bare_step, dev.type == "cuda" and cfg.optimizer == "sgd",
                      lambda: opt.zero_grad(set_to_none=True), otherwise="the ceiling is timed eagerly")
    try:
        for _ in range(max(warmup, WARMUP_STEPS + 1 if graph.capture else 1)):
            graph()
        sync(dev)
        t0 = time.perf_counter()
        for _ in range(steps):
            graph()
            sync(dev)
    except torch.cuda.OutOfMemoryError:
        return None, "out of memory"
    return (time.perf_counter() - t0) / steps, "captured" if graph.graph is not None else "eager"


def _check_args(batches: int, warmup: int, accel: Accel, ks: list[int] | None) -> None:
    if batches < 1 or warmup < 0:
        raise SparseddError("--batches must be >= 1 and --warmup >= 0")
    if accel.capture == "on" and warmup < WARMUP_STEPS + 1:  # time the replays, not the capture
        raise SparseddError(f"--capture on needs --warmup {WARMUP_STEPS + 1} or more (the steps before and at the "
                            "capture are not replays)")
    if any(not 1 <= k <= 64 for k in ks or []):
        raise SparseddError(f"--ks takes network counts in [1, 64], got {','.join(map(str, ks))}")


def _bench_data(cfg, data_dir, dev: torch.device, steps: int, g: torch.Generator) -> tuple[TrainData, dict[str, Any]]:
    """The batches the steps train on: the data set's first examples where it can be loaded, random ones
    of its shape otherwise; and what the result reports of them."""
    bs = cfg.train.batch_size
    real, shape, classes, n_train, n_test = _data(cfg, data_dir, dev, steps * bs)
    if real is not None and real.x_train.shape[0] >= steps * bs:
        x, y = real.x_train[:steps * bs], real.y_train[:steps * bs]
        augment = real.augment
    else:
        x = torch.randn((steps * bs, *shape), generator=g).to(dev)
        y = torch.randint(0, classes, (steps * bs,), generator=g).to(dev)
        augment = "none" if spec_of(cfg.data.name).augment == "none" or cfg.data.augment == "none" else "crop-flip"
    facts = {"shape": shape, "classes": classes, "n_train": n_train, "n_test": n_test, "synthetic": real is None}
    return TrainData.clean(x, y, bs, augment=augment), facts


def _train_step_s(model: torch.nn.Module, data: TrainData, train_cfg, mask, *, steps: int, warmup: int,
                  accel: Accel, dev: torch.device) -> float:
    """Seconds per training step, each step timed to its end (after ``warmup`` steps)."""
    stamps: list[float] = []

    def on_step(_: int) -> None:
        sync(dev)
        stamps.append(time.perf_counter())

    sync(dev)
    start = time.perf_counter()
    train(model, data, train_cfg, mask, order_key=(0, "bench"), stop_iteration=steps, on_step=on_step, accel=accel)
    times = [b - a for a, b in zip([start, *stamps[:-1]], stamps)][warmup:]
    return sum(times) / len(times)


def _eval_batch_s(model: torch.nn.Module, shape: tuple, n_test: int, bs: int, precision: str, *, batches: int,
                  warmup: int, accel: Accel, dev: torch.device, g: torch.Generator) -> float:
    """Seconds per evaluation batch of EVAL_BATCH examples (timed on a smaller one where the test set is)."""
    xe = torch.randn((min(EVAL_BATCH, n_test, 4 * bs), *shape), generator=g).to(dev)  # scaled to EVAL_BATCH below
    if accel.channels_last and xe.dim() == 4:
        xe = xe.contiguous(memory_format=torch.channels_last)
    for _ in range(max(warmup, 1)):
        predict(model, xe, precision=precision)
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(batches):
        predict(model, xe, precision=precision)
    sync(dev)
    return (time.perf_counter() - t0) / batches * (EVAL_BATCH / xe.shape[0])


def _side_by_side(make, data: TrainData, train_cfg, ks: list[int] | None, ipe: int, accel: Accel, *, steps: int
                  ) -> dict[str, float]:
    """Seconds per model-epoch of K networks trained side by side, for each K of ``ks`` (and K = 1)."""
    out: dict[str, float] = {}
    cfg_k = dataclasses.replace(train_cfg, eval_every=10 ** 6)
    warm = min(2, steps - 1)  # what the data's steps allow: warm + timed <= warmup + batches
    for k in ks or []:
        measured = measure_together(make, data, cfg_k, k, accel, steps=steps - warm, warmup=warm)
        out[f"k{k}_s_per_model_epoch"] = measured["together_s"] * ipe
        out.setdefault("k1_s_per_model_epoch", measured["single_s"] * ipe)
    return out


def bench_preset(preset: str | None, *, sets: list[str] | None = None, device: str = "cpu", batches: int = 10,
                 warmup: int = 2, data_dir: str | None = None, accel: Accel = Accel(),
                 ks: list[int] | None = None) -> dict[str, Any]:
    """Time ``batches`` training steps (after ``warmup``) and as many evaluation batches; with ``ks``,
    also the seconds per model-epoch of K networks trained side by side (:mod:`sparsedd.training.together`)."""
    _check_args(batches, warmup, accel, ks)
    cfg = config_load.load(preset, sets=sets)
    dev = torch.device(device)
    bs, steps = cfg.train.batch_size, warmup + batches
    g = torch.Generator().manual_seed(0)
    data, facts = _bench_data(cfg, data_dir, dev, steps, g)
    shape, n_train, n_test = facts["shape"], facts["n_train"], facts["n_test"]

    def make():
        return build_model(cfg.model, shape, facts["classes"], seed=0).to(dev)

    model = make()
    mask = {n: m.to(dev) for n, m in full_mask(model, prunable_names(model, cfg.prune.method, cfg.prune.layers)).items()}
    one_epoch = dataclasses.replace(cfg.train, epochs=1, milestones=(), warmup_epochs=0, eval_every=1)
    step_s = _train_step_s(model, data, one_epoch, mask, steps=steps, warmup=warmup, accel=accel, dev=dev)
    eval_batch_s = _eval_batch_s(model, shape, n_test, bs, cfg.train.precision, batches=batches, warmup=warmup,
                                 accel=accel, dev=dev, g=g)
    ipe = iters_per_epoch(n_train, bs)
    side_by_side = _side_by_side(make, data, one_epoch, ks, ipe, accel, steps=steps)
    parameters = sum(p.numel() for p in model.parameters())
    del model  # the ceiling's own network, optimizer and graph in its place
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    ceiling_s, ceiling_how = ceiling_step_s(make(), data.x[:bs], data.y[:bs], cfg.train, accel, steps=batches,
                                            warmup=warmup)
    evals_per_epoch = (n_train + n_test) / EVAL_BATCH  # the evaluation reads the training and the test set
    return {
        "preset": preset, "model": cfg.model.name, "data": cfg.data.name, "synthetic_data": facts["synthetic"],
        "device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "precision": cfg.train.precision,
        "channels_last": accel.channels_last, "compile": accel.compile, "capture": accel.capture,
        "parameters": parameters, "batch_size": bs, "batches_timed": batches,
        "train_s_per_step": step_s, "steps_per_epoch": ipe, "train_s_per_epoch": step_s * ipe,
        "eval_s_per_epoch": eval_batch_s * evals_per_epoch, "train_examples": n_train, "test_examples": n_test,
        "ceiling_s_per_step": ceiling_s, "ceiling_s_per_epoch": ceiling_s and ceiling_s * ipe, "ceiling": ceiling_how,
        "train_over_ceiling": ceiling_s and step_s / ceiling_s,
        **side_by_side,
    }
