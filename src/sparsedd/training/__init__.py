"""Training masked models: the shared types (:mod:`.core`), the epoch loop (:mod:`.loop`), the ways
a step is computed (:mod:`.execution`, :mod:`.sparse`, :mod:`.batched`, :mod:`.captured`,
:mod:`.together`) and the one place that chooses among them (:mod:`.planner`)."""

from .core import TrainData, TrainResult, evaluate
from .optim import build_optimizer
from .planner import train
from .schedule import lr_at

__all__ = ["TrainData", "TrainResult", "evaluate", "train", "build_optimizer", "lr_at"]
