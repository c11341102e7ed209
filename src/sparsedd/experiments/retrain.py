"""Where each retraining mode starts from, and with which schedule it trains."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Literal

from ..config import RunConfig, TrainConfig
from ..registry import Registry


@dataclass(frozen=True)
class RetrainMode:
    # the weights a level starts from, before its mask is applied: the previous level's final weights,
    # the dense run's weights at retrain.rewind_iteration, or a fresh init seeded per level
    start: Literal["previous", "rewind", "fresh"]
    schedule: Callable[[RunConfig], TrainConfig]  # a pruned level's training settings
    fields: tuple[str, ...] = ()  # the RetrainConfig fields it reads: they, and no others, enter its stage ids


RETRAIN_MODES: Registry[RetrainMode] = Registry("retraining mode")


def replay(cfg: RunConfig) -> TrainConfig:
    """Train each level as the dense network was trained."""
    return cfg.train


def finetune(cfg: RunConfig) -> TrainConfig:
    """A constant small learning rate, for retrain.finetune_epochs (0: train.epochs)."""
    r = cfg.retrain
    return dataclasses.replace(cfg.train, lr=r.finetune_lr, schedule="constant", milestones=(), warmup_epochs=0,
                               epochs=r.finetune_epochs or cfg.train.epochs)


def rewind(cfg: RunConfig) -> TrainConfig:
    """Replay the dense training: all of it (rewind_schedule = full), or from the rewind iteration to its end
    (rest: the paper's code, which rewinds the learning-rate schedule and the data order to that step too)."""
    r = cfg.retrain
    return dataclasses.replace(cfg.train, start_iteration=r.rewind_iteration) if r.rewind_schedule == "rest" else cfg.train


RETRAIN_MODES.register("finetune", RetrainMode("previous", finetune, fields=("finetune_lr", "finetune_epochs")))
RETRAIN_MODES.register("lr-rewind", RetrainMode("previous", replay))
RETRAIN_MODES.register("weight-rewind", RetrainMode("rewind", rewind, fields=("rewind_iteration", "rewind_schedule")))
RETRAIN_MODES.register("reinit", RetrainMode("fresh", replay))


def level_train_config(cfg: RunConfig) -> TrainConfig:
    """The schedule of a pruned level: finetuning uses a constant small LR, the other modes replay training."""
    return RETRAIN_MODES[cfg.retrain.mode].schedule(cfg)

