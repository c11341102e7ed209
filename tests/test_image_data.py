"""CIFAR-10 / CIFAR-100 / Tiny ImageNet loaders on tiny copies written in the real on-disk formats."""

import io
import os
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sparsedd.data.cifar as cifar
import sparsedd.data.tinyimagenet as tin
from sparsedd.config import DataConfig
from sparsedd.data import Dataset, load_dataset, standard_augment
from sparsedd.data.download import md5_of
from sparsedd.errors import SparseddError

UNREACHABLE = ["http://127.0.0.1:9/"]  # the discard port: connection refused, no network used


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No test reads the user's cache or data folder, reaches the network, or edits the real md5 tables."""
    monkeypatch.setenv("SPARSEDD_CACHE", str(tmp_path / "default-cache"))
    monkeypatch.delenv("SPARSEDD_DATA", raising=False)
    monkeypatch.setattr(cifar, "URLS", {k: list(UNREACHABLE) for k in cifar.URLS})
    monkeypatch.setattr(cifar, "MD5", dict(cifar.MD5))
    monkeypatch.setattr(tin, "URLS", list(UNREACHABLE))
    monkeypatch.setattr(tin, "MD5", dict(tin.MD5))




def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# ----------------------------------------------------------------------------- CIFAR


def fake_cifar(num_classes: int, seed: int = 0, per_batch: int = 20, n_test: int = 10) -> dict[str, dict]:
    """The train / test batches, as dicts with the real keys, by their path inside the archive."""
    rng = np.random.default_rng(seed)
    name = f"cifar{num_classes}"
    label_key = b"labels" if num_classes == 10 else b"fine_labels"
    sizes = {m: per_batch * (5 if num_classes == 100 else 1) for m in cifar.TRAIN_MEMBERS[name]}
    sizes.update({m: n_test for m in cifar.TEST_MEMBERS[name]})
    out = {}
    for m, n in sizes.items():
        labels = rng.integers(0, num_classes, n)
        d = {
            b"batch_label": f"fake {m}".encode(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            label_key: labels.tolist(),
            b"filenames": [f"img_{i}.png".encode() for i in range(n)],
        }
        if num_classes == 100:
            d[b"coarse_labels"] = (labels // 5).tolist()
        out[f"{cifar.FOLDERS[name]}/{m}"] = d
    return out


def expected(batches: dict[str, dict], num_classes: int, split: str):
    name = f"cifar{num_classes}"
    members = cifar.TRAIN_MEMBERS[name] if split == "train" else cifar.TEST_MEMBERS[name]
    ds = [batches[f"{cifar.FOLDERS[name]}/{m}"] for m in members]
    key = b"labels" if num_classes == 10 else b"fine_labels"
    data = np.concatenate([d[b"data"] for d in ds])
    x = torch.from_numpy(data).float().view(-1, 3, 32, 32) / 255
    x = (x - torch.tensor(cifar.MEAN[name]).view(1, 3, 1, 1)) / torch.tensor(cifar.STD[name]).view(1, 3, 1, 1)
    y = torch.tensor(sum((d[key] for d in ds), []))
    coarse = torch.tensor(sum((d[b"coarse_labels"] for d in ds), [])) if num_classes == 100 else None
    return x, y, coarse


class Py2Pickler(pickle._Pickler):
    """Pickles as Python 2's cPickle did for the official files: str / bytes as BINSTRING, numpy.core."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        self.write((b"U" + bytes([len(raw)]) if len(raw) < 256 else b"T" + struct.pack("<i", len(raw))) + raw)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str


def py2_dumps(obj) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def pickled(batches: dict[str, dict], py2: bool = True) -> dict[str, bytes]:
    """Python-2-style pickles as in the official archives, or Python 3 ones (protocol 4)."""
    return {m: py2_dumps(d) if py2 else pickle.dumps(d, protocol=4) for m, d in batches.items()}


def test_py2_pickles_look_like_the_official_ones():
    blob = py2_dumps({b"data": np.zeros((1, 3072), dtype=np.uint8)})
    assert b"cnumpy.core.multiarray\n_reconstruct" in blob and b"U\x04data" in blob and b"_codecs" not in blob


def write_archive(folder: Path, num_classes: int, batches: dict[str, dict], register: bool = True) -> Path:
    """``folder/cifar-N-python.tar.gz`` holding the pickled batches (and a meta file), md5 registered."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / cifar.FILES[f"cifar{num_classes}"]
    with tarfile.open(path, "w:gz") as tar:
        for m, data in [*pickled(batches).items(), (f"{cifar.FOLDERS[f'cifar{num_classes}']}/meta", b"meta")]:
            info = tarfile.TarInfo(m)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    if register:
        cifar.MD5[path.name] = md5_of(path)
    return path


def write_extracted(folder: Path, num_classes: int, batches: dict[str, dict], register: bool = True,
                    py2: bool = True) -> Path:
    for m, data in pickled(batches, py2).items():
        (folder / m).parent.mkdir(parents=True, exist_ok=True)
        (folder / m).write_bytes(data)
        if register:
            cifar.MD5[m] = md5_of(data)
    return folder / cifar.FOLDERS[f"cifar{num_classes}"]


@pytest.mark.parametrize("num_classes", [10, 100])
def test_cifar_archive_loads(tmp_path, num_classes):
    batches = fake_cifar(num_classes)
    write_archive(tmp_path / f"cifar{num_classes}", num_classes, batches)
    d = cifar.load_cifar(num_classes, data_dir=tmp_path)
    x_train, y_train, coarse = expected(batches, num_classes, "train")
    x_test, y_test, _ = expected(batches, num_classes, "test")
    assert d["x_train"].shape == (100, 3, 32, 32) and d["x_test"].shape == (10, 3, 32, 32)
    assert d["x_train"].dtype == torch.float32 and d["y_train"].dtype == torch.int64
    assert torch.equal(d["y_train"], y_train) and torch.equal(d["y_test"], y_test)
    assert torch.allclose(d["x_train"], x_train, atol=1e-5) and torch.allclose(d["x_test"], x_test, atol=1e-5)
    # roughly standardized: uniform pixels have mean 0.5 and std 0.29 in [0, 1]
    mean, std = torch.tensor(cifar.MEAN[f"cifar{num_classes}"]), torch.tensor(cifar.STD[f"cifar{num_classes}"])
    got_mean = d["x_train"].mean(dim=(0, 2, 3))
    assert torch.allclose(got_mean, (0.5 - mean) / std, atol=0.02)
    assert d["x_train"].amin(dim=(0, 2, 3)).tolist() == pytest.approx((-mean / std).tolist(), abs=1e-5)
    if num_classes == 100:
        assert torch.equal(d["coarse_train"], coarse) and d["coarse_train"].dtype == torch.int64
        assert torch.equal(d["coarse_train"], d["y_train"] // 5)
    else:
        assert "coarse_train" not in d


def test_cifar_channel_layout(tmp_path):
    """Each row of ``data`` is 1024 red, then 1024 green, then 1024 blue values, row-major."""
    batches = fake_cifar(10, per_batch=1, n_test=1)
    row = np.zeros(3072, dtype=np.uint8)
    row[0], row[1024 + 33], row[2048 + 1023] = 255, 255, 255  # red (0, 0), green (1, 1), blue (31, 31)
    batches["cifar-10-batches-py/data_batch_1"][b"data"][0] = row
    write_archive(tmp_path / "cifar10", 10, batches)
    x = cifar.load_cifar(10, data_dir=tmp_path)["x_train"][0]
    top = (1 - torch.tensor(cifar.MEAN["cifar10"])) / torch.tensor(cifar.STD["cifar10"])
    assert [round(v, 4) for v in (x[0, 0, 0].item(), x[1, 1, 1].item(), x[2, 31, 31].item())] == \
        [round(v, 4) for v in top.tolist()]
    assert int((x == x.amax()).sum()) <= 3


@pytest.mark.parametrize("num_classes", [10, 100])
def test_cifar_archive_and_extracted_folder_agree(tmp_path, num_classes):
    batches = fake_cifar(num_classes, seed=3)
    write_archive(tmp_path / "a" / f"cifar{num_classes}", num_classes, batches)
    extracted = write_extracted(tmp_path / "b" / f"cifar{num_classes}", num_classes, batches, py2=False)
    assert cifar.locate(f"cifar{num_classes}", tmp_path / "b") == extracted
    a = cifar.load_cifar(num_classes, data_dir=tmp_path / "a")
    b = cifar.load_cifar(num_classes, data_dir=tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cifar_subsets_and_sizes(tmp_path):
    batches = fake_cifar(10)
    write_archive(tmp_path / "cifar10", 10, batches)
    full = cifar.load_cifar(10, data_dir=tmp_path)
    part = cifar.load_cifar(10, 30, 4, data_dir=tmp_path)
    assert torch.equal(part["x_train"], full["x_train"][:30]) and torch.equal(part["y_test"], full["y_test"][:4])
    with pytest.raises(SparseddError, match="at most 100") as e:
        cifar.load_cifar(10, 101, data_dir=tmp_path)  # the copy holds only 100
    one_line(e)
    with pytest.raises(SparseddError, match="at most 50000"):
        cifar.load_cifar(10, 50001, data_dir=tmp_path / "nowhere")  # before any download
    with pytest.raises(SparseddError, match="10 or 100"):
        cifar.load_cifar(20, data_dir=tmp_path)


def test_cifar_lookup_order(tmp_path, monkeypatch):
    def first_label(**kw):
        return cifar.load_cifar(10, 0, 1, **kw)["y_train"][:5].tolist()

    sets = {k: fake_cifar(10, seed=s) for s, k in enumerate(["d", "env", "cache"])}
    labels = {k: sets[k]["cifar-10-batches-py/data_batch_1"][b"labels"][:5] for k in sets}
    assert len({tuple(v) for v in labels.values()}) == 3
    cache, data = tmp_path / "cache", tmp_path / "d"
    assert cifar.locate("cifar10", data, cache) is None
    write_archive(cache / "cifar10", 10, sets["cache"])
    assert first_label(data_dir=data, cache_dir=cache) == labels["cache"]
    monkeypatch.setenv("SPARSEDD_CACHE", str(cache))
    assert first_label() == labels["cache"]  # the default cache comes from the environment
    write_extracted(tmp_path / "env" / "cifar10", 10, sets["env"])
    monkeypatch.setenv("SPARSEDD_DATA", str(tmp_path / "env"))
    assert first_label(data_dir=data, cache_dir=cache) == labels["env"]
    write_archive(data / "cifar10", 10, sets["d"])
    assert first_label(data_dir=data, cache_dir=cache) == labels["d"]
    assert cifar.locate("cifar10", data, cache) == data / "cifar10" / "cifar-10-python.tar.gz"
    # an incomplete extracted folder is skipped
    (data / "cifar10" / "cifar-10-python.tar.gz").unlink()
    write_extracted(data / "cifar10", 10, sets["d"], register=False)
    (data / "cifar10" / "cifar-10-batches-py" / "test_batch").unlink()
    assert first_label(data_dir=data, cache_dir=cache) == labels["env"]


def test_cifar_corrupt_archive_is_a_checksum_error(tmp_path):
    path = write_archive(tmp_path / "cifar10", 10, fake_cifar(10))
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(SparseddError, match="checksum") as e:
        cifar.load_cifar(10, data_dir=tmp_path)
    assert str(path) in one_line(e) and "delete it" in str(e.value)


def test_cifar_corrupt_extracted_file_is_a_checksum_error(tmp_path):
    write_extracted(tmp_path / "cifar100", 100, fake_cifar(100))
    target = tmp_path / "cifar100" / "cifar-100-python" / "test"
    target.write_bytes(target.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(SparseddError, match="checksum") as e:
        cifar.load_cifar(100, data_dir=tmp_path)
    assert str(target) in one_line(e)


def test_cifar_unreadable_archive_with_matching_md5(tmp_path):
    path = tmp_path / "cifar10" / "cifar-10-python.tar.gz"
    path.parent.mkdir()
    path.write_bytes(b"\x1f\x8b not really gzip")
    cifar.MD5[path.name] = md5_of(path)
    with pytest.raises(SparseddError, match="corrupt") as e:
        cifar.load_cifar(10, data_dir=tmp_path)
    one_line(e)
    # an archive lacking a batch
    batches = fake_cifar(10)
    del batches["cifar-10-batches-py/data_batch_3"]
    write_archive(tmp_path / "cifar10", 10, batches)
    with pytest.raises(SparseddError, match="lacks cifar-10-batches-py/data_batch_3"):
        cifar.load_cifar(10, data_dir=tmp_path)


class _Evil:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_cifar_pickles_cannot_run_code(tmp_path):
    """Even a pickle whose md5 was (wrongly) trusted cannot call anything but numpy's array rebuilders."""
    batches = fake_cifar(10)
    batches["cifar-10-batches-py/test_batch"][b"x"] = _Evil(str(tmp_path / "pwned"))
    write_extracted(tmp_path / "cifar10", 10, batches)
    with pytest.raises(SparseddError, match="not allowed") as e:
        cifar.load_cifar(10, data_dir=tmp_path)
    one_line(e)
    assert not (tmp_path / "pwned").exists()


def test_cifar_malformed_batch(tmp_path):
    batches = fake_cifar(10)
    batches["cifar-10-batches-py/data_batch_2"][b"data"] = np.zeros((20, 100), dtype=np.uint8)
    write_archive(tmp_path / "cifar10", 10, batches)
    with pytest.raises(SparseddError, match="CIFAR images"):
        cifar.load_cifar(10, data_dir=tmp_path)
    batches = fake_cifar(10)
    batches["cifar-10-batches-py/test_batch"][b"labels"][0] = 10
    write_archive(tmp_path / "cifar10", 10, batches)
    with pytest.raises(SparseddError, match="outside"):
        cifar.load_cifar(10, data_dir=tmp_path)


def test_cifar_missing_everywhere_names_the_folder(tmp_path):
    with pytest.raises(SparseddError, match="by hand") as e:
        cifar.load_cifar(100, data_dir=tmp_path / "d")
    assert str(tmp_path / "d" / "cifar100") in one_line(e)
    assert list((tmp_path / "d" / "cifar100").iterdir()) == []


def test_cifar_download_good_and_corrupt(tmp_path, http_dir, monkeypatch):
    served, url = http_dir
    batches = fake_cifar(10, seed=5)
    good = write_archive(served / "good", 10, batches)
    bad = served / "bad" / good.name
    bad.parent.mkdir()
    bad.write_bytes(good.read_bytes()[:-1] + bytes([good.read_bytes()[-1] ^ 1]))
    # a corrupt mirror only: checksum error, nothing left behind
    monkeypatch.setattr(cifar, "URLS", {"cifar10": [f"{url}bad/{good.name}"]})
    dest = tmp_path / "d" / "cifar10"
    with pytest.raises(SparseddError, match="checksum") as e:
        cifar.load_cifar(10, data_dir=tmp_path / "d")
    assert str(dest) in one_line(e)
    assert list(dest.iterdir()) == []
    # unreachable, then corrupt, then good: the good copy is kept and loads
    monkeypatch.setattr(cifar, "URLS", {"cifar10": UNREACHABLE + [f"{url}bad/{good.name}", f"{url}good/{good.name}"]})
    d = cifar.load_cifar(10, data_dir=tmp_path / "d")
    assert torch.equal(d["y_train"], expected(batches, 10, "train")[1])
    assert [p.name for p in dest.iterdir()] == [good.name] and md5_of(dest / good.name) == md5_of(good)


# ----------------------------------------------------------------------------- load_dataset


def test_load_dataset_cifar(tmp_path):
    write_archive(tmp_path / "cifar10", 10, fake_cifar(10))
    write_archive(tmp_path / "cifar100", 100, fake_cifar(100))
    ds = load_dataset(DataConfig(name="cifar10", num_train=50, num_test=5), data_dir=tmp_path)
    assert isinstance(ds, Dataset) and ds.name == "cifar10" and ds.num_classes == 10
    assert ds.x_train.shape == (50, 3, 32, 32) and ds.coarse_train is None and ds.augment == "crop-flip"
    ds = load_dataset(DataConfig(name="cifar100", augment="none"), data_dir=tmp_path)
    assert ds.num_classes == 100 and ds.augment == "none"
    assert ds.coarse_train is not None and ds.coarse_train.shape == ds.y_train.shape
    moved = ds.to("cpu")
    assert moved is not ds and torch.equal(moved.coarse_train, ds.coarse_train) and moved.augment == "none"
    with pytest.raises(SparseddError, match="image_size") as e:
        load_dataset(DataConfig(name="cifar10", image_size=64), data_dir=tmp_path)
    one_line(e)
    assert load_dataset(DataConfig(name="cifar10", image_size=32), data_dir=tmp_path).x_train.shape[-1] == 32


def test_standard_augment():
    table = {
        ("mnist1d", "default"): "none", ("mnist1d", "none"): "none",
        ("mnist", "default"): "none", ("mnist", "crop-flip"): "crop-flip", ("mnist", "none"): "none",
        ("cifar10", "default"): "crop-flip", ("cifar100", "default"): "crop-flip",
        ("tinyimagenet", "default"): "crop-flip", ("cifar10", "none"): "none",
        ("tinyimagenet", "crop-flip"): "crop-flip",
    }
    for (name, augment), want in table.items():
        assert standard_augment(DataConfig(name=name, augment=augment)) == want
    with pytest.raises(SparseddError, match="images only") as e:
        standard_augment(DataConfig(name="mnist1d", augment="crop-flip"))
    one_line(e)
    with pytest.raises(SparseddError, match="images only"):
        load_dataset(DataConfig(name="mnist1d", augment="crop-flip"))


# ----------------------------------------------------------------------------- Tiny ImageNet

WNIDS = ["n003", "n001", "n002"]  # not sorted: the class index is the line order
VAL = [("val_2.JPEG", "n001"), ("val_0.JPEG", "n002"), ("val_1.JPEG", "n003")]  # the file's order


def train_color(c: int, r: int) -> tuple[int, int, int]:
    return (40 + 60 * c, 200 - 70 * r, 90 + 30 * c + 20 * r)


def val_color(i: int) -> tuple[int, int, int]:
    return (220 - 50 * i, 30 + 80 * i, 128)


def jpeg(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def two_tone(color: tuple[int, int, int]) -> np.ndarray:
    """64x64: the colour on the left half, its complement on the right half."""
    a = np.empty((64, 64, 3), dtype=np.uint8)
    a[:, :32] = color
    a[:, 32:] = [255 - v for v in color]
    return a


def tiny_imagenet_files() -> dict[str, bytes]:
    """The files of a 3-class copy, by their path in the zip."""
    root = tin.FOLDER
    files = {f"{root}/wnids.txt": ("\n".join(WNIDS) + "\n").encode(), f"{root}/words.txt": b"n001\tthing\n"}
    for c, w in enumerate(WNIDS):
        files[f"{root}/train/{w}/{w}_boxes.txt"] = b""
        for r in range(2):
            files[f"{root}/train/{w}/images/{w}_{r}.JPEG"] = jpeg(two_tone(train_color(c, r)))
    files[f"{root}/train/n003/images/n003_1.JPEG"] = jpeg(np.full((64, 64), 77, dtype=np.uint8))  # grayscale
    lines = []
    for name, w in VAL:
        files[f"{root}/val/images/{name}"] = jpeg(two_tone(val_color(int(name[4]))))
        lines.append(f"{name}\t{w}\t0\t0\t63\t63")
    files[f"{root}/val/val_annotations.txt"] = ("\n".join(lines) + "\n").encode()
    files[f"{root}/test/images/test_0.JPEG"] = jpeg(two_tone((1, 2, 3)))  # unlabelled: ignored
    return files


@pytest.fixture
def tiny_files():
    pytest.importorskip("PIL", reason="Pillow (a matplotlib dependency) is needed to write and read JPEGs")
    return tiny_imagenet_files()


def write_tiny_zip(folder: Path, files: dict[str, bytes], register: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / tin.FILE
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    if register:
        tin.MD5[tin.FILE] = md5_of(path)
    return path


def write_tiny_folder(folder: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder / tin.FOLDER


def unnormalize(x: torch.Tensor) -> torch.Tensor:
    """Back to [0, 255]."""
    return (x * torch.tensor(tin.STD).view(1, 3, 1, 1) + torch.tensor(tin.MEAN).view(1, 3, 1, 1)) * 255


def check_tiny(d: dict[str, torch.Tensor], size: int = 64) -> None:
    assert d["x_train"].shape == (6, 3, size, size) and d["x_test"].shape == (3, 3, size, size)
    assert d["x_train"].dtype == torch.float32 and d["y_train"].dtype == d["y_test"].dtype == torch.int64
    assert d["y_train"].tolist() == [0, 1, 2, 0, 1, 2]  # round-robin over the classes
    assert d["y_test"].tolist() == [1, 2, 0]  # the annotations' order and wnids
    px = unnormalize(d["x_train"])
    h = size // 4  # well inside each half
    for k, (r, c) in enumerate([(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]):
        left, right = px[k, :, h, h], px[k, :, h, size - h]
        want = torch.tensor([77.0] * 3) if (c, r) == (0, 1) else torch.tensor(train_color(c, r), dtype=torch.float32)
        assert torch.allclose(left, want, atol=4), (k, left, want)
        if (c, r) != (0, 1):
            assert torch.allclose(right, 255 - want, atol=4)
    for k, (name, _) in enumerate(VAL):
        want = torch.tensor(val_color(int(name[4])), dtype=torch.float32)
        assert torch.allclose(unnormalize(d["x_test"])[k, :, h, h], want, atol=4)


def test_tinyimagenet_folder_and_zip(tmp_path, tiny_files):
    write_tiny_folder(tmp_path / "a" / "tinyimagenet", tiny_files)
    write_tiny_zip(tmp_path / "b" / "tinyimagenet", tiny_files)
    assert tin.locate(tmp_path / "a") == tmp_path / "a" / "tinyimagenet" / tin.FOLDER
    assert tin.locate(tmp_path / "b") == tmp_path / "b" / "tinyimagenet" / tin.FILE
    a = tin.load_tinyimagenet(data_dir=tmp_path / "a", cache_dir=tmp_path / "ca")
    b = tin.load_tinyimagenet(data_dir=tmp_path / "b", cache_dir=tmp_path / "cb")
    check_tiny(a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    part = tin.load_tinyimagenet(4, 2, data_dir=tmp_path / "b", cache_dir=tmp_path / "cb")
    assert torch.equal(part["x_train"], a["x_train"][:4]) and part["y_test"].tolist() == [1, 2]
    with pytest.raises(SparseddError, match="at most 6"):
        tin.load_tinyimagenet(7, data_dir=tmp_path / "b", cache_dir=tmp_path / "cb")


def test_tinyimagenet_cache_and_32px(tmp_path, tiny_files, monkeypatch):
    write_tiny_zip(tmp_path / "tinyimagenet", tiny_files)
    full = tin.load_tinyimagenet(data_dir=tmp_path, cache_dir=tmp_path / "c")
    assert [p.name.split("-")[1] for p in (tmp_path / "c" / "tinyimagenet").glob("*.pt")] == ["64px"]

    def fail():
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(tin, "_decoder", fail)
    again = tin.load_tinyimagenet(data_dir=tmp_path, cache_dir=tmp_path / "c")
    assert all(torch.equal(full[k], again[k]) for k in full)
    # 32x32: 2x2 block averages of the 64x64 images, made from the cached 64px images
    small = load_dataset(DataConfig(name="tinyimagenet", image_size=32), data_dir=tmp_path, cache_dir=tmp_path / "c")
    assert small.num_classes == 200 and small.augment == "crop-flip"
    assert sorted(p.name.split("-")[1] for p in (tmp_path / "c" / "tinyimagenet").glob("*.pt")) == ["32px", "64px"]
    check_tiny({"x_train": small.x_train, "y_train": small.y_train, "x_test": small.x_test, "y_test": small.y_test}, 32)
    pooled = F.interpolate(unnormalize(full["x_train"]), size=(32, 32), mode="area")
    assert (unnormalize(small.x_train) - pooled).abs().max() <= 0.5 + 1e-3  # rounded to uint8 once
    # the 32px cache alone is enough
    for p in (tmp_path / "c" / "tinyimagenet").glob("*-64px-*.pt"):
        p.unlink()
    assert torch.equal(tin.load_tinyimagenet(data_dir=tmp_path, cache_dir=tmp_path / "c", image_size=32)["x_train"],
                       small.x_train)
    with pytest.raises(SparseddError, match="64x64 or 32x32"):
        tin.load_tinyimagenet(data_dir=tmp_path, cache_dir=tmp_path / "c", image_size=48)


def test_tinyimagenet_damaged_cache_is_decoded_again(tmp_path, tiny_files, capsys):
    write_tiny_zip(tmp_path / "tinyimagenet", tiny_files)
    first = tin.load_tinyimagenet(data_dir=tmp_path, cache_dir=tmp_path / "c")
    (path,) = (tmp_path / "c" / "tinyimagenet").glob("*.pt")
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + 64] = bytes(b ^ 0xFF for b in raw[middle:middle + 64])  # in the pixels
    path.write_bytes(bytes(raw))
    capsys.readouterr()
    again = tin.load_tinyimagenet(data_dir=tmp_path, cache_dir=tmp_path / "c")
    assert f"the decoded Tiny ImageNet cache {path} is damaged (its checksum does not match" in capsys.readouterr().err
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_tinyimagenet_changed_folder_is_decoded_again(tmp_path, tiny_files):
    root = write_tiny_folder(tmp_path / "tinyimagenet", tiny_files)
    first = tin.load_tinyimagenet(data_dir=tmp_path, cache_dir=tmp_path / "c")
    (root / "val" / "images" / "val_0.JPEG").write_bytes(jpeg(two_tone((0, 0, 0))) + b"\0")
    second = tin.load_tinyimagenet(data_dir=tmp_path, cache_dir=tmp_path / "c")
    assert torch.equal(first["x_train"], second["x_train"]) and not torch.equal(first["x_test"], second["x_test"])
    assert len(list((tmp_path / "c" / "tinyimagenet").glob("*.pt"))) == 2


def test_tinyimagenet_corrupt_zip_is_a_checksum_error(tmp_path, tiny_files):
    path = write_tiny_zip(tmp_path / "tinyimagenet", tiny_files)
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(SparseddError, match="checksum") as e:
        tin.load_tinyimagenet(data_dir=tmp_path, cache_dir=tmp_path / "c")
    assert str(path) in one_line(e)
    assert not list((tmp_path / "c").rglob("*.pt"))


def test_tinyimagenet_bad_copies(tmp_path, tiny_files):
    files = dict(tiny_files)
    files[f"{tin.FOLDER}/val/val_annotations.txt"] += b"val_9.JPEG\tn999\t0\t0\t1\t1\n"
    write_tiny_zip(tmp_path / "a" / "tinyimagenet", files)
    with pytest.raises(SparseddError, match="line 4 of val/val_annotations.txt") as e:
        tin.load_tinyimagenet(data_dir=tmp_path / "a", cache_dir=tmp_path / "c")
    one_line(e)
    files = dict(tiny_files)
    files[f"{tin.FOLDER}/train/n001/images/n001_0.JPEG"] = b"not a jpeg"
    write_tiny_folder(tmp_path / "b" / "tinyimagenet", files)
    with pytest.raises(SparseddError, match="cannot decode .*n001_0.JPEG") as e:
        tin.load_tinyimagenet(data_dir=tmp_path / "b", cache_dir=tmp_path / "c")
    one_line(e)
    files = dict(tiny_files)
    files[f"{tin.FOLDER}/val/images/val_1.JPEG"] = jpeg(np.zeros((32, 32, 3), dtype=np.uint8))
    write_tiny_folder(tmp_path / "d" / "tinyimagenet", files)
    with pytest.raises(SparseddError, match="not 64x64"):
        tin.load_tinyimagenet(data_dir=tmp_path / "d", cache_dir=tmp_path / "c")


def test_tinyimagenet_missing_then_downloaded(tmp_path, http_dir, monkeypatch, tiny_files):
    with pytest.raises(SparseddError, match="by hand") as e:
        tin.load_tinyimagenet(data_dir=tmp_path / "d")
    assert str(tmp_path / "d" / "tinyimagenet") in one_line(e)
    served, url = http_dir
    zipped = write_tiny_zip(served, tiny_files)
    monkeypatch.setattr(tin, "URLS", UNREACHABLE + [f"{url}{tin.FILE}"])
    monkeypatch.setenv("SPARSEDD_DATA", str(tmp_path / "env"))
    d = tin.load_tinyimagenet(cache_dir=tmp_path / "c")  # into the first lookup folder: $SPARSEDD_DATA's
    check_tiny(d)
    assert md5_of(tmp_path / "env" / "tinyimagenet" / tin.FILE) == md5_of(zipped)


def test_tinyimagenet_lookup_order(tmp_path, monkeypatch):
    def make(folder: Path, kind: str) -> Path:
        folder.mkdir(parents=True)
        if kind == "zip":
            (folder / tin.FILE).touch()
            return folder / tin.FILE
        for name in ("wnids.txt", "val/val_annotations.txt"):
            (folder / tin.FOLDER / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / tin.FOLDER / name).touch()
        return folder / tin.FOLDER

    assert tin.locate(tmp_path / "d", tmp_path / "c") is None
    cached = make(tmp_path / "c" / "tinyimagenet", "folder")
    assert tin.locate(tmp_path / "d", tmp_path / "c") == cached
    env = make(tmp_path / "e" / "tinyimagenet", "zip")
    monkeypatch.setenv("SPARSEDD_DATA", str(tmp_path / "e"))
    assert tin.locate(tmp_path / "d", tmp_path / "c") == env
    given = make(tmp_path / "d" / "tinyimagenet", "folder")
    assert tin.locate(tmp_path / "d", tmp_path / "c") == given
    (given.parent / tin.FILE).touch()  # in one folder the zip comes first
    assert tin.locate(tmp_path / "d", tmp_path / "c") == given.parent / tin.FILE
    monkeypatch.delenv("SPARSEDD_DATA")
    default = make(tmp_path / "default-cache" / "tinyimagenet", "zip")  # $SPARSEDD_CACHE, from the fixture
    assert tin.locate(None, None) == default
