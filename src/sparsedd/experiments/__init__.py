"""Experiments: the one iterative magnitude pruning loop, parameterized by the retraining mode."""

from .imp import Runtime, run

__all__ = ["Runtime", "run"]
