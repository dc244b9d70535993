from __future__ import annotations

import numpy as np
import pytest

import scadversarial as sad


def test_pbmc68k_reduced_is_lognormalized(pbmc68k):
    assert pbmc68k.shape == (700, 765)
    X = pbmc68k.X.toarray()
    assert X.min() >= 0
    assert not np.allclose(X, np.round(X))
    assert "bulk_labels" in pbmc68k.obs
    assert "X_umap" in pbmc68k.obsm


def test_pbmc3k_from_path(pbmc3k_raw):
    a = pbmc3k_raw
    assert a.shape == (2638, 13714)
    assert a.obs["seurat_cell_type"].nunique() == 9
    X = a.X[:100].toarray()
    assert np.array_equal(X, np.round(X))
    assert X.min() >= 0


def test_pbmc3k_missing_path_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="Pass the path"):
        sad.datasets.pbmc3k(tmp_path / "nope.h5ad")


def test_toy_is_counts_with_classes():
    a = sad.datasets.toy(200, 50, 3)
    assert a.shape == (200, 50)
    assert a.obs["cell_type"].nunique() == 3
    assert np.array_equal(a.X.data, np.round(a.X.data))
