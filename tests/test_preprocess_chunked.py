"""Bounded-memory ``sad.pp.preprocess``: same outputs as the whole-matrix implementation it replaced, bit for bit.

``_preprocess_before`` is that implementation (its output-producing code verbatim; float64 N x genes std
temporary, dense and full-gene sparse copies included), the reference.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from anndata import AnnData

import scadversarial as sad
from scadversarial import _keys
from scadversarial._settings import logger
from scadversarial._validate import (
    check_adata,
    check_finite,
    check_nonnegative,
    get_matrix,
    matrix_name,
    set_record,
    uns_root,
)
from scadversarial.pp._chunked import dense_columns, mean_std, row_chunks, scale_into, sparse_columns, stack_rows

# ---------------------------------------------------------------------------------------------------------
# the implementation before issue 16, verbatim


def _looks_like_counts(X) -> bool:
    data = X.data if sp.issparse(X) else np.asarray(X)
    sample = data[: min(data.size, 200_000)]
    return bool(np.all(sample == np.round(sample)))


def _mean_std(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = X.mean(0, dtype=np.float64)
    std = X.std(0, ddof=1, dtype=np.float64) if X.shape[0] > 1 else np.ones(X.shape[1])
    std[std == 0] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def scale_with(X: np.ndarray, mean: np.ndarray, std: np.ndarray, max_value: float | None) -> np.ndarray:
    Z = (np.asarray(X, dtype=np.float32) - mean) / std
    if max_value is not None:
        np.clip(Z, -max_value, max_value, out=Z)
    return Z.astype(np.float32, copy=False)


def _preprocess_before(
    adata,
    *,
    layer=None,
    already_log=None,
    target_sum=1e4,
    n_top_genes=2000,
    flavor="seurat",
    max_value=10.0,
    subset=True,
    reference=None,
    copy=False,
):
    check_adata(adata)
    M = get_matrix(adata, layer, dense=False)
    check_finite(M, matrix_name(layer))
    if already_log is None:
        already_log = ("log1p" in adata.uns and layer is None) or not _looks_like_counts(M)
    if not already_log:
        check_nonnegative(M, matrix_name(layer))
    import scanpy as sc

    if copy:
        adata = adata.copy()
    work = AnnData(
        M.copy() if not sp.issparse(M) else M.copy().astype(np.float32),
        obs=adata.obs[[]].copy(),
        var=adata.var[[]].copy(),
    )
    counts = None if already_log else work.X.copy()
    if not already_log:
        sc.pp.normalize_total(work, target_sum=target_sum)
        sc.pp.log1p(work)

    if reference is not None:
        genes = reference.var_names
        params = dict(reference.uns[_keys.UNS][_keys.STEP_PREPROCESS]["params"])
        mean = reference.var[_keys.VAR_MEAN].to_numpy(np.float32)
        std = reference.var[_keys.VAR_STD].to_numpy(np.float32)
        max_value = params.get("max_value", max_value)
        max_value = None if max_value is None or max_value < 0 else float(max_value)
        hvg = adata.var_names.isin(genes)
    else:
        if n_top_genes is None or n_top_genes >= work.n_vars:
            hvg = np.ones(work.n_vars, bool)
        else:
            res = sc.pp.highly_variable_genes(work, n_top_genes=n_top_genes, flavor=flavor, inplace=False)
            hvg = res["highly_variable"].to_numpy()
        genes = adata.var_names[hvg] if subset else adata.var_names
        params = {
            "layer": layer or "X",
            "already_log": bool(already_log),
            "target_sum": float(target_sum),
            "n_top_genes": -1 if n_top_genes is None else int(n_top_genes),
            "flavor": flavor,
            "max_value": max_value,
            "subset": bool(subset),
            "n_genes_kept": int(len(genes)),
        }
        mean = std = None

    lognorm_full = work.X
    col = np.arange(adata.n_vars)
    if subset or reference is not None:
        if subset:
            adata.raw = AnnData(lognorm_full.copy(), obs=adata.obs[[]], var=adata.var.copy())
        col = adata.var_names.get_indexer(genes)
        adata._inplace_subset_var(col)
        lognorm = lognorm_full[:, col]
        counts = None if counts is None else counts[:, col]
    else:
        lognorm = lognorm_full
    lognorm = lognorm.toarray() if sp.issparse(lognorm) else np.asarray(lognorm)
    lognorm = lognorm.astype(np.float32)
    if mean is None:
        mean, std = _mean_std(lognorm)
    adata.X = scale_with(lognorm, mean, std, max_value)
    adata.layers[_keys.LAYER_LOGNORM] = lognorm
    if counts is not None:
        adata.layers[_keys.LAYER_COUNTS] = sp.csr_matrix(counts) if sp.issparse(counts) else np.asarray(counts)
    adata.var[_keys.VAR_MEAN] = mean
    adata.var[_keys.VAR_STD] = std
    adata.var[_keys.VAR_HVG] = hvg[col] if (subset or reference is not None) else hvg
    uns_root(adata)
    set_record(adata, _keys.STEP_PREPROCESS, params={**params, "max_value": -1 if max_value is None else max_value})
    logger.info("preprocess: %d cells x %d genes", adata.n_obs, adata.n_vars)
    return adata if copy else None


# ---------------------------------------------------------------------------------------------------------


def _dense(M) -> np.ndarray:
    return M.toarray() if sp.issparse(M) else np.asarray(M)


def assert_same_outputs(new: AnnData, old: AnnData) -> None:
    """Every output of preprocess identical: matrices bit for bit, with their types and dtypes."""
    assert list(new.var_names) == list(old.var_names)
    assert list(new.layers) == list(old.layers)
    for name, a, b in [("X", new.X, old.X)] + [(k, new.layers[k], old.layers[k]) for k in old.layers]:
        assert type(a) is type(b), name
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(_dense(a), _dense(b), err_msg=name)
    assert (new.raw is None) == (old.raw is None)
    if old.raw is not None:
        assert type(new.raw.X) is type(old.raw.X)
        assert new.raw.X.dtype == old.raw.X.dtype
        np.testing.assert_array_equal(_dense(new.raw.X), _dense(old.raw.X))
        assert list(new.raw.var_names) == list(old.raw.var_names)
    for k in old.var:
        np.testing.assert_array_equal(new.var[k].to_numpy(), old.var[k].to_numpy(), err_msg=k)
    assert_same_record(new, old)


def assert_same_record(new: AnnData, old: AnnData) -> None:
    """The preprocess records are equal but for the ``output`` marker the old implementation did not write."""
    rec_new, rec_old = new.uns["sad"]["preprocess"], old.uns["sad"]["preprocess"]
    params = dict(rec_new["params"])
    assert params.pop("output") == old.uns["sad"]["preprocess"]["params"].get("output", "scaled")
    assert {**rec_new, "params": params} == rec_old


@pytest.fixture(scope="module")
def both3k(pbmc3k_raw) -> tuple[AnnData, AnnData]:
    """All of PBMC3k (2,638 cells, 2,000 genes kept) through the new and the old implementation."""
    new, old = pbmc3k_raw.copy(), pbmc3k_raw.copy()
    sad.pp.preprocess(new)
    _preprocess_before(old)
    return new, old


def test_chunked_preprocess_equals_before_pbmc3k(both3k):
    assert_same_outputs(*both3k)


def test_chunked_preprocess_equals_scanpy(both3k, pbmc3k_raw):
    import scanpy as sc

    new, _ = both3k
    ref = pbmc3k_raw.copy()
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    sc.pp.highly_variable_genes(ref, n_top_genes=2000, flavor="seurat")
    ref = ref[:, ref.var["highly_variable"]].copy()
    ref.X = ref.X.toarray()
    np.testing.assert_array_equal(new.layers["sad_lognorm"], ref.X)
    sc.pp.scale(ref, max_value=10)
    np.testing.assert_allclose(new.X, ref.X, atol=1e-5)  # scanpy scales in its own float order
    np.testing.assert_allclose(new.var["sad_std"], ref.var["std"], rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_top_genes": 300, "subset": False},
        {"n_top_genes": 300, "copy": True},
        {"n_top_genes": 300, "layer": "counts"},
        {"n_top_genes": None, "max_value": None},
    ],
    ids=["subset_false", "copy", "layer", "all_genes_no_clip"],
)
def test_chunked_preprocess_equals_before_options(pbmc3k_raw, kwargs):
    a = pbmc3k_raw[:400].copy()
    a.layers["counts"] = a.X.copy()
    new, old = a.copy(), a.copy()
    out_new = sad.pp.preprocess(new, **kwargs)
    out_old = _preprocess_before(old, **kwargs)
    if kwargs.get("copy"):
        new, old = out_new, out_old
        np.testing.assert_array_equal(a.X.toarray(), pbmc3k_raw[:400].X.toarray())  # the input is untouched
    assert_same_outputs(new, old)


def test_chunked_preprocess_equals_before_dense_and_reference(pbmc3k_raw):
    train = pbmc3k_raw[:500].copy()
    train.X = train.X.toarray()  # dense counts keep their dtype in the counts layer
    new, old = train.copy(), train.copy()
    sad.pp.preprocess(new, n_top_genes=300)
    _preprocess_before(old, n_top_genes=300)
    assert_same_outputs(new, old)
    query = pbmc3k_raw[500:700].copy()
    q_new, q_old = query.copy(), query.copy()
    sad.pp.preprocess(q_new, reference=new)
    _preprocess_before(q_old, reference=old)
    assert_same_outputs(q_new, q_old)


def test_chunked_preprocess_equals_before_already_log(pbmc68k):
    new, old = pbmc68k.copy(), pbmc68k.copy()
    new.X, old.X = np.abs(new.X), np.abs(old.X)  # log-normalized-like, non-negative, not integer
    del new.uns["log1p"], old.uns["log1p"]
    sad.pp.preprocess(new, n_top_genes=200)
    _preprocess_before(old, n_top_genes=200)
    assert_same_outputs(new, old)


@pytest.mark.parametrize("chunk_bytes", [1, 8 * 37, 2**20])
def test_chunked_statistics_match_numpy(pbmc3k_raw, chunk_bytes):
    """Any chunking (one row, 37 rows, all rows) gives numpy's whole-matrix values bit for bit."""
    X = pbmc3k_raw[:300, :50].X.toarray()
    X = np.log1p(X / X.sum(1, keepdims=True).clip(1) * 1e4).astype(np.float32)
    X[:, 3] = 0.0  # a constant gene: std 1
    mean, std = mean_std(X, chunk_bytes=chunk_bytes)
    np.testing.assert_array_equal(mean, X.mean(0, dtype=np.float64).astype(np.float32))
    ref_std = X.std(0, ddof=1, dtype=np.float64)
    ref_std[ref_std == 0] = 1.0
    np.testing.assert_array_equal(std, ref_std.astype(np.float32))
    np.testing.assert_array_equal(
        scale_into(X, mean, std, 10.0, chunk_bytes=chunk_bytes), scale_with(X, mean, std, 10.0)
    )
    col = np.array([5, 1, 40, 3])
    Xs = sp.csr_matrix(X)
    np.testing.assert_array_equal(dense_columns(Xs, col, chunk_bytes=chunk_bytes), X[:, col])
    np.testing.assert_array_equal(dense_columns(X, None, chunk_bytes=chunk_bytes), X)
    assert sum(s.stop - s.start for s in row_chunks(300, 50, chunk_bytes=chunk_bytes)) == 300


def test_chunked_statistics_one_cell():
    mean, std = mean_std(np.array([[1.0, 2.0]], dtype=np.float32))
    np.testing.assert_array_equal(mean, [1.0, 2.0])
    np.testing.assert_array_equal(std, [1.0, 1.0])


def test_stack_rows_and_sparse_columns(pbmc3k_raw):
    """Blocks of rows stacked without a second copy equal scipy's vstack; the kept columns as sorted CSR."""
    X = pbmc3k_raw[:300].X.astype(np.float32)
    blocks = [X[sl] for sl in row_chunks(300, 850, chunk_bytes=8 * 850 * 37)]
    assert len(blocks) > 1
    stacked = stack_rows(blocks)
    assert blocks == []  # each block released once copied
    assert stacked.format == "csr"
    np.testing.assert_array_equal(stacked.indptr, X.indptr)
    np.testing.assert_array_equal(stacked.indices, X.indices)
    np.testing.assert_array_equal(stacked.data, X.data)
    dense = X[:50].toarray()
    np.testing.assert_array_equal(stack_rows([dense[:20], dense[20:]]), dense)
    col = np.array([40, 5, 1000, 7])
    for M in (X, X.toarray()):
        out = sparse_columns(M, col, chunk_bytes=8 * 4 * 37)
        assert out.format == "csr"
        assert out.dtype == np.float32
        assert out.has_sorted_indices
        np.testing.assert_array_equal(out.toarray(), X[:, col].toarray())


@pytest.mark.parametrize("step", [1, 7, 2**20])
def test_block_summary_by_steps(pbmc3k_raw, monkeypatch, step):
    """Non-finite count, min, max and integrality of the stored values, whatever the step; dense rows alike."""
    from scadversarial.pp import _chunked

    monkeypatch.setattr(_chunked, "SUMMARY_STEP", step)
    X = pbmc3k_raw[:50].X.astype(np.float32)
    high = float(X.max())
    np.testing.assert_array_equal(_chunked.block_summary(X), [[0, X.data.min(), high, 1]])  # stored values
    np.testing.assert_array_equal(_chunked.block_summary(X.toarray()), [[0, 0, high, 1]])  # every value
    Y = X.copy()
    Y.data[-1] = 0.5  # one non-integer, last
    Y.data[3] = np.nan
    Y.data[5] = -np.inf
    n_bad, low, high, integral = _chunked.fold_summaries(_chunked.block_summary(Y))
    assert (n_bad, integral) == (2, False)
    assert low == np.nanmin(Y.data[np.isfinite(Y.data)])
    assert high == Y.data[np.isfinite(Y.data)].max()
    int_counts = pbmc3k_raw[:20].X.toarray().astype(np.int32)
    assert _chunked.fold_summaries(_chunked.block_summary(int_counts))[3]
    assert _chunked.fold_summaries(np.empty((0, 4))) == (0, np.inf, -np.inf, True)
