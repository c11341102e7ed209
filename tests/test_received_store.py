"""Issue 13, point 6: a report made from a store received from elsewhere. Run ids read from the index
are checked as hex before they name a file or enter the page, and everything else from the store is
escaped in the page."""

import json
import re
import shutil
import sqlite3

import pytest

import sparsedd
from sparsedd.cli import main
from sparsedd.store import Store
from test_cli import snapshot

SCRIPT_ID = 'zz"><img src=x onerror=alert(3)>'
ESCAPE_ID = "../../escaped"
HOSTILE = "<img src=x onerror=alert(1)> $\\frac{1"  # HTML, and mathtext that matplotlib would fail to parse


@pytest.fixture(scope="module")
def received(tmp_path_factory):
    """A real store, then edited as a hostile sender would: index rows for runs with the ids of the issue
    (linked to the real stages), markup in the real run's config, preset and error, and an analysis
    result whose key is markup."""
    from conftest import TINY

    base = tmp_path_factory.mktemp("received")
    root = base / "deep" / "store"
    assert main(["run", "--root", str(root), "--no-progress", *[a for s in TINY for a in ("--set", s)]]) == 0
    [run_id] = Store(root).index.run_ids()
    path = root / "runs" / run_id / "config.json"
    doc = json.loads(path.read_text())
    doc["config"]["data"]["name"] = doc["config"]["model"]["name"] = HOSTILE
    path.write_text(json.dumps(doc))
    con = sqlite3.connect(root / "index.sqlite")
    with con:
        config, seeds, levels = con.execute("SELECT config, seeds, levels FROM runs WHERE run_id=?", (run_id,)).fetchone()
        con.execute("UPDATE runs SET preset=?, error=? WHERE run_id=?", (HOSTILE, HOSTILE, run_id))
        for bad in (SCRIPT_ID, ESCAPE_ID):
            con.execute("INSERT INTO runs VALUES (?, ?, ?, ?, ?, 'complete', NULL, 0, 0)",
                        (bad, config, "p", seeds, levels))
            con.execute("INSERT INTO run_stages SELECT ?, seed, level, stage_id FROM run_stages WHERE run_id=?",
                        (bad, run_id))
        level1 = con.execute("SELECT stage_id FROM run_stages WHERE run_id=? AND level=1", (run_id,)).fetchone()[0]
        con.execute("INSERT INTO analyses VALUES (?, ?, 'redense', ?, ?)",
                    ("a" * 16, level1, json.dumps({"epochs": 1}), json.dumps({"test_acc": 0.5, HOSTILE: 1.0})))
    con.close()
    return base, root, run_id


def test_ls_and_load_leave_out_rows_whose_run_id_is_not_an_id(received, capsys):
    _, root, run_id = received
    assert sparsedd.load(root).runs["run_id"].tolist() == [run_id]
    assert set(sparsedd.load(root).levels["run_id"]) == {run_id}
    capsys.readouterr()
    assert main(["ls", "--root", str(root), "--format", "json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["run"] == run_id and row["preset"] == HOSTILE  # JSON carries it as data
    assert main(["ls", "--root", str(root)]) == 0  # the table does not read markup in it
    assert "img src=x" in capsys.readouterr().out


@pytest.mark.parametrize("asked", [ESCAPE_ID, SCRIPT_ID, "zz", ".."])
def test_a_report_of_an_id_that_is_not_an_id_writes_nothing(received, capsys, asked):
    base, root, _ = received
    before = snapshot(base)
    out = base / "out" / "report"
    capsys.readouterr()
    assert main(["report", asked, "--root", str(root), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no run" in err
    assert snapshot(base) == before and not (base / "out").exists() and not (base / "deep" / "escaped").exists()


def test_the_report_escapes_what_the_store_holds_and_writes_only_inside_out(received, tmp_path, capsys):
    base, root, run_id = received
    out = base / "out" / "report"
    before = {p for p in base.rglob("*") if out not in p.parents}
    assert main(["report", run_id, "--root", str(root), "--out", str(out)]) == 0
    assert {p for p in base.rglob("*") if out not in p.parents and p != out} - before <= {base / "out"}
    page = (out / "index.html").read_text()
    assert "<img src=x" not in page and "onerror=alert" not in page.replace("&lt;img src=x onerror=alert", "")
    assert "&lt;img src=x onerror=alert(1)&gt;" in page  # shown, as text
    srcs = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert srcs and all(re.fullmatch(r"(figures|tables)/[0-9a-f]{16}-[a-z]+\.(png|pdf|csv)", s) for s in srcs), srcs
    assert (out / "figures" / f"{run_id}-redense.png").exists()  # the foreign analysis is drawn, its key escaped
    shutil.rmtree(base / "out")


def test_analyze_refuses_a_stage_id_from_the_index_that_is_not_an_id(received, tmp_path, capsys):
    _, root, run_id = received
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    (copy / "runs" / run_id / "config.json").unlink()  # the index's copy of the config is a valid one
    con = sqlite3.connect(copy / "index.sqlite")
    with con:
        con.execute("UPDATE run_stages SET stage_id='../../../tmp/x' WHERE run_id=? AND level=1", (run_id,))
    con.close()
    capsys.readouterr()
    assert main(["analyze", run_id, "redense", "--root", str(copy), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a stage id; the index is damaged" in err


def test_report_file_names_are_checked():
    from sparsedd.report.html import _file_name

    assert _file_name("0123456789abcdef-curve") == "0123456789abcdef-curve"
    for bad in ("../x", "a/b", 'x"><img', "", ".hidden"):
        with pytest.raises(ValueError):
            _file_name(bad)
