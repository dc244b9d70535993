"""Baseline detectors (max-softmax, Mahalanobis, LID, KD+BU, feature squeezing) on pbmc68k_reduced and its seed PGD."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import scadversarial as sad
from scadversarial.detection import (
    BASELINES,
    BaselineDetector,
    KernelDensityDetector,
    SqueezeDetector,
    make_baseline,
    reference_split,
)
from scadversarial.detection._calibrated import _clean_quantile_threshold

TARGET_FPR = 0.05


@pytest.fixture(scope="module")
def data68k(pipeline68k):
    a = pipeline68k
    split = a.obs["sad_split"].astype(str).to_numpy()
    X = np.asarray(a.X, dtype=np.float32)
    adv = {e: np.asarray(a.layers[f"sad_pgd_eps{e}"], dtype=np.float32) for e in ("0.1", "0.5")}
    clf = sad.tl.get_model(a).eval()
    return clf, X, adv, {s: split == s for s in ("train", "val", "test")}


@pytest.fixture(scope="module")
def fitted(data68k):
    """Every baseline fitted on clean training cells (and their PGD copies), calibrated on clean validation cells."""
    clf, X, adv, m = data68k
    X_adv = np.concatenate([adv["0.1"][m["train"]], adv["0.5"][m["train"]]])
    dets = {}
    for name in BASELINES:
        det = make_baseline(name).fit(clf, X[m["train"]], X_adv=X_adv, rng=0)
        det.calibrate(X[m["val"]], target_fpr=TARGET_FPR)
        dets[name] = det
    return dets


@pytest.mark.parametrize("name", list(BASELINES))
def test_baseline_scores_finite_and_pgd_scores_higher(fitted, data68k, name):
    _, X, adv, m = data68k
    det = fitted[name]
    assert isinstance(det, BaselineDetector)
    assert det.name == name
    clean = det.score(X[m["test"]])
    attacked = det.score(adv["0.5"][m["test"]])
    assert clean.shape == (m["test"].sum(),)
    assert np.isfinite(clean).all()
    assert np.isfinite(attacked).all()
    assert attacked.mean() > clean.mean()
    if name in ("max_softmax", "mahalanobis"):
        y = np.r_[np.zeros(len(clean)), np.ones(len(attacked))]
        assert roc_auc_score(y, np.r_[clean, attacked]) > 0.7
        assert det.score(adv["0.1"][m["test"]]).mean() > clean.mean()


@pytest.mark.parametrize("name", list(BASELINES))
def test_threshold_gives_target_fpr_on_calibration_cells(fitted, data68k, name):
    _, X, _, m = data68k
    det = fitted[name]
    n_val = m["val"].sum()
    scores = det.score(X[m["val"]])
    fpr = (scores >= det.threshold).mean()
    assert fpr <= TARGET_FPR
    if len(np.unique(scores)) == n_val:  # untied scores: the threshold flags as many as allowed
        assert fpr >= TARGET_FPR - 1.5 / n_val
    else:  # the squeezer leaves measured cells unchanged: their scores tie at 0 and none is flagged
        assert name == "squeeze"
        assert fpr == 0


def test_baselines_without_adversarial_training_cells(data68k):
    """LID and KD+BU fall back to the mean z-score of their features; still higher on PGD cells."""
    clf, X, adv, m = data68k
    for name in ("lid", "kd_bu"):
        det = make_baseline(name).fit(clf, X[m["train"]], rng=0)
        assert det.model_ is None
        assert det.score(adv["0.5"][m["test"]]).mean() > det.score(X[m["test"]]).mean()


def test_calibration_with_adversarial_cells_keeps_fpr(fitted, data68k):
    _, X, adv, m = data68k
    det = fitted["mahalanobis"]
    old = det.threshold
    try:
        thr = det.calibrate(X[m["val"]], adv["0.5"][m["val"]], target_fpr=TARGET_FPR)
        assert (det.score(X[m["val"]]) >= thr).mean() <= TARGET_FPR
    finally:
        det.threshold = old


@pytest.mark.parametrize("name", ["max_softmax", "mahalanobis", "squeeze"])
def test_score_logit_is_differentiable_and_consistent(fitted, data68k, name):
    _, X, adv, m = data68k
    det = fitted[name]
    x = torch.tensor(np.concatenate([X[m["test"]][:5], adv["0.1"][m["test"]][:5]]), requires_grad=True)
    logit = det.score_logit(x)
    s = det.score(x.detach().numpy())
    expected = np.log(s / (1 - s)) if name == "max_softmax" else np.log(s + 1e-12)  # logit or log of the score
    np.testing.assert_allclose(logit.detach().double().numpy(), expected, rtol=1e-3, atol=1e-3)
    (g,) = torch.autograd.grad(logit[5:].sum(), x)
    assert torch.isfinite(g).all()
    assert g[5:].abs().sum() > 0


def test_squeeze_filter_leaves_measured_cells_unchanged(fitted, data68k):
    _, X, adv, m = data68k
    det = fitted["squeeze"]
    assert (det.score(X[m["train"]]) == 0).all()  # the default threshold filters nothing of a measured cell
    both = SqueezeDetector(squeezers=("filter", "quantize"), bits=4).fit(det.classifier, X[m["train"]])
    s = both.score(adv["0.5"][m["test"]])
    assert (s >= det.score(adv["0.5"][m["test"]]) - 1e-6).all()  # the max over squeezers


def test_kd_bu_is_reproducible_and_leaves_global_rng_alone(fitted, data68k):
    _, X, _, m = data68k
    det = fitted["kd_bu"]
    assert isinstance(det, KernelDensityDetector)
    assert det.bandwidth_ > 0
    state = torch.random.get_rng_state()
    a, b = det.score(X[m["test"]][:20]), det.score(X[m["test"]][:20])
    np.testing.assert_array_equal(a, b)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_reference_split_drops_attacked_copies_of_reference_cells():
    s = reference_split(10, 30, 100, rng=0)
    assert len(s.reference) == 5
    assert set(s.reference).isdisjoint(s.clean)
    assert len(s.adversarial) == 15
    assert not np.isin(s.adversarial % 10, s.reference).any()
    s2 = reference_split(10, 7, 3, rng=0)  # not a multiple: all adversarial rows are kept
    assert len(s2.reference) == 3
    assert len(s2.adversarial) == 7


def test_clean_quantile_threshold_with_ties():
    s = np.r_[np.zeros(90), np.arange(1, 11)]
    t = _clean_quantile_threshold(s, 0.05)
    assert (s >= t).mean() == 0.05
    assert 5 < t < 6
    t0 = _clean_quantile_threshold(np.zeros(50), 0.05)
    assert t0 > 0  # all tied: nothing flagged


def test_errors(data68k):
    clf, X, _, _ = data68k
    with pytest.raises(ValueError, match="Unknown baseline"):
        make_baseline("nope")
    with pytest.raises(RuntimeError, match="not fitted"):
        make_baseline("max_softmax").score(X[:3])
    with pytest.raises(ValueError, match="squeezers"):
        make_baseline("squeeze", squeezers=("blur",))
    det = make_baseline("mahalanobis").fit(clf, X[:100])
    with pytest.raises(RuntimeError, match="calibrate"):
        det.flag(X[:3])
    with pytest.raises(ValueError, match="genes"):
        det.score(X[:3, :10])
    with pytest.raises(ValueError, match="not classes"):
        make_baseline("mahalanobis").fit(clf, X[:4], y=np.array(["x", "y", "x", "y"]))
