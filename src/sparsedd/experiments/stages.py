"""What a stage is: its key (whose hash is its id) and, when it must be computed, its job.

- ``dense``: data, model, training and seed; pruning and retraining settings are not in it, so every
  pruning method and retraining mode shares the dense network.
- ``level``: the parent stage's id, the level, the pruning round's settings and the retraining
  settings the mode uses. The parent is the stage the level prunes (:func:`parent_stage`): iterative
  level L chains level L-1, so ``prune.levels`` can grow later; a one-shot level prunes the dense
  network, so it chains the dense stage and no other level (its ``prune`` has ``schedule = oneshot``).
- ``rewind``: the dense stage and the iteration whose weights weight rewinding starts from.

``tests/test_config.py`` pins these ids: changing a key renames every stored result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..config import PruneConfig, RetrainConfig, RunConfig, TrainConfig, canonical_dict, stable_hash
from ..models.imported import is_import_path, source_digest
from ..pruning import PRUNING_METHODS, Mask
from .retrain import RETRAIN_MODES


def dense_key(cfg: RunConfig) -> dict[str, Any]:
    """A user's model (``"package.module:function"``) adds the digest of its module's source, so editing the
    builder makes new stages (every level descends from the dense stage)."""
    c = canonical_dict(cfg)
    key = {"kind": "dense", "seed": cfg.seed, **{k: c.get(k, {}) for k in ("data", "model", "train")}}
    if is_import_path(cfg.model.name):
        key["model_source"] = source_digest(cfg.model.name)
    return key


def parent_stage(cfg: RunConfig, chain: list[str]) -> str:
    """The stage the next level prunes, given the replicate's stage ids so far (dense first): the
    previous level's when iterative, the dense stage's when one-shot."""
    return chain[0] if cfg.prune.schedule == "oneshot" else chain[-1]


def level_key(cfg: RunConfig, parent: str, level: int) -> dict[str, Any]:
    """``parent``: the stage this level prunes (:func:`parent_stage`)."""
    prune = round_key(cfg.prune)
    if level == 1:  # one-shot level 1 is iterative level 1 (the dense network pruned by prune.fraction): one stage
        prune.pop("schedule", None)
    return {"kind": "level", "parent": parent, "level": level, "prune": prune, "retrain": retrain_key(cfg.retrain)}


def round_key(prune: PruneConfig) -> dict[str, Any]:
    """What one pruning round depends on: every prune setting but the number of levels, and of the
    settings pruning methods own (their records' ``owns``), only the chosen method's."""
    d = canonical_dict(prune)
    d.pop("levels", None)
    own = set(PRUNING_METHODS[prune.method].owns)
    for name in PRUNING_METHODS.names():
        for setting in set(PRUNING_METHODS[name].owns) - own:
            d.pop(setting, None)
    return d


def retrain_key(retrain: RetrainConfig) -> dict[str, Any]:
    """The retraining settings that matter for the mode (so unused settings never split stage ids): the
    mode's own (its record's ``fields``), and the distillation's while it is on."""
    keep = {"mode", *RETRAIN_MODES[retrain.mode].fields}
    if retrain.distill_alpha > 0:
        keep |= {"distill_alpha", "distill_temperature"}
    if retrain.rewind_iteration == 0:  # rewinding to the init: the rest of the schedule is all of it
        keep.discard("rewind_schedule")
    return {k: v for k, v in canonical_dict(retrain).items() if k in keep}


def stage_chain(cfg: RunConfig) -> dict[tuple[int, int], str]:
    """Every stage id of a run by (seed, level), as the run computes them level by level
    (:meth:`Replicate.stage` with :func:`parent_stage`): what ``sparsedd doctor`` links a run to."""
    ids: dict[tuple[int, int], str] = {}
    for seed in cfg.seed_list():
        one = cfg.with_seed(seed)
        chain = [stable_hash(dense_key(one))]
        for level in range(1, cfg.prune.levels + 1):
            chain.append(stable_hash(level_key(one, parent_stage(one, chain), level)))
        ids.update({(seed, level): sid for level, sid in enumerate(chain)})
    return ids


def rewind_key(dense_id: str, iteration: int) -> dict[str, Any]:
    return {"kind": "rewind", "dense": dense_id, "iteration": iteration}


def batch_key(stage_ids: list[str]) -> dict[str, Any]:
    """The folder of a batched computation of several stages (its checkpoint and its K outcomes)."""
    return {"kind": "batch", "stages": sorted(stage_ids)}


def data_key(cfg: RunConfig) -> str:
    """Runs whose data differ only in label noise share one data set in memory (and can batch). The human
    noise types load their published labels with the data set, so they share one of their own."""
    from ..data.noise import HUMAN_NOISE

    d = canonical_dict(cfg, full=True)["data"]
    key = {k: v for k, v in d.items() if not k.startswith("noise") and k != "asymmetric_map"}  # labels only
    if cfg.data.noise_type in HUMAN_NOISE:
        key["human_labels"] = True
    return stable_hash(key)


@dataclass
class Job:
    """A stage to train: its id, level, start weights (before masking), mask and schedule, and the dense
    stage it descends from (whose init the learning distance is measured from)."""

    sid: str
    level: int
    state: dict[str, torch.Tensor]
    mask: Mask
    train_cfg: TrainConfig
    name: str
    dense: str
