"""Masks are explicit boolean tensors, one per prunable parameter (name -> tensor)."""

from __future__ import annotations

import torch
from torch import nn

Mask = dict[str, torch.Tensor]


def full_mask(model: nn.Module, names: list[str]) -> Mask:
    params = dict(model.named_parameters())
    return {n: torch.ones_like(params[n], dtype=torch.bool) for n in names}


def remaining(mask: Mask) -> int:
    return int(sum(int(m.sum()) for m in mask.values()))


def total(mask: Mask) -> int:
    return int(sum(m.numel() for m in mask.values()))


def density(mask: Mask) -> float:
    return remaining(mask) / max(total(mask), 1)


def layer_sparsity(mask: Mask) -> dict[str, float]:
    return {n: 1.0 - float(m.float().mean()) for n, m in mask.items()}
