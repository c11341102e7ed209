"""Model builders by name. Every model exposes ``prunable_names(layers)``."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import SparseddError
from .mlp import MLP
from .resnet import resnet18, resnet101
from .vgg import vgg16

DEFAULT_MLP_HIDDEN = (256, 256)

# image models: name -> (builder, smallest height/width they accept, the data they are meant for)
IMAGE_MODELS = {
    "resnet18": (resnet18, 8, "cifar10 or cifar100"),
    "vgg16": (vgg16, 16, "cifar10 or cifar100"),
    "resnet101": (resnet101, 8, "tinyimagenet"),
}


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
    elif cfg.name in IMAGE_MODELS:
        builder, min_size, meant_for = IMAGE_MODELS[cfg.name]
        shape = tuple(input_shape)
        if len(shape) != 3 or shape[0] != 3:
            raise SparseddError(f"{cfg.name} expects 3-channel images [3, H, W] ({meant_for}), the data has shape "
                                f"{list(shape)}; use an image data set or model.name = 'mlp'")
        if min(shape[1:]) < min_size:
            raise SparseddError(f"{cfg.name} expects images of at least {min_size}x{min_size}, the data has "
                                f"{shape[1]}x{shape[2]}; use {meant_for}")
        model = builder(num_classes)
    else:  # config validation makes this unreachable
        raise SparseddError(f"unknown model {cfg.name!r}")
    reset_parameters(model, seed)
    return model


_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def reset_parameters(model: nn.Module, seed: int) -> None:
    """Re-initialize ``model`` from a generator of its own (never the global RNG).

    Conv and linear weights (any weight outside a norm layer): Kaiming normal with fan-in
    ``p[0].numel()`` and ReLU gain, drawn in ``named_parameters`` order; biases zero; batch-norm
    weights one and biases zero, with running statistics reset. Only the Kaiming weights consume
    random numbers, so the MLP's init is the same as when every non-bias parameter was drawn.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _NORMS):
                if isinstance(module, nn.modules.batchnorm._NormBase):
                    module.reset_running_stats()
                for name, p in module.named_parameters(recurse=False):
                    p.fill_(1.0 if name == "weight" else 0.0)
                continue
            for name, p in module.named_parameters(recurse=False):
                if name.endswith("bias"):
                    p.zero_()
                else:
                    fan_in = p[0].numel()
                    p.copy_(torch.randn(p.shape, generator=g) * (2.0 / fan_in) ** 0.5)
