"""sad.tl.evaluate: one table of clean accuracy, flip rates and held-out detection quality."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

import scadversarial as sad

LAYERS = ["sad_pgd_eps0.1", "sad_pgd_eps0.5"]


@pytest.fixture(scope="module")
def evaluated(pipeline68k):
    a = pipeline68k.copy()
    sad.tl.train_detector(a, config=sad.detection.DetectorConfig(triplet_epochs=4, epochs=12))
    assert sad.tl.evaluate(a) is None  # scanpy's convention: results in the AnnData, read with sad.get
    table = sad.get.evaluation_table(a)
    return a, table


def _value(table, section, metric, group):
    sel = table[(table.section == section) & (table.metric == metric) & (table.group == group)]
    assert len(sel) == 1, (section, metric, group)
    return float(sel.value.iloc[0])


def test_classifier_and_attack_rows(evaluated):
    a, table = evaluated
    test = a.obs["sad_split"].astype(str).to_numpy() == "test"
    y = a.obs["sad_label"].astype(str).to_numpy()[test]
    p = a.obs["sad_pred"].astype(str).to_numpy()[test]
    assert _value(table, "classifier", "accuracy", "overall") == pytest.approx((y == p).mean())
    for c in np.unique(y):
        assert _value(table, "classifier", "accuracy", c) == pytest.approx((p[y == c] == c).mean())
    flips = {n: a.obs[f"{n}_pred"].astype(str).to_numpy()[test] != p for n in LAYERS}
    for n, f in flips.items():
        assert _value(table, "attack", "flip_rate", n) == pytest.approx(f.mean())
    any_flip = flips[LAYERS[0]] | flips[LAYERS[1]]
    assert _value(table, "attack", "flip_rate", "any") == pytest.approx(any_flip.mean())
    c = p[0]
    assert _value(table, "attack", "flip_rate", f"any|{c}") == pytest.approx(any_flip[p == c].mean())
    # more budget flips at least as many cells
    assert _value(table, "attack", "flip_rate", LAYERS[1]) >= _value(table, "attack", "flip_rate", LAYERS[0])


def test_detector_rows_on_held_out_cells(evaluated):
    a, table = evaluated
    test = a.obs["sad_split"].astype(str).to_numpy() == "test"
    s0 = a.obs["sad_score"].to_numpy()[test]
    s1 = np.concatenate([a.obs[f"sad_score_{n}"].to_numpy()[test] for n in LAYERS])
    y = np.r_[np.zeros(len(s0)), np.ones(len(s1))]
    assert _value(table, "detector", "auroc", "pooled") == pytest.approx(roc_auc_score(y, np.r_[s0, s1]))
    assert _value(table, "detector", "average_precision", "pooled") == pytest.approx(
        average_precision_score(y, np.r_[s0, s1])
    )
    thr = float(sad.tl.get_model(a, "detector").threshold)
    assert _value(table, "detector", "threshold", "pooled") == pytest.approx(thr)
    clean_acc = (s0 < thr).mean()
    adv_acc = (s1 >= thr).mean()
    assert _value(table, "detector", "clean_accuracy", "pooled") == pytest.approx(clean_acc)
    assert _value(table, "detector", "adversarial_accuracy", "pooled") == pytest.approx(adv_acc)
    assert _value(table, "detector", "accuracy", "pooled") == pytest.approx(
        (clean_acc * len(s0) + adv_acc * len(s1)) / len(y)
    )
    for n in LAYERS:
        assert _value(table, "detector", "auroc", n) > 0.95
    assert _value(table, "detector", "auroc", "pooled") > 0.95
    assert set(table.section) == {"classifier", "attack", "detector"}


def test_stored_and_h5ad_writable(evaluated, tmp_path):
    a, table = evaluated
    rec = a.uns["sad"]["evaluate"]
    assert list(rec["table"]) == list(table.columns)
    np.testing.assert_allclose(rec["table"]["value"], table.value.to_numpy())
    assert rec["params"]["subset"] == "test"
    a.write_h5ad(tmp_path / "e.h5ad")
    b = ad.read_h5ad(tmp_path / "e.h5ad")
    np.testing.assert_allclose(b.uns["sad"]["evaluate"]["table"]["value"], table.value.to_numpy())


def test_without_detector_and_errors(pipeline68k):
    a = pipeline68k.copy()
    out = sad.tl.evaluate(a, detector_key=None, copy=True)
    assert "evaluate" not in a.uns["sad"]  # copy=True leaves the input as it was
    table = sad.get.evaluation_table(out)
    assert set(table.section) == {"classifier", "attack"}
    b = pipeline68k.copy()
    with pytest.raises(KeyError, match="train_detector"):
        sad.tl.evaluate(b)
    with pytest.raises(ValueError, match="subset"):
        sad.tl.evaluate(b, subset="nope", detector_key=None)
    assert "evaluate" not in b.uns["sad"]


def test_scores_of_a_replaced_detector_are_computed_again(pipeline68k, caplog):
    """detect -> train_detector again -> evaluate: the table describes the current detector (issue 15)."""
    a = pipeline68k.copy()
    sad.tl.train_detector(a, config=sad.detection.DetectorConfig(triplet_epochs=2, epochs=4), random_state=0)
    sad.tl.detect(a, [None, *LAYERS])
    old = a.obs["sad_score"].to_numpy().copy()
    sad.tl.train_detector(a, config=sad.detection.DetectorConfig(triplet_epochs=2, epochs=4), random_state=1)
    fresh = a.copy()
    sad.tl.detect(fresh, [None, *LAYERS])
    assert not np.allclose(fresh.obs["sad_score"], old)  # the two detectors do score differently
    with caplog.at_level(logging.INFO, logger="scadversarial"):
        sad.tl.evaluate(a)
    table = sad.get.evaluation_table(a)
    assert "scoring it again" in caplog.text
    new_id = a.uns["sad"]["detector"]["model"]["id"]
    assert {a.uns["sad"]["detect"]["metrics"][n]["detector_id"] for n in ("X", *LAYERS)} == {new_id}
    for lay in (None, *LAYERS):
        key = "sad_score" if lay is None else f"sad_score_{lay}"
        np.testing.assert_allclose(a.obs[key], fresh.obs[key], rtol=1e-5, atol=1e-6)
    test = (a.obs["sad_split"] == "test").to_numpy()
    y = np.r_[np.zeros(test.sum()), np.ones(test.sum())]
    truth = roc_auc_score(y, np.r_[fresh.obs["sad_score"][test], fresh.obs["sad_score_sad_pgd_eps0.5"][test]])
    assert np.isclose(_value(table, "detector", "auroc", "sad_pgd_eps0.5"), truth)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="scadversarial"):
        sad.tl.evaluate(a)  # the scores are current now: nothing is recomputed
    assert "scoring it again" not in caplog.text


def test_unlabelled_cells_are_left_out_of_the_accuracy(evaluated, caplog):
    """A partly annotated query set: NaN labels are left out of the accuracy rows, not counted as wrong."""
    a, full = evaluated
    a = a.copy()
    test = np.flatnonzero(a.obs["sad_split"].astype(str).to_numpy() == "test")
    gone = test[: len(test) // 3]
    labels = a.obs["sad_label"].astype(object)
    labels.iloc[gone] = np.nan
    a.obs["sad_label"] = labels
    with caplog.at_level(logging.WARNING, logger="scadversarial"):
        sad.tl.evaluate(a)
    assert f"{len(gone)} of {len(test)} cells have no label in adata.obs['sad_label']" in caplog.text
    table = sad.get.evaluation_table(a)
    kept = np.setdiff1d(test, gone)
    y = a.obs["sad_label"].to_numpy()[kept].astype(str)
    p = a.obs["sad_pred"].astype(str).to_numpy()[kept]
    assert _value(table, "classifier", "accuracy", "overall") == pytest.approx((y == p).mean())
    clf = table[table.section == "classifier"].set_index(["metric", "group"])
    assert clf.loc[("accuracy", "overall"), "n_cells"] == len(kept)
    assert clf.loc[("n_unlabelled", "overall"), "value"] == len(gone)
    assert clf.loc[("n_unlabelled", "overall"), "n_cells"] == len(test)
    assert set(clf.loc["accuracy"].index) == {"overall", *np.unique(y)}  # no class 'nan'
    for c in np.unique(y):
        assert _value(table, "classifier", "accuracy", c) == pytest.approx((p[y == c] == c).mean())
    # rows that need no labels keep every evaluated cell: the same as with every label known
    assert _value(full, "classifier", "n_unlabelled", "overall") == 0
    for section in ("attack", "detector"):
        pd.testing.assert_frame_equal(
            table[table.section == section].reset_index(drop=True), full[full.section == section].reset_index(drop=True)
        )
    labels.iloc[test] = np.nan
    a.obs["sad_label"] = labels
    with pytest.raises(ValueError, match=r"adata\.obs\['sad_label'\].*labels_key="):
        sad.tl.evaluate(a, detector_key=None)
