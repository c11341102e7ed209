"""1-D loss landscapes along a filter-normalized random direction (Li et al., 2018)."""

from __future__ import annotations

import torch
from torch import nn

from ..training import TrainData
from ..training.core import evaluate

State = dict[str, torch.Tensor]


def filter_normalized_direction(state: State, generator: torch.Generator, mask: dict[str, torch.Tensor] | None = None,
                                restrict: bool = True) -> State:
    """A Gaussian direction, zero on biases and 1-D parameters (norm layers), each filter rescaled.

    For every filter (a row of a linear weight, an output channel of a conv), the direction's norm
    equals the weight filter's norm. With ``restrict`` and a mask, the direction is zero on pruned
    weights (drawn first, then masked, then normalized over the unpruned entries).
    """
    out: State = {}
    for name in sorted(state):
        w = state[name]
        if not torch.is_floating_point(w):
            continue
        d = torch.randn(w.shape, generator=generator).to(w.device, w.dtype)
        if w.dim() <= 1:
            out[name] = torch.zeros_like(w)
            continue
        if restrict and mask is not None and name in mask:
            d = d * mask[name].to(d.dtype)
        wf, df = w.flatten(1), d.flatten(1)
        scale = wf.norm(dim=1, keepdim=True) / df.norm(dim=1, keepdim=True).clamp_min(1e-12)
        out[name] = (df * scale).view_as(w)
    return out


def combine(a: State, b: State, alpha: float, direction: bool = False) -> State:
    """(1 - alpha) a + alpha b, or a + alpha b when b is a direction."""
    out = {}
    for k, v in a.items():
        if k not in b or not torch.is_floating_point(v):
            out[k] = v
        elif direction:
            out[k] = v + alpha * b[k]
        else:
            out[k] = (1 - alpha) * v + alpha * b[k]
    return out


def loss_curve(model: nn.Module, state: State, direction: State, alphas: list[float], data: TrainData) -> list[dict]:
    """Train and test loss and accuracy at ``state + alpha * direction`` for each alpha."""
    rows = []
    for a in alphas:
        model.load_state_dict(combine(state, direction, a, direction=True))
        m = evaluate(model, data)
        rows.append({"alpha": a, **{k: m[k] for k in ("train_loss", "train_acc_noisy", "test_loss", "test_acc")}})
    model.load_state_dict(state)
    return rows
