"""Issue 25: a pruning method is a record (its mask function, the inputs it needs, the settings it owns,
the tensors it chooses, its check of the model); the pipeline and stage ids read the record, never a
method's name. And the config: its types build without torch, and a config built in Python is checked
against the registries before anything is written."""

import dataclasses
import subprocess
import sys

import pytest
import torch

from sparsedd import config_load
from sparsedd.config import DataConfig, ModelConfig, PruneConfig, RetrainConfig, RunConfig, canonical_dict
from sparsedd.errors import SparseddError
from sparsedd.experiments import ExecOptions, run
from sparsedd.experiments.replicate import PRUNING_INPUTS
from sparsedd.experiments.stages import level_key, round_key
from sparsedd.pruning import PRUNING_METHODS, PruningMethod, magnitude
from sparsedd.store import Store

TINY = ["data.num_train=120", "data.num_test=60", "model.hidden=[12]", "train.epochs=1", "train.batch_size=40",
        "prune.levels=2", "prune.fraction=0.2", "prune.method=toy"]


@pytest.fixture
def toy_method():
    """A method that prunes by magnitude plus a score it needs from a provider of its own (registered here:
    the extension point a method with new needs uses), recording what it was given."""
    given = []

    def toy_scores(rep, level, model, mask):
        return {n: torch.full(m.shape, float(level)) for n, m in mask.items()}

    def toy(weights, mask, *, fraction, scope, count, toy_scores, **rest):
        given.append((fraction, sorted(rest), sorted(toy_scores)))
        return magnitude(weights, mask, fraction=fraction, scope=scope, count=count)

    PRUNING_INPUTS.register("toy_scores", toy_scores)
    PRUNING_METHODS.register("toy", PruningMethod(toy, needs=("toy_scores",), summary="a test's"))
    try:
        yield given
    finally:
        PRUNING_METHODS.unregister("toy")
        PRUNING_INPUTS.unregister("toy_scores")


def test_toy_method_with_its_own_input_runs_end_to_end(toy_method, tmp_path):
    cfg = config_load.load(sets=TINY)
    store = Store(tmp_path / "runs")
    run_id = run(cfg, store, options=ExecOptions(progress=False, batch="off", sparse="off"))
    assert [f for f, _, _ in toy_method] == [0.2, 0.2]  # one round per level
    assert all(rest == [] for _, rest, _ in toy_method)  # only what it needs: no generator, no saliency
    assert toy_method[0][2] == ["layers.0.weight"]  # the hidden layer; the output layer is kept
    stages = store.index.run_stages(run_id)
    sparsity = [store.done_info(sid)["metrics"]["sparsity"] for sid in stages.values()]
    assert sparsity == pytest.approx([0.0, 0.2, 0.36], abs=0.01)


def test_stage_keys_hold_the_settings_the_method_owns_and_no_other(toy_method):
    grad = config_load.load(sets=["prune.method=gradient", "prune.gradient_batches=3"])
    assert round_key(grad.prune)["gradient_batches"] == 3
    toy = dataclasses.replace(grad, prune=dataclasses.replace(grad.prune, method="toy"))
    assert "gradient_batches" not in round_key(toy.prune)  # gradient's setting: not in the toy's stage ids
    assert level_key(toy, "0" * 16, 2)["prune"] == {"method": "toy", "fraction": 0.25}


def test_the_configs_method_fields_are_the_records_owned_settings():
    """Run ids leave a method's own settings out while another method runs (config.py reads the fields'
    metadata, being free of the registries); the records say the same."""
    marked: dict[str, set[str]] = {}
    for f in dataclasses.fields(PruneConfig):
        if "method" in f.metadata:
            marked.setdefault(f.metadata["method"], set()).add(f.name)
    for name in PRUNING_METHODS.names():
        assert set(PRUNING_METHODS[name].owns) == marked.get(name, set()), name


def test_a_method_choosing_its_tensors_refuses_prune_layers_and_checks_the_model(toy_method):
    PRUNING_METHODS.register("toy-own", PruningMethod(magnitude, tensors=lambda m: ["layers.0.weight"],
                                                      check=lambda model, name: None, summary="its first layer"))
    try:
        with pytest.raises(SparseddError, match="prune.layers does not apply to prune.method = 'toy-own'"):
            config_load.load(sets=["prune.method=toy-own", "prune.layers=all"])
        assert config_load.load(sets=["prune.method=toy-own"]).prune.method == "toy-own"
    finally:
        PRUNING_METHODS.unregister("toy-own")


def test_building_a_config_imports_no_torch():
    code = ("import sys; from sparsedd.config import RunConfig, DataConfig, canonical_json; "
            "c = RunConfig(data=DataConfig(noise=0.4)); canonical_json(c); c.run_id; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("bad, message", [
    ({"prune": PruneConfig(method="magic")}, "unknown prune.method 'magic'; choose one of magnitude"),
    ({"data": DataConfig(name="mnist2")}, "unknown data.name 'mnist2'"),
    ({"data": DataConfig(noise_type="cifar10n-worst")}, "it needs data.name = 'cifar10'"),
    ({"model": ModelConfig(name="resnet9")}, "unknown model.name 'resnet9'"),
    ({"retrain": RetrainConfig(mode="rewind")}, "unknown retrain.mode 'rewind'"),
    ({"prune": PruneConfig(method="slimming")}, "model 'mlp' has none"),
])
def test_a_config_built_in_python_is_checked_before_anything_is_written(bad, message, tmp_path):
    cfg = RunConfig(**bad)  # its fields' ranges are checked here; its names when a run starts
    root = tmp_path / "runs"
    with pytest.raises(SparseddError, match=message):
        run(cfg, Store(root), options=ExecOptions(progress=False))
    assert not root.exists() or not any(root.iterdir())
    with pytest.raises(SparseddError, match=message):  # and a config read from a file or --set, when it is made
        config_load.from_dict(canonical_dict(cfg))
