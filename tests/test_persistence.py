"""Models are referenced from .uns, saved as safetensors + JSON, and come back in a new process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

import scadversarial as sad
from scadversarial.models import load_model


def in_new_process(script: str, *, cwd: str | None = None) -> str:
    """Run ``script`` (dedented) in a fresh Python process; its standard output."""
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], check=True, capture_output=True, text=True, cwd=cwd
    )
    return run.stdout


def test_h5ad_after_every_step(pbmc68k, tmp_path):
    a = pbmc68k.copy()
    steps = [
        lambda: sad.pp.preprocess(a),
        lambda: sad.pp.pseudo_labels(a, n_clusters=4),
        lambda: sad.pp.split(a),
        lambda: sad.tl.train_classifier(a, max_epochs=2),
        lambda: sad.tl.predict(a),
        lambda: sad.tl.attack(a, eps=(0.1,)),
        lambda: sad.save_models(a, tmp_path / "models"),
    ]
    for i, step in enumerate(steps):
        step()
        a.write_h5ad(tmp_path / f"step{i}.h5ad")
        ad.read_h5ad(tmp_path / f"step{i}.h5ad")


def test_new_process_reproduces_predictions(pipeline68k, tmp_path):
    a = pipeline68k.copy()
    sad.save_models(a, tmp_path / "models")
    a.write_h5ad(tmp_path / "a.h5ad")
    expected = a.obsm["sad_proba"]
    script = f"""
        import anndata as ad, numpy as np, scadversarial as sad
        sad.settings.progress = False
        a = ad.read_h5ad({str(tmp_path / "a.h5ad")!r})
        del a.obsm["sad_proba"], a.obs["sad_pred"]
        sad.load_models(a, {str(tmp_path / "models")!r})
        sad.tl.predict(a)
        np.save({str(tmp_path / "proba.npy")!r}, a.obsm["sad_proba"])
    """
    in_new_process(script)
    np.testing.assert_array_equal(np.load(tmp_path / "proba.npy"), expected)


def test_saved_directory_is_pickle_free(pipeline68k, tmp_path):
    a = pipeline68k.copy()
    sad.save_models(a, tmp_path / "m")
    files = sorted(p.name for p in (tmp_path / "m" / "classifier").iterdir())
    assert files == ["config.json", "genes.txt", "model.safetensors"]
    meta = json.loads((tmp_path / "m" / "classifier" / "config.json").read_text())
    assert meta["class"] == "CellClassifier"
    genes = (tmp_path / "m" / "classifier" / "genes.txt").read_text().split()
    assert genes == list(a.var_names)


def test_load_refuses_unknown_class_and_corrupt_files(pipeline68k, tmp_path):
    a = pipeline68k.copy()
    sad.save_models(a, tmp_path / "m")
    d = tmp_path / "m" / "classifier"
    meta = json.loads((d / "config.json").read_text())
    meta["class"] = "os.system"
    (d / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="unknown class"):
        load_model(d)
    meta["class"] = "CellClassifier"
    (d / "config.json").write_text(json.dumps(meta))
    (d / "model.safetensors").write_bytes(b"\x80\x04not a tensor file")
    with pytest.raises(ValueError, match="corrupt"):
        load_model(d)
    with pytest.raises(FileNotFoundError, match="save_models"):
        load_model(tmp_path / "nothing")


def test_load_checks_model_identity(pipeline68k, tmp_path):
    a = pipeline68k.copy()
    sad.save_models(a, tmp_path / "m")
    b = pipeline68k.copy()
    sad.tl.train_classifier(b, max_epochs=1)  # another model, another id
    with pytest.raises(ValueError, match="another model"):
        sad.load_models(b, tmp_path / "m")


def test_get_model_needs_load_in_new_process(pipeline68k, tmp_path):
    a = pipeline68k.copy()
    a.write_h5ad(tmp_path / "a.h5ad")  # not saved: the reference has no path
    script = f"""
        import anndata as ad, scadversarial as sad
        a = ad.read_h5ad({str(tmp_path / "a.h5ad")!r})
        try:
            sad.tl.predict(a)
        except KeyError as e:
            print("KEYERROR", e)
    """
    out = in_new_process(script)
    assert "KEYERROR" in out
    assert "load_models" in out


def test_load_models_on_a_backed_anndata_then_detect(pipeline68k, tmp_path):
    """load_models reads only .uns, so a backed AnnData (which detect scores chunk by chunk) is accepted."""
    from scadversarial.detection import DetectorConfig

    a = pipeline68k.copy()
    sad.tl.train_detector(a, random_state=0, config=DetectorConfig(triplet_epochs=2, epochs=4))
    sad.tl.detect(a)
    sad.save_models(a, tmp_path / "models")
    a.write_h5ad(tmp_path / "a.h5ad")
    script = f"""
        import anndata as ad, numpy as np, scadversarial as sad
        sad.settings.progress = False
        b = ad.read_h5ad({str(tmp_path / "a.h5ad")!r}, backed="r")
        assert sorted(sad.load_models(b)) == ["classifier", "detector"]
        sad.tl.detect(b)
        np.save({str(tmp_path / "score.npy")!r}, b.obs["sad_score"].to_numpy())
    """
    in_new_process(script)
    np.testing.assert_allclose(np.load(tmp_path / "score.npy"), a.obs["sad_score"].to_numpy(), rtol=1e-4, atol=1e-6)


def test_saved_paths_are_absolute_and_lead_back_from_elsewhere(pipeline68k, tmp_path, monkeypatch):
    # `scadversarial run --out out` saves to a relative folder; a process started elsewhere must find the models
    a = pipeline68k.copy()
    monkeypatch.chdir(tmp_path)
    sad.save_models(a, "out/models")
    ref = a.uns["sad"]["classifier"]["model"]
    assert Path(ref["path"]).is_absolute()
    assert Path(ref["path"]) == tmp_path / "out" / "models" / "classifier"
    a.write_h5ad(tmp_path / "a.h5ad")
    script = f"""
        import anndata as ad, numpy as np, scadversarial as sad
        b = ad.read_h5ad({str(tmp_path / "a.h5ad")!r})
        sad.tl.predict(b)
        np.save({str(tmp_path / "p.npy")!r}, b.obsm["sad_proba"])
    """
    in_new_process(script, cwd="/")
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), a.obsm["sad_proba"], rtol=1e-5, atol=1e-6)


def test_save_models_takes_a_backed_anndata(pipeline68k, tmp_path):
    a = pipeline68k.copy()
    a.write_h5ad(tmp_path / "a.h5ad")
    b = ad.read_h5ad(tmp_path / "a.h5ad", backed="r")
    sad.get.model(a)  # registered in this process under the id b references
    assert sad.save_models(b, tmp_path / "models") == tmp_path / "models"
    assert (tmp_path / "models" / "classifier" / "config.json").is_file()
    assert b.uns["sad"]["classifier"]["model"]["path"] == str(tmp_path / "models" / "classifier")


def test_get_model_refuses_a_saved_model_of_other_genes(pipeline68k, tmp_path):
    # a model loaded lazily from its stored path is checked against the genes the AnnData recorded
    a = pipeline68k.copy()
    sad.save_models(a, tmp_path / "models")
    genes = tmp_path / "models" / "classifier" / "genes.txt"
    lines = genes.read_text(encoding="utf-8").splitlines()
    lines[0], lines[1] = lines[1], lines[0]
    genes.write_text("\n".join(lines) + "\n", encoding="utf-8")
    a.write_h5ad(tmp_path / "a.h5ad")
    script = f"""
        import anndata as ad, scadversarial as sad
        b = ad.read_h5ad({str(tmp_path / "a.h5ad")!r})
        try:
            sad.get.model(b)
        except ValueError as e:
            print("refused:", e)
    """
    out = in_new_process(script)
    assert "refused" in out
