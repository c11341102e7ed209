"""``stability``: OpenLTH's instability analysis along the curve. At a level, two copies are trained from the
weights the level started from (level 0: the dense init; else what the retraining mode starts the level
from) with the level's mask and schedule but two data orders of their own (order keys distinct from the
run's); the error barrier on the straight line between them is the largest error of an interpolated
network minus the mean of the two ends' errors, on the test set and on the training set (noisy labels),
beside the level's test accuracy. A level is stable where the barrier is about zero."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import SparseddError
from ..base import ANALYSES, MAX_POINTS, Analysis, Analyzer, Training, figure, pending
from ..interpolate import alphas as alpha_grid
from ..interpolate import interpolate

COPIES = 2


@dataclass(frozen=True)
class StabilitySettings:
    alphas: int = 31  # points on the line between the two copies, both ends included
    seed: int = 0  # seeds the copies' data orders, (run seed, "stability", seed, copy)

    def __post_init__(self) -> None:
        if not 3 <= self.alphas <= MAX_POINTS:
            raise SparseddError(f"stability: alphas must be in [3, {MAX_POINTS}] (both ends included)")
        if self.seed < 0:
            raise SparseddError("stability: seed must be >= 0")


def order_key(seed: int, s: StabilitySettings, copy: int) -> tuple:
    """Copy ``copy``'s data order; the run's own is (seed, "order"), which no copy takes."""
    return (seed, "stability", s.seed, copy)


def trainings(a: Analyzer, seed: int, level: int, sid: str, s: StabilitySettings) -> list[Training]:
    """Two copies from the level's start weights, with its mask and schedule and their own data orders."""
    rep, _, mask, _ = a.model_at(seed, sid)
    start = a.store.init(a.links[(seed, 0)]) if level == 0 else a.start_weights(seed, level, sid)
    key = a.result_id("stability", sid, s)
    out = []
    for copy in range(COPIES):
        model = rep.new_model(0)
        model.load_state_dict(start)
        out.append(Training((key, copy), model, rep.train_data, rep.schedule(level), mask, order_key(seed, s, copy)))
    return out


def barrier(points: list[dict], key: str) -> float:
    """The largest error (1 - ``key``) along the line minus the mean of the two ends' errors."""
    errors = [1.0 - p[key] for p in points]
    return max(errors) - (errors[0] + errors[-1]) / 2


def compute(a: Analyzer, seed: int, level: int, sid: str, s: StabilitySettings) -> dict:
    def measure() -> dict:
        ts = trainings(a, seed, level, sid, s)
        ends = []
        for t in ts:
            a.fit(t)
            ends.append({k: v.detach().clone() for k, v in t.model.state_dict().items()})
        pts = interpolate(ts[0].model, ends[0], ends[1], alpha_grid(1.0 / (s.alphas - 1)), a.replicate(seed).train_data)
        return {"points": pts, "test_error_barrier": barrier(pts, "test_acc"),
                "train_error_barrier": barrier(pts, "train_acc_noisy"),
                "copies_test_acc": (pts[0]["test_acc"] + pts[-1]["test_acc"]) / 2,
                "copies_train_acc_noisy": (pts[0]["train_acc_noisy"] + pts[-1]["train_acc_noisy"]) / 2,
                "min_test_acc": min(p["test_acc"] for p in pts)}
    return a.cached("stability", sid, s, measure)


ANALYSES.register("stability", Analysis(StabilitySettings, compute, trainings=pending("stability", trainings),
                                        figure=figure("fig_stability"),
                                        summary="error barrier between two copies trained on other data orders"))
