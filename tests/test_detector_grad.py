"""The detector's differentiable scoring path (``score_logit``): equal to the fast path, with usable gradients."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import scadversarial as sad
from scadversarial import _keys
from scadversarial.detection import differentiable_meta_features, meta_feature_tensor, straight_through

LAYERS = ["sad_pgd_eps0.1", "sad_pgd_eps0.5"]
FAST = {"config": sad.detection.DetectorConfig(triplet_epochs=4, epochs=12, rules=False)}  # the learned path
TOL = 1e-5  # the bound on |sigmoid(score_logit) - detect's score|


@pytest.fixture(scope="module")
def trained68k(pipeline68k):
    a = pipeline68k.copy()
    sad.tl.train_detector(a, random_state=0, **FAST)
    det = sad.get.model(a, "detector")
    return a, det.eval()


def _matrices(a):
    return {name: np.asarray(a.X if name is None else a.layers[name], dtype=np.float32) for name in [None, *LAYERS]}


def test_score_logit_equals_detect_scores(trained68k):
    a, det = trained68k
    b = a.copy()
    sad.tl.detect(b, [None, *LAYERS])
    for name, M in _matrices(a).items():
        x = torch.as_tensor(M)
        with torch.no_grad():
            s = torch.sigmoid(det.score_logit(x)).numpy()
        key = "sad_score" if name is None else f"sad_score_{name}"
        np.testing.assert_allclose(s, b.obs[key].to_numpy(), atol=TOL, rtol=0)
        np.testing.assert_allclose(det.score_differentiable(x).detach().numpy(), s, atol=1e-7, rtol=0)
        flag = s >= float(det.threshold)
        assert (
            flag == b.obs["sad_adversarial" if name is None else f"sad_adversarial_{name}"].to_numpy()
        ).mean() > 0.99


def test_differentiable_features_equal_fast_features(trained68k):
    a, det = trained68k
    x = torch.as_tensor(_matrices(a)["sad_pgd_eps0.1"][:200])
    fast = det.meta_features(x)
    basis = det.grad_basis
    slow = differentiable_meta_features(
        det.classifier, x, input_ref=det.input_ref, grad_basis=basis, fused=det._fused_first_layer()
    )
    torch.testing.assert_close(slow.detach(), fast, rtol=1e-5, atol=1e-5)
    # the other branches: full input gradient, no gradient, no input features
    for kw in ({}, {"gradient": False}, {"input_ref": det.input_ref}):
        ref = meta_feature_tensor(det.classifier, x, **kw)
        torch.testing.assert_close(differentiable_meta_features(det.classifier, x, **kw).detach(), ref)


def test_score_logit_gradient_is_finite_nonzero_and_matches_finite_differences(trained68k):
    a, det = trained68k
    M = _matrices(a)
    x = torch.as_tensor(np.concatenate([M[None][:4], M["sad_pgd_eps0.1"][:4], M["sad_pgd_eps0.5"][:4]]))
    xg = x.clone().requires_grad_(requires_grad=True)
    (g,) = torch.autograd.grad(det.score_logit(xg).sum(), xg)
    assert torch.isfinite(g).all()
    assert (g.abs().sum(1) > 0).all()
    # finite differences in float64 on attacked cells, whose genes all sit farther than the step
    # from their minimum (the two counts are then locally constant), with stand-ins so wide that
    # their slopes vanish: the gradient is then the true derivative of the score
    det64 = copy.deepcopy(det).double()
    h = 1e-6
    pool = torch.as_tensor(np.concatenate([M["sad_pgd_eps0.1"][:50], M["sad_pgd_eps0.5"][:50]])).double()
    far = ((pool - det64.input_ref.min_value).abs() > det64.input_ref.tol + 10 * h).all(1)
    assert far.sum() >= 3
    x64 = pool[far][:6]
    xg64 = x64.clone().requires_grad_(requires_grad=True)
    (g64,) = torch.autograd.grad(det64.score_logit(xg64, width=1e12).sum(), xg64)
    with torch.no_grad():
        for i in range(len(x64)):
            u = g64[i] / g64[i].norm()
            plus = det64.score_logit(x64[i : i + 1] + h * u)
            minus = det64.score_logit(x64[i : i + 1] - h * u)
            fd = float((plus - minus) / (2 * h))
            assert fd == pytest.approx(float(g64[i].norm()), rel=1e-3)
    # the same cells in float32: the float32 gradient points the same way
    xg = x64.float().requires_grad_(requires_grad=True)
    (g,) = torch.autograd.grad(det.score_logit(xg, width=1e12).sum(), xg)
    cos = torch.nn.functional.cosine_similarity(g.double(), g64, dim=1)
    assert (cos > 0.99).all()


def test_gradient_finite_for_reference_cells_and_saturated_cells(trained68k):
    """Regressions: a reference cell (nearest neighbour at distance 0, left out) and a cell whose
    input gradient underflows to 0 both get finite gradients (sqrt has an infinite slope at 0)."""
    a, det = trained68k
    role = a.obs[_keys.OBS_DETECTOR_ROLE].astype(str).to_numpy()
    ref = np.asarray(a.X, dtype=np.float32)[role == "reference"][:8]
    x = torch.tensor(np.concatenate([ref, 50 * ref[:2]]), requires_grad=True)  # x50: saturated softmax
    (g,) = torch.autograd.grad(det.score_logit(x).sum(), x)
    assert torch.isfinite(g).all()


def test_straight_through_forward_exact_backward_surrogate():
    x = torch.tensor([-1.0, 0.5, 2.0], requires_grad=True)
    y = straight_through(x.clamp_min(0), 3 * x)
    assert torch.equal(y.detach(), torch.tensor([0.0, 0.5, 2.0]))
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(g, torch.full((3,), 3.0))


def test_step_features_get_a_smooth_gradient(trained68k):
    """frac_at_min and frac_below_min: exact counts forward, non-zero gradients from their stand-ins."""
    a, det = trained68k
    M = _matrices(a)
    # clean cells sit at the top of the frac_at_min bump (zero slope); attacked cells are on its flanks
    x = torch.as_tensor(np.concatenate([M[None][:8], M["sad_pgd_eps0.1"][:8]])).requires_grad_(requires_grad=True)
    f = det.input_ref.differentiable(x)
    with torch.no_grad():
        torch.testing.assert_close(f, det.input_ref(x.detach()))
    for j in (0, 1):
        (g,) = torch.autograd.grad(f[:, j].sum(), x, retain_graph=True)
        assert torch.isfinite(g).all()
        assert g.abs().sum() > 0


def test_score_logit_leaves_mode_and_module_unchanged(trained68k):
    _, det = trained68k
    state = {k: v.clone() for k, v in det.state_dict().items()}
    det.train()
    x = torch.zeros(2, len(det.var_names))
    try:
        a = det.score_logit(x)
        b = det.score_logit(x)
        assert det.training
        torch.testing.assert_close(a, b)  # evaluation mode inside: no dropout
    finally:
        det.eval()
    for k, v in det.state_dict().items():
        assert torch.equal(v, state[k])


def test_score_logit_pbmc3k_attacked_layers(pipeline3k):
    """PBMC3k (Seurat labels), default detector on the seed PGD: the differentiable path equals detect."""
    a = pipeline3k.copy()
    rng = np.random.default_rng(0)
    split = a.obs["sad_split"].astype(str).to_numpy()
    keep = np.flatnonzero(split != "test")
    keep = np.sort(np.r_[rng.choice(keep, 600, replace=False), np.flatnonzero(split == "test")[:200]])
    a = a[keep].copy()
    sad.tl.attack(a, eps=(0.1,))
    sad.tl.train_detector(a, random_state=0, **FAST)
    det = sad.get.model(a, "detector").eval()
    b = a[a.obs["sad_split"].astype(str).to_numpy() == "test"].copy()
    sad.tl.detect(b, [None, "sad_pgd_eps0.1"])
    for name, key in ((None, "sad_score"), ("sad_pgd_eps0.1", "sad_score_sad_pgd_eps0.1")):
        x = torch.as_tensor(np.asarray(b.X if name is None else b.layers[name], dtype=np.float32))
        with torch.no_grad():
            s = torch.sigmoid(det.score_logit(x)).numpy()
        np.testing.assert_allclose(s, b.obs[key].to_numpy(), atol=TOL, rtol=0)
