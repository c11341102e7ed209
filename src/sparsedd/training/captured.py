"""Captured training steps: a stage's training step recorded once as a CUDA graph and replayed.

On a GPU the small models' steps are bound by kernel launches and Python, not by arithmetic
(issue 12: LeNet-300-100 at 1.05 ms per eager step against 0.125 ms captured). A CUDA graph replays
the whole step (gather the batch, augment it, forward, loss, backward, mask the gradients,
optimizer step, mask the weights, keep the loss and hits) as one launch.

A graph replays the same kernels on the same memory, so everything that changes from step to step
is a *static* device tensor that the host refills before each replay, without waiting for the
device: the batch's example indices, the augmentation's random draws (drawn on the CPU from the
same keyed generators as the eager step, so both see the same crops) and the learning rate (a
tensor the optimizer reads, so a schedule never forces a new capture). The step reads nothing back
to the host.

Where capture is not possible (a CPU, a failed capture) the same static step runs eagerly: the
tests check on the CPU that it equals :class:`~.execution.SingleExecution`'s step bit for bit,
which is what the GPU replays. ``benchmarks/gpu_check.py`` checks the replay against the eager
step on a GPU and times both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch

from ..config import TrainConfig
from ..data.augment import crop_flip_apply, crop_flip_draws
from ..errors import notice, reraise_interrupt
from ..rng import generator
from .batched import StackedExecution
from .core import Accel, Objective, TrainData, fp32
from .execution import SingleExecution

# ``--capture auto`` captures only once a GPU check has shown captured training equal to eager training
# (benchmarks/gpu_check.py); until then a user asks for it with ``--capture on``
AUTO_CAPTURES = False
WARMUP_STEPS = 3  # eager steps before the capture (cuDNN picks its kernels, the optimizer makes its state)
PADDING = 4  # of crop-flip


class StepGraph:
    """A static step (a function of static device tensors only) recorded once as a CUDA graph and
    replayed. The first ``WARMUP_STEPS`` calls run it eagerly on a side stream, as PyTorch asks of the
    steps before a capture (what they leave behind, e.g. autograd's state, is then not in the graph);
    the next records and replays it. A capture that fails (out of memory, an operation a graph cannot
    hold) leaves it eager, said once. Without ``capture`` every call runs the step eagerly (the CPU)."""

    def __init__(self, static_step: Callable[[], None], capture: bool, before_capture: Callable[[], None],
                 otherwise: str = "this stage trains eagerly"):
        # before_capture: e.g. the optimizer's zero_grad(set_to_none), so that the gradients are allocated
        # in the graph's memory pool; otherwise: what happens instead when the capture fails, for the note
        self.static_step, self.capture, self.before_capture = static_step, capture, before_capture
        self.otherwise = otherwise
        self.graph: torch.cuda.CUDAGraph | None = None
        self.warm = 0

    def __call__(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        elif self.capture and self.warm >= WARMUP_STEPS:
            self._capture_and_replay()
        else:
            self.warm += 1
            self._warm_step()

    def _warm_step(self) -> None:
        if not self.capture:
            self.static_step()
            return
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.static_step()
        torch.cuda.current_stream().wait_stream(side)

    def _capture_and_replay(self) -> None:
        graph = torch.cuda.CUDAGraph()
        self.before_capture()
        try:
            with torch.cuda.graph(graph):
                self.static_step()
        except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
            reraise_interrupt(e)  # Ctrl-C during the capture: stop, not train eagerly
            self.capture = False
            why = " ".join(str(e).split())[:160]
            notice(f"could not capture the training step as a CUDA graph ({why}); {self.otherwise}")
            self.static_step()
            return
        self.graph = graph
        graph.replay()


class _Captured:
    """What both captured executions share: the static batch indices, loss and hits the graph reads and
    writes, the step's :class:`StepGraph`, and the learning rate as a device tensor the fused SGD step
    reads, refilled by ``set_lr`` (so a schedule never forces a new capture); saved in checkpoints as a
    number, as the eager executions keep it."""

    opt: torch.optim.Optimizer
    device: torch.device

    def _init_capture(self, cfg: TrainConfig, capture: bool, networks: tuple[int, ...]) -> None:
        """``networks``: () for one network, (K,) for K stacked ones (the leading shape of idx, loss, hits);
        the subclass gives the ``_static_step`` the graph holds."""
        self.lr = torch.tensor(float(cfg.lr), device=self.device)
        self.lr_value = fp32(cfg.lr)
        self.batch = cfg.batch_size
        self.idx = torch.zeros(*networks, self.batch, dtype=torch.long, device=self.device)
        self.loss = torch.zeros(networks, device=self.device)
        self.hits = torch.zeros(networks, dtype=torch.long, device=self.device)
        self.graph = StepGraph(self._static_step, capture, lambda: self.opt.zero_grad(set_to_none=True))

    def set_lr(self, value: float) -> None:
        for group in self.opt.param_groups:  # a restored optimizer state brings its own lr: ours again
            group["lr"] = self.lr
        self.lr.fill_(value)
        self.lr_value = fp32(value)

    def _lr_as_number(self, state: dict[str, Any]) -> dict[str, Any]:
        return {**state, "param_groups": [{**g, "lr": self.lr_value} for g in state["param_groups"]]}


class CapturedExecution(_Captured, SingleExecution):
    """One dense-masked network whose full-batch steps replay a CUDA graph (``capture``), or run the
    graph's static step eagerly (no ``capture``). The last, smaller batch of an epoch runs eagerly."""

    name = "captured"

    def __init__(self, model, data: "TrainData", cfg: TrainConfig, mask: dict[str, torch.Tensor], *, order_key: tuple,
                 capture: bool, optimizer_state: dict[str, Any] | None = None, objective: Objective = Objective(),
                 accel: Accel = Accel()):
        from ..distributed import SINGLE

        super().__init__(model, data, cfg, mask, order_key=order_key, accel=accel, dist=SINGLE, kernel=None,
                         optimizer_state=optimizer_state, objective=objective)
        self._init_capture(cfg, capture, ())
        self.draws = torch.zeros(3, self.batch, dtype=torch.long, device=self.device)

    def optimizer_state(self, k: int) -> dict[str, Any]:
        return self._lr_as_number(self.opt.state_dict())

    def step(self, idx: torch.Tensor, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if idx.shape[1] != self.batch:  # the epoch's last, smaller batch: the eager step
            return super().step(idx, epoch, step)
        self.idx.copy_(idx[0], non_blocking=True)
        if self.data.augment != "none":
            draws = crop_flip_draws(self.batch, generator(*self.order_key, "augment", epoch, step), PADDING)
            self.draws.copy_(draws, non_blocking=True)
        self.graph()
        return self.loss, self.hits

    def _static_step(self) -> None:
        """The step the graph holds: reads only the static inputs, writes the static outputs."""
        xb, yb = self.data.x.index_select(0, self.idx), self.data.y.index_select(0, self.idx)
        if self.data.augment != "none":
            xb = crop_flip_apply(xb, self.draws, PADDING)
        loss, hits = self.train_on(xb, yb, self.idx, self.batch)
        self.loss.copy_(loss)
        self.hits.copy_(hits)


class CapturedStackedExecution(_Captured, StackedExecution):
    """K stacked fully connected networks (:mod:`.batched`) whose full-batch steps replay a CUDA graph,
    or run its static step eagerly (no ``capture``); the epoch's last, smaller batch runs eagerly."""

    name = "captured stacked"

    def __init__(self, states, datas, cfg: TrainConfig, masks, device, *, capture: bool):
        super().__init__(states, datas, cfg, masks, device)
        self._init_capture(cfg, capture, (self.k,))

    def optimizer_state(self, k: int) -> dict[str, Any]:
        return self._lr_as_number(super().optimizer_state(k))

    def step(self, idx: torch.Tensor, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if idx.shape[1] != self.batch:
            return super().step(idx, epoch, step)
        self.idx.copy_(idx, non_blocking=True)
        self.graph()
        return self.loss, self.hits

    def _static_step(self) -> None:
        loss, hits = super().step(self.idx, 0, 0)  # the stacked step reads neither epoch nor step
        self.loss.copy_(loss)
        self.hits.copy_(hits)


def capture_choice(setting: str, device: torch.device, cfg: TrainConfig, *, compact: bool, compile: bool,
                   distributed: bool) -> tuple[bool, str | None]:
    """Whether a stage's steps are captured (``--capture auto|on|off``), and why not where ``on`` asked
    for it (a note for the user). ``auto`` captures on CUDA where nothing rules it out."""
    if setting == "off" or (setting == "auto" and not AUTO_CAPTURES):
        return False, None
    why = ("capture needs a CUDA device" if device.type != "cuda" else
           "compact execution computes on the live units" if compact else
           "torch.compile captures by itself" if compile else
           "data-parallel training syncs across processes" if distributed else
           "only SGD's fused step takes its learning rate as a device tensor" if cfg.optimizer != "sgd" else None)
    if why is None:
        return True, None
    return False, (f"--capture on: {why}; training eagerly" if setting == "on" else None)
