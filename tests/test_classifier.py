from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import torch

import scadversarial as sad
from scadversarial.models import CellClassifier


def test_architecture():
    m = CellClassifier([f"g{i}" for i in range(2000)], list("abcdefghij"))
    shapes = [tuple(p.shape) for n, p in m.named_parameters() if n.endswith("weight")]
    assert shapes == [(256, 2000), (128, 256), (64, 128), (10, 64)]
    drops = [mod.p for mod in m.modules() if isinstance(mod, torch.nn.Dropout)]
    assert drops == [0.4, 0.4, 0.3]


def test_train_classifier_writes_contract(pipeline3k):
    a = pipeline3k
    classes = list(a.obs["seurat_cell_type"].cat.categories)
    assert a.obsm["sad_proba"].shape == (a.n_obs, len(classes))
    np.testing.assert_allclose(a.obsm["sad_proba"].sum(1), 1, atol=1e-5)
    assert a.obsm["X_sad_embedding"].shape == (a.n_obs, 64)
    assert isinstance(a.obs["sad_pred"].dtype, pd.CategoricalDtype)
    np.testing.assert_allclose(a.obs["sad_confidence"], a.obsm["sad_proba"].max(1), rtol=1e-6)
    m = a.uns["sad"]["classifier"]["metrics"]
    # Seurat labels on PBMC3k: a real classifier, well above chance
    assert m["accuracy"]["test"] > 0.8
    conf = m["test"]["confusion"]
    assert conf.shape == (len(classes), len(classes))
    assert conf.sum() == (a.obs["sad_split"] == "test").sum()
    assert np.isclose(np.trace(conf) / conf.sum(), m["accuracy"]["test"])
    assert set(m["test"]["per_class_accuracy"]) <= set(classes)
    ref = a.uns["sad"]["classifier"]["model"]
    assert {"id", "class", "path", "config", "var_names_sha256"} <= set(ref)


def test_second_classifier_writes_under_its_key(pipeline68k):
    a = pipeline68k.copy()
    before = a.obs["sad_pred"].copy(), a.obsm["sad_proba"].copy()
    sad.tl.train_classifier(a, max_epochs=2, random_state=1, key_added="second")
    # the default classifier's calls (those the detector watches) are left as they were
    pd.testing.assert_series_equal(a.obs["sad_pred"], before[0])
    np.testing.assert_array_equal(a.obsm["sad_proba"], before[1])
    second = sad.get.model(a, "second")
    proba = torch.softmax(torch.as_tensor(second.predict_arrays(np.asarray(a.X))[0]), 1).numpy()
    np.testing.assert_allclose(a.obsm["second_proba"], proba, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a.obs["second_pred"].cat.codes.to_numpy(), proba.argmax(1))
    np.testing.assert_allclose(a.obs["second_confidence"], proba.max(1), rtol=1e-6)
    assert a.obsm["X_second_embedding"].shape == (a.n_obs, 64)
    test = (a.obs["sad_split"] == "test").to_numpy()
    acc = (a.obs["second_pred"].astype(str) == a.obs["sad_label"].astype(str))[test].mean()
    assert np.isclose(sad.get.record(a, "second")["metrics"]["accuracy"]["test"], acc)


def test_eval_is_deterministic(pipeline3k):
    a = pipeline3k.copy()
    before = a.obsm["sad_proba"].copy()
    sad.tl.predict(a)
    sad.tl.predict(a)
    np.testing.assert_array_equal(a.obsm["sad_proba"], before)


def test_training_is_seeded_and_leaves_global_rng(pipeline68k):
    a = pipeline68k.copy()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    sad.tl.train_classifier(a, max_epochs=3, random_state=5)
    m1 = sad.get.model(a)
    after = torch.rand(3)
    assert torch.equal(expected, after), "training must not consume or reseed torch's global RNG"
    sad.tl.train_classifier(a, max_epochs=3, random_state=5)
    m2 = sad.get.model(a)
    for p1, p2 in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(p1, p2)


def test_predict_on_new_anndata(pbmc3k_raw, pipeline3k):
    model = sad.tl.get_model(pipeline3k)
    new = pbmc3k_raw[:300].copy()
    sad.pp.preprocess(new, reference=pipeline3k)
    sad.tl.predict(new, model)
    # the same cells, scaled with the training statistics, get the same predictions
    same = pipeline3k.obs["sad_pred"].iloc[:300].to_numpy()
    assert (new.obs["sad_pred"].to_numpy() == same).mean() > 0.99


def test_lognorm_input_through_transform(pipeline3k):
    model = sad.tl.get_model(pipeline3k)
    x_log = torch.as_tensor(pipeline3k.layers["sad_lognorm"][:50])
    x_scaled = torch.as_tensor(pipeline3k.X[:50])
    with torch.no_grad():
        torch.testing.assert_close(model.forward_lognorm(x_log), model(x_scaled), atol=1e-4, rtol=1e-4)


# --- X in the classifier's input space (issue 15): refuse or convert, never a silent wrong answer ------------

LABELS3K = "seurat_cell_type"


def _test_cells(pipeline3k, pbmc3k_raw):
    """Raw counts of PBMC3k's test-split cells and their Seurat labels."""
    test = (pipeline3k.obs["sad_split"] == "test").to_numpy()
    return pbmc3k_raw[test].copy(), pipeline3k.obs[LABELS3K].astype(str).to_numpy()[test]


def _accuracy(a, labels):
    return float((a.obs["sad_pred"].astype(str).to_numpy() == labels).mean())


def test_predict_refuses_x_that_was_not_preprocessed(pipeline3k, pbmc3k_raw):
    clf = sad.tl.get_model(pipeline3k)
    counts, _ = _test_cells(pipeline3k, pbmc3k_raw)
    lognorm = counts.copy()
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    scaled_own = lognorm[:, clf.var_names].copy()
    scaled_own.X = scaled_own.X.toarray()
    sc.pp.scale(scaled_own, max_value=10)  # scaled, but with its own statistics
    cases = [(counts, "raw counts"), (lognorm, "log-normalized values"), (scaled_own, "other per-gene statistics")]
    for new, problem in cases:
        before = new.obs.copy()
        with pytest.raises(ValueError, match=problem) as err:
            sad.tl.predict(new, classifier=clf)
        assert "sad.pp.preprocess(adata, reference=" in str(err.value)
        pd.testing.assert_frame_equal(new.obs, before)  # nothing written


def test_predict_reads_lognorm_through_the_model_when_x_is_not_scaled(pipeline3k, pbmc3k_raw, caplog):
    clf = sad.tl.get_model(pipeline3k)
    counts, labels = _test_cells(pipeline3k, pbmc3k_raw)
    good = sad.pp.preprocess(counts, reference=pipeline3k, copy=True)
    sad.tl.predict(good, classifier=clf)
    assert _accuracy(good, labels) > 0.8
    unscaled = good.copy()
    unscaled.X = unscaled.layers["sad_lognorm"].copy()  # X left log-normalized
    own = counts[:, clf.var_names].copy()  # scaled by preprocess without `reference=`: its own statistics
    own.raw = None
    sad.pp.preprocess(own, n_top_genes=None)
    own.layers["sad_lognorm"] = good.layers["sad_lognorm"].copy()  # normalized over all genes, as training
    for new, problem in ((unscaled, "non-negative"), (own, "differ from the classifier's training statistics")):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="scadversarial"):
            sad.tl.predict(new, classifier=clf)
        assert problem in caplog.text
        assert "sad_lognorm" in caplog.text
        np.testing.assert_array_equal(new.obs["sad_pred"].to_numpy(), good.obs["sad_pred"].to_numpy())
        np.testing.assert_allclose(new.obsm["sad_proba"], good.obsm["sad_proba"], atol=1e-5)


def test_correctly_preprocessed_data_is_never_flagged(pipeline3k, pbmc3k_raw, pipeline68k, pbmc68k):
    clf = sad.tl.get_model(pipeline3k)
    counts, _ = _test_cells(pipeline3k, pbmc3k_raw)
    new = sad.pp.preprocess(counts, reference=pipeline3k, copy=True)
    float64 = new.copy()
    float64.X = np.asarray(new.X, dtype=np.float64)
    for a in (pipeline3k, new, new[:5].copy(), new[[7]].copy(), new[new.obs_names[::50]].copy(), float64):
        assert sad.tl.input_space_problem(a, clf, sad.tl.scaled_matrix(a, clf)) is None, a.n_obs
    no_var = new[:3].copy()
    del no_var.var["sad_mean"], no_var.var["sad_std"]  # only the sample test applies
    assert sad.tl.input_space_problem(no_var, clf, sad.tl.scaled_matrix(no_var, clf)) is None
    # pbmc68k_reduced: preprocessed from log-normalized values (no counts)
    clf68 = sad.tl.get_model(pipeline68k)
    new68 = sad.pp.preprocess(pbmc68k[:40].copy(), reference=pipeline68k, copy=True)
    for a in (pipeline68k, new68, new68[:1].copy()):
        assert sad.tl.input_space_problem(a, clf68, sad.tl.scaled_matrix(a, clf68)) is None
    sad.tl.predict(new68, classifier=clf68)
    same = pipeline68k.obs["sad_pred"].to_numpy()[:40]
    assert (new68.obs["sad_pred"].to_numpy() == same).all()


def test_train_classifier_refuses_a_class_without_training_cells(pipeline68k):
    a = pipeline68k.copy()
    labels = a.obs["sad_label"].astype(str).to_numpy().copy()
    first_test = int(np.flatnonzero(a.obs["sad_split"].to_numpy() == "test")[0])
    labels[first_test] = "lonely"  # a 1-cell class, its cell outside the training split
    a.obs["sad_label"] = pd.Categorical(labels)
    uns_before = repr(sorted(a.uns["sad"]["classifier"]))
    with pytest.raises(ValueError, match=r"'lonely': 1\}") as err:
        sad.tl.train_classifier(a, max_epochs=1)
    assert "sad.pp.split(adata, 'sad_label')" in str(err.value)
    assert "drop or merge" in str(err.value)
    assert repr(sorted(a.uns["sad"]["classifier"])) == uns_before


def test_predict_model_keyword_is_deprecated(pipeline68k):
    """``predict(model=)`` still works for one release, with a FutureWarning naming ``classifier=``."""
    a = pipeline68k.copy()
    clf = sad.get.model(a)
    with pytest.warns(FutureWarning, match="pass classifier= instead"):
        sad.tl.predict(a, model=clf)
    with pytest.raises(TypeError, match="both classifier= and model="):
        sad.tl.predict(a, classifier=clf, model=clf)
    with pytest.raises(ValueError, match="missing='zero' is not one of"):
        sad.tl.predict(a, missing="zero")
