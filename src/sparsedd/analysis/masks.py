"""Shuffled masks: the random-mask control of the paper's code (``experiments/branch/randomly_prune.py``)."""

from __future__ import annotations

import torch

from ..pruning import Mask


def shuffle_mask(mask: Mask, strategy: str, g: torch.Generator) -> Mask:
    """``mask`` with its entries permuted: ``layerwise`` within each tensor (each layer keeps its density), or
    ``global`` over all tensors together (only the total is kept); tensors in name order, one generator."""
    names = sorted(mask)
    if strategy == "layerwise":
        return {n: mask[n].flatten()[torch.randperm(mask[n].numel(), generator=g)].view_as(mask[n]) for n in names}
    flat = torch.cat([mask[n].flatten() for n in names])
    flat = flat[torch.randperm(flat.numel(), generator=g)]
    out, at = {}, 0
    for n in names:
        out[n] = flat[at:at + mask[n].numel()].view_as(mask[n])
        at += mask[n].numel()
    return out
