"""Sharpness: the top Hessian eigenvalue (power iteration) and the trace (Hutchinson), on unpruned weights.

Vectors live on the parameters; a mask restricts them to the unpruned weights, so the operator is
P H P with P the projection onto the unpruned coordinates (biases are never pruned).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

Vec = list[torch.Tensor]


def _dot(a: Vec, b: Vec) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def _project(v: Vec, masks: Vec) -> Vec:
    return [x * m for x, m in zip(v, masks)]


def param_masks(model: nn.Module, mask: dict[str, torch.Tensor] | None) -> tuple[Vec, Vec]:
    """The model's parameters and, for each, a float mask (ones where not pruned)."""
    params, masks = [], []
    for n, p in model.named_parameters():
        params.append(p)
        m = mask.get(n) if mask else None
        masks.append(m.to(p.dtype) if m is not None else torch.ones_like(p))
    return params, masks


def hvp(params: Vec, loss: torch.Tensor, v: Vec) -> Vec:
    """H v for a scalar ``loss`` of ``params`` (double backpropagation)."""
    grads = torch.autograd.grad(loss, params, create_graph=True)
    return [h.detach() for h in torch.autograd.grad(_dot(grads, v), params)]


def data_hvp(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 4096) -> Callable[[Vec], Vec]:
    """The operator v -> H v of the mean cross-entropy over (x, y), summed over chunks (H is linear in the loss)."""
    params = list(model.parameters())

    def op(v: Vec) -> Vec:
        out = [torch.zeros_like(p) for p in params]
        for i in range(0, x.shape[0], batch):
            loss = F.cross_entropy(model(x[i:i + batch]), y[i:i + batch], reduction="sum") / x.shape[0]
            for o, h in zip(out, hvp(params, loss, v)):
                o += h
        return out
    return op


@dataclass
class Eigen:
    value: float
    iterations: int
    rel_change: float  # |lambda_k - lambda_{k-1}| / |lambda_k| at the last iteration
    converged: bool


def power_iteration(op: Callable[[Vec], Vec], shapes: Vec, masks: Vec, *, iters: int = 100, tol: float = 1e-4,
                    generator: torch.Generator | None = None) -> Eigen:
    """Largest-magnitude eigenvalue of P op P, P the projection given by ``masks``."""
    g = generator or torch.Generator().manual_seed(0)
    v = _project([torch.randn(p.shape, generator=g).to(p.device, p.dtype) for p in shapes], masks)
    norm = torch.sqrt(_dot(v, v))
    v = [t / norm for t in v]
    lam, change, k = 0.0, float("inf"), 0
    for k in range(1, iters + 1):
        hv = _project(op(v), masks)
        new = float(_dot(v, hv))
        norm = torch.sqrt(_dot(hv, hv))
        if float(norm) == 0:
            lam, change = 0.0, 0.0
            break
        v = [t / norm for t in hv]
        change = abs(new - lam) / max(abs(new), 1e-12)
        lam = new
        if change < tol:
            break
    return Eigen(lam, k, change, change < tol)


@dataclass
class Trace:
    value: float
    stderr: float
    samples: int


def hutchinson(op: Callable[[Vec], Vec], shapes: Vec, masks: Vec, *, samples: int = 50,
               generator: torch.Generator | None = None) -> Trace:
    """tr(P op P) as the mean of v^T op v over Rademacher vectors v restricted by ``masks``."""
    g = generator or torch.Generator().manual_seed(0)
    values = []
    for _ in range(samples):
        v = _project([(torch.randint(0, 2, p.shape, generator=g) * 2 - 1).to(p.device, p.dtype) for p in shapes], masks)
        values.append(float(_dot(v, op(v))))
    mean = sum(values) / len(values)
    var = sum((t - mean) ** 2 for t in values) / max(len(values) - 1, 1)
    return Trace(mean, math.sqrt(var / len(values)), len(values))


def top_eigenvalue(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mask: dict | None = None, *,
                   iters: int = 100, tol: float = 1e-4, generator: torch.Generator | None = None) -> Eigen:
    """Top eigenvalue of the training-loss Hessian restricted to the unpruned weights."""
    params, masks = param_masks(model, mask)
    was = model.training
    model.eval()
    try:
        return power_iteration(data_hvp(model, x, y), params, masks, iters=iters, tol=tol, generator=generator)
    finally:
        model.train(was)


def hutchinson_trace(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mask: dict | None = None, *,
                     samples: int = 50, generator: torch.Generator | None = None) -> Trace:
    """Hessian trace of the training loss restricted to the unpruned weights."""
    params, masks = param_masks(model, mask)
    was = model.training
    model.eval()
    try:
        return hutchinson(data_hvp(model, x, y), params, masks, samples=samples, generator=generator)
    finally:
        model.train(was)
