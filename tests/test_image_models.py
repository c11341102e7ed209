"""Image-scale models: ResNet-18 / VGG-16 (CIFAR) and ResNet-101 (Tiny ImageNet).

Big models are built, but run only on a couple of tiny inputs.
"""

import math

import pytest
import torch
from torch import nn

from sparsedd.config import ModelConfig, TrainConfig
from sparsedd.config_check import check_model
from sparsedd.errors import SparseddError
from sparsedd.models import build_model, reset_parameters
from sparsedd.models.mlp import MLP
from sparsedd.pruning import density, full_mask, random
from sparsedd.training import TrainData, train

CIFAR = (3, 32, 32)
TINY_IMAGENET = (3, 64, 64)


def nparams(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def r18():
    return build_model(ModelConfig("resnet18"), CIFAR, 10, seed=0)


@pytest.fixture(scope="module")
def vgg():
    return build_model(ModelConfig("vgg16"), CIFAR, 10, seed=0)


@pytest.fixture(scope="module")
def r101():
    return build_model(ModelConfig("resnet101"), TINY_IMAGENET, 200, seed=0)


# ----------------------------------------------------------------------------- parameter counts


def test_resnet18_parameter_count(r18):
    assert nparams(r18) == 11_173_962  # the standard CIFAR ResNet-18
    # 100 classes: the fc grows by 90 * (512 + 1)
    assert nparams(build_model(ModelConfig("resnet18"), CIFAR, 100, seed=0)) == 11_173_962 + 90 * 513 == 11_220_132


def test_vgg16_parameter_count(vgg):
    # OpenLTH's cifar_vgg_16 with BN: 14,714,688 conv weights and biases + 8,448 BN + 5,130 fc
    assert nparams(vgg) == 14_728_266


def test_resnet101_parameter_count(r101):
    # torchvision resnet101 (1000 classes) has 44,549,160 parameters. The CIFAR-style stem is a
    # 3x3x3x64 conv (1,728) instead of 7x7x3x64 (9,408): -7,680. The fc for 200 classes is
    # 2048*200 + 200 = 409,800 instead of 2048*1000 + 1000 = 2,049,000: -1,639,200.
    # 44,549,160 - 7,680 - 1,639,200 = 42,902,280.
    assert nparams(r101) == 44_549_160 - 7_680 - 1_639_200 == 42_902_280


# ----------------------------------------------------------------------------- forward shapes


@torch.no_grad()
def test_forward_shapes(r18, vgg, r101):
    g = torch.Generator().manual_seed(0)
    for model, shape, classes in [(r18, CIFAR, 10), (vgg, CIFAR, 10), (r101, TINY_IMAGENET, 200)]:
        model.eval()
        out = model(torch.randn(2, *shape, generator=g))
        assert out.shape == (2, classes) and torch.isfinite(out).all()
    # adaptive pooling: other image sizes work too
    assert r18(torch.randn(2, 3, 8, 8, generator=g)).shape == (2, 10)
    assert r18(torch.randn(2, 3, 64, 64, generator=g)).shape == (2, 10)
    assert vgg(torch.randn(2, 3, 16, 16, generator=g)).shape == (2, 10)


def test_image_models_take_images_of_any_channels_and_width():
    g = torch.Generator().manual_seed(0)
    narrow = build_model(ModelConfig("resnet18", width=8), (1, 28, 28), 10, seed=0)  # MNIST as it is
    assert narrow.conv1.weight.shape == (8, 1, 3, 3) and narrow.fc.weight.shape == (10, 64)
    assert narrow(torch.randn(2, 1, 28, 28, generator=g)).shape == (2, 10)
    small_vgg = build_model(ModelConfig("vgg16", width=16), (1, 28, 28), 10, seed=0)
    assert small_vgg.fc.weight.shape == (10, 128) and small_vgg(torch.randn(2, 1, 28, 28, generator=g)).shape == (2, 10)
    with pytest.raises(SparseddError, match=r"images \[C, H, W\]") as e:
        build_model(ModelConfig("resnet101"), (40,), 10, seed=0)
    assert "\n" not in str(e.value)
    with pytest.raises(SparseddError, match=r"images \[C, H, W\]"):
        build_model(ModelConfig("vgg16"), (3072,), 10, seed=0)
    with pytest.raises(SparseddError, match="at least 16x16"):
        build_model(ModelConfig("vgg16"), (3, 8, 8), 10, seed=0)
    with pytest.raises(SparseddError, match="model.width applies to the conv nets only"):
        check_model(ModelConfig("mlp", width=8))  # (checked with the registered names, when a run starts)


# ----------------------------------------------------------------------------- prunable layers


def _check_names(model: nn.Module, names: list[str]) -> None:
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    assert len(names) == len(set(names))
    for n in names:
        assert n.endswith(".weight") and n in params
        owner = modules[n[: -len(".weight")]]
        assert isinstance(owner, (nn.Conv2d, nn.Linear)), n  # never BN parameters or biases
        assert params[n].dim() in (2, 4)


@pytest.mark.parametrize("which", ["r18", "r101"])
def test_resnet_prunable_names(which, request):
    model = request.getfixturevalue(which)
    convs = [f"{m}.weight" for m, mod in model.named_modules() if isinstance(mod, nn.Conv2d)]
    n_convs = {"r18": 1 + 8 * 2 + 3, "r101": 1 + 33 * 3 + 4}[which]  # stem + blocks + 1x1 shortcuts
    assert len(convs) == n_convs
    for layers in ("default", "all", "hidden", "conv"):
        _check_names(model, model.prunable_names(layers))
    assert model.prunable_names() == model.prunable_names("all") == convs + ["fc.weight"]
    assert model.prunable_names("conv") == model.prunable_names("hidden") == convs
    assert "layer2.0.downsample.0.weight" in convs and "conv1.weight" in convs
    with pytest.raises(SparseddError, match="prune.layers"):
        model.prunable_names("bogus")


def test_vgg_prunable_names(vgg):
    convs = vgg.prunable_names()
    assert len(convs) == 13 and "fc.weight" not in convs  # the paper prunes VGG's convs only
    for layers in ("default", "all", "hidden", "conv"):
        _check_names(vgg, vgg.prunable_names(layers))
    assert vgg.prunable_names("conv") == vgg.prunable_names("hidden") == convs
    assert vgg.prunable_names("all") == convs + ["fc.weight"]
    with pytest.raises(SparseddError, match="prune.layers"):
        vgg.prunable_names("bogus")


# ----------------------------------------------------------------------------- init


def test_init_depends_only_on_seed_and_bn_starts_at_one(r18):
    torch.manual_seed(123)
    a = build_model(ModelConfig("resnet18"), CIFAR, 10, seed=0).state_dict()
    b = build_model(ModelConfig("resnet18"), CIFAR, 10, seed=1).state_dict()
    ref = r18.state_dict()
    assert all(torch.equal(a[k], ref[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], b["conv1.weight"])
    for name, mod in r18.named_modules():
        if isinstance(mod, nn.BatchNorm2d):
            assert torch.all(a[f"{name}.weight"] == 1) and torch.all(a[f"{name}.bias"] == 0)
            assert torch.all(a[f"{name}.running_mean"] == 0) and torch.all(a[f"{name}.running_var"] == 1)
    assert torch.all(a["fc.bias"] == 0)
    w = a["layer3.0.conv2.weight"]  # fan-in 256 * 3 * 3
    assert w.std().item() == pytest.approx(math.sqrt(2 / (256 * 9)), rel=0.05)
    assert a["fc.weight"].std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.1)


def test_vgg_init_zero_conv_biases(vgg):
    sd = vgg.state_dict()
    assert torch.all(sd["layers.0.conv.bias"] == 0) and torch.all(sd["layers.0.bn.weight"] == 1)


def test_mlp_init_unchanged():
    """The MLP's init draws every weight in order with the same formula as before the image models."""
    model = MLP(20, (16, 8), 5)
    reset_parameters(model, 7)
    g = torch.Generator().manual_seed(7)
    for layer in model.layers:
        fan_in = layer.weight.shape[1]
        expected = torch.randn(layer.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5
        assert torch.equal(layer.weight.data, expected)
        assert torch.all(layer.bias == 0)


def test_reset_restores_batch_norm():
    model = build_model(ModelConfig("resnet18"), CIFAR, 10, seed=3)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.bn1.weight.fill_(0.5)
        model(torch.randn(2, *CIFAR))  # updates the running stats
    assert not torch.equal(model.bn1.running_mean, init["bn1.running_mean"])
    reset_parameters(model, 3)
    assert all(torch.equal(v, init[k]) for k, v in model.state_dict().items())


# ----------------------------------------------------------------------------- masked training


def test_masked_training_step_keeps_pruned_weights_zero():
    model = build_model(ModelConfig("resnet18"), CIFAR, 10, seed=0)
    names = model.prunable_names()
    params = dict(model.named_parameters())
    mask = random({n: params[n].detach() for n in names}, full_mask(model, names), fraction=0.5, scope="layer",
                  generator=torch.Generator().manual_seed(0))
    assert density(mask) == pytest.approx(0.5, abs=1e-3)
    assert not any("bn" in n or n.endswith("bias") or "downsample.1" in n for n in mask)
    before = {n: p.detach().clone() for n, p in params.items()}

    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, *CIFAR, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    data = TrainData(x=x, y=y, y_clean=y, x_test=x[:4], y_test=y[:4], corrupted=torch.zeros(0, dtype=torch.long))
    cfg = TrainConfig(epochs=1, batch_size=4, momentum=0.9, weight_decay=1e-4)
    result = train(model, data, cfg, mask, order_key=(0, "order"))
    assert result.iterations == 2

    for n in names:  # pruned weights exactly zero, kept weights trained
        assert torch.all(params[n][~mask[n]] == 0)
        assert not torch.equal(params[n][mask[n]], before[n][mask[n]])
    for name, mod in model.named_modules():  # BN trained, not masked
        if isinstance(mod, nn.BatchNorm2d):
            assert torch.all(mod.weight != 0)
            assert not torch.equal(mod.weight, before[f"{name}.weight"])
