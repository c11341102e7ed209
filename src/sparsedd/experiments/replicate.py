"""One seed's chain of stages: the dense network, then each level pruned from the one before.

A level's job is made in two steps that are the algorithm itself: prune the previous level's final
weights (:meth:`Replicate.prune`), then pick the weights training starts from by retraining mode
(:meth:`Replicate.start_weights`, by the mode's entry in :data:`sparsedd.experiments.retrain.RETRAIN_MODES`). Every input a step needs (the parent stage,
the dense stage) is passed in; nothing depends on the order methods were called in.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
from torch import nn

from ..config import RunConfig, TrainConfig
from ..data import Dataset
from ..data.noise import apply_noise
from ..data.split import validation_split
from ..errors import notice
from ..models import build_model, builder_of
from ..options import ExecOptions
from ..pruning import (PRUNING_METHODS, Count, Mask, bn_convs, density, fixed_weights, full_mask, gradient_saliency,
                       layer_sparsity, prunable_names, remaining)
from ..registry import Registry
from ..rng import derive_seed, generator
from ..store import Store
from ..training import TrainData, TrainResult, train
from ..training.core import Objective, predict
from .distance import learning_distance
from .progress import SILENT, Progress
from .retrain import RETRAIN_MODES, level_train_config
from .stages import Job, dense_key, level_key, rewind_key


def training_view(data: Dataset, labels: torch.Tensor, corrupted: torch.Tensor, val_split: float) -> TrainData:
    """What a network trains and is evaluated on: the noisy labels, and with ``val_split`` a held-out part
    of the training set (noise is drawn on the whole set first, so the held-out labels are noisy too)."""
    dev = data.x_train.device
    labels, corrupted = labels.to(dev), corrupted.to(dev)
    if not val_split:
        return TrainData(data.x_train, labels, data.y_train, data.x_test, data.y_test, corrupted, augment=data.augment)
    keep, held = (i.to(dev) for i in validation_split(data.x_train.shape[0], val_split))
    is_corrupted = torch.zeros(data.x_train.shape[0], dtype=torch.bool, device=dev)
    is_corrupted[corrupted] = True
    return TrainData(data.x_train[keep], labels[keep], data.y_train[keep], data.x_test, data.y_test,
                     torch.nonzero(is_corrupted[keep], as_tuple=True)[0], augment=data.augment,
                     x_val=data.x_train[held], y_val=labels[held])


class Replicate:
    """One seed of a run: its noisy labels, and its stages' jobs, training and records."""

    def __init__(self, cfg: RunConfig, run_id: str | None, data: Dataset, store: Store, options: ExecOptions,
                 progress: Progress = SILENT):
        self.cfg, self.run_id, self.data, self.store, self.options, self.progress = (
            cfg, run_id, data, store, options, progress)
        coarse = data.coarse_train.cpu() if data.coarse_train is not None else None
        self.noise = apply_noise(data.y_train.cpu(), data.num_classes, cfg.data.noise, cfg.data.noise_type,
                                 cfg.data.noise_seed, coarse=coarse, dataset=cfg.data.name, human=data.human_train,
                                 draw=cfg.data.noise_draw, asymmetric_map=cfg.data.asymmetric_map)
        self.train_data = training_view(data, self.noise.labels, self.noise.corrupted, cfg.data.val_split)
        self.input_shape = tuple(data.x_train.shape[1:])
        self._teachers: dict[str, torch.Tensor | nn.Module] = {}
        self.diverged: tuple[int, int] | None = None  # (level, epoch) where training diverged; the chain ends there
        self.fixed = self._fixed_weights()
        self._execution: str | None = None  # what computed the last stage recorded (said when it changes)

    def _fixed_weights(self) -> int:
        """Weights prune.count = all-masked counts beside the mask (pruning.fixed_weights), from a model built
        on the meta device (no memory, no init)."""
        with torch.device("meta"):
            model = builder_of(self.cfg.model.name)(self.cfg.model, self.input_shape, self.data.num_classes)
        names = prunable_names(model, self.cfg.prune.method, self.cfg.prune.layers)
        return fixed_weights(model, names, self.cfg.prune.method, self.cfg.prune.count)

    def new_model(self, seed: int) -> nn.Module:
        return build_model(self.cfg.model, self.input_shape, self.data.num_classes, seed).to(self.options.device)

    def full_mask(self, model: nn.Module) -> Mask:
        """Nothing pruned yet, over the tensors this run's method prunes."""
        return full_mask(model, prunable_names(model, self.cfg.prune.method, self.cfg.prune.layers))

    def schedule(self, level: int) -> TrainConfig:
        return self.cfg.train if level == 0 else level_train_config(self.cfg)

    def stage(self, level: int, parent: str | None) -> tuple[str, dict[str, Any]]:
        """The id and key of this replicate's stage at ``level`` (``parent``: level - 1's stage id)."""
        key = dense_key(self.cfg) if level == 0 else level_key(self.cfg, parent, level)
        return self.store.stage_id(key), key

    # --- a stage's job (None when the stage is done); the caller holds the stage's lock
    def prepare(self, level: int, parent: str | None, dense_id: str | None) -> tuple[str, Job | None]:
        sid, key = self.stage(level, parent)
        if self.store.check_done(sid):  # a done stage with a damaged file is computed again
            self.adopt(level, sid)
            return sid, None
        self.store.begin_stage(sid, key)
        return sid, self.dense_job(sid) if level == 0 else self.level_job(level, sid, parent, dense_id)

    def dense_job(self, sid: str) -> Job:
        """The dense network from its seeded init; the init and the noisy labels are saved with it."""
        model = self.new_model(derive_seed(self.cfg.seed, "init"))
        if not self.store.has_init(sid):
            self.store.save_init(sid, model.state_dict())
        if not self.store.has_labels(sid):  # (on its own: a kill between the two, or labels set aside as damaged)
            self.store.save_labels(sid, self.noise.labels, self.noise.chosen, self.noise.corrupted,
                                   self.noise.effective_rate)
        mask = self.full_mask(model)
        return Job(sid, 0, model.state_dict(), mask, self.cfg.train, f"seed {self.cfg.seed} dense", sid)

    def level_job(self, level: int, sid: str, parent: str, dense_id: str) -> Job:
        """Prune the parent's final weights (the previous level's, or the dense network's when one-shot),
        then start from the weights the retraining mode picks ("previous" is the parent)."""
        prev = self.store.final(parent)
        model = self.new_model(0)
        model.load_state_dict(prev["model"])
        # pruning the dense network starts from this run's prunable layers, not the dense stage's mask:
        # the dense stage is shared by runs that prune different layers (prune settings are not in its id)
        before = self.full_mask(model) if parent == dense_id else prev["mask"]
        mask = self.prune(level, model, before)
        state = self.start_weights(level, prev["model"], dense_id)
        return Job(sid, level, state, mask, self.schedule(level), f"seed {self.cfg.seed} level {level}/{self.cfg.prune.levels}",
                   dense_id)

    def start_weights(self, level: int, previous: dict[str, torch.Tensor], dense_id: str) -> dict[str, torch.Tensor]:
        """The weights the retraining mode starts a level from (before its mask): only those are computed."""
        start = RETRAIN_MODES[self.cfg.retrain.mode].start
        if start == "rewind":
            return self.rewind_point(dense_id)
        if start == "fresh":  # a fresh init, seeded per level
            return self.new_model(derive_seed(self.cfg.seed, "reinit", level)).state_dict()
        return previous

    def prune(self, level: int, model: nn.Module, mask: Mask) -> Mask:
        """The next mask from the previous level's weights, by the method's record: the inputs it needs are
        computed here (:data:`PRUNING_INPUTS`), so the method stays a pure function; ranking happens on the
        CPU (deterministic)."""
        cfg = self.cfg.prune
        method = PRUNING_METHODS[cfg.method]
        weights = {n: p.detach().cpu() for n, p in model.named_parameters() if n in mask}
        inputs = {need: PRUNING_INPUTS[need](self, level, model, mask) for need in method.needs}
        new = method.select(weights, {n: m.cpu() for n, m in mask.items()}, fraction=cfg.level_fraction(level),
                            scope=cfg.scope, count=Count(cfg.count, self.fixed), **inputs)
        return {n: m.to(self.options.device) for n, m in new.items()}

    def prune_generator(self, level: int, model: nn.Module, mask: Mask) -> torch.Generator:
        """A generator seeded by the seed and the level (random pruning's draw)."""
        return generator(self.cfg.seed, "prune-random", level)

    def batch_norm_convs(self, level: int, model: nn.Module, mask: Mask) -> dict[str, str | None]:
        """Which conv feeds which batch norm, traced from the model (slimming's structure)."""
        return bn_convs(model)

    def gradient_scores(self, level: int, model: nn.Module, mask: Mask) -> dict[str, torch.Tensor]:
        """|w * dL/dw| by ``prune.gradient_rule``: the paper's one augmented batch in train mode, or the
        sum of ``prune.gradient_batches`` batches in eval mode (``pruning/gradient.py``)."""
        cfg, paper = self.cfg.prune, self.cfg.prune.gradient_rule == "paper"
        device_mask = {n: m.to(self.options.device) for n, m in mask.items()}
        sal = gradient_saliency(model, self.train_data.x, self.train_data.y, device_mask,
                                batches=1 if paper else cfg.gradient_batches, batch_size=self.cfg.train.batch_size,
                                generator=generator(self.cfg.seed, "prune-gradient", level),
                                train_mode=paper, augment=self.train_data.augment if paper else "none")
        return {n: v.cpu() for n, v in sal.items()}

    def rewind_point(self, dense_id: str) -> dict[str, torch.Tensor]:
        """The dense run's weights at the rewind iteration, recomputed deterministically and cached.

        The dense stage need not know the iteration: replaying its first k iterations from the saved
        init with the same data order gives the same weights.
        """
        k = self.cfg.retrain.rewind_iteration
        init = self.store.init(dense_id)
        if k == 0:
            return init
        sid = self.store.stage_id(rewind_key(dense_id, k))
        with self.store.lock(sid):
            if self.store.check_done(sid):
                return self.store.rewind(sid)
            self.store.begin_stage(sid, rewind_key(dense_id, k))
            model = self.new_model(0)
            model.load_state_dict(init)
            mask = self.full_mask(model)
            train(model, self.train_data, self.cfg.train, mask, order_key=(self.cfg.seed, "order"), stop_iteration=k,
                  objective=self.objective(0, dense_id))  # the dense run's own trajectory, penalty included
            self.store.save_rewind(sid, model.state_dict())
            self.store.finish_stage(sid, {"iteration": k})
            return model.state_dict()

    # --- training one job, and recording a trained one
    def train_job(self, job: Job) -> tuple[nn.Module, TrainResult]:
        model = self.new_model(0)
        model.load_state_dict(job.state)
        self.progress.start_stage(job.name, job.train_cfg.epochs)
        opts = self.options
        ckpt = self.store.checkpointer(job.sid, opts.checkpoint_every_s, opts.checkpoint_epoch_s)
        state = ckpt.load()  # kept by the checkpointer, so train() does not read it again
        if state is not None:  # epochs already done before the interruption
            self.progress.skip(len(state["history"]))
        result = train(model, self.train_data, job.train_cfg, job.mask, order_key=(self.cfg.seed, "order"),
                       checkpoint=ckpt, on_epoch=self.progress.epoch, accel=opts.accel, dist=opts.dist,
                       sparse=opts.sparse_policy, objective=self.objective(job.level, job.dense))
        return model, result

    def objective(self, level: int, dense_id: str) -> Objective:
        """The remedies a stage trains with: the distance penalty toward the dense init (every stage) and
        distillation from the dense network (pruned levels)."""
        penalty = self.cfg.train.distance_penalty
        alpha = self.cfg.retrain.distill_alpha if level > 0 else 0.0
        return Objective(anchor=self.store.init(dense_id) if penalty else None, penalty=penalty,
                         teacher=self.teacher(dense_id) if alpha else None, alpha=alpha,
                         temperature=self.cfg.retrain.distill_temperature, bn_l1=self.cfg.train.bn_l1)

    def objective_active(self, job: Job) -> bool:
        """Whether the stage trains with a remedy or stops on convergence (then alone: the stacked trainer has
        no objective, and would train a converged network on beside the others)."""
        t = self.cfg.train
        return t.distance_penalty > 0 or t.bn_l1 > 0 or t.stop_loss > 0 or (job.level > 0 and self.cfg.retrain.distill_alpha > 0)

    def teacher(self, dense_id: str) -> torch.Tensor | nn.Module:
        """The dense network as a teacher: its logits on every training example, or (with augmentation,
        where every batch differs) the network itself in eval mode."""
        if dense_id not in self._teachers:
            model = self.new_model(0)
            model.load_state_dict(self.store.final(dense_id)["model"])
            model.eval()
            augmented = self.train_data.augment != "none"
            self._teachers[dense_id] = model if augmented else predict(model, self.train_data.x)
        return self._teachers[dense_id]

    def record(self, job: Job, model: nn.Module, result: TrainResult, seconds: float, stacked: int = 1) -> None:
        """Save the stage's weights and metrics, then mark it done (``done.json`` last) and link it to the run.
        ``seconds``: the stage's training time (its share, when ``stacked`` networks trained as one)."""
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        init = self.store.init(job.dense)
        metrics = dict(result.final)
        metrics.update({
            "level": job.level, "density": density(job.mask, self.fixed), "sparsity": 1.0 - density(job.mask, self.fixed),
            "remaining": remaining(job.mask, self.fixed), "sparsity_of": self.cfg.prune.count,
            "execution": result.execution or "dense-masked",
            "layer_sparsity": layer_sparsity(job.mask),
            "distance": learning_distance(state, init, job.mask), "effective_noise": self.noise.effective_rate, "seconds": seconds,
        })
        self.store.save_final(job.sid, state, {k: v.cpu() for k, v in job.mask.items()}, result.optimizer_state)
        self.store.index.record_epochs(job.sid, result.history)
        self.store.index.record_level(job.sid, job.level, metrics)
        self.store.finish_stage(job.sid, {"metrics": metrics, "history": result.history})
        self._link(job.level, job.sid)
        self._note_divergence(job.level, metrics)
        self._note_execution(job.level, metrics["execution"])
        self.progress.finished(job.name, metrics, seconds, stacked)

    def train_and_record(self, job: Job) -> None:
        t0 = time.time()
        model, result = self.train_job(job)
        self.record(job, model, result, time.time() - t0)

    def adopt(self, level: int, sid: str) -> None:
        """A stage done before (maybe by another run, or another replicate of this task): its rows in
        the index, linked to this run."""
        info = self.store.done_info(sid)
        self.store.index.record_epochs(sid, info["history"])
        self.store.index.record_level(sid, level, info["metrics"])
        self._link(level, sid)
        self.progress.skip(self.schedule(level).epochs)
        self._note_divergence(level, info["metrics"])

    def _note_execution(self, level: int, execution: str) -> None:
        """Say once, when it changes along the chain, what computes this seed's stages and why (the measured
        decisions of --sparse auto and --batch auto differ between machines; each stage records its own)."""
        if execution == self._execution:
            return
        kind = execution.split()[-1]
        why = None
        if kind == "compact":
            why = ("--sparse on" if self.options.sparse == "on" else "--sparse auto measured the live units alone "
                   "faster at this density on this machine; --sparse off computes dense-masked")
        elif kind == "stacked":
            why = ("--batch on" if self.options.batch == "on" else "--batch auto measured the seeds faster as one "
                   "computation on this machine; --batch off trains them one by one")
        if self._execution is not None or why:
            notice(f"seed {self.cfg.seed} level {level}: {execution} execution" + (f" ({why})" if why else ""))
        self._execution = execution

    def _note_divergence(self, level: int, metrics: dict[str, Any]) -> None:
        """A stage that diverged ends the seed's chain: its weights are not finite, so no later level can
        be pruned from them (the stage is still done: computing it again diverges again)."""
        if metrics.get("diverged"):
            self.diverged = (level, int(metrics.get("diverged_epoch", 0)))

    def _link(self, level: int, sid: str) -> None:
        if self.run_id is not None:
            self.store.index.link(self.run_id, self.cfg.seed, level, sid)


# What a pruning method may need beyond the weights and the mask (its record's ``needs``), by name:
# (the replicate, the level, the model with the previous level's weights, its mask) -> the input. A method
# needing something new registers its provider here.
PRUNING_INPUTS: Registry[Callable[[Replicate, int, nn.Module, Mask], Any]] = Registry("pruning input")
PRUNING_INPUTS.register("generator", Replicate.prune_generator)
PRUNING_INPUTS.register("saliency", Replicate.gradient_scores)
PRUNING_INPUTS.register("bn_convs", Replicate.batch_norm_convs)
