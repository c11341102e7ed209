"""Typed, frozen configuration: its types and range checks, canonical JSON and stable hashes.

A run is described by one :class:`RunConfig`. Its pieces hash to stable ids: a field left
at its default is left out of the canonical JSON (as in OpenLTH), so adding a new field with
a default that keeps the old behaviour never renames existing results. ``tests/test_config.py``
pins the hashes.

Beside it, without cycles: :mod:`sparsedd.config_load` reads presets, TOML files and ``--set`` into a
config, and :mod:`sparsedd.config_check` checks its names against the registries (data sets, models,
pruning methods, ...) and what the chosen pruning method asks of the model. Building a config here
imports neither torch nor any registry; what stage ids take from a config lies in
:mod:`sparsedd.experiments.stages`.

(One module over 300 lines: each field's type, default and range check are read together.)
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import re
import typing
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import SparseddError

# Data sets, noise types, models, pruning methods and retraining modes are checked against their
# registries by sparsedd.config_check (those modules import this one, and torch).
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "multistep", "cosine")
PRUNE_SCOPES = ("global", "layer")
PRUNE_LAYERS = ("default", "all", "hidden", "conv")
PRUNE_SCHEDULES = ("iterative", "oneshot")
# how many weights a round removes and what the sparsity axis counts (pruning/select.py): prunable, the
# project's round(fraction * unpruned prunable weights); all-masked, OpenLTH's (the paper's code)
PRUNE_COUNTS = ("prunable", "all-masked")
BIAS_INITS = ("zero", "torch")
BN_INITS = ("one", "uniform")
# how method = gradient measures |w * dL/dw|: multi sums prune.gradient_batches batches in eval mode;
# paper is He et al.'s code: one (augmented) training batch with the model in train mode
GRADIENT_RULES = ("multi", "paper")
GRADIENT_BATCHES = 10  # prune.gradient_batches' default

# Bounds beyond the range checks: what the machinery can hold (SQLite and torch take 64-bit integers;
# an infinite float passes every range check and makes a "complete" run of NaN) and sane maxima, past
# which a value is a typo that would never finish (10^20 epochs) or never fit in memory.
INT64_MAX = 2**63 - 1
MAX_SEED = 2**62  # seed + seeds - 1 stays a 64-bit integer
MAX_EPOCHS = 100_000  # train.epochs, retrain.finetune_epochs, train.milestones
MAX_BATCH = 2**20  # train.batch_size
MAX_EXAMPLES = 10_000_000  # data.num_train, num_test (100x Tiny ImageNet; MNIST-1D generates what is asked)
MAX_WIDTH = 65_536  # model.hidden widths (one 65536 x 65536 layer: 4.3 billion weights)
MAX_LAYERS = 64  # model.hidden layers
MAX_CHANNELS = 4096  # model.width (the conv nets' later stages have 8x as many)
MAX_GRADIENT_BATCHES = 100_000  # prune.gradient_batches


def choice(section: str, name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise SparseddError(
            f"unknown {section}.{name} {value!r}; choose one of {', '.join(allowed)}"
        )


def _check(cond: bool, key: str, what: str, value: Any) -> None:
    if not cond:
        raise SparseddError(f"{key} must be {what}, got {value!r}")


def check_number(key: str, value: Any) -> None:
    """A number the machinery can hold: an int in 64 bits, a finite float (booleans and the rest pass)."""
    if isinstance(value, bool):
        return
    if isinstance(value, int) and not -INT64_MAX - 1 <= value <= INT64_MAX:
        raise SparseddError(f"{key} must fit in 64 bits (at most {INT64_MAX}), got {brief(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise SparseddError(f"{key} must be a finite number, got {value!r}")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_numbers(section: Any, prefix: str) -> None:
    """:func:`check_number` on every field of a config section, list items included (for sections built
    directly in Python, which skip :func:`coerce`)."""
    for name, typ in _hints(type(section)).items():
        value = getattr(section, name)
        for v in (value if typing.get_origin(typ) is tuple and isinstance(value, tuple) else (value,)):
            check_number(prefix + name, v)


@dataclass(frozen=True)
class DataConfig:
    name: str = "mnist1d"
    noise: float = 0.2
    noise_type: str = "random"
    noise_seed: int = 0
    num_train: int = 0  # 0: the data set's default size
    num_test: int = 0
    augment: str = "default"  # default: the data set's standard training augmentation; none; crop-flip
    image_size: int = 0  # tinyimagenet: 64 or 32 (0: native 64)
    val_split: float = 0.0  # a seeded fraction of the training set held out, with its noisy labels, for validation
    # symmetric, pairflip, asymmetric: exact, round(rate * n) examples flip; per-example, each with probability
    # rate (the paper's code). random noise always flips exactly ceil(rate * N), as the paper's code does
    noise_draw: str = "exact"
    # asymmetric: default, or paper (the paper's code: MNIST without 7 -> 1, CIFAR-100 in blocks of 5 classes)
    asymmetric_map: str = "default"

    def unused_fields(self) -> tuple[str, ...]:
        """Fields the canonical form leaves out where they change no label, so the paper presets can name
        them without renaming runs of random noise."""
        unused = []
        if self.noise_type not in ("symmetric", "pairflip", "asymmetric"):
            unused.append("noise_draw")
        if self.noise_type != "asymmetric":
            unused.append("asymmetric_map")
        return tuple(unused)

    def __post_init__(self) -> None:
        _check_numbers(self, "data.")
        choice("data", "augment", self.augment, ("default", "none", "crop-flip"))
        _check(self.image_size in (0, 32, 64), "data.image_size", "0, 32 or 64", self.image_size)
        _check(0.0 <= self.noise <= 1.0, "data.noise", "in [0, 1]", self.noise)
        _check(0 <= self.noise_seed <= MAX_SEED, "data.noise_seed", "in [0, 2^62]", self.noise_seed)
        _check(0 <= self.num_train <= MAX_EXAMPLES, "data.num_train", f"in [0, {MAX_EXAMPLES}] (0: default)",
               self.num_train)
        _check(0 <= self.num_test <= MAX_EXAMPLES, "data.num_test", f"in [0, {MAX_EXAMPLES}] (0: default)",
               self.num_test)
        _check(0.0 <= self.val_split < 1.0, "data.val_split", "in [0, 1)", self.val_split)
        choice("data", "noise_draw", self.noise_draw, ("exact", "per-example"))
        choice("data", "asymmetric_map", self.asymmetric_map, ("default", "paper"))


@dataclass(frozen=True)
class ModelConfig:
    name: str = "mlp"
    hidden: tuple[int, ...] = ()  # mlp only; (): the model's default widths
    width: int = 0  # conv nets: channels of the first stage (0: the model's own, 64); the others scale with it
    # zero; or torch: PyTorch's default uniform(+-1/sqrt(fan_in)), which the paper's code leaves in place
    bias_init: str = "zero"
    # one: batch-norm scales 1; or uniform: uniform(0, 1), the paper's code (batchnorm_init = 'uniform'); shifts 0
    bn_init: str = "one"

    def __post_init__(self) -> None:
        _check_numbers(self, "model.")
        choice("model", "bias_init", self.bias_init, BIAS_INITS)
        choice("model", "bn_init", self.bn_init, BN_INITS)
        _check(all(0 < h <= MAX_WIDTH for h in self.hidden), "model.hidden", f"widths in [1, {MAX_WIDTH}]", self.hidden)
        _check(len(self.hidden) <= MAX_LAYERS, "model.hidden", f"at most {MAX_LAYERS} widths", self.hidden)
        _check(0 <= self.width <= MAX_CHANNELS, "model.width", f"in [0, {MAX_CHANNELS}] (0: the model's own)",
               self.width)


@dataclass(frozen=True)
class TrainConfig:
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    batch_size: int = 128
    epochs: int = 200
    schedule: str = "constant"
    milestones: tuple[int, ...] = ()  # epochs at which a multistep schedule multiplies by gamma
    gamma: float = 0.1
    warmup_epochs: int = 0  # linear warmup from 0, per iteration
    eval_every: int = 1  # evaluate every N epochs (the last epoch always)
    precision: str = "fp32"  # fp32, or bf16 (autocast of the forward pass; weights and optimizer stay fp32)
    distance_penalty: float = 0.0  # lambda: lambda * ||w - w_init||^2 over the unpruned weights added to the loss
    # the step of the schedule training starts at (its learning rate and data order there); a pruned level's
    # schedule sets it (retrain.rewind_schedule = rest), never the dense training's
    start_iteration: int = 0
    # stop a stage at the first epoch whose training loss (evaluated, on the noisy labels) is below this, as the
    # paper's code's use_convergence_stopping_criterion does at 0.001 (0: train every epoch)
    stop_loss: float = 0.0
    # lambda of an L1 penalty on the batch-norm scales (network slimming's; the paper's code: 1e-4, with
    # prune.method = slimming); 0: none
    bn_l1: float = 0.0

    def __post_init__(self) -> None:
        _check_numbers(self, "train.")
        choice("train", "optimizer", self.optimizer, OPTIMIZERS)
        choice("train", "precision", self.precision, ("fp32", "bf16"))
        choice("train", "schedule", self.schedule, SCHEDULES)
        _check(self.lr > 0, "train.lr", "> 0", self.lr)
        _check(0 <= self.momentum < 1, "train.momentum", "in [0, 1)", self.momentum)
        _check(self.weight_decay >= 0, "train.weight_decay", ">= 0", self.weight_decay)
        _check(1 <= self.batch_size <= MAX_BATCH, "train.batch_size", f"in [1, {MAX_BATCH}]", self.batch_size)
        _check(1 <= self.epochs <= MAX_EPOCHS, "train.epochs", f"in [1, {MAX_EPOCHS}]", self.epochs)
        _check(all(0 < m <= MAX_EPOCHS for m in self.milestones), "train.milestones", f"epochs in [1, {MAX_EPOCHS}]",
               self.milestones)
        _check(list(self.milestones) == sorted(self.milestones), "train.milestones", "increasing", self.milestones)
        _check(0 < self.gamma <= 1, "train.gamma", "in (0, 1]", self.gamma)
        _check(0 <= self.warmup_epochs <= self.epochs, "train.warmup_epochs", "in [0, epochs]", self.warmup_epochs)
        _check(self.eval_every >= 1, "train.eval_every", ">= 1", self.eval_every)  # past epochs: at the end only
        _check(self.distance_penalty >= 0, "train.distance_penalty", ">= 0 (0: none)", self.distance_penalty)
        _check(self.start_iteration >= 0, "train.start_iteration", ">= 0", self.start_iteration)
        _check(self.stop_loss >= 0, "train.stop_loss", ">= 0 (0: none)", self.stop_loss)
        _check(self.bn_l1 >= 0, "train.bn_l1", ">= 0 (0: none)", self.bn_l1)
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise SparseddError("train.nesterov needs train.optimizer = 'sgd' and train.momentum > 0")


@dataclass(frozen=True)
class PruneConfig:
    method: str = "magnitude"
    scope: str = "global"
    fraction: float = 0.2  # of the remaining prunable weights removed per level
    levels: int = 24  # pruning rounds after the dense level 0 (not part of any stage id)
    layers: str = "default"  # which weights are prunable: the model's default, all, or hidden (not the output layer)
    # method = gradient's own settings (the metadata names the method; its record in pruning/__init__.py owns them):
    # batches whose |w * dL/dw| are summed (gradient_rule = multi); multi, or paper (one batch, train mode)
    gradient_batches: int = field(default=GRADIENT_BATCHES, metadata={"method": "gradient", "in_run_id": True})
    gradient_rule: str = field(default="multi", metadata={"method": "gradient"})
    schedule: str = "iterative"  # iterative: each level prunes the previous one; oneshot: the dense network
    # prunable: round(fraction * unpruned prunable weights) go, sparsity over the prunable weights;
    # all-masked (the paper's code): ceil(fraction * unpruned weights of every conv and linear weight,
    # the layers never pruned included) + 1 go (more on ties), and sparsity counts those layers too
    count: str = "prunable"

    def __post_init__(self) -> None:
        _check_numbers(self, "prune.")
        choice("prune", "scope", self.scope, PRUNE_SCOPES)
        if not re.fullmatch(r"(first|last)-[1-9][0-9]{0,3}", self.layers):  # the first or last n layers
            choice("prune", "layers", self.layers, PRUNE_LAYERS + ("first-N", "last-N"))
        choice("prune", "gradient_rule", self.gradient_rule, GRADIENT_RULES)
        choice("prune", "schedule", self.schedule, PRUNE_SCHEDULES)
        choice("prune", "count", self.count, PRUNE_COUNTS)
        _check(0 < self.fraction < 1, "prune.fraction", "in (0, 1)", self.fraction)
        _check(0 <= self.levels <= 200, "prune.levels", "in [0, 200]", self.levels)
        _check(1 <= self.gradient_batches <= MAX_GRADIENT_BATCHES, "prune.gradient_batches",
               f"in [1, {MAX_GRADIENT_BATCHES}]", self.gradient_batches)
        if self.gradient_rule == "paper" and self.gradient_batches != GRADIENT_BATCHES:
            raise SparseddError("prune.gradient_batches applies to prune.gradient_rule = 'multi' only (paper: one batch)")
        if self.layers.startswith(("first-", "last-")) and self.scope != "layer":
            raise SparseddError(f"prune.layers = {self.layers!r} prunes some layers each by the fraction; it needs "
                                "prune.scope = 'layer' (as the paper's code's layers_to_prune does)")

    def unused_fields(self) -> tuple[str, ...]:
        """Fields the canonical form leaves out: a method's own settings (their metadata names it) while
        another method runs, so the paper presets can name them without renaming their magnitude runs;
        those marked ``in_run_id`` stay in run ids as they always were, so that no existing id changes."""
        return tuple(f.name for f in fields(self) if f.metadata.get("method") not in (None, self.method)
                     and not f.metadata.get("in_run_id"))

    def level_fraction(self, level: int) -> float:
        """The fraction of its parent's unpruned weights ``level`` removes: ``fraction`` when iterative;
        one-shot prunes the dense network straight to density (1 - fraction) ** level."""
        return self.fraction if self.schedule == "iterative" else 1.0 - (1.0 - self.fraction) ** level


@dataclass(frozen=True)
class RetrainConfig:
    mode: str = "weight-rewind"
    rewind_iteration: int = 0  # weight-rewind: dense iteration to rewind to (0: the init)
    finetune_lr: float = 0.001  # finetune: constant learning rate
    finetune_epochs: int = 0  # finetune: epochs (0: train.epochs)
    distill_alpha: float = 0.0  # weight of distillation from the dense network at every pruned level (0: none)
    distill_temperature: float = 4.0  # softmax temperature of that distillation
    # weight-rewind: full, the whole schedule again from the rewound weights; rest, from the rewind iteration
    # to the end of the schedule (its learning rate and data order there), as the paper's code trains
    rewind_schedule: str = "full"

    def __post_init__(self) -> None:
        _check_numbers(self, "retrain.")
        _check(self.rewind_iteration >= 0, "retrain.rewind_iteration", ">= 0", self.rewind_iteration)
        _check(self.finetune_lr > 0, "retrain.finetune_lr", "> 0", self.finetune_lr)
        _check(0 <= self.finetune_epochs <= MAX_EPOCHS, "retrain.finetune_epochs",
               f"in [0, {MAX_EPOCHS}] (0: train.epochs)", self.finetune_epochs)
        _check(0.0 <= self.distill_alpha <= 1.0, "retrain.distill_alpha", "in [0, 1] (0: none)", self.distill_alpha)
        _check(self.distill_temperature > 0, "retrain.distill_temperature", "> 0", self.distill_temperature)
        choice("retrain", "rewind_schedule", self.rewind_schedule, ("full", "rest"))


@dataclass(frozen=True)
class RunConfig:
    seed: int = 0  # the first replicate's seed: init, data order, masks
    seeds: int = 1  # replicates: seed, seed + 1, ...
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)

    def __post_init__(self) -> None:
        _check_numbers(self, "")
        _check(0 <= self.seed <= MAX_SEED, "seed", "in [0, 2^62]", self.seed)
        _check(1 <= self.seeds <= 1000, "seeds", "in [1, 1000]", self.seeds)
        if self.train.start_iteration:
            raise SparseddError("train.start_iteration is set per pruned level by retrain.rewind_schedule = 'rest'; "
                                "leave it unset")

    @property
    def run_id(self) -> str:
        return stable_hash(canonical_dict(self))

    def seed_list(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]

    def with_seed(self, seed: int) -> "RunConfig":
        return dataclasses.replace(self, seed=seed, seeds=1)


# ----------------------------------------------------------------------------- canonical form


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return canonical_dict(value)
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def canonical_dict(cfg: Any, *, full: bool = False) -> dict[str, Any]:
    """The config as plain JSON data; fields at their default, or that the config's ``unused_fields``
    names, are omitted unless ``full``."""
    out: dict[str, Any] = {}
    unused = () if full else getattr(cfg, "unused_fields", tuple)()
    for f in fields(cfg):
        if f.name in unused:
            continue
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            sub = canonical_dict(value, full=full)
            if sub or full:
                out[f.name] = sub
        elif full or value != _default_of(f):
            out[f.name] = _jsonable(value)
    return out


def canonical_json(obj: Any) -> str:
    if dataclasses.is_dataclass(obj):
        obj = canonical_dict(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def stable_hash(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:16]


def is_id(text: Any) -> bool:
    """Whether ``text`` is a run or stage id as :func:`stable_hash` makes them (16 hex digits). Ids read
    from a store are checked with it before they name a file or enter a page: the store may come from
    elsewhere, and its index may hold anything."""
    return isinstance(text, str) and re.fullmatch(r"[0-9a-f]{16}", text) is not None


def brief(value: Any) -> str:
    """A value for a message: its repr, cut where it is long (a 10,000-digit number fits no line, and
    Python refuses to print an int of more than 4300 digits)."""
    try:
        text = repr(value)
    except ValueError:
        return f"a {type(value).__name__} too long to show"
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text)} characters)"
