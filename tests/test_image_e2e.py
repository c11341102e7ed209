"""A tiny iterative pruning run of each image model family, on data written in the real on-disk formats."""

import json

import pytest
import torch

import sparsedd.data.cifar as cifar
import sparsedd.data.tinyimagenet as tin
from sparsedd.cli import main
from test_image_data import fake_cifar, tiny_imagenet_files, write_archive, write_tiny_zip

COMMON = ["train.epochs=1", "train.batch_size=8", "prune.levels=2", "retrain.rewind_iteration=1", "seeds=1"]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEDD_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SPARSEDD_DATA", raising=False)
    monkeypatch.setattr(cifar, "URLS", {k: ["http://127.0.0.1:9/"] for k in cifar.URLS})
    monkeypatch.setattr(cifar, "MD5", dict(cifar.MD5))
    monkeypatch.setattr(tin, "URLS", ["http://127.0.0.1:9/"])
    monkeypatch.setattr(tin, "MD5", dict(tin.MD5))


def run_pipeline(tmp_path, data_dir, preset, sets):
    root = tmp_path / "runs"
    args = ["run", "--preset", preset, "--root", str(root), "--data-dir", str(data_dir), "--no-progress"]
    assert main(args + [a for s in COMMON + sets for a in ("--set", s)]) == 0
    rows = []
    for stage in (root / "stages").iterdir():
        if (stage / "done.json").exists() and json.loads((stage / "stage.json").read_text())["kind"] in ("dense", "level"):
            rows.append((json.loads((stage / "done.json").read_text())["metrics"],
                         torch.load(stage / "final.pt", weights_only=True)))
    return sorted(rows, key=lambda r: r[0]["level"])


@pytest.mark.parametrize("preset, data, prunable", [
    ("paper-cifar10-resnet18", "cifar10", 21),  # 20 convs (incl. 3 shortcuts) + the linear layer
    ("paper-cifar10-vgg16", "cifar10", 13),  # the 13 convs only
    ("paper-cifar100-resnet18", "cifar100", 21),
])
def test_cifar_models_end_to_end(tmp_path, preset, data, prunable):
    classes = 10 if data == "cifar10" else 100
    write_archive(tmp_path / "data" / data, classes, fake_cifar(classes, per_batch=4, n_test=6))
    levels = run_pipeline(tmp_path, tmp_path / "data", preset, ["data.noise_type=asymmetric", "data.noise=0.5"])
    assert [m["level"] for m, _ in levels] == [0, 1, 2]
    for metrics, final in levels:
        assert len(final["mask"]) == prunable and not any("bn" in n or "bias" in n for n in final["mask"])
        assert metrics["sparsity"] == pytest.approx(1 - 0.8 ** metrics["level"], abs=0.01)
        for n, m in final["mask"].items():
            assert torch.all(final["model"][n][~m] == 0)


def test_tinyimagenet_resnet101_end_to_end(tmp_path):
    pytest.importorskip("PIL")
    write_tiny_zip(tmp_path / "data" / "tinyimagenet", tiny_imagenet_files())
    levels = run_pipeline(tmp_path, tmp_path / "data", "paper-tinyimagenet-resnet101",
                          ["data.image_size=32", "data.noise_type=pairflip", "train.batch_size=4", "train.warmup_epochs=1",
                           "model.width=8"])  # the full depth (every bottleneck block), an eighth of the channels
    assert [m["level"] for m, _ in levels] == [0, 1, 2]
    assert levels[2][0]["sparsity"] == pytest.approx(0.36, abs=0.01)
