"""A pruning method as a record, as retraining modes are: its pure mask function, and what it declares.

The pipeline reads the record, never the method's name: it computes the inputs the method ``needs``
(each by the provider of that name, ``experiments/replicate.py``'s ``PRUNING_INPUTS``), puts the
settings it ``owns`` in its stage ids (and no other method's), masks the tensors it chooses when it
chooses its own (``tensors``, replacing ``prune.layers``), and asks it whether a model suits it
(``check``) before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from .mask import Mask

# (weights, mask, *, fraction, scope, count, **inputs) -> the new mask; ``inputs``: what the method needs
Strategy = Callable[..., Mask]


@dataclass(frozen=True)
class PruningMethod:
    select: Strategy
    # inputs beyond the weights and the mask, by name: "generator" (seeded per level), "saliency" (|w * dL/dw|),
    # "bn_convs" (which conv feeds each batch norm), or one a new provider adds
    needs: tuple[str, ...] = ()
    # the prune.* settings only this method reads: they enter its stage ids, and no other method's (the
    # config's fields name their method too, for run ids: tests/test_registry.py checks the two agree)
    owns: tuple[str, ...] = ()
    # the tensors its masks cover when it chooses them itself (then prune.layers does not apply, and
    # prune.count = all-masked counts nothing beside them); None: the weights prune.layers selects
    tensors: Callable[[nn.Module], list[str]] | None = None
    # (the model, built on the meta device; its name) -> raise a one-line SparseddError if the method
    # cannot prune it; called when a config is checked, before anything is written
    check: Callable[[nn.Module, str], Any] | None = None
    summary: str = ""  # what it removes, in a few words (messages)
