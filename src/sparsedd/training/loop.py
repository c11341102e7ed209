"""The one epoch loop (:func:`run_epochs`), with checkpoint/resume that is exact on CPU, and
:func:`train`, the one-network trainer built on it.

Data lives in tensors on the training device; each epoch's order is a permutation drawn from a
generator seeded by (order key, epoch), so a resumed run needs no RNG state beyond the position.
What a step computes (one network or K, dense-masked or compact, ...) is an
:class:`~sparsedd.training.execution.Execution` chosen before the loop starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig
from ..distributed import SINGLE, Dist
from ..errors import SparseddError, notice
from ..rng import generator
from .execution import Accel, Execution, Objective, autocast, prepare_single, stale_compact
from .measured import threads
from .schedule import lr_at

if TYPE_CHECKING:
    from .sparse import SparsePolicy


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
    with threads(getattr(execution, "threads", None)):  # a compact network's steps may run on fewer threads
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


def run_epochs(execution: Execution, cfg: TrainConfig, order_keys: list[tuple], *,
               checkpoint: Checkpointer | None = None, stop_iteration: int | None = None,
               on_epoch: Callable[[list[dict[str, Any]]], None] | None = None,
               on_step: Callable[[int], None] | None = None) -> list[TrainResult]:
    """The epoch loop every trainer shares: restore, then per step the learning rate and a masked
    step, per epoch the running metrics, an evaluation and a checkpoint when due; one result per network.

    A network whose running training loss is not finite at an epoch's end has diverged: it is evaluated,
    its history ends with that epoch and its final metrics say ``diverged`` (its later epochs are not
    recorded; training stops once every network has diverged). The check reads the epoch's loss, which
    the running metrics bring to the host anyway, so the steps stay free of host synchronizations."""
    ex, k = execution, execution.k
    ipe = iters_per_epoch(ex.n, cfg.batch_size)
    total_iters = cfg.epochs * ipe
    if stop_iteration is not None and stop_iteration > total_iters:
        raise ValueError(f"iteration {stop_iteration} is past the end of training ({total_iters} iterations)")
    if cfg.start_iteration >= total_iters:
        raise SparseddError(f"training starts at iteration {cfg.start_iteration}, past the end of its schedule "
                            f"({total_iters} iterations); rewind to an earlier retrain.rewind_iteration")
    # per-step loss and hits of the current epoch, so the epoch's running metrics survive a resume exactly
    step_loss = torch.zeros(k, ipe, device=ex.device)
    step_hits = torch.zeros(k, ipe, device=ex.device, dtype=torch.long)
    results = [TrainResult() for _ in range(k)]
    start_epoch, start_step = _restore(checkpoint, ex, step_loss, step_hits, results) or divmod(cfg.start_iteration, ipe)
    # a checkpoint may hold a network that diverged or converged (train.stop_loss)
    stopped = [diverged(r.history) or converged(r.history, cfg) for r in results]
    ex.module.train()
    ex.apply_masks()
    for epoch in range(start_epoch, cfg.epochs):
        if all(stopped):
            break
        order = torch.stack([torch.randperm(ex.n, generator=generator(*key, epoch)) for key in order_keys])
        order = order.to(ex.device)
        for step in range(start_step if epoch == start_epoch else 0, ipe):
            it = epoch * ipe + step
            if stop_iteration is not None and it >= stop_iteration:
                for r in results:
                    r.iterations = it
                return results
            ex.set_lr(lr_at(cfg, it, ipe))
            step_loss[:, step], step_hits[:, step] = ex.step(order[:, step * cfg.batch_size:(step + 1) * cfg.batch_size],
                                                             epoch, step)
            if on_step is not None:
                on_step(1)
            if checkpoint is not None and step + 1 < ipe and checkpoint.due(end_of_epoch=False):
                checkpoint.save(_snapshot(ex, epoch, step + 1, step_loss, step_hits, results))
        rows = _epoch_rows(ex, cfg, epoch, ipe, step_loss, step_hits, stopped)
        for i, (r, row) in enumerate(zip(results, rows)):
            if not stopped[i]:
                r.history.append(row)
                stopped[i] = diverged(r.history) or converged(r.history, cfg)
        if on_epoch is not None:
            on_epoch(rows)
        if checkpoint is not None and epoch + 1 < cfg.epochs and not all(stopped) and checkpoint.due(end_of_epoch=True):
            checkpoint.save(_snapshot(ex, epoch + 1, 0, step_loss, step_hits, results))
    for i, r in enumerate(results):
        r.execution = ex.name
        r.iterations = total_iters if not stopped[i] else r.history[-1]["epoch"] * ipe
        r.optimizer_state = ex.optimizer_state(i)
        r.final = final_metrics(r.history, r.history[-1] if r.history else ex.evaluate()[i])
        if diverged(r.history):
            r.final.update(diverged=True, diverged_epoch=r.history[-1]["epoch"])
        elif converged(r.history, cfg):
            r.final.update(converged_epoch=r.history[-1]["epoch"])
    return results


def diverged(history: list[dict[str, Any]]) -> bool:
    """Whether a network's history ends in an epoch whose running training loss is not finite."""
    return bool(history) and not math.isfinite(history[-1]["train_loss_running"])


def converged(history: list[dict[str, Any]], cfg: TrainConfig) -> bool:
    """Whether a network's history ends in an epoch whose evaluated training loss (noisy labels) is below
    ``cfg.stop_loss`` (the paper's code's convergence stopping criterion; off at 0)."""
    return cfg.stop_loss > 0 and bool(history) and history[-1].get("train_loss", math.inf) < cfg.stop_loss


def _epoch_rows(ex: Execution, cfg: TrainConfig, epoch: int, ipe: int, step_loss: torch.Tensor,
                step_hits: torch.Tensor, stopped: list[bool]) -> list[dict[str, Any]]:
    """Each network's row of this epoch: running train metrics, and the evaluation when it is due or a
    network still training has just diverged (its last row then holds its final evaluation)."""
    # examples this epoch trained on: all, but in the epoch a schedule starts inside (cfg.start_iteration)
    skipped = cfg.start_iteration - epoch * ipe if epoch == cfg.start_iteration // ipe else 0
    seen = max(ex.n - skipped * cfg.batch_size, 1)
    losses = [float(step_loss[i].sum()) / seen for i in range(ex.k)]
    diverging = any(not s and not math.isfinite(v) for s, v in zip(stopped, losses))
    due = epoch + 1 == cfg.epochs or (epoch + 1) % cfg.eval_every == 0 or diverging or cfg.stop_loss > 0
    evals = ex.evaluate() if due else [{}] * ex.k
    lr = lr_at(cfg, (epoch + 1) * ipe - 1, ipe)
    return [{"epoch": epoch + 1, "lr": lr, "train_loss_running": losses[i],
             "train_acc_running": float(step_hits[i].sum()) / seen, **evals[i]} for i in range(ex.k)]


def _snapshot(ex: Execution, epoch: int, step: int, step_loss: torch.Tensor, step_hits: torch.Tensor,
              results: list[TrainResult]) -> dict[str, Any]:
    """A checkpoint at a position: one network's in the layout it always had, K networks' stacked."""
    one = ex.single
    return {"model": ex.module.state_dict(), "optim": ex.opt.state_dict(), "epoch": epoch, "step": step,
            "step_loss": (step_loss[0] if one else step_loss).cpu(), "step_hits": (step_hits[0] if one else step_hits).cpu(),
            "history": list(results[0].history) if one else [list(r.history) for r in results], **ex.extra_state()}


def _restore(checkpoint: Checkpointer | None, ex: Execution, step_loss: torch.Tensor, step_hits: torch.Tensor,
             results: list[TrainResult]) -> tuple[int, int] | None:
    """Load a checkpoint (if there is one) into the execution and the per-step buffers; the position to go on
    from (None without a checkpoint: training starts at ``cfg.start_iteration``)."""
    state = checkpoint.load() if checkpoint is not None else None
    if state is None:
        return None
    ex.module.load_state_dict(state["model"])
    ex.opt.load_state_dict(state["optim"])
    step_loss.copy_(state["step_loss"].view_as(step_loss))
    step_hits.copy_(state["step_hits"].view_as(step_hits))
    histories = [state["history"]] if ex.single else state["history"]
    for r, h in zip(results, histories):
        r.history = list(h)
    return state["epoch"], state["step"]
