"""`sparsedd bench --preset`: runs on a tiny size (no timing is asserted)."""

import json

import pytest

from sparsedd.cli import main


def bench(capsys, *args):
    assert main(["bench", *args, "--batches", "1", "--warmup", "0", "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_bench_synthetic_image_data(capsys):
    row = bench(capsys, "--preset", "paper-cifar10-vgg16", "--set", "train.batch_size=2", "--channels-last")
    assert row["synthetic_data"] and row["model"] == "vgg16" and row["parameters"] == 14728266
    assert row["steps_per_epoch"] == 25000 and row["train_s_per_step"] > 0 and row["eval_s_per_epoch"] > 0
    assert row["train_s_per_epoch"] == row["train_s_per_step"] * 25000 and row["channels_last"]
    # the ceiling: the bare step on one batch, eager on a CPU (captured as a CUDA graph on a GPU)
    assert row["ceiling"] == "eager" and row["ceiling_s_per_step"] > 0
    assert row["ceiling_s_per_epoch"] == row["ceiling_s_per_step"] * 25000
    assert row["train_over_ceiling"] == row["train_s_per_step"] / row["ceiling_s_per_step"]


def test_the_ceiling_trains_the_bare_step():
    import torch

    from sparsedd.bench.preset import ceiling_step_s
    from sparsedd.config import ModelConfig, TrainConfig
    from sparsedd.models import build_model
    from sparsedd.training.core import Accel

    model = build_model(ModelConfig("mlp", (8,)), (6,), 3, seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 6, generator=g), torch.randint(0, 3, (4,), generator=g)
    seconds, how = ceiling_step_s(model, x, y, TrainConfig(lr=0.1), Accel(), steps=3, warmup=1)
    assert seconds > 0 and how == "eager"
    ref = build_model(ModelConfig("mlp", (8,)), (6,), 3, seed=0)  # 4 plain SGD steps on the same batch
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for _ in range(4):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ref(x), y).backward()
        opt.step()
    for n, p in model.named_parameters():
        assert torch.allclose(p, dict(ref.named_parameters())[n], atol=1e-6) and not torch.equal(p, before[n])


def test_bench_real_data_when_present(capsys, tmp_path):
    row = bench(capsys, "--preset", "mnist1d-quick", "--set", "data.num_train=600", "--set", "data.num_test=100",
                "--set", "train.precision=bf16", "--out", str(tmp_path / "row.json"))
    assert not row["synthetic_data"] and row["steps_per_epoch"] == 5 and row["precision"] == "bf16"
    assert json.loads((tmp_path / "row.json").read_text()) == row  # (found by review: --out was ignored here)


def test_bench_side_by_side_columns_and_the_capture_option(capsys):
    assert main(["bench", "--preset", "paper-cifar10-vgg16", "--set", "train.batch_size=2", "--set", "model.width=2",
                 "--batches", "3", "--warmup", "4", "--ks", "2,3", "--capture", "on", "--format", "json"]) == 0
    captured = capsys.readouterr()
    row = json.loads(captured.out)
    assert row["capture"] == "on" and "capture needs a CUDA device; training eagerly" in captured.err
    for k in (1, 2, 3):
        assert row[f"k{k}_s_per_model_epoch"] > 0


def test_bench_bad_input(capsys):
    assert main(["bench", "--preset", "nope"]) == 2
    assert "unknown preset" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["bench", "--preset", "mnist1d-quick", "--batches", "0"])
    assert e.value.code == 2
    capsys.readouterr()
    assert main(["bench", "--preset", "mnist1d-quick", "--quick"]) == 2  # (found by audit: ignored)
    assert "--rounds, --steps and --quick apply to the reference benchmark" in capsys.readouterr().err
    assert main(["bench", "--preset", "mnist1d-quick", "--ks", "0"]) == 2
    capsys.readouterr()
    assert main(["bench", "--preset", "mnist1d-quick", "--ks", "all"]) == 2  # not a list of counts
    assert "--ks takes a comma-separated list of integers, got 'all'" in capsys.readouterr().err
    assert main(["bench", "--preset", "mnist1d-quick", "--capture", "on", "--warmup", "2"]) == 2
    assert "--capture on needs --warmup 4 or more" in capsys.readouterr().err
    assert main(["bench", "--ks", "2"]) == 2  # the reference benchmark has no side-by-side column
    assert "--ks, --batches and --warmup apply to `bench --preset NAME` only" in capsys.readouterr().err
