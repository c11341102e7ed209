"""The learning distance ||w - w_ref||_2 of a network over the weights it has.

The paper's learning distance of a sparse network is over its weights: a pruned entry is not a weight
of the level, so it is left out of both sides (the paper's code applies the mask to every state it
trains from, ``pruned_model.py``). The reference is the dense initialization under the level's mask by
default; the ``distance`` analysis can take the level's own start weights instead (``reference = start``).
Batch-norm running statistics and step counters are state, not weights, and are left out too.

Earlier versions recorded it otherwise, and the store corrects such a store once, from the saved weights
and masks (no retraining; :func:`sparsedd.store.migrations.correct_distances`):
- until the batch-norm fix, over the whole ``state_dict`` (the step counters, about 2.8e5 for ResNet-18
  after 160 epochs, dominated it);
- until the mask fix, against the full, unmasked init, so every pruned weight added its initial value
  squared and the distance grew with sparsity whether the network learned or not.
"""

from __future__ import annotations

from typing import Mapping

import torch

# batch-norm running statistics: state, not weights (every buffer of the registered models is one of
# these; tests/test_image_models.py checks it, so the saved state alone tells parameters apart)
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


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
