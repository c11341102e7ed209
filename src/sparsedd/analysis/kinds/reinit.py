"""``reinit``: the ticket's mask from fresh random inits, trained as the level was (same schedule and example
order), against the ticket's test accuracy; for weight-rewind runs."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import SparseddError
from ...experiments.retrain import level_train_config
from ...rng import derive_seed
from ..base import ANALYSES, MAX_INITS, Analysis, Analyzer, Training, figure, pending


@dataclass(frozen=True)
class ReinitSettings:
    inits: int = 1  # fresh random inits per level
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.inits <= MAX_INITS:
            raise SparseddError(f"reinit: inits must be in [1, {MAX_INITS}]")


def _check_ticket_run(a: Analyzer) -> None:
    if a.cfg.retrain.mode != "weight-rewind":
        raise SparseddError("the reinit analysis compares with winning tickets: use it on a weight-rewind run")


def trainings(a: Analyzer, seed: int, level: int, sid: str, s: ReinitSettings) -> list[Training]:
    """Fresh networks under the level's mask, trained as the level was (same schedule and example order)."""
    _check_ticket_run(a)
    rep, _, mask, _ = a.model_at(seed, sid)
    cfg = level_train_config(rep.cfg)
    key = a.result_id("reinit", sid, s)
    return [Training((key, i), rep.new_model(derive_seed(seed, "reinit-analysis", s.seed, level, i)),
                     rep.train_data, cfg, mask, (seed, "order")) for i in range(s.inits)]


def compute(a: Analyzer, seed: int, level: int, sid: str, s: ReinitSettings) -> dict:
    _check_ticket_run(a)
    return a.against_ticket("reinit", sid, s, lambda: trainings(a, seed, level, sid, s), "init")


ANALYSES.register("reinit", Analysis(ReinitSettings, compute, pruned_only=True, trainings=pending("reinit", trainings),
                                     figure=figure("fig_reinit"), summary="the ticket's mask from a new init"))
