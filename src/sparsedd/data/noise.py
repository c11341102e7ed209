"""Label noise on the training labels, from a generator of its own (global RNGs untouched)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import SparseddError
from ..rng import generator

NOISE_TYPES = ("random", "symmetric")


@dataclass
class NoisyLabels:
    labels: torch.Tensor  # int64 [N], the training labels after noise
    chosen: torch.Tensor  # int64 sorted indices whose label was redrawn (random) or changed (symmetric)
    corrupted: torch.Tensor  # int64 sorted indices where labels != clean
    effective_rate: float  # len(corrupted) / N


def apply_noise(clean: torch.Tensor, num_classes: int, rate: float, noise_type: str, seed: int) -> NoisyLabels:
    """Noisy copies of ``clean`` (which is left as is); deterministic given ``seed``.

    ``random``: ceil(rate * N) examples, chosen without replacement, get a label drawn uniformly
    from all classes (possibly the true one). ``symmetric``: round(rate * N) examples get a label
    drawn uniformly from the other classes.
    """
    if noise_type not in NOISE_TYPES:
        raise SparseddError(f"unknown noise type {noise_type!r}: choose one of {', '.join(NOISE_TYPES)}")
    if not 0.0 <= rate <= 1.0:
        raise SparseddError(f"noise rate must be in [0, 1], got {rate!r}")
    if num_classes < 2:
        raise SparseddError(f"label noise needs at least 2 classes, got {num_classes}")
    y = clean.detach().to("cpu", torch.int64).clone()
    n = y.numel()
    if y.ndim != 1 or (n and not (0 <= int(y.min()) and int(y.max()) < num_classes)):
        raise SparseddError(f"labels must be a 1-D tensor of class indices in [0, {num_classes})")
    exact = round(rate * n, 9)  # so that 0.2 * N never rounds up to N * 0.2 + 1
    k = math.ceil(exact) if noise_type == "random" else round(exact)
    g = generator("label-noise", noise_type, seed)
    chosen = torch.randperm(n, generator=g)[:k]
    if noise_type == "random":
        y[chosen] = torch.randint(0, num_classes, (k,), generator=g)
    else:
        y[chosen] = (y[chosen] + torch.randint(1, num_classes, (k,), generator=g)) % num_classes
    corrupted = torch.nonzero(y != clean.detach().cpu(), as_tuple=True)[0]
    return NoisyLabels(
        labels=y.to(clean.device), chosen=chosen.sort().values, corrupted=corrupted,
        effective_rate=len(corrupted) / n if n else 0.0,
    )
