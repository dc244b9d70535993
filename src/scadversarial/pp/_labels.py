"""``sad.pp.pseudo_labels``: cluster cells when no annotation exists."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _keys
from .._docs import doc_copy, doc_params, doc_returns_copy
from .._settings import logger
from .._validate import check_adata, get_matrix, is_dask, set_record
from ._chunked import dense_columns, row_chunks, scale_into


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
        Preprocessed AnnData: scaled values in ``X``, or log-normalized ones
        (``sad.pp.preprocess(output='lognorm')``), which are scaled here with ``.var['sad_mean']`` /
        ``['sad_std']`` and the recorded clip, a chunk of cells at a time, to the same values. The
        randomized PCA then reads ``X`` once per product, about ``2 * n_iter + 3`` times (17 for
        scikit-learn's default): cheap in memory, slow for a dask ``X`` that is read from disk or
        computed (``adata.X = adata.X.persist()`` first if it fits in memory).
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
        Matrix to cluster as it is (default ``X``, scaled).
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
    n_comps = int(min(n_pcs, min(adata.shape) - 1))
    pcs = _pcs(adata, layer, n_comps, random_state)
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


def _pcs(adata: AnnData, layer: str | None, n_comps: int, random_state: int) -> np.ndarray:
    """The cells' principal components (float32): of ``X`` scaled when it is log-normalized, else of the matrix."""
    from ..tl._chunks import x_is_lognorm

    if layer is None and x_is_lognorm(adata):
        return _lognorm_pcs(adata, n_comps, random_state)
    from sklearn.decomposition import PCA

    X = get_matrix(adata, layer)
    return PCA(n_components=n_comps, random_state=random_state).fit_transform(X).astype(np.float32)


def _scaled_chunks(adata: AnnData):
    """The scaled values of a log-normalized ``X``, a chunk of cells at a time: ``output='scaled'``'s rows bit for bit.

    The same operations as :func:`sad.pp.preprocess` (densify the float32 values, then
    :func:`._chunked.scale_into` with the statistics and the recorded clip).
    """
    for k in (_keys.VAR_MEAN, _keys.VAR_STD):
        if k not in adata.var:
            msg = f"adata.var has no {k!r}, which scales the log-normalized X: run `sad.pp.preprocess` again."
            raise KeyError(msg)
    mean = adata.var[_keys.VAR_MEAN].to_numpy(np.float32)
    std = adata.var[_keys.VAR_STD].to_numpy(np.float32)
    clip = float(adata.uns[_keys.UNS][_keys.STEP_PREPROCESS]["params"].get("max_value", -1))
    clip = None if clip < 0 else clip  # -1 records no clip
    X = adata.X
    for sl in row_chunks(adata.n_obs, adata.n_vars):
        block = X[sl].compute() if is_dask(X) else X[sl]
        values = dense_columns(block, None)
        if not np.isfinite(values).all():
            msg = "adata.X contains NaN or infinite values. Remove or impute them first."
            raise ValueError(msg)
        yield scale_into(values, mean, std, clip)


def _scaled_operator(adata: AnnData, mean: np.ndarray):
    """The centered scaled ``X`` as a float32 linear operator: its products read ``X`` by chunks of cells."""
    from scipy.sparse.linalg import LinearOperator

    def matmat(Q: np.ndarray) -> np.ndarray:
        Q = np.asarray(Q, dtype=np.float32).reshape(adata.n_vars, -1)
        return np.concatenate([Z @ Q for Z in _scaled_chunks(adata)]) - mean @ Q

    def rmatmat(P: np.ndarray) -> np.ndarray:
        P = np.asarray(P, dtype=np.float32).reshape(adata.n_obs, -1)
        out = np.zeros((adata.n_vars, P.shape[1]), np.float32)
        start = 0
        for Z in _scaled_chunks(adata):
            out += Z.T @ P[start : start + len(Z)]
            start += len(Z)
        return out - np.outer(mean, P.sum(0))

    return LinearOperator(
        adata.shape,
        matvec=lambda v: matmat(v).ravel(),
        rmatvec=lambda v: rmatmat(v).ravel(),
        matmat=matmat,
        rmatmat=rmatmat,
        dtype=np.float32,
    )


def _lognorm_pcs(adata: AnnData, n_comps: int, random_state: int) -> np.ndarray:
    """PCA of the scaled values of a log-normalized ``X``, read by chunks of cells: no dense cells x genes matrix.

    The solver scikit-learn's ``PCA(svd_solver='auto')`` picks for the dense scaled ``X`` of
    ``output='scaled'``, on the same values, so that both outputs give the same components (to float
    rounding) and labels: the genes x genes covariance for many cells and few genes; randomized SVD with
    the same seed and settings, its products taken chunk by chunk, for the usual shapes; a plain PCA of
    the dense matrix for small ones (or where scikit-learn lacks ``_randomized_svd``).
    """
    from sklearn.decomposition import PCA
    from sklearn.utils.extmath import svd_flip

    try:  # what PCA calls: it takes a linear operator (the public wrapper checks for an array first)
        from sklearn.utils.extmath import _randomized_svd as randomized_svd
    except ImportError:  # an older scikit-learn: PCA of the dense matrix, as below for small ones
        randomized_svd = None

    n_obs, n_vars = adata.shape
    total = np.zeros(n_vars)
    covariance = n_vars <= 1_000 and n_obs >= 10 * n_vars  # scikit-learn's rule
    gram = np.zeros((n_vars, n_vars)) if covariance else None
    for Z in _scaled_chunks(adata):
        total += Z.sum(0, dtype=np.float64)
        if covariance:
            gram += Z.T.astype(np.float64) @ Z
    mean64 = total / n_obs
    mean = mean64.astype(np.float32)
    if covariance:
        cov = (gram - n_obs * np.outer(mean64, mean64)) / (n_obs - 1)
        _, vecs = np.linalg.eigh(cov)
        Vt = vecs[:, ::-1][:, :n_comps].T.astype(np.float32)  # largest eigenvalues first
        Vt *= np.sign(Vt[np.arange(n_comps), np.abs(Vt).argmax(1)])[:, None]  # svd_flip's: largest loading > 0
        return np.concatenate([(Z - mean) @ Vt.T for Z in _scaled_chunks(adata)]).astype(np.float32)
    small = max(n_obs, n_vars) <= 500 or not n_comps < 0.8 * min(n_obs, n_vars)  # scikit-learn's rule
    if small or randomized_svd is None:
        X = np.concatenate(list(_scaled_chunks(adata)))  # small: at most 500 x 500, or under 63 cells or genes
        return PCA(n_components=n_comps, random_state=random_state).fit_transform(X).astype(np.float32)
    U, S, Vt = randomized_svd(
        _scaled_operator(adata, mean),
        n_components=n_comps,
        n_oversamples=10,
        n_iter="auto",
        power_iteration_normalizer="auto",
        flip_sign=False,
        random_state=random_state,
    )
    U, _ = svd_flip(U, Vt, u_based_decision=False)
    return (U * S).astype(np.float32)


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
