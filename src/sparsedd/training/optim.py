"""Optimizers from the training config."""

from __future__ import annotations

import torch

from ..config import TrainConfig


def _impl(params: list[torch.Tensor]) -> dict[str, bool]:
    """The fused kernels (one call per step for all parameters) where torch has them, else foreach:
    both much cheaper per step than the per-parameter loop torch picks by default on CPU."""
    if params and all(p.dtype == torch.float32 and p.device.type in ("cpu", "cuda") for p in params):
        return {"fused": True}
    return {"foreach": True}


def build_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = list(params)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay, **_impl(params))
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **_impl(params))
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def direct_step(opt: torch.optim.Optimizer):
    """``opt.step`` as a callable that, for a fused SGD, calls the fused kernel as ``SGD.step`` does, on the
    optimizer's own parameters and momentum buffers, without the wrapper's per-call work (hooks, profiler
    ranges, grouping by device): 19.5 us per call against 67.9 on the build machine, a tenth of a compact
    step at 98.8% sparsity (issue 23; benchmarks/compact_step_parts.py). The same update bit for bit, and
    the same state for checkpoints (tests/test_optim.py). Anything else, a step with a missing gradient or momentum buffer (the first,
    which creates the buffers) and a tensor learning rate go through ``opt.step``."""
    fused = getattr(torch, "_fused_sgd_", None)
    params = [p for g in opt.param_groups for p in g["params"]]
    if (type(opt) is not torch.optim.SGD or fused is None or len({(p.device, p.dtype) for p in params}) != 1
            or not all(g.get("fused") and not g.get("differentiable") for g in opt.param_groups)):
        return opt.step
    from torch.optim import optimizer as torch_optimizer

    def hooked() -> bool:
        return bool(opt._optimizer_step_pre_hooks or opt._optimizer_step_post_hooks
                    or getattr(torch_optimizer, "_global_optimizer_pre_hooks", None)
                    or getattr(torch_optimizer, "_global_optimizer_post_hooks", None)
                    or getattr(opt, "grad_scale", None) is not None or getattr(opt, "found_inf", None) is not None)

    def step() -> None:
        if hooked():
            return opt.step()
        calls = []
        for group in opt.param_groups:
            grads = [p.grad for p in group["params"]]
            bufs = [opt.state[p].get("momentum_buffer") for p in group["params"]] if group["momentum"] != 0 else []
            if any(g is None for g in grads) or any(b is None for b in bufs) or torch.is_tensor(group["lr"]):
                return opt.step()
            calls.append((group, grads, bufs))
        for group, grads, bufs in calls:
            fused(group["params"], grads, bufs, weight_decay=group["weight_decay"], momentum=group["momentum"],
                  lr=group["lr"], dampening=group["dampening"], nesterov=group["nesterov"],
                  maximize=group["maximize"], is_first_step=False)

    return step
