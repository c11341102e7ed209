"""``dense-control``: the width-matched dense control. At each level, a dense network of the run's architecture
with its widths scaled so that it has (as nearly as integer widths allow) as many weights as the level has
unpruned, trained with the run's dense recipe (``cfg.train``) on the replicate's noisy labels, from an init
seeded per level; its accuracies beside the level's, against the number of weights.

Scaling: the MLP's ``model.hidden`` widths (lenet-300-100: its 300 and 100, as an ``mlp``) by one factor, at
least 1 unit per layer; the conv nets' ``model.width``. Other models (a user's imported builder) are refused.
What is counted (``count``): ``all``, every parameter a network has (the level's unpruned prunable weights plus
all the weights and biases outside its mask; the dense network's parameters), or ``prunable``, only the
tensors the run prunes (the level's ``remaining``; the same tensors of the dense network, all kept).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import torch

from ...config import MAX_CHANNELS, MAX_WIDTH, ModelConfig
from ...errors import SparseddError
from ...models import DEFAULT_MLP_HIDDEN, build_model, builder_of
from ...pruning import full_mask, prunable_names
from ...rng import derive_seed
from ..base import ANALYSES, Analysis, Analyzer, Training, figure, pending

MLP_DEFAULTS = {"mlp": None, "lenet-300-100": (300, 100)}  # None: model.hidden, or the MLP's default widths
CONV_NETS = ("resnet18", "vgg16", "resnet101", "vit")  # scaled by model.width (0: their own 64; the vit's embedding)


@dataclass(frozen=True)
class DenseControlSettings:
    count: str = "all"  # all: every parameter; prunable: the tensors the run prunes only
    seed: int = 0

    def __post_init__(self) -> None:
        if self.count not in ("all", "prunable"):
            raise SparseddError(f"dense-control: count must be all or prunable, got {self.count!r}")


def _check_scalable(name: str) -> None:
    if name not in MLP_DEFAULTS and name not in CONV_NETS:
        raise SparseddError(f"dense-control cannot scale the widths of model {name!r}; it scales mlp and "
                            f"lenet-300-100 (model.hidden) and {', '.join(CONV_NETS)} (model.width)")


def _mlp_widths(cfg: ModelConfig) -> tuple[int, ...]:
    base = MLP_DEFAULTS[cfg.name]
    return tuple(base or cfg.hidden or DEFAULT_MLP_HIDDEN)


@functools.lru_cache(maxsize=4096)
def weight_count(cfg: ModelConfig, input_shape: tuple[int, ...], classes: int, method: str, layers: str,
                 count: str) -> int:
    """The weights of the dense network ``cfg`` (built on the meta device: no memory, no init), as counted."""
    with torch.device("meta"):
        model = builder_of(cfg.name)(cfg, input_shape, classes)
    if count == "all":
        return sum(p.numel() for p in model.parameters())
    params = dict(model.named_parameters())
    return sum(params[n].numel() for n in prunable_names(model, method, layers))


def scaled(cfg: ModelConfig, factor_or_width: float) -> ModelConfig:
    """``cfg`` with its widths scaled: the MLP's hidden widths by a factor (at least 1 unit each, capped),
    a conv net's ``model.width`` set."""
    if cfg.name in CONV_NETS:
        return dataclasses.replace(cfg, width=int(factor_or_width))
    widths = tuple(min(MAX_WIDTH, max(1, round(h * factor_or_width))) for h in _mlp_widths(cfg))
    return dataclasses.replace(cfg, name="mlp", hidden=widths)


def matched_model(cfg: ModelConfig, input_shape: tuple[int, ...], classes: int, method: str, layers: str,
                  count: str, target: int) -> tuple[ModelConfig, int]:
    """The scaled model config whose weight count is nearest ``target`` (the smaller on a tie), and its count.
    Bisection on the scale (the count never falls as it grows), then the nearer of the two ends."""
    _check_scalable(cfg.name)
    n = functools.partial(weight_count, input_shape=input_shape, classes=classes, method=method, layers=layers,
                          count=count)
    if cfg.name in CONV_NETS:
        lo, hi = 1, MAX_CHANNELS
        if n(scaled(cfg, lo)) < target:
            while hi - lo > 1:  # n(lo) < target <= n(hi), or hi is the cap
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if n(scaled(cfg, mid)) < target else (lo, mid)
        ends = [scaled(cfg, lo), scaled(cfg, hi)]
    else:
        lo, hi = 0.0, MAX_WIDTH / min(_mlp_widths(cfg))
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if n(scaled(cfg, mid)) < target else (lo, mid)
        ends = [scaled(cfg, lo), scaled(cfg, hi)]
    best = min(ends, key=lambda c: (abs(n(c) - target), n(c)))
    return best, n(best)


def level_counts(a: Analyzer, seed: int, sid: str, count: str) -> tuple[int, int]:
    """The level's weights as counted, and its prunable weights left (``remaining``)."""
    rep = a.replicate(seed)
    mask = a.store.final(sid)["mask"]
    kept = sum(int(m.sum()) for m in mask.values())
    if count == "prunable":
        return kept, kept
    total = weight_count(a.cfg.model, rep.input_shape, a.data().num_classes, a.cfg.prune.method, a.cfg.prune.layers,
                         "all")
    return total - sum(m.numel() for m in mask.values()) + kept, kept


def _control(a: Analyzer, seed: int, sid: str, s: DenseControlSettings) -> tuple[ModelConfig, int, int, int]:
    _check_scalable(a.cfg.model.name)
    rep = a.replicate(seed)
    target, kept = level_counts(a, seed, sid, s.count)
    cfg, got = matched_model(a.cfg.model, rep.input_shape, a.data().num_classes, a.cfg.prune.method,
                             a.cfg.prune.layers, s.count, target)
    return cfg, got, target, kept


def trainings(a: Analyzer, seed: int, level: int, sid: str, s: DenseControlSettings) -> list[Training]:
    """The width-matched dense network, from an init seeded by the seed and the level, trained as the dense
    network was (``cfg.train``, the same noisy labels and example order)."""
    cfg, _, _, _ = _control(a, seed, sid, s)
    rep = a.replicate(seed)
    model = build_model(cfg, rep.input_shape, a.data().num_classes,
                        derive_seed(seed, "dense-control", s.seed, level)).to(a.options.device)
    return [Training((a.result_id("dense-control", sid, s), 0), model, rep.train_data, rep.cfg.train,
                     rep.full_mask(model), (seed, "order"))]


def compute(a: Analyzer, seed: int, level: int, sid: str, s: DenseControlSettings) -> dict:
    def measure() -> dict:
        cfg, got, target, kept = _control(a, seed, sid, s)
        res = a.fit(trainings(a, seed, level, sid, s)[0])
        metrics = a.store.done_info(sid)["metrics"]
        return {"count": s.count, "weights": target, "remaining": kept, "dense_weights": got,
                "dense_hidden": list(cfg.hidden) if cfg.name == "mlp" else [], "dense_width": cfg.width,
                "dense_test_acc": res.final["test_acc"], "dense_test_acc_best": res.final["test_acc_best"],
                "dense_train_acc_noisy": res.final["train_acc_noisy"],
                "level_train_acc_noisy": metrics["train_acc_noisy"]}
    return a.cached("dense-control", sid, s, measure)


ANALYSES.register("dense-control", Analysis(DenseControlSettings, compute,
                                            trainings=pending("dense-control", trainings),
                                            figure=figure("fig_dense_control"),
                                            summary="a dense net of as many weights, widths scaled"))
