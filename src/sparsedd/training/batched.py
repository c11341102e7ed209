"""Train K fully connected networks of one architecture at once.

The K networks' weights are stacked along a leading model axis and every layer is one batched
matrix product. Each network keeps its own data order, labels (noise), mask, start weights and
optimizer state; SGD and Adam act elementwise, so each network follows the same trajectory as when
trained alone (up to floating-point rounding of the batched products).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig
from ..errors import notice
from ..models.mlp import MLP
from .execution import Accel, multiply_, set_lr_
from .loop import Checkpointer, TrainData, TrainResult, metrics_from_logits, run_epochs
from .measured import cached, interleaved_medians, machine_key, sync
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


def train_batched(states: list[dict[str, torch.Tensor]], datas: list[TrainData], cfg: TrainConfig,
                  masks: list[dict[str, torch.Tensor]], *, order_keys: list[tuple], device: str | torch.device = "cpu",
                  checkpoint: Checkpointer | None = None,
                  on_epoch: Callable[[list[dict[str, Any]]], None] | None = None,
                  on_step: Callable[[int], None] | None = None, stop_iteration: int | None = None,
                  accel: Accel = Accel()) -> tuple[list[dict[str, torch.Tensor]], list[TrainResult]]:
    """Train K networks (start weights ``states``) under ``masks``; returns final states and results.

    ``stop_iteration`` ends training early (the results then have no final metrics); ``on_step``
    gets the number of steps just done.

    All networks share the inputs ``datas[k].x`` (the same data set) but have their own labels,
    order (permutation of epoch e from generator(*order_keys[k], e)) and masks. ``accel.capture``: the
    steps replayed as a CUDA graph where the device allows (:mod:`.captured`).
    """
    if len(order_keys) != len(states):
        raise ValueError("one data view, mask and order key per network")
    execution = stacked_execution(states, datas, cfg, masks, torch.device(device), accel)
    results = run_epochs(execution, cfg, order_keys, checkpoint=checkpoint, stop_iteration=stop_iteration,
                         on_epoch=on_epoch, on_step=on_step)
    return execution.states(), results


def stacked_execution(states, datas, cfg: TrainConfig, masks, device: torch.device, accel: Accel) -> StackedExecution:
    """The stacked execution, captured where ``--capture`` and the device allow (said where it was asked for)."""
    from .captured import CapturedStackedExecution, capture_choice

    captured, note = capture_choice(accel.capture, device, cfg, compact=False, compile=False, distributed=False)
    if note:
        notice(note)
    if captured:
        return CapturedStackedExecution(states, datas, cfg, masks, device, capture=True)
    return StackedExecution(states, datas, cfg, masks, device)


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


# --- when batching pays, and how many networks fit -------------------------------------------

def measure_batching(widths: tuple[int, ...], batch_size: int, k: int, device: torch.device | str,
                     steps: int = 8, rounds: int = 3) -> dict[str, Any]:
    """Seconds per model-step of ``k`` networks trained one by one and batched (synthetic data), the
    two taking turns ``rounds`` times (medians: :func:`.measured.interleaved_medians`)."""
    import time

    from ..config import TrainConfig
    from ..pruning import full_mask
    from .loop import train

    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    n = batch_size * (steps + 2)
    x = torch.randn(n, widths[0], generator=g).to(device)
    y = torch.randint(0, widths[-1], (n,), generator=g).to(device)
    data = TrainData.clean(x, y, batch_size)
    cfg = TrainConfig(lr=0.01, batch_size=batch_size, epochs=1, eval_every=10 ** 6)
    models = [MLP(widths[0], widths[1:-1], widths[-1]).to(device) for _ in range(k)]
    masks = [full_mask(m, m.prunable_names("default")) for m in models]

    def timed(fn) -> float:
        fn(2)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        fn(steps + 2)
        sync(device)
        return (time.perf_counter() - t0) / (steps + 2) / k

    def single(s):
        for m, mk in zip(models, masks):
            train(m, data, cfg, mk, order_key=(0, "measure"), stop_iteration=s)

    def batched(s):
        train_batched([m.state_dict() for m in models], [data] * k, cfg, masks,
                      order_keys=[(i, "measure") for i in range(k)], device=device, stop_iteration=s)

    med = interleaved_medians({"single": lambda: timed(single), "batched": lambda: timed(batched)}, rounds)
    one, many = med["single"], med["batched"]
    return {"single_s": one, "batched_s": many, "pays": many < 0.9 * one}


def batching_pays(model: MLP, batch_size: int, k: int, cache_dir: str | None = None) -> bool:
    """Whether training ``k`` such networks batched is faster per network than one by one (measured once)."""
    device = next(model.parameters()).device
    widths = model.widths
    key = machine_key(device, "v2", "-".join(map(str, widths)), f"b{batch_size}", f"k{k}")  # v2: interleaved rounds
    return bool(cached("batching", key, lambda: measure_batching(widths, batch_size, k, device), cache_dir)["pays"])


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
