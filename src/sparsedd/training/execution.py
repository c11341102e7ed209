"""The one-network execution (:class:`SingleExecution`): dense-masked or compact on the live units,
optionally compiled, channels-last or data-parallel. :mod:`.planner` chooses it for a stage, never
the epoch loop.

``step`` has no Python branch on data and reads no value back to the host, so the same function
could be captured once and replayed (CUDA graphs, :mod:`.captured`); the loss and hit count stay on
the device.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig
from ..data.augment import augment_batch
from ..distributed import Dist
from ..rng import generator
from .core import Accel, Objective, TrainData, autocast, evaluate, masked_pairs, multiply_, set_lr_
from .optim import build_optimizer, direct_step
from .sparse import LAYOUT, CompactMLP, compact_threads


class SingleExecution:
    """One network, dense-masked or compact, optionally compiled, channels-last or data-parallel.

    Pruned weights stay exactly zero: their gradients are masked before the optimizer step (so no
    momentum or weight decay reaches them) and the weights are masked again after it.
    """

    k = 1
    single = True

    def __init__(self, model: nn.Module, data: TrainData, cfg: TrainConfig, mask: dict[str, torch.Tensor], *,
                 order_key: tuple, accel: Accel, dist: Dist, kernel: float | None,
                 optimizer_state: dict[str, Any] | None, objective: Objective = Objective()):
        self.outer, self.compact, self.kernel = model, None, kernel
        if kernel is not None:  # compute on the live units only (sparsedd.training.sparse)
            self.compact = CompactMLP(model.state_dict(), mask, kernel_below=kernel)
            model, mask = self.compact, {}
            if optimizer_state:
                optimizer_state = self.compact.optimizer_state_from_dense(optimizer_state)
        if accel.channels_last:
            model.to(memory_format=torch.channels_last)
        forward = torch.compile(model) if accel.compile else model
        if dist.active:
            from torch.nn.parallel import DistributedDataParallel

            forward = DistributedDataParallel(forward)
        self.module, self.forward, self.data, self.cfg = model, forward, data, cfg
        self.order_key, self.accel, self.dist = order_key, accel, dist
        self.masked, self.mask_f = masked_pairs(dict(model.named_parameters()), mask)
        self.objective = objective
        anchored = [(p, objective.anchor[n].to(p.device, p.dtype)) for n, p in model.named_parameters()
                    if objective.penalty > 0 and objective.anchor is not None and n in objective.anchor]
        self.anchored, self.anchors = [p for p, _ in anchored], [a for _, a in anchored]
        self.bn_scales = [m.weight for m in model.modules()
                          if objective.bn_l1 > 0 and isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]
        self.opt = build_optimizer(model.parameters(), cfg)
        if optimizer_state:
            self.opt.load_state_dict(optimizer_state)
        self.opt_step = direct_step(self.opt)
        self.n, self.device = data.n, data.x.device
        # a compact network reads few inputs: select them once, not at every step (not under augmentation,
        # which works on whole images)
        self.inputs = self.compact.live_inputs(data.x) if self.compact is not None and data.augment == "none" else None
        self.threads = compact_threads(self.compact, cfg.batch_size) if self.compact is not None else None

    def apply_masks(self) -> None:
        multiply_(self.masked, self.mask_f)

    def set_lr(self, value: float) -> None:
        set_lr_(self.opt, value)

    def step(self, idx: torch.Tensor, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on the examples ``idx`` [1, B]; returns the summed loss and hits (on the device)."""
        idx = idx[0]
        global_n = idx.shape[0]
        idx = self.dist.local_slice(idx)
        yb = self.data.y.index_select(0, idx)  # index_select: on a CPU several times faster than x[idx]
        if self.inputs is not None:
            return self.train_on(self.inputs.index_select(0, idx), yb, idx, global_n, selected=True)
        xb = self.data.x.index_select(0, idx)
        if self.data.augment != "none":  # (the whole batch's draws: each process augments its part as one would)
            span = (*self.dist.local_span(global_n), global_n) if self.dist.active else None
            xb = augment_batch(self.data.augment, xb, generator(*self.order_key, "augment", epoch, step), span)
        return self.train_on(xb, yb, idx, global_n)

    def train_on(self, xb: torch.Tensor, yb: torch.Tensor, idx: torch.Tensor,
                 global_n: int, selected: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The optimizer step on a gathered (and augmented) batch: the examples ``idx`` of a global batch
        of ``global_n``; the summed loss and hits, on the device. ``selected``: ``xb`` holds a compact
        network's live inputs only."""
        if self.compact is not None:  # plain cross-entropy in fp32, one process (what compact execution allows)
            loss, out = self.compact.loss_and_grad(xb, yb, selected)
            self.opt_step()
            return loss * yb.shape[0], (out.argmax(1) == yb).sum()
        if self.accel.channels_last and xb.dim() == 4:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with autocast(self.cfg.precision, xb.device):
            out = self.forward(xb)
            if self.dist.active:  # DDP averages over ranks: this makes it the global batch's mean
                loss = F.cross_entropy(out.float(), yb, reduction="sum") * (self.dist.world / global_n)
            else:
                loss = F.cross_entropy(out.float(), yb)
        self.opt.zero_grad(set_to_none=True)  # backward then writes the gradients instead of adding to zeros
        scale = self.dist.world / global_n if self.dist.active else 1 / global_n
        self.objective.mix(loss, out, idx, xb, scale).backward()
        if self.anchored:  # the distance penalty's gradient
            torch._foreach_add_([p.grad for p in self.anchored], torch._foreach_sub(self.anchored, self.anchors),
                                alpha=2 * self.objective.penalty)
        if self.bn_scales:  # network slimming's sparsity on the batch-norm scales (the paper's code: updateBN)
            torch._foreach_add_([p.grad for p in self.bn_scales], torch._foreach_sign(self.bn_scales),
                                alpha=self.objective.bn_l1)
        multiply_([p.grad for p in self.masked], self.mask_f)
        self.opt_step()
        self.apply_masks()
        with torch.no_grad():
            if self.dist.active:
                both = self.dist.sum_(torch.stack([loss.detach() * global_n / self.dist.world,
                                                   (out.argmax(1) == yb).sum().to(loss.dtype)]))
                return both[0], both[1].round().long()
            return loss.detach() * yb.shape[0], (out.argmax(1) == yb).sum()

    def evaluate(self) -> list[dict[str, float | None]]:
        return [evaluate(self.module, self.data, self.cfg.precision)]

    def optimizer_state(self, k: int) -> dict[str, Any]:
        state = self.opt.state_dict()
        return self.compact.optimizer_state_to_dense(state) if self.compact is not None else state

    def extra_state(self) -> dict[str, Any]:
        # a resumed stage computes as it started, in the layout its checkpoint holds
        return {"compact_kernel": self.kernel, "compact_layout": LAYOUT if self.kernel is not None else None}

    @property
    def name(self) -> str:
        return "dense-masked" if self.kernel is None else "compact"

    def finish(self) -> None:
        """Back to the layout of the model we were given."""
        if self.compact is not None:
            self.outer.load_state_dict(self.compact.dense_state())


def stale_compact(saved: dict[str, Any] | None) -> bool:
    """Whether a checkpoint holds a compact network in a layout this version does not read."""
    return saved is not None and saved.get("compact_kernel") is not None and saved.get("compact_layout") != LAYOUT
