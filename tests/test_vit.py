"""The small vision transformer (``model.name = vit``): shapes, seeded init, prunable weights, execution choice,
and a tiny iterative pruning run on real MNIST whose masked weights stay zero."""

import json
import math

import pytest
import torch
from torch import nn

from sparsedd.cli import main
from sparsedd.config import ModelConfig
from sparsedd.errors import SparseddError
from sparsedd.models import build_model, check_takes
from sparsedd.models.vit import ViT
from sparsedd.pruning import layer_names, require_batch_norm
from sparsedd.training.batched import batchable
from sparsedd.training.sparse import SparsePolicy, compactable

MNIST = (1, 28, 28)


def vit(seed=0, width=0, shape=MNIST, classes=10) -> ViT:
    return build_model(ModelConfig("vit", width=width), shape, classes, seed=seed)


def test_shapes_and_parameter_count():
    model = vit()
    out = model(torch.randn(3, *MNIST, generator=torch.Generator().manual_seed(0)))
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    assert model.embed.weight.shape == (64, 49) and model.pos_embed.shape == (17, 64)  # 16 patches + the class token
    assert len(model.blocks) == 4 and model.blocks[0].fc1.weight.shape == (128, 64)
    block = 4 * (64 * 64 + 64) + (64 * 128 + 128) + (128 * 64 + 64) + 2 * 2 * 64  # q, k, v, out, mlp, two norms
    assert sum(p.numel() for p in model.parameters()) == 64 + 17 * 64 + (49 * 64 + 64) + 4 * block + 2 * 64 + 650
    narrow = vit(width=32, shape=(3, 14, 21), classes=5)  # colour, any multiple of the patch
    assert narrow.embed.weight.shape == (32, 147) and narrow.pos_embed.shape == (7, 32)
    assert narrow(torch.randn(2, 3, 14, 21)).shape == (2, 5)
    heads = {w: vit(width=w).blocks[0].attn.heads for w in (64, 30, 9)}  # every width builds: fewer heads
    assert heads == {64: 4, 30: 2, 9: 1} and vit(width=9)(torch.randn(2, *MNIST)).shape == (2, 10)


def test_patches_are_the_images_7x7_squares_in_row_major_order():
    model, seen = vit(shape=(3, 14, 21)), []
    model.embed.register_forward_hook(lambda mod, inputs, out: seen.append(inputs[0]))
    x = torch.randn(2, 3, 14, 21)
    model(x)
    assert torch.equal(seen[0], torch.nn.functional.unfold(x, 7, stride=7).transpose(1, 2))
    assert torch.equal(seen[0][1, 4], x[1, :, 7:14, 7:14].flatten())  # patch 4: second row, second column


def test_the_class_token_and_positions_change_the_output():
    model = vit().eval()
    x = torch.randn(2, *MNIST, generator=torch.Generator().manual_seed(1))
    before = model(x)
    with torch.no_grad():
        model.pos_embed[3].add_(torch.randn(64, generator=torch.Generator().manual_seed(2)))  # one position only
    assert not torch.allclose(model(x), before)
    # swapping two patches' pixels changes the output (positions matter) unless their embeddings swap too
    swapped = x.clone()
    swapped[..., :7, :7], swapped[..., :7, 7:14] = x[..., :7, 7:14], x[..., :7, :7]
    assert not torch.allclose(model(swapped), model(x), atol=1e-5)


@pytest.mark.parametrize("shape, match", [((784,), r"images \[C, H, W\]"), ((1, 30, 30), "7x7 patches")])
def test_inputs_it_cannot_take_are_one_line_errors(shape, match):
    with pytest.raises(SparseddError, match=match) as e:
        vit(shape=shape)
    assert "\n" not in str(e.value)


def test_init_depends_only_on_the_seed_and_is_scaled_by_fan_in():
    torch.manual_seed(123)
    a = vit(seed=0).state_dict()
    torch.manual_seed(456)
    again = vit(seed=0).state_dict()
    b = vit(seed=1).state_dict()
    assert a.keys() == again.keys() and all(torch.equal(a[k], again[k]) for k in a)
    for k in ("cls_token", "pos_embed", "embed.weight", "blocks.2.attn.v.weight", "head.weight"):
        assert not torch.equal(a[k], b[k]), k
    for k, v in a.items():
        if ".norm" in k or k.startswith("norm."):  # LayerNorms: scale one, shift zero
            assert torch.all(v == (1.0 if k.endswith("weight") else 0.0)), k
        elif k.endswith("bias"):
            assert torch.all(v == 0), k
    # Kaiming normal by fan-in; the class token and positions as a row of fan-in dim
    assert a["embed.weight"].std().item() == pytest.approx(math.sqrt(2 / 49), rel=0.05)
    assert a["blocks.0.fc2.weight"].std().item() == pytest.approx(math.sqrt(2 / 128), rel=0.05)
    assert a["pos_embed"].std().item() == pytest.approx(math.sqrt(2 / 64), rel=0.1)
    assert a["cls_token"].abs().max() > 0
    torch_bias = build_model(ModelConfig("vit", bias_init="torch"), MNIST, 10, seed=0).state_dict()
    assert torch.equal(torch_bias["blocks.0.attn.q.weight"], a["blocks.0.attn.q.weight"])  # the weights stay
    assert 0 < torch_bias["blocks.0.attn.q.bias"].abs().max() <= 1 / 8


def test_prunable_names_are_the_linear_weights():
    model = vit()
    modules = dict(model.named_modules())
    default = model.prunable_names()
    assert len(default) == 1 + 4 * 6 and default[0] == "embed.weight" and "head.weight" not in default
    assert all(isinstance(modules[n.removesuffix(".weight")], nn.Linear) for n in default)
    assert {"blocks.3.attn.q.weight", "blocks.3.attn.k.weight", "blocks.3.attn.out.weight", "blocks.3.fc1.weight"} \
        <= set(default)
    assert model.prunable_names("hidden") == default and model.prunable_names("all") == default + ["head.weight"]
    assert layer_names(model, "last-2") == ["blocks.3.fc2.weight", "head.weight"]
    with pytest.raises(SparseddError, match="prune.method = 'slimming' prunes batch-norm channels and model 'vit'"):
        require_batch_norm(model, "vit")  # LayerNorms only
    for layers in ("conv", "bogus"):
        with pytest.raises(SparseddError, match=f"prune.layers '{layers}' does not apply to the vit") as e:
            model.prunable_names(layers)
        assert "\n" not in str(e.value)


def test_it_trains_dense_masked_never_stacked_or_compact():
    model = vit()
    mask = {n: torch.rand(dict(model.named_parameters())[n].shape) < 0.01 for n in model.prunable_names()}
    assert not batchable(model) and not compactable(model, mask)
    assert SparsePolicy("on").decide(model, mask, 128, "fp32") is None


def test_a_tiny_run_keeps_pruned_weights_zero(tmp_path, shared_mnist):
    check_takes(ModelConfig("vit"), MNIST, 10, "default")  # (the first linear layer on meta tensors: seconds)
    with pytest.raises(SparseddError, match="does not apply to the vit"):
        check_takes(ModelConfig("vit"), MNIST, 10, "conv")
    root = tmp_path / "runs"
    sets = ["data.num_train=64", "data.num_test=32", "model.width=16", "train.epochs=1", "train.batch_size=16",
            "train.warmup_epochs=0", "prune.levels=2", "retrain.rewind_iteration=1", "seeds=1"]
    args = ["run", "--preset", "mnist-vit-quick", "--root", str(root), "--data-dir", str(shared_mnist), "--no-progress"]
    assert main(args + [a for s in sets for a in ("--set", s)]) == 0
    levels = {}
    for stage in (root / "stages").iterdir():
        if (stage / "done.json").exists() and json.loads((stage / "stage.json").read_text())["kind"] in ("dense", "level"):
            metrics = json.loads((stage / "done.json").read_text())["metrics"]
            levels[metrics["level"]] = (metrics, torch.load(stage / "final.pt", weights_only=True))
    assert sorted(levels) == [0, 1, 2]
    names = vit(width=16).prunable_names()
    for level, (metrics, final) in levels.items():
        assert sorted(final["mask"]) == sorted(names)
        assert metrics["sparsity"] == pytest.approx(1 - 0.6 ** level, abs=0.01)
        assert 0 <= metrics["test_acc"] <= 1
        for n, m in final["mask"].items():
            assert torch.all(final["model"][n][~m] == 0), (level, n)
    assert levels[2][1]["model"]["head.weight"].ne(0).all()  # the head is never pruned


def test_second_derivatives_exist_for_sharpness():
    """The sharpness analysis takes Hessian-vector products: the attention must be twice differentiable."""
    model = vit(width=16)
    x, y = torch.randn(4, *MNIST), torch.tensor([0, 1, 2, 3])
    params = [p for p in model.parameters()]
    grads = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x), y), params, create_graph=True)
    hvp = torch.autograd.grad(sum((g * g).sum() for g in grads), params)
    assert hvp[0].shape == params[0].shape and any(h.abs().sum() > 0 for h in hvp)
