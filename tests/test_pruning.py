import math

import pytest
import torch

from sparsedd.config import ModelConfig
from sparsedd.models import MODELS, build_model
from sparsedd.pruning import density, full_mask, gradient_saliency, layer_sparsity, magnitude, random, remaining


def weights():
    g = torch.Generator().manual_seed(0)
    # two layers with very different scales: global and layer scope must then disagree
    return {"a": torch.randn(60, 50, generator=g), "b": 10 * torch.randn(40, 30, generator=g)}


def ones(w):
    return {n: torch.ones_like(t, dtype=torch.bool) for n, t in w.items()}


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_density_after_L_rounds(scope):
    w = weights()
    m = ones(w)
    for level in range(1, 16):
        m = magnitude(w, m, fraction=0.2, scope=scope)
        assert density(m) == pytest.approx(0.8 ** level, rel=0.02, abs=2 / 4200)


def test_each_round_removes_exactly_a_fraction_of_the_remaining():
    w = weights()
    m = ones(w)
    for _ in range(5):
        before = remaining(m)
        new = magnitude(w, m, fraction=0.2, scope="global")
        assert before - remaining(new) == round(0.2 * before)
        for n in m:  # masks only shrink
            assert not (new[n] & ~m[n]).any()
        m = new


def test_global_vs_layer_scope():
    w = weights()
    g = magnitude(w, ones(w), fraction=0.5, scope="global")
    l = magnitude(w, ones(w), fraction=0.5, scope="layer")
    # layer scope: half of each layer; global: the small-scale layer loses far more
    assert layer_sparsity(l) == pytest.approx({"a": 0.5, "b": 0.5}, abs=1e-3)
    assert layer_sparsity(g)["a"] > 0.6 and layer_sparsity(g)["b"] < 0.1
    # global keeps exactly the largest magnitudes overall
    kept = torch.cat([w[n][g[n]].abs() for n in w])
    dropped = torch.cat([w[n][~g[n]].abs() for n in w])
    assert kept.min() >= dropped.max()


def test_magnitude_ignores_already_pruned():
    w = weights()
    m = ones(w)
    m["a"][:30] = False  # pretend these were pruned; their magnitudes must not be ranked again
    new = magnitude(w, m, fraction=0.1, scope="layer")
    assert remaining({"a": new["a"]}) == 30 * 50 - round(0.1 * 30 * 50)


def test_random_pruning_seeded_and_independent_of_magnitude():
    w = weights()
    a = random(w, ones(w), fraction=0.3, scope="layer", generator=torch.Generator().manual_seed(1))
    b = random(w, ones(w), fraction=0.3, scope="layer", generator=torch.Generator().manual_seed(1))
    c = random(w, ones(w), fraction=0.3, scope="layer", generator=torch.Generator().manual_seed(2))
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)
    assert layer_sparsity(a) == pytest.approx({"a": 0.3, "b": 0.3}, abs=1e-3)
    mag = magnitude(w, ones(w), fraction=0.3, scope="layer")
    assert not torch.equal(a["a"], mag["a"])


def test_gradient_saliency_prunes_unused_inputs():
    model = build_model(ModelConfig("mlp", (16,)), (8,), 3, seed=0)
    x = torch.randn(64, 8)
    x[:, :4] = 0  # inputs 0..3 carry nothing: their first-layer weights get zero gradient
    y = torch.randint(0, 3, (64,))
    mask = full_mask(model, model.prunable_names())
    sal = gradient_saliency(model, x, y, mask, batches=2, batch_size=32, generator=torch.Generator().manual_seed(0))
    assert torch.all(sal["layers.0.weight"][:, :4] == 0) and torch.all(sal["layers.0.weight"][:, 4:] > 0)
    from sparsedd.pruning import gradient

    new = gradient({}, mask, fraction=0.5, scope="layer", saliency=sal)
    assert not new["layers.0.weight"][:, :4].any()


def test_lenet_prunable_layers():
    model = build_model(ModelConfig("lenet-300-100"), (1, 28, 28), 10, seed=0)
    assert model.prunable_names() == ["layers.0.weight", "layers.1.weight"]  # output layer kept dense
    assert model.prunable_names("all")[-1] == "layers.2.weight"
    assert sum(p.numel() for p in model.parameters()) == 266610


def test_init_depends_only_on_seed():
    a = build_model(ModelConfig("mlp", (32,)), (40,), 10, seed=5)
    torch.manual_seed(123)
    b = build_model(ModelConfig("mlp", (32,)), (40,), 10, seed=5)
    c = build_model(ModelConfig("mlp", (32,)), (40,), 10, seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["layers.0.weight"], sc["layers.0.weight"])
    assert torch.all(sa["layers.0.bias"] == 0)
    assert sa["layers.0.weight"].std().item() == pytest.approx(math.sqrt(2 / 40), rel=0.1)


class TinyBatchNormNet(torch.nn.Module):
    """conv -> batch norm -> relu -> pool -> linear: train and eval mode compute different outputs."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, bias=False)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def scores_of_one_batch(model, x, y, train_mode):
    """|w * dL/dw| of the conv and fc weights on exactly (x, y), computed by hand on a copy."""
    import copy

    ref = copy.deepcopy(model).train(train_mode)
    torch.nn.functional.cross_entropy(ref(x), y).backward()
    return {n: (p * p.grad).abs() for n, p in ref.named_parameters() if n in ("conv.weight", "fc.weight")}


def test_paper_gradient_rule_scores_one_batch_in_train_mode():
    torch.manual_seed(0)
    model = TinyBatchNormNet().eval()
    with torch.no_grad():  # running statistics far from the batch's, so train and eval mode differ
        model.bn.running_mean.fill_(0.5)
        model.bn.running_var.fill_(3.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(40, 3, 6, 6), torch.randint(0, 3, (40,))
    mask = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters() if n in ("conv.weight", "fc.weight")}
    sal = gradient_saliency(model, x, y, mask, batches=1, batch_size=16, generator=torch.Generator().manual_seed(3),
                            train_mode=True)
    first = torch.randperm(40, generator=torch.Generator().manual_seed(3))[:16]  # the seeded batch
    expected = scores_of_one_batch(model, x[first], y[first], train_mode=True)
    assert all(torch.allclose(sal[n], expected[n], atol=1e-7) for n in mask)
    in_eval = scores_of_one_batch(model, x[first], y[first], train_mode=False)
    assert not torch.allclose(sal["conv.weight"], in_eval["conv.weight"], atol=1e-4)
    # the model is left as it was: same mode, and batch norm's running statistics not updated
    assert not model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_multi_gradient_rule_sums_batches_in_eval_mode():
    torch.manual_seed(0)
    model = TinyBatchNormNet().eval()
    x, y = torch.randn(40, 3, 6, 6), torch.randint(0, 3, (40,))
    mask = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters() if n in ("conv.weight", "fc.weight")}
    sal = gradient_saliency(model, x, y, mask, batches=2, batch_size=16, generator=torch.Generator().manual_seed(3))
    order = torch.randperm(40, generator=torch.Generator().manual_seed(3))
    parts = [scores_of_one_batch(model, x[b], y[b], train_mode=False) for b in (order[:16], order[16:32])]
    assert all(torch.allclose(sal[n], parts[0][n] + parts[1][n], atol=1e-6) for n in mask)


# --- network slimming


def slimming_inputs():
    """Two conv -> BN pairs with known BN scales; conv2's filter 0 already has one pruned weight."""
    g = torch.Generator().manual_seed(0)
    w = {"conv1.weight": torch.randn(4, 3, 3, 3, generator=g), "bn1.weight": torch.tensor([0.1, -2.0, 0.5, 3.0]),
         "bn1.bias": torch.randn(4, generator=g), "conv2.weight": torch.randn(3, 4, 1, 1, generator=g),
         "bn2.weight": torch.tensor([1.5, -0.05, 0.7]), "bn2.bias": torch.randn(3, generator=g)}
    mask = ones(w)
    mask["conv2.weight"][0, 2] = False
    return w, mask, {"bn1": "conv1.weight", "bn2": "conv2.weight"}


def test_slimming_masks_the_lowest_bn_scales_globally_and_their_conv_filters():
    from sparsedd.pruning import slimming

    w, mask, pairs = slimming_inputs()
    new = slimming(w, mask, fraction=3 / 7, scope="global", bn_convs=pairs)
    # the three smallest |gamma| over both layers: bn2[1] (0.05), bn1[0] (0.1), bn1[2] (0.5)
    assert new["bn1.weight"].tolist() == [False, True, False, True] and new["bn2.weight"].tolist() == [True, False, True]
    assert torch.equal(new["bn1.bias"], new["bn1.weight"]) and torch.equal(new["bn2.bias"], new["bn2.weight"])
    assert torch.equal(new["conv1.weight"].flatten(1).all(1), new["bn1.weight"])  # whole filters follow their channel
    assert not new["conv1.weight"][[0, 2]].any()
    assert not new["conv2.weight"][1].any() and new["conv2.weight"][2].all()
    assert not new["conv2.weight"][0, 2] and new["conv2.weight"][0].sum() == 3  # what was pruned stays pruned
    again = slimming(w, new, fraction=0.5, scope="global", bn_convs=pairs)  # ranks the 4 live channels only
    # 2 of them go: 0.7 and 1.5, both in bn2, which global ranking may empty
    assert again["bn1.weight"].tolist() == [False, True, False, True] and not again["bn2.weight"].any()


def test_slimming_by_layer_prunes_each_bn_layer_alike():
    from sparsedd.pruning import slimming

    w, mask, pairs = slimming_inputs()
    new = slimming(w, mask, fraction=0.5, scope="layer", bn_convs=pairs)
    assert new["bn1.weight"].tolist() == [False, True, False, True]  # 2 of 4
    assert new["bn2.weight"].tolist() == [True, False, False]  # round(0.5 * 3) = 2 of 3


def test_bn_convs_follow_the_data_flow_of_the_image_models():
    from sparsedd.pruning import bn_convs, slimming_names

    with torch.device("meta"):
        r18 = MODELS["resnet18"](ModelConfig("resnet18"), (3, 32, 32), 10)
        vgg = MODELS["vgg16"](ModelConfig("vgg16"), (3, 32, 32), 10)
    pairs = bn_convs(r18)
    assert len(pairs) == 20 and pairs["bn1"] == "conv1.weight" and pairs["layer1.0.bn2"] == "layer1.0.conv2.weight"
    assert pairs["layer2.0.downsample.1"] == "layer2.0.downsample.0.weight"  # names alone would not say it
    assert bn_convs(vgg) == {f"layers.{i}.bn": f"layers.{i}.conv.weight" for i in (0, 1, 3, 4, 6, 7, 8, 10, 11, 12, 14, 15, 16)}
    names = slimming_names(vgg)
    assert len(names) == 13 * 3 and "layers.0.bn.bias" in names and "fc.weight" not in names


def test_bn_after_something_else_than_a_conv_has_no_filter_to_follow():
    from sparsedd.pruning import bn_convs

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.BatchNorm2d(4))
    assert bn_convs(model) == {"2": None}


@pytest.mark.parametrize("case", ["distinct", "ties", "signed zeros", "nan"])
def test_the_lowest_k_by_selection_are_the_first_k_of_a_stable_sort(case):
    from sparsedd.pruning.select import Count, _drop, lowest

    g = torch.Generator().manual_seed(1)
    scores = torch.rand(5000, generator=g)
    if case == "ties":  # few distinct values: most of k is decided by position
        scores = torch.randint(0, 7, (5000,), generator=g).float()
    elif case == "signed zeros":
        scores = torch.where(torch.rand(5000, generator=g) < 0.5, torch.tensor(0.0), torch.tensor(-0.0))
        scores[::7] = 1.0
    elif case == "nan":
        scores[::11] = math.nan
    order = torch.argsort(scores, stable=True)
    for k in (0, 1, 17, 2500, 4544, 4999, 5000):
        assert set(lowest(scores, k).tolist()) == set(order[:k].tolist()), k
    for fraction in (0.2, 0.5, 0.9):  # the paper's rule: everything at or below the (k+1)-th smallest
        k = math.ceil(fraction * (5000 + 100))
        expected = torch.nonzero(scores <= scores[order[k]]).squeeze(1)
        assert torch.equal(_drop(scores, fraction, Count("all-masked", fixed=100)).sort()[0], expected)
