"""The learning distance ||w - w_init||_2, and the one-time correction of stores that recorded it wrongly.

The paper defines it over the network's weights and biases. Until this correction it was summed over
the whole ``state_dict``, so on batch-norm models the running statistics and the step counter
(``num_batches_tracked``: about 2.8e5 for ResNet-18 after 160 epochs) dominated it.
"""

from __future__ import annotations

import torch

from ..store import DamagedFile, Store

# batch-norm running statistics: state, not weights (every buffer of the registered models is one of
# these; tests/test_image_models.py checks it, so the saved state alone tells parameters apart)
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
CORRECTION = "distance-over-parameters"


def learning_distance(state: dict[str, torch.Tensor], init: dict[str, torch.Tensor]) -> float:
    """||w - w_init||_2 over the parameters (pruned weights are zero in ``state``)."""
    keys = [k for k in init if not k.endswith(BUFFERS)]
    return float(torch.sqrt(sum(((state[k].double() - init[k].double()) ** 2).sum() for k in keys)))


def correct_distances(store: Store) -> int:
    """Recompute, once per store, the distances recorded over batch-norm buffers too (levels and
    re-dense analyses), in their ``done.json`` and in the index; returns how many changed.

    Stages of models without batch norm keep their values (nothing entered them but parameters).
    A read-only store is left as it is (its distances on batch-norm models stay wrong until a
    command that may write opens it).
    """
    if store.readonly or CORRECTION in store.migrated():
        return 0
    try:
        with store.lock("migration-" + CORRECTION):  # one process corrects; the others find it done
            if CORRECTION in store.migrated():
                return 0
            changed = sum(_correct_sound(store, sid) for sid in store.stage_ids() if store.is_done(sid))
            store.mark_migrated(CORRECTION)
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
    state = store.final(sid)["model"]
    if not any(k.endswith(BUFFERS) for k in state):
        return False
    info = store.done_info(sid)
    if kind == "analysis-redense":
        distance = learning_distance(state, store.init(_dense_of(store, key["target"])))
        if distance == info["result"]["distance"]:
            return False
        info["result"]["distance"] = distance
        store.index.record_analysis(sid, key["target"], "redense", key["settings"], info["result"])
    else:
        distance = learning_distance(state, store.init(_dense_of(store, sid)))
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
