"""``scadversarial audit`` / ``sad.tl._audit.audit``: a robustness report of a user's classifier, opened in a browser.

The browser is Debian's Chromium driven by playwright, launched as in ``tests/test_app_browser.py`` (only
loopback hosts resolve; never ``playwright install``).
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest

import scadversarial as sad
from scadversarial.attacks._protocol import ClassifierSpec
from scadversarial.cli import main
from scadversarial.tl._audit import AuditOptions, audit, load_classifier

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
]


@pytest.fixture(scope="module")
def saved68k(pipeline68k, tmp_path_factory):
    """pbmc68k_reduced with its sad classifier, written as `scadversarial run` does (h5ad + model directory)."""
    d = tmp_path_factory.mktemp("audit68k")
    a = pipeline68k.copy()
    sad.save_models(a, d / "models")
    a.write_h5ad(d / "adata.h5ad")
    clusters = list(a.obs["sad_label"].value_counts().index[:2].astype(str))
    return d, clusters


def _chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None)
    if path is None:
        pytest.skip("real-browser test skipped: Chromium is missing (`apt-get install -y chromium`; `make test` does)")
    return path


def test_audit_command_report_opens_in_browser(saved68k, tmp_path):
    """The command audits a sad model directory; the HTML page shows its figures in a real browser."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install '.[test]'")
    d, clusters = saved68k
    out = tmp_path / "audit"
    argv = [
        "audit",
        "--data",
        str(d / "adata.h5ad"),
        "--classifier",
        str(d / "models" / "classifier"),
        "--groupby",
        "sad_label",
        "--out",
        str(out),
        "--max-genes",
        "60",
        "--modifications",
        "perc99",
        "--clusters",
        ",".join(clusters),
        "--no-progress",
    ]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classifier"]["kind"] == "sad classifier"
    assert summary["n_genes_searched"] == 60
    assert [c["cluster"] for c in summary["clusters"]] == clusters
    mods = summary["clusters"][0]["modifications"]["perc99"]
    assert mods["max_change_n_kept"] + len(mods["signature"]) == 60
    assert set(summary["whitebox"]["flip_rate"]) == {"eps=0.1", "eps=0.5"}  # gradients exist: white-box rates
    assert all(0 <= v <= 1 for v in summary["whitebox"]["flip_rate"].values())
    assert len(summary["figures"]) == 3
    assert all((out / f).is_file() for f in summary["figures"])

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto((out / "report.html").resolve().as_uri())
            sync_api.expect(page.locator("h1")).to_have_text("Robustness audit")
            imgs = page.locator("figure img")
            assert imgs.count() == 3
            page.wait_for_function("[...document.images].every(i => i.complete)")
            sizes = page.evaluate("[...document.images].map(i => [i.naturalWidth, i.naturalHeight])")
            assert all(w > 100 and h > 100 for w, h in sizes), sizes  # every figure decoded
            assert page.locator("#clusters tr").count() == 1 + len(clusters)
            assert page.get_by_text("White-box attacks").is_visible()
        finally:
            browser.close()


def test_audit_from_python_with_a_callable(pbmc68k, tmp_path):
    """Any classifier from Python: a callable declaring its genes; no gradients, so no white-box check."""
    from sklearn.naive_bayes import GaussianNB

    a = pbmc68k.copy()
    genes = list(a.var_names[:80])
    X = a[:, genes].X
    nb = GaussianNB().fit(X.toarray() if hasattr(X, "toarray") else X, a.obs["bulk_labels"].astype(str))
    spec = ClassifierSpec(nb.predict_proba, classes=list(nb.classes_), genes=genes)
    clusters = ("CD14+ Monocyte", "CD19+ B")
    opts = AuditOptions(modifications=("perc1",), max_genes=40, clusters=clusters)
    rep = audit(a, groupby="bulk_labels", out=tmp_path / "r", classifier=spec, options=opts)
    assert rep.html.is_file()
    assert rep.json.is_file()
    assert len(rep.figures) == 2
    s = rep.summary
    assert s["classifier"]["kind"] == "callable"
    assert s["classifier"]["n_genes"] == 80
    assert s["n_genes_searched"] == 40
    assert "skipped" in s["whitebox"]
    assert "data:image/png;base64," in rep.html.read_text()
    assert a.uns["sad"]["audit"]["n_genes_searched"] == 40
    table = a.uns["sad"]["attacks"]["audit_overview"]["table"]
    assert set(np.asarray(table["cluster"]).astype(str)) == set(clusters)


def test_load_classifier_specs(tmp_path, monkeypatch):
    """Safe specs only: pickles refused with the alternative; module:function factories and objects imported."""
    for name in ("model.pkl", "model.joblib", "clf.pickle"):
        with pytest.raises(ValueError, match="pickles are refused.*module:function"):
            load_classifier(str(tmp_path / name))
    with pytest.raises(ValueError, match="neither a sad model directory nor an import path"):
        load_classifier("no_such_thing")
    with pytest.raises(FileNotFoundError, match="without config.json"):
        load_classifier(str(tmp_path))
    (tmp_path / "my_clf_mod.py").write_text(
        textwrap.dedent(
            """
            import numpy as np

            def make():
                return lambda X: np.full((len(X), 2), 0.5)

            def proba(X):
                return np.full((len(X), 2), 0.5)
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    made = load_classifier("my_clf_mod:make")  # a factory: called
    assert made(np.zeros((3, 4))).shape == (3, 2)
    fn = load_classifier("my_clf_mod:proba")  # a classifier itself (it needs X): returned as is
    assert fn.__name__ == "proba"
    with pytest.raises(ValueError, match="has no 'missing'"):
        load_classifier("my_clf_mod:missing")
    with pytest.raises(ImportError, match="Cannot import module 'not_a_module_xyz'"):
        load_classifier("not_a_module_xyz:f")
