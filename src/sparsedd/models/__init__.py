"""Model builders by name, or a user's own builder as ``"package.module:function"`` (:mod:`.imported`).
Every model exposes ``prunable_names(layers)``: the weights ``prune.layers`` selects, or a one-line error
for a value the model does not support."""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import SparseddError
from ..pruning import layer_names
from ..registry import Registry
from ..rng import generator, global_rng_kept
from .imported import imported_builder, is_import_path
from .mlp import MLP
from .resnet import resnet18, resnet101
from .vgg import vgg16
from .vit import vit

# (config, one input's shape, classes) -> the model, after checking that it fits the input
Builder = Callable[[ModelConfig, tuple[int, ...], int], nn.Module]
MODELS: Registry[Builder] = Registry("model")

DEFAULT_MLP_HIDDEN = (256, 256)


def is_user_model(name: str) -> bool:
    """Whether ``model.name`` names a user's builder (``"package.module:function"``), not a registered model."""
    return name not in MODELS and is_import_path(name)


def builder_of(name: str) -> Builder:
    """The registered builder ``name``, or the user's function a ``"package.module:function"`` names."""
    return imported_builder(name) if is_user_model(name) else MODELS[name]


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int, seed: int) -> nn.Module:
    """Build the model on the CPU with an init that depends only on ``seed``: the project's
    (:func:`reset_parameters`), or a user's builder's own under the global RNG seeded with ``seed``."""
    if is_user_model(cfg.name):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return builder_of(cfg.name)(cfg, tuple(input_shape), num_classes)
    with global_rng_kept():
        model = MODELS[cfg.name](cfg, tuple(input_shape), num_classes)
    reset_parameters(model, seed, bias_init=cfg.bias_init, bn_init=cfg.bn_init)
    return model



@functools.lru_cache(maxsize=64)
def check_takes(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int, layers: str) -> None:
    """A one-line error unless the model takes inputs of ``input_shape`` and has the weights ``layers``
    (``prune.layers``) selects. The model is built and run once on the meta device (no memory, no init),
    so a run is checked in milliseconds, before it is registered; each combination once per process."""
    with torch.device("meta"):
        model = builder_of(cfg.name)(cfg, tuple(input_shape), num_classes)  # the builder's own checks
        layer_names(model, layers)
        try:
            model(torch.empty(2, *input_shape))
        except (RuntimeError, NotImplementedError) as e:  # a shape mismatch the builder did not foresee
            if "meta" in str(e).lower():  # an operation meta tensors lack (a model reading values): not a misfit
                return
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SparseddError(f"{cfg.name} cannot take inputs of shape {list(input_shape)} ({reason}); "
                                f"choose another model.name or data set") from None


@MODELS.register("lenet-300-100")
def build_lenet_300_100(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    features = math.prod(input_shape)
    if features != 784:
        raise SparseddError(f"lenet-300-100 expects 28x28 inputs (784 features), the data has {features}; "
                            f"use model.name = 'mlp'")
    return MLP(784, (300, 100), num_classes)


@MODELS.register("mlp")
def build_mlp(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return MLP(math.prod(input_shape), cfg.hidden or DEFAULT_MLP_HIDDEN, num_classes)


def image_model(builder: Callable[..., nn.Module], min_size: int, meant_for: str) -> Builder:
    """A builder for a network of images [C, H, W] at least ``min_size`` wide (``meant_for``: its data, for messages)."""
    def build(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        if len(input_shape) != 3:
            raise SparseddError(f"{cfg.name} expects images [C, H, W] ({meant_for}), the data has shape "
                                f"{list(input_shape)}; use an image data set or model.name = 'mlp'")
        if min(input_shape[1:]) < min_size:
            raise SparseddError(f"{cfg.name} expects images of at least {min_size}x{min_size}, the data has "
                                f"{input_shape[1]}x{input_shape[2]}; use {meant_for}")
        return builder(num_classes, in_channels=input_shape[0], width=cfg.width or 64)
    return build


MODELS.register("resnet18", image_model(resnet18, 8, "cifar10 or cifar100"))
MODELS.register("vgg16", image_model(vgg16, 16, "cifar10 or cifar100"))
MODELS.register("resnet101", image_model(resnet101, 8, "tinyimagenet"))


@MODELS.register("vit")
def build_vit(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return vit(cfg.width, input_shape, num_classes)


_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def reset_parameters(model: nn.Module, seed: int, *, bias_init: str = "zero", bn_init: str = "one") -> None:
    """Re-initialize ``model`` from generators of its own (never the global RNG).

    Conv and linear weights (any weight outside a norm layer): Kaiming normal with fan-in
    ``p[0].numel()`` and ReLU gain, drawn in ``named_parameters`` order from the generator of ``seed``.
    Biases: zero, or with ``bias_init = torch`` PyTorch's default uniform(+-1/sqrt(fan_in)) (what the
    paper's code leaves in place). Batch-norm weights one, or with ``bn_init = uniform`` uniform(0, 1) (the
    paper's code), and biases zero, with running statistics reset. Biases and batch-norm scales draw from
    generators of their own keyed by ``seed``, so the Kaiming weights are the same whatever those choices
    (and the MLP's init is the same as when every non-bias parameter was drawn).
    """
    g = torch.Generator().manual_seed(seed)
    g_bias, g_bn = generator(seed, "bias-init"), generator(seed, "bn-init")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _NORMS):
                _reset_norm(module, bn_init, g_bn)
                continue
            params = dict(module.named_parameters(recurse=False))
            for name, p in params.items():
                if not name.endswith("bias"):
                    fan_in = p[0].numel()
                    p.copy_(torch.randn(p.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            for name, p in params.items():
                if name.endswith("bias"):
                    _reset_bias(p, params.get(name[:-len("bias")] + "weight"), bias_init, g_bias)


def _reset_bias(bias: torch.Tensor, weight: torch.Tensor | None, how: str, g: torch.Generator) -> None:
    """Zero, or PyTorch's default for linear and conv layers: uniform(+-1/sqrt(fan_in)), fan_in from the weight."""
    if how == "zero" or weight is None:
        bias.zero_()
        return
    bound = 1.0 / weight[0].numel() ** 0.5
    bias.copy_(torch.rand(bias.shape, generator=g) * 2 * bound - bound)


def _reset_norm(module: nn.Module, how: str, g: torch.Generator) -> None:
    is_bn = isinstance(module, nn.modules.batchnorm._NormBase)
    if is_bn:
        module.reset_running_stats()
    for name, p in module.named_parameters(recurse=False):
        if name == "weight" and is_bn and how == "uniform":
            p.copy_(torch.rand(p.shape, generator=g))
        else:
            p.fill_(1.0 if name == "weight" else 0.0)
