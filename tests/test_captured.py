"""Issue 12, point 1 on the CPU: the static step a CUDA graph replays (sparsedd.training.captured),
run eagerly, equals the eager execution's step bit for bit (with augmentation, batch norm, the
distance penalty, the epoch's smaller last batch, a schedule and a resume), and the choice of
capture says why it cannot capture where it was asked to. The replay itself needs a GPU:
benchmarks/gpu_check.py."""

from __future__ import annotations

import pytest
import torch

from test_training import _DyingCheckpointer, _Interrupt
from sparsedd.config import ModelConfig, TrainConfig
from sparsedd.models import build_model
from sparsedd.pruning import full_mask, random
from sparsedd.store import FileCheckpointer
from sparsedd.training import TrainData
from sparsedd.training.captured import CapturedExecution, capture_choice
from sparsedd.training.core import Objective
from sparsedd.training.loop import run_epochs
from sparsedd.training.planner import prepare_single

CFG = TrainConfig(lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4, epochs=3, batch_size=16,
                  schedule="cosine", eval_every=1)


def setting(kind: str):
    g = torch.Generator().manual_seed(0)
    if kind == "mlp":
        x, classes, model_cfg, augment = torch.randn(70, 12, generator=g), 4, ModelConfig("mlp", (16, 16)), "none"
    else:  # a conv net with batch norm on augmented images
        x, classes, model_cfg, augment = torch.randn(70, 3, 16, 16, generator=g), 3, ModelConfig(kind, width=4), "crop-flip"
    y = torch.randint(0, classes, (70,), generator=g)  # 70 = 4 x 16 + 6: a smaller last batch
    data = TrainData(x, y, y, x[:20], y[:20], torch.arange(0), augment=augment)
    model = build_model(model_cfg, tuple(x.shape[1:]), classes, seed=0)
    w = {n: p.detach() for n, p in model.named_parameters()}
    mask = random(w, full_mask(model, model.prunable_names("all")), fraction=0.5, scope="layer",
                  generator=torch.Generator().manual_seed(1))
    return model, data, mask


def trained(kind: str, captured: bool, objective: Objective = Objective(), checkpoint=None):
    model, data, mask = setting(kind)
    if captured:
        ex = CapturedExecution(model, data, CFG, mask, order_key=(0, "order"), capture=False, objective=objective)
    else:
        ex = prepare_single(model, data, CFG, mask, order_key=(0, "order"), objective=objective)
    [result] = run_epochs(ex, CFG, [(0, "order")], checkpoint=checkpoint)
    return model.state_dict(), result


@pytest.mark.parametrize("kind", ["mlp", "vgg16", "resnet18"])
def test_the_static_step_run_eagerly_equals_the_eager_step(kind):
    want, want_res = trained(kind, captured=False)
    got, got_res = trained(kind, captured=True)
    for name, value in want.items():
        assert torch.equal(value, got[name]), name  # batch-norm statistics and step counters too
    assert got_res.history == want_res.history and got_res.final == want_res.final
    assert got_res.optimizer_state["param_groups"] == want_res.optimizer_state["param_groups"]  # lr a number


def test_the_static_step_equals_the_eager_one_with_the_distance_penalty():
    model, _, _ = setting("mlp")
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    objective = Objective(anchor=anchor, penalty=0.01)
    want, _ = trained("mlp", captured=False, objective=objective)
    got, _ = trained("mlp", captured=True, objective=objective)
    assert all(torch.equal(v, got[n]) for n, v in want.items())
    plain, _ = trained("mlp", captured=True)
    assert not all(torch.equal(v, plain[n]) for n, v in want.items())  # the penalty did act


def test_a_resumed_captured_stage_ends_as_an_uninterrupted_one(tmp_path):
    want, want_res = trained("vgg16", captured=False)
    path = tmp_path / "ckpt.pt"
    with pytest.raises(_Interrupt):  # 5 steps per epoch, a save after each: the 7th is at epoch 1, step 2
        trained("vgg16", captured=True, checkpoint=_DyingCheckpointer(path, 7))
    got, got_res = trained("vgg16", captured=True, checkpoint=FileCheckpointer(path, 1e9, 1e9))
    assert all(torch.equal(v, got[n]) for n, v in want.items())
    assert got_res.history == want_res.history


CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.mark.parametrize("setting_, device, cfg, flags, expected", [
    ("on", CUDA, CFG, {}, (True, None)),
    ("auto", CUDA, CFG, {}, (False, None)),  # until a GPU check has compared it with eager training
    ("off", CUDA, CFG, {}, (False, None)),
    ("auto", CPU, CFG, {}, (False, None)),
    ("on", CPU, CFG, {}, (False, "--capture on: capture needs a CUDA device; training eagerly")),
    ("on", CUDA, CFG, {"compact": True},
     (False, "--capture on: compact execution computes on the live units; training eagerly")),
    ("on", CUDA, CFG, {"compile": True}, (False, "--capture on: torch.compile captures by itself; training eagerly")),
    ("on", CUDA, CFG, {"distributed": True},
     (False, "--capture on: data-parallel training syncs across processes; training eagerly")),
    ("on", CUDA, TrainConfig(optimizer="adam"), {},
     (False, "--capture on: only SGD's fused step takes its learning rate as a device tensor; training eagerly")),
])
def test_capture_is_chosen_where_nothing_rules_it_out(setting_, device, cfg, flags, expected):
    args = {"compact": False, "compile": False, "distributed": False, **flags}
    assert capture_choice(setting_, device, cfg, **args) == expected


def test_capture_on_without_a_gpu_trains_eagerly_and_says_so(capsys):
    from sparsedd.training.core import Accel
    from sparsedd.training.execution import SingleExecution

    model, data, mask = setting("mlp")
    ex = prepare_single(model, data, CFG, mask, order_key=(0,), accel=Accel(capture="on"))
    assert type(ex) is SingleExecution
    assert capsys.readouterr().err == "sparsedd: --capture on: capture needs a CUDA device; training eagerly\n"


# --- K stacked fully connected networks (sparsedd.training.batched), the LeNet/MLP path -------------

def stacked_trained(captured: bool, checkpoint=None, cfg: TrainConfig = CFG):
    from test_batched import setup
    from sparsedd.training.batched import StackedExecution
    from sparsedd.training.captured import CapturedStackedExecution

    datas, states, masks, _ = setup(K=3, n=70)  # 70 = 4 x 16 + 6: a smaller last batch
    args = (states, datas, cfg, masks, torch.device("cpu"))
    ex = CapturedStackedExecution(*args, capture=False) if captured else StackedExecution(*args)
    results = run_epochs(ex, cfg, [(k, "order") for k in range(3)], checkpoint=checkpoint)
    return ex.states(), results


def test_the_stacked_static_step_run_eagerly_equals_the_stacked_step():
    want, want_res = stacked_trained(captured=False)
    got, got_res = stacked_trained(captured=True)
    for k in range(3):
        assert all(torch.equal(v, got[k][n]) for n, v in want[k].items()), k
        assert got_res[k].history == want_res[k].history and got_res[k].final == want_res[k].final
        assert got_res[k].optimizer_state["param_groups"] == want_res[k].optimizer_state["param_groups"]
        lr = got_res[k].optimizer_state["param_groups"][0]["lr"]
        assert type(lr) is float and lr == want_res[k].optimizer_state["param_groups"][0]["lr"]


def test_a_resumed_captured_stacked_stage_ends_as_an_uninterrupted_one(tmp_path):
    want, want_res = stacked_trained(captured=False)
    path = tmp_path / "ckpt.pt"
    with pytest.raises(_Interrupt):  # 5 steps per epoch, a save after each: the 7th is at epoch 1, step 2
        stacked_trained(captured=True, checkpoint=_DyingCheckpointer(path, 7))
    got, got_res = stacked_trained(captured=True, checkpoint=FileCheckpointer(path, 1e9, 1e9))
    for k in range(3):
        assert all(torch.equal(v, got[k][n]) for n, v in want[k].items()), k
        assert got_res[k].history == want_res[k].history


def test_capture_on_for_batched_networks_without_a_gpu_trains_eagerly_and_says_so(capsys):
    from test_batched import setup
    from sparsedd.training.core import Accel
    from sparsedd.training.planner import train_batched

    datas, states, masks, _ = setup(K=2, n=40)
    want, _ = train_batched(states, datas, CFG, masks, order_keys=[(k, "order") for k in range(2)])
    got, _ = train_batched(states, datas, CFG, masks, order_keys=[(k, "order") for k in range(2)],
                           accel=Accel(capture="on"))
    assert all(torch.equal(v, got[k][n]) for k in range(2) for n, v in want[k].items())
    assert capsys.readouterr().err == "sparsedd: --capture on: capture needs a CUDA device; training eagerly\n"


@pytest.mark.parametrize("value", [0.1, 0.05 * 0.5 * (1 + 0.3), 1e-40, 3.4028235e38, 3.4028236e38, 1e39, 7.0])
def test_fp32_rounds_as_a_float32_tensor(value):
    from sparsedd.training.core import fp32

    assert fp32(value) == float(torch.tensor(value, dtype=torch.float32))


def test_a_ctrl_c_during_a_capture_stops_the_stage_and_is_not_taken_for_a_failed_capture(monkeypatch, capsys):
    """The step raises KeyboardInterrupt inside the capture, whose end then fails as a RuntimeError raised while
    handling it (the capture left unfinished): that was caught as a failed capture, and the stage trained on
    eagerly with Ctrl-C swallowed. The interrupt goes through; nothing is said about capture."""
    from contextlib import contextmanager

    from sparsedd.training import captured

    @contextmanager
    def graph(g):
        try:
            yield
        except BaseException:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")

    monkeypatch.setattr(captured.torch.cuda, "CUDAGraph", lambda: object())
    monkeypatch.setattr(captured.torch.cuda, "graph", graph)
    steps = []

    def step():
        steps.append(1)
        raise KeyboardInterrupt

    sg = captured.StepGraph(step, capture=True, before_capture=lambda: None)
    sg.warm = captured.WARMUP_STEPS
    with pytest.raises(KeyboardInterrupt):
        sg()
    assert steps == [1] and sg.capture and "could not capture" not in capsys.readouterr().err
