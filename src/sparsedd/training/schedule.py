"""Learning rate as a pure function of the iteration (so a resumed run needs no scheduler state)."""

from __future__ import annotations

import math

from ..config import TrainConfig


def lr_at(cfg: TrainConfig, iteration: int, iters_per_epoch: int) -> float:
    """The learning rate used for step ``iteration`` (0-based)."""
    total = cfg.epochs * iters_per_epoch
    warm = cfg.warmup_epochs * iters_per_epoch
    if warm and iteration < warm:
        return cfg.lr * (iteration + 1) / warm
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "multistep":
        epoch = iteration // iters_per_epoch
        return cfg.lr * cfg.gamma ** sum(1 for m in cfg.milestones if epoch >= m)
    if cfg.schedule == "cosine":
        t = (iteration - warm) / max(total - warm, 1)
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * min(t, 1.0)))
    raise ValueError(f"unknown schedule {cfg.schedule!r}")
