"""How a group of trainings executes, decided in one place, and the trainers that ask it.

Runs and analyses train through these functions only: :func:`train` (one network), :func:`train_batched`
(K fully connected networks stacked into one), :func:`train_together` (K networks of any kind side by
side). Each builds its execution here and hands it to the one epoch loop (:func:`.loop.run_epochs`):

- one network: dense-masked or compact on its live units (:func:`prepare_single`: the sparse policy's
  measured crossover, a checkpoint's layout), or its step replayed as a CUDA graph (:mod:`.captured`);
- K stacked networks: eager or captured (:func:`stacked_execution`);
- K side by side: each network's own execution, in turn or on CUDA streams (:mod:`.together`).

Whether stacking or side by side pays on this machine is measured here too (:func:`batching_pays`,
:func:`together_pays`); which of them a level's jobs take is decided by
:mod:`sparsedd.experiments.batching`, from these answers. A new way of executing is one module with
its execution class plus one branch here.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from ..config import TrainConfig
from ..distributed import SINGLE, Dist
from ..errors import notice
from ..models.mlp import MLP
from ..rng import global_rng_kept
from .batched import StackedExecution
from .captured import CapturedExecution, CapturedStackedExecution, capture_choice
from .core import Accel, Checkpointer, Objective, TrainData, TrainResult, iters_per_epoch
from .execution import SingleExecution, stale_compact
from .loop import run_epochs
from .measured import cached, interleaved_medians, machine_key, sync, threads
from .together import TogetherExecution

if TYPE_CHECKING:
    from .sparse import SparsePolicy


# --- one network -----------------------------------------------------------------------------------

def train(model: nn.Module, data: TrainData, cfg: TrainConfig, mask: dict[str, torch.Tensor], *,
          order_key: tuple, checkpoint: Checkpointer | None = None, stop_iteration: int | None = None,
          on_epoch: Callable[[dict[str, Any]], None] | None = None,
          on_step: Callable[[int], None] | None = None,
          optimizer_state: dict[str, Any] | None = None, accel: Accel = Accel(), dist: Dist = SINGLE,
          sparse: "SparsePolicy | None" = None, objective: Objective = Objective()) -> TrainResult:
    """Train ``model`` in place under ``mask`` for ``cfg.epochs`` (or until ``stop_iteration``).

    ``order_key`` seeds the data order: the permutation of epoch e comes from generator(*order_key, e).
    ``on_epoch`` gets each epoch's metrics; ``on_step`` the number of steps just done (for progress).
    ``optimizer_state`` starts the optimizer from a saved state (a checkpoint, when there is one, wins).
    ``accel`` picks memory layout and compilation; ``cfg.precision`` the autocast precision.
    ``dist``: data-parallel over torchrun's processes (see :mod:`sparsedd.distributed`).
    ``sparse``: when to compute on the live units only (:mod:`sparsedd.training.sparse`).
    ``objective``: what the loss adds to the cross-entropy (distance penalty, distillation).
    """
    saved = checkpoint.load() if checkpoint is not None else None  # checkpointers keep what they load
    if stale_compact(saved):
        notice("this stage's checkpoint holds a compact network in an older sparsedd's layout; "
               "the stage starts again from its beginning")
        saved, checkpoint = None, _Fresh(checkpoint)
    execution = prepare_single(model, data, cfg, mask, order_key=order_key, accel=accel, dist=dist, sparse=sparse,
                               saved=saved, optimizer_state=optimizer_state, objective=objective)
    with threads(execution.threads):  # a compact network's steps may run on fewer threads
        [result] = run_epochs(execution, cfg, [order_key], checkpoint=checkpoint, stop_iteration=stop_iteration,
                              on_epoch=None if on_epoch is None else lambda rows: on_epoch(rows[0]), on_step=on_step)
    execution.finish()
    return result


class _Fresh:
    """A checkpointer whose saved state is not used: the stage starts over and saves as usual."""

    def __init__(self, inner: Checkpointer):
        self.inner = inner

    def load(self) -> dict[str, Any] | None:
        return None

    def save(self, state: dict[str, Any]) -> None:
        self.inner.save(state)

    def due(self, end_of_epoch: bool) -> bool:
        return self.inner.due(end_of_epoch)


def prepare_single(model: nn.Module, data: "TrainData", cfg: TrainConfig, mask: dict[str, torch.Tensor], *,
                   order_key: tuple, accel: Accel = Accel(), dist: Dist = SINGLE, sparse: "SparsePolicy | None" = None,
                   saved: dict[str, Any] | None = None, optimizer_state: dict[str, Any] | None = None,
                   objective: Objective = Objective()) -> SingleExecution:
    """The execution of one network's stage; a checkpoint's layout (``saved``) wins over the sparse policy.
    With a penalty or distillation the network computes dense-masked (the compact layout has no anchor or teacher)."""
    kernel = None if objective.active else _sparse_kernel(model, mask, cfg, sparse, accel, dist, saved)
    device = data.x.device
    captured, note = capture_choice(accel.capture, device, cfg, compact=kernel is not None, compile=accel.compile,
                                    distributed=dist.active)
    if note:
        notice(note)
    if captured:
        return CapturedExecution(model, data, cfg, mask, order_key=order_key, capture=True,
                                 optimizer_state=optimizer_state, objective=objective, accel=accel)
    return SingleExecution(model, data, cfg, mask, order_key=order_key, accel=accel, dist=dist, kernel=kernel,
                           optimizer_state=optimizer_state, objective=objective)


def _sparse_kernel(model: nn.Module, mask: dict[str, torch.Tensor], cfg: TrainConfig, sparse, accel: Accel,
                   dist: Dist, saved: dict[str, Any] | None) -> float | None:
    """The CSR threshold of compact execution for this stage, or None to compute dense-masked."""
    if saved is not None:
        return saved.get("compact_kernel")
    if sparse is None or accel.compile or accel.channels_last or dist.active:
        return None
    return sparse.decide(model, mask, cfg.batch_size, cfg.precision)


# --- K fully connected networks stacked into one ----------------------------------------------------

def train_batched(states: list[dict[str, torch.Tensor]], datas: list[TrainData], cfg: TrainConfig,
                  masks: list[dict[str, torch.Tensor]], *, order_keys: list[tuple], device: str | torch.device = "cpu",
                  checkpoint: Checkpointer | None = None,
                  on_epoch: Callable[[list[dict[str, Any]]], None] | None = None,
                  on_step: Callable[[int], None] | None = None, stop_iteration: int | None = None,
                  accel: Accel = Accel()) -> tuple[list[dict[str, torch.Tensor]], list[TrainResult]]:
    """Train K networks (start weights ``states``) under ``masks``; returns final states and results.

    ``stop_iteration`` ends training early (the results then have no final metrics); ``on_step``
    gets the number of steps just done.

    All networks share the inputs ``datas[k].x`` (the same data set) but have their own labels,
    order (permutation of epoch e from generator(*order_keys[k], e)) and masks. ``accel.capture``: the
    steps replayed as a CUDA graph where the device allows (:mod:`.captured`).
    """
    if len(order_keys) != len(states):
        raise ValueError("one data view, mask and order key per network")
    execution = stacked_execution(states, datas, cfg, masks, torch.device(device), accel)
    results = run_epochs(execution, cfg, order_keys, checkpoint=checkpoint, stop_iteration=stop_iteration,
                         on_epoch=on_epoch, on_step=on_step)
    return execution.states(), results


def stacked_execution(states, datas, cfg: TrainConfig, masks, device: torch.device, accel: Accel) -> StackedExecution:
    """The stacked execution, captured where ``--capture`` and the device allow (said where it was asked for)."""
    captured, note = capture_choice(accel.capture, device, cfg, compact=False, compile=False, distributed=False)
    if note:
        notice(note)
    if captured:
        return CapturedStackedExecution(states, datas, cfg, masks, device, capture=True)
    return StackedExecution(states, datas, cfg, masks, device)


# --- whether stacking pays (measured once per machine) -------------------------------------------

def measure_batching(widths: tuple[int, ...], batch_size: int, k: int, device: torch.device | str,
                     steps: int = 8, rounds: int = 3) -> dict[str, Any]:
    """Seconds per model-step of ``k`` networks trained one by one and batched (synthetic data), the
    two taking turns ``rounds`` times (medians: :func:`.measured.interleaved_medians`)."""
    from ..pruning import full_mask

    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    n = batch_size * (steps + 2)
    x = torch.randn(n, widths[0], generator=g).to(device)
    y = torch.randint(0, widths[-1], (n,), generator=g).to(device)
    data = TrainData.clean(x, y, batch_size)
    cfg = TrainConfig(lr=0.01, batch_size=batch_size, epochs=1, eval_every=10 ** 6)
    with global_rng_kept():
        models = [MLP(widths[0], widths[1:-1], widths[-1]).to(device) for _ in range(k)]
    masks = [full_mask(m, m.prunable_names("default")) for m in models]

    def timed(fn) -> float:
        fn(2)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        fn(steps + 2)
        sync(device)
        return (time.perf_counter() - t0) / (steps + 2) / k

    def single(s):
        for m, mk in zip(models, masks):
            train(m, data, cfg, mk, order_key=(0, "measure"), stop_iteration=s)

    def batched(s):
        train_batched([m.state_dict() for m in models], [data] * k, cfg, masks,
                      order_keys=[(i, "measure") for i in range(k)], device=device, stop_iteration=s)

    med = interleaved_medians({"single": lambda: timed(single), "batched": lambda: timed(batched)}, rounds)
    one, many = med["single"], med["batched"]
    return {"single_s": one, "batched_s": many, "pays": many < 0.9 * one}


def batching_pays(model: MLP, batch_size: int, k: int, cache_dir: str | None = None) -> bool:
    """Whether training ``k`` such networks batched is faster per network than one by one (measured once)."""
    device = next(model.parameters()).device
    widths = model.widths
    key = machine_key(device, "v2", "-".join(map(str, widths)), f"b{batch_size}", f"k{k}")  # v2: interleaved rounds
    return bool(cached("batching", key, lambda: measure_batching(widths, batch_size, k, device), cache_dir,
                       fields={"pays": bool})["pays"])


# --- K networks side by side ---------------------------------------------------------------------------

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

    return bool(cached("together", key, measure, cache_dir, fields={"pays": bool})["pays"])
