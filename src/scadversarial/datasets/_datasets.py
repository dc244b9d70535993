"""Dataset loaders."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._settings import logger

_LABELS_FILE = "pbmc3k_labels.tsv.gz"


def pbmc68k_reduced() -> AnnData:
    """Scanpy's bundled 700-cell PBMC subset, log-normalized (offline; the package's default data).

    Built from ``scanpy.datasets.pbmc68k_reduced()``'s ``.raw``: the log-normalized values of its
    765 genes (the scaled ``X`` of that object cannot be preprocessed again).

    Returns
    -------
    AnnData of 700 cells x 765 genes with ``.X`` log-normalized (``uns['log1p']`` set),
    ``.obs['bulk_labels']`` (10 FACS-sorted populations) and ``.obs['louvain']``, and
    ``.obsm['X_umap']``.

    """
    import scanpy as sc

    src = sc.datasets.pbmc68k_reduced()
    X = src.raw.X
    X = X.copy() if sp.issparse(X) else sp.csr_matrix(X)
    adata = AnnData(X=X.astype(np.float32), obs=src.obs.copy(), var=pd.DataFrame(index=src.raw.var_names.copy()))
    adata.obsm["X_umap"] = src.obsm["X_umap"].copy()
    adata.uns["log1p"] = {"base": None}
    adata.uns["dataset"] = "pbmc68k_reduced (scanpy), .raw log-normalized values"
    return adata


def pbmc3k(path: str | Path | None = None) -> AnnData:
    """The 10x PBMC3k data (2,638 cells after the standard QC) with Seurat cell-type labels.

    Parameters
    ----------
    path
        A local ``.h5ad`` with raw counts in ``.X`` (e.g. the project's ``pbmc3k.h5ad``). Without
        it, the raw data are fetched through :func:`scanpy.datasets.pbmc3k` (needs network), cut to
        the 2,638 annotated cells and genes seen in at least 3 cells.

    Returns
    -------
    AnnData with integer counts in ``.X`` and ``.obs['seurat_cell_type']`` (9 classes, as used by
    the adverSCarial paper) and ``.obs['cell_type']`` (scanpy tutorial, 8 classes).

    """
    labels = pd.read_csv(files(__package__).joinpath(_LABELS_FILE), sep="\t", index_col=0)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            msg = f"No file at {str(path)!r}. Pass the path of a PBMC3k .h5ad, or path=None to download it (needs network)."
            raise FileNotFoundError(msg)
        adata = ad.read_h5ad(path)
    else:
        import scanpy as sc

        try:
            adata = sc.datasets.pbmc3k()
        except Exception as e:
            msg = (
                f"Could not download PBMC3k ({type(e).__name__}: {e}). Without network, pass a local file: "
                "`sad.datasets.pbmc3k(path='pbmc3k.h5ad')`, or use the offline `sad.datasets.pbmc68k_reduced()`."
            )
            raise OSError(msg) from e
        adata.var_names_make_unique()
        keep = adata.obs_names.intersection(labels.index)
        adata = adata[keep].copy()
        n_cells = np.asarray((adata.X > 0).sum(0)).ravel()
        adata = adata[:, n_cells >= 3].copy()
    for col in ("seurat_cell_type", "cell_type"):
        if col not in adata.obs:
            missing = ~adata.obs_names.isin(labels.index)
            if missing.any():
                logger.warning("%d cells have no %s label", int(missing.sum()), col)
            adata.obs[col] = pd.Categorical(labels[col].reindex(adata.obs_names))
    return adata


def toy(n_obs: int = 600, n_vars: int = 300, n_classes: int = 4, *, random_state: int = 0) -> AnnData:
    """A synthetic count matrix with ``n_classes`` cell types, for scale and edge-case tests.

    Counts are negative binomial; each class over-expresses its own block of marker genes.

    Returns
    -------
    AnnData with integer counts (CSR) in ``.X`` and ``.obs['cell_type']``.

    """
    rng = np.random.default_rng(random_state)
    labels = rng.integers(0, n_classes, n_obs)
    base = rng.gamma(0.6, 1.0, n_vars)
    mu = np.tile(base, (n_obs, 1))
    block = max(1, n_vars // (2 * n_classes))
    for c in range(n_classes):
        mu[labels == c, c * block : (c + 1) * block] *= 6.0
    size = rng.lognormal(0, 0.3, n_obs)[:, None]
    counts = rng.negative_binomial(2, 2 / (2 + mu * size)).astype(np.float32)
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical([f"type{c}" for c in labels])}, index=[f"cell{i}" for i in range(n_obs)]
    )
    var = pd.DataFrame(index=[f"gene{j}" for j in range(n_vars)])
    return AnnData(sp.csr_matrix(counts), obs=obs, var=var)
