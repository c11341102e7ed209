"""``memorization``: for every corrupted training example, at every level, whether the level's network fits
its noisy label (its stored final weights on the training inputs, no training); how many examples are
forgotten and fitted again from one level to the next; and whether the examples freed last are the
hardest by the dense network's loss on their clean or noisy label (Spearman's rho per seed). One table
over the run's curve (a row per seed and the seeds' mean); each level's result is cached on its own and
is what the report's level x example picture reads. The numerics are in :mod:`sparsedd.analysis.memorization`."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F

from ...errors import SparseddError
from ...training.core import predict
from ..base import ANALYSES, Analysis, Analyzer, figure
from ..memorization import run_table, transitions


@dataclass(frozen=True)
class MemorizationSettings:
    """None: an example is fitted when the level's network predicts its noisy label (the ``memorized``
    metric's rule, per example)."""


def _check_labels(a: Analyzer, seed: int) -> None:
    """The replicate's corrupted examples are those the dense stage recorded, and there are some."""
    rep = a.replicate(seed)
    dense = a.links[(seed, 0)]
    if a.store.has_init(dense):  # the labels are saved with the init (a results-only copy has neither)
        stored = a.store.labels(dense)
        if not torch.equal(stored["labels"].cpu(), rep.noise.labels.cpu()):
            raise SparseddError(f"the noisy labels stored with seed {seed}'s dense stage differ from those drawn now; "
                                "this store was made by another version of the label noise")
    if rep.train_data.corrupted.numel() == 0:
        raise SparseddError(f"memorization needs corrupted labels: run {a.run_id} has none (data.noise = "
                            f"{a.cfg.data.noise})")


def level_result(a: Analyzer, seed: int, level: int, s: MemorizationSettings) -> dict:
    """Level ``level`` of ``seed``: each corrupted example fitted or not, and the changes from the level
    before (computed first, cached); level 0 also keeps the examples' indices and the dense losses."""
    sid = a.links[(seed, level)]

    def measure() -> dict:
        _check_labels(a, seed)
        a.say(f"memorization: seed {seed} level {level}")  # (levels read back are quick, and not said)
        previous = (level_result(a, seed, level - 1, s)["fitted_examples"]
                    if level > 0 and (seed, level - 1) in a.links and a.store.is_done(a.links[(seed, level - 1)])
                    else None)
        rep, model, _, _ = a.model_at(seed, sid)
        d = rep.train_data
        logits = predict(model, d.x, precision=rep.cfg.train.precision)[d.corrupted]
        noisy, clean = d.y[d.corrupted], d.y_clean[d.corrupted]
        fitted = [int(v) for v in (logits.argmax(1) == noisy).cpu()]
        forgotten, refitted = transitions(previous, fitted)
        out = {"corrupted": len(fitted), "fitted": sum(fitted), "memorized": sum(fitted) / len(fitted),
               "forgotten": forgotten, "refitted": refitted, "fitted_examples": fitted}
        if level == 0:
            out["examples"] = [int(i) for i in d.corrupted.cpu()]
            for name, labels in (("loss_clean", clean), ("loss_noisy", noisy)):
                loss = F.cross_entropy(logits, labels, reduction="none").cpu()
                out[name] = [float(f"{v:.6g}") for v in loss.tolist()]
        return out
    return a.cached("memorization", sid, s, measure)


def compute(a: Analyzer, s: MemorizationSettings) -> pd.DataFrame:
    """Every finished level of every seed (each cached), then the run table of
    :func:`sparsedd.analysis.memorization.run_table`."""
    rows = []
    for seed, level, sid in a.targets(None, None):
        rows.append({"seed": seed, "level": level, **level_result(a, seed, level, s)})
    return run_table(pd.DataFrame(rows))


ANALYSES.register("memorization", Analysis(MemorizationSettings, compute, per_level=False,
                                           figure=figure("fig_memorization"),
                                           summary="which noisy labels each level fits"))
