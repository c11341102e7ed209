"""The report end to end on a tiny run, checked in a real headless Chromium."""

import json
import os
import re
import shutil
import subprocess

import pytest

from sparsedd.cli import main


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from conftest import TINY

    root = tmp_path_factory.mktemp("report")
    for mode in ("weight-rewind", "lr-rewind"):
        args = ["run", "--root", str(root), "--no-progress", "--set", f"retrain.mode={mode}"]
        assert main(args + [a for s in TINY + ["prune.levels=3"] for a in ("--set", s)]) == 0
    runs = sorted(p.name for p in (root / "runs").iterdir())
    ticket = next(r for r in runs if json.loads((root / "runs" / r / "config.json").read_text())
                  ["config"]["retrain"]["mode"] == "weight-rewind")
    for kind, extra in (("redense", ["--set", "epochs=2"]), ("interpolate", ["--set", "step=0.5"]),
                        ("landscape", ["--set", "points=5"]), ("sharpness", ["--set", "subsample=64", "--set", "iters=5",
                                                                             "--set", "trace_samples=2"]),
                        ("reinit", [])):
        assert main(["analyze", ticket, kind, "--root", str(root), "--no-progress", *extra]) == 0
    out = root / "report"
    assert main(["report", *runs, "--root", str(root), "--out", str(out)]) == 0
    return out, ticket


def test_report_files(report):
    out, ticket = report
    page = (out / "index.html").read_text()
    for kind in ("curve", "distance", "redense", "interpolate", "landscape", "sharpness", "reinit"):
        for ext in ("png", "pdf"):
            f = out / "figures" / f"{ticket}-{kind}.{ext}"
            assert f.stat().st_size > 5000, f
        assert f"figures/{ticket}-{kind}.png" in page
    assert (out / "figures" / "overlay.png").exists() and "retrain.mode=lr-rewind" in page
    assert (out / "tables" / f"{ticket}-levels.csv").read_text().startswith("seed,")
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert srcs and all((out / s).exists() for s in srcs)
    assert "http://" not in page and "https://" not in page  # viewable offline


def test_report_in_headless_chromium(report, tmp_path):
    exe = chromium()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: scripts/test.sh installs Debian's chromium package")
        pytest.skip("chromium not installed (scripts/test.sh installs it)")
    out, _ = report
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000"]
    url = (out / "index.html").resolve().as_uri()
    dom = subprocess.run([exe, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=180).stdout
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:500]
    attrs = dict(re.findall(r'data-(\w+)="([^"]*)"', body.group(1)))
    assert attrs.get("ready") == "yes", attrs
    assert int(attrs["images"]) >= 9
    assert json.loads(attrs["broken"].replace("&quot;", '"')) == []
    assert json.loads(attrs["errors"].replace("&quot;", '"')) == []
    shot = tmp_path / "shot.png"
    subprocess.run([exe, *flags, f"--screenshot={shot}", "--window-size=1200,2000", url],
                   capture_output=True, timeout=180)
    assert shot.read_bytes()[:4] == b"\x89PNG"


def test_tensorboard_event_files(report):
    pytest.importorskip("tensorboard")  # the dev extra installs it; the test set-up always has it
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, ticket = report
    folder = out / "tensorboard" / f"{ticket}-seed0"
    acc = EventAccumulator(str(folder))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "levels/test_acc" in tags and "level_00/test_acc" in tags
    assert [e.step for e in acc.Scalars("levels/sparsity")] == [0, 1, 2, 3]
    assert [e.step for e in acc.Scalars("level_01/train_loss_running")] == [1, 2, 3]


def test_a_shallow_curve_gets_sparsity_ticks_too():
    """(found by audit) a sweep pruned to 44% showed one tick, '0', on its sparsity axis."""
    import math

    from sparsedd.report.plots import _ticks

    assert _ticks(-math.log(1 - 0.44))[1] == ["0", "10", "20", "30", "40"]
    assert _ticks(-math.log(1 - 0.995))[1] == ["0", "50", "80", "90", "95", "98", "99", "99.5"]  # deep: as before
