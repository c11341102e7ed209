"""Data-parallel training over several processes (torchrun), one process per GPU.

Every process runs the same pipeline: pruning and start weights are deterministic, so all ranks
hold the same model and mask. Each global batch is split into one contiguous slice per rank; the
model is wrapped in DistributedDataParallel, and each rank's loss is its slice's summed loss times
world / global batch, so DDP's gradient average equals the gradient of the global batch's mean loss
(also when the last batch does not split evenly). Only rank 0 writes to the results store; the
others wait for it at a barrier after each stage. Batch-norm statistics are per rank (as in plain
DDP), so only models without batch norm match a single process to rounding.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """All-reduce ``t`` in place (sum) across ranks."""
        if self.active:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def local_span(self, n: int) -> tuple[int, int]:
        """This process's part [start, stop) of a global batch of ``n`` (``torch.tensor_split``'s parts: the
        first ``n % world`` one longer)."""
        if not self.active:
            return 0, n
        size, extra = divmod(n, self.world)
        start = self.rank * size + min(self.rank, extra)
        return start, start + size + (self.rank < extra)

    def local_slice(self, idx: torch.Tensor) -> torch.Tensor:
        start, stop = self.local_span(idx.shape[0])
        return idx[start:stop]


SINGLE = Dist()


def from_env(device: str) -> tuple[Dist, str]:
    """Join the process group torchrun describes (WORLD_SIZE > 1); returns it and this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE, device
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return Dist(rank, world), device
