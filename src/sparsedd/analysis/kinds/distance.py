"""``distance``: each level's learning distance against its test accuracy, one table over the run's curve."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ...errors import SparseddError
from ..base import ANALYSES, Analysis, Analyzer
from ..curves import check_unstable, distance_table


@dataclass(frozen=True)
class DistanceSettings:
    """What the distance is measured from: ``init``, the dense initialization under each level's mask (the
    distance recorded with every level); or ``start``, the weights each level started from under its mask
    (the rewind point for weight rewinding, the previous level's weights for finetuning and lr rewinding, the
    fresh init for reinit), which is what the paper's code measures its distance penalty from."""

    reference: str = "init"
    unstable: str = "keep"  # or drop: leave out the levels whose last epoch ended unstable (`sparsedd show` notes them)

    def __post_init__(self) -> None:
        if self.reference not in ("init", "start"):
            raise SparseddError(f"distance: reference must be init or start, got {self.reference!r}")
        check_unstable(self.unstable, "distance: ")


def compute(a: Analyzer, s: DistanceSettings) -> pd.DataFrame:
    return distance_table(a.store, a.run_id, a.start_distances() if s.reference == "start" else None, s.reference,
                          s.unstable)


ANALYSES.register("distance", Analysis(DistanceSettings, compute, per_level=False,
                                       summary="learning distance against test accuracy"))
