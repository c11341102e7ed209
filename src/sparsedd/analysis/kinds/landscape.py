"""``landscape``: the 1-D loss landscape around the level's solution, along a seeded filter-normalized
direction (zero on pruned weights unless ``all_weights``)."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import SparseddError
from ...rng import generator
from ..base import ANALYSES, MAX_POINTS, Analysis, Analyzer, figure
from ..landscape import filter_normalized_direction, loss_curve


@dataclass(frozen=True)
class LandscapeSettings:
    radius: float = 1.0  # alpha in [-radius, radius]
    points: int = 41
    seed: int = 0  # the direction's seed
    all_weights: bool = False  # by default the direction is zero on pruned weights

    def __post_init__(self) -> None:
        if not 3 <= self.points <= MAX_POINTS or self.radius <= 0:
            raise SparseddError(f"landscape: points must be in [3, {MAX_POINTS}] and radius > 0")


def compute(a: Analyzer, seed: int, level: int, sid: str, s: LandscapeSettings) -> dict:
    def measure() -> dict:
        rep, model, mask, final = a.model_at(seed, sid)
        direction = filter_normalized_direction(final["model"], generator(s.seed, "landscape"),
                                                None if s.all_weights else final["mask"])
        grid = [-s.radius + 2 * s.radius * i / (s.points - 1) for i in range(s.points)]
        pts = loss_curve(model, final["model"], direction, grid, rep.train_data)
        center = pts[len(pts) // 2]
        return {"points": pts, "train_loss_center": center["train_loss"], "test_loss_center": center["test_loss"],
                "train_loss_edges": (pts[0]["train_loss"] + pts[-1]["train_loss"]) / 2}
    return a.cached("landscape", sid, s, measure)


ANALYSES.register("landscape", Analysis(LandscapeSettings, compute, figure=figure("fig_landscape"),
                                        summary="1-D loss landscape"))
