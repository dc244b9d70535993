"""Bad input raises a clear ValueError/KeyError and leaves the AnnData unchanged."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData

import scadversarial as sad


def snapshot(a: AnnData):
    X = a.X.toarray() if sp.issparse(a.X) else np.array(a.X, copy=True)
    return (
        a.shape,
        X,
        list(a.obs.columns),
        list(a.var.columns),
        sorted(a.layers),
        sorted(a.obsm),
        repr(a.uns.get("sad", {}).keys()),
    )


def assert_unchanged(a, snap):
    now = snapshot(a)
    assert now[0] == snap[0]
    np.testing.assert_array_equal(now[1], snap[1])
    assert now[2:] == snap[2:]


@pytest.fixture
def counts(pbmc3k_raw):
    return pbmc3k_raw[:200, :400].copy()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_inf(counts, bad):
    X = counts.X.toarray().astype(np.float32)
    X[3, 5] = bad
    counts.X = X
    snap = snapshot(counts)
    with pytest.raises(ValueError, match="NaN or infinite"):
        sad.pp.preprocess(counts)
    assert_unchanged(counts, snap)


def test_negative_counts(counts):
    X = counts.X.toarray().astype(np.float32)
    X[0, 0] = -3
    counts.X = X
    snap = snapshot(counts)
    with pytest.raises(ValueError, match="negative values"):
        sad.pp.preprocess(counts, already_log=False)
    assert_unchanged(counts, snap)


def test_empty_anndata():
    empty = AnnData(np.zeros((0, 10), np.float32))
    with pytest.raises(ValueError, match="empty"):
        sad.pp.preprocess(empty)
    with pytest.raises(TypeError, match="AnnData"):
        sad.pp.preprocess(np.zeros((3, 3)))


def test_missing_labels_key(pipeline68k):
    a = pipeline68k.copy()
    snap = snapshot(a)
    with pytest.raises(KeyError, match="not_a_key"):
        sad.pp.split(a, "not_a_key")
    with pytest.raises(KeyError, match="not_a_key"):
        sad.tl.train_classifier(a, "not_a_key")
    assert_unchanged(a, snap)


def test_single_class(pipeline68k):
    a = pipeline68k.copy()
    a.obs["one"] = "T cell"
    snap = snapshot(a)
    with pytest.raises(ValueError, match="single class"):
        sad.pp.split(a, "one")
    with pytest.raises(ValueError, match="single class"):
        sad.tl.train_classifier(a, "one")
    assert_unchanged(a, snap)


def test_class_too_small_to_stratify(pipeline68k):
    a = pipeline68k.copy()
    lab = np.array(["A"] * a.n_obs, dtype=object)
    lab[: a.n_obs // 2] = "B"
    lab[-2:] = "rare"
    a.obs["lab"] = lab
    snap = snapshot(a)
    with pytest.raises(ValueError, match="too small.*rare"):
        sad.pp.split(a, "lab")
    assert_unchanged(a, snap)


def test_missing_layer(pipeline68k):
    a = pipeline68k.copy()
    snap = snapshot(a)
    with pytest.raises(KeyError, match="no_such_layer"):
        sad.tl.predict(a, layer="no_such_layer")
    with pytest.raises(KeyError, match="no_such_layer"):
        sad.tl.attack(a, layer="no_such_layer")
    assert_unchanged(a, snap)


def test_model_on_data_missing_genes(pipeline68k):
    a = pipeline68k.copy()
    model = sad.tl.get_model(a)
    dropped = list(a.var_names[[3, 7]])
    b = a[:, ~a.var_names.isin(dropped)].copy()
    snap = snapshot(b)
    with pytest.raises(KeyError) as err:
        sad.tl.predict(b, model)
    assert all(g in str(err.value) for g in dropped)
    assert "missing" in str(err.value)
    assert_unchanged(b, snap)
    # the explicit fill policy works and is honest about it
    sad.tl.predict(b, model, missing="fill")
    assert (b.obs["sad_pred"] == a.obs["sad_pred"]).mean() > 0.9


def test_filled_genes_are_logged_once_when_x_falls_back_to_lognorm(pipeline68k, caplog):
    """predict(missing='fill') on an unscaled X reads sad_lognorm instead: the filled genes are logged once."""
    a = pipeline68k.copy()
    model = sad.tl.get_model(a)
    b = a[:, ~a.var_names.isin(a.var_names[[3, 7]])].copy()
    b.X = np.asarray(b.layers["sad_lognorm"]).copy()  # not the classifier's scaled input
    with caplog.at_level(logging.WARNING, logger="scadversarial"):
        sad.tl.predict(b, model, missing="fill")
    messages = [r.getMessage() for r in caplog.records]
    assert any("non-negative" in m for m in messages)
    assert sum("Filled 2 missing genes" in m for m in messages) == 1, messages
    assert (b.obs["sad_pred"] == a.obs["sad_pred"]).mean() > 0.9


def test_log_space_hardening_without_lognorm_layer_names_the_fix(pipeline68k):
    """Gaussian augmentation and log-space adversarial training read .layers['sad_lognorm']: its absence names the fix."""
    a = pipeline68k.copy()
    del a.layers["sad_lognorm"]
    snap = snapshot(a)
    for options in (
        {"augment": sad.tl.GaussianAugmentation()},
        {"adversarial": sad.tl.AdversarialTraining(space="log")},
    ):
        with pytest.raises(KeyError, match=r"needs? \.layers\['sad_lognorm'\].*sad\.pp\.preprocess\(adata\)"):
            sad.tl.train_classifier(a, max_epochs=1, **options)
        assert_unchanged(a, snap)


def test_no_classifier_yet(pbmc68k):
    a = pbmc68k.copy()
    with pytest.raises(KeyError, match="train_classifier"):
        sad.tl.predict(a)
    sad.pp.preprocess(a)
    sad.pp.pseudo_labels(a)
    with pytest.raises(KeyError, match="sad.pp.split"):
        sad.tl.train_classifier(a)


def test_bad_attack_options(pipeline68k):
    a = pipeline68k.copy()
    snap = snapshot(a)
    with pytest.raises(ValueError, match=r"method=.nope. is not one of .pgd.*Pass one of these"):
        sad.tl.attack(a, "nope")
    with pytest.raises(ValueError, match="positive"):
        sad.tl.attack(a, eps=(-0.1,))
    with pytest.raises(ValueError, match="one value per gene"):
        sad.tl.attack(a, mask=np.ones(3, bool))
    with pytest.raises(KeyError, match="labels"):
        sad.tl.attack(a, labels_key="labels")
    assert_unchanged(a, snap)


def test_integer_gene_names_are_refused_with_the_fix(pbmc68k):
    a = pbmc68k[:50].copy()
    with pytest.warns(UserWarning, match="strings"):  # anndata warns, and keeps them
        a.var_names = pd.Index(np.arange(a.n_vars) + 1000)
    with pytest.raises(TypeError, match=r"var_names must be strings.*astype\(str\)"):
        sad.pp.preprocess(a)


def test_small_classes_are_named_with_plain_counts(pbmc68k):
    a = pbmc68k.copy()
    sad.pp.preprocess(a)
    labels = np.array(["big"] * a.n_obs, dtype=object)
    labels[:2] = "rare"
    a.obs["ct"] = labels
    with pytest.raises(ValueError, match=r"\{'rare': 2\}.*adata\.obs\['ct'\]\.isin\(\['rare'\]\)"):
        sad.pp.split(a, "ct")
