"""Gradient-based pruning: scores |w * dL/dw| from seeded training batches.

Two rules measure the scores (``prune.gradient_rule``):

- ``paper``: He et al.'s code (their ``pruning/gradient.py``): ONE training batch, augmented as
  training augments it, with the model in train mode (batch norm on the batch's statistics).
- ``multi``: the sum over ``prune.gradient_batches`` batches, un-augmented, in eval mode (batch norm
  on its running statistics): less noisy, but not what the paper ran.

For the fully connected models train and eval mode compute the same, so there the rules differ only
in the number of batches.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..data.augment import augment_batch
from .mask import Mask
from .select import PRUNABLE, Count, prune_by_scores


def gradient_saliency(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mask: Mask, *,
                      batches: int, batch_size: int, generator: torch.Generator,
                      train_mode: bool = False, augment: str = "none") -> dict[str, torch.Tensor]:
    """Sum over ``batches`` seeded batches of |w * grad| for every masked parameter.

    ``model`` is left as it was: in train mode batch norm would update its running statistics, so
    the scores are computed on a copy then.
    """
    if train_mode:
        model = copy.deepcopy(model)
    params = dict(model.named_parameters())
    saliency = {n: torch.zeros_like(params[n]) for n in mask}
    order = torch.randperm(x.shape[0], generator=generator)
    was_training = model.training
    model.train(train_mode)
    for b in range(batches):
        idx = order[(b * batch_size) % x.shape[0]:][:batch_size].to(x.device)
        xb = augment_batch(augment, x[idx], generator)  # draws after the order: the batch is still the same
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(xb), y[idx]).backward()
        with torch.no_grad():
            for n in mask:
                saliency[n] += (params[n] * params[n].grad).abs()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return saliency


def gradient(weights: dict[str, torch.Tensor], mask: Mask, *, fraction: float, scope: str,
             saliency: dict[str, torch.Tensor] | None = None, count: Count = PRUNABLE, **_: object) -> Mask:
    """Remove the unpruned weights with the smallest accumulated |w * grad|."""
    if saliency is None:
        raise ValueError("gradient pruning needs the saliency scores (see gradient_saliency)")
    return prune_by_scores(saliency, mask, fraction=fraction, scope=scope, count=count)
