"""Label noise on the training labels, from a generator of its own (global RNGs untouched)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import SparseddError
from ..registry import Registry
from ..rng import generator

# (labels to change in place, classes, rate, generator, coarse=, dataset=, human=) -> the indices chosen
Flip = Callable[..., torch.Tensor]
NOISE_TYPES: Registry[Flip] = Registry("noise type")

# asymmetric noise: the class each source class is flipped to (classes not listed keep their label)
ASYMMETRIC = {
    # truck -> automobile, bird -> airplane, deer -> horse, cat <-> dog
    "cifar10": {9: 1, 2: 0, 4: 7, 3: 5, 5: 3},
    "mnist": {2: 7, 3: 8, 5: 6, 6: 5, 7: 1},
}

# the paper's code (he-zh/sparse-double-descent, datasets/mnist.py and cifar100.py): MNIST without 7 -> 1;
# CIFAR-100 in blocks of 5 consecutive class indices (i -> i + 1 within a block, the last to the first),
# not the real superclasses (data.asymmetric_map = paper)
PAPER_ASYMMETRIC = {"mnist": {2: 7, 3: 8, 5: 6, 6: 5}}
CIFAR100_BLOCK = 5
DRAWS = ("exact", "per-example")  # data.noise_draw
MAPS = ("default", "paper")  # data.asymmetric_map

# human label noise (CIFAR-10N / CIFAR-100N, Wei et al., ICLR 2022): noise type -> (the data set whose
# training images were re-annotated, the key of those labels in the published file; see data/cifarn.py)
HUMAN_NOISE = {
    "cifar10n-aggregate": ("cifar10", "aggre_label"),
    "cifar10n-random1": ("cifar10", "random_label1"),
    "cifar10n-random2": ("cifar10", "random_label2"),
    "cifar10n-random3": ("cifar10", "random_label3"),
    "cifar10n-worst": ("cifar10", "worse_label"),
    "cifar100n": ("cifar100", "noisy_label"),
}


@dataclass
class NoisyLabels:
    labels: torch.Tensor  # int64 [N], the training labels after noise
    chosen: torch.Tensor  # int64 sorted indices whose label was redrawn (random) or changed (the others)
    corrupted: torch.Tensor  # int64 sorted indices where labels != clean
    effective_rate: float  # len(corrupted) / N


def apply_noise(clean: torch.Tensor, num_classes: int, rate: float, noise_type: str, seed: int, *,
                coarse: torch.Tensor | None = None, dataset: str | None = None,
                human: dict[str, torch.Tensor] | None = None, draw: str = "exact",
                asymmetric_map: str = "default") -> NoisyLabels:
    """Noisy copies of ``clean`` (which is left as is) by the noise type registered as ``noise_type``
    (random, symmetric, asymmetric, pairflip, and the human labels of :data:`HUMAN_NOISE`: see their
    functions below); deterministic given ``seed``. ``human``: the published label sets of the
    training examples by noise type (``Dataset.human_train``), which the human noise types take.
    ``draw``: ``exact`` flips round(rate * n) examples; ``per-example`` flips each example independently
    with probability ``rate`` (the paper's code, for symmetric, pairflip and asymmetric noise on MNIST and
    CIFAR-100; random noise and CIFAR-10's asymmetric noise stay exact counts there too).
    ``asymmetric_map``: ``default`` or ``paper`` (:data:`PAPER_ASYMMETRIC`, CIFAR-100 in blocks of 5)."""
    flip = NOISE_TYPES[noise_type]
    if not 0.0 <= rate <= 1.0:
        raise SparseddError(f"noise rate must be in [0, 1], got {rate!r}")
    if num_classes < 2:
        raise SparseddError(f"label noise needs at least 2 classes, got {num_classes}")
    y = clean.detach().to("cpu", torch.int64).clone()
    n = y.numel()
    if y.ndim != 1 or (n and not (0 <= int(y.min()) and int(y.max()) < num_classes)):
        raise SparseddError(f"labels must be a 1-D tensor of class indices in [0, {num_classes})")
    if draw not in DRAWS or asymmetric_map not in MAPS:
        raise SparseddError(f"noise draw must be one of {DRAWS} and asymmetric map one of {MAPS}")
    chosen = flip(y, num_classes, rate, generator("label-noise", noise_type, seed), coarse=coarse, dataset=dataset,
                  human=human, draw=draw, asymmetric_map=asymmetric_map)
    corrupted = torch.nonzero(y != clean.detach().cpu(), as_tuple=True)[0]
    return NoisyLabels(
        labels=y.to(clean.device), chosen=chosen.sort().values, corrupted=corrupted,
        effective_rate=len(corrupted) / n if n else 0.0,
    )


def _exact(rate: float, n: int) -> float:
    return round(rate * n, 9)  # so that 0.2 * N never rounds up to N * 0.2 + 1


def _count(rate: float, n: int) -> int:
    return round(_exact(rate, n))


def _pick(n: int, rate: float, g: torch.Generator, draw: str) -> torch.Tensor:
    """Which of n examples flip: round(rate * n) of them without replacement (``exact``), or each with
    probability ``rate`` independently (``per-example``); sorted positions in [0, n)."""
    if draw == "per-example":
        return torch.nonzero(torch.rand(n, generator=g) < rate, as_tuple=True)[0]
    return torch.randperm(n, generator=g)[:_count(rate, n)]


@NOISE_TYPES.register("random")
def random_labels(y: torch.Tensor, num_classes: int, rate: float, g: torch.Generator, **_: object) -> torch.Tensor:
    """ceil(rate * N) examples, without replacement, get a uniformly drawn label (possibly the true one)."""
    k = math.ceil(_exact(rate, y.numel()))
    chosen = torch.randperm(y.numel(), generator=g)[:k]
    y[chosen] = torch.randint(0, num_classes, (k,), generator=g)
    return chosen


@NOISE_TYPES.register("symmetric")
def symmetric(y: torch.Tensor, num_classes: int, rate: float, g: torch.Generator, *, draw: str = "exact",
              **_: object) -> torch.Tensor:
    """round(rate * N) examples (or each with probability rate) get a label drawn uniformly from the other classes."""
    chosen = _pick(y.numel(), rate, g, draw)
    y[chosen] = (y[chosen] + torch.randint(1, num_classes, (chosen.numel(),), generator=g)) % num_classes
    return chosen


@NOISE_TYPES.register("asymmetric")
def asymmetric(y: torch.Tensor, num_classes: int, rate: float, g: torch.Generator, *,
               coarse: torch.Tensor | None = None, dataset: str | None = None, draw: str = "exact",
               asymmetric_map: str = "default", **_: object) -> torch.Tensor:
    """round(rate * n_c) of the n_c examples of each source class c of ``dataset``'s confusion map (or each
    with probability rate) get its target class (see :data:`ASYMMETRIC`; for ``cifar100`` the next fine class
    within the superclass given by ``coarse``, cyclically, in fine-label order). With ``asymmetric_map =
    paper``, :data:`PAPER_ASYMMETRIC` and CIFAR-100's blocks of 5 classes; CIFAR-10 keeps exact counts, as
    the paper's code does."""
    if asymmetric_map == "paper":
        targets = _paper_targets(dataset, num_classes, y, coarse)
        draw = "exact" if dataset == "cifar10" else draw
    else:
        targets = _asymmetric_targets(dataset, num_classes, y, coarse)
    picks = []
    for c in sorted(targets):  # source classes in order, each with its own draw
        members = torch.nonzero(y == c, as_tuple=True)[0]
        picks.append(members[_pick(len(members), rate, g, draw)])
    chosen = torch.cat(picks) if picks else torch.zeros(0, dtype=torch.int64)
    table = torch.arange(num_classes)
    for c, t in targets.items():
        table[c] = t
    y[chosen] = table[y[chosen]]
    return chosen


@NOISE_TYPES.register("pairflip")
def pairflip(y: torch.Tensor, num_classes: int, rate: float, g: torch.Generator, *, draw: str = "exact",
             **_: object) -> torch.Tensor:
    """round(rate * N) examples (or each with probability rate) of class i get class (i + 1) mod C."""
    chosen = _pick(y.numel(), rate, g, draw)
    y[chosen] = (y[chosen] + 1) % num_classes
    return chosen


def _human(noise_type: str) -> Flip:
    """The noise type that replaces the labels by the published human labels ``human[noise_type]``."""
    source = HUMAN_NOISE[noise_type][0]

    def flip(y: torch.Tensor, num_classes: int, rate: float, g: torch.Generator, *, dataset: str | None = None,
             human: dict[str, torch.Tensor] | None = None, **_: object) -> torch.Tensor:
        # rate and g do not apply: the annotators decided which labels are wrong
        if dataset != source:
            raise SparseddError(f"data.noise_type = {noise_type!r} holds the human labels of {source}, not of "
                                f"{dataset!r}; use data.name = {source}")
        if human is None or noise_type not in human:
            raise SparseddError(f"data.noise_type = {noise_type!r} needs the published human labels; load the "
                                f"data set with data.noise_type = {noise_type!r} (they come with it)")
        labels = human[noise_type].detach().to("cpu", torch.int64)
        if labels.shape != y.shape:
            raise SparseddError(f"the human labels of {noise_type} have shape {tuple(labels.shape)}, "
                                f"the training labels {tuple(y.shape)}; load them with the same data.num_train")
        changed = torch.nonzero(labels != y, as_tuple=True)[0]
        y.copy_(labels)
        return changed

    flip.__doc__ = f"The {HUMAN_NOISE[noise_type][1]} labels of {source}'s training images (CIFAR-N)."
    return flip


for _name in HUMAN_NOISE:
    NOISE_TYPES.register(_name, _human(_name))


def describe(noise_type: str, rate: float) -> str:
    """A run's label noise in words, for titles: '20% random noise', 'cifar10n-worst human labels'."""
    return f"{noise_type} human labels" if noise_type in HUMAN_NOISE else f"{100 * rate:g}% {noise_type} noise"


def _paper_targets(dataset: str | None, num_classes: int, y: torch.Tensor,
                   coarse: torch.Tensor | None) -> dict[int, int]:
    """Source class -> target class of the paper code's asymmetric noise: its MNIST map, CIFAR-100 in blocks
    of 5 consecutive classes, CIFAR-10 as the default map."""
    if dataset == "cifar100":
        b = CIFAR100_BLOCK
        return {c: (c // b) * b + (c % b + 1) % b for c in range(num_classes)}
    if dataset in PAPER_ASYMMETRIC:
        return dict(PAPER_ASYMMETRIC[dataset])
    return _asymmetric_targets(dataset, num_classes, y, coarse)


def asymmetric_known(dataset: str | None) -> None:
    """Asymmetric noise is defined for ``dataset`` (checked with the configuration, before anything is
    written), or a one-line error that says which are."""
    if dataset not in (*ASYMMETRIC, *PAPER_ASYMMETRIC, "cifar100"):
        raise SparseddError(
            f"asymmetric label noise is defined for {', '.join(sorted([*ASYMMETRIC, 'cifar100']))} only, not "
            f"{dataset!r}; use data.noise_type = symmetric or pairflip"
        )


def _asymmetric_targets(dataset: str | None, num_classes: int, y: torch.Tensor,
                        coarse: torch.Tensor | None) -> dict[int, int]:
    """Source class -> target class of the asymmetric noise on ``dataset``."""
    asymmetric_known(dataset)
    if dataset in ASYMMETRIC:
        table = ASYMMETRIC[dataset]
        if max(max(table), max(table.values())) >= num_classes:
            raise SparseddError(
                f"asymmetric noise for {dataset} maps {dataset}'s classes but got {num_classes} classes; "
                f"pass the data set the labels come from"
            )
        return dict(table)
    if coarse is None:
        raise SparseddError("asymmetric noise on cifar100 needs the superclass of each training example (coarse)")
    coarse = coarse.detach().to("cpu", torch.int64)
    if coarse.shape != y.shape:
        raise SparseddError(f"coarse labels must match the labels' shape {tuple(y.shape)}, got {tuple(coarse.shape)}")
    fine_to_coarse: dict[int, int] = {}
    for f, c in torch.unique(torch.stack([y, coarse], 1), dim=0).tolist():
        if fine_to_coarse.setdefault(f, c) != c:
            raise SparseddError(f"class {f} appears under superclasses {fine_to_coarse[f]} and {c}; coarse labels must be per class")
    groups: dict[int, list[int]] = {}
    for f in sorted(fine_to_coarse):
        groups.setdefault(fine_to_coarse[f], []).append(f)
    return {f: g[(i + 1) % len(g)] for g in groups.values() if len(g) > 1 for i, f in enumerate(g)}
