"""The epoch loop for one masked model, with checkpoint/resume that is exact on CPU.

Data lives in tensors on the training device; each epoch's order is a permutation drawn from a
generator seeded by (order key, epoch), so a resumed run needs no RNG state beyond the position.
Pruned weights stay exactly zero: their gradients are masked before the optimizer step (so no
momentum or weight decay reaches them) and the weights are masked again after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig
from ..data.augment import augment_batch
from ..distributed import SINGLE, Dist
from ..rng import generator
from .optim import build_optimizer

if TYPE_CHECKING:
    from .sparse import SparsePolicy
from .schedule import lr_at


@dataclass
class TrainData:
    x: torch.Tensor  # training inputs
    y: torch.Tensor  # training labels the model is fitted to (noisy)
    y_clean: torch.Tensor  # the true training labels
    x_test: torch.Tensor
    y_test: torch.Tensor
    corrupted: torch.Tensor  # indices where y != y_clean
    augment: str = "none"  # training-batch augmentation (sparsedd.data.augment); never at evaluation

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @classmethod
    def clean(cls, x: torch.Tensor, y: torch.Tensor, n_test: int, augment: str = "none") -> "TrainData":
        """Labels without noise and the first ``n_test`` examples as the test set (timing, measurements)."""
        return cls(x, y, y, x[:n_test], y[:n_test], torch.arange(0, device=x.device), augment=augment)


@dataclass(frozen=True)
class Accel:
    """Execution options that leave the arithmetic's meaning alone (so they are not part of any stage id)."""

    channels_last: bool = False  # 4-D inputs and conv weights in NHWC memory order
    compile: bool = False  # torch.compile the model's forward


def autocast(precision: str, device: torch.device):
    """bf16 autocast of the forward pass, or a no-op for fp32."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


@dataclass
class TrainResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    iterations: int = 0
    optimizer_state: dict[str, Any] = field(default_factory=dict)  # at the end (e.g. to carry momentum on)


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
    """Test loss/accuracy, train loss/accuracy on the noisy and the clean labels, memorization."""
    return metrics_from_logits(predict(model, data.x_test, precision=precision),
                               predict(model, data.x, precision=precision), data)


def metrics_from_logits(test_logits: torch.Tensor, train_logits: torch.Tensor, data: TrainData) -> dict[str, float | None]:
    """The evaluation metrics of one network from its logits on the test and the training set."""
    pred = train_logits.argmax(1)
    fitted = pred[data.corrupted] == data.y[data.corrupted]
    return {
        "test_loss": float(F.cross_entropy(test_logits, data.y_test)),
        "test_acc": float((test_logits.argmax(1) == data.y_test).float().mean()),
        "train_loss": float(F.cross_entropy(train_logits, data.y)),
        "train_acc_noisy": float((pred == data.y).float().mean()),
        "train_acc_clean": float((pred == data.y_clean).float().mean()),
        "memorized": float(fitted.float().mean()) if fitted.numel() else None,
    }


def restore(checkpoint: Checkpointer | None, model: nn.Module, opt: torch.optim.Optimizer, step_loss: torch.Tensor,
            step_hits: torch.Tensor) -> dict[str, Any] | None:
    """Load a checkpoint (if there is one) into the model, the optimizer and the per-step buffers."""
    state = checkpoint.load() if checkpoint is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optim"])
        step_loss.copy_(state["step_loss"])
        step_hits.copy_(state["step_hits"])
    return state


def iters_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def train(model: nn.Module, data: TrainData, cfg: TrainConfig, mask: dict[str, torch.Tensor], *,
          order_key: tuple, checkpoint: Checkpointer | None = None, stop_iteration: int | None = None,
          on_epoch: Callable[[dict[str, Any]], None] | None = None,
          on_step: Callable[[int], None] | None = None,
          optimizer_state: dict[str, Any] | None = None, accel: Accel = Accel(), dist: Dist = SINGLE,
          sparse: "SparsePolicy | None" = None) -> TrainResult:
    """Train ``model`` in place under ``mask`` for ``cfg.epochs`` (or until ``stop_iteration``).

    ``order_key`` seeds the data order: the permutation of epoch e comes from generator(*order_key, e).
    ``on_epoch`` gets each epoch's metrics; ``on_step`` the number of steps just done (for progress).
    ``optimizer_state`` starts the optimizer from a saved state (a checkpoint, when there is one, wins).
    ``accel`` picks memory layout and compilation; ``cfg.precision`` the autocast precision.
    ``dist``: data-parallel over torchrun's processes (see :mod:`sparsedd.distributed`).
    ``sparse``: when to compute on the live units only (:mod:`sparsedd.training.sparse`); a
    checkpoint's layout wins over the policy, so a resumed stage computes as it started.
    """
    saved = checkpoint.load() if checkpoint is not None else None  # checkpointers keep what they load
    kernel = _sparse_kernel(model, mask, cfg, sparse, accel, dist, saved)
    outer_model = model
    compact = None
    if kernel is not None:
        from .sparse import CompactMLP

        compact = CompactMLP(model.state_dict(), mask, kernel_below=kernel)
        model, mask = compact, {}
        if optimizer_state:
            optimizer_state = compact.optimizer_state_from_dense(optimizer_state)
    if accel.channels_last:
        model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if accel.compile else model
    if dist.active:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(forward)
    params = dict(model.named_parameters())
    partial = [n for n in mask if not bool(mask[n].all())]  # an all-ones mask changes nothing: skip it
    masked = [params[n] for n in partial]
    mask_f = [mask[n].to(dtype=params[n].dtype, device=params[n].device) for n in partial]
    opt = build_optimizer(model.parameters(), cfg)
    if optimizer_state:
        opt.load_state_dict(optimizer_state)
    ipe = iters_per_epoch(data.n, cfg.batch_size)
    total_iters = cfg.epochs * ipe
    if stop_iteration is not None and stop_iteration > total_iters:
        raise ValueError(f"iteration {stop_iteration} is past the end of training ({total_iters} iterations)")

    result = TrainResult()
    start_epoch, start_step = 0, 0
    # per-step loss and hits of the current epoch, so the epoch's running metrics survive a resume exactly
    step_loss = torch.zeros(ipe, device=data.x.device)
    step_hits = torch.zeros(ipe, device=data.x.device, dtype=torch.long)
    state = restore(checkpoint, model, opt, step_loss, step_hits)
    if state is not None:
        start_epoch, start_step = state["epoch"], state["step"]
        result.history = list(state["history"])

    def snapshot(epoch: int, step: int) -> dict[str, Any]:
        return {"model": model.state_dict(), "optim": opt.state_dict(), "epoch": epoch, "step": step,
                "step_loss": step_loss.cpu(), "step_hits": step_hits.cpu(), "history": list(result.history),
                "compact_kernel": kernel}

    def done(res: TrainResult) -> TrainResult:
        if compact is not None:  # back to the layout of the model we were given
            outer_model.load_state_dict(compact.dense_state())
            if res.optimizer_state:
                res.optimizer_state = compact.optimizer_state_to_dense(res.optimizer_state)
        return res

    model.train()
    x, y = data.x, data.y
    if masked:
        with torch.no_grad():
            torch._foreach_mul_(masked, mask_f)
    for epoch in range(start_epoch, cfg.epochs):
        perm = torch.randperm(data.n, generator=generator(*order_key, epoch)).to(x.device)
        for step in range(start_step if epoch == start_epoch else 0, ipe):
            it = epoch * ipe + step
            if stop_iteration is not None and it >= stop_iteration:
                result.iterations = it
                return done(result)
            lr = lr_at(cfg, it, ipe)
            for group in opt.param_groups:
                group["lr"] = lr
            idx = perm[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            global_n = idx.shape[0]
            idx = dist.local_slice(idx)
            xb, yb = x[idx], y[idx]
            if data.augment != "none":
                xb = augment_batch(data.augment, xb, generator(*order_key, "augment", epoch, step))
            if accel.channels_last and xb.dim() == 4:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with autocast(cfg.precision, xb.device):
                out = forward(xb)
                if dist.active:  # DDP averages over ranks: this makes it the global batch's mean
                    loss = F.cross_entropy(out.float(), yb, reduction="sum") * (dist.world / global_n)
                else:
                    loss = F.cross_entropy(out.float(), yb)
            opt.zero_grad(set_to_none=True)  # backward then writes the gradients instead of adding to zeros
            loss.backward()
            if masked:
                with torch.no_grad():
                    torch._foreach_mul_([p.grad for p in masked], mask_f)
            opt.step()
            with torch.no_grad():
                if masked:
                    torch._foreach_mul_(masked, mask_f)
                if dist.active:
                    both = dist.sum_(torch.stack([loss.detach() * global_n / dist.world,
                                                  (out.argmax(1) == yb).sum().to(loss.dtype)]))
                    step_loss[step], step_hits[step] = both[0], both[1].round().long()
                else:
                    step_loss[step] = loss.detach() * yb.shape[0]
                    step_hits[step] = (out.argmax(1) == yb).sum()
            if on_step is not None:
                on_step(1)
            if checkpoint is not None and step + 1 < ipe and checkpoint.due(end_of_epoch=False):
                checkpoint.save(snapshot(epoch, step + 1))
        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "lr": lr_at(cfg, (epoch + 1) * ipe - 1, ipe),
            "train_loss_running": float(step_loss.sum()) / data.n,
            "train_acc_running": float(step_hits.sum()) / data.n,
        }
        last = epoch + 1 == cfg.epochs
        if last or (epoch + 1) % cfg.eval_every == 0:
            metrics.update(evaluate(model, data, cfg.precision))
        result.history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)
        if checkpoint is not None and not last and checkpoint.due(end_of_epoch=True):
            checkpoint.save(snapshot(epoch + 1, 0))
    result.iterations = total_iters
    result.optimizer_state = opt.state_dict()
    result.final = dict(result.history[-1]) if result.history else evaluate(model, data, cfg.precision)
    evals = [h["test_acc"] for h in result.history if "test_acc" in h]
    result.final["test_acc_best"] = max(evals) if evals else result.final.get("test_acc", float("nan"))
    return done(result)


def _sparse_kernel(model: nn.Module, mask: dict[str, torch.Tensor], cfg: TrainConfig, sparse, accel: Accel,
                   dist: Dist, saved: dict[str, Any] | None) -> float | None:
    """The CSR threshold of compact execution for this stage, or None to compute dense-masked."""
    if saved is not None:
        return saved.get("compact_kernel")
    if sparse is None or accel.compile or accel.channels_last or dist.active:
        return None
    return sparse.decide(model, mask, cfg.batch_size, cfg.precision)

