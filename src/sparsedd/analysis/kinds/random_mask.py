"""``random-mask``: the paper code's random-mask control (``randomly_prune``): the level's mask shuffled and
trained from the level's start weights as the level was, against the ticket's test accuracy."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import SparseddError
from ...experiments.retrain import level_train_config
from ...rng import generator
from ..base import ANALYSES, MAX_INITS, Analysis, Analyzer, Training, figure, pending
from ..masks import shuffle_mask


@dataclass(frozen=True)
class RandomMaskSettings:
    """The paper code's random-mask control (``randomly_prune``): the level's mask shuffled, ``layerwise``
    (each layer's entries permuted: its density kept) or ``global`` (permuted over all layers: only the
    total kept), trained from the level's start weights as the level was."""

    strategy: str = "layerwise"
    masks: int = 1  # shuffled masks per level
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in ("layerwise", "global"):
            raise SparseddError(f"random-mask: strategy must be layerwise or global, got {self.strategy!r}")
        if not 1 <= self.masks <= MAX_INITS:
            raise SparseddError(f"random-mask: masks must be in [1, {MAX_INITS}]")


def trainings(a: Analyzer, seed: int, level: int, sid: str, s: RandomMaskSettings) -> list[Training]:
    """The level's start weights under shuffled copies of its mask, trained as the level was."""
    rep, _, mask, _ = a.model_at(seed, sid)
    start = a.start_weights(seed, level, sid)
    key = a.result_id("random-mask", sid, s)
    out = []
    for i in range(s.masks):
        model = rep.new_model(0)
        model.load_state_dict(start)
        shuffled = shuffle_mask({n: m.cpu() for n, m in mask.items()}, s.strategy,
                                generator(seed, "random-mask", s.seed, level, i))
        out.append(Training((key, i), model, rep.train_data, level_train_config(rep.cfg),
                            {n: m.to(a.options.device) for n, m in shuffled.items()}, (seed, "order")))
    return out


def compute(a: Analyzer, seed: int, level: int, sid: str, s: RandomMaskSettings) -> dict:
    return a.against_ticket("random-mask", sid, s, lambda: trainings(a, seed, level, sid, s), "mask")


ANALYSES.register("random-mask", Analysis(RandomMaskSettings, compute, pruned_only=True,
                                          trainings=pending("random-mask", trainings),
                                          figure=figure("fig_random_mask"), summary="a random mask of the same sparsity"))
