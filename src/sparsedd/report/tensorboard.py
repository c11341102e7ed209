"""Metrics as TensorBoard event files (needs the `tensorboard` extra: pip install 'sparsedd[tensorboard]')."""

from __future__ import annotations

from pathlib import Path

from ..results import load
from .tables import json_value

LEVEL_TAGS = ("test_acc", "test_acc_best", "train_acc_noisy", "train_acc_clean", "memorized", "distance", "sparsity")
EPOCH_TAGS = ("test_acc", "test_loss", "train_acc_noisy", "train_acc_clean", "train_loss_running")


def available() -> bool:
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return False
    return True


def _scalar(writer, tag: str, value, step: int) -> None:
    """One point, left out where the metric is NULL (``memorized`` without label noise) or not finite
    (a diverged run): a gap in the curve, not a crash or a fake value."""
    value = json_value(value)
    if value is not None:
        writer.add_scalar(tag, value, step)


def write_tensorboard(root: str | Path | None, run_ids: list[str], out: str | Path) -> list[Path]:
    """One log folder per run and seed: per-level scalars (step = level) and per-epoch scalars of each level."""
    from torch.utils.tensorboard import SummaryWriter

    res = load(root)
    folders = []
    for run_id in run_ids:
        levels = res.levels[res.levels["run_id"] == run_id]
        epochs = res.epochs[res.epochs["run_id"] == run_id] if len(res.epochs) else res.epochs
        for seed, lv in levels.groupby("seed"):
            folder = Path(out) / f"{run_id}-seed{seed}"
            with SummaryWriter(log_dir=str(folder)) as w:
                for _, r in lv.iterrows():
                    for tag in LEVEL_TAGS:
                        _scalar(w, f"levels/{tag}", r.get(tag), int(r["level"]))
                for _, r in (epochs[epochs["seed"] == seed] if len(epochs) else epochs).iterrows():
                    for tag in EPOCH_TAGS:
                        _scalar(w, f"level_{int(r['level']):02d}/{tag}", r.get(tag), int(r["epoch"]))
            folders.append(folder)
    return folders
