"""The catalog of analyses: one module each (its settings dataclass, its compute, its trainings if it trains
networks, and its one ``ANALYSES.register``), imported here in the order ``sparsedd analyze --help``, the
report and the errors list them.

A new analysis is one module in this folder plus one import line below;
``tests/test_registry.py::test_registered_retraining_mode_and_analysis_run_end_to_end`` registers a toy one.
A module takes the :class:`~sparsedd.analysis.runner.Analyzer` as its functions' first argument but never
imports :mod:`~sparsedd.analysis.runner` (which imports this catalog): it annotates it as ``base.Analyzer``.
"""

from ..base import ANALYSES, Analysis
from . import redense  # noqa: F401
from . import interpolate  # noqa: F401
from . import landscape  # noqa: F401
from . import sharpness  # noqa: F401
from . import reinit  # noqa: F401
from . import random_mask  # noqa: F401
from . import distance  # noqa: F401
from . import phases  # noqa: F401
from . import memorization  # noqa: F401
from . import stability  # noqa: F401
from . import dense_control  # noqa: F401
from . import select  # noqa: F401

__all__ = ["ANALYSES", "Analysis"]
