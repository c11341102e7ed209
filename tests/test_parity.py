"""Parity with the paper's code (he-zh/sparse-double-descent, an OpenLTH fork): its pruning count, replayed
here in its own few lines of numpy (not the project's function), and its initializations. docs/parity.md
lists every setting with the test that pins it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sparsedd import config_load
from sparsedd.config import ModelConfig, TrainConfig
from sparsedd.errors import SparseddError
from sparsedd.models import build_model
from sparsedd.pruning import Count, density, fixed_weights, magnitude, prunable_names, remaining


def official_round(weights: dict, mask: dict, ignore: set, fraction: float = 0.2) -> dict:
    """One round of OpenLTH's global magnitude pruning as the paper's code has it (pruning/magnitude.py,
    lines 68-85 and 108-110): the count over every tensor of the mask, the ignored ones included; the
    threshold at that index of the sorted magnitudes of the prunable unpruned weights; strictly above stays."""
    number_of_remaining_weights = np.sum([np.sum(v) for v in mask.values()])
    number_of_weights_to_prune = np.ceil(fraction * number_of_remaining_weights).astype(int)
    prunable = [k for k in mask if k not in ignore]
    weight_vector = np.concatenate([weights[k][mask[k] == 1] for k in prunable])
    threshold = np.sort(np.abs(weight_vector))[number_of_weights_to_prune]
    new = {k: np.where(np.abs(weights[k]) > threshold, mask[k], np.zeros_like(mask[k])) for k in prunable}
    new.update({k: mask[k] for k in mask if k in ignore})
    return new


def trained(weights: dict, level: int) -> dict:
    """Stand-in for a level's training: the weights moved by a seeded perturbation, so each level ranks anew."""
    g = torch.Generator().manual_seed(level)
    return {k: (v + 0.05 * v.std() * torch.randn(v.shape, generator=g)) for k, v in weights.items()}


def replay(model_name: str, levels: int, width: int = 0) -> tuple[list[int], list[int], float]:
    """Both rules side by side over ``levels`` rounds: the weights left (all masked tensors counted) by the
    official rule and by the project's, which must agree at every level, and the last density."""
    shape, classes = ((1, 28, 28), 10) if model_name == "lenet-300-100" else ((3, 32, 32), 10)
    model = build_model(ModelConfig(model_name, width=width), shape, classes, seed=0)
    every = model.prunable_names("all")  # OpenLTH's prunable_layer_names: every conv and linear weight
    names = prunable_names(model, "magnitude", "default")
    ignore = set(every) - set(names)
    fixed = fixed_weights(model, names, "magnitude", "all-masked")
    weights0 = {k: v.detach() for k, v in model.named_parameters() if k in every}
    theirs = {k: np.ones(v.shape, dtype=np.float32) for k, v in weights0.items()}
    ours = {k: torch.ones_like(weights0[k], dtype=torch.bool) for k in names}
    left_theirs, left_ours = [], []
    for level in range(1, levels + 1):
        w = trained(weights0, level)
        theirs = official_round({k: v.numpy() for k, v in w.items()}, theirs, ignore)
        ours = magnitude({k: w[k] for k in names}, ours, fraction=0.2, scope="global", count=Count("all-masked", fixed))
        for k in names:
            assert np.array_equal(theirs[k].astype(bool), ours[k].numpy()), (model_name, level, k)
        left_theirs.append(int(sum(v.sum() for v in theirs.values())))
        left_ours.append(remaining(ours, fixed))
    return left_theirs, left_ours, density(ours, fixed)


# weights left per level by the official rule (every masked tensor counted, LeNet's 1,000 output weights among
# them; level 3 and on lose one more to a tie at the threshold), levels 1..24
LENET_LEFT = [212959, 170366, 136291, 109031, 87223, 69777, 55820, 44655, 35723, 28577, 22860, 18287, 14628,
              11701, 9359, 7486, 5987, 4788, 3829, 3062, 2448, 1957, 1564, 1250]


def test_lenet_300_100_prunes_as_the_paper_code_at_every_level():
    theirs, ours, last = replay("lenet-300-100", 24)
    assert theirs == ours == LENET_LEFT
    # the project's own rule leaves 5x as many hidden weights at the same nominal sparsity
    n = 265_200  # the hidden weights, by the project's rule (prune.count = prunable)
    for _ in range(24):
        n -= round(0.2 * n)
    assert LENET_LEFT[-1] - 1000 == 250 and n == 1253
    assert 1 - last == pytest.approx(0.99530, abs=1e-5)


# ResNet-18 (CIFAR, 10 classes): nothing ignored, fc pruned too; 11,164,352 masked weights at level 0
RESNET18_LEFT = [8931480, 7145182, 5716144, 4572914, 3658330]


def test_resnet18_prunes_as_the_paper_code():
    theirs, ours, _ = replay("resnet18", 5)
    assert theirs == ours == RESNET18_LEFT


def test_each_round_removes_the_count_plus_one_and_the_ties():
    """n - ceil(0.2 n) - 1 of n stay without ties; equal magnitudes at the threshold go too (float32 magnitudes
    of millions of weights collide), so a level keeps at most that many, and only a handful fewer."""
    n = 11_164_352
    for left in RESNET18_LEFT:
        bound = n - math.ceil(0.2 * n) - 1
        assert bound - 5 <= left <= bound
        n = left


def test_the_weights_counted_beside_the_mask():
    lenet = build_model(ModelConfig("lenet-300-100"), (1, 28, 28), 10, seed=0)
    vgg = build_model(ModelConfig("vgg16", width=8), (3, 32, 32), 10, seed=0)
    resnet = build_model(ModelConfig("resnet18", width=8), (3, 32, 32), 10, seed=0)
    assert fixed_weights(lenet, prunable_names(lenet, "magnitude", "default"), "magnitude", "all-masked") == 1000
    assert fixed_weights(vgg, prunable_names(vgg, "magnitude", "default"), "magnitude", "all-masked") == 8 * 8 * 10
    assert fixed_weights(resnet, prunable_names(resnet, "magnitude", "default"), "magnitude", "all-masked") == 0
    assert fixed_weights(lenet, prunable_names(lenet, "magnitude", "default"), "magnitude", "prunable") == 0


def test_inits_as_the_paper_code():
    """bias_init = torch: PyTorch's default U(+-1/sqrt(fan_in)) biases; bn_init = uniform: BN scales U(0, 1),
    shifts 0 (batchnorm_init = 'uniform'). The Kaiming weights are the same draws whatever those choices."""
    plain = build_model(ModelConfig("vgg16", width=8), (3, 32, 32), 10, seed=3).state_dict()
    paper = build_model(ModelConfig("vgg16", width=8, bias_init="torch", bn_init="uniform"), (3, 32, 32), 10,
                        seed=3).state_dict()
    for k, v in paper.items():
        if k.endswith("conv.weight") or k == "fc.weight":
            assert torch.equal(v, plain[k]), k
        elif k.endswith("conv.bias") or k == "fc.bias":
            bound = 1 / math.sqrt(paper[k[:-4] + "weight"][0].numel())
            assert bool((v.abs() <= bound).all()) and bool((v != 0).all()) and bool((plain[k] == 0).all()), k
        elif k.endswith("bn.weight"):
            assert bool(((v >= 0) & (v < 1)).all()) and len(set(v.tolist())) == v.numel() and bool((plain[k] == 1).all())
        elif k.endswith("bn.bias"):
            assert bool((v == 0).all())
    lenet = build_model(ModelConfig("lenet-300-100", bias_init="torch"), (1, 28, 28), 10, seed=0).state_dict()
    b = lenet["layers.0.bias"]
    assert b.abs().max() <= 1 / 28 and abs(float(b.std()) - (1 / 28) / math.sqrt(3)) < 0.003  # U(-1/28, 1/28)


def test_training_from_the_rewind_iteration_continues_the_dense_trajectory():
    """The paper's code trains a rewound level from step k to the end of the schedule. Without momentum (the
    optimizer starts fresh there, as in that code), training from the dense run's w_k at start_iteration = k
    is the rest of the dense run itself, bit for bit."""
    import dataclasses

    from sparsedd.pruning import full_mask
    from sparsedd.training import TrainData, train

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 12, generator=g), torch.randint(0, 3, (200,), generator=g)
    data = TrainData(x, y, y.clone(), x[:40], y[:40], torch.arange(0))
    cfg = TrainConfig(lr=0.05, batch_size=32, epochs=3, schedule="multistep", milestones=(2,))
    model = build_model(ModelConfig("mlp", (16,)), (12,), 3, seed=0)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    mask = full_mask(model, model.prunable_names())
    k = 10  # inside epoch 2 (7 steps per epoch)
    train(model, data, cfg, mask, order_key=(0, "order"))
    dense_end = model.state_dict()
    model.load_state_dict(init)
    train(model, data, cfg, mask, order_key=(0, "order"), stop_iteration=k)
    rest = train(model, data, dataclasses.replace(cfg, start_iteration=k), mask, order_key=(0, "order"))
    assert all(torch.equal(model.state_dict()[n], dense_end[n]) for n in dense_end)
    assert [h["epoch"] for h in rest.history] == [2, 3]


def test_rewind_schedule_enters_level_ids_only_past_the_init():
    from sparsedd.experiments.stages import level_key

    def key(*sets):
        return level_key(config_load.load("paper-mnist-lenet", sets=list(sets)), "parent", 1)

    full = "retrain.rewind_schedule=full"
    assert key() == key(full)  # rewinding to the init (the preset's): the rest is the whole schedule
    assert key("retrain.rewind_iteration=5") != key("retrain.rewind_iteration=5", full)
    with pytest.raises(SparseddError, match="train.start_iteration is set per pruned level"):
        config_load.load("paper-mnist-lenet", sets=["train.start_iteration=3"])


@pytest.mark.parametrize("batch", ["on", "off"])
def test_a_rewound_level_trains_the_rest_of_the_schedule_end_to_end(tmp_path, tiny_sets, batch):
    """k = 20 of 24 steps (3 epochs of 8): a rewound level trains the last 4 steps, epoch 3 alone; stacked
    seeds and one-by-one training agree on it."""
    from sparsedd.cli import main
    from sparsedd.store import Store

    root = tmp_path / "runs"
    sets = [*tiny_sets, "retrain.rewind_iteration=20", "retrain.rewind_schedule=rest"]
    assert main(["run", "--root", str(root), "--no-progress", "--seeds", "2", "--batch", batch,
                 *[a for s in sets for a in ("--set", s)]]) == 0
    store = Store(root)
    stages = store.index.run_stages(store.index.run_ids()[0])
    for seed in (0, 1):
        assert [h["epoch"] for h in store.done_info(stages[(seed, 0)])["history"]] == [1, 2, 3]
        assert [h["epoch"] for h in store.done_info(stages[(seed, 1)])["history"]] == [3]


def test_max_magnitude_removes_the_largest():
    from sparsedd.pruning import max_magnitude

    w = {"a": torch.tensor([[0.1, -5.0, 0.3], [2.0, -0.2, 0.05]])}
    m = {"a": torch.ones(2, 3, dtype=torch.bool)}
    new = max_magnitude(w, m, fraction=1 / 3, scope="global")
    assert new["a"].tolist() == [[True, False, True], [False, True, True]]


def test_first_and_last_layers_as_the_paper_code_selects_them():
    """prune.layers = first-N / last-N (the paper code's layers_to_prune): the first or last N of every conv and
    linear weight in the model's order, layer scope only."""
    from sparsedd.pruning import prunable_names

    vgg = build_model(ModelConfig("vgg16", width=8), (3, 32, 32), 10, seed=0)
    every = vgg.prunable_names("all")
    assert prunable_names(vgg, "magnitude", "first-2") == every[:2] == ["layers.0.conv.weight", "layers.1.conv.weight"]
    assert prunable_names(vgg, "magnitude", "last-1") == ["fc.weight"]
    assert config_load.load(sets=["prune.layers=last-2", "prune.scope=layer"]).prune.layers == "last-2"
    for bad, words in ((["prune.layers=first-2"], "needs prune.scope = 'layer'"),
                       (["prune.layers=middle-2", "prune.scope=layer"], "unknown prune.layers"),
                       (["prune.layers=first-0", "prune.scope=layer"], "unknown prune.layers")):
        with pytest.raises(SparseddError, match=words):
            config_load.load(sets=bad)
    with pytest.raises(SparseddError, match="asks for 40 layers"):
        prunable_names(vgg, "magnitude", "first-40")


def test_training_stops_once_the_loss_is_below_stop_loss():
    """train.stop_loss (the paper code's convergence stopping criterion): the stage ends at the first epoch
    whose evaluated training loss is below it, with that epoch's weights and metrics."""
    import dataclasses

    from sparsedd.pruning import full_mask
    from sparsedd.training import TrainData, train

    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 6, generator=g)
    y = (x[:, 0] > 0).long()  # separable: the loss falls steadily
    data = TrainData(x, y, y.clone(), x[:30], y[:30], torch.arange(0))
    cfg = TrainConfig(lr=0.5, batch_size=30, epochs=40, eval_every=10)
    model = build_model(ModelConfig("mlp", (16,)), (6,), 2, seed=0)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    mask = full_mask(model, model.prunable_names())
    full = train(model, data, cfg, mask, order_key=(0, "order"))
    model.load_state_dict(init)
    every = train(model, data, dataclasses.replace(cfg, eval_every=1), mask, order_key=(0, "order"))
    threshold = every.history[9]["train_loss"] * 1.0001  # reached at epoch 10, not before
    assert all(h["train_loss"] > threshold for h in every.history[:9])
    model.load_state_dict(init)
    stopped = train(model, data, dataclasses.replace(cfg, stop_loss=threshold), mask, order_key=(0, "order"))
    assert [h["epoch"] for h in stopped.history] == list(range(1, 11))
    assert stopped.final["converged_epoch"] == 10 and "diverged" not in stopped.final
    assert stopped.final["test_acc"] == every.history[9]["test_acc"] and stopped.iterations == 40
    assert len(full.history) == 40 and "converged_epoch" not in full.final


def test_bn_l1_pushes_batch_norm_scales_down():
    """train.bn_l1 (network slimming's L1 on the BN scales, the paper code's bn_sparsity_regularization): the
    subgradient lambda * sign(gamma) on every scale, nothing else changed at lr 0 but those scales."""
    from sparsedd.pruning import full_mask
    from sparsedd.training import TrainData, train
    from sparsedd.training.core import Objective

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 1, 16, 16, generator=g), torch.randint(0, 10, (16,), generator=g)
    data = TrainData(x, y, y.clone(), x[:8], y[:8], torch.arange(0))
    cfg = TrainConfig(lr=0.1, batch_size=16, epochs=1)
    runs = []
    for l1 in (0.0, 0.5):
        model = build_model(ModelConfig("vgg16", width=4, bn_init="uniform"), (1, 16, 16), 10, seed=0)
        train(model, data, cfg, full_mask(model, model.prunable_names()), order_key=(0, "order"),
              objective=Objective(bn_l1=l1))
        runs.append(model.state_dict())
    plain, slim = runs
    scales = [k for k in plain if k.endswith("bn.weight")]
    # one step of lr 0.1: each scale lower by 0.1 * 0.5 * sign(gamma) = 0.05 (the scales are positive)
    assert all(torch.allclose(plain[k] - slim[k], torch.full_like(plain[k], 0.05), atol=1e-6) for k in scales)


def test_shuffled_masks_keep_what_their_strategy_keeps():
    from sparsedd.analysis.masks import shuffle_mask

    g = torch.Generator().manual_seed(0)
    mask = {"a": torch.rand(30, 20, generator=g) < 0.1, "b": torch.rand(40, 10, generator=g) < 0.7}
    layer = shuffle_mask(mask, "layerwise", torch.Generator().manual_seed(1))
    glob = shuffle_mask(mask, "global", torch.Generator().manual_seed(1))
    assert all(int(layer[n].sum()) == int(mask[n].sum()) and not torch.equal(layer[n], mask[n]) for n in mask)
    assert sum(int(m.sum()) for m in glob.values()) == sum(int(m.sum()) for m in mask.values())
    assert int(glob["a"].sum()) > int(mask["a"].sum()) + 30  # the sparse layer gets its share of the total
    assert torch.equal(shuffle_mask(mask, "global", torch.Generator().manual_seed(1))["b"], glob["b"])  # seeded


def test_random_mask_analysis_trains_the_start_weights_under_a_shuffled_mask(tmp_path, tiny_sets, capsys):
    """sparsedd analyze RUN random-mask: per level the ticket's start weights under its mask shuffled per layer,
    trained as the level was; the result beside the ticket's accuracy, cached (a second call trains nothing)."""
    import json

    from sparsedd.cli import main
    from sparsedd.store import Store

    root = tmp_path / "runs"
    assert main(["run", "--root", str(root), "--no-progress", *[a for s in tiny_sets for a in ("--set", s)]]) == 0
    run_id = Store(root).index.run_ids()[0]
    capsys.readouterr()
    args = ["analyze", run_id, "random-mask", "--set", "masks=2", "--root", str(root), "--format", "json"]
    assert main(args) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["level"] for r in rows] == [1, 2]
    for r in rows:
        assert len(r["random_mask"]) == 2 and 0 <= r["random_mask_test_acc"] <= 1
        assert r["ticket_test_acc"] == r["level_test_acc"]
    before = sorted(p.name for p in (root / "stages").iterdir())
    assert main(args) == 0 and json.loads(capsys.readouterr().out) == rows
    assert sorted(p.name for p in (root / "stages").iterdir()) == before


def test_rewinding_to_the_last_step_with_rest_is_refused_before_anything_is_written(tmp_path, tiny_sets, capsys):
    """With rewind_schedule = rest a level trains from k on: k = the last step would leave none to train."""
    from sparsedd.cli import main

    sets = [*tiny_sets, "retrain.rewind_iteration=24", "retrain.rewind_schedule=rest"]  # 3 epochs of 8 steps
    assert main(["run", "--root", str(tmp_path / "runs"), "--no-progress", *[a for s in sets for a in ("--set", s)]]) == 2
    assert "past the end of dense training" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
