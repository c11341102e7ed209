"""Issue 26.1: a researcher's own model (``model.name = "package.module:function"``) and data (a .npz or .pt
file, or an image folder, named by its path in ``data.name``) run as the built-in ones do: label noise,
stages, resume, checksums and the data fingerprint; a stage id follows the builder's source; bad paths and
builders are one line and exit code 2."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
import torch

import sparsedd
from sparsedd import config_load
from sparsedd.cli import main
from sparsedd.config import DataConfig, ModelConfig
from sparsedd.data import load_dataset
from sparsedd.errors import SparseddError
from sparsedd.models import build_model
from sparsedd.store import Store

NETS = """
import math
from torch import nn

def build(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), {width}), nn.ReLU(),
                         nn.Linear({width}, num_classes))

def not_a_module(input_shape, num_classes):
    return 3

def broken(input_shape, num_classes):
    raise ValueError("no such layer")
"""
SMALL = ["model.hidden=[]", "data.num_train=200", "data.num_test=100", "train.epochs=1", "train.batch_size=50",
         "prune.levels=2"]


@pytest.fixture
def nets(tmp_path, monkeypatch):
    """A module ``usernets_<test>`` in a folder on the path; ``write(width)`` rewrites its source."""
    name = f"usernets_{abs(hash(str(tmp_path))) % 10**8}"
    path = tmp_path / f"{name}.py"

    def write(width: int = 24) -> str:
        path.write_text(textwrap.dedent(NETS.format(width=width)))
        sys.modules.pop(name, None)
        return name

    monkeypatch.syspath_prepend(str(tmp_path))
    write()
    yield name, write
    sys.modules.pop(name, None)


def _sets(items: list[str]) -> list[str]:
    return [a for s in items for a in ("--set", s)]


def test_a_users_builder_runs_end_to_end_and_its_source_is_in_the_stage_ids(nets, tmp_path):
    name, write = nets
    root = tmp_path / "runs"
    args = ["run", "--root", str(root), "--no-progress", *_sets([f"model.name={name}:build", *SMALL])]
    assert main(args) == 0
    store = Store(root)
    run_id = store.index.run_ids()[0]
    first = store.index.run_stages(run_id)
    final = store.final(first[(0, 2)])
    assert final["model"]["1.weight"].shape == (24, 40)  # the user's layers, pruned
    assert set(final["mask"]) == {"1.weight", "3.weight"}  # every linear weight, by default
    assert store.done_info(first[(0, 2)])["metrics"]["sparsity"] == pytest.approx(1 - 0.75 ** 2, abs=0.01)
    assert main(args) == 0 and store.index.run_stages(run_id) == first  # done: nothing computed again
    write(width=24 + 1)  # the builder changed: new stages
    assert main(args) == 0
    assert store.index.run_stages(run_id)[(0, 0)] != first[(0, 0)]


def test_a_users_builder_is_seeded_and_leaves_the_global_rng_alone(nets):
    name, _ = nets
    cfg = ModelConfig(f"{name}:build")
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b, c = (build_model(cfg, (40,), 10, seed=s) for s in (0, 0, 1))
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(a[1].weight, b[1].weight) and not torch.equal(a[1].weight, c[1].weight)
    assert a.prunable_names("hidden") == ["1.weight"] and a.prunable_names("conv") == []


@pytest.mark.parametrize("function, message", [
    ("nowhere_module_xyz:build", "cannot import nowhere_module_xyz (ModuleNotFoundError"),
    ("{name}:missing", "has no function missing"),
    ("{name}:not_a_module", "returned int, not a torch.nn.Module"),
    ("{name}:broken", "failed for inputs [40] and 10 classes (ValueError: no such layer)"),
])
def test_a_bad_builder_is_one_line_and_writes_nothing(nets, tmp_path, capsys, function, message):
    name, _ = nets
    root = tmp_path / "runs"
    assert main(["run", "--root", str(root), "--no-progress", *_sets([f"model.name={function.format(name=name)}",
                                                                      *SMALL])]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    assert not root.exists()


def _blobs(n: int, features: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, features)).astype(np.float32)
    return x, ((x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0))


def test_a_data_file_runs_with_label_noise_and_its_content_is_fingerprinted(tmp_path):
    x, y = _blobs(400)
    path = tmp_path / "blobs.npz"
    np.savez(path, x_train=x[:300], y_train=y[:300], x_test=x[300:], y_test=y[300:])
    root = tmp_path / "runs"
    overrides = {"data.num_train": 0, "data.num_test": 0, "model.hidden": [16], "train.epochs": 1, "prune.levels": 1,
                 "data.noise": 0.4, "data.noise_type": "symmetric"}
    res = sparsedd.run(data=str(path), overrides=overrides, root=root, progress=False)
    dense = res.levels[res.levels["level"] == 0].iloc[0]
    assert dense["effective_noise"] == pytest.approx(0.4, abs=0.01)  # 40% of 300 labels flipped
    np.savez(path, x_train=x[:300] + 1, y_train=y[:300], x_test=x[300:], y_test=y[300:])  # the same path, other data
    with pytest.raises(SparseddError, match="data loaded now differ from those the results in"):
        sparsedd.run(data=str(path), overrides=overrides, root=root, progress=False)


def test_a_pt_file_and_an_image_folder_load_as_tensors(tmp_path):
    from PIL import Image

    x, y = _blobs(50, features=6)
    torch.save({"x_train": torch.from_numpy(x[:40]), "y_train": torch.from_numpy(y[:40]),
                "x_test": torch.from_numpy(x[40:]), "y_test": torch.from_numpy(y[40:])}, tmp_path / "b.pt")
    d = load_dataset(DataConfig(name=str(tmp_path / "b.pt")))
    assert d.x_train.shape == (40, 6) and d.num_classes == 3 and torch.equal(d.y_test, torch.from_numpy(y[40:]))
    root = tmp_path / "shapes"
    for split, n in (("train", 3), ("test", 2)):
        for cls, value in (("dark", 10), ("light", 240)):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((8, 8), value + i, dtype=np.uint8)).save(root / split / cls / f"{i}.png")
    d = load_dataset(DataConfig(name=str(root)))
    assert d.x_train.shape == (6, 1, 8, 8) and d.y_train.tolist() == [0, 0, 0, 1, 1, 1] and d.num_classes == 2
    assert d.x_test[0].max().item() == pytest.approx(10 / 255)
    cfg = config_load.load(sets=[f"data.name={root}", "data.num_train=0", "data.num_test=0", "data.augment=crop-flip"])
    assert cfg.data.augment == "crop-flip"  # images: the standard augmentation applies


@pytest.mark.parametrize("arrays, message", [
    ({"x_train": np.zeros((4, 3)), "y_train": np.zeros(4, dtype=np.int64)}, "must hold x_train, y_train, x_test, y_test"),
    ({"x_train": np.zeros((4, 3)), "y_train": np.zeros(5, dtype=np.int64), "x_test": np.zeros((2, 3)),
      "y_test": np.zeros(2, dtype=np.int64)}, "must be [N, ...] and [N]"),
    ({"x_train": np.zeros((4, 3)), "y_train": np.full(4, -1), "x_test": np.zeros((2, 3)),
      "y_test": np.zeros(2, dtype=np.int64)}, "labels must be integers from 0"),
])
def test_a_bad_data_file_is_one_line_and_writes_nothing(tmp_path, capsys, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    root = tmp_path / "runs"
    args = ["run", "--root", str(root), "--no-progress", *_sets([f"data.name={path}", "data.num_train=0",
                                                                 "data.num_test=0", "train.epochs=1"])]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not root.exists()


def test_a_missing_path_and_too_many_examples_are_one_line(tmp_path):
    with pytest.raises(SparseddError, match="names a path that does not exist"):
        config_load.load(sets=[f"data.name={tmp_path}/none.npz"])
    x, y = _blobs(10)
    np.savez(tmp_path / "small.npz", x_train=x[:6], y_train=y[:6], x_test=x[6:], y_test=y[6:])
    with pytest.raises(SparseddError, match="data.num_train = 8000 but .* has only 6; ask for at most 6"):
        config_load.load(sets=[f"data.name={tmp_path}/small.npz"])  # the demo preset asks for 8000
