"""``sad.pp.preprocess(output='lognorm')`` and backed input: the same outputs as the scaled, in-memory path.

``output='lognorm'`` leaves ``X`` the sparse log-normalized values; scaling them with ``.var['sad_mean']`` /
``['sad_std']`` and the clip gives the scaled ``X``. A backed ``.h5ad`` read by chunks of cells gives the
in-memory outputs bit for bit.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from anndata import AnnData

import scadversarial as sad
from scadversarial.pp import _chunked

#: Bytes per chunk that split PBMC3k's ~850 stored values per cell into chunks of ~300 cells.
SMALL_CHUNK_BYTES = 8 * 850 * 300


def _dense(M) -> np.ndarray:
    return M.toarray() if sp.issparse(M) else np.asarray(M)


def assert_equal_matrix(a, b, name: str = "") -> None:
    """Equal values, compared sparse when both are sparse (no dense copy of a cells x all-genes matrix)."""
    if sp.issparse(a) and sp.issparse(b):
        assert a.shape == b.shape, name
        assert (a != b).nnz == 0, name
    else:
        np.testing.assert_array_equal(_dense(a), _dense(b), err_msg=name)


def _params(a: AnnData) -> dict:
    return dict(a.uns["sad"]["preprocess"]["params"])


def scale(lognorm: AnnData, max_value: float | None = 10.0) -> np.ndarray:
    """The scaled values from the lognorm output and its statistics (what the classifier computes)."""
    Z = (lognorm.X.toarray() - lognorm.var["sad_mean"].to_numpy()) / lognorm.var["sad_std"].to_numpy()
    return Z if max_value is None else np.clip(Z, -max_value, max_value)


def assert_lognorm_matches_scaled(lognorm: AnnData, scaled: AnnData, max_value: float | None = 10.0) -> None:
    """The lognorm output against the scaled one: same genes, statistics, layers; X scales to the scaled X."""
    assert sp.issparse(lognorm.X)
    assert lognorm.X.format == "csr"
    assert lognorm.X.dtype == np.float32
    assert lognorm.X.has_sorted_indices
    assert lognorm.X is lognorm.layers["sad_lognorm"]
    assert list(lognorm.var_names) == list(scaled.var_names)
    np.testing.assert_array_equal(lognorm.X.toarray(), scaled.layers["sad_lognorm"])
    for k in scaled.var:
        np.testing.assert_array_equal(lognorm.var[k].to_numpy(), scaled.var[k].to_numpy(), err_msg=k)
    assert list(lognorm.layers) == list(scaled.layers)
    if "counts" in scaled.layers:
        assert_equal_matrix(lognorm.layers["counts"], scaled.layers["counts"], "counts")
    assert (lognorm.raw is None) == (scaled.raw is None)
    if scaled.raw is not None:
        assert_equal_matrix(lognorm.raw.X, scaled.raw.X, "raw")
    np.testing.assert_allclose(scale(lognorm, max_value), scaled.X, rtol=0, atol=1e-6)
    params_l, params_s = _params(lognorm), _params(scaled)
    assert params_l.pop("output") == "lognorm"
    assert params_s.pop("output") == "scaled"
    assert params_l == params_s


def assert_same_outputs(new: AnnData, ref: AnnData) -> None:
    """Every output identical, bit for bit, with types and dtypes; obs, obsm and uns carried over."""
    assert list(new.var_names) == list(ref.var_names)
    assert list(new.obs_names) == list(ref.obs_names)
    assert sorted(new.layers) == sorted(ref.layers)
    for name, a, b in [("X", new.X, ref.X)] + [(k, new.layers[k], ref.layers[k]) for k in ref.layers]:
        assert type(a) is type(b), name
        assert a.dtype == b.dtype, name
        assert_equal_matrix(a, b, name)
    assert (new.raw is None) == (ref.raw is None)
    if ref.raw is not None:
        assert type(new.raw.X) is type(ref.raw.X)
        assert new.raw.X.dtype == ref.raw.X.dtype
        assert_equal_matrix(new.raw.X, ref.raw.X, "raw")
    for k in ref.var:
        np.testing.assert_array_equal(new.var[k].to_numpy(), ref.var[k].to_numpy(), err_msg=k)
    assert new.obs.equals(ref.obs)
    for k in ref.obsm:
        np.testing.assert_array_equal(new.obsm[k], ref.obsm[k])
    assert new.uns["sad"]["preprocess"] == ref.uns["sad"]["preprocess"]


@pytest.fixture(scope="module")
def outputs3k(pbmc3k_raw) -> tuple[AnnData, AnnData]:
    """All of PBMC3k (2,638 cells, 2,000 genes kept) with ``output='lognorm'`` and ``'scaled'``."""
    lognorm, scaled = pbmc3k_raw.copy(), pbmc3k_raw.copy()
    sad.pp.preprocess(lognorm, output="lognorm")
    sad.pp.preprocess(scaled)
    return lognorm, scaled


def test_lognorm_output_matches_scaled_pbmc3k(outputs3k):
    lognorm, scaled = outputs3k
    assert_lognorm_matches_scaled(lognorm, scaled)
    assert lognorm.layers["counts"].format == "csr"
    assert lognorm.X.nnz < 0.5 * lognorm.raw.X.nnz  # the kept genes' values only: far below a dense X


@pytest.mark.parametrize(
    "kwargs",
    [{"subset": False}, {"n_top_genes": None, "max_value": None}, {"layer": "counts"}],
    ids=["subset_false", "all_genes_no_clip", "layer"],
)
def test_lognorm_output_options(pbmc3k_raw, kwargs):
    a = pbmc3k_raw[:400].copy()
    a.layers["counts"] = a.X.copy()
    kwargs = {"n_top_genes": 300, **kwargs}
    lognorm = sad.pp.preprocess(a, output="lognorm", copy=True, **kwargs)
    scaled = sad.pp.preprocess(a, copy=True, **kwargs)
    assert_lognorm_matches_scaled(lognorm, scaled, max_value=kwargs.get("max_value", 10.0))


def test_lognorm_output_reference(pbmc3k_raw):
    """Genes and statistics from a reference (itself preprocessed either way) as in the scaled path."""
    train = pbmc3k_raw[:600].copy()
    sad.pp.preprocess(train, n_top_genes=300, output="lognorm")
    query = pbmc3k_raw[600:900].copy()
    lognorm = sad.pp.preprocess(query, reference=train, output="lognorm", copy=True)
    scaled = sad.pp.preprocess(query, reference=train, copy=True)
    assert_lognorm_matches_scaled(lognorm, scaled)
    np.testing.assert_array_equal(lognorm.var["sad_mean"], train.var["sad_mean"])
    np.testing.assert_array_equal(lognorm.var["sad_std"], train.var["sad_std"])


def test_lognorm_output_dense_already_log(pbmc68k):
    """Dense log-normalized input (pbmc68k_reduced): X becomes CSR of the kept genes all the same."""
    lognorm = sad.pp.preprocess(pbmc68k, n_top_genes=200, output="lognorm", copy=True)
    scaled = sad.pp.preprocess(pbmc68k, n_top_genes=200, copy=True)
    assert "counts" not in lognorm.layers
    assert_lognorm_matches_scaled(lognorm, scaled)


def test_output_is_checked(pbmc68k):
    with pytest.raises(ValueError, match="output"):
        sad.pp.preprocess(pbmc68k, output="dense", copy=True)


@pytest.mark.parametrize("output", ["lognorm", "scaled"])
def test_backed_equals_in_memory(pbmc3k_path, monkeypatch, output):
    """X read from the file in ~300-cell chunks: the in-memory outputs bit for bit; the file is untouched."""
    monkeypatch.setattr(_chunked, "CHUNK_BYTES", SMALL_CHUNK_BYTES)
    mem = ad.read_h5ad(pbmc3k_path)
    sad.pp.preprocess(mem, output=output)
    backed = ad.read_h5ad(pbmc3k_path, backed="r")
    out = sad.pp.preprocess(backed, output=output, copy=True)
    assert not out.isbacked
    assert backed.isbacked
    assert backed.shape == mem.raw.shape
    assert_same_outputs(out, mem)
    backed.file.close()


def test_backed_needs_copy(pbmc3k_path):
    backed = ad.read_h5ad(pbmc3k_path, backed="r")
    with pytest.raises(ValueError, match=r"copy=True.*read_elem_lazy"):
        sad.pp.preprocess(backed, output="lognorm")
    backed.file.close()


def test_backed_dense_reference_and_checks(pbmc3k_raw, tmp_path, monkeypatch):
    """A dense backed X with a reference, and the input checks on a file with a bad value."""
    monkeypatch.setattr(_chunked, "CHUNK_BYTES", 8 * 13714 * 64)  # 64-cell chunks of the dense rows
    train = pbmc3k_raw[:500].copy()
    sad.pp.preprocess(train, n_top_genes=300)
    query = pbmc3k_raw[500:800].copy()
    query.X = query.X.toarray()
    query.write_h5ad(tmp_path / "dense.h5ad")
    mem = sad.pp.preprocess(query, reference=train, output="lognorm", copy=True)
    backed = ad.read_h5ad(tmp_path / "dense.h5ad", backed="r")
    assert_same_outputs(sad.pp.preprocess(backed, reference=train, output="lognorm", copy=True), mem)
    backed.file.close()

    monkeypatch.setattr(_chunked, "CHUNK_BYTES", 8 * 850 * 64)  # ~64-cell chunks of the sparse rows
    bad = pbmc3k_raw[:300].copy()
    bad.X = bad.X.copy()
    bad.X.data[-1] = -1.0  # in the last chunk: the whole file is checked
    bad.write_h5ad(tmp_path / "bad.h5ad")
    backed = ad.read_h5ad(tmp_path / "bad.h5ad", backed="r")
    with pytest.raises(ValueError, match="negative values"):
        sad.pp.preprocess(backed, copy=True)
    backed.file.close()


def test_backed_view(pbmc3k_path):
    """A view of a backed AnnData (its X read already) goes the in-memory way, to the same outputs."""
    backed = ad.read_h5ad(pbmc3k_path, backed="r")
    out = sad.pp.preprocess(backed[:300], n_top_genes=200, output="lognorm", copy=True)
    mem = ad.read_h5ad(pbmc3k_path)[:300].copy()
    sad.pp.preprocess(mem, n_top_genes=200, output="lognorm")
    assert_same_outputs(out, mem)
    backed.file.close()


def test_pseudo_labels_same_for_both_outputs(outputs3k):
    """``output='lognorm'`` is clustered on its scaled values (by chunks), as the scaled X: the same labels."""
    lognorm, scaled = outputs3k
    for seed in (0, 1):
        a = sad.pp.pseudo_labels(lognorm, random_state=seed, copy=True)
        b = sad.pp.pseudo_labels(scaled, random_state=seed, copy=True)
        np.testing.assert_array_equal(a.obs["sad_label"].to_numpy(), b.obs["sad_label"].to_numpy())
        np.testing.assert_allclose(np.abs(a.obsm["X_pca"]), np.abs(b.obsm["X_pca"]), atol=0.05)
    assert sp.issparse(lognorm.X)  # left as it was


@pytest.mark.parametrize(
    ("n_obs", "n_top_genes", "max_value"),
    [(2638, 200, 10.0), (400, 300, 10.0), (1000, 500, None)],
    ids=["covariance", "small_dense", "randomized_no_clip"],
)
def test_pseudo_labels_same_for_both_outputs_shapes(pbmc3k_raw, n_obs, n_top_genes, max_value):
    """Each of scikit-learn's PCA solvers (picked by shape) gives the scaled output's labels from the lognorm one."""
    a = pbmc3k_raw[:n_obs].copy()
    kwargs = {"n_top_genes": n_top_genes, "max_value": max_value, "copy": True}
    lognorm = sad.pp.preprocess(a, output="lognorm", **kwargs)
    scaled = sad.pp.preprocess(a, **kwargs)
    la = sad.pp.pseudo_labels(lognorm, n_clusters=6, copy=True).obs["sad_label"].to_numpy()
    lb = sad.pp.pseudo_labels(scaled, n_clusters=6, copy=True).obs["sad_label"].to_numpy()
    np.testing.assert_array_equal(la, lb)


def test_pseudo_labels_lognorm_dask(pbmc3k_raw):
    """A dask lognorm X (CSR blocks) is read block by block to the in-memory labels."""
    import dask.array as da

    mem = sad.pp.preprocess(pbmc3k_raw[:800].copy(), n_top_genes=300, output="lognorm", copy=True)
    lazy = mem.copy()
    lazy.X = da.from_array(mem.X, chunks=(250, -1))
    a = sad.pp.pseudo_labels(mem, n_clusters=5, copy=True)
    b = sad.pp.pseudo_labels(lazy, n_clusters=5, copy=True)
    np.testing.assert_array_equal(a.obs["sad_label"].to_numpy(), b.obs["sad_label"].to_numpy())


def test_backed_checks_the_whole_file(pbmc3k_raw, tmp_path, monkeypatch):
    """A backed X is decided by its whole reading pass, as in memory; a wrong first guess is read again."""
    import scanpy as sc

    from scadversarial.pp import _preprocess

    monkeypatch.setattr(_chunked, "CHUNK_BYTES", 8 * 850 * 64)  # ~64-cell chunks
    monkeypatch.setattr(_preprocess, "COUNTS_SAMPLE", 2_000)  # the guess reads the first ~3 cells
    p = pbmc3k_raw[:400]
    logged = p[20:].copy()
    sc.pp.normalize_total(logged)
    sc.pp.log1p(logged)
    del logged.uns["log1p"]
    mixed = ad.concat([p[:20], logged])  # counts first, log values after: refused, as in memory
    mixed.X = sp.csr_matrix(mixed.X, dtype=np.float32)
    mixed.write_h5ad(tmp_path / "mixed.h5ad")
    backed = ad.read_h5ad(tmp_path / "mixed.h5ad", backed="r")
    with pytest.raises(ValueError, match=r"values up to \d+, too large for log-normalized"):
        sad.pp.preprocess(backed, copy=True)
    backed.file.close()

    lognorm = p.copy()
    sc.pp.normalize_total(lognorm)
    sc.pp.log1p(lognorm)
    del lognorm.uns["log1p"]
    lognorm.X = sp.csr_matrix(lognorm.X, dtype=np.float32)
    head = slice(0, lognorm.X.indptr[10])
    lognorm.X.data[head] = np.round(lognorm.X.data[head])  # the first values integers: guessed counts
    lognorm.X.eliminate_zeros()
    lognorm.write_h5ad(tmp_path / "lognorm.h5ad")
    mem = sad.pp.preprocess(lognorm, n_top_genes=100, copy=True)
    backed = ad.read_h5ad(tmp_path / "lognorm.h5ad", backed="r")
    passes = []
    read = _preprocess._backed.lognorm
    monkeypatch.setattr(_preprocess._backed, "lognorm", lambda X, **kw: passes.append(kw) or read(X, **kw))
    out = sad.pp.preprocess(backed, n_top_genes=100, copy=True)
    assert [kw["already_log"] for kw in passes] == [False, True]  # guessed counts, read again as log values
    assert out.uns["sad"]["preprocess"]["params"]["already_log"] is True
    assert_same_outputs(out, mem)
    backed.file.close()
