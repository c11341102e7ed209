"""Issue 26: `sparsedd export` writes a level as a safetensors file (two layouts, with its provenance) that loads
back into the run's model and into a plain torch model, and logs a run to MLflow or W&B once."""

from __future__ import annotations

import errno
import json
import math
import sys

import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch.nn.utils import prune

import sparsedd
from sparsedd.cli import main
from sparsedd.config_load import from_dict
from sparsedd.data import load_dataset
from sparsedd.export import load_model, read_export
from sparsedd.store import Store
from sparsedd.store.files import checksum_of
from sparsedd.trackers import level_steps
from sparsedd.training.core import predict

OVERRIDES = {"data.num_train": 240, "data.num_test": 120, "model.hidden": [32, 32], "train.epochs": 3,
             "train.batch_size": 32, "train.eval_every": 1, "prune.levels": 2, "prune.fraction": 0.2, "data.noise": 0.2}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished two-seed run of the default preset at tiny sizes: (root, results)."""
    root = tmp_path_factory.mktemp("export") / "runs"
    return root, sparsedd.run("mnist1d-quick", overrides=OVERRIDES, seeds=2, root=root, device="cpu")


def accuracy(model: torch.nn.Module, data, forward=None) -> float:
    logits = predict(model, data.x_test) if forward is None else forward(model, data.x_test)
    return float((logits.argmax(1) == data.y_test).float().mean())


def plain_mlp(widths: list[int]) -> torch.nn.Module:
    """The run's MLP written with torch alone: the same module names (layers.0, layers.1, ...)."""
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
    return model


def plain_forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        for layer in model.layers[:-1]:
            x = torch.relu(layer(x))
        return model.layers[-1](x)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("sparsedd: error: ") and "\n" not in err, err
    return err


def test_every_level_loads_back_with_its_stored_test_accuracy(tiny_run, tmp_path, capsys):
    root, res = tiny_run
    store = Store(root)
    links = store.index.run_stages(res.run_id)
    data = load_dataset(from_dict(store.run_config(res.run_id)).data)
    for (seed, level), sid in links.items():
        stored = res.levels.query("seed == @seed and level == @level")["test_acc"].item()
        paths = {}
        for layout in ("plain", "torch-prune"):
            paths[layout] = tmp_path / f"s{seed}-l{level}-{layout}.safetensors"
            assert main(["export", res.run_id[:6], "--root", str(root), "--level", str(level), "--seed", str(seed),
                         "--out", str(paths[layout]), "--layout", layout]) == 0
            assert capsys.readouterr().out.strip() == str(paths[layout])
            model, exp = load_model(paths[layout])  # sparsedd.models.build_model, the weights loaded
            assert accuracy(model, data) == stored
        final = store.final(sid)
        plain, pruned = read_export(paths["plain"]), read_export(paths["torch-prune"])
        for exp in (plain, pruned):  # both layouts give back the stored weights and masks, bit for bit
            assert exp.model.keys() == final["model"].keys() and exp.mask.keys() == final["mask"].keys()
            assert all(torch.equal(exp.model[n], t) for n, t in final["model"].items())
            assert all(torch.equal(exp.mask[n], m) for n, m in final["mask"].items())
        assert set(load_file(paths["plain"])) == {f"model/{n}" for n in final["model"]} | {f"mask/{n}" for n in final["mask"]}
        # a plain torch model, pruned with torch.nn.utils.prune on the same modules, loads the torch-prune file
        torch_model = plain_mlp([40, 32, 32, 10])
        for name in pruned.record["masks"]:
            module, _, param = name.rpartition(".")
            prune.identity(torch_model.get_submodule(module), param)
        torch_model.load_state_dict(load_file(paths["torch-prune"]))  # strict: every name matches
        assert accuracy(torch_model, data, plain_forward) == stored
        assert torch.equal(torch_model.layers[0].weight_mask, final["mask"]["layers.0.weight"].float())


def test_the_provenance_record_names_the_run_stage_files_and_metrics(tiny_run, tmp_path):
    root, res = tiny_run
    store = Store(root)
    sid = store.index.run_stages(res.run_id)[(1, 2)]
    out = tmp_path / "level2.safetensors"
    assert main(["export", res.run_id, "--root", str(root), "--level", "2", "--seed", "1", "--out", str(out)]) == 0
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "pt"
    record = json.loads(meta["sparsedd"])
    assert record == read_export(out).record
    assert (record["run_id"], record["stage_id"], record["seed"], record["level"]) == (res.run_id, sid, 1, 2)
    assert record["layout"] == "plain" and record["masks"] == ["layers.0.weight", "layers.1.weight"]
    assert record["config"] == store.run_config(res.run_id)
    assert record["metrics"] == store.done_info(sid)["metrics"]
    assert (record["input_shape"], record["num_classes"]) == ([40], 10)
    assert record["sparsedd_version"] == "0.1.0"
    assert set(record["checksums"]) == {"stage.json", "done.json", "final.pt"}
    for name, checksum in record["checksums"].items():
        assert checksum == checksum_of(store.stage_dir(sid) / name)


def test_bad_exports_are_one_line_and_write_nothing(tiny_run, tmp_path, capsys, monkeypatch):
    root, res = tiny_run
    out = tmp_path / "out" / "x.safetensors"
    (tmp_path / "afile").write_text("")
    base = ["export", res.run_id, "--root", str(root)]
    for args, message in [
        (["--level", "5", "--seed", "0", "--out", str(out)], "has no finished level 5 (its levels are 0 to 2"),
        (["--level", "1", "--out", str(out)], "has seeds 0, 1; say which with --seed"),
        (["--level", "1", "--seed", "7", "--out", str(out)], "has no seed 7"),
        (["--level", "1", "--seed", "0", "--out", str(tmp_path / "x.pt")], "cannot write .pt"),
        (["--level", "1", "--seed", "0", "--out", str(tmp_path / "afile" / "x.safetensors")], "is a file, not a folder"),
        (["--level", "1"], "export needs --level N and --out"),
        (["--to", "mlflow", "--level", "1"], "--to logs every finished level"),
        (["--to", "neptune"], "--to takes mlflow[=URI] or wandb[=PROJECT]"),
    ]:
        assert main(base + args) == 2, args
        assert message in one_error_line(capsys)
    assert main(["export", "0123", "--root", str(root), "--level", "1", "--out", str(out)]) == 2
    assert "no run '0123'" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()
    # a write that fails half-way (a full disk) leaves the file that was there as it was, and no temporary file
    out.parent.mkdir()
    out.write_bytes(b"before")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("sparsedd.store.files.os.fsync", full)
    assert main(base + ["--level", "1", "--seed", "0", "--out", str(out)]) == 1
    assert "the disk is full" in capsys.readouterr().err
    assert out.read_bytes() == b"before" and [p.name for p in out.parent.iterdir()] == ["x.safetensors"]


def test_an_unknown_run_and_a_missing_tracker_are_one_line_errors(tmp_path, capsys, monkeypatch):
    root = tmp_path / "runs"
    assert main(["export", "abc", "--root", str(root), "--level", "0", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "no run 'abc'" in one_error_line(capsys)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if it were not installed
    monkeypatch.setitem(sys.modules, "wandb", None)
    assert main(["export", "abc", "--root", str(root), "--to", "mlflow"]) == 2
    assert "needs the mlflow package: pip install mlflow-skinny" in one_error_line(capsys)
    assert main(["export", "abc", "--root", str(root), "--to", "wandb=myproject"]) == 2
    assert "pip install wandb" in one_error_line(capsys)
    assert not root.exists() and list(tmp_path.iterdir()) == []


def test_a_level_is_a_step_once_every_seed_has_it():
    nan = math.nan
    curve = pd.DataFrame({"seed": [0, 1, 0, 1, 0], "level": [0, 0, 1, 1, 2], "test_acc": [0.5, 0.7, 0.6, 0.8, 0.9],
                          "memorized": [nan] * 5, "sparsity": [0.0, 0.0, 0.2, 0.2, 0.36]})
    steps = level_steps(curve, seeds=2)
    assert [level for level, _ in steps] == [0, 1]  # level 2: seed 1 has not finished it
    assert steps[1][1] == pytest.approx({"test_acc": 0.7, "seed0/test_acc": 0.6, "seed1/test_acc": 0.8,
                                         "sparsity": 0.2, "seed0/sparsity": 0.2, "seed1/sparsity": 0.2})
    assert level_steps(curve.query("seed == 0"), seeds=1)[2] == (2, {"test_acc": 0.9, "sparsity": 0.36})


def files_of(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_mlflow_gets_every_level_as_a_step_once(tiny_run, tmp_path, capsys, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # for the client reading the store here
    root, res = tiny_run
    assert main(["export", res.run_id[:8], "--root", str(root), "--to", "mlflow"]) == 0
    assert "3 steps, 51 params, 1 artifacts added" in capsys.readouterr().out
    client = MlflowClient((root / "mlruns").resolve().as_uri())
    [run] = client.search_runs([client.get_experiment_by_name("sparsedd").experiment_id])
    rid = run.info.run_id
    assert run.data.tags["sparsedd.run_id"] == res.run_id and run.info.run_name == res.run_id
    assert run.data.params["train.epochs"] == "3" and run.data.params["model.hidden"] == "[32, 32]"
    mean = res.levels.groupby("level")["test_acc"].mean()
    history = sorted((m.step, m.value) for m in client.get_metric_history(rid, "test_acc"))
    assert [step for step, _ in history] == [0, 1, 2]
    assert [value for _, value in history] == pytest.approx(mean.tolist(), abs=1e-12)
    seed1 = res.levels.query("seed == 1").set_index("level")["sparsity"]
    assert sorted((m.step, m.value) for m in client.get_metric_history(rid, "seed1/sparsity")) == list(seed1.items())
    assert "memorized" in run.data.metrics and "val_acc" not in run.data.metrics  # NULL metrics are not logged
    assert [a.path for a in client.list_artifacts(rid)] == ["curve.png"]
    # the second call adds nothing: not a run, a metric point, a parameter or a byte
    before = files_of(root / "mlruns")
    assert main(["export", res.run_id, "--root", str(root), "--to", "mlflow"]) == 0
    assert "nothing new (already logged)" in capsys.readouterr().out
    assert files_of(root / "mlruns") == before
    # another tracking URI, a folder given as a path, and another experiment
    other = tmp_path / "elsewhere"
    assert main(["export", res.run_id, "--root", str(root), "--to", f"mlflow={other}", "--experiment", "mine"]) == 0
    assert f"at {other.resolve().as_uri()}: 3 steps" in capsys.readouterr().out
    assert MlflowClient(other.as_uri()).get_experiment_by_name("mine") is not None
    assert files_of(root / "mlruns") == before


def wandb_history(data: bytes) -> dict[int, dict[str, float]]:
    """The history records of a small W&B offline run file (its records in one 32 KiB block of W&B's
    LevelDB-style log: a 7-byte file header, then per record a CRC, a length and a type, 7 bytes, and a
    protobuf Record): step -> {key: value}."""
    import struct

    from wandb.proto import wandb_internal_pb2

    assert data[:4] == b":W&B" and len(data) < 32768
    out, pos = {}, 7
    while pos + 7 <= len(data):
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        record = wandb_internal_pb2.Record.FromString(data[pos + 7:pos + 7 + length])
        pos += 7 + length
        if kind == 0:  # padding
            break
        if record.WhichOneof("record_type") == "history":
            out[record.history.step.num] = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                            for i in record.history.item}
    return out


def test_wandb_offline_gets_every_level_as_a_step_once(tiny_run, capsys, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    root, res = tiny_run
    assert main(["export", res.run_id, "--root", str(root), "--to", "wandb"]) == 0
    assert "3 steps, 51 params, 1 artifacts added" in capsys.readouterr().out
    [offline] = (root / "wandb").glob("offline-run-*")
    [log] = offline.glob("*.wandb")
    history = wandb_history(log.read_bytes())
    mean = res.levels.groupby("level")["test_acc"].mean()
    assert sorted(history) == [0, 1, 2]
    assert [history[level]["test_acc"] for level in range(3)] == pytest.approx(mean.tolist(), abs=1e-12)
    assert history[1]["seed0/sparsity"] == res.levels.query("seed == 0 and level == 1")["sparsity"].item()
    assert b"train.epochs" in log.read_bytes() and len(list(offline.glob("files/media/images/curve_2_*.png"))) == 1
    before = files_of(root / "wandb")
    assert main(["export", res.run_id, "--root", str(root), "--to", "wandb"]) == 0
    assert "nothing new (already logged)" in capsys.readouterr().out
    assert files_of(root / "wandb") == before
