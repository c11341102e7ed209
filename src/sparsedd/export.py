"""`sparsedd export RUN --level N --out FILE.safetensors`: a level's weights and masks as one safetensors file,
with where they came from in its metadata.

Two layouts (``layout=``, ``--layout``), both one ``.safetensors`` file:

- ``plain`` (the default): ``model/<name>`` for every entry of the model's ``state_dict`` (weights and biases,
  batch-norm statistics too; the pruned entries are zero) and ``mask/<name>`` (bool, True: kept) for each
  tensor the run prunes. :func:`read_export` gives them back as two dicts.
- ``torch-prune``: the names ``torch.nn.utils.prune`` gives a pruned tensor, ``<module>.<param>_orig`` and
  ``<module>.<param>_mask`` (in the tensor's dtype, as prune keeps it), and plain names for the rest: a
  model of the same modules with ``prune.identity`` (or ``prune.custom_from_mask``) applied to the masked
  tensors takes it with ``load_state_dict``.

The metadata hold ``format: pt`` and ``sparsedd``: a JSON record (:func:`provenance`) of the run's full config,
run id, stage id, seed, level, layout, the input shape and class count the model was built for, the checksums
of the stage's files as the store recorded them, the level's metrics from its ``done.json`` and the sparsedd
version. :func:`load_model` builds the run's model (``sparsedd.models.build_model``) with the weights loaded.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from . import config_load
from .config import brief
from .errors import SparseddError
from .inputs import folder, output_file
from .results import resolve_run, run_config
from .store import Store, default_root
from .store.files import write_bytes

LAYOUTS = ("plain", "torch-prune")
RECORD_KEY = "sparsedd"  # the metadata entry holding the provenance record (JSON)
MODEL, MASK = "model/", "mask/"  # the plain layout's prefixes
SUFFIXES = ("safetensors",)


@dataclass
class Export:
    """An exported level read back: the model's ``state_dict``, the masks (bool) by the name of the tensor
    each masks, and the provenance record."""

    model: dict[str, torch.Tensor]
    mask: dict[str, torch.Tensor]
    record: dict[str, Any]


def export_level(run: str, level: int, out: str | os.PathLike, *, seed: int | None = None, layout: str = "plain",
                 root: str | os.PathLike | None = None) -> Path:
    """Write level ``level`` of ``run`` (an id or a unique prefix; ``seed``: which seed, needed when the run
    has several) to ``out`` (a ``.safetensors`` file, written atomically) in ``layout``; returns the path.
    Bad input (an unknown run, a level not finished, an ``out`` that cannot be written) is a one-line
    :class:`SparseddError`, raised before anything is written."""
    from safetensors.torch import save

    if layout not in LAYOUTS:
        raise SparseddError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    out = output_file(out, "out", SUFFIXES)
    store = Store(folder(root if root is not None else default_root(), "root", writable=False))
    run_id = resolve_run(store, run)
    seed, sid = level_stage(store, run_id, level, seed)
    final = store.final(sid)
    mask = final.get("mask") or {}
    record = provenance(store, run_id, seed, level, sid, layout, sorted(mask))
    tensors = layout_tensors(final["model"], mask, layout)
    data = save(tensors, metadata={"format": "pt", RECORD_KEY: json.dumps(record, allow_nan=False)})
    try:
        write_bytes(out, data)
    except OSError as e:
        if e.errno == errno.ENOSPC:  # the machine's, not the input's: the CLI says so (exit code 1)
            raise
        raise SparseddError(f"cannot write {out} ({e.strerror or e}); give another --out") from None
    return out


def level_stage(store: Store, run_id: str, level: int, seed: int | None) -> tuple[int, str]:
    """The seed and the stage id of a finished level of the run; a one-line error for a seed the run does not
    have (or none given where it has several) and a level not finished."""
    cfg = config_load.from_dict(run_config(store, run_id))
    seeds = list(range(cfg.seed, cfg.seed + cfg.seeds))
    if seed is None and len(seeds) > 1:
        raise SparseddError(f"run {run_id} has seeds {', '.join(map(str, seeds))}; say which with --seed")
    seed = seeds[0] if seed is None else seed
    if seed not in seeds:
        raise SparseddError(f"run {run_id} has no seed {seed}; its seeds are {', '.join(map(str, seeds))}")
    links = store.index.run_stages(run_id)
    sid = links.get((seed, level))
    if sid is None or not store.is_done(sid):
        done = [lv for (s, lv), stage in sorted(links.items()) if s == seed and store.is_done(stage)]
        finished = f"finished: {', '.join(map(str, done))}" if done else "none finished yet"
        raise SparseddError(f"run {run_id} seed {seed} has no finished level {level} (its levels are 0 to "
                            f"{cfg.prune.levels}, {finished}); `sparsedd show {run_id}` lists them")
    return seed, sid


def provenance(store: Store, run_id: str, seed: int, level: int, stage_id: str, layout: str,
               masked: list[str]) -> dict[str, Any]:
    """Where an exported level comes from, as JSON (every number finite or null)."""
    from .data import spec_of
    from .report.tables import json_safe

    config = run_config(store, run_id)
    cfg = config_load.from_dict(config)
    spec = spec_of(cfg.data.name)
    return json_safe({
        "run_id": run_id, "stage_id": stage_id, "seed": seed, "level": level, "layout": layout, "masks": masked,
        "config": config, "input_shape": list(spec.input_shape(cfg.data.image_size)), "num_classes": spec.classes,
        "checksums": store.stage_checksums(stage_id), "metrics": store.done_info(stage_id).get("metrics", {}),
        "sparsedd_version": metadata.version("sparsedd"),
    })


def layout_tensors(model: dict[str, torch.Tensor], mask: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """The tensors of a level's file under ``layout``'s names (contiguous CPU tensors, as safetensors takes)."""
    def plain(t: torch.Tensor) -> torch.Tensor:
        return t.detach().cpu().contiguous()

    if layout == "plain":
        return {**{MODEL + n: plain(t) for n, t in model.items()}, **{MASK + n: plain(m.bool()) for n, m in mask.items()}}
    out = {}
    for name, t in model.items():
        if name in mask:  # torch.nn.utils.prune's names: the parameter as <name>_orig, its mask as <name>_mask
            out[f"{name}_orig"], out[f"{name}_mask"] = plain(t), plain(mask[name].to(t.dtype))
        else:
            out[name] = plain(t)
    return out


def read_export(path: str | os.PathLike) -> Export:
    """An exported level (either layout) as plain names: the ``state_dict``, the bool masks and the record."""
    from safetensors import SafetensorError, safe_open

    path = Path(path).expanduser()
    try:
        with safe_open(str(path), "pt") as f:
            meta, tensors = f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
        record = json.loads(meta[RECORD_KEY])
    except FileNotFoundError:
        raise SparseddError(f"{path} does not exist") from None
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        why = "no sparsedd record in its metadata" if isinstance(e, KeyError) else brief(str(e))
        raise SparseddError(f"{path} is not a sparsedd export ({why})") from None
    if record.get("layout") == "plain":
        model = {k[len(MODEL):]: v for k, v in tensors.items() if k.startswith(MODEL)}
        return Export(model, {k[len(MASK):]: v.bool() for k, v in tensors.items() if k.startswith(MASK)}, record)
    masked = set(record.get("masks", ()))
    model = {k: v for k, v in tensors.items() if not any(k in (f"{n}_orig", f"{n}_mask") for n in masked)}
    model.update({n: tensors[f"{n}_orig"] for n in masked})
    return Export(model, {n: tensors[f"{n}_mask"].bool() for n in masked}, record)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Export]:
    """The run's model (``sparsedd.models.build_model`` on the config, input shape and class count of the
    record) with an exported level's weights loaded, in eval mode; and the export itself."""
    from .models import build_model

    exp = read_export(path)
    cfg = config_load.from_dict(exp.record["config"])
    model = build_model(cfg.model, tuple(exp.record["input_shape"]), exp.record["num_classes"], exp.record["seed"])
    model.load_state_dict(exp.model)
    return model.to(device).eval(), exp


__all__ = ["Export", "LAYOUTS", "export_level", "load_model", "read_export"]
