"""CIFAR-10N / CIFAR-100N human label noise, on label files written here in the published format
(a torch.save'd dict of numpy int arrays) beside tiny CIFAR archives (test_image_data's helpers)."""

import json

import numpy as np
import pytest
import torch

import sparsedd.data.cifarn as cifarn
from sparsedd.cli import main
from sparsedd.config import DataConfig, RunConfig
from sparsedd.config_load import load
from sparsedd.data import load_dataset
from sparsedd.data.download import md5_of
from sparsedd.data.noise import HUMAN_NOISE, NOISE_TYPES, apply_noise, describe
from sparsedd.errors import SparseddError
from sparsedd.experiments.stages import data_key
from sparsedd.report.tables import run_title
from test_image_data import UNREACHABLE, _Evil, expected, fake_cifar, isolated, one_line, write_archive  # noqa: F401

CIFAR10_KEYS = ("aggre_label", "random_label1", "random_label2", "random_label3", "worse_label")


@pytest.fixture(autouse=True)
def isolated_cifarn(isolated, monkeypatch):
    """As test_image_data's ``isolated`` (private cache, no network, md5 tables copied), for the label files too."""
    monkeypatch.setattr(cifarn, "URLS", {k: list(UNREACHABLE) for k in cifarn.URLS})
    monkeypatch.setattr(cifarn, "MD5", dict(cifarn.MD5))


def human_sets(clean: np.ndarray, num_classes: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The published keys: the clean labels, and noisy sets each wrong on a different share of images."""
    rng = np.random.default_rng(seed)
    keys = CIFAR10_KEYS if num_classes == 10 else ("noisy_label",)
    out = {"clean_label": clean.astype(np.int64)}
    for i, key in enumerate(keys):
        wrong = rng.random(len(clean)) < 0.1 * (i + 1)
        out[key] = np.where(wrong, (clean + 1 + i) % num_classes, clean).astype(np.int64)
    if num_classes == 100:  # the CIFAR-100 file also holds superclasses
        out["clean_coarse_label"] = out["noisy_coarse_label"] = (clean // 5).astype(np.int64)
    return out


def write_label_file(folder, name, sets, *, legacy=False, register=True):
    """``folder/CIFAR-10_human.pt`` (or 100) as torch.save writes it; its md5 registered unless not asked."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / cifarn.FILES[name]
    torch.save(sets, path, _use_new_zipfile_serialization=not legacy)
    if register:
        cifarn.MD5[path.name] = md5_of(path)
    return path


def cifar_with_labels(root, num_classes=10, seed=0, **kw):
    """A tiny CIFAR archive and its label file under ``root/cifarN``; returns the label sets written."""
    name = f"cifar{num_classes}"
    batches = fake_cifar(num_classes, seed=seed)
    write_archive(root / name, num_classes, batches)
    sets = human_sets(expected(batches, num_classes, "train")[1].numpy(), num_classes, seed)
    write_label_file(root / name, name, sets, **kw)
    return sets


# ----------------------------------------------------------------------------- reading the files


@pytest.mark.parametrize("legacy", [False, True])
def test_both_torch_formats_read_each_label_set_in_order(tmp_path, legacy):
    sets = cifar_with_labels(tmp_path, legacy=legacy)
    sets["worse_label"][37] = (sets["clean_label"][37] + 3) % 10  # a known label at a known index
    write_label_file(tmp_path / "cifar10", "cifar10", sets, legacy=legacy)
    assert (tmp_path / "cifar10" / "CIFAR-10_human.pt").read_bytes()[:2] == (b"\x80\x02" if legacy else b"PK")
    ds = load_dataset(DataConfig(name="cifar10", noise_type="cifar10n-worst"), data_dir=tmp_path)
    assert sorted(ds.human_train) == sorted(t for t, (d, _) in HUMAN_NOISE.items() if d == "cifar10")
    for noise_type, (_, key) in HUMAN_NOISE.items():
        if noise_type.startswith("cifar10n"):
            assert ds.human_train[noise_type].tolist() == sets[key].tolist(), noise_type
            assert ds.human_train[noise_type].dtype == torch.int64
    assert int(ds.human_train["cifar10n-worst"][37]) == (int(ds.y_train[37]) + 3) % 10
    assert len({tuple(v.tolist()) for v in ds.human_train.values()}) == 5  # five different sets


def test_cifar100n_reads_noisy_label_and_ignores_superclasses(tmp_path):
    sets = cifar_with_labels(tmp_path, 100)
    ds = load_dataset(DataConfig(name="cifar100", noise_type="cifar100n"), data_dir=tmp_path)
    assert list(ds.human_train) == ["cifar100n"]
    assert ds.human_train["cifar100n"].tolist() == sets["noisy_label"].tolist()


def test_a_file_pickled_by_numpy_1_reads(tmp_path):
    """The published files predate numpy 2, whose arrays pickle as numpy._core.multiarray._reconstruct."""
    sets = cifar_with_labels(tmp_path, legacy=True)
    path = tmp_path / "cifar10" / "CIFAR-10_human.pt"
    raw = path.read_bytes()
    assert b"cnumpy._core.multiarray\n" in raw
    path.write_bytes(raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))
    cifarn.MD5[path.name] = md5_of(path)
    assert cifarn.read_label_file(path)["worse_label"].tolist() == sets["worse_label"].tolist()


def test_a_file_of_tensors_reads_too(tmp_path):
    sets = cifar_with_labels(tmp_path)
    write_label_file(tmp_path / "cifar10", "cifar10", {k: torch.from_numpy(v) for k, v in sets.items()})
    ds = load_dataset(DataConfig(name="cifar10", noise_type="cifar10n-aggregate"), data_dir=tmp_path)
    assert ds.human_train["cifar10n-aggregate"].tolist() == sets["aggre_label"].tolist()


def test_only_the_human_noise_types_load_the_file(tmp_path):
    write_archive(tmp_path / "cifar10", 10, fake_cifar(10))  # no label file anywhere
    assert load_dataset(DataConfig(name="cifar10"), data_dir=tmp_path).human_train is None
    with pytest.raises(SparseddError, match="by hand") as e:
        load_dataset(DataConfig(name="cifar10", noise_type="cifar10n-worst"), data_dir=tmp_path)
    assert str(tmp_path / "cifar10") in one_line(e)


def test_num_train_takes_the_first_examples_as_the_loader_does(tmp_path):
    sets = cifar_with_labels(tmp_path)
    ds = load_dataset(DataConfig(name="cifar10", noise_type="cifar10n-random2", num_train=30), data_dir=tmp_path)
    assert ds.y_train.tolist() == sets["clean_label"][:30].tolist()
    assert ds.human_train["cifar10n-random2"].tolist() == sets["random_label2"][:30].tolist()


def test_download_then_lookup_order(tmp_path, http_dir, monkeypatch):
    served, url = http_dir
    batches = fake_cifar(10)
    write_archive(tmp_path / "d" / "cifar10", 10, batches)
    sets = human_sets(expected(batches, 10, "train")[1].numpy(), 10, seed=2)
    served_file = write_label_file(served, "cifar10", sets)
    # nowhere local: downloaded into the first lookup folder (--data-dir DIR/cifar10/), then read
    monkeypatch.setattr(cifarn, "URLS", {"cifar10": UNREACHABLE + [url + served_file.name]})
    cfg = DataConfig(name="cifar10", noise_type="cifar10n-worst")
    ds = load_dataset(cfg, data_dir=tmp_path / "d")
    assert ds.human_train["cifar10n-worst"].tolist() == sets["worse_label"].tolist()
    local = tmp_path / "d" / "cifar10" / served_file.name
    assert md5_of(local) == md5_of(served_file)
    # DIR/cifar10/ comes before $SPARSEDD_DATA/cifar10/: its corrupt copy is the one checked
    monkeypatch.setattr(cifarn, "URLS", {"cifar10": UNREACHABLE})
    (tmp_path / "env" / "cifar10").mkdir(parents=True)
    (tmp_path / "env" / "cifar10" / served_file.name).write_bytes(served_file.read_bytes())
    monkeypatch.setenv("SPARSEDD_DATA", str(tmp_path / "env"))
    local.write_bytes(b"corrupt")
    with pytest.raises(SparseddError, match="checksum mismatch") as e:
        load_dataset(cfg, data_dir=tmp_path / "d")
    assert str(local) in one_line(e)
    local.unlink()
    assert load_dataset(cfg, data_dir=tmp_path / "d").human_train["cifar10n-worst"].tolist() == \
        sets["worse_label"].tolist()
    assert not local.exists()


# ----------------------------------------------------------------------------- bad files


def test_the_published_md5_is_checked(tmp_path):
    """With the published checksums (not this test's), a file written here is a one-line checksum error."""
    assert set(cifarn.MD5) == set(cifarn.FILES.values()) and all(len(v) == 32 for v in cifarn.MD5.values())
    cifar_with_labels(tmp_path, register=False)
    with pytest.raises(SparseddError, match="checksum mismatch") as e:
        load_dataset(DataConfig(name="cifar10", noise_type="cifar10n-worst"), data_dir=tmp_path)
    assert str(tmp_path / "cifar10" / "CIFAR-10_human.pt") in one_line(e) and "delete it" in str(e.value)


def test_a_corrupt_file_is_a_checksum_error(tmp_path):
    cifar_with_labels(tmp_path)
    path = tmp_path / "cifar10" / "CIFAR-10_human.pt"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(SparseddError, match="checksum mismatch") as e:
        load_dataset(DataConfig(name="cifar10", noise_type="cifar10n-worst"), data_dir=tmp_path)
    one_line(e)


def test_a_bad_download_is_a_checksum_error_and_leaves_nothing(tmp_path, http_dir, monkeypatch):
    served, url = http_dir
    write_archive(tmp_path / "d" / "cifar10", 10, fake_cifar(10))
    (served / "CIFAR-10_human.pt").write_bytes(b"not the published file")
    monkeypatch.setattr(cifarn, "URLS", {"cifar10": [url + "CIFAR-10_human.pt"]})
    with pytest.raises(SparseddError, match="checksum mismatch") as e:
        load_dataset(DataConfig(name="cifar10", noise_type="cifar10n-worst"), data_dir=tmp_path / "d")
    one_line(e)
    assert not (tmp_path / "d" / "cifar10" / "CIFAR-10_human.pt").exists()


def test_a_permuted_file_is_caught(tmp_path):
    sets = cifar_with_labels(tmp_path)
    order = np.random.default_rng(0).permutation(len(sets["clean_label"]))
    write_label_file(tmp_path / "cifar10", "cifar10", {k: v[order] for k, v in sets.items()})
    with pytest.raises(SparseddError, match="do not belong together") as e:
        load_dataset(DataConfig(name="cifar10", noise_type="cifar10n-worst"), data_dir=tmp_path)
    one_line(e)


def test_the_cifar100_file_beside_cifar10_is_caught(tmp_path):
    batches = fake_cifar(10)
    write_archive(tmp_path / "cifar10", 10, batches)
    other = human_sets(np.random.default_rng(9).integers(0, 100, 100), 100)
    write_label_file(tmp_path / "cifar10", "cifar10", other)
    with pytest.raises(SparseddError, match="do not belong together") as e:
        load_dataset(DataConfig(name="cifar10", noise_type="cifar10n-worst"), data_dir=tmp_path)
    one_line(e)


@pytest.mark.parametrize("change, words", [
    (lambda s: s.pop("worse_label"), "lacks 'worse_label'"),
    (lambda s: s.update(worse_label=s["worse_label"][:-1]), "one label in \\[0, 10\\)"),
    (lambda s: s["worse_label"].__setitem__(3, 10), "one label in \\[0, 10\\)"),
    (lambda s: s.pop("clean_label"), "no 'clean_label'"),
])
def test_malformed_label_sets(tmp_path, change, words):
    sets = cifar_with_labels(tmp_path)
    change(sets)
    write_label_file(tmp_path / "cifar10", "cifar10", sets)
    with pytest.raises(SparseddError, match=words) as e:
        load_dataset(DataConfig(name="cifar10", noise_type="cifar10n-worst"), data_dir=tmp_path)
    one_line(e)


@pytest.mark.parametrize("legacy", [False, True])
def test_label_files_cannot_run_code(tmp_path, legacy):
    """Even a file whose md5 was (wrongly) trusted cannot call anything but numpy's array rebuilders."""
    sets = cifar_with_labels(tmp_path)
    write_label_file(tmp_path / "cifar10", "cifar10", {**sets, "x": _Evil(str(tmp_path / "pwned"))}, legacy=legacy)
    with pytest.raises(SparseddError, match="not allowed") as e:
        load_dataset(DataConfig(name="cifar10", noise_type="cifar10n-worst"), data_dir=tmp_path)
    one_line(e)
    assert not (tmp_path / "pwned").exists()


def test_not_a_torch_file(tmp_path):
    cifar_with_labels(tmp_path)
    path = tmp_path / "cifar10" / "CIFAR-10_human.pt"
    path.write_bytes(b"hello")
    cifarn.MD5[path.name] = md5_of(path)
    with pytest.raises(SparseddError, match="not a CIFAR-N label file") as e:
        load_dataset(DataConfig(name="cifar10", noise_type="cifar10n-worst"), data_dir=tmp_path)
    one_line(e)


# ----------------------------------------------------------------------------- the noise types


def test_registered_in_the_noise_registry():
    assert NOISE_TYPES.names()[:4] == ("random", "symmetric", "asymmetric", "pairflip")
    assert set(HUMAN_NOISE) == {"cifar10n-aggregate", "cifar10n-random1", "cifar10n-random2", "cifar10n-random3",
                                "cifar10n-worst", "cifar100n"} <= set(NOISE_TYPES.names())


def test_effective_rate_is_the_share_of_labels_the_annotators_changed():
    clean = torch.arange(1000) % 10
    sets = human_sets(clean.numpy(), 10)
    human = {t: torch.from_numpy(sets[k]) for t, (d, k) in HUMAN_NOISE.items() if d == "cifar10"}
    for noise_type, (_, key) in HUMAN_NOISE.items():
        if noise_type == "cifar100n":
            continue
        out = apply_noise(clean, 10, 0.2, noise_type, seed=0, dataset="cifar10", human=human)
        differ = sets[key] != clean.numpy()
        assert out.labels.tolist() == sets[key].tolist()
        assert out.effective_rate == differ.mean() > 0
        assert out.corrupted.tolist() == out.chosen.tolist() == np.flatnonzero(differ).tolist()
        # neither the rate nor the seed changes the published labels
        again = apply_noise(clean, 10, 0.7, noise_type, seed=5, dataset="cifar10", human=human)
        assert torch.equal(again.labels, out.labels)
    assert torch.equal(clean, torch.arange(1000) % 10)  # the clean labels are left as they are


def test_noise_function_errors_are_one_line():
    clean = torch.arange(20) % 10
    human = {"cifar10n-worst": (clean + 1) % 10}
    with pytest.raises(SparseddError, match="use data.name = cifar10") as e:
        apply_noise(clean, 10, 0.2, "cifar10n-worst", 0, dataset="cifar100", human=human)
    one_line(e)
    with pytest.raises(SparseddError, match="needs the published human labels") as e:
        apply_noise(clean, 10, 0.2, "cifar10n-worst", 0, dataset="cifar10")
    one_line(e)
    with pytest.raises(SparseddError, match="same data.num_train") as e:
        apply_noise(clean[:10], 10, 0.2, "cifar10n-worst", 0, dataset="cifar10", human=human)
    one_line(e)


# ----------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("values, words", [
    ({"data.name": "cifar100", "data.noise_type": "cifar10n-worst"}, "needs data.name = 'cifar10'"),
    ({"data.name": "cifar10", "data.noise_type": "cifar100n"}, "needs data.name = 'cifar100'"),
    ({"data.name": "mnist", "data.noise_type": "cifar10n-aggregate"}, "needs data.name = 'cifar10'"),
    ({"data.name": "cifar10", "data.noise_type": "cifar10n-worst", "data.noise": 0.4}, "data.noise does not apply"),
    ({"data.name": "cifar10", "data.noise_type": "cifar10n-worst", "data.noise_seed": 2}, "data.noise_seed does not"),
])
def test_config_errors_are_one_line(values, words):
    with pytest.raises(SparseddError, match=words) as e:
        load("paper-cifar10-resnet18", values=values)
    one_line(e)


def test_config_on_the_paper_presets():
    cfg = load("paper-cifar10-resnet18", sets=["data.noise_type=cifar10n-worst"])
    assert cfg.data.noise_type == "cifar10n-worst" and cfg.data.noise == 0.2
    assert load("paper-cifar100-resnet18", sets=["data.noise_type=cifar100n"]).data.noise_type == "cifar100n"


def test_human_noise_types_share_data_of_their_own():
    def key(**data):
        return data_key(RunConfig(data=DataConfig(name="cifar10", **data)))
    assert key() == key(noise=0.4) == key(noise_type="pairflip", noise_seed=3)
    assert key(noise_type="cifar10n-worst") == key(noise_type="cifar10n-aggregate") != key()


def test_titles_name_the_labels_not_a_rate():
    assert describe("random", 0.2) == "20% random noise"
    assert describe("cifar10n-worst", 0.2) == "cifar10n-worst human labels"
    cfg = {"model": {"name": "resnet18"}, "data": {"name": "cifar10", "noise": 0.2, "noise_type": "cifar10n-worst"},
           "prune": {"method": "magnitude", "scope": "global"}, "retrain": {"mode": "weight-rewind"}}
    assert run_title(cfg, "abc") == \
        "resnet18 on cifar10, cifar10n-worst human labels, magnitude global, weight-rewind (run abc)"


# ----------------------------------------------------------------------------- end to end


def test_a_tiny_run_with_cifar10n_worst(tmp_path, capsys):
    batches = fake_cifar(10, per_batch=4, n_test=6)
    write_archive(tmp_path / "data" / "cifar10", 10, batches)
    sets = human_sets(expected(batches, 10, "train")[1].numpy(), 10, seed=4)
    write_label_file(tmp_path / "data" / "cifar10", "cifar10", sets)
    root = tmp_path / "runs"
    sets_args = ["data.noise_type=cifar10n-worst", "model.name=resnet18", "train.epochs=1", "train.batch_size=8",
                 "prune.levels=1", "retrain.rewind_iteration=1", "seeds=1"]
    args = ["run", "--preset", "paper-cifar10-resnet18", "--root", str(root), "--data-dir", str(tmp_path / "data"),
            "--no-progress"]
    assert main(args + [a for s in sets_args for a in ("--set", s)]) == 0
    want_rate = float((sets["worse_label"] != sets["clean_label"]).mean())
    levels, labels = [], None
    for stage in (root / "stages").iterdir():
        kind = json.loads((stage / "stage.json").read_text())["kind"]
        if kind in ("dense", "level") and (stage / "done.json").exists():
            levels.append(json.loads((stage / "done.json").read_text())["metrics"])
        if kind == "dense":
            labels = torch.load(stage / "labels.pt", weights_only=True)
    assert sorted(m["level"] for m in levels) == [0, 1]
    assert all(m["effective_noise"] == pytest.approx(want_rate) for m in levels) and want_rate > 0
    assert labels["labels"].tolist() == sets["worse_label"].tolist()
    capsys.readouterr()
    assert main(["ls", "--root", str(root), "--format", "json"]) == 0
    assert "cifar10 noise=cifar10n-worst resnet18" in json.loads(capsys.readouterr().out)[0]["summary"]
