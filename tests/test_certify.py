"""``sad.tl.certify`` (randomized smoothing in log space) and ``sad.pl.certified_accuracy``."""

from __future__ import annotations

import logging

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import scadversarial as sad
from scadversarial.models import CellClassifier
from scadversarial.tl._certify import (
    ABSTAIN,
    CertifyOptions,
    certified_radius,
    certify_arrays,
    clopper_pearson_lower,
    smoothed_counts,
)

SIGMA = 0.25
N_TEST_CELLS = 60  # test cells certified in the fixture: seconds on a CPU
ROBUST_CELLS = 6  # cells of the Monte-Carlo robustness check


def _line(mu: float, n_cells: int = 1) -> tuple[ad.AnnData, CellClassifier]:
    """Cells at ``x0 = mu`` and a hand-made classifier: class 'a' iff ``x0 > 0`` (boundary at distance ``mu``).

    Under noise of std sigma the top class has probability exactly ``Phi(|mu| / sigma)``, and the
    smoothed classifier's largest certifiable radius is ``|mu|``, the distance to the boundary.
    """
    genes = ["g0", "g1", "g2"]
    clf = CellClassifier(genes, ["a", "b"], hidden=(2,), dropout=(0.0,))
    with torch.no_grad():
        clf.body[0].weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]]))
        clf.body[0].bias.zero_()
        clf.head.weight.copy_(torch.eye(2))
        clf.head.bias.zero_()
    clf.eval()
    X = np.zeros((n_cells, 3), dtype=np.float32)
    X[:, 0] = mu
    a = ad.AnnData(X.copy(), obs=pd.DataFrame(index=[f"c{i}" for i in range(n_cells)]), var=pd.DataFrame(index=genes))
    a.layers["sad_lognorm"] = X
    return a, clf


@pytest.fixture(scope="module")
def certified68k(pbmc68k) -> ad.AnnData:
    """Test cells of pbmc68k_reduced with a classifier, certified at sigma 0.25 (n = 1,000)."""
    a = pbmc68k.copy()
    sad.pp.preprocess(a)
    sad.pp.pseudo_labels(a, n_clusters=4)
    sad.pp.split(a)
    sad.tl.train_classifier(a, max_epochs=15)
    test = a[(a.obs["sad_split"] == "test").to_numpy()][:N_TEST_CELLS].copy()
    sad.tl.certify(test, sigma=SIGMA, n_samples=1000)
    return test


def test_tiny_sigma_gives_the_base_prediction(certified68k):
    a = certified68k.copy()
    sad.tl.certify(a, sigma=1e-5, n_samples=100, key_added="tiny")
    # noise of 1e-5 log units never crosses a decision boundary of these cells: every vote is the base call
    assert (a.obs["tiny_pred"].astype(str) == a.obs["sad_pred"].astype(str)).all()
    # unanimous votes: p_lower = alpha^(1/n), the largest radius n draws can certify
    np.testing.assert_allclose(a.obs["tiny_radius"], 1e-5 * stats.norm.ppf(0.001 ** (1 / 100)), rtol=1e-6)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(n=st.integers(1, 5000), alpha=st.sampled_from([1e-3, 1e-2, 0.05]), sigma=st.floats(0.01, 2.0))
def test_radius_is_monotone_in_p_lower(n, alpha, sigma):
    count = np.arange(n + 1)
    p = clopper_pearson_lower(count, n, alpha)
    assert (np.diff(p) >= 0).all()  # more votes for the top class: a higher bound
    assert (p <= count / n + 1e-12).all()  # a lower bound lies below the observed fraction
    r = certified_radius(p, sigma)
    assert (np.diff(r) >= 0).all()
    assert (r[p <= 0.5] == 0).all()
    assert (r[p > 0.5] > 0).all()


def test_balanced_classes_abstain():
    a, clf = _line(0.0, n_cells=20)  # on the boundary: each class has probability exactly one half
    sad.tl.certify(a, sigma=0.5, n_samples=500, classifier=clf, options=CertifyOptions(split=None))
    assert (a.obs["sad_certified_pred"] == ABSTAIN).all()
    assert (a.obs["sad_certified_radius"] == 0).all()
    m = a.uns["sad"]["sad_certified"]["metrics"]
    assert m["abstention"] == 1.0
    assert "certified_accuracy" not in m  # no labels: no accuracy


def test_radius_matches_sigma_phi_inverse_of_p_lower():
    mu, sigma, n, alpha = 0.3, 0.5, 4000, 0.001
    a, clf = _line(mu, n_cells=3)
    sad.tl.certify(a, sigma=sigma, n_samples=n, alpha=alpha, classifier=clf, options=CertifyOptions(split=None))
    # the same draws (random_state 0) through the array function, which also returns the vote counts
    cert = certify_arrays(
        clf.for_space("log"),
        a.layers["sad_lognorm"],
        sigma=sigma,
        n=n,
        alpha=alpha,
        generator=torch.Generator().manual_seed(0),
    )
    radius = a.obs["sad_certified_radius"].to_numpy()
    np.testing.assert_array_equal(radius, cert.radius)
    # by hand: sigma * Phi^-1 of the one-sided Clopper-Pearson bound of the top class's count
    expected = sigma * stats.norm.ppf(stats.beta.ppf(alpha, cert.count, n - cert.count + 1))
    np.testing.assert_allclose(radius, expected, rtol=1e-10)
    assert (a.obs["sad_certified_pred"] == "a").all()
    # the exact radius of this classifier is mu (the distance to its boundary): the estimate is a lower
    # bound (probability 1 - alpha per cell) and, with 4,000 draws, within 0.1 of it
    assert (radius <= mu).all()
    assert (radius > mu - 0.1).all()


def test_certified_cells_survive_l2_pgd_within_the_radius(certified68k):
    """Monte-Carlo check: an L2 PGD attack in log space within half the radius leaves the smoothed call unchanged.

    The attack is on the base classifier (the smoothed one has no gradient); the theorem covers any change
    within the radius. At ``||x' - x|| <= R / 2`` the top class keeps probability at least
    ``Phi(Phi^-1(p_lower) / 2)``, about 0.75 for the cells chosen (``p_lower >= 0.91``), so its Monte-Carlo vote of
    1,000 draws stays a majority except with probability < 1e-50; each certificate holds with probability
    1 - alpha (0.999). The test fails wrongly with probability below ``ROBUST_CELLS * alpha`` (< 1 %).
    """
    a = certified68k
    radius = a.obs["sad_certified_radius"].to_numpy()
    strong = radius >= SIGMA * stats.norm.ppf(0.91)
    assert strong.sum() >= ROBUST_CELLS, "too few confidently certified cells for the check"
    pick = np.flatnonzero(strong)[np.argsort(-radius[strong])][:ROBUST_CELLS]
    sub = a[pick].copy()
    eps = float(radius[pick].min()) / 2
    sad.tl.attack(sub, "pgd_l2", eps=eps, space="log", key_added="l2")
    (layer,) = [str(x) for x in np.atleast_1d(sub.uns["sad"]["attacks"]["l2"]["layers"])]
    X, X_adv = sub.layers["sad_lognorm"], np.asarray(sub.layers[layer])
    moved = np.linalg.norm(X_adv - X, axis=1)
    assert (moved <= eps * (1 + 1e-4)).all()
    assert (moved > 0.5 * eps).all()  # the attack did move the cells
    clf = sad.get.model(sub)
    counts = smoothed_counts(
        clf.for_space("log"), X_adv, sigma=SIGMA, n=1000, generator=torch.Generator().manual_seed(1)
    )
    certified = sub.obs["sad_certified_pred"].astype(str).to_numpy()
    assert (np.asarray(clf.classes)[counts.argmax(1)] == certified).all()
    assert (counts.max(1) > 500).all()


def test_outputs_record_copy_and_seed(certified68k, tmp_path):
    a = certified68k
    pred = a.obs["sad_certified_pred"]
    assert isinstance(pred.dtype, pd.CategoricalDtype)
    assert list(pred.cat.categories) == [*sad.get.model(a).classes, ABSTAIN]
    radius = a.obs["sad_certified_radius"].to_numpy()
    assert (radius[pred == ABSTAIN] == 0).all()
    assert (radius[pred != ABSTAIN] > 0).all()
    rec = sad.get.record(a, "sad_certified")
    assert rec["params"]["sigma"] == SIGMA
    assert rec["params"]["n_samples"] == 1000
    m = rec["metrics"]
    assert m["n_cells"] == a.n_obs  # every cell is a test cell
    np.testing.assert_allclose(m["abstention"], (pred == ABSTAIN).mean())
    acc = m["certified_accuracy"]
    assert len(acc) == len(m["radii"])
    assert (np.diff(acc) <= 0).all()  # certified accuracy falls with the radius
    assert acc[0] <= m["smoothed_accuracy"]
    # copy=True leaves the input alone; the same seed gives the same certificates
    b = a.copy()
    del b.obs["sad_certified_pred"]
    out = sad.tl.certify(b, sigma=SIGMA, n_samples=1000, copy=True)
    assert "sad_certified_pred" not in b.obs
    np.testing.assert_array_equal(out.obs["sad_certified_radius"], radius)
    path = tmp_path / "cert.h5ad"
    out.write_h5ad(path)
    back = ad.read_h5ad(path)
    np.testing.assert_allclose(back.uns["sad"]["sad_certified"]["metrics"]["certified_accuracy"], acc)


def test_certify_errors_name_the_fix(certified68k):
    a = certified68k.copy()
    with pytest.raises(ValueError, match="sigma"):
        sad.tl.certify(a, sigma=0)
    with pytest.raises(ValueError, match="n_samples"):
        sad.tl.certify(a, n_samples=0)
    with pytest.raises(ValueError, match="alpha"):
        sad.tl.certify(a, alpha=1.5)
    a.layers["scaled_copy"] = a.X.copy()
    with pytest.raises(ValueError, match="log-space"):
        sad.tl.certify(a, layer="scaled_copy")
    with pytest.raises(KeyError, match="missing"):
        sad.tl.certify(a, layer="nope")
    with pytest.raises(TypeError, match="CellClassifier"):
        sad.tl.certify(a, classifier=torch.nn.Linear(3, 2))
    with pytest.raises(KeyError, match="labels_key='nope' is not a column"):
        sad.tl.certify(a, options=sad.tl.CertifyOptions(labels_key="nope"))
    with pytest.raises(ValueError, match="No cell of adata.obs"):
        sad.tl.certify(a, options=sad.tl.CertifyOptions(split="holdout"))


def test_certified_accuracy_plot(certified68k):
    a = certified68k.copy()
    sad.tl.certify(a, sigma=0.5, n_samples=200, key_added="wide")
    ax = sad.pl.certified_accuracy(a, key=["sad_certified", "wide"], show=False)
    assert len(ax.get_lines()) == 2
    assert "σ=0.25" in ax.get_legend().get_texts()[0].get_text()
    # at radius 0 the curve is the smoothed accuracy of the record
    y0 = ax.get_lines()[0].get_ydata()[0]
    np.testing.assert_allclose(y0, a.uns["sad"]["sad_certified"]["metrics"]["smoothed_accuracy"])
    plt.close("all")
    with pytest.raises(KeyError, match="sad.tl.certify"):
        sad.pl.certified_accuracy(a, key="never_run")


def test_unlabelled_cells_are_left_out_of_the_accuracies(certified68k, caplog):
    """A partly annotated query set: NaN labels are left out of the accuracies and the curve, not counted as wrong."""
    a = certified68k.copy()
    gone = np.arange(0, a.n_obs, 3)  # a third of the cells lose their label
    labels = a.obs["sad_label"].astype(object)
    labels.iloc[gone] = np.nan
    a.obs["sad_label"] = labels
    with caplog.at_level(logging.WARNING, logger="scadversarial"):
        sad.tl.certify(a, sigma=SIGMA, n_samples=100, key_added="partly")
    assert f"{len(gone)} of {a.n_obs} cells have no label in adata.obs['sad_label']" in caplog.text
    m = a.uns["sad"]["partly"]["metrics"]
    assert m["n_unlabelled"] == len(gone)
    assert m["n_cells"] == a.n_obs  # the label-free metrics keep every cell
    pred = a.obs["partly_pred"].astype(str).to_numpy()
    np.testing.assert_allclose(m["abstention"], (pred == ABSTAIN).mean())
    kept = np.setdiff1d(np.arange(a.n_obs), gone)
    correct = pred[kept] == a.obs["sad_label"].to_numpy()[kept].astype(str)
    radius = a.obs["partly_radius"].to_numpy()[kept]
    assert m["smoothed_accuracy"] == pytest.approx(correct.mean())
    np.testing.assert_allclose(m["certified_accuracy"], [(correct & (radius >= r)).mean() for r in m["radii"]])
    # the curve: the same cells, so at radius 0 the record's smoothed accuracy
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="scadversarial"):
        ax = sad.pl.certified_accuracy(a, key="partly", show=False)
    assert f"{len(gone)} of {a.n_obs} cells have no label" in caplog.text
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata()[0], m["smoothed_accuracy"])
    assert f"n={len(kept)}, {len(gone)} unlabelled left out" in ax.get_title()
    plt.close("all")
    labels.iloc[:] = np.nan
    a.obs["sad_label"] = labels
    with pytest.raises(ValueError, match=r"adata\.obs\['sad_label'\].*CertifyOptions\(labels_key="):
        sad.tl.certify(a, sigma=SIGMA, n_samples=10, key_added="none")
    assert "none" not in a.uns["sad"]  # refused before any work
    with pytest.raises(ValueError, match=r"adata\.obs\['sad_label'\].*labels_key="):
        sad.pl.certified_accuracy(a, key="partly", show=False)
