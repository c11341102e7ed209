"""Linear interpolation between two solutions, with batch-norm statistics recomputed at each point."""

from __future__ import annotations

import torch
from torch import nn

from ..training import TrainData
from ..training.core import evaluate
from .landscape import combine

State = dict[str, torch.Tensor]


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, x: torch.Tensor, batch: int = 512) -> bool:
    """Reset the running statistics of every batch-norm layer and re-estimate them on ``x``."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return False
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
    was = model.training
    model.train()
    for i in range(0, x.shape[0], batch):
        model(x[i:i + batch])
    model.train(was)
    for m, mom in zip(norms, saved):
        m.momentum = mom
    return True


def interpolate(model: nn.Module, a: State, b: State, alphas: list[float], data: TrainData) -> list[dict]:
    """Metrics at (1 - alpha) a + alpha b; alpha 0 is ``a`` and alpha 1 is ``b`` exactly."""
    rows = []
    for alpha in alphas:
        state = a if alpha == 0 else b if alpha == 1 else combine(a, b, alpha)
        model.load_state_dict(state)
        if 0 < alpha < 1:
            recompute_batchnorm(model, data.x)
        m = evaluate(model, data)
        rows.append({"alpha": alpha, **{k: m[k] for k in ("train_loss", "train_acc_noisy", "test_loss", "test_acc")}})
    return rows


def alphas(step: float, lo: float = 0.0, hi: float = 1.0) -> list[float]:
    n = int(round((hi - lo) / step))
    return [round(lo + i * (hi - lo) / n, 10) for i in range(n + 1)]
