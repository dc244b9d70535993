"""``sad.pp.preprocess``: normalize, log, select genes and scale, recording everything needed to repeat it."""

from __future__ import annotations

import gc
from typing import Literal

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from .. import _keys
from .._docs import doc_copy, doc_params, doc_returns_copy
from .._settings import logger
from .._validate import (
    check_adata,
    check_choice,
    check_finite,
    check_nonnegative,
    get_matrix,
    is_backed,
    is_dask,
    matrix_name,
    negative_min,
    set_record,
    uns_root,
)
from . import _backed, _dask
from ._chunked import dense_columns, mean_std, scale_into, sparse_columns

Output = Literal["scaled", "lognorm"]

#: Stored values (rows of a dense matrix) read to tell counts from log-normalized data: enough to meet a
#: non-integer value in any log-normalized matrix, few enough to cost nothing beside the whole matrix.
COUNTS_SAMPLE = 200_000


def _looks_like_counts(X) -> bool:
    data = X.data if sp.issparse(X) else np.asarray(X)
    sample = data[: min(data.size, COUNTS_SAMPLE)]
    return bool(np.all(sample == np.round(sample)))


def _summary(n_bad: int, low: float) -> np.ndarray:
    """A small array with ``n_bad`` non-finite values and minimum ``low``: all the shared checks read."""
    return np.array([np.nan] * n_bad + [low if np.isfinite(low) else 0.0])


def _check_not_scaled(M) -> None:
    """Raise when log-normalized input has negative values (scaled data passed by mistake)."""
    low = negative_min(M)
    if low is not None:
        msg = (
            f"The matrix has negative values (min {low:g}): it looks scaled already. Pass counts or "
            "log-normalized values (e.g. `adata.raw.to_adata()` or a counts layer with `layer=`)."
        )
        raise ValueError(msg)


def _check_sign(summary, where: str, *, already_log: bool) -> None:
    """Counts must be non-negative; log-normalized data must not be scaled (negative) already."""
    if already_log:
        _check_not_scaled(summary)
    else:
        check_nonnegative(summary, where)


def _check_input(M, where: str, *, already_log: bool | None, uns_log: bool) -> bool:
    """Check the input matrix (finite; counts non-negative; log data not scaled); return ``already_log``.

    ``None`` decides from the data: ``uns_log`` (``uns['log1p']`` set for ``X``) or non-integer values mean
    log-normalized. A dask matrix is summarized in one pass over its blocks (its non-finite values and
    minimum, which is all the shared checks read) and its first block is the counts-or-log sample.
    A backed matrix is only sampled here; it is checked while it is read (:func:`._backed.lognorm`).
    """
    if is_backed(M):
        return (
            bool(already_log) if already_log is not None else uns_log or not _backed.looks_like_counts(M, COUNTS_SAMPLE)
        )
    if is_dask(M):
        summary = _summary(*_dask.summarize(M))
        sample = _dask.first_block(M)
    else:
        summary = sample = M
    check_finite(summary, where)  # before the sample is read: a NaN is reported as such
    if already_log is None:
        already_log = uns_log or not _looks_like_counts(sample)
    _check_sign(summary, where, already_log=bool(already_log))
    return bool(already_log)


def _lognorm_full(M, where: str, *, already_log: bool, target_sum: float):
    """The log-normalized matrix of all genes: lazily for dask, read by chunks when backed, else in memory."""
    if is_dask(M):
        return _dask.lognorm(M, already_log=already_log, target_sum=target_sum)
    if is_backed(M):
        lognorm, n_bad, low = _backed.lognorm(M, already_log=already_log, target_sum=target_sum)
        summary = _summary(n_bad, low)
        check_finite(summary, where)
        _check_sign(summary, where, already_log=already_log)
        return lognorm
    import scanpy as sc

    work = AnnData(M.astype(np.float32) if sp.issparse(M) else M.copy())
    if not already_log:
        sc.pp.normalize_total(work, target_sum=target_sum)
        sc.pp.log1p(work)
    return work.X


def _check_backed(adata: AnnData, layer: str | None, *, copy: bool) -> None:
    """Raise when backed ``adata`` cannot be preprocessed as asked: its ``X`` cannot be written in place."""
    if not adata.isbacked:
        return
    if not copy:
        msg = (
            f"adata is backed (opened with backed='r' from {str(adata.filename)!r}) and preprocess cannot write "
            "into the file. Use `sad.pp.preprocess(adata, copy=True)` (reads X by chunks of cells and returns "
            "an in-memory AnnData; `output='lognorm'` keeps it sparse), or read X lazily as a dask array with "
            "`anndata.experimental.read_elem_lazy` and preprocess that."
        )
        raise ValueError(msg)
    if layer is None:
        _backed.check_readable(adata.X)


@doc_params(doc_copy=doc_copy, doc_returns_copy=doc_returns_copy)
def preprocess(  # noqa: PLR0913  scanpy's recipe options, reference, output and copy; grouping them would churn every caller
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
    output: Output = "scaled",
    copy: bool = False,
) -> AnnData | None:
    """Normalize, log-transform, select highly variable genes and scale, as the seed pipeline.

    Steps: :func:`scanpy.pp.normalize_total` to ``target_sum``, :func:`scanpy.pp.log1p`, the top
    ``n_top_genes`` highly variable genes (:func:`scanpy.pp.highly_variable_genes`), and per-gene
    scaling to zero mean and unit variance clipped at ``max_value``. Data that are already
    log-normalized skip the first two steps. With ``output='lognorm'`` the scaling statistics are
    computed but not applied: ``X`` stays the sparse log-normalized values, and the classifier scales
    them on the fly (its input transform), so no dense cells x genes matrix is ever made.

    Memory: besides the outputs, one float32 copy of the input's non-zeros (the log-normalized matrix, kept
    in ``.raw``), scanpy's temporary copies of it for the gene selection (two, briefly), and chunk-sized temporaries:
    statistics, scaling and densifying run by chunks of cells, with the values of whole-matrix numpy
    operations bit for bit. The outputs are, per cell, 8 bytes per kept gene for each dense matrix
    (``output='scaled'``: ``X`` and ``.layers['sad_lognorm']``), or about 8 bytes per stored value of the
    kept genes for the sparse ``X`` (``output='lognorm'``, shared with ``.layers['sad_lognorm']``), plus the
    counts of the kept genes and ``.raw``.

    A dask ``X`` (or ``layer``), e.g. from :func:`anndata.experimental.read_elem_lazy`, is processed block
    by block of cells, also on a ``dask.distributed`` cluster: the outputs are dask arrays that compute to
    the in-memory outputs (``output='lognorm'``: CSR blocks), and only per-gene statistics are computed here.
    A backed AnnData (``anndata.read_h5ad(path, backed='r')``) needs ``copy=True``: ``X`` is read from the
    file by chunks of cells (the counts are never all in memory) and an in-memory AnnData with the
    outputs is returned, equal to the in-memory result bit for bit (its ``.raw`` is not carried over).

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
    output
        What ``X`` holds: ``'scaled'``, the dense scaled values; ``'lognorm'``, the sparse
        log-normalized values (bounded memory for large data; the scaling is applied by the classifier).
    {doc_copy}

    Returns
    -------
    {doc_returns_copy} Sets:

    ``.X``
        ``output='scaled'``: scaled values (float32, dense). ``output='lognorm'``: log-normalized
        values of the kept genes (float32 CSR), the same object as ``.layers['sad_lognorm']``.
    ``.raw``
        All genes, log-normalized (when ``subset=True``).
    ``.layers['counts']``
        Raw counts of the kept genes (when the input held counts).
    ``.layers['sad_lognorm']``
        Log-normalized values of the kept genes (float32; dense for ``output='scaled'``).
    ``.var['sad_mean']``, ``.var['sad_std']``, ``.var['highly_variable']``
        Scaling statistics (the same for both outputs) and the gene selection.
    ``.uns['sad']['preprocess']``
        Parameters of this call; ``['params']['output']`` says what ``X`` holds.

    Examples
    --------
    >>> import scadversarial as sad
    >>> adata = sad.datasets.pbmc68k_reduced()
    >>> sad.pp.preprocess(adata, n_top_genes=500)
    >>> adata.layers["sad_lognorm"].shape
    (700, 500)

    Sparse log-normalized ``X`` for large data; the scaled values are ``X`` scaled with the statistics:

    >>> adata = sad.datasets.pbmc68k_reduced()
    >>> sad.pp.preprocess(adata, n_top_genes=500, output="lognorm")
    >>> adata.X.format, adata.X is adata.layers["sad_lognorm"], adata.uns["sad"]["preprocess"]["params"]["output"]
    ('csr', True, 'lognorm')

    A backed ``.h5ad``, read by chunks of cells into an in-memory result:

    >>> import anndata as ad  # doctest: +SKIP
    >>> backed = ad.read_h5ad("pbmc3k.h5ad", backed="r")  # doctest: +SKIP
    >>> adata = sad.pp.preprocess(backed, output="lognorm", copy=True)  # doctest: +SKIP

    With dask (the ``dask`` extra), blocks of cells read lazily from an ``.h5ad``:

    >>> import anndata as ad, h5py  # doctest: +SKIP
    >>> f = h5py.File("pbmc3k.h5ad")  # doctest: +SKIP
    >>> adata = ad.AnnData(ad.experimental.read_elem_lazy(f["X"], chunks=(10_000, -1)))  # doctest: +SKIP
    >>> sad.pp.preprocess(adata)  # doctest: +SKIP
    >>> adata.X  # doctest: +SKIP
    dask.array<...>

    """
    check_adata(adata, allow_backed=True)
    output = check_choice("output", output, Output)
    _check_backed(adata, layer, copy=copy)
    copied = adata.isbacked  # a backed adata is copied to memory here; others below, after the checks
    if copied:  # the file's X is read by chunks below; everything else is copied to memory
        source = adata.X if layer is None else None  # a backed view's X is read already: in memory
        adata = _backed.in_memory_shell(adata, None if is_backed(source) else source)
        M = source if is_backed(source) else get_matrix(adata, layer, dense=False, check=False)
    else:
        M = get_matrix(adata, layer, dense=False, check=False)  # checked once, just below
    lazy, backed = is_dask(M), is_backed(M)
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

    if copy and not copied:
        adata = adata.copy()
    # Memory: the input, its float32 log-normalized copy (-> .raw) and, at the end, the outputs. No other
    # full-size copy: counts are read from the input after the gene subset, statistics and scaling run by
    # chunks of cells (``_chunked``), bit-identical to the whole-matrix numpy operations.
    # Dask input: the same steps block by block of cells, lazily (``_dask``); only per-gene statistics are computed.
    # Backed input: X read by chunks of cells (``_backed``); the counts are never all in memory.
    work = AnnData(
        _lognorm_full(M, matrix_name(layer), already_log=already_log, target_sum=target_sum),
        obs=adata.obs[[]].copy(),
        var=adata.var[[]].copy(),
    )

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
    params["output"] = output  # also over a reference's: the marker of what this X holds

    lognorm_full = work.X
    del work  # the input is released as soon as adata's own matrix is subset below
    if not backed:
        del M
    keep = None  # columns of lognorm_full kept; None: all
    if subset or reference is not None:
        if subset:
            adata.raw = AnnData(lognorm_full, obs=adata.obs[[]], var=adata.var.copy())
        keep = adata.var_names.get_indexer(genes)
        adata._inplace_subset_var(keep)  # also subsets the input matrix: its kept genes are the counts
        gc.collect(1)  # the subset leaves the full input in young reference cycles: free it before the dense outputs
    counts = None if already_log else _kept_counts(adata, layer, M if backed else None, keep, lazy=lazy)
    if backed:
        del M
    if output == "lognorm":
        lognorm = _dask.sparse(lognorm_full, keep) if lazy else sparse_columns(lognorm_full, keep)
        del lognorm_full  # .raw holds it (subset=True); else it is replaced by the sparse X
        if mean is None:
            mean, std = _dask.mean_std(lognorm) if lazy else mean_std(lognorm)
        adata.X = lognorm
        lognorm = adata.X  # X and the layer: one object
    elif lazy:
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


def _kept_counts(adata: AnnData, layer: str | None, backed_X, keep: np.ndarray | None, *, lazy: bool):
    """The counts layer: the input's kept genes (adata is subset already; a backed X is read again by chunks)."""
    if backed_X is not None:
        return _backed.kept_counts(backed_X, keep)
    counts = get_matrix(adata, layer, dense=False, check=False)
    if lazy:
        return _dask.counts(counts)
    if sp.issparse(counts):  # float32 CSR as before; a new object unless adata.X (replaced below) held it
        return sp.csr_matrix(counts, dtype=np.float32, copy=layer is not None)
    return np.array(counts) if layer is not None else np.asarray(counts)
