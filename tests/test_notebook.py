"""Issue 26.7: docs/tutorial.ipynb runs (run, load, plot, analyze, claims, export) with the installed
version, so it never goes stale; its export gives back the stored test accuracy."""

import re
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "tutorial.ipynb"


def test_the_tutorial_notebook_runs(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()  # raises on a failing cell
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    found = re.search(r"test accuracy ([0-9.]+) \(stored: ([0-9.]+)\)", text)
    assert found and found.group(1) == found.group(2)
    assert (tmp_path / "curve.png").stat().st_size > 1000 and (tmp_path / "level4.safetensors").exists()
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, "the plot cell shows the curve"
