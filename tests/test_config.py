import dataclasses
import json

import pytest

from sparsedd import config as c

from sparsedd import config_load
from sparsedd.errors import SparseddError
from sparsedd.experiments.imp import dense_key, level_key, rewind_key
from sparsedd.store import Store

# Pinned ids: if one of these changes, existing results would be orphaned. Only change a pin with a
# migration (or when a field's meaning really changed), never because a field was renamed.
PINNED_RUNS = {
    "default": "44136fa355b3678a",
    "mnist1d-quick": "4af4bb2e0fbf5343",
    "mnist-conv-quick": "8decdb767e2aee7b",  # was 44beff93f745fdda (width 16, 2,000 digits): the preset changed
    "mnist-vit-quick": "8a0109adf9da8ff0",
    "paper-mnist-lenet": "1b5aa01a77084813",  # was a392b0fc22ccb6ff: the paper's pruning count and inits (docs/parity.md)
    "paper-cifar10-resnet18": "bf78a5042061a347",  # was 560d0ac0b5cb0fc8: the paper's pruning count and inits (docs/parity.md)
    "paper-cifar100-resnet18": "de565456849c6671",  # was 59007d459f2c3d2c: the paper's pruning count and inits (docs/parity.md)
    "paper-cifar10-vgg16": "ab7bdd2830e2558d",  # was 5fe7d059161f6a98: the paper's pruning count and inits (docs/parity.md)
    "paper-tinyimagenet-resnet101": "65a7fe6afbe51fcf",  # was 06a85ea5075f3a05: the paper's pruning count and inits (docs/parity.md)
    "paper-tinyimagenet-resnet101-oneshot": "a91eb06898c1bc17",  # was 3f8bc2d3694581ac: the paper's pruning count and inits (docs/parity.md)
}


def test_pinned_run_hashes():
    assert c.RunConfig().run_id == PINNED_RUNS["default"]
    for name in config_load.presets():
        assert config_load.load(name).run_id == PINNED_RUNS[name], name


def test_pinned_stage_hashes():
    cfg = c.RunConfig()
    assert Store.stage_id(dense_key(cfg)) == "8308f8a331d95e4b"
    assert Store.stage_id(level_key(cfg, "abc", 1)) == "4b2983346d4a7f57"
    assert Store.stage_id(rewind_key("abc", 1000)) == c.stable_hash({"kind": "rewind", "dense": "abc", "iteration": 1000})


def test_canonical_json_omits_defaults_and_sorts():
    cfg = config_load.build({"train.lr": "0.05", "seed": "3"})
    assert c.canonical_json(cfg) == '{"seed":3,"train":{"lr":0.05}}'
    full = c.canonical_dict(cfg, full=True)
    assert full["train"]["epochs"] == 200 and full["data"]["name"] == "mnist1d"
    assert config_load.from_dict(full) == cfg


def test_dense_stage_shared_across_pruning_and_retraining():
    base = config_load.load("mnist1d-quick")
    variants = [config_load.load("mnist1d-quick", sets=s) for s in (["retrain.mode=finetune"], ["prune.method=random"],
                                                          ["prune.scope=layer"], ["prune.levels=5"])]
    for v in variants:
        assert dense_key(v) == dense_key(base)
        assert v.run_id != base.run_id
    assert dense_key(config_load.load("mnist1d-quick", sets=["data.noise=0.33"])) != dense_key(base)
    assert dense_key(base.with_seed(1)) != dense_key(base)


def test_unused_retrain_settings_do_not_split_levels():
    a = config_load.load(sets=["retrain.mode=lr-rewind"])
    b = config_load.load(sets=["retrain.mode=lr-rewind", "retrain.finetune_lr=0.5", "retrain.rewind_iteration=7"])
    assert level_key(a, "p", 1) == level_key(b, "p", 1)
    f1 = config_load.load(sets=["retrain.mode=finetune"])
    f2 = config_load.load(sets=["retrain.mode=finetune", "retrain.finetune_lr=0.5"])
    assert level_key(f1, "p", 1) != level_key(f2, "p", 1)


def test_levels_do_not_enter_level_ids():
    assert level_key(config_load.load(sets=["prune.levels=3"]), "p", 2) == level_key(config_load.load(), "p", 2)


def test_set_parsing_types():
    cfg = config_load.load("paper-mnist-lenet", sets=["train.milestones=80,120", "train.nesterov=true", "train.momentum=0.9",
                                            "model.name=lenet-300-100", "seed=4"], seeds=2)
    assert cfg.train.milestones == (80, 120) and cfg.train.nesterov is True and cfg.seed == 4 and cfg.seeds == 2
    assert cfg.seed_list() == [4, 5]


def test_config_file_between_preset_and_sets(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[train]\nlr = 0.3\nepochs = 7\n')
    cfg = config_load.load("mnist1d-quick", f, ["train.epochs=9"])
    assert (cfg.train.lr, cfg.train.epochs, cfg.data.name) == (0.3, 9, "mnist1d")


@pytest.mark.parametrize("sets, words", [
    (["train.lrr=1"], "unknown config key 'train.lrr'"),
    (["data.noise=1.5"], "data.noise must be in [0, 1]"),
    (["prune.method=magic"], "unknown prune.method 'magic'"),
    (["train.epochs=ten"], "train.epochs must be an integer"),
    (["prune.fraction=1"], "prune.fraction must be in (0, 1)"),
    (["model.name=lenet-300-100", "model.hidden=[10]"], "model.hidden applies to the mlp only"),
    (["noequals"], "--set expects key=value"),
])
def test_bad_values_are_one_line_errors(sets, words):
    with pytest.raises(SparseddError) as e:
        config_load.load(sets=sets)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_bad_preset_and_malformed_toml(tmp_path):
    with pytest.raises(SparseddError, match="unknown preset 'nope'"):
        config_load.load("nope")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nlr = 1")
    with pytest.raises(SparseddError, match="malformed TOML"):
        config_load.load(config_file=bad)
    with pytest.raises(SparseddError, match="not found"):
        config_load.load(config_file=tmp_path / "missing.toml")


def test_configs_are_frozen():
    cfg = c.RunConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3  # type: ignore[misc]


def test_paper_preset_matches_appendix_b():
    cfg = config_load.load("paper-mnist-lenet")
    assert (cfg.data.name, cfg.data.noise, cfg.data.noise_type) == ("mnist", 0.2, "random")
    assert cfg.model.name == "lenet-300-100"
    t = cfg.train
    assert (t.optimizer, t.lr, t.momentum, t.weight_decay, t.schedule, t.batch_size, t.epochs) == \
        ("sgd", 0.1, 0.0, 0.0, "constant", 128, 200)
    p = cfg.prune
    assert (p.method, p.scope, p.fraction, p.levels, p.layers) == ("magnitude", "global", 0.2, 24, "default")
    assert (cfg.retrain.mode, cfg.retrain.rewind_iteration, cfg.seeds) == ("weight-rewind", 0, 5)
    assert (p.count, cfg.model.bias_init, cfg.retrain.finetune_lr) == ("all-masked", "torch", 0.1)  # the paper's code
    json.dumps(c.canonical_dict(cfg, full=True))


@pytest.mark.parametrize("name, data, model, rewind", [
    ("paper-cifar10-resnet18", "cifar10", "resnet18", 1000),
    ("paper-cifar100-resnet18", "cifar100", "resnet18", 1000),
    ("paper-cifar10-vgg16", "cifar10", "vgg16", 2000),
])
def test_cifar_presets_match_appendix_b(name, data, model, rewind):
    cfg = config_load.load(name)
    assert (cfg.data.name, cfg.data.noise, cfg.model.name, cfg.seeds) == (data, 0.2, model, 3)
    t = cfg.train
    assert (t.optimizer, t.lr, t.momentum, t.weight_decay, t.schedule, t.milestones, t.gamma, t.batch_size, t.epochs) \
        == ("sgd", 0.1, 0.9, 1e-4, "multistep", (80, 120), 0.1, 128, 160)
    assert (cfg.prune.method, cfg.prune.scope, cfg.prune.fraction, cfg.prune.levels) == ("magnitude", "global", 0.2, 30)
    assert (cfg.retrain.mode, cfg.retrain.rewind_iteration, cfg.retrain.finetune_lr) == ("weight-rewind", rewind, 0.001)
    # as the paper's code computes (docs/parity.md): its count and sparsity axis, PyTorch's bias init, BN scales U(0, 1)
    assert (cfg.prune.count, cfg.model.bias_init, cfg.model.bn_init) == ("all-masked", "torch", "uniform")
    assert cfg.retrain.rewind_schedule == "rest"  # from the rewind iteration to the end of the schedule


def test_tinyimagenet_preset_matches_appendix_b():
    cfg = config_load.load("paper-tinyimagenet-resnet101")
    t = cfg.train
    assert (cfg.data.name, cfg.model.name) == ("tinyimagenet", "resnet101")
    assert (t.lr, t.momentum, t.batch_size, t.epochs, t.milestones, t.weight_decay) == (0.2, 0.9, 512, 200, (100, 150), 1e-4)
    assert cfg.retrain.rewind_iteration == 1000
    # the paper's code: a 5-epoch warmup (tinyimagenet_resnet's defaults), 32x32 images, its count and inits
    assert (t.warmup_epochs, cfg.data.image_size, cfg.prune.count, cfg.model.bn_init) == (5, 32, "all-masked", "uniform")
