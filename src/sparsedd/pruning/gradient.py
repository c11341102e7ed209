"""Gradient-based pruning: scores |w * dL/dw| summed over a seeded set of training batches."""

from __future__ import annotations

import torch
from torch import nn

from .mask import Mask
from .select import prune_by_scores


def gradient_saliency(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mask: Mask, *,
                      batches: int, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Sum over ``batches`` seeded batches of |w * grad| for every masked parameter."""
    params = dict(model.named_parameters())
    saliency = {n: torch.zeros_like(params[n]) for n in mask}
    order = torch.randperm(x.shape[0], generator=generator)
    was_training = model.training
    model.eval()
    for b in range(batches):
        idx = order[(b * batch_size) % x.shape[0]:][:batch_size].to(x.device)
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        with torch.no_grad():
            for n in mask:
                saliency[n] += (params[n] * params[n].grad).abs()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return saliency


def gradient(weights: dict[str, torch.Tensor], mask: Mask, *, fraction: float, scope: str,
             saliency: dict[str, torch.Tensor] | None = None, **_: object) -> Mask:
    """Remove the unpruned weights with the smallest accumulated |w * grad|."""
    if saliency is None:
        raise ValueError("gradient pruning needs the saliency scores (see gradient_saliency)")
    return prune_by_scores(saliency, mask, fraction=fraction, scope=scope)
