"""Training one masked model: optimizer, LR schedule, the epoch loop, evaluation."""

from .loop import TrainData, TrainResult, evaluate, train
from .optim import build_optimizer
from .schedule import lr_at

__all__ = ["TrainData", "TrainResult", "evaluate", "train", "build_optimizer", "lr_at"]
