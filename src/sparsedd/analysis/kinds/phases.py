"""``phases``: the run's levels split into the light, critical, sweet and collapsed phases (the rule is in
:mod:`sparsedd.analysis.phases`), one table over the run's curve."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..base import ANALYSES, Analysis, Analyzer
from ...errors import SparseddError
from ..curves import check_unstable, phases_table


@dataclass(frozen=True)
class PhasesSettings:
    tol: float = 0.01  # the smallest accuracy change taken as real
    unstable: str = "keep"  # or drop: leave out the levels whose last epoch ended unstable (`sparsedd show` notes them)

    def __post_init__(self) -> None:
        if not 0 <= self.tol < 1:  # accuracies are fractions here (a negative tol found no collapse: a traceback)
            raise SparseddError(f"phases: tol must be in [0, 1), a fraction of accuracy (0.01 is one point), got "
                                f"{self.tol:g}")
        check_unstable(self.unstable, "phases: ")


def compute(a: Analyzer, s: PhasesSettings) -> pd.DataFrame:
    return phases_table(a.store, a.run_id, s.tol, s.unstable)


ANALYSES.register("phases", Analysis(PhasesSettings, compute, per_level=False,
                                     summary="light, critical, sweet and collapsed phases"))
