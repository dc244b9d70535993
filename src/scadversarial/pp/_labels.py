"""``sad.pp.pseudo_labels``: cluster cells when no annotation exists."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _keys
from .._docs import doc_copy, doc_params, doc_returns_copy
from .._settings import logger
from .._validate import check_adata, get_matrix, set_record


def check_seed(random_state) -> int:
    """``random_state`` as an int, or a :class:`ValueError`: the records keep the seed that repeats a step."""
    if (
        isinstance(random_state, (int, np.integer))
        and not isinstance(random_state, (bool, np.bool_))
        and 0 <= random_state < 2**32  # what numpy's and scikit-learn's seeds accept
    ):
        return int(random_state)
    msg = (
        f"random_state must be an integer seed in [0, 2**32) (e.g. 0), got {random_state!r}: the record keeps it so that "
        "the step can be repeated exactly (a Generator or None would not repeat)."
    )
    raise ValueError(msg)


@doc_params(doc_copy=doc_copy, doc_returns_copy=doc_returns_copy)
def pseudo_labels(
    adata: AnnData,
    *,
    method: str = "kmeans",
    n_clusters: int = 10,
    n_pcs: int = 50,
    resolution: float = 1.0,
    min_size: int = 3,
    layer: str | None = None,
    random_state: int = 0,
    key_added: str = _keys.OBS_LABEL,
    copy: bool = False,
) -> AnnData | None:
    """Pseudo-labels from clustering the PCA of the (scaled) expression.

    Parameters
    ----------
    adata
        Preprocessed AnnData (scaled values in ``X``).
    method
        ``'kmeans'`` (:class:`~sklearn.cluster.MiniBatchKMeans` on the PCs, the seed pipeline) or
        ``'leiden'`` (:func:`scanpy.tl.leiden` on a kNN graph of the PCs; needs ``igraph`` and
        ``leidenalg``: ``pip install scadversarial[leiden]``).
    n_clusters
        Number of clusters for ``'kmeans'``.
    n_pcs
        Number of principal components (capped at ``min(n_obs, n_vars) - 1``).
    resolution
        Resolution for ``'leiden'``.
    min_size
        Clusters with fewer cells (outliers) are merged into the nearest larger cluster, by
        distance to its centroid in PCA space, and a warning is logged; 3 lets a stratified
        train/val/test split keep every class.
    layer
        Matrix to cluster (default ``X``).
    random_state
        Seed of PCA and clustering (an integer, recorded).
    key_added
        ``.obs`` key of the labels.
    {doc_copy}

    Returns
    -------
    {doc_returns_copy} Sets ``.obs[key_added]`` (categorical,
    ``'c0'``, ``'c1'``, ... ordered by cluster size), ``.obsm['X_pca']`` and
    ``.uns['sad']['pseudo_labels']``.

    """
    check_adata(adata, min_obs=3)
    random_state = check_seed(random_state)
    if method not in ("kmeans", "leiden"):
        msg = f"Unknown method {method!r}; use 'kmeans' or 'leiden'."
        raise ValueError(msg)
    if method == "kmeans" and not 2 <= n_clusters <= adata.n_obs:
        msg = f"n_clusters={n_clusters} must be between 2 and the number of cells ({adata.n_obs})."
        raise ValueError(msg)
    if method == "leiden":
        try:
            import leidenalg  # noqa: F401
        except ImportError as e:
            msg = "method='leiden' needs igraph and leidenalg: `pip install scadversarial[leiden]`, or use method='kmeans'."
            raise ImportError(msg) from e
    X = get_matrix(adata, layer)
    from sklearn.decomposition import PCA

    n_comps = int(min(n_pcs, min(X.shape) - 1))
    pcs = PCA(n_components=n_comps, random_state=random_state).fit_transform(X).astype(np.float32)
    if copy:
        adata = adata.copy()
    if method == "kmeans":
        from sklearn.cluster import MiniBatchKMeans

        raw = MiniBatchKMeans(n_clusters=n_clusters, random_state=random_state, n_init=3, batch_size=1024).fit_predict(
            pcs
        )
    else:
        import scanpy as sc

        tmp = AnnData(np.zeros((adata.n_obs, 1), np.float32), obsm={"X_pca": pcs})
        sc.pp.neighbors(tmp, use_rep="X_pca", random_state=random_state)
        sc.tl.leiden(
            tmp, resolution=resolution, random_state=random_state, flavor="igraph", n_iterations=2, directed=False
        )
        raw = tmp.obs["leiden"].astype(int).to_numpy()
    raw = _merge_small(raw, pcs, min_size)
    # name clusters by decreasing size so labels do not depend on the clusterer's numbering
    sizes = pd.Series(raw).value_counts()
    rename = {old: f"c{i}" for i, old in enumerate(sizes.index)}
    labels = pd.Categorical([rename[v] for v in raw], categories=[f"c{i}" for i in range(len(sizes))])
    adata.obs[key_added] = pd.Series(labels, index=adata.obs_names)
    adata.obsm["X_pca"] = pcs
    params = {
        "method": method,
        "n_clusters": int(n_clusters),
        "n_pcs": n_comps,
        "resolution": float(resolution),
        "min_size": int(min_size),
        "random_state": random_state,
        "key_added": key_added,
    }
    set_record(adata, _keys.STEP_LABELS, params=params, metrics={"n_labels": len(sizes), "sizes": sizes.to_numpy()})
    return adata if copy else None


def _merge_small(raw: np.ndarray, pcs: np.ndarray, min_size: int) -> np.ndarray:
    """Reassign cells of clusters smaller than ``min_size`` to the nearest centroid of a larger cluster."""
    ids, sizes = np.unique(raw, return_counts=True)
    small, big = ids[sizes < min_size], ids[sizes >= min_size]
    if not len(small) or len(big) < 2:
        return raw
    centroids = np.stack([pcs[raw == c].mean(0) for c in big])
    moved = np.isin(raw, small)
    d = ((pcs[moved, None, :] - centroids[None]) ** 2).sum(-1)
    raw = raw.copy()
    raw[moved] = big[d.argmin(1)]
    logger.warning(
        "pseudo_labels: merged %d clusters smaller than %d cells (%d cells) into their nearest cluster",
        len(small),
        min_size,
        int(moved.sum()),
    )
    return raw
