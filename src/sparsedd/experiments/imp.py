"""The iterative pruning loop: dense stage, then levels 1..L, one code path for every retraining mode.

Flow of one replicate (one seed)::

    data (+ noise) -> dense stage (seeded init; saves init and final)
    -> for each level: prune(previous weights, previous mask) -> start weights by retrain mode
       -> train with mask -> metrics -> store

Each stage is content-addressed: the dense stage depends only on data, noise, model, training and
seed, so every pruning method and retraining mode shares it; level L's id chains level L-1's id
with the pruning and retraining settings. Completed stages are skipped, interrupted ones resume.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..config import RunConfig, canonical_dict
from ..data import Dataset, load_dataset
from ..data.noise import apply_noise
from ..errors import SparseddError
from ..models import build_model
from ..pruning import Mask, density, full_mask, get_strategy, gradient_saliency, layer_sparsity, remaining
from ..rng import derive_seed, generator
from ..store import Store
from ..training import TrainData, train
from ..training.loop import iters_per_epoch
from .retrain import level_train_config, start_weights


@dataclass
class Runtime:
    """How to execute (not what to compute: none of this enters a stage id)."""

    device: str = "cpu"
    data_dir: str | None = None
    checkpoint_every_s: float = 60.0  # inside long epochs
    checkpoint_epoch_s: float = 1.0  # at epoch ends, at most this often (0: every epoch)
    progress: bool = True


def dense_key(cfg: RunConfig) -> dict[str, Any]:
    c = canonical_dict(cfg)
    return {"kind": "dense", "seed": cfg.seed, **{k: c.get(k, {}) for k in ("data", "model", "train")}}


def level_key(cfg: RunConfig, parent: str, level: int) -> dict[str, Any]:
    return {"kind": "level", "parent": parent, "level": level,
            "prune": cfg.prune.round_key(), "retrain": cfg.retrain.relevant()}


def rewind_key(dense_id: str, iteration: int) -> dict[str, Any]:
    return {"kind": "rewind", "dense": dense_id, "iteration": iteration}


def learning_distance(state: dict[str, torch.Tensor], init: dict[str, torch.Tensor]) -> float:
    """||w - w_init||_2 over all parameters (pruned weights are zero in ``state``)."""
    return float(torch.sqrt(sum(((state[k].double() - init[k].double()) ** 2).sum() for k in init)))


class _Progress:
    """A rich progress display with one bar for the whole run and one for the current stage."""

    def __init__(self, enabled: bool, total_epochs: int):
        self.enabled = enabled
        self.bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
            self.total = self.bar.add_task("all levels", total=total_epochs, info="")
            self.stage = None

    @contextlib.contextmanager
    def running(self) -> Iterator["_Progress"]:
        if self.bar is None:
            yield self
            return
        with self.bar:
            yield self

    def start_stage(self, name: str, epochs: int) -> None:
        if self.bar is not None:
            if self.stage is not None:
                self.bar.remove_task(self.stage)
            self.stage = self.bar.add_task(name, total=epochs, info="")

    def epoch(self, metrics: dict[str, Any]) -> None:
        if self.bar is not None:
            info = f"test {metrics['test_acc']:.3f}" if "test_acc" in metrics else ""
            self.bar.update(self.stage, advance=1, info=info)
            self.bar.update(self.total, advance=1)

    def skip(self, epochs: int) -> None:
        if self.bar is not None:
            self.bar.update(self.total, advance=epochs)


class Replicate:
    """One seed's chain of stages."""

    def __init__(self, cfg: RunConfig, run_id: str, data: Dataset, store: Store, rt: Runtime, progress: _Progress):
        self.cfg, self.run_id, self.data, self.store, self.rt, self.progress = cfg, run_id, data, store, rt, progress
        noisy = apply_noise(data.y_train.cpu(), data.num_classes, cfg.data.noise, cfg.data.noise_type, cfg.data.noise_seed)
        self.noise = noisy
        dev = data.x_train.device
        self.train_data = TrainData(data.x_train, noisy.labels.to(dev), data.y_train, data.x_test, data.y_test,
                                    noisy.corrupted.to(dev))
        self.input_shape = tuple(data.x_train.shape[1:])

    # --- helpers
    def new_model(self, seed: int) -> nn.Module:
        return build_model(self.cfg.model, self.input_shape, self.data.num_classes, seed).to(self.rt.device)

    def _train_stage(self, stage_id: str, model: nn.Module, mask: Mask, train_cfg, name: str,
                     stop_iteration: int | None = None):
        self.progress.start_stage(name, train_cfg.epochs)
        ckpt = self.store.checkpointer(stage_id, self.rt.checkpoint_every_s, self.rt.checkpoint_epoch_s)
        state = ckpt.path.exists()
        if state:  # epochs already done before the interruption
            done_epochs = len(ckpt.load()["history"])
            self.progress.skip(done_epochs)
        record: Callable[[dict[str, Any]], None] = self.progress.epoch
        return train(model, self.train_data, train_cfg, mask, order_key=(self.cfg.seed, "order"), checkpoint=ckpt,
                     stop_iteration=stop_iteration, on_epoch=record)

    def _finish(self, stage_id: str, level: int, model: nn.Module, mask: Mask, result, init: dict, seconds: float) -> dict:
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        metrics = dict(result.final)
        metrics.update({
            "level": level, "density": density(mask), "sparsity": 1.0 - density(mask), "remaining": remaining(mask),
            "layer_sparsity": layer_sparsity(mask), "distance": learning_distance(state, init),
            "effective_noise": self.noise.effective_rate, "seconds": seconds,
        })
        self.store.save(stage_id, "final.pt", {"model": state, "mask": {k: v.cpu() for k, v in mask.items()},
                                               "optim": result.optimizer_state})
        self.store.index.record_epochs(stage_id, result.history)
        self.store.index.record_level(stage_id, level, metrics)
        self.store.finish_stage(stage_id, {"metrics": metrics, "history": result.history})
        return metrics

    def _replay_index(self, stage_id: str, level: int) -> None:
        """A stage done earlier (maybe by another run): make sure its rows are in the index."""
        info = self.store.done_info(stage_id)
        self.store.index.record_epochs(stage_id, info["history"])
        self.store.index.record_level(stage_id, level, info["metrics"])

    # --- stages
    def dense(self) -> str:
        cfg = self.cfg
        sid = self.store.stage_id(dense_key(cfg))
        model = self.new_model(derive_seed(cfg.seed, "init"))
        names = model.prunable_names(cfg.prune.layers)
        if self.store.is_done(sid):
            self._replay_index(sid, 0)
            self.progress.skip(cfg.train.epochs)
        else:
            self.store.begin_stage(sid, dense_key(cfg))
            init_path = self.store.stage_dir(sid) / "init.pt"
            if not init_path.exists():
                self.store.save(sid, "init.pt", {"model": model.state_dict()})
                self.store.save(sid, "labels.pt", {"labels": self.noise.labels, "chosen": self.noise.chosen,
                                                   "corrupted": self.noise.corrupted,
                                                   "effective_rate": torch.tensor(self.noise.effective_rate)})
            init = self.store.load(sid, "init.pt")["model"]
            t0 = time.time()
            mask = full_mask(model, names)
            result = self._train_stage(sid, model, mask, cfg.train, f"seed {cfg.seed} dense")
            self._finish(sid, 0, model, mask, result, init, time.time() - t0)
        self.store.index.link(self.run_id, cfg.seed, 0, sid)
        return sid

    def rewind_point(self, dense_id: str) -> dict[str, torch.Tensor]:
        """The dense run's weights at the rewind iteration, recomputed deterministically and cached."""
        k = self.cfg.retrain.rewind_iteration
        init = self.store.load(dense_id, "init.pt")["model"]
        if k == 0:
            return init
        sid = self.store.stage_id(rewind_key(dense_id, k))
        if not self.store.is_done(sid):
            self.store.begin_stage(sid, rewind_key(dense_id, k))
            model = self.new_model(0)
            model.load_state_dict(init)
            mask = full_mask(model, model.prunable_names(self.cfg.prune.layers))
            train(model, self.train_data, self.cfg.train, mask, order_key=(self.cfg.seed, "order"), stop_iteration=k)
            self.store.save(sid, "weights.pt", {"model": model.state_dict()})
            self.store.finish_stage(sid, {"iteration": k})
        return self.store.load(sid, "weights.pt")["model"]

    def prune(self, level: int, model: nn.Module, mask: Mask) -> Mask:
        """The next mask from the previous level's weights; ranking happens on the CPU (deterministic)."""
        cfg = self.cfg.prune
        weights = {n: p.detach().cpu() for n, p in model.named_parameters() if n in mask}
        extra: dict[str, Any] = {"generator": generator(self.cfg.seed, "prune-random", level)}
        if cfg.method == "gradient":
            sal = gradient_saliency(model, self.train_data.x, self.train_data.y, mask,
                                    batches=cfg.gradient_batches, batch_size=self.cfg.train.batch_size,
                                    generator=generator(self.cfg.seed, "prune-gradient", level))
            extra["saliency"] = {n: v.cpu() for n, v in sal.items()}
        cpu_mask = {n: m.cpu() for n, m in mask.items()}
        new = get_strategy(cfg.method)(weights, cpu_mask, fraction=cfg.fraction, scope=cfg.scope, **extra)
        return {n: m.to(self.rt.device) for n, m in new.items()}

    def level(self, level: int, parent: str, init: dict, rewind: dict) -> str:
        cfg = self.cfg
        key = level_key(cfg, parent, level)
        sid = self.store.stage_id(key)
        train_cfg = level_train_config(cfg)
        if self.store.is_done(sid):
            self._replay_index(sid, level)
            self.progress.skip(train_cfg.epochs)
        else:
            self.store.begin_stage(sid, key)
            t0 = time.time()
            prev = self.store.load(parent, "final.pt")
            model = self.new_model(0)
            model.load_state_dict(prev["model"])
            mask = self.prune(level, model, {n: m.to(self.rt.device) for n, m in prev["mask"].items()})
            fresh = self.new_model(derive_seed(cfg.seed, "reinit", level)).state_dict() if cfg.retrain.mode == "reinit" else {}
            model.load_state_dict(start_weights(cfg.retrain.mode, previous=prev["model"], rewind=rewind, fresh=fresh))
            result = self._train_stage(sid, model, mask, train_cfg, f"seed {cfg.seed} level {level}/{cfg.prune.levels}")
            self._finish(sid, level, model, mask, result, init, time.time() - t0)
        self.store.index.link(self.run_id, cfg.seed, level, sid)
        return sid

    def run(self) -> None:
        dense_id = self.dense()
        init = self.store.load(dense_id, "init.pt")["model"]
        rewind = self.rewind_point(dense_id) if self.cfg.retrain.mode == "weight-rewind" else {}
        parent = dense_id
        for level in range(1, self.cfg.prune.levels + 1):
            parent = self.level(level, parent, init, rewind)


def check_fits(cfg: RunConfig, data: Dataset) -> None:
    """Checks that need the data's size."""
    if cfg.retrain.mode == "weight-rewind":
        total = cfg.train.epochs * iters_per_epoch(data.x_train.shape[0], cfg.train.batch_size)
        if cfg.retrain.rewind_iteration > total:
            raise SparseddError(f"retrain.rewind_iteration {cfg.retrain.rewind_iteration} is past the end of dense "
                                f"training ({total} iterations); choose a smaller value")


def run(cfg: RunConfig, store: Store, *, preset: str | None = None, runtime: Runtime | None = None) -> str:
    """Run (or resume) every replicate of ``cfg``; returns the run id."""
    rt = runtime or Runtime()
    data = load_dataset(cfg.data, data_dir=rt.data_dir, device=rt.device)  # fails before anything is written
    check_fits(cfg, data)
    run_id = cfg.run_id
    store.register_run(run_id, canonical_dict(cfg, full=True), preset, cfg.seeds, cfg.prune.levels)
    epochs_per_seed = cfg.train.epochs + cfg.prune.levels * level_train_config(cfg).epochs
    progress = _Progress(rt.progress, epochs_per_seed * cfg.seeds)
    try:
        with progress.running():
            for seed in cfg.seed_list():
                Replicate(cfg.with_seed(seed), run_id, data, store, rt, progress).run()
    except KeyboardInterrupt:
        store.index.set_status(run_id, "partial", "interrupted")
        raise
    except Exception as e:
        store.index.set_status(run_id, "failed", f"{type(e).__name__}: {e}")
        raise
    store.index.set_status(run_id, "complete")
    return run_id
