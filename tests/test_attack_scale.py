"""``sad.tl.attack`` at scale: dask and backed input, log-normalized sparse X, and attacking a sample of cells.

Every comparison is against the in-memory attack of the same cells (PBMC3k, its trained classifier),
bit for bit where both paths compute the same thing on the same numbers.
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scadversarial as sad
from scadversarial.tl._attack_chunks import Plan
from scadversarial.tl._attack_record import attacked_cells

da = pytest.importorskip("dask.array")

#: forward batch size of these tests: small, so 600 cells make several batches and dask blocks
BATCH = 128
#: cells attacked: a few batches, quick
N_CELLS = 600
#: attack settings shared by the in-memory and the chunked runs: few steps (equality is the point, not strength)
QUICK = {"steps": 3, "batch_size": BATCH}
#: |lognorm-X attack - scaled-X attack| in scaled space: the two clean inputs differ by float32 rounding
#: (~1e-6: preprocess scales in float64, the classifier's transform in float32), which a few PGD sign
#: steps can turn into a step of another sign on genes whose gradient is ~0; the predictions agree
SCALED_ATOL = 1e-5
#: fraction of scaled-space entries allowed to differ beyond SCALED_ATOL (a gradient sign flipped by rounding)
SCALED_DIFFER = 1e-3


@pytest.fixture
def small_batches(monkeypatch):
    """Forward batches of :data:`BATCH` cells (the chunk boundaries follow them)."""
    monkeypatch.setattr(sad.settings, "batch_size", BATCH)


@pytest.fixture(scope="module")
def cells3k(pipeline3k):
    """The first :data:`N_CELLS` cells of the trained PBMC3k pipeline (scaled X, in memory)."""
    return pipeline3k[:N_CELLS].copy()


def _lognorm_copy(a: ad.AnnData) -> ad.AnnData:
    """``a`` as ``sad.pp.preprocess(output='lognorm')`` leaves it: X the CSR log values, the same object as the layer."""
    b = a.copy()
    b.X = sp.csr_matrix(b.layers["sad_lognorm"], dtype=np.float32)
    b.layers["sad_lognorm"] = b.X
    b.uns["sad"]["preprocess"]["params"]["output"] = "lognorm"
    return b


def _dense(M) -> np.ndarray:
    if hasattr(M, "compute"):
        M = M.compute()
    return M.toarray() if sp.issparse(M) else np.asarray(M)


def _same_attack(a: ad.AnnData, b: ad.AnnData, key: str) -> None:
    """Same layers (bit for bit), predictions and metrics."""
    ra, rb = a.uns["sad"]["attacks"][key], b.uns["sad"]["attacks"][key]
    assert list(ra["layers"]) == list(rb["layers"])
    for name in ra["layers"]:
        np.testing.assert_array_equal(_dense(a.layers[name]), _dense(b.layers[name]), err_msg=name)
        pd.testing.assert_series_equal(a.obs[f"{name}_pred"], b.obs[f"{name}_pred"])
    assert ra["metrics"]["flip_rate"] == rb["metrics"]["flip_rate"]


@pytest.mark.usefixtures("small_batches")
@pytest.mark.parametrize(
    ("method", "eps", "threat"),
    [
        ("pgd_rs", (0.1, 0.2), {}),  # random starts: seeded per batch and budget
        ("deepfool", 2.0, {"space": "log", "constraint": "expressed"}),
    ],
)
def test_dask_layers_are_lazy_and_equal_in_memory(cells3k, tmp_path, method, eps, threat):
    mem = cells3k.copy()
    sad.tl.attack(mem, method, eps=eps, **threat, **QUICK)
    lazy = cells3k.copy()
    lazy.X = da.from_array(lazy.X, chunks=(2 * BATCH, -1))
    lazy.layers["sad_lognorm"] = da.from_array(lazy.layers["sad_lognorm"], chunks=(2 * BATCH, -1))
    sad.tl.attack(lazy, method, eps=eps, **threat, **QUICK)
    rec = lazy.uns["sad"]["attacks"][f"sad_{method}"]
    assert rec["storage"] == "lazy"
    for name in rec["layers"]:
        layer = lazy.layers[name]
        assert isinstance(layer, da.Array)
        assert layer.chunks[0] == lazy.X.chunks[0]  # one block per block of cells
        # the attack plan (models, labels, masks) is one graph node that every block's task references
        nodes = dict(layer.__dask_graph__()).values()
        assert len(layer.chunks[0]) > 1
        assert sum(isinstance(getattr(v, "value", v), Plan) for v in nodes) == 1
    _same_attack(lazy, mem, f"sad_{method}")
    # written block by block, and read back as the in-memory attack
    with warnings.catch_warnings():  # zarr v2, the format anndata writes by default, announces v3
        warnings.filterwarnings("ignore", "Writing zarr v2 data will no longer be the default", UserWarning)
        lazy.write_zarr(tmp_path / "attacked.zarr")
    back = ad.read_zarr(tmp_path / "attacked.zarr")
    for name in rec["layers"]:
        np.testing.assert_array_equal(_dense(back.layers[name]), mem.layers[name])
    assert back.uns["sad"]["attacks"][f"sad_{method}"]["storage"] == "lazy"


@pytest.mark.usefixtures("small_batches")
def test_dask_blocks_not_aligned_with_batches(cells3k):
    """Blocks of 100 cells do not hold whole batches: the attack re-cuts them and still equals the in-memory one."""
    mem = cells3k.copy()
    lazy = cells3k.copy()
    lazy.X = da.from_array(lazy.X, chunks=(100, -1))
    for a in (mem, lazy):
        sad.tl.attack(a, "pgd_rs", eps=0.1, **QUICK)
        # the observed range is that of every cell, read from the dask blocks
        sad.tl.attack(a, "pgd", eps=0.5, constraint="observed", key_added="obs", **QUICK)
    _same_attack(lazy, mem, "sad_pgd_rs")
    _same_attack(lazy, mem, "obs")


@pytest.mark.usefixtures("small_batches")
def test_lognorm_x(cells3k):
    """Sparse log-normalized X: log and count space attack the same numbers; scaled space through the transform."""
    scaled, lognorm = cells3k.copy(), _lognorm_copy(cells3k)
    for a in (scaled, lognorm):
        sad.tl.attack(a, "pgd", eps=0.5, space="log", constraint="expressed", key_added="log", **QUICK)
        sad.tl.attack(a, "pgd", eps=5.0, space="counts", constraint="counts", key_added="cnt", **QUICK)
        sad.tl.attack(a, "pgd", eps=0.1, key_added="sc", **QUICK)
    _same_attack(lognorm, scaled, "log")
    _same_attack(lognorm, scaled, "cnt")
    assert sp.issparse(lognorm.X)  # X was never densified in place
    a, b = lognorm.layers["sc_eps0.1"], scaled.layers["sc_eps0.1"]
    assert lognorm.uns["sad"]["attacks"]["sc"]["params"]["space"] == "scaled"
    assert np.abs(a - b).max() <= 2 * 0.02 * QUICK["steps"]  # never more than the steps can move
    assert (np.abs(a - b) > SCALED_ATOL).mean() <= SCALED_DIFFER
    pa, pb = lognorm.obs["sc_eps0.1_pred"].to_numpy(), scaled.obs["sc_eps0.1_pred"].to_numpy()
    assert (pa == pb).mean() >= 0.99


@pytest.mark.usefixtures("small_batches")
def test_cells_option(cells3k):
    mem = cells3k.copy()
    sad.tl.attack(mem, "pgd", eps=0.1, key_added="all", **QUICK)
    a = cells3k.copy()
    pick = np.zeros(a.n_obs, bool)
    pick[: 2 * BATCH] = True  # whole batches: the same batches as the attack of every cell
    a.obs["pick"] = pick
    by_name, by_mask, by_index = a.copy(), a.copy(), a.copy()
    sad.tl.attack(by_name, "pgd", eps=0.1, cells="pick", **QUICK)
    sad.tl.attack(by_mask, "pgd", eps=0.1, cells=pick, **QUICK)
    sad.tl.attack(by_index, "pgd", eps=0.1, options=sad.tl.AttackOptions(cells=np.flatnonzero(pick)[::-1], **QUICK))
    layer = by_name.layers["sad_pgd_eps0.1"]
    assert sp.isspmatrix_csr(layer)
    assert layer.shape == a.shape
    assert np.diff(layer.indptr)[~pick].sum() == 0  # no row stored for the cells not attacked
    np.testing.assert_array_equal(layer[pick].toarray(), mem.layers["all_eps0.1"][pick])
    for other in (by_mask, by_index):
        np.testing.assert_array_equal(other.layers["sad_pgd_eps0.1"].toarray(), layer.toarray())
    rec = by_name.uns["sad"]["attacks"]["sad_pgd"]
    assert rec["storage"] == "rows"
    assert rec["cells"] == {"n_cells": int(pick.sum()), "obs_key": "sad_pgd_attacked"}
    assert rec["params"]["cells"] == "pick"
    assert by_mask.uns["sad"]["attacks"]["sad_pgd"]["params"]["cells"] == "mask"
    assert by_index.uns["sad"]["attacks"]["sad_pgd"]["params"]["cells"] == "indices"
    np.testing.assert_array_equal(by_name.obs["sad_pgd_attacked"].to_numpy(), pick)
    np.testing.assert_array_equal(attacked_cells(by_name, "sad_pgd_eps0.1"), pick)
    assert attacked_cells(mem, "all_eps0.1") is None
    pred = by_name.obs["sad_pgd_eps0.1_pred"]
    assert pred.isna().to_numpy().tolist() == (~pick).tolist()  # no prediction where nothing was attacked
    flipped = (pred[pick].astype(str) != by_name.obs["sad_pred"][pick].astype(str)).mean()
    assert rec["metrics"]["flip_rate"]["sad_pgd_eps0.1"] == pytest.approx(flipped)
    with pytest.raises(ValueError, match="selects no cell"):
        sad.tl.attack(a, eps=0.1, cells=np.zeros(a.n_obs, bool))
    with pytest.raises(ValueError, match="boolean .obs column name"):
        sad.tl.attack(a, eps=0.1, cells=a.obs_names.to_numpy())


@pytest.mark.usefixtures("small_batches")
def test_cells_of_sparse_lognorm_and_dask(cells3k):
    """A sample of a dask, log-normalized AnnData: only its rows are read and stored, in memory."""
    lognorm = _lognorm_copy(cells3k)
    lazy = lognorm.copy()
    lazy.X = da.from_array(lognorm.X, chunks=(2 * BATCH, -1))
    lazy.layers["sad_lognorm"] = lazy.X
    rows = np.arange(0, N_CELLS, 3)
    sad.tl.attack(lognorm, "pgd", eps=0.5, space="log", cells=rows, **QUICK)
    sad.tl.attack(lazy, "pgd", eps=0.5, space="log", cells=rows, **QUICK)
    assert lazy.uns["sad"]["attacks"]["sad_pgd"]["storage"] == "rows"
    assert sp.issparse(lazy.layers["sad_pgd_eps0.5"])
    _same_attack(lazy, lognorm, "sad_pgd")


@pytest.mark.usefixtures("small_batches")
def test_backed(cells3k, tmp_path):
    path = tmp_path / "cells.h5ad"
    cells3k.write_h5ad(path)
    clf = sad.get.model(cells3k)
    mem = cells3k.copy()
    sad.tl.attack(mem, "pgd_rs", eps=0.1, classifier=clf, **QUICK)
    backed = ad.read_h5ad(path, backed="r")
    sad.tl.attack(backed, "pgd_rs", eps=0.1, classifier=clf, **QUICK)
    assert backed.isbacked
    _same_attack(backed, mem, "sad_pgd_rs")
    sample = ad.read_h5ad(path, backed="r")
    sad.tl.attack(sample, "pgd", eps=0.1, classifier=clf, cells=np.arange(BATCH), key_added="some", **QUICK)
    assert sample.layers["some_eps0.1"].nnz <= BATCH * sample.n_vars
    with pytest.raises(ValueError, match=r"attack\(copy=True\) cannot copy a backed AnnData"):
        sad.tl.attack(backed, eps=0.1, classifier=clf, copy=True)
