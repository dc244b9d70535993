"""``sad.pp.preprocess``: normalize, log, select genes and scale, recording everything needed to repeat it."""

from __future__ import annotations

import gc

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from .. import _keys
from .._docs import doc_copy, doc_params, doc_returns_copy
from .._settings import logger
from .._validate import (
    check_adata,
    check_finite,
    check_nonnegative,
    get_matrix,
    matrix_name,
    negative_min,
    set_record,
    uns_root,
)
from . import _dask
from ._chunked import dense_columns, mean_std, scale_into


def _looks_like_counts(X) -> bool:
    data = X.data if sp.issparse(X) else np.asarray(X)
    sample = data[: min(data.size, 200_000)]
    return bool(np.all(sample == np.round(sample)))


def _check_not_scaled(M) -> None:
    """Raise when log-normalized input has negative values (scaled data passed by mistake)."""
    low = negative_min(M)
    if low is not None:
        msg = (
            f"The matrix has negative values (min {low:g}): it looks scaled already. Pass counts or "
            "log-normalized values (e.g. `adata.raw.to_adata()` or a counts layer with `layer=`)."
        )
        raise ValueError(msg)


def _check_input(M, where: str, *, already_log: bool | None, uns_log: bool) -> bool:
    """Check the input matrix (finite; counts non-negative; log data not scaled); return ``already_log``.

    ``None`` decides from the data: ``uns_log`` (``uns['log1p']`` set for ``X``) or non-integer values mean
    log-normalized. A dask matrix is summarized in one pass over its blocks (its non-finite values and
    minimum, which is all the shared checks read) and its first block is the counts-or-log sample.
    """
    if _dask.is_dask(M):
        n_bad, low = _dask.summarize(M)
        summary = np.array([np.nan] * n_bad + [low])
        sample = _dask.first_block(M)
    else:
        summary = sample = M
    check_finite(summary, where)
    if already_log is None:
        already_log = uns_log or not _looks_like_counts(sample)
    if already_log:
        _check_not_scaled(summary)
    else:
        check_nonnegative(summary, where)
    return bool(already_log)


@doc_params(doc_copy=doc_copy, doc_returns_copy=doc_returns_copy)
def preprocess(
    adata: AnnData,
    *,
    layer: str | None = None,
    already_log: bool | None = None,
    target_sum: float = 1e4,
    n_top_genes: int | None = 2000,
    flavor: str = "seurat",
    max_value: float | None = 10.0,
    subset: bool = True,
    reference: AnnData | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Normalize, log-transform, select highly variable genes and scale, as the seed pipeline.

    Steps: :func:`scanpy.pp.normalize_total` to ``target_sum``, :func:`scanpy.pp.log1p`, the top
    ``n_top_genes`` highly variable genes (:func:`scanpy.pp.highly_variable_genes`), and per-gene
    scaling to zero mean and unit variance clipped at ``max_value``. Data that are already
    log-normalized skip the first two steps.

    Memory: besides the outputs, one float32 copy of the input's non-zeros (the log-normalized matrix, kept
    in ``.raw``) and chunk-sized temporaries: statistics and scaling run by chunks of cells, with the values
    of whole-matrix numpy operations bit for bit. A dask ``X`` (or ``layer``), e.g. from
    :func:`anndata.experimental.read_elem_lazy`, is processed block by block of cells, also on a
    ``dask.distributed`` cluster: the outputs are dask arrays that compute to the in-memory outputs, and only
    per-gene statistics are computed here. A backed AnnData must be loaded first (``adata.to_memory()``).

    Parameters
    ----------
    adata
        Cells x genes with raw counts (or log-normalized values, see ``already_log``).
    layer
        Matrix to start from (default ``X``).
    already_log
        Whether the matrix is already log-normalized. ``None`` decides from the data: integer
        values are counts, anything else is taken as log-normalized (``uns['log1p']`` also says so).
    target_sum
        Total counts per cell after normalization.
    n_top_genes
        Number of highly variable genes; ``None`` or more than the genes present keeps all genes.
    flavor
        Flavor of :func:`scanpy.pp.highly_variable_genes` (``'seurat'`` works on log data).
    max_value
        Clip of the scaled values (``None``: no clip).
    subset
        Keep only the selected genes (the full log-normalized matrix goes to ``.raw``); ``False``
        only marks them in ``.var['highly_variable']`` and keeps every gene (all genes are scaled).
    reference
        A preprocessed AnnData whose genes, per-gene mean/std and parameters are reused, so that
        new data are scaled exactly like the training data.
    {doc_copy}

    Returns
    -------
    {doc_returns_copy} Sets:

    ``.X``
        Scaled values (float32, dense).
    ``.raw``
        All genes, log-normalized (when ``subset=True``).
    ``.layers['counts']``
        Raw counts of the kept genes (when the input held counts).
    ``.layers['sad_lognorm']``
        Log-normalized values of the kept genes.
    ``.var['sad_mean']``, ``.var['sad_std']``, ``.var['highly_variable']``
        Scaling statistics and the gene selection.
    ``.uns['sad']['preprocess']``
        Parameters of this call.

    Examples
    --------
    >>> import scadversarial as sad
    >>> adata = sad.datasets.pbmc68k_reduced()
    >>> sad.pp.preprocess(adata, n_top_genes=500)
    >>> adata.layers["sad_lognorm"].shape
    (700, 500)

    With dask (the ``dask`` extra), blocks of cells read lazily from an ``.h5ad``:

    >>> import anndata as ad, h5py  # doctest: +SKIP
    >>> f = h5py.File("pbmc3k.h5ad")  # doctest: +SKIP
    >>> adata = ad.AnnData(ad.experimental.read_elem_lazy(f["X"], chunks=(10_000, -1)))  # doctest: +SKIP
    >>> sad.pp.preprocess(adata)  # doctest: +SKIP
    >>> adata.X  # doctest: +SKIP
    dask.array<...>

    """
    check_adata(adata)
    M = get_matrix(adata, layer, dense=False, check=False)  # checked once, just below
    lazy = _dask.is_dask(M)
    already_log = _check_input(
        M, matrix_name(layer), already_log=already_log, uns_log=("log1p" in adata.uns and layer is None)
    )
    if reference is not None:
        missing = reference.var_names.difference(adata.var_names)
        if len(missing):
            msg = f"{len(missing)} genes of the reference are missing from adata: {list(missing[:10])}. Both must share the reference's genes."
            raise KeyError(msg)
        for k in (_keys.VAR_MEAN, _keys.VAR_STD):
            if k not in reference.var:
                msg = f"The reference has no .var[{k!r}]; preprocess it with `sad.pp.preprocess` first."
                raise KeyError(msg)

    import scanpy as sc

    if copy:
        adata = adata.copy()
    # Memory: the input, its float32 log-normalized copy (-> .raw) and, at the end, the two dense outputs.
    # No other full-size copy: counts are read from the input after the gene subset, statistics and scaling
    # run by chunks of cells (``_chunked``), bit-identical to the whole-matrix numpy operations.
    # Dask input: the same steps block by block of cells, lazily (``_dask``); only per-gene statistics are computed.
    if lazy:
        work = AnnData(
            _dask.lognorm(M, already_log=already_log, target_sum=target_sum),
            obs=adata.obs[[]].copy(),
            var=adata.var[[]].copy(),
        )
    else:
        work = AnnData(
            M.astype(np.float32) if sp.issparse(M) else M.copy(),
            obs=adata.obs[[]].copy(),
            var=adata.var[[]].copy(),
        )
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
            if n_top_genes is not None:
                logger.info("n_top_genes=%d >= %d genes: keeping all genes", n_top_genes, work.n_vars)
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
    del work, M  # the input is released as soon as adata's own matrix is subset below
    keep = None  # columns of lognorm_full kept; None: all
    if subset or reference is not None:
        if subset:
            adata.raw = AnnData(lognorm_full, obs=adata.obs[[]], var=adata.var.copy())
        keep = adata.var_names.get_indexer(genes)
        adata._inplace_subset_var(keep)  # also subsets the input matrix: its kept genes are the counts
        gc.collect(1)  # the subset leaves the full input in young reference cycles: free it before the dense outputs
    counts = None
    if not already_log:
        counts = get_matrix(adata, layer, dense=False, check=False)
        if lazy:
            counts = _dask.counts(counts)
        elif sp.issparse(counts):  # float32 CSR as before; a new object unless adata.X (replaced below) held it
            counts = sp.csr_matrix(counts, dtype=np.float32, copy=layer is not None)
        else:
            counts = np.array(counts) if layer is not None else np.asarray(counts)
    if lazy:
        lognorm = _dask.dense(lognorm_full, keep)
        if mean is None:
            mean, std = _dask.mean_std(lognorm)
        adata.X = _dask.scale(lognorm, mean, std, max_value)
    else:
        lognorm = dense_columns(lognorm_full, keep)
        if mean is None:
            mean, std = mean_std(lognorm)
        adata.X = scale_into(lognorm, mean, std, max_value)
    adata.layers[_keys.LAYER_LOGNORM] = lognorm
    if counts is not None:
        adata.layers[_keys.LAYER_COUNTS] = counts
    adata.var[_keys.VAR_MEAN] = mean
    adata.var[_keys.VAR_STD] = std
    adata.var[_keys.VAR_HVG] = hvg if keep is None else hvg[keep]
    uns_root(adata)
    set_record(adata, _keys.STEP_PREPROCESS, params={**params, "max_value": -1 if max_value is None else max_value})
    logger.info("preprocess: %d cells x %d genes", adata.n_obs, adata.n_vars)
    return adata if copy else None
