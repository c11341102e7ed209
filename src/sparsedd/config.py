"""Typed, frozen configuration with canonical JSON, stable hashes and TOML / --set parsing.

A run is described by one :class:`RunConfig`. Its pieces hash to stable ids: a field left
at its default is left out of the canonical JSON (as in OpenLTH), so adding a new field with
a default that keeps the old behaviour never renames existing results. ``tests/test_config.py``
pins the hashes.

(One module over 300 lines: each field's type, default and check, its canonical form and its parsing
from TOML and ``--set`` are read together.)
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import re
import tomllib
import typing
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import SparseddError

# Data sets, noise types, models, pruning methods and retraining modes are validated against their
# registries (sparsedd.data.DATASETS, data.noise.NOISE_TYPES, models.MODELS, pruning.STRATEGIES,
# experiments.retrain.RETRAIN_MODES), imported inside the checks because those modules import this one.
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


def _choice(section: str, name: str, value: str, allowed: tuple[str, ...]) -> None:
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
        from .data import DATASETS
        from .data.noise import NOISE_TYPES

        _check_numbers(self, "data.")
        _choice("data", "name", self.name, DATASETS.names())
        _choice("data", "augment", self.augment, ("default", "none", "crop-flip"))
        _check(self.image_size in (0, 32, 64), "data.image_size", "0, 32 or 64", self.image_size)
        _choice("data", "noise_type", self.noise_type, NOISE_TYPES.names())
        _check(0.0 <= self.noise <= 1.0, "data.noise", "in [0, 1]", self.noise)
        _check(0 <= self.noise_seed <= MAX_SEED, "data.noise_seed", "in [0, 2^62]", self.noise_seed)
        _check(0 <= self.num_train <= MAX_EXAMPLES, "data.num_train", f"in [0, {MAX_EXAMPLES}] (0: default)",
               self.num_train)
        _check(0 <= self.num_test <= MAX_EXAMPLES, "data.num_test", f"in [0, {MAX_EXAMPLES}] (0: default)",
               self.num_test)
        _check(0.0 <= self.val_split < 1.0, "data.val_split", "in [0, 1)", self.val_split)
        _choice("data", "noise_draw", self.noise_draw, ("exact", "per-example"))
        _choice("data", "asymmetric_map", self.asymmetric_map, ("default", "paper"))
        self._check_human_noise()

    def _check_human_noise(self) -> None:
        """The human noise types (CIFAR-N) are the labels of one data set's images, at no rate and no seed."""
        from .data.noise import HUMAN_NOISE

        if self.noise_type not in HUMAN_NOISE:
            return
        source = HUMAN_NOISE[self.noise_type][0]
        if self.name != source:
            raise SparseddError(f"data.noise_type = {self.noise_type!r} holds human labels of {source}'s "
                                f"training images; it needs data.name = {source!r}, got {self.name!r}")
        # they would split stage ids without changing a label, so they must stay unset (at their defaults)
        for key in ("noise", "noise_seed"):
            default = DataConfig.__dataclass_fields__[key].default
            if getattr(self, key) != default:
                raise SparseddError(f"data.{key} does not apply to data.noise_type = {self.noise_type!r} (the "
                                    f"annotators chose the noisy labels); leave it unset (its default, {default})")


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
        from .models import MODELS

        _check_numbers(self, "model.")
        _choice("model", "name", self.name, MODELS.names())
        _choice("model", "bias_init", self.bias_init, BIAS_INITS)
        _choice("model", "bn_init", self.bn_init, BN_INITS)
        _check(all(0 < h <= MAX_WIDTH for h in self.hidden), "model.hidden", f"widths in [1, {MAX_WIDTH}]", self.hidden)
        _check(len(self.hidden) <= MAX_LAYERS, "model.hidden", f"at most {MAX_LAYERS} widths", self.hidden)
        _check(0 <= self.width <= MAX_CHANNELS, "model.width", f"in [0, {MAX_CHANNELS}] (0: the model's own)",
               self.width)
        if self.hidden and self.name != "mlp":
            raise SparseddError(f"model.hidden applies to the mlp only, not {self.name!r}")
        if self.width and self.name in ("mlp", "lenet-300-100"):
            raise SparseddError(f"model.width applies to the conv nets only, not {self.name!r}; use model.hidden")


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
        _choice("train", "optimizer", self.optimizer, OPTIMIZERS)
        _choice("train", "precision", self.precision, ("fp32", "bf16"))
        _choice("train", "schedule", self.schedule, SCHEDULES)
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
    gradient_batches: int = GRADIENT_BATCHES  # batches whose |w * dL/dw| are summed, for method = gradient, gradient_rule = multi
    gradient_rule: str = "multi"  # method = gradient: multi, or paper (one batch, train mode)
    schedule: str = "iterative"  # iterative: each level prunes the previous one; oneshot: the dense network
    # prunable: round(fraction * unpruned prunable weights) go, sparsity over the prunable weights;
    # all-masked (the paper's code): ceil(fraction * unpruned weights of every conv and linear weight,
    # the layers never pruned included) + 1 go (more on ties), and sparsity counts those layers too
    count: str = "prunable"

    def __post_init__(self) -> None:
        from .pruning import STRATEGIES

        _check_numbers(self, "prune.")
        _choice("prune", "method", self.method, STRATEGIES.names())
        _choice("prune", "scope", self.scope, PRUNE_SCOPES)
        if not re.fullmatch(r"(first|last)-[1-9][0-9]{0,3}", self.layers):  # the first or last n layers
            _choice("prune", "layers", self.layers, PRUNE_LAYERS + ("first-N", "last-N"))
        _choice("prune", "gradient_rule", self.gradient_rule, GRADIENT_RULES)
        _choice("prune", "schedule", self.schedule, PRUNE_SCHEDULES)
        _choice("prune", "count", self.count, PRUNE_COUNTS)
        _check(0 < self.fraction < 1, "prune.fraction", "in (0, 1)", self.fraction)
        _check(0 <= self.levels <= 200, "prune.levels", "in [0, 200]", self.levels)
        _check(1 <= self.gradient_batches <= MAX_GRADIENT_BATCHES, "prune.gradient_batches",
               f"in [1, {MAX_GRADIENT_BATCHES}]", self.gradient_batches)
        if self.gradient_rule == "paper" and self.gradient_batches != GRADIENT_BATCHES:
            raise SparseddError("prune.gradient_batches applies to prune.gradient_rule = 'multi' only (paper: one batch)")
        if self.layers.startswith(("first-", "last-")) and self.scope != "layer":
            raise SparseddError(f"prune.layers = {self.layers!r} prunes some layers each by the fraction; it needs "
                                "prune.scope = 'layer' (as the paper's code's layers_to_prune does)")
        if self.method == "slimming" and self.layers != "default":
            raise SparseddError("prune.layers does not apply to prune.method = 'slimming', which masks every batch-norm "
                                "channel and the conv filter feeding it; leave prune.layers at default")

    def unused_fields(self) -> tuple[str, ...]:
        """Fields the canonical form leaves out: the gradient rule matters to method = gradient only, so
        the paper presets can name it without renaming their magnitude runs. (gradient_batches stays in
        run ids as it always was, so that no existing id changes.)"""
        return () if self.method == "gradient" else ("gradient_rule",)

    def round_key(self) -> dict[str, Any]:
        """What one pruning round depends on (everything but the number of levels)."""
        d = canonical_dict(self)
        d.pop("levels", None)
        if self.method != "gradient":
            d.pop("gradient_batches", None)
        return d

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
        from .experiments.retrain import RETRAIN_MODES

        _check_numbers(self, "retrain.")
        _choice("retrain", "mode", self.mode, RETRAIN_MODES.names())
        _check(self.rewind_iteration >= 0, "retrain.rewind_iteration", ">= 0", self.rewind_iteration)
        _check(self.finetune_lr > 0, "retrain.finetune_lr", "> 0", self.finetune_lr)
        _check(0 <= self.finetune_epochs <= MAX_EPOCHS, "retrain.finetune_epochs",
               f"in [0, {MAX_EPOCHS}] (0: train.epochs)", self.finetune_epochs)
        _check(0.0 <= self.distill_alpha <= 1.0, "retrain.distill_alpha", "in [0, 1] (0: none)", self.distill_alpha)
        _check(self.distill_temperature > 0, "retrain.distill_temperature", "> 0", self.distill_temperature)
        _choice("retrain", "rewind_schedule", self.rewind_schedule, ("full", "rest"))

    def relevant(self) -> dict[str, Any]:
        """The fields that matter for this mode (so unused settings never split stage ids): the mode's own,
        and the distillation's while it is on."""
        from .experiments.retrain import RETRAIN_MODES

        keep = {"mode", *RETRAIN_MODES[self.mode].fields}
        if self.distill_alpha > 0:
            keep |= {"distill_alpha", "distill_temperature"}
        if self.rewind_iteration == 0:  # rewinding to the init: the rest of the schedule is all of it
            keep.discard("rewind_schedule")
        return {k: v for k, v in canonical_dict(self).items() if k in keep}


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
        if self.prune.method == "slimming":
            self._check_batch_norm()

    def _check_batch_norm(self) -> None:
        """Slimming prunes batch-norm channels: a one-line error now, not after the dense network trained,
        when the model has none (built on the meta device: no memory, no init)."""
        import torch

        from .data import DATASETS
        from .models import MODELS
        from .pruning import bn_convs

        spec = DATASETS[self.data.name]
        with torch.device("meta"):
            model = MODELS[self.model.name](self.model, spec.input_shape(self.data.image_size), spec.classes)
        if not bn_convs(model):
            raise SparseddError(f"prune.method = 'slimming' prunes batch-norm channels and model {self.model.name!r} "
                                f"has none; use resnet18, vgg16 or resnet101, or another prune.method")

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


# ----------------------------------------------------------------------------- parsing

_SECTIONS = {f.name: f for f in fields(RunConfig)}


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@functools.cache
def valid_keys() -> tuple[str, ...]:
    keys = []
    for name, f in _SECTIONS.items():
        hints = _field_types(RunConfig)
        if dataclasses.is_dataclass(hints[name]):
            keys += [f"{name}.{g.name}" for g in fields(hints[name])]
        else:
            keys.append(name)
    return tuple(keys)


def brief(value: Any) -> str:
    """A value for a message: its repr, cut where it is long (a 10,000-digit number fits no line, and
    Python refuses to print an int of more than 4300 digits)."""
    try:
        text = repr(value)
    except ValueError:
        return f"a {type(value).__name__} too long to show"
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text)} characters)"


def coerce(key: str, value: Any, typ: Any) -> Any:
    """Turn a TOML value or a --set string into the field's type, or raise a one-line error."""
    origin = typing.get_origin(typ)
    if origin is tuple:
        if isinstance(value, str):
            value = _list_items(key, value)
        if not isinstance(value, (list, tuple)):
            raise SparseddError(f"{key} must be a list, got {brief(value)}")
        (inner, _ellipsis) = typing.get_args(typ)
        return tuple(coerce(key, v, inner) for v in value)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise SparseddError(f"{key} must be true or false, got {brief(value)}")
    if typ is int:
        if isinstance(value, bool):
            raise SparseddError(f"{key} must be an integer, got {brief(value)}")
        if isinstance(value, float):  # as the command line refuses "2.0": an integer field takes integers
            raise SparseddError(f"{key} must be an integer, got {brief(value)}")
        if not isinstance(value, int):
            try:
                value = int(str(value))
            except ValueError:  # also a string of more than 4300 digits
                raise SparseddError(f"{key} must be an integer, got {brief(value)}") from None
        check_number(key, value)
        return value
    if typ is float:
        if isinstance(value, bool):
            raise SparseddError(f"{key} must be a number, got {brief(value)}")
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):  # overflow: an int beyond any float
            raise SparseddError(f"{key} must be a finite number, got {brief(value)}") from None
        check_number(key, number)
        return number
    if typ is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise SparseddError(f"{key} must be a string, got {brief(value)}")
        check_number(key, value)
        return str(value)
    raise TypeError(f"unsupported field type {typ} for {key}")


def _list_items(key: str, text: str) -> list[str]:
    """The items of a list given as text (``[1, 2]``, ``(1, 2)`` or ``1, 2``); a one-line error for anything
    else (unbalanced or nested brackets, an empty item), so that ``[1,`` is not read as ``[1]``."""
    t = text.strip()
    pairs = {"[": "]", "(": ")"}
    opened, closed = t[:1] in pairs, t[-1:] in pairs.values()
    balanced = opened and closed and pairs[t[0]] == t[-1]
    inner = t[1:-1] if balanced else t
    parts = [p.strip() for p in inner.split(",")]
    unbalanced = (opened or closed) and not balanced
    if unbalanced or any(c in inner for c in "[]()") or (parts != [""] and "" in parts):
        raise SparseddError(f"{key} must be a list of values like [1, 2], got {brief(text)}")
    return [] if parts == [""] else parts


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables to dotted keys: ``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}``. Iterative, so a
    table nested thousands deep (a malformed file) ends in an unknown-key error, not a RecursionError."""
    flat: dict[str, Any] = {}
    stack = [(prefix, iter(tree.items()))]  # depth first, in the file's order, as a recursion would go
    while stack:
        at, items = stack[-1]
        for k, v in items:
            if isinstance(v, dict):
                stack.append((f"{at}{k}.", iter(v.items())))
                break
            flat[f"{at}{k}"] = v
        else:
            stack.pop()
    return flat


def typed(flat: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys to values of their fields' types (no range checks yet); a one-line error for an unknown
    key or a value of the wrong type."""
    hints = _field_types(RunConfig)
    allowed = valid_keys()
    out = {}
    for key, value in flat.items():
        if key not in allowed:
            raise SparseddError(f"unknown config key {brief(key)}; valid keys: {', '.join(sorted(allowed))}")
        sec, _, name = key.rpartition(".")
        out[key] = coerce(key, value, _field_types(hints[sec])[name] if sec else hints[key])
    return out


def build(flat: dict[str, Any]) -> RunConfig:
    """A RunConfig from dotted keys (``train.lr``) to values (TOML values or strings)."""
    hints = _field_types(RunConfig)
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    for key, value in typed(flat).items():
        if "." in key:
            sec, name = key.split(".", 1)
            sections.setdefault(sec, {})[name] = value
        else:
            top[key] = value
    for sec, values in sections.items():
        top[sec] = hints[sec](**values)
    return RunConfig(**top)


def presets() -> list[str]:
    files = resources.files("sparsedd").joinpath("presets").iterdir()
    return sorted(p.name[: -len(".toml")] for p in files if p.name.endswith(".toml"))


def _read_toml(text: str, where: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SparseddError(f"malformed TOML in {where}: {e}; fix the file and run again") from None
    except RecursionError:  # arrays nested thousands deep
        raise SparseddError(f"malformed TOML in {where}: nested too deep; fix the file and run again") from None


def read_text_file(path: Path, what: str) -> str:
    """The text of a TOML file; one that cannot be read or is not UTF-8 (as TOML must be) is a one-line error."""
    if not path.is_file():
        problem = "is a folder" if path.is_dir() else "not found"
        raise SparseddError(f"{what} {path} {problem}; give the path of a TOML file")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise SparseddError(f"{what} {path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise SparseddError(f"cannot read {what} {path} ({e.strerror or e})") from None


def preset_values(name: str) -> dict[str, Any]:
    if name not in presets():
        raise SparseddError(f"unknown preset {name!r}; available: {', '.join(presets())}")
    text = resources.files("sparsedd").joinpath("presets", f"{name}.toml").read_text()
    return flatten(_read_toml(text, f"preset {name}"))


def file_values(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    return flatten(_read_toml(read_text_file(p, "config file"), str(p)))


def parse_sets(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise SparseddError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


DEFAULT_PRESET = "mnist1d-quick"


def load(preset: str | None = None, config_file: str | Path | None = None,
         sets: list[str] | None = None, seeds: int | None = None, values: dict[str, Any] | None = None) -> RunConfig:
    """Preset, then TOML file, then typed ``values`` (dotted keys, as a sweep gives them), then
    --set overrides, then --seeds; with none of them, the demo."""
    if preset is None and config_file is None:
        preset = DEFAULT_PRESET
    layers = [preset_values(preset) if preset is not None else {},
              file_values(config_file) if config_file is not None else {},
              values or {}, parse_sets(sets or []), {"seeds": seeds} if seeds is not None else {}]
    flat: dict[str, Any] = {}
    for layer in layers:  # each checked for keys and types, also where a later one overrides it
        flat.update(typed(layer))
    return build(flat)


def from_dict(d: dict[str, Any]) -> RunConfig:
    """Inverse of :func:`canonical_dict` (used to read stored configs)."""
    return build(flatten(d))
