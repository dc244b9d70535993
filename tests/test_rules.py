"""Plausibility rules on real PBMC3k cells: clean and benignly shifted cells pass, impossible inputs are flagged with their reason."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import scadversarial as sad
from scadversarial.detection import RULES, PlausibilityRules, fit_lattice
from scadversarial.detection._rules import LOG_TOL

#: Measured on PBMC3k (all 2,638 cells, Seurat pipeline of conftest): no clean cell breaks a rule.
#: The bound leaves room for one cell in 500 on other splits or seeds.
MAX_CLEAN_RATE = 0.002


@pytest.fixture(scope="module")
def rules3k(pipeline3k):
    a = pipeline3k
    split = a.obs["sad_split"].astype(str).to_numpy()
    X = np.asarray(a.X, dtype=np.float32)
    clf = sad.tl.get_model(a).eval()
    rules = PlausibilityRules().fit(clf, X[split == "train"])
    rules.calibrate(X[split == "val"], target_fpr=0.05)
    return rules, clf, X, split


def test_clean_pbmc3k_cells_pass_every_rule(rules3k):
    rules, _, X, _ = rules3k
    rep = rules.explain(X)
    assert rules.use_lattice_
    assert rules.lattice_clean_rate_ == 0.0
    assert rules.threshold == 1.0
    assert (rep.score >= rules.threshold).mean() <= MAX_CLEAN_RATE
    assert set(rep.reason[rep.score == 0]) <= {""}


def test_benign_thinning_passes(rules3k, pipeline3k):
    """Re-preprocessed thinned counts are real measurements: on the lattice of their new library."""
    rules, clf, _, split = rules3k
    cells = pipeline3k[np.flatnonzero(split == "test")[:150]].copy()
    thin = sad.tl.benign_shift(cells, "thinning", amount=0.5, random_state=0)
    Z = sad.tl.scaled_matrix(thin, clf)
    assert (rules.score(Z) >= rules.threshold).mean() <= MAX_CLEAN_RATE


def _edit(rules, X, cell, gene, log_value):
    """Copy of X with one entry set to a given log value (through the classifier's transform)."""
    t = rules.transform_
    Z = X.copy()
    Z[cell, gene] = np.float32((log_value - t.mean[gene]) / t.std[gene])
    return Z


def test_impossible_inputs_get_their_reason(rules3k):
    rules, _, X, split = rules3k
    Xt = X[split == "test"][:20].copy()
    L, inv = rules.transform_.to_log(Xt)
    expressed = np.flatnonzero(inv[0] & (L[0] > 1.0))
    zero = np.flatnonzero(inv[0] & (np.abs(L[0]) < LOG_TOL))
    aberrant = Xt.copy()
    aberrant[0, zero[0]] = 60000.0  # the single-gene attack's absurd value
    cases = {
        "out_of_range": aberrant,
        "negative_expression": _edit(rules, Xt, 0, zero[0], -0.3),
        "off_zero": _edit(rules, Xt, 0, zero[0], 0.5 * rules.zero_bound_),
        "off_lattice": _edit(rules, Xt, 0, expressed[0], L[0, expressed[0]] + 0.05),
    }
    for reason, Z in cases.items():
        rep = rules.explain(Z)
        assert rep.reason[0] == reason, reason
        assert rep.score[0] >= rules.threshold, reason
        assert rep.counts[0, RULES.index(reason)] == 1
        assert (rep.score[1:] == 0).all()  # the other cells are untouched
    beyond = Xt.copy()
    beyond[:, zero[0]] = -11.0  # below the clip
    assert (rules.explain(beyond).reason == "out_of_range").all()


def test_lattice_fit_recovers_counts_and_divisor():
    counts = np.array([[3.0, 4.0, 0.0, 9.0, 14.0], [1.0, 2.0, 5.0, 0.0, 40.0]])
    lib = np.array([[1800.0], [4100.0]])
    L = np.log1p(counts * 1e4 / lib).astype(np.float32).astype(np.float64)  # float32 rounding as in X
    lat = fit_lattice(L, L > 0)
    assert not lat.off.any()
    np.testing.assert_allclose(lat.unit, 1e4 / lib[:, 0], rtol=1e-5)
    np.testing.assert_array_equal(lat.counts, counts)  # cell 0: smallest count 3, found by the divisor search


def test_lattice_rule_switches_off_for_non_count_data(rules3k, caplog):
    _, clf, X, split = rules3k
    rng = np.random.default_rng(0)
    Xtr = X[split == "train"][:200]
    noisy = Xtr + rng.normal(0, 0.01, Xtr.shape).astype(np.float32) * (Xtr > Xtr.min(0))
    with caplog.at_level(logging.WARNING, logger="scadversarial"):
        rules = PlausibilityRules().fit(clf, noisy)
    assert not rules.use_lattice_
    assert rules.lattice_clean_rate_ > 0.5
    assert "lattice rule is off" in caplog.text
    assert PlausibilityRules(lattice="on").fit(clf, noisy).use_lattice_
    with pytest.raises(ValueError, match="lattice must be"):
        PlausibilityRules(lattice="maybe")
