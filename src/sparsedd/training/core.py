"""What every trainer shares (a leaf module: it imports no other trainer): the training data and a
training's result, the checkpointer interface, evaluation, the execution interface the epoch loop
drives, and the execution options and objective every execution takes.

How a group of trainings is computed is chosen in :mod:`.planner`; the epoch loop is :mod:`.loop`;
each way of computing a step is one module (:mod:`.execution`, :mod:`.sparse`, :mod:`.batched`,
:mod:`.captured`, :mod:`.together`).
"""

from __future__ import annotations

import contextlib
import math
import struct
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig


@dataclass
class TrainData:
    x: torch.Tensor  # training inputs
    y: torch.Tensor  # training labels the model is fitted to (noisy)
    y_clean: torch.Tensor  # the true training labels
    x_test: torch.Tensor
    y_test: torch.Tensor
    corrupted: torch.Tensor  # indices where y != y_clean
    augment: str = "none"  # training-batch augmentation (sparsedd.data.augment); never at evaluation
    x_val: torch.Tensor | None = None  # held out of the training set (data.val_split), with its noisy labels
    y_val: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @classmethod
    def clean(cls, x: torch.Tensor, y: torch.Tensor, n_test: int, augment: str = "none") -> "TrainData":
        """Labels without noise and the first ``n_test`` examples as the test set (timing, measurements)."""
        return cls(x, y, y, x[:n_test], y[:n_test], torch.arange(0, device=x.device), augment=augment)


@dataclass
class TrainResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    iterations: int = 0
    optimizer_state: dict[str, Any] = field(default_factory=dict)  # at the end (e.g. to carry momentum on)
    execution: str = ""  # what computed it (Execution.name): dense-masked, compact, captured, stacked, side-by-side


class Checkpointer(Protocol):
    def load(self) -> dict[str, Any] | None: ...
    def save(self, state: dict[str, Any]) -> None: ...
    def due(self, end_of_epoch: bool) -> bool: ...


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch: int = 4096, precision: str = "fp32") -> torch.Tensor:
    """Logits (fp32) for all of ``x`` in eval mode."""
    was = model.training
    model.eval()
    with autocast(precision, x.device):
        out = torch.cat([model(x[i:i + batch]).float() for i in range(0, x.shape[0], batch)])
    model.train(was)
    return out


def evaluate(model: nn.Module, data: TrainData, precision: str = "fp32") -> dict[str, float | None]:
    """Test loss/accuracy, train loss/accuracy on the noisy and the clean labels, memorization, and
    validation loss/accuracy when part of the training set is held out."""
    val = predict(model, data.x_val, precision=precision) if data.x_val is not None else None
    return metrics_from_logits(predict(model, data.x_test, precision=precision),
                               predict(model, data.x, precision=precision), data, val)


def metrics_from_logits(test_logits: torch.Tensor, train_logits: torch.Tensor, data: TrainData,
                        val_logits: torch.Tensor | None = None) -> dict[str, float | None]:
    """The evaluation metrics of one network from its logits on the test, the training (and validation) set."""
    pred = train_logits.argmax(1)
    fitted = pred[data.corrupted] == data.y[data.corrupted]
    metrics = {
        "test_loss": float(F.cross_entropy(test_logits, data.y_test)),
        "test_acc": float((test_logits.argmax(1) == data.y_test).float().mean()),
        "train_loss": float(F.cross_entropy(train_logits, data.y)),
        "train_acc_noisy": float((pred == data.y).float().mean()),
        "train_acc_clean": float((pred == data.y_clean).float().mean()),
        "memorized": float(fitted.float().mean()) if fitted.numel() else None,
    }
    if val_logits is not None:
        metrics["val_loss"] = float(F.cross_entropy(val_logits, data.y_val))
        metrics["val_acc"] = float((val_logits.argmax(1) == data.y_val).float().mean())
    return metrics


def final_metrics(history: list[dict[str, Any]], last: dict[str, Any]) -> dict[str, Any]:
    """A stage's final metrics: the last epoch's, the best test accuracy seen and, with a validation set,
    the test accuracy at the epoch of best validation accuracy (early stopping as a practitioner can
    do it; the earliest such epoch on ties)."""
    final = dict(last)
    evals = [h for h in history if "test_acc" in h]
    final["test_acc_best"] = max(h["test_acc"] for h in evals) if evals else final.get("test_acc", float("nan"))
    validated = [h for h in evals if "val_acc" in h]
    if validated:
        best = max(validated, key=lambda h: h["val_acc"])  # max keeps the first of equal values
        final.update(val_acc_best=best["val_acc"], test_acc_at_best_val=best["test_acc"], epoch_at_best_val=best["epoch"])
    return final


def iters_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


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
