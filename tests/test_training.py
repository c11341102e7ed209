import pytest
import torch

from sparsedd.config import ModelConfig, TrainConfig
from sparsedd.models import build_model
from sparsedd.pruning import full_mask, random
from sparsedd.store import FileCheckpointer
from sparsedd.training import TrainData, lr_at, train


def tiny_data(n=96, d=12, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return TrainData(x, y, y.clone(), x[:32], y[:32], torch.arange(0))


def pruned_model(seed=0):
    model = build_model(ModelConfig("mlp", (16, 16)), (12,), 4, seed=seed)
    mask = full_mask(model, model.prunable_names("all"))
    w = {n: p.detach() for n, p in model.named_parameters()}
    mask = random(w, mask, fraction=0.6, scope="layer", generator=torch.Generator().manual_seed(seed))
    return model, mask


@pytest.mark.parametrize("cfg", [
    TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-3, epochs=3, batch_size=16),
    TrainConfig(optimizer="adam", lr=0.01, weight_decay=5e-3, epochs=3, batch_size=16),
])
def test_pruned_weights_stay_zero_with_momentum_and_weight_decay(cfg):
    model, mask = pruned_model()
    with torch.no_grad():  # start from non-zero pruned weights: train must zero them and keep them zero
        for p in model.parameters():
            p.add_(0.5)
    train(model, tiny_data(), cfg, mask, order_key=(0,))
    params = dict(model.named_parameters())
    for n, m in mask.items():
        assert torch.all(params[n][~m] == 0), n
        assert torch.any(params[n][m] != 0), n


def test_momentum_buffers_stay_zero_on_pruned_weights(monkeypatch):
    import sparsedd.training.execution as loop  # where the one-network execution builds its optimizer

    captured = {}
    real = loop.build_optimizer

    def spy(params, cfg):
        captured["opt"] = real(params, cfg)
        return captured["opt"]

    monkeypatch.setattr(loop, "build_optimizer", spy)
    model, mask = pruned_model()
    cfg = TrainConfig(lr=0.1, momentum=0.9, weight_decay=1e-2, epochs=2, batch_size=16)
    train(model, tiny_data(), cfg, mask, order_key=(0,))
    params = dict(model.named_parameters())
    for n, m in mask.items():
        buf = captured["opt"].state[params[n]]["momentum_buffer"]
        assert torch.all(buf[~m] == 0) and torch.any(buf[m] != 0)


def test_lr_schedules():
    c = TrainConfig(lr=0.1, epochs=10, schedule="multistep", milestones=(4, 8), gamma=0.1)
    assert [round(lr_at(c, e * 5, 5), 6) for e in (0, 3, 4, 7, 8, 9)] == [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    cos = TrainConfig(lr=1.0, epochs=10, schedule="cosine")
    assert lr_at(cos, 0, 10) == pytest.approx(1.0) and lr_at(cos, 50, 10) == pytest.approx(0.5)
    assert lr_at(cos, 99, 10) < 0.01
    warm = TrainConfig(lr=1.0, epochs=10, warmup_epochs=2)
    assert lr_at(warm, 0, 10) == pytest.approx(0.05) and lr_at(warm, 19, 10) == pytest.approx(1.0)
    assert lr_at(warm, 20, 10) == pytest.approx(1.0)


def test_metrics_recorded_every_eval_epoch_and_at_the_end():
    model, mask = pruned_model()
    res = train(model, tiny_data(), TrainConfig(epochs=5, eval_every=2, batch_size=16), mask, order_key=(0,))
    assert [("test_acc" in h) for h in res.history] == [False, True, False, True, True]
    for k in ("test_acc", "test_acc_best", "train_acc_noisy", "train_acc_clean", "test_loss"):
        assert 0 <= res.final[k] < 100
    assert res.final["memorized"] is None  # no corrupted examples
    assert res.final["test_acc_best"] == max(h["test_acc"] for h in res.history if "test_acc" in h)


class _Interrupt(Exception):
    pass


class _DyingCheckpointer(FileCheckpointer):
    """Saves every time it is asked (also mid-epoch), and dies after ``saves`` saves."""

    def __init__(self, path, saves):
        super().__init__(path, every_s=0, epoch_every_s=0)
        self.left = saves

    def save(self, state):
        super().save(state)
        self.left -= 1
        if self.left == 0:
            raise _Interrupt


@pytest.mark.parametrize("saves", [1, 4, 7])
def test_resume_from_checkpoint_is_bit_exact(tmp_path, saves):
    cfg = TrainConfig(lr=0.05, momentum=0.9, weight_decay=1e-3, epochs=3, batch_size=40, schedule="cosine")
    data = tiny_data()  # 96 examples, batch 40: 3 steps per epoch, mid-epoch checkpoints too
    ref, mask = pruned_model()
    ref_res = train(ref, data, cfg, mask, order_key=(0, "order"))

    model, mask = pruned_model()
    path = tmp_path / "ckpt.pt"
    with pytest.raises(_Interrupt):
        train(model, data, cfg, mask, order_key=(0, "order"), checkpoint=_DyingCheckpointer(path, saves))
    resumed, mask = pruned_model(seed=0)
    with torch.no_grad():  # the checkpoint, not these weights, must decide the result
        for p in resumed.parameters():
            p.mul_(-3)
    res = train(resumed, data, cfg, mask, order_key=(0, "order"), checkpoint=FileCheckpointer(path, 1e9, 1e9))
    for k, v in ref.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert res.history == ref_res.history


def test_stop_iteration_matches_the_start_of_full_training():
    cfg = TrainConfig(lr=0.05, epochs=2, batch_size=40)
    a, mask = pruned_model()
    train(a, tiny_data(), cfg, mask, order_key=(1,), stop_iteration=4)
    b, mask = pruned_model()
    train(b, tiny_data(), TrainConfig(lr=0.05, epochs=2, batch_size=40), mask, order_key=(1,), stop_iteration=5)
    assert not torch.equal(a.layers[0].weight, b.layers[0].weight)
    with pytest.raises(ValueError):
        train(b, tiny_data(), cfg, mask, order_key=(1,), stop_iteration=7)


def test_bf16_autocast_trains_fp32_weights_and_keeps_masks():
    model, mask = pruned_model()
    cfg = TrainConfig(lr=0.05, momentum=0.9, epochs=2, batch_size=16, precision="bf16")
    ref, _ = pruned_model()
    res = train(model, tiny_data(), cfg, mask, order_key=(0,))
    train(ref, tiny_data(), TrainConfig(lr=0.05, momentum=0.9, epochs=2, batch_size=16), mask, order_key=(0,))
    params = dict(model.named_parameters())
    for n, m in mask.items():
        assert params[n].dtype == torch.float32 and torch.all(params[n][~m] == 0)
    diff = max(float((a - b).detach().abs().max()) for a, b in zip(model.parameters(), ref.parameters()))
    assert 0 < diff < 0.05  # bf16 rounding changes the trajectory a little, not much
    assert 0 <= res.final["test_acc"] <= 1


def test_channels_last_gives_the_same_result_for_a_conv_net():
    from torch import nn

    from sparsedd.training.core import Accel

    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 3, 8, 8, generator=g)
    y = torch.randint(0, 3, (24,), generator=g)
    data = TrainData(x, y, y, x[:8], y[:8], torch.arange(0))
    cfg = TrainConfig(lr=0.05, momentum=0.9, epochs=2, batch_size=8)
    a, b = make(), make()
    mask = {"0.weight": torch.rand(4, 3, 3, 3, generator=g) > 0.5}
    train(a, data, cfg, mask, order_key=(0,))
    train(b, data, cfg, mask, order_key=(0,), accel=Accel(channels_last=True))
    assert b[0].weight.is_contiguous(memory_format=torch.channels_last)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-5)
    assert torch.all(b[0].weight[~mask["0.weight"]] == 0)
