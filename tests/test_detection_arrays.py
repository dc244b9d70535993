"""Array-level detection pieces: meta-features, input consistency, triplets, calibration."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import scadversarial as sad
from scadversarial.detection import (
    choose_threshold,
    compute_meta_features,
    detection_metrics,
    feature_names,
    fit_input_reference,
    gradient_basis,
    meta_feature_tensor,
    sample_triplets,
    tpr_at_fpr,
)


@pytest.fixture(scope="module")
def clf_and_data(pipeline68k):
    clf = sad.tl.get_model(pipeline68k).eval()
    X = np.asarray(pipeline68k.X, dtype=np.float32)
    Xa = np.asarray(pipeline68k.layers["sad_pgd_eps0.1"], dtype=np.float32)
    split = pipeline68k.obs["sad_split"].astype(str).to_numpy()
    return clf, X, Xa, split


def test_gradient_features_use_predicted_label(clf_and_data):
    clf, X, _, _ = clf_and_data
    x = torch.as_tensor(X[:64])
    f = meta_feature_tensor(clf, x)
    names = feature_names(["internal", "gradient"], 64, clf.classes)
    assert f.shape == (64, len(names))
    xg = x.clone().requires_grad_(requires_grad=True)
    logits = clf(xg)
    pred = logits.argmax(1)
    # reference gradient in float64: for confident cells the float32 p - 1 of autograd's backward is rounding noise
    clf64 = copy.deepcopy(clf).double()
    x64 = x.double().requires_grad_(requires_grad=True)
    (g,) = torch.autograd.grad(F.cross_entropy(clf64(x64), pred, reduction="sum"), x64)
    ga = g.abs()
    mean, var = ga.mean(1), ga.var(1, unbiased=False)
    torch.testing.assert_close(f[:, -3].double(), (mean + 1e-12).log(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(f[:, -1].double(), (ga.norm(dim=1) + 1e-12).log(), rtol=1e-4, atol=1e-4)
    # the variance is E|g|^2 - (E|g|)^2 in float32: exact up to cancellation relative to E|g|^2
    got_var = f[:, -2].double().exp()
    assert ((got_var - var).abs() <= 1e-5 * (mean**2 + var) + 1e-20).all()
    # with another label the gradient differs: the feature is not the true-label gradient
    other = (pred + 1) % len(clf.classes)
    (g2,) = torch.autograd.grad(F.cross_entropy(clf(xg), other, reduction="sum"), xg)
    assert not torch.allclose(g2.norm(dim=1).log(), f[:, -1], atol=1e-2)
    # internal signals
    probs = torch.softmax(logits.detach(), 1)
    k = len(clf.classes)
    torch.testing.assert_close(f[:, 64 + k : 64 + 2 * k], probs, rtol=1e-5, atol=1e-6)
    top2 = logits.detach().topk(2, 1).values
    torch.testing.assert_close(f[:, names.index("margin")], top2[:, 0] - top2[:, 1], rtol=1e-5, atol=1e-5)


def test_fast_gradient_path_matches_exact(clf_and_data):
    clf, _, Xa, _ = clf_and_data
    x = torch.as_tensor(Xa[:100])
    exact = meta_feature_tensor(clf, x)
    everything = torch.arange(x.shape[1])
    fast = meta_feature_tensor(clf, x, grad_basis=gradient_basis(clf, everything))
    torch.testing.assert_close(fast, exact, rtol=1e-4, atol=1e-4)
    sub = torch.as_tensor(np.sort(np.random.default_rng(0).choice(x.shape[1], 256, replace=False)))
    est = meta_feature_tensor(clf, x, grad_basis=gradient_basis(clf, sub))
    torch.testing.assert_close(est[:, -1], exact[:, -1], rtol=1e-4, atol=1e-4)  # L2 norm exact
    r = np.corrcoef(est[:, -3].numpy(), exact[:, -3].numpy())[0, 1]
    assert r > 0.95  # mean |grad| estimated on the subset


def test_input_consistency_features(clf_and_data):
    _, X, Xa, split = clf_and_data
    ref_cells = X[split == "train"]
    ref = fit_input_reference(ref_cells, n_pcs=20)
    mins = ref_cells.min(0)
    for M in (X[split == "test"], Xa[split == "test"]):
        f = ref(torch.as_tensor(M)).numpy()
        at = (np.abs(M - mins) <= 1e-4).mean(1)
        below = (mins - M > 1e-4).mean(1)
        np.testing.assert_allclose(f[:, 0], at, atol=2e-3)
        np.testing.assert_allclose(f[:, 1], below, atol=2e-3)
    clean = ref(torch.as_tensor(X[split == "test"])).numpy()
    adv = ref(torch.as_tensor(Xa[split == "test"])).numpy()
    assert adv[:, 0].mean() < 0.1 * clean[:, 0].mean()
    assert adv[:, 1].mean() > 0.1 > clean[:, 1].max()
    # a reference cell is not its own neighbour: its distance is to the nearest *other* reference
    # cell, on the scale of held-out cells (not rounding noise), and the same alone or in a batch
    own = ref(torch.as_tensor(ref_cells[:20])).numpy()
    assert np.exp(own[:, 3]).min() > 0.3 * np.median(np.exp(clean[:, 3]))
    one = ref(torch.as_tensor(ref_cells[3:4])).numpy()
    np.testing.assert_allclose(one[0, 3], own[3, 3], rtol=1e-4)
    P = (ref_cells - ref.pca_mean.numpy()) @ ref.components.numpy().T
    d = np.sqrt(((P[:20, None] - P[None]) ** 2).sum(-1))
    d[np.arange(20), np.arange(20)] = np.inf
    np.testing.assert_allclose(np.exp(own[:, 3]), d.min(1), rtol=1e-3)


def test_compute_meta_features_batches_agree(clf_and_data):
    clf, X, _, _ = clf_and_data
    a = compute_meta_features(clf, X[:200], batch_size=37)
    b = compute_meta_features(clf, X[:200], batch_size=200)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_sample_triplets():
    rng = np.random.default_rng(0)
    cls_clean = np.array([0, 0, 0, 1, 1, 2])
    cls_adv = np.tile(cls_clean, 3)
    a, p, n = sample_triplets(cls_clean, cls_adv, rng)
    assert sorted(n) == list(range(len(cls_adv)))
    assert (cls_clean[a] == cls_adv[n]).all()
    assert (cls_clean[p] == cls_adv[n]).all()
    several = np.isin(cls_adv[n], [0, 1])
    assert (a[several] != p[several]).all()


def test_threshold_and_metrics():
    y = np.r_[np.zeros(100), np.ones(100)]
    s = np.r_[np.linspace(0, 0.6, 100), np.linspace(0.4, 1, 100)]
    thr = choose_threshold(y, s)
    pred = s >= thr["threshold"]
    assert thr["tpr"] == pred[y == 1].mean()
    assert thr["fpr"] == pred[y == 0].mean()
    assert thr["tpr"] - thr["fpr"] > 0.6
    t5 = choose_threshold(y, s, target_fpr=0.05)
    assert t5["fpr"] <= 0.05
    assert tpr_at_fpr(y, s, 0.05) == pytest.approx(t5["tpr"])
    m = detection_metrics(y, s, thr["threshold"])
    assert 0.9 < m["auroc"] < 1
    assert m["accuracy"] == pytest.approx((m["clean_accuracy"] * 100 + m["adversarial_accuracy"] * 100) / 200)
    # perfectly separated scores: threshold strictly between the classes
    s2 = np.r_[np.full(10, 0.1), np.full(10, 0.9)]
    t2 = choose_threshold(np.r_[np.zeros(10), np.ones(10)], s2)
    assert 0.1 < t2["threshold"] < 0.9
    with pytest.raises(ValueError, match="both clean"):
        detection_metrics(np.zeros(5), np.zeros(5), 0.5)


def test_youden_threshold_capped_at_max_fpr():
    y = np.r_[np.zeros(100), np.ones(100)]
    rng = np.random.default_rng(0)
    s = np.r_[rng.normal(0, 1, 100), rng.normal(2, 1, 100)]  # Youden's optimum near 1: ~16 % false alarms
    free = choose_threshold(y, s)
    assert free["fpr"] > 0.01  # plain Youden spends false alarms for TPR
    capped = choose_threshold(y, s, max_fpr=0.01)
    assert capped["fpr"] <= 0.01
    assert capped["threshold"] > free["threshold"]
    assert capped["method"] == "youden, fpr<=0.01"
    # a cap above Youden's own false-positive rate leaves its threshold as it is
    assert choose_threshold(y, s, max_fpr=0.5)["threshold"] == free["threshold"]
    # clean cells tied at the top score: the strictest threshold, not an error
    tied = choose_threshold(y, np.r_[np.ones(5), np.zeros(95), np.ones(100)], max_fpr=0.01)
    assert tied["fpr"] == 0.05
    assert choose_threshold(y, s, target_fpr=0.05, max_fpr=0.01)["method"] == "target_fpr=0.05"
    with pytest.raises(ValueError, match="max_fpr"):
        choose_threshold(y, s, max_fpr=1.0)
    # the default detector's threshold: Youden's J among thresholds flagging at most 1 % of clean cells
    assert sad.detection.DetectorConfig().max_fpr == 0.01
    with pytest.raises(ValueError, match="max_fpr"):
        sad.detection.DetectorConfig(max_fpr=1.5)
