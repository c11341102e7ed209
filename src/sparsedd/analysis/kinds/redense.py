"""``redense``: the pruned weights given back (at zero) and the level's network trained on, dense, at a
constant learning rate; its final accuracies, history and learning distance from the dense init."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ... import config as config_mod
from ...errors import SparseddError
from ...config import TrainConfig
from ...experiments.distance import learning_distance
from ...training.schedule import lr_at
from ..base import ANALYSES, Analysis, Analyzer, Training, figure, pending


@dataclass(frozen=True)
class RedenseSettings:
    epochs: int = 0  # 0: the run's train.epochs (paper: MNIST 200, CIFAR 160)
    # 0: the run's train.lr; constant. The paper's code goes on at the lr its schedule reached, with the momentum
    # it had: the same on MNIST (0.1, no momentum); on CIFAR --set lr=0.001 --set carry_optimizer=true
    lr: float = 0.0
    carry_optimizer: bool = False  # start from the level's final optimizer state instead of a fresh one

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.lr < 0:
            raise SparseddError(f"redense: epochs and lr must be >= 0 (0: the run's value), got epochs {self.epochs} "
                                f"and lr {self.lr:g}")
        if self.epochs > config_mod.MAX_EPOCHS:
            raise SparseddError(f"redense: epochs must be at most {config_mod.MAX_EPOCHS}")


def code_settings(train: TrainConfig | None) -> dict[str, Any]:
    """The paper code's re-dense for a run trained as ``train``, as settings of this analysis: training goes on
    at the rate its step schedule ended at, with the momentum it had (e.g. 0.001 and momentum 0.9 on CIFAR).
    Empty (this analysis's defaults, the same) for a constant rate without momentum, as on MNIST, and for the
    schedules the code does not have (a cosine's end is about 0)."""
    if train is None or train.schedule != "multistep":
        return {}
    end = float(f"{lr_at(train, train.epochs - 1, 1):.12g}")  # the last epoch's (0.1 x 0.1^2 read as 0.001)
    return {**({"lr": end} if end != train.lr else {}), **({"carry_optimizer": True} if train.momentum else {})}


def trainings(a: Analyzer, seed: int, level: int, sid: str, s: RedenseSettings) -> list[Training]:
    """The level's network, all its weights free, at a constant learning rate."""
    rep, model, mask, final = a.model_at(seed, sid)
    cfg = dataclasses.replace(rep.cfg.train, lr=s.lr or rep.cfg.train.lr, schedule="constant", milestones=(),
                              warmup_epochs=0, epochs=s.epochs or rep.cfg.train.epochs)
    opt_state = final.get("optim") if s.carry_optimizer else None
    return [Training((a.result_id("redense", sid, s),), model, rep.train_data, cfg, {}, (seed, "redense", level),
                     opt_state or None)]


def compute(a: Analyzer, seed: int, level: int, sid: str, s: RedenseSettings) -> dict:
    def measure() -> dict:
        t = trainings(a, seed, level, sid, s)[0]
        init = a.store.init(a.links[(seed, 0)])
        res = a.fit(t)
        state = {k: v.detach().cpu() for k, v in t.model.state_dict().items()}
        a.store.save_final(a.result_id("redense", sid, s), state)
        return {**res.final, "distance": learning_distance(state, init), "history": res.history}
    return a.cached("redense", sid, s, measure)


ANALYSES.register("redense", Analysis(RedenseSettings, compute, pruned_only=True, trainings=pending("redense", trainings),
                                      figure=figure("fig_redense"), summary="give pruned weights back, train on"))
