"""sparsedd: sparse double descent experiments (iterative pruning under label noise).

The Python API (:mod:`sparsedd.api`): ``sparsedd.run(...)``, ``sparsedd.analyze(...)``, ``sparsedd.load(root)``.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # the API loads torch and pandas only when used, so `import sparsedd` (and the CLI's start) stays light
    if name in ("run", "analyze", "load", "Results"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'sparsedd' has no attribute {name!r}")
