"""The files of a saved model: the gene list's hash and encoding, missing files, and registry ids.

Small untrained classifiers stand for trained ones: what is tested is the bundle and the registry,
not what the model learned.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

import scadversarial as sad
from scadversarial.models import save_model
from scadversarial.models._io import lookup, register
from scadversarial.models.classifier import CellClassifier

GENES = ["Gal-α", "Cd4", "Nkx2-5", "ACTB"]


def _model(genes=GENES) -> CellClassifier:
    torch.manual_seed(0)
    return CellClassifier(genes, ["a", "b"])


def _meta(path: Path) -> dict:
    return json.loads((path / "config.json").read_text(encoding="utf-8"))


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
