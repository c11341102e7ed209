"""The command line end to end on a tiny config, and bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sparsedd.cli import main


def snapshot(root: Path) -> dict:
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One tiny run with two seeds, shared by the read-only tests below."""
    from conftest import TINY

    root = tmp_path_factory.mktemp("cli")
    args = ["run", "--root", str(root), "--no-progress", "--seeds", "2"]
    for s in TINY:
        args += ["--set", s]
    assert main(args) == 0
    return root


def test_run_prints_id_and_table(finished, capsys, tiny_sets):
    args = ["run", "--root", str(finished), "--no-progress", "--seeds", "2"] + [a for s in tiny_sets for a in ("--set", s)]
    assert main(args) == 0  # everything done: it resumes to the same answer at once
    out = capsys.readouterr().out
    assert "run id:" in out and "sparsity" in out


def test_ls_json(finished, capsys):
    assert main(["ls", "--root", str(finished), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1
    r = rows[0]
    assert (r["status"], r["levels_done"], r["levels"], r["seeds"], r["preset"]) == ("complete", 3, 3, 2, "mnist1d-quick")
    assert main(["ls", "--root", str(finished)]) == 0
    assert r["run"] in capsys.readouterr().out


def test_tables_to_a_pipe_are_whole(finished, capsys, monkeypatch):
    """Without a terminal (here: pytest's capture), a table is as wide as it needs: rich's 80 columns cut the
    preset and summary with an ellipsis (found by audit, in logs and | grep)."""
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setenv("FORCE_COLOR", "1")  # (colours forced, as some CI does: rich then takes a pipe for a terminal)
    monkeypatch.setenv("SPARSEDD_ROOT", str(finished))
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    assert "…" not in out and "mnist1d-quick" in out and max(map(len, out.splitlines())) > 80


def test_show_json_shape(finished, capsys):
    main(["ls", "--root", str(finished), "--format", "json"])
    run_id = json.loads(capsys.readouterr().out)[0]["run"]
    assert main(["show", run_id[:6], "--root", str(finished), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["run"] == run_id and doc["config"]["data"]["name"] == "mnist1d" and doc["config"]["seeds"] == 2
    assert len(doc["levels"]) == 6  # 3 levels x 2 seeds
    keys = {"level", "seed", "sparsity", "test_acc", "test_acc_best", "train_acc_noisy", "train_acc_clean", "distance"}
    for row in doc["levels"]:
        assert keys <= set(row)
        for k in ("sparsity", "test_acc", "train_acc_noisy", "train_acc_clean"):
            assert 0 <= row[k] <= 1
    assert [r["level"] for r in doc["levels"] if r["seed"] == 0] == [0, 1, 2]
    assert doc["levels"][1]["sparsity"] == pytest.approx(0.2, abs=0.01)
    assert main(["show", run_id, "--root", str(finished)]) == 0
    assert "mean of 2 seeds" in capsys.readouterr().out
    assert main(["show", run_id, "--root", str(finished), "--format", "markdown"]) == 0
    md = capsys.readouterr().out.strip().splitlines()
    assert len(md) == 2 + 3 and md[0].startswith("| level | sparsity %") and md[3].startswith("| 1 | 20.")


def test_plot_writes_png(finished, tmp_path, capsys):
    main(["ls", "--root", str(finished), "--format", "json"])
    run_id = json.loads(capsys.readouterr().out)[0]["run"]
    out = tmp_path / "curve.png"
    assert main(["plot", run_id, "--root", str(finished), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


@pytest.mark.parametrize("args, words", [
    (["run", "--preset", "nope"], "unknown preset"),
    (["run", "--set", "train.lrr=1"], "unknown config key"),
    (["run", "--set", "data.noise=2"], "data.noise must be in [0, 1]"),
    (["run", "--set", "prune.levels=-1"], "prune.levels must be"),
    (["run", "--set", "retrain.mode=rewind"], "unknown retrain.mode"),
    (["run", "--seeds", "0"], "seeds must be"),
    (["run", "--config", "MALFORMED"], "malformed TOML"),
    (["run", "--set", "retrain.rewind_iteration=100000000", "--set", "data.num_train=240",
      "--set", "data.num_test=120", "--set", "train.epochs=1"], "past the end of dense training"),
    (["run", "--preset", "paper-mnist-lenet", "--data-dir", "EMPTY"], "by hand"),
    (["show", "deadbeef"], "no run 'deadbeef'"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_exit_2_one_line_store_untouched(finished, tmp_path, capsys, monkeypatch, args, words):
    import sparsedd.data.mnist as mnist

    monkeypatch.setattr(mnist, "MIRRORS", ["http://127.0.0.1:9/"])  # never the real network
    monkeypatch.delenv("SPARSEDD_DATA", raising=False)
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\n")
    (tmp_path / "empty").mkdir()
    args = [str(bad) if a == "MALFORMED" else str(tmp_path / "empty") if a == "EMPTY" else a for a in args]
    before = snapshot(finished)
    if args[0] != "frobnicate":
        args += ["--root", str(finished)]
    with pytest.raises(SystemExit) if args[0] == "frobnicate" else _nullcontext() as exc:
        code = main(args)
    code = exc.value.code if args[0] == "frobnicate" else code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert words in err and len(err.splitlines()) == 1, err
    assert snapshot(finished) == before


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def test_console_script_and_default_preset_parse(tmp_path):
    """The installed `sparsedd` entry point runs (help) as a real process."""
    exe = Path(sys.executable).with_name("sparsedd")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "sparsedd.cli"]
    res = subprocess.run(cmd + ["run", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "--preset" in res.stdout and "mnist1d-quick" in res.stdout


def test_an_error_of_the_machine_is_one_line_too(monkeypatch, capsys, tmp_path):
    import errno

    from sparsedd import cli

    def failing(code, words):
        def cmd(args):
            raise OSError(code, words, str(tmp_path / "stages" / "x.pt"))
        return cmd

    monkeypatch.setattr(cli, "cmd_ls", failing(errno.ENOSPC, "No space left on device"))
    assert cli.main(["ls", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("sparsedd: error: the disk is full at ") and "x.pt; free space and run the same" in err
    monkeypatch.setattr(cli, "cmd_ls", failing(errno.EACCES, "Permission denied"))
    assert cli.main(["ls", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sparsedd: error: Permission denied: ") and "x.pt" in err
