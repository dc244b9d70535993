"""Dask-backed AnnData through ``sad.pp.preprocess``: lazy outputs equal to the in-memory path, bit for bit.

Needs the ``dask`` extra (``dask[array]`` and ``distributed``); skipped where it is not installed.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import scadversarial as sad

da = pytest.importorskip("dask.array")


def _dense(M) -> np.ndarray:
    return M.toarray() if sp.issparse(M) else np.asarray(M)


def assert_lazy_equals(lazy, mem) -> None:
    """Every output of the dask run is a dask array and computes to the in-memory output, bit for bit."""
    assert list(lazy.var_names) == list(mem.var_names)
    pairs = [("X", lazy.X, mem.X), ("raw", lazy.raw.X, mem.raw.X)]
    pairs += [(k, lazy.layers[k], mem.layers[k]) for k in mem.layers]
    assert list(lazy.layers) == list(mem.layers)
    for name, a, b in pairs:
        assert isinstance(a, da.Array), name
        got = a.compute()
        assert type(got) is type(b), name
        assert got.dtype == b.dtype, name
        np.testing.assert_array_equal(_dense(got), _dense(b), err_msg=name)
    for k in mem.var:
        np.testing.assert_array_equal(lazy.var[k].to_numpy(), mem.var[k].to_numpy(), err_msg=k)
    assert lazy.uns["sad"]["preprocess"] == mem.uns["sad"]["preprocess"]


@pytest.fixture(scope="module")
def mem3k(pbmc3k_raw):
    """PBMC3k (2,638 cells) preprocessed in memory: the reference."""
    a = pbmc3k_raw.copy()
    sad.pp.preprocess(a)
    return a


@pytest.mark.parametrize("rows", [500, 1000])
def test_dask_preprocess_equals_in_memory(pbmc3k_raw, mem3k, rows):
    lazy = pbmc3k_raw.copy()
    lazy.X = da.from_array(lazy.X, chunks=(rows, 4000))  # gene chunks too: preprocess joins them per cell
    sad.pp.preprocess(lazy)
    assert_lazy_equals(lazy, mem3k)


@pytest.mark.parametrize("chunks", [(700, 4000), (128, -1)], ids=["gene_chunks", "128_cells"])
def test_dask_preprocess_lognorm_equals_in_memory(pbmc3k_raw, chunks):
    """``output='lognorm'``: X is a dask array of CSR blocks, the same object as the lognorm layer."""
    mem = pbmc3k_raw[:1200].copy()
    sad.pp.preprocess(mem, n_top_genes=500, output="lognorm")
    lazy = pbmc3k_raw[:1200].copy()
    lazy.X = da.from_array(lazy.X, chunks=chunks)
    sad.pp.preprocess(lazy, n_top_genes=500, output="lognorm")
    assert lazy.X is lazy.layers["sad_lognorm"]
    assert sp.issparse(lazy.X._meta)
    assert lazy.uns["sad"]["preprocess"]["params"]["output"] == "lognorm"
    assert_lazy_equals(lazy, mem)


def test_dask_preprocess_on_local_cluster(pbmc3k_raw, pbmc3k_path, mem3k):
    """Blocks read lazily from the .h5ad by two workers (scverse's own lazy reader), as on a real cluster."""
    import anndata as ad
    import h5py

    distributed = pytest.importorskip("distributed")
    with (
        h5py.File(pbmc3k_path, "r") as f,
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster,
        distributed.Client(cluster),
    ):
        lazy = pbmc3k_raw.copy()
        lazy.X = ad.experimental.read_elem_lazy(f["X"], chunks=(700, -1))
        sad.pp.preprocess(lazy)
        assert_lazy_equals(lazy, mem3k)


@pytest.mark.parametrize("output", ["scaled", "lognorm"])
def test_dask_preprocess_dense_reference_and_checks(pbmc3k_raw, output):
    train = pbmc3k_raw[:600].copy()
    sad.pp.preprocess(train, n_top_genes=300)
    query = pbmc3k_raw[600:900].copy()
    query.X = query.X.toarray()
    mem = query.copy()
    sad.pp.preprocess(mem, reference=train, output=output)
    lazy = query.copy()
    lazy.X = da.from_array(lazy.X, chunks=(128, -1))
    sad.pp.preprocess(lazy, reference=train, output=output)
    assert_lazy_equals(lazy, mem)

    bad = pbmc3k_raw[:200].copy()
    X = bad.X.toarray().astype(np.float32)
    X[5, 7] = np.nan
    bad.X = da.from_array(X, chunks=(64, -1))
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        sad.pp.preprocess(bad)
    X[5, 7] = -1.0
    bad.X = da.from_array(X, chunks=(64, -1))
    with pytest.raises(ValueError, match="negative values"):
        sad.pp.preprocess(bad)
