"""Pruning strategies: pure functions (weights, mask, fraction, scope, ...) -> new mask.

Each round removes ``fraction`` of the weights that are still unpruned, either ranked over
all prunable layers together (``global``) or within each layer (``layer``).
"""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import SparseddError
from ..registry import Registry
from .gradient import gradient, gradient_saliency
from .mask import Mask, density, full_mask, layer_sparsity, remaining, total
from .select import prune_by_scores


# (weights, mask, *, fraction, scope, generator=, saliency=) -> the new mask; the loop passes a generator
# seeded per level, and the |w * dL/dw| saliency to the gradient method only
Strategy = Callable[..., Mask]
STRATEGIES: Registry[Strategy] = Registry("pruning method")


@STRATEGIES.register("magnitude")
def magnitude(weights: dict[str, torch.Tensor], mask: Mask, *, fraction: float, scope: str, **_: object) -> Mask:
    """Remove the unpruned weights of smallest absolute value."""
    return prune_by_scores({n: weights[n].abs() for n in mask}, mask, fraction=fraction, scope=scope)


@STRATEGIES.register("random")
def random(weights: dict[str, torch.Tensor], mask: Mask, *, fraction: float, scope: str,
           generator: torch.Generator | None = None, **_: object) -> Mask:
    """Remove unpruned weights at random (a seeded draw, independent per layer)."""
    if generator is None:
        raise SparseddError("random pruning needs a seeded generator")
    scores = {n: torch.rand(mask[n].shape, generator=generator) for n in sorted(mask)}
    return prune_by_scores(scores, mask, fraction=fraction, scope=scope)


STRATEGIES.register("gradient", gradient)


def get_strategy(name: str) -> Strategy:
    return STRATEGIES[name]


__all__ = [
    "Mask", "density", "full_mask", "layer_sparsity", "remaining", "total",
    "prune_by_scores", "magnitude", "random", "gradient", "gradient_saliency", "get_strategy", "STRATEGIES",
]
