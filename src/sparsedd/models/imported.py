"""A user's own model, named in ``model.name`` as ``"package.module:function"``.

``function(input_shape, num_classes)`` returns an ``nn.Module`` taking a batch of inputs of
``input_shape``. Its prunable weights are every conv and linear weight (``prune.layers = hidden``: all but
the last linear one; ``conv``: the convs), unless the module has a ``prunable_names(layers)`` method of its
own, as the built-in models do. Its init is its own, made under the global RNG seeded per build
(``torch.random.fork_rng``), so each seed's init is reproducible and the caller's RNG is left as it was.

The module is imported as Python imports it, with the current folder on the path (as ``python -m`` has
it), so ``my_nets.py`` beside the command is ``my_nets:build``. A stage's id covers the source of the
module file (:func:`source_digest`): editing the builder computes new stages (not those of modules it
imports in turn).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import re
import sys
import types
from pathlib import Path
from typing import Callable

from torch import nn

from ..errors import SparseddError

IMPORT_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def is_import_path(name: str) -> bool:
    return IMPORT_PATH.fullmatch(name) is not None


def load_builder(name: str) -> Callable[..., nn.Module]:
    """The function ``name`` names; a one-line error when it cannot be imported or is not a function."""
    module_name, _, attr = name.partition(":")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # as `python -m` has it: a module beside the command imports
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - the user's module: any error in it is theirs to fix, in one line
        raise SparseddError(f"model.name = {name!r}: cannot import {module_name} ({type(e).__name__}: "
                            f"{' '.join(str(e).split())}); put it on PYTHONPATH or in the current folder") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise SparseddError(f"model.name = {name!r}: {module_name} has no function {attr}; name a function "
                            f"(input_shape, num_classes) -> nn.Module")
    return fn


def imported_builder(name: str) -> Callable[..., nn.Module]:
    """A builder as the registry's take them, (ModelConfig, input_shape, num_classes) -> module, around the
    user's function."""
    def build(cfg, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        fn = load_builder(name)
        try:
            model = fn(tuple(input_shape), num_classes)
        except SparseddError:
            raise
        except Exception as e:  # noqa: BLE001 - as above
            raise SparseddError(f"model.name = {name!r} failed for inputs {list(input_shape)} and {num_classes} "
                                f"classes ({type(e).__name__}: {' '.join(str(e).split())})") from None
        if not isinstance(model, nn.Module):
            raise SparseddError(f"model.name = {name!r} returned {type(model).__name__}, not a torch.nn.Module")
        if not callable(getattr(model, "prunable_names", None)):
            model.prunable_names = types.MethodType(layer_weights, model)
        return model
    return build


def layer_weights(model: nn.Module, layers: str = "default") -> list[str]:
    """Every conv and linear weight in the module's order (``default``, ``all``); ``hidden``: all but the
    last linear one; ``conv``: the convs."""
    names = [f"{n}.weight" if n else "weight" for n, m in model.named_modules() if isinstance(m, LAYER_TYPES)]
    convs = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, LAYER_TYPES[1:])]
    if layers in ("default", "all"):
        return names
    if layers == "conv":
        return convs
    if layers == "hidden":
        linear = [n for n in names if n not in convs]
        return [n for n in names if not linear or n != linear[-1]]
    raise SparseddError(f"prune.layers = {layers!r} does not apply to this model; use default, all, hidden or conv")


def source_digest(name: str) -> str:
    """The SHA-256 (16 hex digits) of the source file of the builder's module, which stage ids cover."""
    module = inspect.getmodule(load_builder(name))
    path = Path(inspect.getsourcefile(module) or "") if module is not None else None
    if path is None or not path.is_file():
        raise SparseddError(f"model.name = {name!r}: its module has no source file to identify it by; "
                            f"give a module defined in a .py file")
    return _digest(str(path), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _digest(path: str, stamp: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
