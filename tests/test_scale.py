"""``benchmarks/scale.py`` at a tiny size: the synthetic counts look like PBMC3k and every stage runs.

The measured runs (1e4-1e6 cells) live in the benchmark, never in the suite.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "scale.py"


@pytest.fixture(scope="module")
def scale():
    spec = importlib.util.spec_from_file_location("scale_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture(scope="module")
def model(scale, pbmc3k_path):
    return scale.fit_nb(pbmc3k_path)


def test_synthetic_counts_resemble_pbmc3k(scale, model, pbmc3k_raw):
    X, types = scale._draw_chunk(model, 500, np.random.default_rng(0))
    assert sp.isspmatrix_csr(X)
    assert X.dtype == np.float32
    assert X.shape == (500, pbmc3k_raw.n_vars)
    np.testing.assert_array_equal(X.data, np.round(X.data))
    assert X.data.min() >= 1
    real_nnz = pbmc3k_raw.X.nnz / pbmc3k_raw.n_obs
    assert 0.85 * real_nnz < X.nnz / 500 < 1.15 * real_nnz  # ~850 non-zeros per cell, as PBMC3k
    real_lib = pbmc3k_raw.X.sum(1).mean()
    assert 0.85 * real_lib < X.sum(1).mean() < 1.15 * real_lib
    assert set(types) <= set(model.types)
    again, _ = scale._draw_chunk(model, 500, np.random.default_rng(0))
    assert (again != X).nnz == 0  # seeded


@pytest.mark.filterwarnings("ignore:zero-centering a sparse:UserWarning")  # scanpy's scale on CSR, as in its tutorial
def test_scale_stages_run_on_a_small_file(scale, pbmc3k_path, tmp_path, monkeypatch):
    """Every stage of the issue's table, in order, each on the files the stage before wrote."""
    import anndata as ad

    monkeypatch.setattr(scale, "GEN_CHUNK", 150)  # several appended chunks
    monkeypatch.setattr(scale, "LAZY_ROWS", 128)  # several lazy blocks
    for name, value in [("ATTACK_CELLS", 120), ("DETECTOR_CELLS", 400), ("MAX_CELLS_PER_EPOCH", 300)]:
        monkeypatch.setattr(scale, name, value)
    monkeypatch.setattr(scale, "MAX_EPOCHS", 2)
    files = scale.Files(scale.generate(1000, seed=1, data=pbmc3k_path, cache=tmp_path))
    a = ad.read_h5ad(files.counts)
    assert a.shape == (1000, 13714)
    assert "cell_type" in a.obs
    results = {}
    for stage in scale.STAGES:
        r = scale.run_stage(stage, files)
        assert not r["error"], r
        assert r["rss_peak_kib"] >= r["rss_loaded_kib"] > 0
        results[stage] = r
    assert results["attack"]["n_obs"] == 120
    assert results["detect"]["n_obs"] == results["preprocess"]["n_obs"] == 1000

    # the preprocessed file holds X as CSR log-normalized values of the kept genes, and the marker
    pp = ad.read_h5ad(files.lognorm)
    assert sp.issparse(pp.X)
    assert pp.X.dtype == np.float32
    assert pp.n_vars == 2000
    assert pp.uns["sad"]["preprocess"]["params"]["output"] == "lognorm"

    lines = scale.summary({100_000: results, 1_000_000: results})
    assert all("1.00x" in line for line in lines[:-1])
    assert "yes" in lines[-1]
