"""The learning distance ||w - w_ref||_2 of a network over the weights it has, and the one-time
correction of stores that recorded it otherwise.

The paper's learning distance of a sparse network is over its weights: a pruned entry is not a weight
of the level, so it is left out of both sides (the paper's code applies the mask to every state it
trains from, ``pruned_model.py``). The reference is the dense initialization under the level's mask by
default; the ``distance`` analysis can take the level's own start weights instead (``reference = start``).
Batch-norm running statistics and step counters are state, not weights, and are left out too.

Earlier versions recorded it otherwise, and :func:`correct_distances` fixes such a store once, from the
saved weights and masks (no retraining):
- until the batch-norm fix, over the whole ``state_dict`` (the step counters, about 2.8e5 for ResNet-18
  after 160 epochs, dominated it);
- until the mask fix, against the full, unmasked init, so every pruned weight added its initial value
  squared and the distance grew with sparsity whether the network learned or not.
"""

from __future__ import annotations

from typing import Mapping

import torch

from ..store import DamagedFile, Store

# batch-norm running statistics: state, not weights (every buffer of the registered models is one of
# these; tests/test_image_models.py checks it, so the saved state alone tells parameters apart)
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
CORRECTION = "distance-over-unpruned-weights"  # the rule in force; its marker in ROOT/migrations.json
EARLIER = ("distance-over-parameters",)  # markers of earlier rules, each superseded by CORRECTION


def learning_distance(state: Mapping[str, torch.Tensor], ref: Mapping[str, torch.Tensor],
                      mask: Mapping[str, torch.Tensor] | None = None) -> float:
    """||w - w_ref||_2 over the parameters, leaving out the entries ``mask`` prunes (on both sides)."""
    mask = mask or {}
    total = torch.zeros((), dtype=torch.float64)
    for k in ref:
        if k.endswith(BUFFERS):
            continue
        diff = state[k].detach().cpu().double() - ref[k].detach().cpu().double()
        if k in mask:
            diff = diff[mask[k].cpu().bool()]
        total += (diff ** 2).sum()
    return float(torch.sqrt(total))


def correct_distances(store: Store) -> int:
    """Recompute, once per store, every distance recorded under an earlier rule (levels, dense stages and
    re-dense analyses), in their ``done.json`` and in the index; returns how many changed.

    A read-only store is left as it is (its distances stay as recorded until a command that may write
    opens it).
    """
    if store.readonly or CORRECTION in store.migrated():
        return 0
    try:
        with store.lock("migration-" + CORRECTION):  # one process corrects; the others find it done
            if CORRECTION in store.migrated():
                return 0
            changed = sum(_correct_sound(store, sid) for sid in store.stage_ids() if store.is_done(sid))
            for marker in (*EARLIER, CORRECTION):
                if marker not in store.migrated():
                    store.mark_migrated(marker)
    except OSError:  # a store on read-only media or of another user: read as it is
        return 0
    return changed


def _correct_sound(store: Store, sid: str) -> bool:
    try:
        return _correct(store, sid)
    except DamagedFile:  # left as it is: computed again, with the right distance, when next needed
        return False


def _correct(store: Store, sid: str) -> bool:
    key = store.stage_key(sid)
    kind = key.get("kind")
    if kind not in ("dense", "level", "analysis-redense"):
        return False
    info = store.done_info(sid)
    if kind == "analysis-redense":  # the pruned weights were given back: every weight is the network's
        final = store.final(sid)
        distance = learning_distance(final["model"], store.init(_dense_of(store, key["target"])))
        if distance == info["result"]["distance"]:
            return False
        info["result"]["distance"] = distance
        store.index.record_analysis(sid, key["target"], "redense", key["settings"], info["result"])
    else:
        final = store.final(sid)
        distance = learning_distance(final["model"], store.init(_dense_of(store, sid)), final.get("mask"))
        if distance == info["metrics"]["distance"]:
            return False
        info["metrics"]["distance"] = distance
        store.index.record_level(sid, info["metrics"]["level"], info["metrics"])
    store.finish_stage(sid, info)  # done.json rewritten atomically
    return True


def _dense_of(store: Store, sid: str) -> str:
    """The dense stage a level descends from (following the parents)."""
    key = store.stage_key(sid)
    while key["kind"] != "dense":
        sid = key["parent"]
        key = store.stage_key(sid)
    return sid
