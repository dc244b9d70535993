"""Execute the tutorials (small settings through ``SAD_TUTORIAL_FAST=1``) so that they cannot rot.

The same check by hand: ``SAD_TUTORIAL_FAST=1 pytest --nbmake tutorials/``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((REPO / "tutorials").glob("*.ipynb"))
NEEDS_PBMC3K = {"02_pbmc3k.ipynb"}


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_executes(path: Path, monkeypatch, request):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    if path.name in NEEDS_PBMC3K:
        request.getfixturevalue("pbmc3k_path")  # fails (never skips) when the shipped tests/data copy is missing
    monkeypatch.setenv("SAD_TUTORIAL_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].cell_type == "markdown", "first cell must be a '# Title'"
    assert nb.cells[0].source.startswith("# "), "first cell must be a '# Title'"
    assert any(o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])), (
        "commit the notebook with outputs"
    )
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()  # raises CellExecutionError with the failing cell and traceback
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert os.environ["SAD_TUTORIAL_FAST"] == "1"
