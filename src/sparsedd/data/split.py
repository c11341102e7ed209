"""The validation split: part of the training set held out, with the labels a practitioner has (noisy)."""

from __future__ import annotations

import torch

from ..rng import generator


def held_out(n: int, fraction: float) -> int:
    """How many of ``n`` training examples ``data.val_split = fraction`` holds out (rounded to the nearest;
    the inner round keeps 0.1 * 30 at 3, not 3.0000000000000004)."""
    return round(round(fraction * n, 9))


def validation_split(n: int, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted indices of the examples trained on and of the ``round(fraction * n)`` held out.

    Drawn from a generator of its own, keyed by the fraction alone: like the test set, the split is a
    property of the data, the same for every seed and noise setting (so their networks can batch).
    """
    k = held_out(n, fraction)
    order = torch.randperm(n, generator=generator("val-split", fraction))
    return order[k:].sort().values, order[:k].sort().values
