"""Model builders by name. Every model exposes ``prunable_names(layers)``."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import SparseddError
from .mlp import MLP

DEFAULT_MLP_HIDDEN = (256, 256)


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int, seed: int) -> nn.Module:
    """Build the model on the CPU with an init that depends only on ``seed``."""
    in_features = 1
    for d in input_shape:
        in_features *= d
    if cfg.name == "lenet-300-100":
        if in_features != 784:
            raise SparseddError(f"lenet-300-100 expects 28x28 inputs (784 features), the data has {in_features}; use model.name = 'mlp'")
        model = MLP(784, (300, 100), num_classes)
    elif cfg.name == "mlp":
        model = MLP(in_features, cfg.hidden or DEFAULT_MLP_HIDDEN, num_classes)
    else:  # config validation makes this unreachable
        raise SparseddError(f"unknown model {cfg.name!r}")
    reset_parameters(model, seed)
    return model


def reset_parameters(model: nn.Module, seed: int) -> None:
    """Kaiming-normal weights (fan-in, ReLU gain) and zero biases from a generator of its own."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / fan_in) ** 0.5)
