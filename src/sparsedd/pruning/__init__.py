"""Pruning methods: records (:class:`PruningMethod`) around pure functions (weights, mask, fraction,
scope, ...) -> new mask.

Each round removes ``fraction`` of the weights that are still unpruned, either ranked over
all prunable layers together (``global``) or within each layer (``layer``). A new method is one
function and one ``PRUNING_METHODS.register(name, PruningMethod(...))``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import SparseddError
from ..registry import Registry
from .gradient import gradient, gradient_saliency
from .method import PruningMethod, Strategy
from .mask import Mask, density, full_mask, layer_sparsity, remaining, total
from .select import COUNTS, PRUNABLE, Count, prune_by_scores
from .slimming import bn_convs, require_batch_norm, slimming, slimming_names

PRUNING_METHODS: Registry[PruningMethod] = Registry("pruning method")


def magnitude(weights: dict[str, torch.Tensor], mask: Mask, *, fraction: float, scope: str,
              count: Count = PRUNABLE, **_: object) -> Mask:
    """Remove the unpruned weights of smallest absolute value."""
    return prune_by_scores({n: weights[n].abs() for n in mask}, mask, fraction=fraction, scope=scope, count=count)


def random(weights: dict[str, torch.Tensor], mask: Mask, *, fraction: float, scope: str,
           generator: torch.Generator | None = None, count: Count = PRUNABLE, **_: object) -> Mask:
    """Remove unpruned weights at random (a seeded draw, independent per layer)."""
    if generator is None:
        raise SparseddError("random pruning needs a seeded generator")
    scores = {n: torch.rand(mask[n].shape, generator=generator) for n in sorted(mask)}
    return prune_by_scores(scores, mask, fraction=fraction, scope=scope, count=count)


def max_magnitude(weights: dict[str, torch.Tensor], mask: Mask, *, fraction: float, scope: str,
                  count: Count = PRUNABLE, **_: object) -> Mask:
    """Remove the unpruned weights of largest absolute value (the control of the paper's code's
    ``prune_max_magnitude``, as its help text states it; see docs/parity.md for what its code computes)."""
    return prune_by_scores({n: -weights[n].abs() for n in mask}, mask, fraction=fraction, scope=scope, count=count)


PRUNING_METHODS.register("magnitude", PruningMethod(magnitude, summary="smallest |w|"))
PRUNING_METHODS.register("random", PruningMethod(random, needs=("generator",), summary="seeded random weights"))
PRUNING_METHODS.register("max-magnitude", PruningMethod(max_magnitude, summary="largest |w|"))
PRUNING_METHODS.register("gradient", PruningMethod(gradient, needs=("saliency",), owns=("gradient_batches", "gradient_rule"),
                                                   summary="smallest |w * dL/dw|"))
PRUNING_METHODS.register("slimming", PruningMethod(slimming, needs=("bn_convs",), tensors=slimming_names,
                                                   check=require_batch_norm,
                                                   summary="batch-norm channels of smallest |gamma| and their filters"))


def get_strategy(name: str) -> Strategy:
    """The mask function of the pruning method ``name``."""
    return PRUNING_METHODS[name].select


def prunable_names(model: nn.Module, method: str, layers: str) -> list[str]:
    """The tensors a run's masks cover: the method's own set where it chooses it (slimming: batch-norm
    channels and the conv filters feeding them), otherwise the weights ``prune.layers`` selects."""
    own = PRUNING_METHODS[method].tensors
    return own(model) if own is not None else layer_names(model, layers)


def layer_names(model: nn.Module, layers: str) -> list[str]:
    """The weights ``prune.layers`` selects: the first or last n of every conv and linear weight
    (``first-N`` or ``last-N``, the paper's code's ``layers_to_prune``, in the model's order), otherwise
    the model's own selection."""
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
    for a method that chooses its own tensors (slimming, which counts channels)."""
    if count != "all-masked" or PRUNING_METHODS[method].tensors is not None:
        return 0
    params = dict(model.named_parameters())
    return sum(params[n].numel() for n in model.prunable_names("all") if n not in names)


__all__ = [
    "COUNTS", "Count", "PRUNABLE", "Mask", "density", "full_mask", "layer_sparsity", "remaining", "total",
    "prune_by_scores", "magnitude", "random", "gradient", "gradient_saliency", "slimming", "slimming_names", "bn_convs",
    "get_strategy", "prunable_names", "layer_names", "split_layers", "fixed_weights", "max_magnitude",
    "PRUNING_METHODS", "PruningMethod", "Strategy", "require_batch_norm",
]
