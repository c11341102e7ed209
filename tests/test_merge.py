"""Issue 26, item 5: `sparsedd merge SRC... --root DST [--results-only]`. Two tiny runs made in two stores
are merged into a third, which lists and shows them as their sources do; merging again changes no file;
a damaged file of a source is reported and its stage skipped; stores that record other data for the same
data key are refused before anything is written; a partial run stays partial, and of two statuses the
more complete one is kept; --results-only brings the results without the weights, doctor calls such
stages sound, and a later run computes them again and ends complete with the same curve."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import sparsedd.experiments.progress as progress
from conftest import TINY
from sparsedd import config_load
from sparsedd.cli import main
from sparsedd.errors import SparseddError
from sparsedd.experiments import ExecOptions, run
from sparsedd.experiments.stages import stage_chain
from sparsedd.store import Store
from sparsedd.store.files import write_json
from test_cli import snapshot
from test_damage import flip

FLAGS = ["--seeds", "1", "--no-progress", "--sparse", "off", "--batch", "off"]
SHORT = TINY  # levels 0..2
LONG = TINY + ["prune.levels=3"]  # shares levels 0..2 with SHORT
CFG_SHORT, CFG_LONG = (config_load.load(None, None, sets, 1) for sets in (SHORT, LONG))


def sets(values: list[str]) -> list[str]:
    return [a for s in values for a in ("--set", s)]


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    """a: the short run; b: the long run (its own store, computed from scratch); p: the short run and the
    long one interrupted in level 3 (partial, a checkpoint there)."""
    base = tmp_path_factory.mktemp("sources")
    made = {name: base / name for name in ("a", "b", "p")}
    assert main(["run", "--root", str(made["a"]), *FLAGS, *sets(SHORT)]) == 0
    assert main(["run", "--root", str(made["b"]), *FLAGS, *sets(LONG)]) == 0
    shutil.copytree(made["a"], made["p"])
    real, calls = progress.Progress.epoch, [0]

    def interrupt_in_level_3(self, metrics, advance_total=1):
        calls[0] += 1
        if calls[0] == 2:  # level 3's second epoch: its first checkpoint is written
            raise KeyboardInterrupt
        real(self, metrics, advance_total)

    progress.Progress.epoch = interrupt_in_level_3
    try:
        with pytest.raises(KeyboardInterrupt):
            run(CFG_LONG, Store(made["p"]), options=ExecOptions(progress=False, batch="off", sparse="off",
                                                               checkpoint_epoch_s=0))
    finally:
        progress.Progress.epoch = real
    return made


def cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def show(capsys, root: Path, run_id: str) -> dict:
    code, out, _ = cli(capsys, "show", run_id, "--root", root, "--format", "json")
    assert code == 0
    return json.loads(out)


def listed(capsys, root: Path) -> dict[str, tuple[str, int]]:
    rows = json.loads(cli(capsys, "ls", "--root", root, "--format", "json")[1])
    return {r["run"]: (r["status"], r["levels_done"]) for r in rows}


def test_two_stores_merged_into_a_third_show_the_same_curves_and_merging_again_changes_nothing(stores, tmp_path,
                                                                                            capsys):
    dst = tmp_path / "merged"
    sources = {name: snapshot(stores[name]) for name in ("a", "b")}
    code, out, _ = cli(capsys, "merge", stores["a"], stores["b"], "--root", dst)
    assert code == 0, out
    assert out.splitlines()[-1] == (f"merged 2 stores into {dst}: 4 stages copied, 3 already there, 0 skipped as "
                                    "damaged; 2 runs added"), out  # (b's levels 0..2 are a's)
    assert listed(capsys, dst) == {CFG_SHORT.run_id: ("complete", 3), CFG_LONG.run_id: ("complete", 4)}
    for src, cfg in (("a", CFG_SHORT), ("b", CFG_LONG)):
        assert show(capsys, dst, cfg.run_id) == show(capsys, stores[src], cfg.run_id)
    merged, source = Store(dst), Store(stores["b"])
    for sid in stage_chain(CFG_LONG).values():  # weights verified by their checksums, bound to their stage
        assert merged.check_done(sid)
        for name, tensor in source.final(sid)["model"].items():
            assert torch.equal(merged.final(sid)["model"][name], tensor)
    code, out, _ = cli(capsys, "doctor", "--root", dst)
    assert code == 0 and out.splitlines()[-1] == "index: ok", out

    before = snapshot(dst)
    code, out, _ = cli(capsys, "merge", stores["b"], stores["a"], "--root", dst)
    assert code == 0 and "0 stages copied, 7 already there, 0 skipped as damaged; 0 runs added" in out, out
    assert snapshot(dst) == before
    assert {name: snapshot(stores[name]) for name in ("a", "b")} == sources  # the sources are only read


def test_a_stage_already_there_with_other_weights_is_counted_and_ours_kept(stores, tmp_path, capsys):
    """One stage id computed two ways (found by audit: local and SLURM sweeps chose other --batch/--sparse paths,
    and past float rounding over the epochs their weights differed; merge said nothing)."""
    dst, other = tmp_path / "dst", tmp_path / "other"
    shutil.copytree(stores["a"], dst)
    shutil.copytree(stores["a"], other)
    sid = stage_chain(CFG_SHORT)[(0, 1)]
    final = Store(other).final(sid)
    Store(other).save_final(sid, {k: v + 1e-6 if v.is_floating_point() else v for k, v in final["model"].items()},
                            final["mask"])  # other weights, as checked and recorded as any
    before = snapshot(dst)
    code, out, _ = cli(capsys, "merge", other, "--root", dst)
    assert code == 0 and "0 stages copied, 3 already there" in out
    assert "; 1 of the stages already there had other weights in a source (computed another way" in out, out
    assert snapshot(dst) == before  # ours kept


def test_a_damaged_file_in_a_source_is_reported_and_its_stage_skipped(stores, tmp_path, capsys):
    src, other = tmp_path / "b", tmp_path / "a"
    shutil.copytree(stores["b"], src)
    shutil.copytree(stores["a"], other)
    level3 = stage_chain(CFG_LONG)[(0, 3)]
    flip(src / "stages" / level3 / "final.pt")
    config = other / "runs" / CFG_SHORT.run_id / "config.json"
    config.write_bytes(config.read_bytes()[:40])
    dst = tmp_path / "merged"
    code, out, _ = cli(capsys, "merge", src, other, "--root", dst)
    assert code == 1
    assert (f"  skipped stage {level3} of {src}: final.pt is damaged (its checksum does not match: the bytes changed "
            "after it was written)") in out, out
    assert f"  skipped run {CFG_SHORT.run_id} of {other}: config.json is damaged (truncated: 40 of its " in out
    assert out.splitlines()[-1] == (f"merged 2 stores into {dst}: 3 stages copied, 3 already there, 1 skipped as "
                                    "damaged; 1 runs added, 1 skipped as damaged")
    assert not (dst / "stages" / level3).exists()  # never copied, not even in part
    assert listed(capsys, dst) == {CFG_LONG.run_id: ("partial", 3)}  # what dst has of it
    assert cli(capsys, "doctor", "--root", dst)[0] == 0  # sound: a partial run is no damage

    code, out, _ = cli(capsys, "merge", stores["b"], stores["a"], "--root", dst)  # the sound sources complete it
    assert code == 0 and "1 stages copied, 6 already there, 0 skipped as damaged; 1 runs added" in out, out
    assert listed(capsys, dst) == {CFG_SHORT.run_id: ("complete", 3), CFG_LONG.run_id: ("complete", 4)}


def test_a_partial_run_stays_partial_and_the_more_complete_status_is_kept(stores, tmp_path, capsys):
    dst = tmp_path / "merged"
    code, out, _ = cli(capsys, "merge", stores["p"], "--root", dst)
    assert code == 0 and out.splitlines()[-1] == (f"merged 1 store into {dst}: 3 stages copied, 0 already there, "
                                                  "0 skipped as damaged; 2 runs added; 1 unfinished stages left "
                                                  "(computed by the run that needs them)"), out
    assert listed(capsys, dst) == {CFG_SHORT.run_id: ("complete", 3), CFG_LONG.run_id: ("partial", 3)}
    rows = {r["run"]: r for r in json.loads(cli(capsys, "ls", "--root", dst, "--format", "json")[1])}
    assert rows[CFG_LONG.run_id]["error"] == "interrupted"  # its source's note, which only its index knew
    assert cli(capsys, "doctor", "--root", dst)[0] == 0
    assert cli(capsys, "merge", stores["b"], "--root", dst)[0] == 0  # the complete one: complete
    assert listed(capsys, dst)[CFG_LONG.run_id] == ("complete", 4)
    before = snapshot(dst)
    assert cli(capsys, "merge", stores["p"], "--root", dst)[0] == 0  # the partial one again: no step back
    assert listed(capsys, dst)[CFG_LONG.run_id] == ("complete", 4) and snapshot(dst) == before


def test_conflicting_data_fingerprints_are_refused_before_anything_is_written(stores, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(stores["b"], other)
    [record] = (other / "data").glob("*.json")
    write_json(record, {"data": "mnist1d", "sha256": "0" * 64})  # other data under the same key, checksum and all
    ours = stores["a"] / "data" / record.name
    dst = tmp_path / "merged"
    code, _, err = cli(capsys, "merge", stores["a"], other, "--root", dst)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"sparsedd: error: cannot merge: {ours} and {record} record different data for the same "
                          "data key (sha256 "), err
    assert not dst.exists()

    assert cli(capsys, "merge", stores["a"], "--root", dst)[0] == 0
    before = snapshot(dst)
    code, _, err = cli(capsys, "merge", other, "--root", dst)
    assert code == 2 and f"cannot merge: {dst / 'data' / record.name} and {record} record different data" in err
    record.write_text("{")  # a damaged record: which data its results were made with cannot be told
    code, _, err = cli(capsys, "merge", other, "--root", dst)
    assert code == 2 and err.count("\n") == 1 and f"{record} is damaged (truncated: 1 of its " in err, err
    assert snapshot(dst) == before


def test_bad_input_is_one_line_and_leaves_the_destination_untouched(stores, tmp_path, capsys):
    dst = tmp_path / "merged"
    assert cli(capsys, "merge", stores["a"], "--root", dst)[0] == 0
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "project" / "runs" / "notes").mkdir(parents=True)  # a project folder: its runs/ holds no run
    old = tmp_path / "old"
    shutil.copytree(stores["b"], old)
    write_json(old / "migrations.json", {"applied": []})  # written by an earlier version, not corrected yet
    before, a = snapshot(dst), stores["a"]
    for argv, says in [([tmp_path / "nowhere"], "does not exist"), ([a, tmp_path / "file"], "is a file, not a store"),
                       ([tmp_path / "empty"], "is not a sparsedd store"), ([a, dst], "is the --root store itself"),
                       ([tmp_path / "project"], "is not a sparsedd store"),  # (merged as an empty store before)
                       ([old], "was written by an earlier version and is not up to date yet")]:
        code, out, err = cli(capsys, "merge", *argv, "--root", dst)
        assert code == 2 and err.count("\n") == 1 and says in err and not out, (argv, err)
        assert snapshot(dst) == before
    code, _, err = cli(capsys, "merge", a, "--root", tmp_path / "file")
    assert code == 2 and err.count("\n") == 1 and "is a file, not a folder" in err
    with pytest.raises(SystemExit) as e:  # no SRC
        main(["merge", "--root", str(dst)])
    assert e.value.code == 2


def test_results_only_brings_the_results_and_a_run_computes_the_weights_again(stores, tmp_path, capsys):
    dst = tmp_path / "results"
    code, out, _ = cli(capsys, "merge", "--results-only", stores["a"], "--root", dst)
    assert code == 0 and out.splitlines()[-1] == (f"merged 1 store into {dst}: 3 stages copied, 0 already there, 0 "
                                                  "skipped as damaged; 1 runs added; results only: the weights stayed "
                                                  "in the sources"), out
    want = show(capsys, stores["a"], CFG_SHORT.run_id)
    assert show(capsys, dst, CFG_SHORT.run_id) == want
    assert listed(capsys, dst) == {CFG_SHORT.run_id: ("complete", 3)}
    assert not list(dst.rglob("*.pt"))  # no weights, no checkpoint
    code, out, _ = cli(capsys, "doctor", "--root", dst)
    assert code == 0 and "3 stages (3 complete; 3 of them results only)" in out and "index: ok" in out, out
    level1 = stage_chain(CFG_SHORT)[(0, 1)]
    with pytest.raises(SparseddError, match="holds results only .*its final.pt was left in the store it came from"):
        Store(dst).final(level1)
    stages = sorted(p.name for p in (dst / "stages").iterdir())
    code, _, err = cli(capsys, "analyze", CFG_SHORT.run_id, "landscape", "--root", dst, "--levels", "1")
    assert code == 2 and err.count("sparsedd: error:") == 1 and "holds results only" in err.splitlines()[-1], err
    assert sorted(p.name for p in (dst / "stages").iterdir()) == stages  # no empty analysis folder left behind

    full = tmp_path / "full"  # a merge without --results-only of the same results gives them their weights
    shutil.copytree(dst, full)
    code, out, _ = cli(capsys, "merge", stores["a"], "--root", full)
    assert code == 0 and "0 stages copied, 0 already there" in out and "3 results-only stages given their weights" \
        in out, out
    assert Store(full).check_done(level1) and not Store(full).results_only(level1)
    assert cli(capsys, "doctor", "--root", full)[1].startswith(f"store {full}: 3 stages (3 complete), 1 runs\n")

    code, _, err = cli(capsys, "run", "--root", dst, *FLAGS, *sets(SHORT))  # computes what it needs: every level
    assert code == 0 and err.count("holds results only (merged with --results-only): it is computed again") == 3
    assert show(capsys, dst, CFG_SHORT.run_id) == want  # the same curve, bit for bit on this CPU
    assert listed(capsys, dst) == {CFG_SHORT.run_id: ("complete", 3)}
    store = Store(dst)
    for sid in stage_chain(CFG_SHORT).values():
        assert store.check_done(sid) and not store.results_only(sid)
    code, out, _ = cli(capsys, "doctor", "--root", dst)
    assert code == 0 and "results only" not in out, out


def test_a_file_that_changes_while_it_is_copied_is_not_taken(tmp_path, monkeypatch):
    import sparsedd.store.files as files

    src, dest = (tmp_path / name / "0123456789abcdef" / "done.json" for name in ("src", "dst"))
    write_json(src, {"metrics": {"test_acc": 0.5}})
    files.copy_checked(src, dest)  # verified, renamed into place, its checksum bound to the same stage and name
    assert json.loads(files.checksum_path(dest).read_text())["of"] == "0123456789abcdef/done.json"
    assert files.read_json(dest) == {"metrics": {"test_acc": 0.5}}
    verify = files.verify

    def verified_then_changed(path):
        verify(path)
        path.write_bytes(path.read_bytes().replace(b"0.5", b"0.9"))

    monkeypatch.setattr(files, "verify", verified_then_changed)
    other = tmp_path / "other" / "0123456789abcdef" / "done.json"
    with pytest.raises(files.DamagedFile, match="its bytes changed while it was copied"):
        files.copy_checked(src, other)
    assert not other.exists() and not list(other.parent.iterdir())  # no temporary file left either
