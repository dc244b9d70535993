from __future__ import annotations

import numpy as np
import pytest
import torch

import scadversarial as sad
from scadversarial.attacks.whitebox import attack_arrays


@pytest.fixture(scope="module")
def attacked3k(pipeline3k):
    a = pipeline3k[:600].copy()
    sad.tl.attack(a, eps=(0.05, 0.1, 0.15))
    return a


def test_pgd_layers_and_budget(attacked3k):
    a = attacked3k
    rec = a.uns["sad"]["attacks"]["sad_pgd"]
    assert list(rec["layers"]) == ["sad_pgd_eps0.05", "sad_pgd_eps0.1", "sad_pgd_eps0.15"]
    for eps, layer in zip((0.05, 0.1, 0.15), rec["layers"], strict=True):
        delta = a.layers[layer] - a.X
        assert np.abs(delta).max() <= eps + 1e-5
        assert f"{layer}_pred" in a.obs
    fr = rec["metrics"]["flip_rate"]
    # larger budgets flip at least as many cells, and PGD flips most PBMC3k cells at 0.15
    assert fr["sad_pgd_eps0.05"] <= fr["sad_pgd_eps0.1"] <= fr["sad_pgd_eps0.15"]
    assert rec["metrics"]["flip_rate_any"] >= fr["sad_pgd_eps0.15"]
    pc = rec["metrics"]["per_class"]["flip_rate"]
    assert pc.shape == (3, len(rec["metrics"]["per_class"]["classes"]))


def test_flip_rate_matches_predictions(attacked3k):
    a = attacked3k
    layer = "sad_pgd_eps0.1"
    flipped = (a.obs[f"{layer}_pred"].astype(str) != a.obs["sad_pred"].astype(str)).mean()
    assert np.isclose(flipped, a.uns["sad"]["attacks"]["sad_pgd"]["metrics"]["flip_rate"][layer])


def test_pgd_beats_random_noise(pipeline3k):
    model = sad.tl.get_model(pipeline3k)
    X = pipeline3k.X[:400]
    y = pipeline3k.obs["sad_pred"].cat.codes.to_numpy()[:400]
    adv = attack_arrays(model, X, y, eps=0.1, steps=10, alpha=0.02)[0.1]
    rng = np.random.default_rng(0)
    noise = X + rng.choice([-0.1, 0.1], size=X.shape).astype(np.float32)
    flip_adv = (model.predict_arrays(adv)[0].argmax(1) != y).mean()
    flip_noise = (model.predict_arrays(noise)[0].argmax(1) != y).mean()
    assert flip_adv > flip_noise + 0.3


@pytest.mark.parametrize("method", ["fgsm", "pgd_rs", "pgd_l2"])
def test_other_methods(pipeline3k, method):
    a = pipeline3k[:200].copy()
    sad.tl.attack(a, method, eps=0.5 if method == "pgd_l2" else 0.1, alpha=0.1 if method == "pgd_l2" else 0.02)
    layer = a.uns["sad"]["attacks"][f"sad_{method}"]["layers"][0]
    d = a.layers[layer] - a.X
    if method == "pgd_l2":
        assert np.linalg.norm(d, axis=1).max() <= 0.5 + 1e-4
    else:
        assert np.abs(d).max() <= 0.1 + 1e-5
    if method == "fgsm":  # one signed step: every gene moves by exactly eps
        assert np.allclose(np.abs(d[np.abs(d) > 0]), 0.1, atol=1e-5)


def test_mask_and_bounds(pipeline3k):
    a = pipeline3k[:200].copy()
    mask = np.zeros(a.n_vars, bool)
    mask[:100] = True
    sad.tl.attack(a, eps=0.5, mask=mask, bounds="observed", key_added="masked")
    Xa = a.layers["masked_eps0.5"]
    np.testing.assert_array_equal(Xa[:, ~mask], a.X[:, ~mask])
    assert (Xa >= a.X.min(0) - 1e-6).all()
    assert (Xa <= a.X.max(0) + 1e-6).all()
    params = a.uns["sad"]["attacks"]["masked"]["params"]
    # the older bounds='observed' is the 'observed' constraint of the scaled-space threat
    assert params["space"] == "scaled"
    assert params["constraint"] == "observed"
    assert params["bounds"] == "observed"


def test_attack_true_labels(pipeline3k):
    a = pipeline3k[:200].copy()
    sad.tl.attack(a, eps=0.1, labels_key="seurat_cell_type", key_added="true")
    assert a.uns["sad"]["attacks"]["true"]["params"]["labels_key"] == "seurat_cell_type"


def test_attack_does_not_touch_params(pipeline3k):
    model = sad.tl.get_model(pipeline3k)
    before = [p.clone() for p in model.parameters()]
    flags = [p.requires_grad for p in model.parameters()]
    a = pipeline3k[:100].copy()
    sad.tl.attack(a, eps=0.1)
    for p, b, f in zip(model.parameters(), before, flags, strict=True):
        assert torch.equal(p, b)
        assert p.grad is None
        assert p.requires_grad == f


def test_attack_refuses_x_that_was_not_scaled(pipeline3k):
    # X holding log values and no sad_lognorm layer to fall back on: attacking it would be silently wrong
    a = pipeline3k[:50].copy()
    a.X = a.layers["sad_lognorm"].copy()
    del a.layers["sad_lognorm"]
    before = set(a.layers)
    with pytest.raises(ValueError, match="sad.pp.preprocess"):
        sad.tl.attack(a, eps=0.1)
    assert set(a.layers) == before


def test_classifier_keyword_and_deprecated_model(pipeline3k):
    """`classifier=` names the attacked model, as in the black-box attacks; `model=` still works, with a warning."""
    a = pipeline3k[:50].copy()
    clf = sad.get.model(a)
    sad.tl.attack(a, eps=0.1, classifier=clf, key_added="new")
    with pytest.warns(FutureWarning, match="pass classifier= instead"):
        sad.tl.attack(a, eps=0.1, model=clf, key_added="old")
    np.testing.assert_array_equal(a.layers["old_eps0.1"], a.layers["new_eps0.1"])
    with pytest.warns(FutureWarning, match="pass classifier= instead"):
        opts = sad.tl.AttackOptions(model=clf)
    assert opts.classifier is clf
    with pytest.warns(FutureWarning), pytest.raises(TypeError, match="once"):
        sad.tl.attack(a, eps=0.1, model=clf, classifier=clf)


def test_string_options_are_checked(pipeline3k):
    a = pipeline3k[:20].copy()
    with pytest.raises(ValueError, match="method='pgdd' is not one of .*did you mean 'pgd'"):
        sad.tl.attack(a, "pgdd", eps=0.1)
    with pytest.raises(ValueError, match="space='logs' is not one of"):
        sad.tl.ThreatModel(space="logs")
    assert "sad_pgdd" not in a.uns["sad"].get("attacks", {})


def test_random_start_seeded_per_batch_and_budget(pipeline3k):
    """A budget attacked alone gets the random starts it gets inside a sweep (each batch and budget seeded apart)."""
    a = pipeline3k[:300].copy()
    sad.tl.attack(a, "pgd_rs", eps=(0.05, 0.1), steps=2, batch_size=128, key_added="both")
    sad.tl.attack(a, "pgd_rs", eps=0.1, steps=2, batch_size=128, key_added="one")
    np.testing.assert_array_equal(a.layers["both_eps0.1"], a.layers["one_eps0.1"])
    sad.tl.attack(a, "pgd_rs", eps=0.1, steps=2, batch_size=128, random_state=1, key_added="other")
    assert not np.array_equal(a.layers["other_eps0.1"], a.layers["one_eps0.1"])


def test_default_step_reaches_every_budget():
    cfg = sad.tl.AttackOptions()
    n = cfg.n_steps("pgd")
    # the seed setting where ten steps of 0.02 reach the budget, 2.5 eps / steps beyond
    assert cfg.step_size("pgd", 0.15, space="scaled", n_genes=100) == 0.02
    assert cfg.step_size("pgd", 1.0, space="scaled", n_genes=100) == pytest.approx(2.5 / n)
    assert cfg.step_size("pgd_l2", 3.0, space="scaled", n_genes=100) == pytest.approx(7.5 / n)


@pytest.mark.parametrize(("method", "eps"), [("pgd", 1.0), ("pgd_l2", 3.0)])
def test_large_scaled_budgets_are_used(pipeline3k, method, eps):
    # a fixed step of 0.02 capped every budget at 0.2, so eps 1 and eps 0.2 gave the same layer
    a = pipeline3k[:100].copy()
    sad.tl.attack(a, method, eps=eps, key_added="big")
    d = a.layers[f"big_eps{eps:g}"] - a.X
    size = np.abs(d).max() if method == "pgd" else np.linalg.norm(d, axis=1).max()
    assert 0.5 * eps < size <= eps + 1e-4


@pytest.mark.parametrize(("space", "bounds"), [("scaled", (-1.0, 1.0)), ("log", (0.05, 4.0)), ("counts", (0.0, 5.0))])
def test_custom_bounds_never_move_masked_or_clean_values_out(pipeline3k, space, bounds):
    # bounds that leave out clean values must not move entries the mask or the budget keep
    a = pipeline3k[:60].copy()
    mask = np.zeros(a.n_vars, bool)
    mask[:50] = True
    eps = 1.0 if space == "counts" else 0.1
    sad.tl.attack(a, "pgd", eps=eps, space=space, mask=mask, bounds=bounds, key_added="b")
    layer = {"scaled": None, "log": "sad_lognorm", "counts": "counts"}[space]
    M = a.X if layer is None else a.layers[layer]
    clean = (M.toarray() if hasattr(M, "toarray") else np.asarray(M)).astype(np.float64)
    d = np.asarray(a.layers[f"b_eps{eps:g}"], dtype=np.float64) - clean
    assert (d[:, ~mask] == 0).all()
    assert np.abs(d).max() <= eps + 1e-4
    lo, hi = bounds
    x = clean + d
    # an entry may stay out of the box, or move towards it, never further out
    assert ((x >= lo - 1e-5) | (x >= clean - 1e-5)).all()
    assert ((x <= hi + 1e-5) | (x <= clean + 1e-5)).all()


def test_expressed_zeros_stay_zero_under_custom_bounds(pipeline3k):
    a = pipeline3k[:60].copy()
    sad.tl.attack(a, "pgd", eps=0.1, space="log", constraint="expressed", bounds=(0.05, 4.0), key_added="e")
    L = np.asarray(a.layers["sad_lognorm"])
    assert (a.layers["e_eps0.1"][L == 0] == 0).all()


def test_reused_key_drops_the_old_runs_layers(pipeline3k):
    a = pipeline3k[:50].copy()
    sad.tl.attack(a, "pgd", eps=(1.0, 2.0), space="counts", constraint="counts", key_added="k")
    sad.tl.attack(a, "pgd", eps=1.0, key_added="k")
    assert "k_eps2" not in a.layers
    assert "k_eps2_pred" not in a.obs
    assert list(a.uns["sad"]["attacks"]["k"]["layers"]) == ["k_eps1"]
    assert sad.tl.layer_space(a, "k_eps1") == "scaled"


def test_layer_x_and_a_layer_of_another_space(pipeline3k):
    a = pipeline3k[:30].copy()
    sad.tl.attack(a, "pgd", eps=0.1, layer="X", key_added="x")
    np.testing.assert_allclose(np.abs(a.layers["x_eps0.1"] - a.X).max(), 0.1, atol=1e-5)
    with pytest.raises(ValueError, match="holds 'log' values but space='scaled'"):
        sad.tl.attack(a, "pgd", eps=0.1, space="scaled", layer="sad_lognorm")
    with pytest.raises(ValueError, match="holds 'counts' values but space='log'"):
        sad.tl.attack(a, "pgd", eps=0.1, space="log", layer="counts")


def test_observed_bounds_with_another_constraint_are_refused(pipeline3k):
    a = pipeline3k[:30].copy()
    with pytest.raises(ValueError, match="bounds='observed' is the 'observed' constraint"):
        sad.tl.attack(a, "pgd", eps=0.5, space="log", bounds="observed", constraint="expressed")


@pytest.mark.parametrize("eps", [(0.1, 0.1), (0.1, 0.1000001)])
def test_budgets_with_one_layer_name_are_refused(pipeline3k, eps):
    a = pipeline3k[:30].copy()
    with pytest.raises(ValueError, match="same layer name"):
        sad.tl.attack(a, "pgd", eps=eps)


def test_unlabelled_cells_need_no_label_unless_attacked(pipeline3k):
    a = pipeline3k[:40].copy()
    lab = a.obs["seurat_cell_type"].astype(object)
    lab.iloc[:5] = np.nan
    a.obs["partial"] = lab
    with pytest.raises(ValueError, match="5 of 40 attacked cells have no label in 'partial'"):
        sad.tl.attack(a, "pgd", eps=0.1, labels_key="partial")
    opts = sad.tl.AttackOptions(cells=a.obs["partial"].notna().to_numpy(), labels_key="partial")
    sad.tl.attack(a, "pgd", eps=0.1, options=opts, key_added="lab")
    assert a.uns["sad"]["attacks"]["lab"]["cells"]["n_cells"] == 35


def test_reused_key_keeps_the_layer_it_attacked_and_drops_old_scores(pipeline3k):
    a = pipeline3k[:40].copy()
    sad.tl.attack(a, eps=(0.1, 0.5), key_added="k")
    a.obs["sad_score_k_eps0.1"] = 0.5  # as detect leaves it on the old layer
    sad.tl.attack(a, eps=0.1, layer="k_eps0.5", key_added="k")
    assert "k_eps0.5" in a.layers  # the new run's source stays
    assert "sad_score_k_eps0.1" not in a.obs  # the layer holds another attack now
    sad.tl.attack(a, eps=0.1, layer="k_eps0.5", key_added="k2")


def test_unknown_labels_of_cells_not_attacked_are_ignored(pipeline3k):
    a = pipeline3k[:40].copy()
    lab = a.obs["seurat_cell_type"].astype(object)
    lab.iloc[:5] = "Doublet"
    a.obs["lab3"] = lab
    opts = sad.tl.AttackOptions(cells=np.arange(5, a.n_obs), labels_key="lab3")
    sad.tl.attack(a, "pgd", eps=0.1, options=opts, key_added="u")
    with pytest.raises(ValueError, match="Doublet"):
        sad.tl.attack(a, "pgd", eps=0.1, labels_key="lab3")
