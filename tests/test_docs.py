"""The documentation builds with warnings as errors, and documents every public function."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import scadversarial as sad

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


@pytest.fixture(scope="module")
def html(tmp_path_factory) -> Path:
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_nb")
    out = tmp_path_factory.mktemp("docs")
    cmd = [
        sys.executable,
        "-m",
        "sphinx",
        "-W",
        "--keep-going",
        "-q",
        "-b",
        "html",
        "-d",
        str(out / "doctrees"),
        str(DOCS),
        str(out / "html"),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600, check=False)
    assert res.returncode == 0, f"sphinx-build -W failed:\n{res.stderr[-6000:]}"
    return out / "html"


def test_docs_build_without_warnings(html):
    assert (html / "index.html").is_file()
    for page in ("threat_model", "anndata_keys", "api"):
        assert (html / f"{page}.html").is_file()


def test_every_public_function_has_an_api_page(html):
    for mod in (sad.pp, sad.tl, sad.pl, sad.datasets):
        for name in mod.__all__ if hasattr(mod, "__all__") else [n for n in dir(mod) if not n.startswith("_")]:
            obj = getattr(mod, name)
            if callable(obj) and not isinstance(obj, type):
                page = html / "generated" / f"{mod.__name__}.{name}.html"
                assert page.is_file(), f"no API page for {mod.__name__}.{name}"
    text = (html / "generated" / "scadversarial.tl.train_classifier.html").read_text()
    assert "sad_pred" in text
    assert "X_sad_embedding" in text


def test_tutorials_rendered_with_figures(html):
    notebooks = sorted((REPO / "tutorials").glob("*.ipynb"))
    assert notebooks
    for nb in notebooks:
        page = html / "tutorials" / f"{nb.stem}.html"
        assert page.is_file(), f"tutorial {nb.name} not rendered"
        assert "<img" in page.read_text(), f"tutorial {nb.name} rendered without its figures (commit it with outputs)"
