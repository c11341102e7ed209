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
from .select import COUNTS, PRUNABLE, Count, prune_by_scores
from .slimming import bn_convs, slimming, slimming_names


# (weights, mask, *, fraction, scope, generator=, saliency=, bn_convs=) -> the new mask; the loop passes a
# generator seeded per level, the |w * dL/dw| saliency to the gradient method only, and which conv feeds
# each batch norm to slimming only
Strategy = Callable[..., Mask]
STRATEGIES: Registry[Strategy] = Registry("pruning method")


@STRATEGIES.register("magnitude")
def magnitude(weights: dict[str, torch.Tensor], mask: Mask, *, fraction: float, scope: str,
              count: Count = PRUNABLE, **_: object) -> Mask:
    """Remove the unpruned weights of smallest absolute value."""
    return prune_by_scores({n: weights[n].abs() for n in mask}, mask, fraction=fraction, scope=scope, count=count)


@STRATEGIES.register("random")
def random(weights: dict[str, torch.Tensor], mask: Mask, *, fraction: float, scope: str,
           generator: torch.Generator | None = None, count: Count = PRUNABLE, **_: object) -> Mask:
    """Remove unpruned weights at random (a seeded draw, independent per layer)."""
    if generator is None:
        raise SparseddError("random pruning needs a seeded generator")
    scores = {n: torch.rand(mask[n].shape, generator=generator) for n in sorted(mask)}
    return prune_by_scores(scores, mask, fraction=fraction, scope=scope, count=count)


@STRATEGIES.register("max-magnitude")
def max_magnitude(weights: dict[str, torch.Tensor], mask: Mask, *, fraction: float, scope: str,
                  count: Count = PRUNABLE, **_: object) -> Mask:
    """Remove the unpruned weights of largest absolute value (the control of the paper's code's
    ``prune_max_magnitude``, as its help text states it; see docs/parity.md for what its code computes)."""
    return prune_by_scores({n: -weights[n].abs() for n in mask}, mask, fraction=fraction, scope=scope, count=count)


STRATEGIES.register("gradient", gradient)
STRATEGIES.register("slimming", slimming)


def get_strategy(name: str) -> Strategy:
    return STRATEGIES[name]


def prunable_names(model: nn.Module, method: str, layers: str) -> list[str]:
    """The tensors a run's masks cover: slimming's own set (batch-norm channels and the conv filters
    feeding them), the first or last n of every conv and linear weight (``prune.layers = first-N`` or
    ``last-N``, the paper's code's ``layers_to_prune``, in the model's order), otherwise the model's
    selection for ``prune.layers``."""
    if method == "slimming":
        return slimming_names(model)
    end, n = split_layers(layers)
    if end is None:
        return model.prunable_names(layers)
    every = model.prunable_names("all")
    if n > len(every):
        raise SparseddError(f"prune.layers = {layers!r} asks for {n} layers and {type(model).__name__} has "
                            f"{len(every)} conv and linear weights; use at most {end}-{len(every)}")
    return every[:n] if end == "first" else every[-n:]


def split_layers(layers: str) -> tuple[str | None, int]:
    """``first-N`` / ``last-N`` -> ("first" | "last", N); any other value -> (None, 0)."""
    end, _, n = layers.partition("-")
    return (end, int(n)) if end in ("first", "last") and n.isdigit() and int(n) > 0 else (None, 0)


def fixed_weights(model: nn.Module, names: list[str], method: str, count: str) -> int:
    """The weights ``prune.count = all-masked`` counts beside the mask: every conv and linear weight the run
    never prunes (OpenLTH keeps them in its mask, all ones: LeNet-300-100's output layer). 0 otherwise, and
    for slimming, which counts channels."""
    if count != "all-masked" or method == "slimming":
        return 0
    params = dict(model.named_parameters())
    return sum(params[n].numel() for n in model.prunable_names("all") if n not in names)


__all__ = [
    "COUNTS", "Count", "PRUNABLE", "Mask", "density", "full_mask", "layer_sparsity", "remaining", "total",
    "prune_by_scores", "magnitude", "random", "gradient", "gradient_saliency", "slimming", "slimming_names", "bn_convs",
    "get_strategy", "prunable_names", "split_layers", "fixed_weights", "max_magnitude", "STRATEGIES",
]
