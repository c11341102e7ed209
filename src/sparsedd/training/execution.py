"""How a stage computes, decided once before its epoch loop: the one-model execution.

The epoch loop (:func:`sparsedd.training.loop.run_epochs`) only sees an :class:`Execution`: K
networks (K = 1 here, K > 1 in :mod:`sparsedd.training.batched`) with their optimizer, a masked
``step`` on a batch of example indices, and an evaluation. Which computation serves a stage
(dense-masked, compact on the live units, DistributedDataParallel, ``torch.compile``, channels-last)
is chosen by :func:`prepare_single`, never inside the loop.

``step`` has no Python branch on data and reads no value back to the host, so the same function
could be captured once and replayed (CUDA graphs); the loss and hit count stay on the device.
"""

from __future__ import annotations

import contextlib
import math
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig
from ..data.augment import augment_batch
from ..distributed import SINGLE, Dist
from ..errors import notice
from ..rng import generator
from .optim import build_optimizer
from .sparse import LAYOUT, compact_threads

if TYPE_CHECKING:
    from .loop import TrainData
    from .sparse import SparsePolicy


@dataclass(frozen=True)
class Accel:
    """Execution options that leave the arithmetic's meaning alone (so they are not part of any stage id)."""

    channels_last: bool = False  # 4-D inputs and conv weights in NHWC memory order
    compile: bool = False  # torch.compile the model's forward
    capture: str = "auto"  # replay the training step as a CUDA graph: auto, on, off (sparsedd.training.captured)


def autocast(precision: str, device: torch.device):
    """bf16 autocast of the forward pass, or a no-op for fp32. Without autocast's cache of cast weights,
    which a captured step (CUDA graph) cannot hold; each weight is cast once per forward pass anyway."""
    if precision != "bf16":  # entering a disabled autocast costs a few microseconds per step
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=False)


@dataclass
class Objective:
    """What the loss adds to the cross-entropy with the training labels (the remedies of the critical dip).

    ``penalty``: lambda * ||w - anchor||^2 over the unpruned parameters (the anchor: the dense init),
    applied as its gradient 2 * lambda * (w - anchor) before the masks, which is the same for SGD and
    cheaper than a loss term. ``alpha``: distillation, (1 - alpha) * CE + alpha * T^2 * KL(teacher || student)
    at temperature T; the teacher is either its logits on every training example (no augmentation)
    or a module run on each augmented batch.
    """

    anchor: dict[str, torch.Tensor] | None = None
    penalty: float = 0.0
    teacher: torch.Tensor | nn.Module | None = None
    alpha: float = 0.0
    temperature: float = 4.0
    bn_l1: float = 0.0  # lambda * sum |gamma| over batch-norm scales, as its subgradient lambda * sign(gamma)

    @property
    def active(self) -> bool:
        return self.penalty > 0 or self.alpha > 0 or self.bn_l1 > 0

    def mix(self, ce: torch.Tensor, out: torch.Tensor, idx: torch.Tensor, xb: torch.Tensor, scale: float) -> torch.Tensor:
        """The training loss from the cross-entropy ``ce`` and the student's logits ``out`` on the examples
        ``idx`` (inputs ``xb``); ``scale`` turns a sum over them into what ``ce`` is (a mean of the global batch)."""
        if self.alpha == 0:
            return ce
        if isinstance(self.teacher, nn.Module):
            with torch.no_grad():
                target = self.teacher(xb).float()
        else:
            target = self.teacher[idx]
        t = self.temperature
        kd = F.kl_div(F.log_softmax(out.float() / t, 1), F.log_softmax(target / t, 1), reduction="sum",
                      log_target=True) * scale
        return (1 - self.alpha) * ce + self.alpha * t * t * kd


class Execution(Protocol):
    """K networks trained together by one optimizer, as the epoch loop drives them."""

    k: int  # networks
    name: str  # what computes the step, recorded with each stage: dense-masked, compact, captured, stacked, side-by-side
    n: int  # training examples
    device: torch.device
    module: nn.Module  # what a checkpoint's "model" holds
    opt: torch.optim.Optimizer
    single: bool  # checkpoints in the one-network layout (history a list, not a list per network)

    def apply_masks(self) -> None: ...
    def set_lr(self, value: float) -> None: ...
    def step(self, idx: torch.Tensor, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]: ...
    def evaluate(self) -> list[dict[str, float | None]]: ...
    def optimizer_state(self, k: int) -> dict[str, Any]: ...
    def extra_state(self) -> dict[str, Any]: ...


def fp32(value: float) -> float:
    """``value`` rounded to float32. CUDA's fused SGD reads a tensor learning rate as float32 and a number
    as float64: eager steps take the rounded number so that eager and captured training (a tensor) agree.
    (struct rounds as a float32 tensor does, in a tenth of the time: this runs at every step.)"""
    try:
        return struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:  # beyond float32's range: infinite, as in a float32 tensor
        return math.copysign(math.inf, value)


def set_lr_(opt: torch.optim.Optimizer, value: float) -> None:
    """The eager executions' learning rate: for SGD rounded to float32, as a captured step's learning-rate
    tensor holds it (fused SGD on a CPU rounds it so anyway: no change there); Adam, which is never
    captured, is left alone."""
    if isinstance(opt, torch.optim.SGD):
        value = fp32(value)
    for group in opt.param_groups:
        group["lr"] = value


def masked_pairs(params: dict[str, torch.Tensor], mask: dict[str, torch.Tensor]) -> tuple[list, list]:
    """(parameters, float masks) of the masked parameters; an all-ones mask changes nothing, so it is skipped."""
    partial = [n for n in mask if not bool(mask[n].all())]
    return ([params[n] for n in partial],
            [mask[n].to(dtype=params[n].dtype, device=params[n].device) for n in partial])


@torch.no_grad()
def multiply_(tensors: list[torch.Tensor], masks: list[torch.Tensor]) -> None:
    if tensors:
        torch._foreach_mul_(tensors, masks)


class SingleExecution:
    """One network, dense-masked or compact, optionally compiled, channels-last or data-parallel.

    Pruned weights stay exactly zero: their gradients are masked before the optimizer step (so no
    momentum or weight decay reaches them) and the weights are masked again after it.
    """

    k = 1
    single = True

    def __init__(self, model: nn.Module, data: "TrainData", cfg: TrainConfig, mask: dict[str, torch.Tensor], *,
                 order_key: tuple, accel: Accel, dist: Dist, kernel: float | None,
                 optimizer_state: dict[str, Any] | None, objective: Objective = Objective()):
        self.outer, self.compact, self.kernel = model, None, kernel
        if kernel is not None:  # compute on the live units only (sparsedd.training.sparse)
            from .sparse import CompactMLP

            self.compact = CompactMLP(model.state_dict(), mask, kernel_below=kernel)
            model, mask = self.compact, {}
            if optimizer_state:
                optimizer_state = self.compact.optimizer_state_from_dense(optimizer_state)
        if accel.channels_last:
            model.to(memory_format=torch.channels_last)
        forward = torch.compile(model) if accel.compile else model
        if dist.active:
            from torch.nn.parallel import DistributedDataParallel

            forward = DistributedDataParallel(forward)
        self.module, self.forward, self.data, self.cfg = model, forward, data, cfg
        self.order_key, self.accel, self.dist = order_key, accel, dist
        self.masked, self.mask_f = masked_pairs(dict(model.named_parameters()), mask)
        self.objective = objective
        anchored = [(p, objective.anchor[n].to(p.device, p.dtype)) for n, p in model.named_parameters()
                    if objective.penalty > 0 and objective.anchor is not None and n in objective.anchor]
        self.anchored, self.anchors = [p for p, _ in anchored], [a for _, a in anchored]
        self.bn_scales = [m.weight for m in model.modules()
                          if objective.bn_l1 > 0 and isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]
        self.opt = build_optimizer(model.parameters(), cfg)
        if optimizer_state:
            self.opt.load_state_dict(optimizer_state)
        self.n, self.device = data.n, data.x.device
        # a compact network reads few inputs: select them once, not at every step (not under augmentation,
        # which works on whole images)
        self.inputs = self.compact.live_inputs(data.x) if self.compact is not None and data.augment == "none" else None
        self.threads = compact_threads(self.compact, cfg.batch_size) if self.compact is not None else None

    def apply_masks(self) -> None:
        multiply_(self.masked, self.mask_f)

    def set_lr(self, value: float) -> None:
        set_lr_(self.opt, value)

    def step(self, idx: torch.Tensor, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on the examples ``idx`` [1, B]; returns the summed loss and hits (on the device)."""
        idx = idx[0]
        global_n = idx.shape[0]
        idx = self.dist.local_slice(idx)
        yb = self.data.y.index_select(0, idx)  # index_select: on a CPU several times faster than x[idx]
        if self.inputs is not None:
            return self.train_on(self.inputs.index_select(0, idx), yb, idx, global_n, selected=True)
        xb = self.data.x.index_select(0, idx)
        if self.data.augment != "none":
            xb = augment_batch(self.data.augment, xb, generator(*self.order_key, "augment", epoch, step))
        return self.train_on(xb, yb, idx, global_n)

    def train_on(self, xb: torch.Tensor, yb: torch.Tensor, idx: torch.Tensor,
                 global_n: int, selected: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The optimizer step on a gathered (and augmented) batch: the examples ``idx`` of a global batch
        of ``global_n``; the summed loss and hits, on the device. ``selected``: ``xb`` holds a compact
        network's live inputs only."""
        if self.compact is not None:  # plain cross-entropy in fp32, one process (what compact execution allows)
            loss, out = self.compact.loss_and_grad(xb, yb, selected)
            self.opt.step()
            return loss * yb.shape[0], (out.argmax(1) == yb).sum()
        if self.accel.channels_last and xb.dim() == 4:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with autocast(self.cfg.precision, xb.device):
            out = self.forward(xb)
            if self.dist.active:  # DDP averages over ranks: this makes it the global batch's mean
                loss = F.cross_entropy(out.float(), yb, reduction="sum") * (self.dist.world / global_n)
            else:
                loss = F.cross_entropy(out.float(), yb)
        self.opt.zero_grad(set_to_none=True)  # backward then writes the gradients instead of adding to zeros
        scale = self.dist.world / global_n if self.dist.active else 1 / global_n
        self.objective.mix(loss, out, idx, xb, scale).backward()
        if self.anchored:  # the distance penalty's gradient
            torch._foreach_add_([p.grad for p in self.anchored], torch._foreach_sub(self.anchored, self.anchors),
                                alpha=2 * self.objective.penalty)
        if self.bn_scales:  # network slimming's sparsity on the batch-norm scales (the paper's code: updateBN)
            torch._foreach_add_([p.grad for p in self.bn_scales], torch._foreach_sign(self.bn_scales),
                                alpha=self.objective.bn_l1)
        multiply_([p.grad for p in self.masked], self.mask_f)
        self.opt.step()
        self.apply_masks()
        with torch.no_grad():
            if self.dist.active:
                both = self.dist.sum_(torch.stack([loss.detach() * global_n / self.dist.world,
                                                   (out.argmax(1) == yb).sum().to(loss.dtype)]))
                return both[0], both[1].round().long()
            return loss.detach() * yb.shape[0], (out.argmax(1) == yb).sum()

    def evaluate(self) -> list[dict[str, float | None]]:
        from .loop import evaluate

        return [evaluate(self.module, self.data, self.cfg.precision)]

    def optimizer_state(self, k: int) -> dict[str, Any]:
        state = self.opt.state_dict()
        return self.compact.optimizer_state_to_dense(state) if self.compact is not None else state

    def extra_state(self) -> dict[str, Any]:
        # a resumed stage computes as it started, in the layout its checkpoint holds
        return {"compact_kernel": self.kernel, "compact_layout": LAYOUT if self.kernel is not None else None}

    @property
    def name(self) -> str:
        return "dense-masked" if self.kernel is None else "compact"

    def finish(self) -> None:
        """Back to the layout of the model we were given."""
        if self.compact is not None:
            self.outer.load_state_dict(self.compact.dense_state())


def stale_compact(saved: dict[str, Any] | None) -> bool:
    """Whether a checkpoint holds a compact network in a layout this version does not read."""
    return saved is not None and saved.get("compact_kernel") is not None and saved.get("compact_layout") != LAYOUT


def prepare_single(model: nn.Module, data: "TrainData", cfg: TrainConfig, mask: dict[str, torch.Tensor], *,
                   order_key: tuple, accel: Accel = Accel(), dist: Dist = SINGLE, sparse: "SparsePolicy | None" = None,
                   saved: dict[str, Any] | None = None, optimizer_state: dict[str, Any] | None = None,
                   objective: Objective = Objective()) -> SingleExecution:
    """The execution of one network's stage; a checkpoint's layout (``saved``) wins over the sparse policy.
    With a penalty or distillation the network computes dense-masked (the compact layout has no anchor or teacher)."""
    kernel = None if objective.active else _sparse_kernel(model, mask, cfg, sparse, accel, dist, saved)
    device = data.x.device
    from .captured import CapturedExecution, capture_choice

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
