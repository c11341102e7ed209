"""Registries of names: a pruning method and a data set added by one registration each are accepted by
the configuration and run end to end; unknown names are one-line errors that list the choices."""

import pytest
import torch

from sparsedd import config_load
from sparsedd.analysis.base import parse_settings
from sparsedd.analysis.kinds import ANALYSES
from sparsedd.analysis.kinds.interpolate import InterpolateSettings
from sparsedd.data import DATASETS, DatasetSpec, load_dataset
from sparsedd.errors import SparseddError
from sparsedd.experiments import ExecOptions, run
from sparsedd.pruning import PRUNING_METHODS, PruningMethod, get_strategy, magnitude
from sparsedd.registry import Registry
from sparsedd.store import Store

TOY_SETS = ["data.name=toy", "data.num_train=90", "data.num_test=30", "prune.method=toy", "model.hidden=[16]",
            "train.epochs=2", "train.batch_size=30", "prune.levels=2", "prune.fraction=0.2"]


def load_toy(cfg, *, data_dir, cache_dir):
    """Three classes of 8-feature points: how many of the first two features are positive."""
    n_train, n_test = cfg.num_train or 90, cfg.num_test or 30
    x = torch.randn(n_train + n_test, 8, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return {"x_train": x[:n_train], "y_train": y[:n_train], "x_test": x[n_train:], "y_test": y[n_train:]}


@pytest.fixture
def toy():
    """A toy data set and a toy pruning method (magnitude, counting its calls), registered for one test."""
    calls = []

    def toy_prune(weights, mask, *, fraction, scope, **_):
        calls.append(fraction)
        return magnitude(weights, mask, fraction=fraction, scope=scope)

    DATASETS.register("toy", DatasetSpec(load_toy, shape=(8,), classes=3, num_train=90, num_test=30))
    PRUNING_METHODS.register("toy", PruningMethod(toy_prune))
    try:
        yield calls
    finally:
        DATASETS.unregister("toy")
        PRUNING_METHODS.unregister("toy")


def one_line_error(fn, *args, **kw) -> str:
    with pytest.raises(SparseddError) as e:
        fn(*args, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_registry_lookup_decorator_and_unknown_name():
    colours: Registry[int] = Registry("colour")
    colours.register("red", 1)

    @colours.register("green")
    def green():
        return 2

    assert colours["red"] == 1 and colours["green"] is green and green() == 2
    assert colours.names() == ("red", "green") and "red" in colours and "blue" not in colours
    assert one_line_error(colours.__getitem__, "blue") == "unknown colour 'blue'; choose one of red, green"
    with pytest.raises(ValueError, match="already registered"):
        colours.register("red", 3)
    colours.unregister("red")
    assert colours.names() == ("green",)


def test_registered_toy_data_set_and_pruning_method_run_end_to_end(toy, tmp_path):
    cfg = config_load.load(sets=TOY_SETS)
    assert (cfg.data.name, cfg.prune.method) == ("toy", "toy")
    d = load_dataset(cfg.data)
    assert d.x_train.shape == (90, 8) and d.num_classes == 3 and d.augment == "none"
    assert get_strategy("toy") is PRUNING_METHODS["toy"].select
    store = Store(tmp_path / "runs")
    run_id = run(cfg, store, options=ExecOptions(progress=False, batch="off", sparse="off"))
    assert toy == [0.2, 0.2]  # one pruning round per level, through the registry
    sparsity = [store.done_info(sid)["metrics"]["sparsity"] for sid in store.index.run_stages(run_id).values()]
    assert sparsity == pytest.approx([0.0, 0.2, 0.36], abs=0.01)


def test_unknown_names_list_the_registered_choices(toy):
    assert "choose one of magnitude, random, max-magnitude, gradient, slimming, toy" in one_line_error(config_load.load, sets=["prune.method=magic"])
    assert "mnist1d, cifar10, cifar100, tinyimagenet, toy" in one_line_error(config_load.load, sets=["data.name=nope"])
    assert "lenet-300-100, mlp, resnet18, vgg16, resnet101" in one_line_error(config_load.load, sets=["model.name=nope"])
    assert "finetune, lr-rewind, weight-rewind, reinit" in one_line_error(config_load.load, sets=["retrain.mode=nope"])
    assert "random, symmetric, asymmetric, pairflip" in one_line_error(config_load.load, sets=["data.noise_type=nope"])
    assert "unknown pruning method 'magic'; choose one of" in one_line_error(get_strategy, "magic")


def test_analysis_settings_check_themselves():
    assert "distance" in ANALYSES and "phases" in ANALYSES
    assert parse_settings("phases", ["tol=0.05"]).tol == 0.05
    assert "valid: reference" in one_line_error(parse_settings, "distance", ["tol=0.05"])
    assert "target must be" in one_line_error(InterpolateSettings, target="init")
    assert "choose one of redense, interpolate" in one_line_error(parse_settings, "bogus", [])


def test_registered_retraining_mode_and_analysis_run_end_to_end(tmp_path):
    """A retraining mode (its start and schedule) and an analysis (settings, one function and its figure),
    each added by one registration, drive the pipeline, `sparsedd.analyze`, its help and the report."""
    import dataclasses

    import sparsedd
    from sparsedd.analysis.kinds import Analysis
    from sparsedd.experiments.retrain import RETRAIN_MODES, RetrainMode

    @dataclasses.dataclass(frozen=True)
    class NormSettings:
        p: float = 2.0

        def __post_init__(self):
            if self.p <= 0:
                raise SparseddError("norm: p must be > 0")

    def weight_norm(analyzer, seed, level, sid, s):
        w = analyzer.store.final(sid)["model"]
        return analyzer.cached("norm", sid, s, lambda: {"norm": float(torch.cat([v.flatten() for v in w.values()]).norm(s.p))})

    def half_lr(cfg):
        return dataclasses.replace(cfg.train, lr=cfg.train.lr / 2)

    def norm_figure(rows, title):
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots()
        ax.plot(rows["sparsity"], rows["norm"])
        ax.set_title(title)
        return fig

    RETRAIN_MODES.register("half-lr", RetrainMode("fresh", half_lr))
    ANALYSES.register("norm", Analysis(NormSettings, weight_norm, figure=norm_figure, summary="the weights' p-norm"))
    try:
        sets = {"data.num_train": 120, "data.num_test": 60, "model.hidden": [16], "train.epochs": 2,
                "train.batch_size": 30, "prune.levels": 1, "retrain.mode": "half-lr"}
        res = sparsedd.run("mnist1d-quick", overrides=sets, root=tmp_path, device="cpu", sparse="off")
        assert res.epochs[res.epochs["level"] == 1]["lr"].iloc[0] == pytest.approx(res.epochs["lr"].iloc[0] / 2)
        table = sparsedd.analyze(res.run_id, "norm", root=tmp_path, settings={"p": 1})
        assert table["level"].tolist() == [0, 1] and (table["norm"] > 0).all()
        assert "norm: p must be > 0" in one_line_error(sparsedd.analyze, res.run_id, "norm", root=tmp_path,
                                                       settings={"p": 0})
        # the command line's help and the report read the registry too (issue 25)
        from sparsedd.cli import build_parser
        from sparsedd.report.html import write_report

        help_text = build_parser()._subparsers._group_actions[0].choices["analyze"].format_help()
        assert "norm: the weights' p-norm" in " ".join(help_text.split())
        write_report(tmp_path, [res.run_id], tmp_path / "report")
        assert (tmp_path / "report" / "figures" / f"{res.run_id}-norm.png").exists()
    finally:
        RETRAIN_MODES.unregister("half-lr")
        ANALYSES.unregister("norm")


def test_registered_model_and_noise_type_run_end_to_end(tmp_path):
    """A model (a builder) and a noise type (a function of the labels and its generator), each added by one
    registration, are accepted by the configuration and drive a run: the model's weights are the ones
    trained, the noise type's labels the ones trained on."""
    from sparsedd.data.noise import NOISE_TYPES
    from sparsedd.models import MODELS
    from sparsedd.models.mlp import MLP

    built, flipped = [], []

    def narrow(cfg, input_shape, num_classes):
        built.append(input_shape)
        return MLP(input_shape[-1], (6,), num_classes)

    def first_to_zero(y, num_classes, rate, g, **_):
        chosen = torch.arange(round(rate * y.numel()))
        y[chosen] = 0
        flipped.append(chosen.numel())
        return chosen

    MODELS.register("narrow", narrow)
    NOISE_TYPES.register("first-to-zero", first_to_zero)
    try:
        cfg = config_load.load(sets=["model.name=narrow", "model.hidden=[]", "data.noise_type=first-to-zero", "data.noise=0.5",
                                     "data.num_train=100", "data.num_test=50", "train.epochs=1", "prune.levels=1"])
        store = Store(tmp_path / "runs")
        run_id = run(cfg, store, options=ExecOptions(progress=False, batch="off", sparse="off"))
    finally:
        MODELS.unregister("narrow")
        NOISE_TYPES.unregister("first-to-zero")
    assert built and all(shape == (40,) for shape in built) and flipped == [50]
    dense = store.index.run_stages(run_id)[(0, 0)]
    assert store.final(dense)["model"]["layers.0.weight"].shape == (6, 40)
    assert store.done_info(dense)["metrics"]["effective_noise"] > 0.3  # half relabelled 0; a tenth were 0 already
