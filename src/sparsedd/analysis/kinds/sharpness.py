"""``sharpness``: the top eigenvalue (power iteration) and the trace (Hutchinson) of the training loss's
Hessian at the level's solution, over the pruned network's free weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import SparseddError
from ...rng import generator
from ..base import ANALYSES, MAX_ITERATIONS, Analysis, Analyzer, figure
from ..hessian import hutchinson_trace, top_eigenvalue


@dataclass(frozen=True)
class SharpnessSettings:
    iters: int = 100  # power iterations at most
    tol: float = 1e-3  # relative change of the eigenvalue that stops the iteration
    trace_samples: int = 20  # Hutchinson samples
    subsample: int = 0  # 0: the full training set; else a seeded subsample of this size
    seed: int = 0

    def __post_init__(self) -> None:
        counts = (self.iters, self.trace_samples)
        if not all(1 <= n <= MAX_ITERATIONS for n in counts) or self.subsample < 0:
            raise SparseddError(f"sharpness: iters and trace_samples must be in [1, {MAX_ITERATIONS}], subsample >= 0")


def compute(a: Analyzer, seed: int, level: int, sid: str, s: SharpnessSettings) -> dict:
    def measure() -> dict:
        rep, model, mask, final = a.model_at(seed, sid)
        x, y = rep.train_data.x, rep.train_data.y
        if s.subsample:
            idx = torch.randperm(x.shape[0], generator=generator(s.seed, "sharpness-subsample"))[:s.subsample]
            x, y = x[idx.to(x.device)], y[idx.to(y.device)]
        eig = top_eigenvalue(model, x, y, mask, iters=s.iters, tol=s.tol, generator=generator(s.seed, "power"))
        tr = hutchinson_trace(model, x, y, mask, samples=s.trace_samples, generator=generator(s.seed, "hutchinson"))
        return {"top_eigenvalue": eig.value, "iterations": eig.iterations, "rel_change": eig.rel_change,
                "converged": eig.converged, "trace": tr.value, "trace_stderr": tr.stderr,
                "trace_samples": tr.samples, "examples": int(x.shape[0])}
    return a.cached("sharpness", sid, s, measure)


ANALYSES.register("sharpness", Analysis(SharpnessSettings, compute, figure=figure("fig_sharpness"),
                                        summary="top Hessian eigenvalue"))
