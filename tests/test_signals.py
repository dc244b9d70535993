"""Count-model, stability and kNN signals and their ensemble on real PBMC3k cells (fit on train, calibrate on val)."""

from __future__ import annotations

import numpy as np
import pytest

import scadversarial as sad
from scadversarial.detection import (
    CountModelDetector,
    EnsembleDetector,
    KNNConsistency,
    PlausibilityRules,
    ThinningStability,
    fit_ensemble,
    recover_counts,
)
from scadversarial.detection._rules import Transform

TARGET_FPR = 0.05


@pytest.fixture(scope="module")
def data3k(pipeline3k):
    a = pipeline3k
    split = a.obs["sad_split"].astype(str).to_numpy()
    X = np.asarray(a.X, dtype=np.float32)
    y = a.obs["seurat_cell_type"].astype(str).to_numpy()
    return sad.tl.get_model(a).eval(), X, y, split


def test_counts_recovered_from_scaled_input_equal_the_counts(data3k, pipeline3k):
    clf, X, _, split = data3k
    rows = np.flatnonzero(split == "test")[:200]
    rules = PlausibilityRules().fit(clf, X[split == "train"])
    rc = recover_counts(Transform.of(clf), X[rows], rules.zero_bound_)
    C = pipeline3k.layers["counts"][rows]
    C = np.asarray(C.toarray() if hasattr(C, "toarray") else C)
    unclipped = np.abs(X[rows]) < 10
    assert (rc.counts[unclipped] == C[unclipped]).mean() > 0.9999


@pytest.mark.parametrize("statistic", ["relative", "deviance"])
def test_count_model_fits_and_scores_finite(data3k, statistic):
    clf, X, y, split = data3k
    tr = split == "train"
    det = CountModelDetector(statistic=statistic).fit(clf, X[tr], y=y[tr])
    assert det.rates_.shape == (len(clf.classes), clf.n_genes)
    assert (det.rates_ > 0).all()
    s = det.score(X[split == "test"][:100])
    assert s.shape == (100,)
    assert np.isfinite(s).all()
    if statistic == "relative":
        assert (s >= 0).all()
        ll = det.loglik(X[split == "test"][:5])
        assert ll.shape == (5, len(clf.classes))
        assert np.isfinite(ll).all()


def test_count_model_sees_counts_moved_across_the_boundary(data3k, pipeline3k):
    """+-1 UMI on expressed genes (the count-space attack) raises the deviance above that of clean cells."""
    clf, X, y, split = data3k
    tr = split == "train"
    det = CountModelDetector(statistic="deviance").fit(clf, X[tr], y=y[tr])
    cells = pipeline3k[np.flatnonzero(split == "test")[:60]].copy()
    sad.tl.attack(cells, method="pgd", eps=1.0, space="counts", constraint="counts", mask="counts", key_added="c1")
    Z = sad.tl.scaled_matrix(cells, clf, cells.uns["sad"]["attacks"]["c1"]["layers"][0])
    clean = det.score(sad.tl.scaled_matrix(cells, clf))
    assert np.median(det.score(Z)) > np.median(clean) + 1.0


def test_stability_signals_score_in_unit_interval(data3k):
    clf, X, y, split = data3k
    tr = split == "train"
    Xt = X[split == "test"][:100]
    thin = ThinningStability(n_draws=2).fit(clf, X[tr], rng=0)
    s1, s2 = thin.score(Xt), thin.score(Xt)
    np.testing.assert_array_equal(s1, s2)  # draws seeded at fit: the same score on every call
    # ... whatever cells a cell is scored with: each cell draws from its own stream (float32 forward: 1e-6)
    order = np.random.default_rng(0).permutation(len(Xt))
    np.testing.assert_allclose(thin.score(Xt[order])[np.argsort(order)], s1, rtol=0, atol=1e-6)
    np.testing.assert_allclose(thin.score(Xt[:7]), s1[:7], rtol=0, atol=1e-6)
    np.testing.assert_allclose(thin.score(Xt[[3]]), s1[[3]], rtol=0, atol=1e-6)
    other = ThinningStability(n_draws=2).fit(clf, X[tr], rng=1)  # another seed draws other copies
    assert not np.array_equal(other.score(Xt), s1)
    assert ((s1 >= 0) & (s1 <= 1)).all()
    knn = KNNConsistency(n_pcs=20).fit(clf, X[tr], y=y[tr], rng=0)
    k = knn.score(Xt)
    assert ((k >= 0) & (k <= 1)).all()
    assert k.mean() < 0.5
    with pytest.raises(ValueError, match="fraction"):
        ThinningStability(fraction=1.5)


@pytest.fixture(scope="module")
def ensemble3k(data3k):
    clf, X, y, split = data3k
    members = {"rules": PlausibilityRules(), "count_model": CountModelDetector(statistic="deviance")}
    return fit_ensemble(clf, X, split, members, y=y, target_fpr=TARGET_FPR, rng=0)


def test_ensemble_threshold_gives_target_fpr_on_calibration_cells(ensemble3k, data3k):
    _, X, _, split = data3k
    val = X[split == "val"]
    n = len(val)
    rep = ensemble3k.explain(val)
    fpr = rep.flagged.mean()
    # scored against all n reference cells (not n - 1) a validation cell's p-value rises by at most 1 / n:
    # the flagged fraction sits at or just under the target
    assert TARGET_FPR - 0.02 <= fpr <= TARGET_FPR + 1 / n
    assert rep.pvalues.shape == (n, 2)
    assert ((rep.pvalues > 0) & (rep.pvalues <= 1)).all()
    assert set(rep.reason[rep.flagged]) <= {
        "count_model",
        "rules",
        "out_of_range",
        "above_ceiling",
        "negative_expression",
        "off_zero",
        "off_lattice",
    }
    assert (rep.reason[~rep.flagged] == "").all()


def test_ensemble_flags_rule_breakers_with_their_reason(ensemble3k, data3k):
    _, X, _, split = data3k
    Z = X[split == "test"][:10].copy()
    Z[0, 0] = 60000.0  # a single gene at an absurd value
    inside = np.abs(Z[1]) < 9.0
    Z[1, inside] += np.float32(0.05)  # every gene inside the clip moved: off the lattice, zeros off zero
    rep = ensemble3k.explain(Z)
    assert rep.flagged[:2].all()
    assert rep.reason[0] == "out_of_range"
    assert rep.reason[1] in ("off_zero", "off_lattice")
    assert rep.score[0] > ensemble3k.score(X[split == "val"]).max() - 1e-9


def test_no_test_cell_is_read_by_fit_or_calibrate(data3k):
    """Test rows set to NaN change nothing: fit_ensemble reads only training and validation rows."""
    clf, X, y, split = data3k

    def members():
        return {"rules": PlausibilityRules(), "knn": KNNConsistency(n_pcs=10)}

    ref = fit_ensemble(clf, X, split, members(), y=y, rng=0)
    poisoned = X.copy()
    poisoned[split == "test"] = np.nan
    y_poisoned = np.where(split == "test", "not a class", y)
    ens = fit_ensemble(clf, poisoned, split, members(), y=y_poisoned, rng=0)
    assert ens.threshold == ref.threshold
    Xt = X[split == "test"][:50]
    np.testing.assert_array_equal(ens.score(Xt), ref.score(Xt))
    assert len(ens.members["knn"].labels_) == (split == "train").sum()
    assert len(ens.reference_[0]) == (split == "val").sum()


def test_ensemble_input_errors(data3k):
    clf, X, _, split = data3k
    with pytest.raises(ValueError, match="at least one member"):
        EnsembleDetector({})
    with pytest.raises(TypeError, match="fit"):
        EnsembleDetector({"x": object()})
    with pytest.raises(RuntimeError, match="not calibrated"):
        EnsembleDetector({"rules": PlausibilityRules()}).pvalues(X[:2])
    with pytest.raises(ValueError, match="split has"):
        fit_ensemble(clf, X, split[:-1], {"rules": PlausibilityRules()})
