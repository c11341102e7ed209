"""Train K fully connected networks of one architecture at once.

The K networks' weights are stacked along a leading model axis and every layer is one batched
matrix product. Each network keeps its own data order, labels (noise), mask, start weights and
optimizer state; SGD and Adam act elementwise, so each network follows the same trajectory as when
trained alone (up to floating-point rounding of the batched products).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig
from ..models.mlp import MLP
from .core import TrainData, metrics_from_logits, multiply_, set_lr_
from .optim import build_optimizer


class StackedMLP(nn.Module):
    """K MLPs with weights [K, out, in] and biases [K, out]; forward takes inputs [K, B, in]."""

    def __init__(self, states: list[dict[str, torch.Tensor]]):
        super().__init__()
        depth = sum(1 for k in states[0] if k.endswith(".weight"))
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([s[f"layers.{i}.weight"] for s in states]).clone()) for i in range(depth))
        self.biases = nn.ParameterList(
            nn.Parameter(torch.stack([s[f"layers.{i}.bias"] for s in states]).clone()) for i in range(depth))

    @property
    def k(self) -> int:
        return self.weights[0].shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2) if x.dim() > 3 else x
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))
            if i < last:
                x = torch.relu(x)
        return x

    def forward_shared(self, x: torch.Tensor) -> torch.Tensor:
        """The same inputs [B, ...] through every network: [K, B, classes] (no copy of x per network)."""
        x = x.flatten(1)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.matmul(x, w.transpose(1, 2)) + b.unsqueeze(1)
            if i < last:
                x = torch.relu(x)
        return x

    def states(self) -> list[dict[str, torch.Tensor]]:
        out = []
        for k in range(self.k):
            s = {}
            for i, (w, b) in enumerate(zip(self.weights, self.biases)):
                s[f"layers.{i}.weight"] = w[k].detach().clone()
                s[f"layers.{i}.bias"] = b[k].detach().clone()
            out.append(s)
        return out


def batchable(model: nn.Module) -> bool:
    return type(model) is MLP


def stack_masks(model: StackedMLP, masks: list[dict[str, torch.Tensor]]) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """(stacked parameter, stacked float mask) for every masked layer (the same layers in every network)."""
    names = list(masks[0])
    if any(list(m) != names for m in masks):
        raise ValueError("batched networks must mask the same layers")
    out = []
    for n in names:
        i = int(n.split(".")[1])
        param = model.weights[i] if n.endswith("weight") else model.biases[i]
        out.append((param, torch.stack([m[n] for m in masks]).to(param.dtype)))
    return out


@torch.no_grad()
def evaluate_stacked(model: StackedMLP, datas: list[TrainData], batch: int = 4096) -> list[dict[str, float | None]]:
    """The metrics of :func:`sparsedd.training.loop.evaluate` for each network (one pass for all K)."""
    was = model.training
    model.eval()
    base = datas[0]

    def logits(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([model.forward_shared(x[i:i + batch]) for i in range(0, x.shape[0], batch)], dim=1)

    test, train = logits(base.x_test), logits(base.x)
    val = logits(base.x_val) if base.x_val is not None else [None] * len(datas)
    model.train(was)
    return [metrics_from_logits(test[k], train[k], d, val[k]) for k, d in enumerate(datas)]


class StackedExecution:
    """K networks of one architecture as one :class:`StackedMLP` under one optimizer, for the epoch loop."""

    single = False
    name = "stacked"

    def __init__(self, states: list[dict[str, torch.Tensor]], datas: list[TrainData], cfg: TrainConfig,
                 masks: list[dict[str, torch.Tensor]], device: str | torch.device):
        self.k = len(states)
        if not (len(datas) == len(masks) == self.k):
            raise ValueError("one data view, mask and order key per network")
        self.x = datas[0].x
        if any(d.x is not self.x and not torch.equal(d.x, self.x) for d in datas[1:]):
            raise ValueError("batched networks must share the training inputs")
        self.datas, self.n, self.device = datas, datas[0].n, torch.device(device)
        self.module = StackedMLP(states).to(device)
        masked = [(p, m) for p, m in stack_masks(self.module, masks) if not bool(m.all())]  # all-ones: no change
        self.masked, self.mask_f = [p for p, _ in masked], [m.to(device) for _, m in masked]
        self.ys = torch.stack([d.y for d in datas]).to(device)
        self.rows = torch.arange(self.k, device=device).unsqueeze(1)
        self.opt = build_optimizer(self.module.parameters(), cfg)

    def apply_masks(self) -> None:
        multiply_(self.masked, self.mask_f)

    def set_lr(self, value: float) -> None:
        set_lr_(self.opt, value)

    def step(self, idx: torch.Tensor, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of every network on its own examples ``idx`` [K, B]: summed losses and hits [K]."""
        # index_select: on a CPU several times faster than self.x[idx]
        out = self.module(self.x.index_select(0, idx.flatten()).view(*idx.shape, *self.x.shape[1:]))  # [K, B, C]
        yb = self.ys[self.rows, idx]
        per_model = F.cross_entropy(out.flatten(0, 1), yb.flatten(), reduction="none").view(yb.shape).mean(1)
        self.opt.zero_grad(set_to_none=True)  # backward then writes the gradients instead of adding to zeros
        per_model.sum().backward()  # each network's gradient is that of its own mean loss
        multiply_([p.grad for p in self.masked], self.mask_f)
        self.opt.step()
        self.apply_masks()
        return per_model.detach() * yb.shape[1], (out.argmax(2) == yb).sum(1)

    def evaluate(self) -> list[dict[str, float | None]]:
        return evaluate_stacked(self.module, self.datas)

    def optimizer_state(self, k: int) -> dict[str, Any]:
        return _slice_optimizer_state(self.opt.state_dict(), k, self.module)

    def extra_state(self) -> dict[str, Any]:
        return {}

    def states(self) -> list[dict[str, torch.Tensor]]:
        return [{k: v.cpu() for k, v in s.items()} for s in self.module.states()]


def _slice_optimizer_state(opt_state: dict[str, Any], k: int, model: StackedMLP) -> dict[str, Any]:
    """Network k's part of the stacked optimizer state, in the parameter order of a single MLP."""
    depth = len(model.weights)
    # stacked order: weights 0..d-1, then biases 0..d-1; a single MLP's order: w0, b0, w1, b1, ...
    stacked_index = {("w", i): i for i in range(depth)} | {("b", i): depth + i for i in range(depth)}
    single_order = [x for i in range(depth) for x in (("w", i), ("b", i))]
    state = {}
    for new, key in enumerate(single_order):
        old = stacked_index[key]
        if old in opt_state["state"]:
            state[new] = {name: (v[k].clone() if torch.is_tensor(v) and v.dim() > 0 else v)
                          for name, v in opt_state["state"][old].items()}
    groups = [dict(g, params=list(range(2 * depth))) for g in opt_state["param_groups"]]
    return {"state": state, "param_groups": groups}


# --- how many networks fit ------------------------------------------------------------------

def max_models(model: MLP, batch_size: int, device: torch.device | str, share: float = 0.25) -> int:
    """How many such networks one batched computation may hold: ``share`` of the free memory (GPU)
    or of the physical memory (CPU), for weights, gradients, two optimizer buffers and activations."""
    import os

    device = torch.device(device)
    params = sum(p.numel() for p in model.parameters())
    units = sum(model.widths)
    per_model = 4 * (4 * params + 3 * batch_size * units)
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        try:
            free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            free = 4 << 30
    return max(1, int(free * share // per_model))
