"""The one epoch loop (:func:`run_epochs`) every trainer shares, with checkpoint/resume that is exact on CPU.

Data lives in tensors on the training device; each epoch's order is a permutation drawn from a
generator seeded by (order key, epoch), so a resumed run needs no RNG state beyond the position.
What a step computes (one network or K, dense-masked or compact, ...) is an
:class:`~sparsedd.training.core.Execution` chosen before the loop starts (:mod:`.planner`).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from ..config import TrainConfig
from ..errors import SparseddError
from ..rng import generator
from .core import Checkpointer, Execution, TrainResult, final_metrics, iters_per_epoch
from .schedule import lr_at


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
    _finish(ex, cfg, results, stopped, total_iters, ipe)
    return results


def _finish(ex: Execution, cfg: TrainConfig, results: list[TrainResult], stopped: list[bool], total_iters: int,
            ipe: int) -> None:
    """Each network's result at the end: what computed it, its steps, optimizer state and final metrics
    (with where it diverged or converged)."""
    for i, r in enumerate(results):
        r.execution = ex.name
        r.iterations = total_iters if not stopped[i] else r.history[-1]["epoch"] * ipe
        r.optimizer_state = ex.optimizer_state(i)
        r.final = final_metrics(r.history, r.history[-1] if r.history else ex.evaluate()[i])
        if diverged(r.history):
            r.final.update(diverged=True, diverged_epoch=r.history[-1]["epoch"])
            continue
        if converged(r.history, cfg):
            r.final.update(converged_epoch=r.history[-1]["epoch"])
        if (found := unstable_end(r.history)) is not None:  # as sparsedd.results.load finds it in the index
            r.final.update(unstable=found)


# A network's last epoch is unstable when a loss ends at least UNSTABLE_FACTOR times what it is compared with,
# and above UNSTABLE_FLOOR: its final accuracies are then not what the level's mask learns. Ordinary training
# ends at or near its lowest loss, and a level that cannot fit (a collapsed one) stays high all along, so
# neither is flagged. (Seen on mnist-conv-quick, seed 3 level 9: a training loss of 1.39 in training mode
# and 22.1 evaluated at the end, 9.9% test accuracy after 92.1% ten epochs before; a net with batch norm,
# which normalizes each training batch by its own statistics and evaluates with population ones (with
# those recomputed over the training set it still scores 9.9%; in batch mode 90.5%);
# docs/results/mnist-conv-quick.md.)
UNSTABLE_FACTOR = 5.0
UNSTABLE_FLOOR = 1.0


def unstable_end(history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """How a network's last epoch is unstable, or None: ``evaluation`` where its evaluated training loss
    is far above its running loss of the same epoch (it evaluates far worse than it trains: e.g. batch norm,
    which trains on each batch's statistics and evaluates on population ones), ``training`` where its
    running loss ended far above its best (a late blow-up that stayed finite)."""
    if not history:
        return None
    last = history[-1]
    running, evaluated = last.get("train_loss_running", math.nan), last.get("train_loss", math.nan)
    finite = [(row["train_loss_running"], row["epoch"]) for row in history
              if math.isfinite(row.get("train_loss_running", math.nan))]
    best, best_epoch = min(finite) if finite else (math.nan, None)
    kind = unstable_kind(evaluated, running, best)
    if kind == "evaluation":
        return {"kind": kind, "epoch": last["epoch"], "train_loss": evaluated, "train_loss_running": running}
    if kind == "training":
        return {"kind": kind, "epoch": last["epoch"], "train_loss_running": running,
                "best_train_loss_running": best, "best_epoch": best_epoch}
    return None


def unstable_kind(evaluated: float, running: float, best_running: float) -> str | None:
    """:func:`unstable_end`'s rule on three numbers: the last epoch's evaluated and running training losses
    and the lowest finite running one of all epochs (``sparsedd.results.load`` applies it to the index)."""
    if _far_above(evaluated, running):
        return "evaluation"
    if _far_above(running, best_running):
        return "training"
    return None


def _far_above(value: float, reference: float) -> bool:
    return (math.isfinite(value) and math.isfinite(reference) and value > UNSTABLE_FLOOR
            and value >= UNSTABLE_FACTOR * reference)


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
