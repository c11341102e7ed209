"""``interpolate``: losses and accuracies along the straight line from the level's sparse solution to its
re-dense solution (``target = redense``) or to the dense network (level 0), and the loss barrier on it."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import SparseddError
from ..base import ANALYSES, Analysis, Analyzer, figure
from ..interpolate import alphas as alpha_grid
from ..interpolate import interpolate
from . import redense
from .redense import RedenseSettings


@dataclass(frozen=True)
class InterpolateSettings:
    step: float = 0.01  # alpha step (paper: 0.01)
    target: str = "redense"  # the other end: the level's re-dense solution, or the dense network (level 0)
    # the re-dense solution's settings (`redense`'s lr and carry_optimizer; 0 and false: its defaults)
    redense_lr: float = 0.0
    redense_carry_optimizer: bool = False

    def __post_init__(self) -> None:
        if self.target not in ("redense", "dense"):
            raise SparseddError(f"interpolate: target must be redense or dense, got {self.target!r}")
        if not 0 < self.step <= 0.5:
            raise SparseddError(f"interpolate: step must be in (0, 0.5], got {self.step:g}")
        if self.redense_lr < 0:
            raise SparseddError(f"interpolate: redense_lr must be >= 0 (0: the run's), got {self.redense_lr:g}")

    def redense(self) -> RedenseSettings:
        """The settings of the re-dense solution at the line's other end."""
        return RedenseSettings(lr=self.redense_lr, carry_optimizer=self.redense_carry_optimizer)


def compute(a: Analyzer, seed: int, level: int, sid: str, s: InterpolateSettings) -> dict:
    def measure() -> dict:
        rep, model, mask, final = a.model_at(seed, sid)
        if s.target == "redense":
            redense.compute(a, seed, level, sid, s.redense())
            other = a.store.final(a.result_id("redense", sid, s.redense()))["model"]
        else:
            other = a.store.final(a.links[(seed, 0)])["model"]
        pts = interpolate(model, final["model"], other, alpha_grid(s.step), rep.train_data)
        ends = max(pts[0]["train_loss"], pts[-1]["train_loss"])
        return {"points": pts, "test_acc_sparse": pts[0]["test_acc"], "test_acc_other": pts[-1]["test_acc"],
                "train_loss_barrier": max(p["train_loss"] for p in pts) - ends,
                "test_acc_min": min(p["test_acc"] for p in pts)}
    return a.cached("interpolate", sid, s, measure)


ANALYSES.register("interpolate", Analysis(InterpolateSettings, compute, pruned_only=True,
                                          figure=figure("fig_interpolate"), summary="loss along the line between solutions"))
