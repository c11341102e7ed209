"""sparsedd: sparse double descent experiments (iterative pruning under label noise)."""

__version__ = "0.1.0"
