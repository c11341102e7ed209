"""Where each retraining mode starts from, and with which schedule it trains."""

from __future__ import annotations

import dataclasses

import torch

from ..config import RunConfig, TrainConfig

StateDict = dict[str, torch.Tensor]


def level_train_config(cfg: RunConfig) -> TrainConfig:
    """The schedule of a pruned level: finetuning uses a constant small LR, the other modes replay training."""
    r = cfg.retrain
    if r.mode != "finetune":
        return cfg.train
    return dataclasses.replace(cfg.train, lr=r.finetune_lr, schedule="constant", milestones=(), warmup_epochs=0,
                               epochs=r.finetune_epochs or cfg.train.epochs)


def start_weights(mode: str, *, previous: StateDict, rewind: StateDict, fresh: StateDict) -> StateDict:
    """The weights a level starts from, before its mask is applied.

    finetune, lr-rewind: the previous level's final weights; weight-rewind: the dense run's weights at
    the rewind iteration (its init for iteration 0); reinit: a fresh random init (seeded per level).
    """
    if mode in ("finetune", "lr-rewind"):
        return previous
    if mode == "weight-rewind":
        return rewind
    if mode == "reinit":
        return fresh
    raise ValueError(f"unknown retraining mode {mode!r}")
