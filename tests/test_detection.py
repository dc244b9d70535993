"""AnnData-level detection: train_detector, detect, meta_features (real data, no mocks)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

import scadversarial as sad
from scadversarial import _keys

LAYERS = ["sad_pgd_eps0.1", "sad_pgd_eps0.5"]
FAST = {"triplet_epochs": 4, "epochs": 12}


@pytest.fixture(scope="module")
def det68k(pipeline68k):
    """pipeline68k with a detector trained (few epochs) and X + attack layers scored. Copy before writing."""
    a = pipeline68k.copy()
    sad.tl.train_detector(a, random_state=0, **FAST)
    sad.tl.detect(a, [None, *LAYERS])
    return a


def _split(a):
    return a.obs["sad_split"].astype(str).to_numpy()


def test_roles_use_training_cells_only(det68k):
    a = det68k
    role = a.obs[_keys.OBS_DETECTOR_ROLE].astype(str).to_numpy()
    split = _split(a)
    assert set(role[split == "test"]) == {"unused"}
    assert set(split[role == "meta_train"]) == {"train"}
    assert set(split[role == "reference"]) == {"train"}
    assert set(split[role == "calibration"]) == {"val"}
    n_train = (split == "train").sum()
    assert (role == "meta_train").sum() == round(0.25 * n_train)
    m = a.uns["sad"]["detector"]["metrics"]
    assert m["n_meta_train"] == (role == "meta_train").sum()
    assert m["n_meta_examples"] == m["n_meta_train"] * (1 + len(LAYERS))


def test_detector_never_reads_test_cells(pipeline68k):
    """Scrambling every test-split cell (X and attack layers) leaves the trained detector bit-identical."""
    a = pipeline68k.copy()
    b = pipeline68k.copy()
    test = _split(b) == "test"
    rng = np.random.default_rng(1)
    for name in [None, *LAYERS]:
        M = np.array(b.X if name is None else b.layers[name], dtype=np.float32)
        M[test] = rng.normal(size=(test.sum(), M.shape[1])).astype(np.float32) * 5
        if name is None:
            b.X = M
        else:
            b.layers[name] = M
    da = sad.tl.train_detector(a, random_state=3, **FAST)
    db = sad.tl.train_detector(b, random_state=3, **FAST)
    sa, sb = da.state_dict(), db.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_pgd_scores_exceed_clean_on_test_cells(det68k):
    a = det68k
    test = _split(a) == "test"
    clean = a.obs["sad_score"].to_numpy()[test]
    for name in LAYERS:
        adv = a.obs[f"sad_score_{name}"].to_numpy()[test]
        assert adv.mean() > clean.mean() + 0.5
        auc = roc_auc_score(np.r_[np.zeros(len(clean)), np.ones(len(adv))], np.r_[clean, adv])
        assert auc > 0.95
    flags = a.obs["sad_adversarial"].to_numpy()
    assert flags.dtype == bool
    assert flags[test].mean() < 0.2


def test_threshold_reproduces_reported_tpr_fpr(det68k):
    a = det68k
    m = a.uns["sad"]["detector"]["metrics"]
    model = sad.tl.get_model(a, "detector")
    assert float(model.threshold) == pytest.approx(m["threshold"], rel=1e-6)
    cal = a.obs[_keys.OBS_DETECTOR_ROLE].astype(str).to_numpy() == "calibration"
    fpr = a.obs["sad_adversarial"].to_numpy()[cal].mean()
    tpr = np.concatenate([a.obs[f"sad_adversarial_{n}"].to_numpy()[cal] for n in LAYERS]).mean()
    assert fpr == pytest.approx(m["calibration_fpr"], abs=1e-12)
    assert tpr == pytest.approx(m["calibration_tpr"], abs=1e-12)


def test_target_fpr_threshold(pipeline68k):
    a = pipeline68k.copy()
    sad.tl.train_detector(a, target_fpr=0.05, gradient_features=False, random_state=0, **FAST)
    m = a.uns["sad"]["detector"]["metrics"]
    assert m["threshold_method"] == "target_fpr=0.05"
    assert m["calibration_fpr"] <= 0.05
    assert a.uns["sad"]["detector"]["params"]["target_fpr"] == 0.05


def test_detect_contract_and_feature_spec(det68k):
    a = det68k
    model = sad.tl.get_model(a, "detector")
    names = list(a.uns["sad"]["detect"]["feature_names"])
    assert names == model.feature_names
    for name in [None, *LAYERS]:
        meta, trip = a.obsm[_keys.meta_key(name)], a.obsm[_keys.triplet_key(name)]
        assert meta.shape == (a.n_obs, len(names))
        assert trip.shape == (a.n_obs, 64)
        np.testing.assert_allclose(np.linalg.norm(trip, axis=1), 1.0, atol=1e-5)
        s = a.obs[_keys.score_key(name)].to_numpy()
        assert ((s >= 0) & (s <= 1)).all()
    assert "sad_meta_sad_pgd_eps0.1" in a.obsm
    assert "X_sad_triplet_sad_pgd_eps0.1" in a.obsm
    groups = {"internal", "gradient", "input"}
    assert set(model.groups) == groups
    assert {"frac_at_min", "grad_log_l2", "margin", "entropy"} <= set(names)
    # meta_features() with the detector gives the detector's inputs
    b = a.copy()
    sad.tl.meta_features(b, "sad_pgd_eps0.1")
    np.testing.assert_array_equal(b.obsm["sad_meta_sad_pgd_eps0.1"], a.obsm["sad_meta_sad_pgd_eps0.1"])


def test_input_features_separate_pgd(det68k):
    """PGD in scaled space moves unexpressed genes off their zero value: the input features see it."""
    a = det68k
    names = list(a.uns["sad"]["detect"]["feature_names"])
    j = names.index("frac_at_min")
    test = _split(a) == "test"
    clean = a.obsm["sad_meta"][test, j]
    adv = a.obsm["sad_meta_sad_pgd_eps0.1"][test, j]
    assert clean.min() > 0.3
    assert adv.max() < clean.min()


def test_ablation_switches(pipeline68k):
    a = pipeline68k.copy()
    det = sad.tl.train_detector(
        a, use_triplet=False, gradient_features=False, input_features=False, key_added="det_int", **FAST
    )
    assert det.triplet is None
    assert det.input_ref is None
    assert not det.uses_gradient
    assert det.groups == ["internal"]
    assert not any(n.startswith(("grad_", "frac_")) for n in det.feature_names)
    sad.tl.detect(a, detector_key="det_int")
    # without a triplet net the embedding is the standardized meta-features
    assert a.obsm["X_sad_triplet"].shape == a.obsm["sad_meta"].shape
    np.testing.assert_allclose(
        a.obsm["X_sad_triplet"],
        (a.obsm["sad_meta"] - det.feat_mean.cpu().numpy()) / det.feat_std.cpu().numpy(),
        rtol=1e-4,
        atol=1e-4,
    )


def test_low_latency(pipeline68k):
    a = pipeline68k.copy()
    sad.tl.train_detector(a, gradient_features=False, **FAST)
    b = a.copy()
    sad.tl.detect(a)
    sad.tl.detect(b, low_latency=True)
    np.testing.assert_array_equal(a.obs["sad_score"].to_numpy(), b.obs["sad_score"].to_numpy())
    assert "sad_meta" not in b.obsm
    assert "X_sad_triplet" not in b.obsm
    sad.tl.train_detector(b, **FAST)  # with gradient features
    before = set(b.obs.columns)
    with pytest.raises(ValueError, match="gradient_features=False"):
        sad.tl.detect(b, "sad_pgd_eps0.1", low_latency=True)
    assert set(b.obs.columns) == before


def test_global_random_state_untouched(pipeline68k):
    a = pipeline68k.copy()
    t_state, np_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    sad.tl.train_detector(a, random_state=5, **FAST)
    assert torch.equal(torch.get_rng_state(), t_state)
    assert np.array_equal(np.random.get_state()[1], np_state)
    assert a.uns["sad"]["detector"]["params"]["random_state"] == 5


def test_new_anndata_aligned_by_gene_name(det68k):
    a = det68k
    rng = np.random.default_rng(0)
    order = rng.permutation(a.n_vars)
    new = ad.AnnData(np.asarray(a.X)[:50][:, order], obs=a.obs[[]].iloc[:50].copy(), var=a.var[[]].iloc[order].copy())
    model = sad.tl.get_model(a, "detector")
    sad.tl.detect(new, model=model)
    np.testing.assert_allclose(
        new.obs["sad_score"].to_numpy(), a.obs["sad_score"].to_numpy()[:50], rtol=1e-5, atol=1e-6
    )
    missing = ad.AnnData(np.asarray(new.X)[:, 5:], obs=new.obs[[]].copy(), var=new.var[[]].iloc[5:].copy())
    with pytest.raises(KeyError, match="missing"):
        sad.tl.detect(missing, model=model)
    assert "sad_score" not in missing.obs
    assert not missing.obsm


def test_errors_leave_adata_unchanged(pipeline68k):
    a = pipeline68k.copy()
    with pytest.raises(KeyError, match="train_detector"):
        sad.tl.detect(a)
    with pytest.raises(KeyError, match="sad.tl.attack"):
        sad.tl.train_detector(a, "fgsm_missing")
    with pytest.raises(ValueError, match="meta_fraction"):
        sad.tl.train_detector(a, meta_fraction=1.5)
    assert "detector" not in a.uns["sad"]
    assert _keys.OBS_DETECTOR_ROLE not in a.obs


def test_save_load_reproduces_scores_in_new_process(det68k, tmp_path):
    a = det68k.copy()
    sad.save_models(a, tmp_path / "models")
    a.write_h5ad(tmp_path / "a.h5ad")
    expected = a.obs["sad_score_sad_pgd_eps0.1"].to_numpy()
    script = f"""
import numpy as np, anndata as ad, scadversarial as sad
sad.settings.progress = False
b = ad.read_h5ad({str(tmp_path / "a.h5ad")!r})
del b.obs["sad_score_sad_pgd_eps0.1"]
sad.load_models(b, {str(tmp_path / "models")!r})
sad.tl.detect(b, "sad_pgd_eps0.1")
np.save({str(tmp_path / "scores.npy")!r}, b.obs["sad_score_sad_pgd_eps0.1"].to_numpy())
"""
    subprocess.run([sys.executable, "-c", script], check=True)
    got = np.load(tmp_path / "scores.npy")
    assert np.array_equal(got, expected)
    assert (Path(tmp_path) / "models" / "detector" / "model.safetensors").is_file()


PBMC3K = Path(__file__).parent / "data" / "pbmc3k.h5ad"


@pytest.mark.slow
def test_pbmc3k_detection_quality(pipeline3k):
    """Honest held-out detection on real PBMC3k (Seurat labels): AUROC >= 0.99 and TPR >= 0.95 at 5% FPR."""
    assert PBMC3K.is_file()
    a = pipeline3k.copy()
    sad.tl.attack(a, eps=(0.05, 0.1, 0.15))
    sad.tl.train_detector(a, random_state=0)
    sad.tl.evaluate(a)
    table = sad.get.evaluation_table(a)
    det = table[(table.section == "detector") & (table.group == "pooled")].set_index("metric").value
    assert det["auroc"] >= 0.99
    assert det["tpr_at_5fpr"] >= 0.95


def test_training_cells_are_not_flagged_for_being_reference_cells(det68k):
    """A reference cell is not its own nearest neighbour: clean cells of every role score alike."""
    a = det68k
    role = a.obs["sad_detector_role"].astype(str)
    flagged = a.obs["sad_adversarial"].astype(bool)
    ref_rate, test_rate = flagged[role == "reference"].mean(), flagged[role == "unused"].mean()
    assert ref_rate <= test_rate + 0.1, (ref_rate, test_rate)
    # one reference cell scored alone gets the score it gets in the batch
    i = int(np.flatnonzero(role.to_numpy() == "reference")[0])
    one = a[i : i + 1].copy()
    sad.tl.detect(one)
    np.testing.assert_allclose(one.obs["sad_score"].iloc[0], a.obs["sad_score"].iloc[i], rtol=1e-4, atol=1e-6)


def test_detect_and_meta_features_check_that_x_is_scaled(det68k, caplog):
    """detect and meta_features read X through the classifier-input check that predict uses (issue 15)."""
    a = det68k.copy()
    a.X = np.asarray(a.layers["sad_lognorm"]).copy()  # X left log-normalized: read sad_lognorm through the model
    with caplog.at_level(logging.WARNING, logger="scadversarial"):
        sad.tl.detect(a)
    assert "non-negative" in caplog.text
    np.testing.assert_allclose(a.obs["sad_score"], det68k.obs["sad_score"], rtol=1e-4, atol=1e-5)
    sad.tl.meta_features(a)
    np.testing.assert_allclose(a.obsm["sad_meta"], det68k.obsm["sad_meta"], rtol=1e-3, atol=1e-4)
    del a.layers["sad_lognorm"]
    before = a.obs.copy()
    for step in (sad.tl.detect, sad.tl.meta_features):
        with pytest.raises(ValueError, match=r"non-negative.*sad.pp.preprocess\(adata, reference="):
            step(a)
    pd.testing.assert_frame_equal(a.obs, before)


def test_detect_records_the_detector_that_made_the_scores(det68k):
    rec = det68k.uns["sad"]["detect"]["metrics"]
    det_id = det68k.uns["sad"]["detector"]["model"]["id"]
    assert {rec[name]["detector_id"] for name in ("X", *LAYERS)} == {det_id}
    assert rec["X"]["detector_key"] == "detector"
