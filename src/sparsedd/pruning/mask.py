"""Masks are explicit boolean tensors, one per prunable parameter (name -> tensor)."""

from __future__ import annotations

import torch
from torch import nn

Mask = dict[str, torch.Tensor]


def full_mask(model: nn.Module, names: list[str]) -> Mask:
    params = dict(model.named_parameters())
    return {n: torch.ones_like(params[n], dtype=torch.bool) for n in names}


def remaining(mask: Mask, fixed: int = 0) -> int:
    """Unpruned weights; ``fixed``: weights counted beside the mask that no round prunes (prune.count = all-masked)."""
    return int(sum(int(m.sum()) for m in mask.values())) + fixed


def total(mask: Mask, fixed: int = 0) -> int:
    return int(sum(m.numel() for m in mask.values())) + fixed


def density(mask: Mask, fixed: int = 0) -> float:
    return remaining(mask, fixed) / max(total(mask, fixed), 1)


def layer_sparsity(mask: Mask) -> dict[str, float]:
    return {n: 1.0 - float(m.float().mean()) for n, m in mask.items()}
