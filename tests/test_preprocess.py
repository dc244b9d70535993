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


def _unchanged(a, X_before, obs_before, uns_before) -> None:
    """Nothing written: the matrix, .obs columns and .uns keys as before the call."""
    X = a.X.toarray() if hasattr(a.X, "toarray") else np.asarray(a.X)
    np.testing.assert_array_equal(X, X_before)
    assert list(a.obs.columns) == obs_before
    assert sorted(a.uns) == uns_before


def _state(a):
    X = a.X.toarray() if hasattr(a.X, "toarray") else np.asarray(a.X)
    return X.copy(), list(a.obs.columns), sorted(a.uns)


def test_reference_target_sum_is_the_references(pbmc3k_raw):
    """New data are normalized to the reference's target sum, not the default; a conflicting one raises."""
    train, query = pbmc3k_raw[:1500].copy(), pbmc3k_raw[1500:].copy()
    sad.pp.preprocess(train, target_sum=1e6, n_top_genes=500)
    implicit = sad.pp.preprocess(query, reference=train, copy=True)
    explicit = sad.pp.preprocess(query, reference=train, target_sum=1e6, copy=True)
    np.testing.assert_array_equal(implicit.X, explicit.X)
    np.testing.assert_array_equal(implicit.layers["sad_lognorm"], explicit.layers["sad_lognorm"])
    assert implicit.uns["sad"]["preprocess"]["params"]["target_sum"] == 1e6
    # the query's log values are those of its counts at 1e6: log1p(counts * 1e6 / library)
    counts = query[:, train.var_names].X.toarray()
    library = np.asarray(query.X.sum(1)).ravel()
    np.testing.assert_allclose(
        implicit.layers["sad_lognorm"], np.log1p(counts * (1e6 / library)[:, None]), rtol=1e-5, atol=1e-5
    )
    before = _state(query)
    with pytest.raises(ValueError, match=r"target_sum=10000 differs from the reference's \(1e\+06\)"):
        sad.pp.preprocess(query, reference=train, target_sum=1e4)
    _unchanged(query, *before)


def test_reference_record_is_this_calls(pbmc3k_raw):
    """The record keeps this call's layer, already_log and target sum: count-space code reads them."""
    from scadversarial.tl._space import counts_target_sum

    train = pbmc3k_raw[:1500].copy()
    sc.pp.normalize_total(train)
    sc.pp.log1p(train)  # a reference built from log-normalized values
    sad.pp.preprocess(train, n_top_genes=500)
    assert train.uns["sad"]["preprocess"]["params"]["already_log"]
    query = pbmc3k_raw[1500:].copy()
    query.layers["raw"] = query.X.copy()
    sad.pp.preprocess(query, reference=train, layer="raw")  # holds counts
    params = query.uns["sad"]["preprocess"]["params"]
    assert params["already_log"] is False
    assert params["layer"] == "raw"
    assert "counts" in query.layers
    assert counts_target_sum(query) == 1e4
    # and the other way round: a log-normalized query of a counts reference has no counts
    ref = pbmc3k_raw[:1500].copy()
    sad.pp.preprocess(ref, n_top_genes=500)
    logq = pbmc3k_raw[1500:].copy()
    sc.pp.normalize_total(logq)
    sc.pp.log1p(logq)
    sad.pp.preprocess(logq, reference=ref)
    assert logq.uns["sad"]["preprocess"]["params"]["already_log"] is True
    assert "counts" not in logq.layers
    assert counts_target_sum(logq) is None


def _normalized(a, *, log: bool):
    a = a.copy()
    sc.pp.normalize_total(a)
    if log:
        sc.pp.log1p(a)
        del a.uns["log1p"]
    return a


@pytest.mark.parametrize(
    ("case", "kwargs", "match"),
    [
        ("stale_uns", {}, r"raw counts \(integers, max \d+\) although adata.uns\['log1p'\] is set.*del adata.uns"),
        ("counts", {"already_log": True}, r"raw counts \(integers, max \d+\) although already_log=True"),
        ("normalized", {}, r"values up to .* too large for log-normalized.*not log-transformed"),
        ("normalized", {"already_log": True}, r"too large for log-normalized data .* because already_log=True"),
        ("log", {"already_log": False}, r"looks log-normalized already, although already_log=False"),
    ],
)
@pytest.mark.parametrize("n_top_genes", [300, None])
def test_not_log_normalized_is_refused(pbmc3k_raw, case, kwargs, match, n_top_genes):
    """Data taken for log-normalized that are not (or log data given as counts) raise, naming the fix."""
    a = pbmc3k_raw[:500].copy()
    if case == "stale_uns":
        a.uns["log1p"] = {"base": None}
    elif case in ("normalized", "log"):
        a = _normalized(a, log=case == "log")
    before = _state(a)
    with pytest.raises(ValueError, match=match):
        sad.pp.preprocess(a, n_top_genes=n_top_genes, **kwargs)
    _unchanged(a, *before)


def test_non_integer_counts_warn(pbmc3k_raw):
    """Large non-integer values given as counts (e.g. estimated counts) are processed, with a warning."""
    a = pbmc3k_raw[:300].copy()
    a.X = a.X.astype(np.float32) * 1.5
    undecided = a.copy()
    with pytest.warns(UserWarning, match="non-integer values .* already_log=False"):
        sad.pp.preprocess(a, already_log=False, n_top_genes=100)
    assert "counts" in a.layers
    with pytest.raises(ValueError, match="too large for log-normalized"):  # undecided: not taken for log values
        sad.pp.preprocess(undecided, n_top_genes=100)


def test_mixed_input_decided_alike_in_memory_and_dask(pbmc3k_raw):
    """Count cells before log-normalized ones: the whole matrix decides, in memory and with dask alike."""
    import anndata as ad
    import dask.array as da
    import scipy.sparse as sp

    p = pbmc3k_raw[:1000]
    mixed = ad.concat([p[:100], _normalized(p[100:], log=True)])
    mixed.X = sp.csr_matrix(mixed.X, dtype=np.float32)
    lazy = mixed.copy()
    lazy.X = da.from_array(lazy.X, chunks=(100, -1))  # the first block holds only counts
    for a in (mixed, lazy):
        with pytest.raises(ValueError, match=r"values up to 419, too large for log-normalized"):
            sad.pp.preprocess(a, n_top_genes=None)
        assert "sad" not in a.uns


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_value": -1}, "max_value must be a positive clip"),
        ({"max_value": 0}, "max_value must be a positive clip"),
        ({"n_top_genes": 0}, "n_top_genes must be a positive number"),
        ({"n_top_genes": -3}, "n_top_genes must be a positive number"),
        ({"n_top_genes": 2.5}, "n_top_genes must be a positive number"),
        ({"target_sum": 0}, "target_sum must be a positive number"),
        ({"target_sum": -1}, "target_sum must be a positive number"),
        ({"target_sum": float("nan")}, "target_sum must be a positive number"),
    ],
)
def test_preprocess_parameters_checked(pbmc3k_raw, kwargs, match):
    a = pbmc3k_raw[:200].copy()
    before = _state(a)
    with pytest.raises(ValueError, match=match):
        sad.pp.preprocess(a, **kwargs)
    _unchanged(a, *before)


def test_preprocess_target_sum_none_is_default(pbmc3k_raw):
    a = sad.pp.preprocess(pbmc3k_raw[:300].copy(), target_sum=None, n_top_genes=100, copy=True)
    b = sad.pp.preprocess(pbmc3k_raw[:300].copy(), target_sum=1e4, n_top_genes=100, copy=True)
    assert a.uns["sad"]["preprocess"]["params"]["target_sum"] == 1e4
    np.testing.assert_array_equal(a.X, b.X)


@pytest.mark.parametrize("seed", [None, np.random.default_rng(0), -1, 1.5, True, "0"])
def test_seed_checked_before_writing(pbmc68k, seed):
    """split and pseudo_labels check random_state first: nothing is written when it is not an integer seed."""
    a = pbmc68k.copy()
    sad.pp.preprocess(a, n_top_genes=200)
    before = _state(a)
    with pytest.raises(ValueError, match="random_state must be an integer seed"):
        sad.pp.split(a, "bulk_labels", random_state=seed)
    with pytest.raises(ValueError, match="random_state must be an integer seed"):
        sad.pp.pseudo_labels(a, random_state=seed)
    _unchanged(a, *before)
    assert "X_pca" not in a.obsm
    sad.pp.split(a, "bulk_labels", random_state=np.int64(3))  # numpy integers are seeds
    assert a.uns["sad"]["split"]["params"]["random_state"] == 3
