"""K networks of any architecture (the conv nets with batch norm) trained at once, each as itself.

Stacking K networks into one (``batched.StackedExecution``, ``torch.func.vmap``) pays for the
fully connected models, not for conv nets: issue 12 measured ``vmap`` over K ResNet-18s no faster
than one eager model, and bf16 fails in its batch-norm backward. Here each network keeps its own
execution (its weights, batch-norm statistics, optimizer, data order and augmentation draws), and a
step runs each network's step in turn; on a GPU each on its own CUDA stream, so that the kernels
of small steps (captured as CUDA graphs: one launch each) overlap on a card one network leaves
mostly idle. On a CPU the steps simply run in turn: the result is each network's one-by-one
training, bit for bit (tests/test_together.py), and there is nothing to gain, so ``--batch auto``
never picks it there.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable

import torch
from torch import nn

from ..config import TrainConfig
from .execution import Accel, SingleExecution, prepare_single
from .loop import Checkpointer, TrainData, TrainResult, iters_per_epoch, run_epochs
from .measured import cached, machine_key, sync


class Optimizers:
    """The K optimizers as the epoch loop's checkpoints see one: a state dict holding each one's."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.parts = optimizers

    def state_dict(self) -> dict[str, Any]:
        return {"parts": [o.state_dict() for o in self.parts]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["parts"]) != len(self.parts):
            raise ValueError(f"a state of {len(state['parts'])} optimizers for {len(self.parts)} networks")
        for o, s in zip(self.parts, state["parts"]):
            o.load_state_dict(s)


class TogetherExecution:
    """The epoch loop's view of K one-network executions stepped together."""

    single = False
    name = "side-by-side"

    def __init__(self, parts: list[SingleExecution]):
        if len({p.n for p in parts}) != 1:
            raise ValueError("networks trained side by side need training sets of one size (one epoch's steps)")
        self.parts, self.k, self.n = parts, len(parts), parts[0].n
        self.device = parts[0].device
        self.module = nn.ModuleList([p.module for p in parts])
        self.opt = Optimizers([p.opt for p in parts])
        self.streams = [torch.cuda.Stream(self.device) for _ in parts] if self.device.type == "cuda" else None

    def apply_masks(self) -> None:
        for p in self.parts:
            p.apply_masks()

    def set_lr(self, value: float) -> None:
        for p in self.parts:
            p.set_lr(value)

    def step(self, idx: torch.Tensor, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each network's step on its own examples ``idx[k]``; the summed losses and hits [K]."""
        losses, hits = [], []
        for k, part in enumerate(self.parts):
            with self._stream(k):
                loss, hit = part.step(idx[k:k + 1], epoch, step)
            losses.append(loss)
            hits.append(hit)
        if self.streams is not None:  # the results are read on the main stream
            for s in self.streams:
                torch.cuda.current_stream(self.device).wait_stream(s)
        return torch.stack(losses), torch.stack(hits)

    def _stream(self, k: int):
        if self.streams is None:
            return contextlib.nullcontext()
        self.streams[k].wait_stream(torch.cuda.current_stream(self.device))  # the batch indices are ready
        return torch.cuda.stream(self.streams[k])

    def evaluate(self) -> list[dict[str, float | None]]:
        return [p.evaluate()[0] for p in self.parts]

    def optimizer_state(self, k: int) -> dict[str, Any]:
        return self.parts[k].optimizer_state(0)

    def extra_state(self) -> dict[str, Any]:
        return {}

    def finish(self) -> None:
        for p in self.parts:
            p.finish()


def train_together(models: list[nn.Module], datas: list[TrainData], cfg: TrainConfig,
                   masks: list[dict[str, torch.Tensor]], *, order_keys: list[tuple], accel: Accel = Accel(),
                   checkpoint: Checkpointer | None = None,
                   on_epoch: Callable[[list[dict[str, Any]]], None] | None = None,
                   stop_iteration: int | None = None) -> list[TrainResult]:
    """Train the K ``models`` in place, each under its mask on its data view with its data order; one
    result each, as K calls of :func:`~.loop.train` give them. Dense-masked, or captured where
    ``accel.capture`` and the device allow (no compact execution: K networks of one level share it)."""
    if not len(models) == len(datas) == len(masks) == len(order_keys):
        raise ValueError("one data view, mask and order key per network")
    parts = [prepare_single(m, d, cfg, mk, order_key=key, accel=accel)
             for m, d, mk, key in zip(models, datas, masks, order_keys)]
    execution = TogetherExecution(parts)
    results = run_epochs(execution, cfg, order_keys, checkpoint=checkpoint, stop_iteration=stop_iteration,
                         on_epoch=on_epoch)
    execution.finish()
    return results


def measure_together(make_model: Callable[[], nn.Module], data: TrainData, cfg: TrainConfig, k: int,
                     accel: Accel = Accel(), steps: int = 10, warmup: int = 4) -> dict[str, Any]:
    """Seconds per model-step of ``k`` networks trained one by one and together (on ``data``'s device):
    ``warmup`` steps (captures included), then ``warmup + steps`` steps timed from the start."""
    from ..pruning import full_mask

    models = [make_model() for _ in range(k)]
    masks = [full_mask(m, m.prunable_names("all")) for m in models]

    def timed(fn) -> float:
        fn(warmup)  # cuDNN's choices, the allocator's pools
        sync(data.x.device)
        t0 = time.perf_counter()
        fn(steps + warmup)
        sync(data.x.device)
        return (time.perf_counter() - t0) / (steps + warmup) / k

    def alone(s):
        for i, (m, mk) in enumerate(zip(models, masks)):
            train_together([m], [data], cfg, [mk], order_keys=[(i, "measure")], accel=accel, stop_iteration=s)

    def together(s):
        train_together(models, [data] * k, cfg, masks, order_keys=[(i, "measure") for i in range(k)], accel=accel,
                       stop_iteration=s)

    one, many = timed(alone), timed(together)
    return {"single_s": one, "together_s": many, "pays": many < 0.9 * one}


def together_pays(make_model: Callable[[], nn.Module], data: TrainData, cfg: TrainConfig, k: int,
                  accel: Accel = Accel(), cache_dir: str | None = None) -> bool:
    """Whether ``k`` such networks train faster per network side by side than one by one: never on a
    CPU (the same steps in turn), measured once per machine and setting on a GPU."""
    if not data.x.is_cuda:
        return False
    total = cfg.epochs * iters_per_epoch(data.n, cfg.batch_size)
    if total < 3:  # too short to measure, and too short to matter
        return False
    model = make_model()
    key = machine_key(data.x.device, "together-v1", type(model).__name__, sum(p.numel() for p in model.parameters()),
                      tuple(data.x.shape[1:]), f"b{cfg.batch_size}", f"k{k}", cfg.precision, accel.capture,
                      accel.channels_last)
    warmup = min(4, total // 3)
    steps = min(10, total - 2 * warmup)  # the timed run repeats the warm-up steps: warmup + steps <= total

    def measure() -> dict[str, Any]:
        try:
            return measure_together(make_model, data, cfg, k, accel, steps=steps, warmup=warmup)
        except torch.cuda.OutOfMemoryError:  # K of them do not fit: they train one by one
            torch.cuda.empty_cache()
            return {"pays": False, "out_of_memory": True}

    return bool(cached("together", key, measure, cache_dir)["pays"])
