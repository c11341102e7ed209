"""A config checked against the registries: the names it gives (data set, noise type, model, pruning
method, retraining mode) and what the chosen pruning method asks of the model.

:mod:`sparsedd.config` checks each field's range and stays free of torch; the registries live with the
code they name (and import torch), so they are imported here, inside the checks, which
:mod:`sparsedd.config_load` runs on every config it makes and every run entry point runs on a config
built in Python, before anything is written.
"""

from __future__ import annotations

from .config import DataConfig, ModelConfig, RunConfig, choice
from .errors import SparseddError


def check(cfg: RunConfig) -> RunConfig:
    """``cfg`` if every name it gives is registered and its pruning method can prune its model; else a
    one-line error."""
    from .experiments.retrain import RETRAIN_MODES

    check_data(cfg.data)
    check_model(cfg.model)
    check_pruning(cfg)
    choice("retrain", "mode", cfg.retrain.mode, RETRAIN_MODES.names())
    return cfg


def check_data(data: DataConfig) -> None:
    from .data import DATASETS, spec_of
    from .data.files import is_data_path
    from .data.noise import NOISE_TYPES, asymmetric_known

    if data.name not in DATASETS and is_data_path(data.name):
        spec = spec_of(data.name)  # the file or folder exists and holds a data set; its sizes are known
        for key, have in (("num_train", spec.num_train), ("num_test", spec.num_test)):
            if getattr(data, key) > have:
                raise SparseddError(f"data.{key} = {getattr(data, key)} but {data.name} has only {have}; ask for "
                                    f"at most {have} (0: all)")
    else:
        choice("data", "name", data.name, DATASETS.names())
    choice("data", "noise_type", data.noise_type, NOISE_TYPES.names())
    if data.noise_type == "asymmetric" and data.noise > 0:
        asymmetric_known(data.name)
    check_human_noise(data)


def check_model(model: ModelConfig) -> None:
    """The model is registered, and given only the settings it takes (widths for the mlp, channels for
    the conv nets)."""
    from .models import MODELS, is_user_model
    from .models.imported import load_builder

    if is_user_model(model.name):
        load_builder(model.name)  # importable, and a function
    else:
        choice("model", "name", model.name, MODELS.names())
    if model.hidden and model.name != "mlp":
        raise SparseddError(f"model.hidden applies to the mlp only, not {model.name!r}")
    if model.width and model.name in ("mlp", "lenet-300-100"):
        raise SparseddError(f"model.width applies to the conv nets only, not {model.name!r}; use model.hidden")


def check_human_noise(data: DataConfig) -> None:
    """The human noise types (CIFAR-N) are the labels of one data set's images, at no rate and no seed."""
    from .data.noise import HUMAN_NOISE

    if data.noise_type not in HUMAN_NOISE:
        return
    source = HUMAN_NOISE[data.noise_type][0]
    if data.name != source:
        raise SparseddError(f"data.noise_type = {data.noise_type!r} holds human labels of {source}'s "
                            f"training images; it needs data.name = {source!r}, got {data.name!r}")
    # they would split stage ids without changing a label, so they must stay unset (at their defaults)
    for key in ("noise", "noise_seed"):
        default = DataConfig.__dataclass_fields__[key].default
        if getattr(data, key) != default:
            raise SparseddError(f"data.{key} does not apply to data.noise_type = {data.noise_type!r} (the "
                                f"annotators chose the noisy labels); leave it unset (its default, {default})")


def check_pruning(cfg: RunConfig) -> None:
    """The method is registered; prune.layers applies unless it chooses its own tensors; its own check of
    the model (built on the meta device: no memory, no init), a one-line error now rather than after the
    dense network trained."""
    import torch

    from .data import spec_of
    from .models import builder_of
    from .pruning import PRUNING_METHODS

    name = cfg.prune.method
    choice("prune", "method", name, PRUNING_METHODS.names())
    method = PRUNING_METHODS[name]
    if method.tensors is not None and cfg.prune.layers != "default":
        raise SparseddError(f"prune.layers does not apply to prune.method = {name!r}, which chooses the tensors it "
                            f"masks ({method.summary}); leave prune.layers at default")
    if method.check is not None:
        spec = spec_of(cfg.data.name)
        with torch.device("meta"):
            model = builder_of(cfg.model.name)(cfg.model, spec.input_shape(cfg.data.image_size), spec.classes)
        method.check(model, cfg.model.name)
