from __future__ import annotations

import numpy as np
import pytest
import scanpy as sc

import scadversarial as sad


# scanpy's own scale() warns that centering densifies the sparse reference it is compared with.
@pytest.mark.filterwarnings("ignore:zero-centering a sparse array:UserWarning")
def test_preprocess_counts_matches_scanpy(pbmc3k_raw):
    a = pbmc3k_raw[:800].copy()
    sad.pp.preprocess(a, n_top_genes=500)
    # reference with scanpy itself
    ref = pbmc3k_raw[:800].copy()
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    sc.pp.highly_variable_genes(ref, n_top_genes=500, flavor="seurat")
    ref = ref[:, ref.var["highly_variable"]].copy()
    assert list(a.var_names) == list(ref.var_names)
    np.testing.assert_allclose(a.layers["sad_lognorm"], ref.X.toarray(), rtol=1e-5, atol=1e-5)
    sc.pp.scale(ref, max_value=10)
    np.testing.assert_allclose(np.minimum(a.X, 10), np.minimum(ref.X, 10), atol=1e-3)
    assert a.X.max() <= 10
    assert a.X.min() >= -10
    assert a.raw is not None
    assert a.raw.n_vars == pbmc3k_raw.n_vars
    assert "counts" in a.layers
    assert a.layers["counts"].shape == a.shape
    assert a.uns["sad"]["preprocess"]["params"]["n_top_genes"] == 500
    np.testing.assert_allclose(a.var["sad_std"], np.asarray(ref.var["std"]), rtol=1e-4)


def test_preprocess_already_log(pbmc68k):
    a = pbmc68k.copy()
    sad.pp.preprocess(a)  # 765 genes < 2000: all kept
    assert a.n_vars == 765
    assert a.uns["sad"]["preprocess"]["params"]["already_log"]
    assert "counts" not in a.layers
    np.testing.assert_allclose(a.X.mean(0), 0, atol=0.05)  # clipping at 10 shifts a few means


def test_preprocess_subset_false_marks(pbmc3k_raw):
    a = pbmc3k_raw[:300].copy()
    sad.pp.preprocess(a, n_top_genes=200, subset=False)
    assert a.n_vars == pbmc3k_raw.n_vars
    assert a.var["highly_variable"].sum() == 200


def test_reference_scales_identically(pbmc3k_raw):
    train = pbmc3k_raw[:1000].copy()
    sad.pp.preprocess(train, n_top_genes=300)
    new = pbmc3k_raw[1000:1200].copy()
    sad.pp.preprocess(new, reference=train)
    assert list(new.var_names) == list(train.var_names)
    np.testing.assert_array_equal(new.var["sad_mean"], train.var["sad_mean"])
    manual = np.clip(
        (new.layers["sad_lognorm"] - train.var["sad_mean"].to_numpy()) / train.var["sad_std"].to_numpy(), -10, 10
    )
    np.testing.assert_allclose(new.X, manual, atol=1e-5)


def test_pseudo_labels_kmeans_reproducible(pbmc68k):
    a = pbmc68k.copy()
    sad.pp.preprocess(a)
    sad.pp.pseudo_labels(a, n_clusters=5, random_state=1)
    first = a.obs["sad_label"].copy()
    sad.pp.pseudo_labels(a, n_clusters=5, random_state=1)
    assert (first == a.obs["sad_label"]).all()
    assert a.obs["sad_label"].nunique() == 5
    assert a.obsm["X_pca"].shape[1] == 50
    # the clusters agree with the FACS labels far better than chance
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(a.obs["bulk_labels"], a.obs["sad_label"]) > 0.2


def test_pseudo_labels_leiden(pbmc68k):
    a = pbmc68k.copy()
    sad.pp.preprocess(a)
    sad.pp.pseudo_labels(a, method="leiden", resolution=0.5)
    assert a.obs["sad_label"].nunique() >= 3


def test_split_stratified_and_reproducible(pbmc68k):
    a = pbmc68k.copy()
    sad.pp.split(a, "bulk_labels", train_size=0.5, val_size=0.2, random_state=3)
    s1 = a.obs["sad_split"].copy()
    sad.pp.split(a, "bulk_labels", train_size=0.5, val_size=0.2, random_state=3)
    assert (s1 == a.obs["sad_split"]).all()
    frac = a.obs["sad_split"].value_counts(normalize=True)
    assert abs(frac["train"] - 0.5) < 0.02
    assert abs(frac["val"] - 0.2) < 0.02
    # every class present in every split, in proportion
    tab = a.obs.groupby(["bulk_labels", "sad_split"], observed=True).size().unstack()
    assert (tab > 0).all().all()
    ratio = tab["train"] / tab.sum(1)
    assert ratio.between(0.4, 0.6).all()


def test_preprocess_rejects_scaled(pbmc68k):
    import scanpy as sc

    scaled = sc.datasets.pbmc68k_reduced()
    before = scaled.X.copy()
    with pytest.raises(ValueError, match="negative"):
        sad.pp.preprocess(scaled)
    np.testing.assert_array_equal(scaled.X, before)


def test_pseudo_labels_merge_outlier_clusters(pbmc3k_raw):
    a = pbmc3k_raw[:1000].copy()
    sad.pp.preprocess(a, n_top_genes=500)
    sad.pp.pseudo_labels(a, n_clusters=10, min_size=40)
    sizes = a.obs["sad_label"].value_counts()
    assert sizes.min() >= 40
    assert a.uns["sad"]["pseudo_labels"]["params"]["min_size"] == 40
