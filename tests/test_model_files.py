"""The files of a saved model: the gene list's hash and encoding, missing files, and registry ids.

Small untrained classifiers stand for trained ones: what is tested is the bundle and the registry,
not what the model learned.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import scadversarial as sad
from scadversarial.models import load_model, save_model
from scadversarial.models._io import genes_sha256, lookup, register
from scadversarial.models.classifier import CellClassifier

GENES = ["Gal-α", "Cd4", "Nkx2-5", "ACTB"]


def _model(genes=GENES) -> CellClassifier:
    torch.manual_seed(0)
    return CellClassifier(genes, ["a", "b"])


def _meta(path: Path) -> dict:
    return json.loads((path / "config.json").read_text(encoding="utf-8"))


def _write_meta(path: Path, meta: dict) -> None:
    (path / "config.json").write_text(json.dumps(meta), encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# genes.txt: hashed, UTF-8, required
def test_gene_list_is_hashed_and_checked(tmp_path):
    path = save_model(_model(), tmp_path / "m")
    assert _meta(path)["genes_sha256"] == genes_sha256(GENES)
    assert load_model(path, register=False).var_names == GENES
    lines = (path / "genes.txt").read_text(encoding="utf-8").splitlines()
    lines[0], lines[1] = lines[1], lines[0]  # two genes swapped: every column reads another gene
    (path / "genes.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"genes\.txt.*SHA-256"):
        load_model(path, register=False)


def test_bundle_saved_before_the_gene_hash_loads(tmp_path):
    """A bundle without ``genes_sha256`` (saved by an earlier version) is accepted as read."""
    path = save_model(_model(), tmp_path / "m")
    meta = _meta(path)
    del meta["genes_sha256"]
    _write_meta(path, meta)
    assert load_model(path, register=False).var_names == GENES


def test_gene_list_is_utf8_whatever_the_locale(tmp_path):
    path = save_model(_model(), tmp_path / "m")
    assert (path / "genes.txt").read_bytes().decode("utf-8").splitlines() == GENES
    # an ASCII locale without UTF-8 mode: the locale encoding cannot write 'α'
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    code = (
        "import json, sys\n"
        "from scadversarial.models import load_model, save_model\n"
        "from scadversarial.models.classifier import CellClassifier\n"
        "genes = json.loads(sys.argv[2])\n"
        "save_model(CellClassifier(genes, ['a', 'b']), sys.argv[1] + '/c')\n"
        "assert load_model(sys.argv[1] + '/c').var_names == genes\n"
        "assert load_model(sys.argv[1] + '/m').var_names == genes\n"
    )
    # the genes as ASCII JSON: the command line itself is decoded with the locale
    args = [sys.executable, "-c", code, str(tmp_path), json.dumps(GENES)]
    run = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert load_model(tmp_path / "c", register=False).var_names == GENES  # saved under C, read here


def test_missing_gene_list_is_named(tmp_path):
    path = save_model(_model(), tmp_path / "m")
    (path / "genes.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"genes\.txt"):
        load_model(path, register=False)
    meta = _meta(path)
    del meta["genes_sha256"]  # a bundle of an earlier version: the class still needs its genes
    _write_meta(path, meta)
    with pytest.raises(FileNotFoundError, match=r"genes\.txt"):
        load_model(path, register=False)


# ----------------------------------------------------------------------------------------------
# the registry: a refused model is not registered, a copy is another model
def test_refused_model_is_not_registered(tmp_path):
    live = _model()
    model_id = register(live)
    other = _model(["G1", "G2", "G3", "G4"])
    path = save_model(other, tmp_path / "other")
    meta = _meta(path)
    meta["id"] = model_id  # the same id, other genes: models of another run
    _write_meta(path, meta)
    with pytest.raises(ValueError, match="other genes"):
        load_model(path, expected_id=model_id, expected_genes_sha256=genes_sha256(GENES))
    assert lookup(model_id) is live
    # checks passed but register=False: the registry is left alone, the model keeps its saved id
    loaded = load_model(path, expected_id=model_id, register=False)
    assert lookup(model_id) is live
    assert loaded._sad_id == model_id
    # and the default registers it under its saved id, replacing the entry
    loaded = load_model(path, expected_id=model_id, expected_genes_sha256=genes_sha256(other.var_names))
    assert lookup(model_id) is loaded


def test_deep_copy_is_another_model(tmp_path):
    clf = _model()
    model_id = register(clf)
    twin = copy.deepcopy(clf)
    assert not hasattr(twin, "_sad_id")
    for (k, v), (k2, v2) in zip(clf.state_dict().items(), twin.state_dict().items(), strict=True):
        assert k == k2
        assert torch.equal(v, v2)
        assert v.data_ptr() != v2.data_ptr()
    with torch.no_grad():
        for p in twin.parameters():
            p.add_(1.0)
    save_model(twin, tmp_path / "twin")
    assert lookup(model_id) is clf
    assert twin._sad_id != model_id
    assert _meta(tmp_path / "twin")["id"] == twin._sad_id
    # a shallow copy holds the id of another live model: registering it gives it a new one
    shallow = copy.copy(clf)
    assert register(shallow) != model_id
    assert lookup(model_id) is clf
    assert register(clf) == model_id  # the model itself keeps its id


def test_saving_a_copy_keeps_the_anndata_model(pipeline68k, tmp_path):
    a = pipeline68k.copy()
    clf = sad.get.model(a)
    other = copy.deepcopy(clf)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_model(other, tmp_path / "other")
    assert sad.get.model(a) is clf
