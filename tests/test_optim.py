"""direct_step: the fused SGD kernel called without torch's Optimizer wrapper updates exactly as opt.step."""

import pytest
import torch

from sparsedd.config import TrainConfig
from sparsedd.training.optim import build_optimizer, direct_step


def _params(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(7, 5, generator=g)), torch.nn.Parameter(torch.randn(5, generator=g))]


def _run(step_of, cfg: TrainConfig, steps: int = 6):
    params = _params(0)
    opt = build_optimizer(params, cfg)
    wrapper, calls = opt.step, []
    opt.step = lambda: calls.append(1) or wrapper()
    step = step_of(opt)
    g = torch.Generator().manual_seed(1)
    for i in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        for group in opt.param_groups:
            group["lr"] = 0.1 / (i + 1)
        step()
    return params, opt.state_dict(), len(calls)


@pytest.mark.parametrize("momentum,nesterov,wd", [(0.0, False, 0.0), (0.9, False, 5e-4), (0.9, True, 1e-4)])
def test_direct_step_equals_opt_step_bit_for_bit(momentum, nesterov, wd):
    cfg = TrainConfig(optimizer="sgd", lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    direct, direct_state, wrapped = _run(direct_step, cfg)
    plain, plain_state, _ = _run(lambda opt: opt.step, cfg)
    assert wrapped == (1 if momentum else 0)  # only the step that creates the momentum buffers goes through opt.step
    for a, b in zip(direct, plain):
        assert torch.equal(a, b)
    for k, v in plain_state["state"].items():
        assert torch.equal(direct_state["state"][k]["momentum_buffer"], v["momentum_buffer"])
    assert direct_state["param_groups"] == plain_state["param_groups"]


def test_direct_step_bypasses_the_wrapper_and_honours_hooks():
    params = _params(0)
    opt = build_optimizer(params, TrainConfig(optimizer="sgd", lr=0.1, momentum=0.0))
    calls = []
    opt.register_step_pre_hook(lambda *_: calls.append("hook"))
    step = direct_step(opt)
    assert step is not opt.step  # a fused SGD gets the direct call
    for p in params:
        p.grad = torch.ones_like(p)
    step()
    assert calls == ["hook"]  # with a hook registered it goes through opt.step, which runs it


def test_other_optimizers_keep_their_step():
    opt = build_optimizer(_params(0), TrainConfig(optimizer="adam", lr=1e-3))
    assert direct_step(opt) == opt.step
