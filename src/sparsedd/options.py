"""How to execute (never what to compute): one object built once from the command line, carried whole
into every stage, analysis and sweep task. None of it enters a stage id."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .distributed import SINGLE, Dist
from .errors import SparseddError

CHOICES = {"batch": ("auto", "on", "off"), "sparse": ("auto", "on", "off"), "capture": ("auto", "on", "off")}
MAX_THREADS = 4096  # torch's CPU threads; more is a typo, and torch.set_num_threads fails on a C int overflow


@dataclass(frozen=True)
class ExecOptions:
    device: str = "cpu"
    data_dir: str | None = None  # a folder holding the data sets (DIR/mnist/, ...)
    threads: int = 0  # torch CPU threads; 0: one for the fully connected models on CPU, else torch's choice
    progress: bool = True
    batch: str = "auto"  # seeds of a level trained together: auto (where measured faster on this machine), on, off
    sparse: str = "auto"  # compact execution of sparse fully connected levels: auto (measured crossover), on, off
    channels_last: bool = False  # NHWC memory order for image models (faster convolutions on GPUs)
    compile: bool = False  # torch.compile the model
    # training steps replayed as CUDA graphs (sparsedd.training.captured): auto is off until a GPU check
    # has compared captured with eager training (benchmarks/gpu_check.py); on: where nothing rules it out
    capture: str = "auto"
    checkpoint_every_s: float = 60.0  # inside long epochs
    checkpoint_epoch_s: float = 1.0  # at epoch ends, at most this often (0: every epoch)
    dist: Dist = field(default=SINGLE, compare=False)  # data-parallel processes (torchrun); never sent to a task

    def __post_init__(self) -> None:
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise SparseddError(f"--{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not 0 <= self.threads <= MAX_THREADS:
            raise SparseddError(f"--threads must be in [1, {MAX_THREADS}] (0: the default), got {self.threads}")
        if not all(0 <= s < math.inf for s in (self.checkpoint_every_s, self.checkpoint_epoch_s)):  # NaN fails too
            raise SparseddError("--checkpoint-every and --checkpoint-epoch must be finite numbers of seconds >= 0")

    @property
    def accel(self):
        from .training.core import Accel

        return Accel(channels_last=self.channels_last, compile=self.compile, capture=self.capture)

    @property
    def sparse_policy(self):
        from .training.sparse import SparsePolicy

        return SparsePolicy(self.sparse)

    def replace(self, **changes: Any) -> "ExecOptions":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data for a sweep task (the process group is the receiving process's own)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "dist"}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ExecOptions":
        return cls(**values)

    def threads_for(self, model_name: str | None) -> int:
        """The torch thread count to set (0: leave torch's choice): by default one for the small fully
        connected models on CPU, as fast alone and far faster beside other jobs (docs/performance.md)."""
        if self.threads:
            return self.threads
        return 1 if model_name in ("mlp", "lenet-300-100") and self.device == "cpu" else 0

    def apply_threads(self, model_name: str | None) -> None:
        threads = self.threads_for(model_name)
        if threads:
            import torch

            torch.set_num_threads(threads)


def resolve_device(name: str, *, here: bool = True) -> str:
    """``auto``: cuda when this machine has it, else cpu; any other name checked (:func:`sparsedd.inputs.device`),
    with ``here`` against this machine's devices."""
    from .inputs import device

    if name != "auto":
        return device(name, here=here)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
