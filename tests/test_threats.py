"""Threat models of ``sad.tl.attack``: spaces, constraints, masks, CW, DeepFool, targeted and detector-aware PGD."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import scadversarial as sad
from scadversarial.attacks.threat import Projection
from scadversarial.tl._space import other_counts, space_model, to_scaled

N_CELLS = 240  # a few hundred PBMC3k cells: every cell type present, each attack a few seconds


@pytest.fixture(scope="module")
def cells3k(pipeline3k):
    return pipeline3k[:N_CELLS].copy()


def _dense(M):
    return np.asarray(M.toarray() if sp.issparse(M) else M, dtype=np.float32)


def test_transform_reproduces_X(pipeline3k):
    """Counts -> library-size normalization -> log1p -> scaling -> clip gives X (and log -> X)."""
    a = pipeline3k
    clf = sad.tl.get_model(a)
    C = _dense(a.layers["counts"])
    Z = to_scaled(space_model(a, clf, "counts"), C, other_counts(a, clf.var_names))
    assert np.abs(Z - a.X).max() < 1e-5
    np.testing.assert_allclose(sad.tl.scaled_matrix(a, clf, "sad_lognorm"), a.X, atol=1e-6)
    assert sad.tl.layer_space(a, "counts") == "counts"
    assert sad.tl.layer_space(a, None) == "scaled"


def test_lognorm_layer_targets_are_clean_predictions(cells3k):
    """``layer='sad_lognorm'`` attacks log values through the transform: its targets are the clean predictions."""
    a = cells3k.copy()
    clf = sad.tl.get_model(a)
    was_training = clf.training
    sad.tl.predict(a, layer="sad_lognorm")
    assert (a.obs["sad_lognorm_pred"].astype(str) == a.obs["sad_pred"].astype(str)).all()
    sad.tl.attack(a, eps=0.5, layer="sad_lognorm", key_added="lg")
    assert clf.training == was_training  # the attack leaves the classifier's mode (dropout) as it was
    rec = a.uns["sad"]["attacks"]["lg"]
    assert rec["params"]["space"] == "log"
    assert rec["params"]["layer"] == "sad_lognorm"
    flipped = (a.obs["lg_eps0.5_pred"].astype(str) != a.obs["sad_pred"].astype(str)).mean()
    assert np.isclose(flipped, rec["metrics"]["flip_rate"]["lg_eps0.5"])  # flips counted against clean predictions
    assert np.abs(a.layers["lg_eps0.5"] - a.layers["sad_lognorm"]).max() <= 0.5 + 1e-5
    # predict() reads the layer in its space: the recorded predictions come back
    before = a.obs["lg_eps0.5_pred"].copy()
    sad.tl.predict(a, layer="lg_eps0.5")
    assert (a.obs["lg_eps0.5_pred"] == before).all()


@pytest.mark.parametrize("space", ["log", "scaled"])
def test_expressed_keeps_unexpressed_entries(cells3k, space):
    a = cells3k.copy()
    eps = 0.5 if space == "log" else 0.15
    sad.tl.attack(a, eps=eps, space=space, constraint="expressed", key_added="ex")
    L = a.layers["sad_lognorm"]
    base = L if space == "log" else a.X
    A = a.layers[f"ex_eps{eps:g}"]
    zero = L == 0
    np.testing.assert_array_equal(A[zero], base[zero])  # every unexpressed entry exactly as it was
    assert np.abs(A - base).max() <= eps + 1e-5
    if space == "log":
        assert A.min() >= 0
    else:  # at or above each gene's zero-expression value in scaled units
        clf = sad.tl.get_model(a)
        floor = clf.transform(torch.zeros(1, a.n_vars)).numpy()[0]
        assert (floor - 1e-6 <= A).all()
    rec = a.uns["sad"]["attacks"]["ex"]
    assert rec["params"]["constraint"] == "expressed"
    assert rec["params"]["space"] == space
    # moving expressed genes only is a weaker threat in scaled units (the "zeros put back": ~10 %)
    assert rec["metrics"]["flip_rate"][f"ex_eps{eps:g}"] > (0.2 if space == "log" else 0.02)


def test_counts_layers_are_integers_and_reprocess_to_the_predictions(cells3k, pbmc3k_raw):
    a = cells3k.copy()
    sad.tl.attack(a, eps=3.0, space="counts", constraint="counts", max_log_fc=1.0, key_added="ct")
    C0 = _dense(a.layers["counts"])
    A = a.layers["ct_eps3"]
    assert (A >= 0).all()
    assert np.array_equal(A, np.round(A))
    assert np.abs(A - C0).max() <= 3
    assert ((C0 + 1) * np.e - 1 + 1e-4 >= A).all()
    assert ((C0 + 1) / np.e - 1 - 1e-4 <= A).all()
    rec = a.uns["sad"]["attacks"]["ct"]
    assert rec["params"]["space"] == "counts"
    assert rec["params"]["max_log_fc"] == 1.0
    cont, rounded = rec["metrics"]["flip_rate_continuous"]["ct_eps3"], rec["metrics"]["flip_rate"]["ct_eps3"]
    assert 0 < rounded <= 1
    assert 0 <= cont <= 1
    # re-preprocess the attacked counts (all genes, the kept ones replaced) like new data
    raw = pbmc3k_raw[a.obs_names].copy()
    X = raw.X.toarray() if sp.issparse(raw.X) else np.array(raw.X)
    X[:, raw.var_names.get_indexer(a.var_names)] = A
    new = ad.AnnData(sp.csr_matrix(X), obs=raw.obs[[]].copy(), var=raw.var[[]].copy())
    sad.pp.preprocess(new, reference=a)
    sad.tl.predict(new, sad.tl.get_model(a))
    assert (new.obs["sad_pred"].astype(str).to_numpy() == a.obs["ct_eps3_pred"].astype(str).to_numpy()).all()


@pytest.mark.parametrize(("method", "eps"), [("cw", 4.0), ("deepfool", 4.0)])
def test_cw_and_deepfool_flip_within_l2_budget(cells3k, method, eps):
    a = cells3k[:120].copy()
    sad.tl.attack(a, method, eps=eps, key_added=method)
    d = a.layers[f"{method}_eps{eps:g}"] - a.X
    assert np.linalg.norm(d, axis=1).max() <= eps * (1 + 1e-5)
    assert a.uns["sad"]["attacks"][method]["metrics"]["flip_rate"][f"{method}_eps{eps:g}"] > 0.3
    assert a.uns["sad"]["attacks"][method]["params"]["norm"] == "l2"


@pytest.mark.parametrize("method", ["cw", "deepfool"])
def test_cw_and_deepfool_respect_expressed_log(cells3k, method):
    a = cells3k[:40].copy()
    sad.tl.attack(a, method, eps=3.0, space="log", constraint="expressed", key_added="m")
    L, A = a.layers["sad_lognorm"], a.layers["m_eps3"]
    np.testing.assert_array_equal(A[L == 0], 0)
    assert A.min() >= 0
    assert np.linalg.norm(A - L, axis=1).max() <= 3.0 * (1 + 1e-5)
    assert a.uns["sad"]["attacks"]["m"]["metrics"]["flip_rate"]["m_eps3"] > 0


def test_targeted_pgd(cells3k):
    a = cells3k.copy()
    target = "NK"
    sad.tl.attack(a, eps=0.5, space="log", target_class=target, key_added="to_nk")
    rec = a.uns["sad"]["attacks"]["to_nk"]
    pred = a.obs["to_nk_eps0.5_pred"].astype(str).to_numpy()
    others = a.obs["sad_pred"].astype(str).to_numpy() != target
    assert rec["params"]["target"] == target
    assert np.isclose(rec["metrics"]["target_rate"]["to_nk_eps0.5"], (pred[others] == target).mean())
    assert (pred[others] == target).mean() > 0.5
    # per-cell targets: each cell toward a class of its own
    classes = np.array(sad.tl.get_model(a).classes)
    per_cell = classes[(a.obs["sad_pred"].cat.codes.to_numpy() + 1) % len(classes)]
    sad.tl.attack(a, "pgd_l2", eps=4.0, space="log", target_class=per_cell, key_added="pc", alpha=0.5)
    assert a.uns["sad"]["attacks"]["pc"]["params"]["target"] == "per_cell"
    assert a.uns["sad"]["attacks"]["pc"]["metrics"]["target_rate"]["pc_eps4"] > 0.3


def test_per_cell_mask_and_layer_mask(cells3k):
    a = cells3k[:100].copy()
    rng = np.random.default_rng(0)
    mask = rng.random(a.shape) < 0.3
    sad.tl.attack(a, eps=0.2, threat=sad.tl.ThreatModel(space="log", mask=mask), key_added="pm")
    L = a.layers["sad_lognorm"]
    np.testing.assert_array_equal(a.layers["pm_eps0.2"][~mask], L[~mask])
    a.layers["allowed"] = mask.astype(np.float32)
    sad.tl.attack(a, eps=0.2, space="log", mask="allowed", key_added="lm")
    np.testing.assert_array_equal(a.layers["lm_eps0.2"], a.layers["pm_eps0.2"])
    assert a.uns["sad"]["attacks"]["lm"]["params"]["mask"] == "allowed"


def test_bad_threats(cells3k):
    a = cells3k[:20].copy()
    with pytest.raises(ValueError, match="needs space='counts'"):
        sad.tl.attack(a, space="log", constraint="counts")
    with pytest.raises(ValueError, match="constraint=.biological. is not one of"):
        sad.tl.attack(a, constraint="biological")
    with pytest.raises(TypeError, match="ThreatModel"):
        sad.tl.attack(a, epsilon=0.1)
    with pytest.raises(ValueError, match="step-wise method"):
        sad.tl.attack(a, "cw", detector=_LinearDetector(a.n_vars))
    with pytest.raises(ValueError, match="max_log_fc"):
        sad.tl.attack(a, max_log_fc=-1.0)


def test_projection_rounding_stays_inside():
    x0 = torch.tensor([[0.0, 2.0, 5.0]])
    p = Projection(eps=1.5, norm="linf", lower=torch.zeros(3), integer=True)
    x = p(x0, torch.tensor([[-1.4, 1.6, -0.6]]))
    r = p.round(x0, x)
    assert torch.equal(r, torch.round(r))
    assert (r >= 0).all()
    assert (r - x0).abs().max() <= 1.5


class _LinearDetector(nn.Module):
    """A tiny real detector: a fixed linear logit of the scaled input, with a probability threshold."""

    def __init__(self, n_genes: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(n_genes, generator=g) / n_genes**0.5)
        self.register_buffer("threshold", torch.tensor(0.5))

    def score_logit(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w


def test_detector_aware_pgd_lowers_the_detector_logit(cells3k):
    a = cells3k[:100].copy()
    det = _LinearDetector(a.n_vars)
    sad.tl.attack(a, eps=0.1, detector=det, detector_weight=0.0, key_added="plain")
    sad.tl.attack(a, eps=0.1, detector=det, detector_weight=(1.0, 10.0, 100.0), key_added="aware")
    clf = sad.tl.get_model(a)
    with torch.no_grad():
        lp = det.score_logit(torch.from_numpy(a.layers["plain_eps0.1"])).numpy()
        la = det.score_logit(torch.from_numpy(a.layers["aware_eps0.1"])).numpy()
    flip_p = a.obs["plain_eps0.1_pred"].astype(str) != a.obs["sad_pred"].astype(str)
    flip_a = a.obs["aware_eps0.1_pred"].astype(str) != a.obs["sad_pred"].astype(str)
    assert la[flip_a.to_numpy()].mean() < lp[flip_p.to_numpy()].mean() - 1.0
    rec = a.uns["sad"]["attacks"]["aware"]
    assert list(rec["params"]["detector_weight"]) == [1.0, 10.0, 100.0]
    m = rec["metrics"]["detector"]["aware_eps0.1"]
    assert m["weight_chosen"].sum() == a.n_obs
    assert 0 <= m["evasion"] <= 1
    assert np.abs(a.layers["aware_eps0.1"] - a.X).max() <= 0.1 + 1e-5
    assert clf is not None


def test_detector_aware_pgd_with_the_trained_detector(pipeline68k):
    a = pipeline68k.copy()
    sad.tl.train_detector(a, config=sad.detection.DetectorConfig(triplet_epochs=2, epochs=4), random_state=0)
    det = sad.get.model(a, "detector")
    test = a[a.obs["sad_split"] == "test"].copy()
    sad.tl.attack(test, eps=0.5, key_added="plain")
    sad.tl.attack(test, eps=0.5, detector=det, detector_weight=(1.0, 10.0), key_added="aware")
    sad.tl.detect(test, ["plain_eps0.5", "aware_eps0.5"], model=det)
    ev = test.uns["sad"]["attacks"]["aware"]["metrics"]["detector"]["aware_eps0.5"]["evasion"]
    flip = test.obs["aware_eps0.5_pred"].astype(str) != test.obs["sad_pred"].astype(str)
    flagged = test.obs["sad_adversarial_aware_eps0.5"].to_numpy(bool)
    assert np.isclose(ev, (flip.to_numpy() & ~flagged).mean(), atol=0.02)
    assert test.obs["sad_score_aware_eps0.5"].mean() <= test.obs["sad_score_plain_eps0.5"].mean() + 1e-6


WHITEBOX = ["pgd", "pgd_rs", "pgd_l2", "fgsm", "cw", "deepfool"]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(WHITEBOX),
    space=st.sampled_from(["scaled", "log", "counts"]),
    constraint=st.sampled_from([None, "observed", "expressed", "counts"]),
    eps=st.sampled_from([0.1, 0.5, 2.0]),
    fc=st.sampled_from([None, 0.5]),
    seed=st.integers(0, 3),
)
def test_every_whitebox_attack_respects_its_threat(cells3k, method, space, constraint, eps, fc, seed):
    if constraint == "counts" and space != "counts":
        constraint = None
    a = cells3k[:24].copy()
    rng = np.random.default_rng(seed)
    mask = rng.random(a.n_vars) < 0.5
    sad.tl.attack(
        a,
        method,
        eps=eps,
        space=space,
        constraint=constraint,
        max_log_fc=fc,
        mask=mask,
        steps=3,
        cw_search_steps=2,
        random_state=seed,
        key_added="h",
    )
    base = {"scaled": a.X, "log": a.layers["sad_lognorm"], "counts": _dense(a.layers["counts"])}[space]
    A = a.layers[f"h_eps{eps:g}"]
    d = A - base
    if method in ("pgd_l2", "cw", "deepfool"):
        assert np.linalg.norm(d, axis=1).max() <= eps * (1 + 1e-5) + 1e-6
    else:
        assert np.abs(d).max() <= eps + 1e-5
    np.testing.assert_array_equal(A[:, ~mask], base[:, ~mask])
    if constraint == "observed":
        assert (base.min(0) - 1e-6 <= A).all()
        assert (base.max(0) + 1e-6 >= A).all()
    if constraint == "expressed":
        unexpressed = a.layers["sad_lognorm"] == 0
        np.testing.assert_array_equal(A[unexpressed], base[unexpressed])
    if space == "counts":
        assert A.min() >= 0
    if constraint == "counts":
        assert np.array_equal(A, np.round(A))
    if fc is not None and space == "log":
        assert np.abs(d).max() <= fc + 1e-5
    rec = a.uns["sad"]["attacks"]["h"]["params"]
    assert rec["space"] == space
    assert rec["constraint"] == (constraint or "none")


def test_perturbation_plot_reads_the_layer_space(cells3k):
    import matplotlib.pyplot as plt

    a = cells3k[:60].copy()
    sad.tl.attack(a, eps=2.0, space="counts", constraint="counts", key_added="pc")
    sad.tl.attack(a, eps=0.5, space="log", constraint="expressed", key_added="pl")
    axs = sad.pl.perturbation(a, "pl_eps0.5", groupby="seurat_cell_type", n_genes=5, show=False)
    assert "log-normalized" in axs[0].figure.axes[-2].get_ylabel()
    axs = sad.pl.perturbation(a, "pc_eps2", groupby="seurat_cell_type", n_genes=5, space="log", show=False)
    change = axs[2].images[0].get_array()
    assert np.isfinite(change).all()
    assert np.abs(change).max() > 0
    plt.close("all")


@pytest.mark.parametrize("method", ["square", "nes"])
def test_score_based_methods_through_attack(cells3k, method):
    """Square Attack / NES query only probabilities, through the transform, and respect the threat."""
    a = cells3k[:40].copy()
    sad.tl.attack(a, method, eps=0.5, space="log", constraint="expressed", max_queries=200, key_added="sb")
    L, A = a.layers["sad_lognorm"], a.layers["sb_eps0.5"]
    np.testing.assert_array_equal(A[L == 0], 0)
    assert A.min() >= 0
    assert np.abs(A - L).max() <= 0.5 + 1e-5
    rec = a.uns["sad"]["attacks"]["sb"]
    assert rec["kind"] == "score_based"
    assert rec["params"]["max_queries"] == 200
    assert 1 <= rec["metrics"]["queries"]["sb_eps0.5"] <= 200
    assert rec["metrics"]["flip_rate"]["sb_eps0.5"] > 0
    with pytest.raises(ValueError, match="space='log' or 'scaled'"):
        sad.tl.attack(a, method, eps=1.0, space="counts")
