"""The store API: every file kind round-trips, under the file names older stores were written with."""

import json

import pytest
import torch

from sparsedd.store import Store
from sparsedd.store.index import BufferedIndex


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stage_files_round_trip_under_their_old_names(tmp_path):
    store = Store(tmp_path)
    weights, mask = {"w": torch.randn(3, 2)}, {"w": torch.rand(3, 2) > 0.5}
    store.begin_stage("level", {"kind": "level"})
    store.save_final("level", weights, mask, {"state": {}})
    store.save_final("analysis", weights)
    assert not store.has_init("dense")
    store.save_init("dense", weights)
    store.save_labels("dense", torch.tensor([1, 0]), torch.tensor([0]), torch.tensor([0]), 0.5)
    store.save_rewind("rewind", weights)
    store.finish_stage("level", {"metrics": {"test_acc": 0.5}})

    final = store.final("level")
    assert same(final["model"], weights) and same(final["mask"], mask) and final["optim"] == {"state": {}}
    assert store.final("analysis").keys() == {"model"}  # an analysis keeps its weights only
    assert store.has_init("dense") and same(store.init("dense"), weights)
    assert same(store.labels("dense"), {"labels": torch.tensor([1, 0]), "chosen": torch.tensor([0]),
                                        "corrupted": torch.tensor([0]), "effective_rate": torch.tensor(0.5)})
    assert same(store.rewind("rewind"), weights)
    assert store.is_done("level") and store.done_info("level")["metrics"] == {"test_acc": 0.5}
    stages = tmp_path / "stages"
    for name in ("level/stage.json", "level/final.pt", "level/done.json", "analysis/final.pt", "dense/init.pt",
                 "dense/labels.pt", "rewind/weights.pt"):
        assert (stages / name).exists(), name
    # the formats too: a store written before this API is read by it
    assert same(torch.load(stages / "dense/init.pt", weights_only=True)["model"], weights)
    assert json.loads((stages / "level/done.json").read_text())["metrics"] == {"test_acc": 0.5}


def test_batch_pointer_and_result(tmp_path):
    store = Store(tmp_path)
    assert store.batch_of("a") is None
    store.point_to_batch("a", "batch")
    assert store.batch_of("a") == "batch" and store.batch_result("batch") is None  # not finished yet
    store.save_batch_result("batch", {"a": {"model": {"w": torch.ones(2)}, "seconds": 1.0}})
    assert store.batch_result("batch")["a"]["seconds"] == 1.0
    assert json.loads((tmp_path / "stages/a/batch.json").read_text()) == {"batch": "batch"}
    assert (tmp_path / "stages/batch/result.pt").exists()


def test_run_config_stages_and_status(tmp_path):
    store = Store(tmp_path)
    assert store.index.run_ids() == [] and store.index.run_status("r") is None  # no index yet: empty
    store.register_run("r", {"seed": 3}, "preset", 2, 1)
    for seed in (1, 0):
        for level in (1, 0):
            store.index.link("r", seed, level, f"s{seed}{level}")
    store.index.set_status("r", "complete")
    assert store.run_config("r") == {"seed": 3}
    assert json.loads((tmp_path / "runs/r/config.json").read_text()) == {"config": {"seed": 3}, "preset": "preset"}
    assert (tmp_path / "index.sqlite").exists()
    assert list(store.index.run_stages("r").items()) == [((0, 0), "s00"), ((0, 1), "s01"), ((1, 0), "s10"),
                                                         ((1, 1), "s11")]
    assert store.index.run_ids() == ["r"] and store.index.run_status("r") == "complete"
    assert store.index.run_rows()[0]["config"] == {"seed": 3}


def test_result_rows_decode_their_json(tmp_path):
    store = Store(tmp_path)
    store.register_run("r", {}, None, 1, 1)
    store.index.link("r", 0, 1, "s")
    store.index.record_level("s", 1, {"test_acc": 0.5, "layer_sparsity": {"w": 0.2}})
    store.index.record_epochs("s", [{"epoch": 1, "test_acc": 0.4}])
    store.index.record_analysis("a", "s", "sharpness", {"iters": 3}, {"trace": 1.5})
    (level,) = store.index.level_rows()
    assert (level["run_id"], level["seed"], level["level"], level["layer_sparsity"]) == ("r", 0, 1, {"w": 0.2})
    assert [(e["run_id"], e["level"], e["epoch"], e["test_acc"]) for e in store.index.epoch_rows()] == [("r", 1, 1, 0.4)]
    (analysis,) = store.index.analysis_rows()
    assert analysis["settings"] == {"iters": 3} and analysis["result"] == {"trace": 1.5}


def test_buffered_index_records_writes_and_refuses_reads():
    index = BufferedIndex()
    index.set_status("r", "complete")
    assert index.calls == [("set_status", ("r", "complete"), {})]
    with pytest.raises(RuntimeError, match="cannot be read"):
        index.run_stages("r")


def test_stage_files_follow_the_umask(tmp_path):
    """A store shared with a group: files are written with the user's umask, not mkstemp's 0600 (issue 24)."""
    import os
    import stat

    from sparsedd.store.files import save_tensors, write_json

    old = os.umask(0o027)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        save_tensors(tmp_path / "b.pt", {"t": torch.zeros(2)})
    finally:
        os.umask(old)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert {"a.json", "b.pt", "b.pt.sha256"} <= set(written)  # the checksums beside them too
    for name in written:
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name


def test_an_output_for_people_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """A report's page, table or figure and bench --out (found by review: written in place, so a kill mid-write
    left a truncated file)."""
    from sparsedd.store.files import save_figure, write_output

    page = tmp_path / "index.html"
    write_output(page, "<p>before</p>")

    class Failing:  # a figure whose drawing fails half way
        def savefig(self, buffer, **options):
            buffer.write(b"\x89PNG partial")
            raise RuntimeError("drawing failed")

    with pytest.raises(RuntimeError):
        save_figure(Failing(), tmp_path / "curve.png", dpi=110)
    import sparsedd.store.files as files

    def disk_full(fd):  # the new bytes are written, then the disk fills before they are safe
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_output(page, "<p>after</p>" * 1000)
    assert page.read_text() == "<p>before</p>" and sorted(p.name for p in tmp_path.iterdir()) == ["index.html"]
