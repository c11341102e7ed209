"""The one selection rule every strategy shares: drop the lowest-scoring unpruned weights."""

from __future__ import annotations

import torch

from ..errors import SparseddError
from .mask import Mask


def _count(fraction: float, n: int) -> int:
    return int(round(fraction * n))


def prune_by_scores(scores: dict[str, torch.Tensor], mask: Mask, *, fraction: float, scope: str) -> Mask:
    """New mask without the ``fraction`` lowest-scoring unpruned weights (ties broken by position)."""
    names = list(mask)
    new = {n: mask[n].clone() for n in names}
    if scope == "layer":
        for n in names:
            active = mask[n].flatten().nonzero().squeeze(1)
            k = _count(fraction, active.numel())
            if k:
                order = torch.argsort(scores[n].flatten()[active].float(), stable=True)
                new[n].view(-1)[active[order[:k]]] = False
        return new
    if scope != "global":
        raise SparseddError(f"unknown pruning scope {scope!r}; choose global or layer")
    flat_scores, owners = [], []
    for i, n in enumerate(names):
        active = mask[n].flatten().nonzero().squeeze(1)
        flat_scores.append(scores[n].flatten()[active].float())
        owners.append(torch.stack([torch.full_like(active, i), active], 1))
    all_scores = torch.cat(flat_scores)
    k = _count(fraction, all_scores.numel())
    if k:
        drop = torch.cat(owners)[torch.argsort(all_scores, stable=True)[:k]]
        for i, n in enumerate(names):
            idx = drop[drop[:, 0] == i, 1]
            new[n].view(-1)[idx] = False
    return new
