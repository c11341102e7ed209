"""Optimizers from the training config."""

from __future__ import annotations

import torch

from ..config import TrainConfig


def _impl(params: list[torch.Tensor]) -> dict[str, bool]:
    """The fused kernels (one call per step for all parameters) where torch has them, else foreach:
    both much cheaper per step than the per-parameter loop torch picks by default on CPU."""
    if params and all(p.dtype == torch.float32 and p.device.type in ("cpu", "cuda") for p in params):
        return {"fused": True}
    return {"foreach": True}


def build_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = list(params)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay, **_impl(params))
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **_impl(params))
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")
