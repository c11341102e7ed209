"""Network slimming (Liu et al. 2017), structured: a channel is pruned by the magnitude of its batch-norm
scale (gamma), ranked over all batch-norm layers together, as in He et al.'s code
(``pruning/network_slimming.py``; ``prune.scope = layer`` ranks within each layer instead).

A pruned channel has its BN scale and shift masked together, so it outputs exactly zero, and the conv
filter (output channel) that feeds it is masked too: it computes nothing the network uses, and masking
it makes the pruned weights count in the sparsity. (He et al. mask only the BN parameters.)

Which conv feeds which batch norm is the model's structure, not something the weights say: names are
a convention (``conv1``/``bn1``, but ``downsample.0``/``downsample.1``) and shapes are ambiguous (many
convs have 64 output channels). So the loop traces the model's forward once (:func:`bn_convs`, torch.fx,
which follows the data flow of any model) and hands the strategy the result as plain names; the
strategy stays a pure function of tensors and names.
"""

from __future__ import annotations

import torch
import torch.fx
from torch import nn

from ..errors import SparseddError
from .mask import Mask
from .select import PRUNABLE, Count, prune_by_scores

BatchNormConvs = dict[str, str | None]  # batch-norm layer -> the conv weight whose output it normalizes, or None


def bn_convs(model: nn.Module) -> BatchNormConvs:
    """Every batch-norm layer of ``model`` (in forward order) and the conv weight feeding it, from the
    traced forward pass (works on the meta device: nothing is computed)."""
    modules = dict(model.named_modules())
    out: BatchNormConvs = {}
    for node in torch.fx.symbolic_trace(model).graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], nn.modules.batchnorm._BatchNorm):
            src = node.args[0]
            feeds = src.op == "call_module" and isinstance(modules[src.target], nn.Conv2d)
            out[node.target] = f"{src.target}.weight" if feeds else None
    return out


def require_batch_norm(model: nn.Module, name: str) -> None:
    """Slimming prunes batch-norm channels: a one-line error when the model has none (checked with the
    config, on a model built on the meta device, not after the dense network trained)."""
    if not bn_convs(model):
        raise SparseddError(f"prune.method = 'slimming' prunes batch-norm channels and model {name!r} has none; "
                            f"use resnet18, vgg16 or resnet101, or another prune.method")


def slimming_names(model: nn.Module) -> list[str]:
    """The tensors slimming masks: every batch-norm weight and bias, and the conv weights feeding them.

    This set replaces ``prune.layers`` (which selects conv and linear weights for unstructured methods).
    """
    pairs = bn_convs(model)
    if not pairs:  # the configuration checks this first, with the model's name
        raise SparseddError(f"slimming prunes batch-norm channels and {type(model).__name__} has none")
    bn = [f"{b}.{p}" for b in pairs for p in ("weight", "bias")]
    return bn + [c for c in pairs.values() if c is not None]


def slimming(weights: dict[str, torch.Tensor], mask: Mask, *, fraction: float, scope: str,
             bn_convs: BatchNormConvs | None = None, count: Count = PRUNABLE, **_: object) -> Mask:
    """Remove the ``fraction`` of unpruned channels with the smallest |gamma|: their BN weight and bias,
    and the conv filters feeding them (``bn_convs``: from :func:`bn_convs`)."""
    if bn_convs is None:
        raise ValueError("slimming needs the model's batch-norm layers and their convs (see bn_convs)")
    gammas = [f"{b}.weight" for b in bn_convs]
    channels = prune_by_scores({n: weights[n].abs() for n in gammas}, {n: mask[n] for n in gammas},
                               fraction=fraction, scope=scope, count=Count(count.rule))
    new = {n: m.clone() for n, m in mask.items()}
    for bn, conv in bn_convs.items():
        alive = channels[f"{bn}.weight"]
        new[f"{bn}.weight"], new[f"{bn}.bias"] = alive, alive.clone()
        if conv is not None:  # a filter is one output channel: [C_out, C_in, k, k]
            new[conv] = mask[conv] & alive.view(-1, *[1] * (mask[conv].dim() - 1))
    return new
