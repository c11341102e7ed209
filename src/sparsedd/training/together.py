"""K networks of any architecture (the conv nets with batch norm) trained at once, each as itself.

Stacking K networks into one (``batched.StackedExecution``, ``torch.func.vmap``) pays for the
fully connected models, not for conv nets: issue 12 measured ``vmap`` over K ResNet-18s no faster
than one eager model, and bf16 fails in its batch-norm backward. Here each network keeps its own
execution (its weights, batch-norm statistics, optimizer, data order and augmentation draws), and a
step runs each network's step in turn; on a GPU each on its own CUDA stream, so that the kernels
of small steps (captured as CUDA graphs: one launch each) overlap on a card one network leaves
mostly idle. On a CPU the steps simply run in turn: the result is each network's one-by-one
training, bit for bit (tests/test_together.py), and there is nothing to gain, so ``--batch auto``
never picks it there.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from .execution import SingleExecution


class Optimizers:
    """The K optimizers as the epoch loop's checkpoints see one: a state dict holding each one's."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.parts = optimizers

    def state_dict(self) -> dict[str, Any]:
        return {"parts": [o.state_dict() for o in self.parts]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["parts"]) != len(self.parts):
            raise ValueError(f"a state of {len(state['parts'])} optimizers for {len(self.parts)} networks")
        for o, s in zip(self.parts, state["parts"]):
            o.load_state_dict(s)


class TogetherExecution:
    """The epoch loop's view of K one-network executions stepped together."""

    single = False
    name = "side-by-side"

    def __init__(self, parts: list[SingleExecution]):
        if len({p.n for p in parts}) != 1:
            raise ValueError("networks trained side by side need training sets of one size (one epoch's steps)")
        self.parts, self.k, self.n = parts, len(parts), parts[0].n
        self.device = parts[0].device
        self.module = nn.ModuleList([p.module for p in parts])
        self.opt = Optimizers([p.opt for p in parts])
        self.streams = [torch.cuda.Stream(self.device) for _ in parts] if self.device.type == "cuda" else None

    def apply_masks(self) -> None:
        for p in self.parts:
            p.apply_masks()

    def set_lr(self, value: float) -> None:
        for p in self.parts:
            p.set_lr(value)

    def step(self, idx: torch.Tensor, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each network's step on its own examples ``idx[k]``; the summed losses and hits [K]."""
        losses, hits = [], []
        for k, part in enumerate(self.parts):
            with self._stream(k):
                loss, hit = part.step(idx[k:k + 1], epoch, step)
            losses.append(loss)
            hits.append(hit)
        if self.streams is not None:  # the results are read on the main stream
            for s in self.streams:
                torch.cuda.current_stream(self.device).wait_stream(s)
        return torch.stack(losses), torch.stack(hits)

    def _stream(self, k: int):
        if self.streams is None:
            return contextlib.nullcontext()
        self.streams[k].wait_stream(torch.cuda.current_stream(self.device))  # the batch indices are ready
        return torch.cuda.stream(self.streams[k])

    def evaluate(self) -> list[dict[str, float | None]]:
        return [p.evaluate()[0] for p in self.parts]

    def optimizer_state(self, k: int) -> dict[str, Any]:
        return self.parts[k].optimizer_state(0)

    def extra_state(self) -> dict[str, Any]:
        return {}

    def finish(self) -> None:
        for p in self.parts:
            p.finish()


