"""Experiments: the one iterative pruning loop (:mod:`.imp`), parameterized by the retraining mode."""

from ..options import ExecOptions
from .imp import run, run_many

__all__ = ["ExecOptions", "run", "run_many"]
