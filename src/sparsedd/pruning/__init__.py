"""Pruning strategies: pure functions (weights, mask, fraction, scope, ...) -> new mask.

Each round removes ``fraction`` of the weights that are still unpruned, either ranked over
all prunable layers together (``global``) or within each layer (``layer``).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..errors import SparseddError
from ..registry import Registry
from .gradient import gradient, gradient_saliency
from .mask import Mask, density, full_mask, layer_sparsity, remaining, total
from .select import prune_by_scores
from .slimming import bn_convs, slimming, slimming_names


# (weights, mask, *, fraction, scope, generator=, saliency=, bn_convs=) -> the new mask; the loop passes a
# generator seeded per level, the |w * dL/dw| saliency to the gradient method only, and which conv feeds
# each batch norm to slimming only
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
STRATEGIES.register("slimming", slimming)


def get_strategy(name: str) -> Strategy:
    return STRATEGIES[name]


def prunable_names(model: nn.Module, method: str, layers: str) -> list[str]:
    """The tensors a run's masks cover: slimming's own set (batch-norm channels and the conv filters
    feeding them), otherwise the model's selection for ``prune.layers``."""
    return slimming_names(model) if method == "slimming" else model.prunable_names(layers)


__all__ = [
    "Mask", "density", "full_mask", "layer_sparsity", "remaining", "total",
    "prune_by_scores", "magnitude", "random", "gradient", "gradient_saliency", "slimming", "slimming_names", "bn_convs",
    "get_strategy", "prunable_names", "STRATEGIES",
]
