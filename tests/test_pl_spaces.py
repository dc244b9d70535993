"""The cell and embedding plots read an attack layer in the space it was made in (issue 15)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display in tests

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

import scadversarial as sad

LOG_LAYER = "sad_logpgd_eps1"  # PGD in log-normalized space: the layer holds log values, not scaled ones


@pytest.fixture(scope="module")
def log_attacked(pipeline68k):
    a = pipeline68k.copy()
    sad.tl.attack(a, "pgd", eps=1.0, space="log", key_added="sad_logpgd")
    assert sad.tl.layer_space(a, LOG_LAYER) == "log"
    yield a
    plt.close("all")


def test_cell_reads_a_log_layer_through_the_classifier_transform(log_attacked):
    a = log_attacked
    clf = sad.tl.get_model(a)
    logits, _ = clf.predict_arrays(sad.tl.scaled_matrix(a, clf, LOG_LAYER))
    proba = torch.softmax(torch.from_numpy(logits), 1).numpy()
    i = int(np.argmin(proba.max(1)))  # the least confident cell: no saturated probabilities to hide a wrong read
    ax = sad.pl.cell(a, i, LOG_LAYER, show=False)
    n = len(clf.classes)
    adv = [p.get_height() for p in ax.patches[n : 2 * n]]
    np.testing.assert_allclose(adv, proba[i], atol=1e-5)
    assert clf.classes[int(np.argmax(adv))] == a.obs[f"{LOG_LAYER}_pred"].iloc[i]


def test_embedding_reads_a_log_layer_through_the_classifier_transform(log_attacked):
    a = log_attacked
    clf = sad.tl.get_model(a)
    emb = sad.pl.embedding_adata(a, LOG_LAYER, basis="classifier")
    test = (a.obs["sad_split"] == "test").to_numpy()
    expected = clf.predict_arrays(sad.tl.scaled_matrix(a, clf, LOG_LAYER))[1][test]
    adversarial = (emb.obs["state"] == "adversarial").to_numpy()
    np.testing.assert_allclose(emb.obsm["X_rep"][adversarial], expected, rtol=1e-5, atol=1e-5)
