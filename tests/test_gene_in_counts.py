"""One gene per cell raised in count space (``sad.tl.GeneInCounts``) on real PBMC3k cells, and the rules' ceiling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.test_detection import build_rules3k, counts_of
from tests.test_gene_at_clip import steepest_genes

import scadversarial as sad
from scadversarial.detection import RULES
from scadversarial.tl import GeneInCounts
from scadversarial.tl._space import other_counts, space_model, to_scaled


@pytest.fixture(scope="module")
def rules3k(pipeline3k):
    """PBMC3k, 600 training/validation and 200 test cells, the default detector (see ``build_rules3k``)."""
    return build_rules3k(pipeline3k)


def _raised(b, C: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows and genes where the attacked counts ``C`` differ from the cells' counts, and the clean counts."""
    C0 = counts_of(b)
    rows, genes = np.nonzero(C0 != C)
    return rows, genes, C0


def _calls(clf, Z) -> np.ndarray:
    return clf.predict_arrays(np.asarray(Z, dtype=np.float32))[0].argmax(1)


def _log_values(b, C: np.ndarray, rows: np.ndarray, genes: np.ndarray) -> np.ndarray:
    """The raised genes' log values in their cells' new libraries."""
    ts = float(sad.get.record(b, "preprocess")["params"]["target_sum"])
    library = C.sum(1) + other_counts(b, b.var_names)
    return np.log1p(C[rows, genes] * ts / library[rows])


def test_one_gene_per_cell_goes_up_on_the_count_lattice(rules3k):
    a, test = rules3k
    b = test.copy()
    clf = sad.get.model(a, "classifier")
    threat = GeneInCounts(candidates=5)
    C = threat.attacked_counts(b)
    assert threat(b) == {"sad_gene_in_counts": "scaled"}
    rows, genes, C0 = _raised(b, C)
    assert len(rows) > 0.9 * b.n_obs
    assert (np.bincount(rows, minlength=b.n_obs) <= 1).all()  # one gene per cell
    assert (C[rows, genes] > C0[rows, genes]).all()  # only upward
    assert (np.round(C) == C).all()
    assert (C >= 0).all()
    Z = np.asarray(b.layers["sad_gene_in_counts"])
    view = space_model(b, clf, "counts")
    np.testing.assert_allclose(Z[rows], to_scaled(view, C[rows], other_counts(b, b.var_names)[rows]), atol=1e-6)
    untouched = np.setdiff1d(np.arange(b.n_obs), rows)
    np.testing.assert_array_equal(Z[untouched], np.asarray(b.X)[untouched])
    # each raised gene reaches its clip, or holds the capped share where the clip needs (nearly) the whole library
    at_clip = Z[rows, genes] >= float(clf.transform.clip) * (1 - 1e-6)
    share = C[rows, genes] / (C[rows].sum(1) + other_counts(b, b.var_names)[rows])
    assert (at_clip | (share >= 0.98)).all()
    assert (_calls(clf, Z) != _calls(clf, b.X)).mean() > 0.1


def test_the_attacker_who_knows_the_rules_stays_below_the_ceiling(rules3k):
    a, test = rules3k
    b = test.copy()
    det = sad.get.model(a, "detector")
    clf = sad.get.model(a, "classifier")
    threat = GeneInCounts(det, candidates=5, key_added="knows")
    C = threat.attacked_counts(b)
    (layer,) = threat(b)
    rows, genes, C0 = _raised(b, C)
    assert len(rows) > 0.5 * b.n_obs
    assert (np.bincount(rows, minlength=b.n_obs) <= 1).all()
    assert (C[rows, genes] > C0[rows, genes]).all()
    assert (np.round(C) == C).all()
    log_max = float(det.rule_fit.log_max)
    assert (_log_values(b, C, rows, genes) <= log_max + 1e-9).all()
    # as large as the ceiling allows (or at the clip): one more UMI would be out of range
    up = C.copy()
    up[rows, genes] += 1
    Z = np.asarray(b.layers[layer])
    at_clip = Z[rows, genes] >= float(clf.transform.clip) * (1 - 1e-6)
    assert (at_clip | (_log_values(b, up, rows, genes) > log_max)).all()
    col = RULES.index("above_ceiling")
    above = det.rule_counts(torch.as_tensor(Z, dtype=torch.float32)).numpy()[:, col]
    clean = det.rule_counts(torch.as_tensor(np.asarray(b.X, dtype=np.float32))).numpy()[:, col]
    assert (above <= clean).all()  # no entry above the ceiling that the cell did not have
    sad.tl.detect(b, [layer])
    reason = b.obs[f"sad_reason_{layer}"].astype(str).to_numpy()
    assert not np.isin(reason[rows], ["out of range", "dominant gene"]).any()
    assert (_calls(clf, Z) != _calls(clf, b.X)).mean() > 0.05  # a real threat inside the rules' ceiling


def test_against_attacks_another_classifier_under_its_own_key(rules3k, pipeline3k):
    a, test = rules3k
    b = test.copy()
    other = pipeline3k.copy()
    sad.tl.train_classifier(other, "seurat_cell_type", max_epochs=2, random_state=3, key_added="other")
    clf = sad.get.model(other, "other")
    threat = GeneInCounts(candidates=1, key_added="k").against(clf)
    assert threat.classifier is clf
    C = threat.attacked_counts(b)
    (layer,) = threat(b)
    assert layer == "k_against"
    rows, genes, _ = _raised(b, C)
    assert len(rows) > 0
    np.testing.assert_array_equal(genes, steepest_genes(clf, b.X)[rows])  # that classifier's steepest gene


def test_cells_without_counts_or_target_sum_are_refused(rules3k):
    """(Bad options: ``test_gene_at_clip.test_bad_options_are_refused``, shared by both one-gene attackers.)"""
    _, test = rules3k
    b = test[:20].copy()
    del b.layers["counts"]
    with pytest.raises(KeyError, match="sad.pp.preprocess"):
        GeneInCounts()(b)
    b = test[:20].copy()
    b.uns["sad"]["preprocess"]["params"]["target_sum"] = None
    with pytest.raises(ValueError, match="target sum"):
        GeneInCounts()(b)


def test_a_benchmark_threat_rerun_against_the_hardened_classifier(rules3k):
    a, test = rules3k
    a = a.copy()
    det = sad.get.model(a, "detector")
    sad.tl.train_classifier(a, "seurat_cell_type", max_epochs=3, random_state=1, key_added="hardened")
    threat = GeneInCounts(det, candidates=3)
    opts = sad.tl.BenchmarkOptions(hardened_key="hardened")
    sad.tl.benchmark_detectors(a, attacks={"in counts": threat}, detectors=("sad",), benign={}, options=opts)
    tab = sad.get.benchmark_table(a).set_index(["threat", "kind"])
    assert tab.loc[("in counts", "attack"), "space"] == "scaled"
    b = test.copy()
    hard = sad.get.model(a, "hardened")
    (layer,) = threat.against(hard)(b)
    flip = _calls(hard, b.layers[layer]) != _calls(hard, b.X)
    np.testing.assert_allclose(tab.loc[("in counts", "hardened"), "flip_rate"], flip.mean())
