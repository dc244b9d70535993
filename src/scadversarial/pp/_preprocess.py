"""``sad.pp.preprocess``: normalize, log, select genes and scale, recording everything needed to repeat it."""

from __future__ import annotations

import gc
import warnings
from numbers import Integral, Real
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
from ._chunked import block_summary, dense_columns, fold_summaries, mean_std, scale_into, sparse_columns

Output = Literal["scaled", "lognorm"]

#: Stored values (rows of a dense matrix) a backed matrix is sampled by, to guess counts or log-normalized
#: before its one reading pass; the pass's summary of the whole matrix then decides (:func:`_lognorm_full`).
COUNTS_SAMPLE = 200_000

#: The largest value log-normalized data are taken to hold: a gene holding a whole cell's library stays far
#: below it at any usual target sum (``log1p(1e6)`` is 13.8, ``log2`` of CPM + 1 is 19.9), while raw counts
#: and normalized but unlogged values exceed it.
LOG_MAX = 30.0

#: Summary of a matrix's stored values: non-finite values, min and max of the finite ones, all integers.
Summary = tuple[int, float, float, bool]


def _as_checked(n_bad: int, low: float) -> np.ndarray:
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


def _why_log(*, given: bool | None, uns_log: bool) -> str:
    if given:
        return "already_log=True"
    if uns_log:
        return "adata.uns['log1p'] is set"
    return "it has non-integer values"


def _check_log_values(summary: Summary, where: str, *, given: bool | None, uns_log: bool) -> None:
    """Raise when values taken as log-normalized are not: integer counts, or values too large for log1p's."""
    _, _, high, integral = summary
    why = _why_log(given=given, uns_log=uns_log)
    if integral and high > 1:  # 0/1 data are left alone: nothing tells them apart
        fix = (
            "pass already_log=False (or None to decide from the data)"
            if given
            else "delete the stale entry (`del adata.uns['log1p']`) or pass already_log=False"
        )
        msg = (
            f"{where} looks like raw counts (integers, max {high:g}) although {why}: {fix}, so that it is "
            "normalized and log-transformed; or pass the log-normalized matrix (`layer=`)."
        )
        raise ValueError(msg)
    if high > LOG_MAX:
        msg = (
            f"{where} has values up to {high:g}, too large for log-normalized data (at most {LOG_MAX:g}), though it "
            f"is taken as log-normalized because {why}: it looks normalized but not log-transformed, counts "
            "with non-integer values, or counts mixed with log-normalized cells. Pass the raw counts (`layer=`; "
            "non-integer counts with already_log=False), or log-transform the values first (`sc.pp.log1p(adata)`)."
        )
        raise ValueError(msg)


def _check_count_values(summary: Summary, where: str) -> None:
    """Raise (or warn) when values given as counts (``already_log=False``) are not integers."""
    _, _, high, integral = summary
    if integral:
        return
    if high <= LOG_MAX:
        msg = (
            f"{where} has non-integer values, none above {high:g}: it looks log-normalized already, although "
            "already_log=False (it would be normalized and log-transformed again). Pass already_log=True (or None "
            "to decide from the data), or the raw counts (`layer=`); round non-integer counts this small first."
        )
        raise ValueError(msg)
    msg = (
        f"{where} has non-integer values (max {high:g}) and already_log=False: they are normalized and "
        "log-transformed as counts (e.g. estimated counts). If they are normalized already, pass the raw counts."
    )
    warnings.warn(msg, UserWarning, stacklevel=5)  # the caller of preprocess


def _decide(summary: Summary, where: str, *, given: bool | None, uns_log: bool) -> bool:
    """Check the input's summary and return ``already_log``: given, else from the data.

    ``None`` decides from the whole matrix: ``uns_log`` (``uns['log1p']`` set for ``X``) or any non-integer
    value mean log-normalized, so in-memory, dask and backed input decide alike. Then the values must fit:
    finite; counts non-negative integers; log-normalized values not negative (scaled), not integer counts and
    not above :data:`LOG_MAX`.
    """
    n_bad, low, _, integral = summary
    checked = _as_checked(n_bad, low)
    check_finite(checked, where)
    already_log = bool(given) if given is not None else uns_log or not integral
    if already_log:
        _check_not_scaled(checked)
        _check_log_values(summary, where, given=given, uns_log=uns_log)
    else:
        check_nonnegative(checked, where)
        _check_count_values(summary, where)
    return already_log


def _summarize(M) -> Summary:
    """The summary of an in-memory or dask matrix: one pass over its stored values (dask: over its blocks)."""
    return _dask.summarize(M) if is_dask(M) else fold_summaries(block_summary(M))


def _guess_backed(M, *, given: bool | None, uns_log: bool) -> bool:
    """``already_log`` for the reading pass of a backed matrix, from its first values; the pass's summary decides."""
    if given is not None:
        return bool(given)
    return uns_log or not _backed.looks_like_counts(M, COUNTS_SAMPLE)


def _check_input(M, where: str, *, already_log: bool | None, uns_log: bool) -> bool | None:
    """Check an in-memory or dask input (:func:`_decide`, one pass) and return ``already_log``.

    ``None`` for a backed matrix: it is checked and decided by its reading pass (:func:`_lognorm_full`).
    """
    if is_backed(M):
        return None
    return _decide(_summarize(M), where, given=already_log, uns_log=uns_log)


def _lognorm_full(M, where: str, *, already_log: bool | None, given: bool | None, uns_log: bool, target_sum: float):
    """The log-normalized matrix of all genes, and ``already_log`` (decided here for a backed ``M``).

    Lazily for dask, read by chunks when backed, else in memory. A backed matrix is read once, with
    ``already_log`` guessed from its first values, and checked by the reading pass's summary of the whole
    matrix (:func:`_decide`, with the caller's ``given`` value); only where the guess was wrong (first
    values integers, later ones not, and the whole passing as log-normalized) is it read again, as decided.
    """
    if is_backed(M):
        guess = _guess_backed(M, given=given, uns_log=uns_log)
        lognorm, summary = _backed.lognorm(M, already_log=guess, target_sum=target_sum)
        decided = _decide(summary, where, given=given, uns_log=uns_log)
        if decided != guess:
            lognorm, _ = _backed.lognorm(M, already_log=decided, target_sum=target_sum)
        return lognorm, decided
    if is_dask(M):
        return _dask.lognorm(M, already_log=already_log, target_sum=target_sum), already_log
    import scanpy as sc

    work = AnnData(M.astype(np.float32) if sp.issparse(M) else M.copy())
    if not already_log:
        sc.pp.normalize_total(work, target_sum=target_sum)
        sc.pp.log1p(work)
    return work.X, already_log


#: ``target_sum`` without a reference (scanpy's recipes' and Seurat's library size).
TARGET_SUM = 1e4


def _is_number(value, kind=Real) -> bool:
    return isinstance(value, kind) and not isinstance(value, bool)


def _check_params(*, target_sum, n_top_genes, max_value) -> None:
    """Raise for parameters preprocess cannot honour (before anything is read or written)."""
    if target_sum is not None and not (_is_number(target_sum) and np.isfinite(target_sum) and target_sum > 0):
        msg = (
            f"target_sum must be a positive number of counts per cell after normalization (e.g. 1e4), or None "
            f"for {TARGET_SUM:g} (with `reference=`, the reference's); got {target_sum!r}."
        )
        raise ValueError(msg)
    if n_top_genes is not None and not (_is_number(n_top_genes, Integral) and n_top_genes >= 1):
        msg = f"n_top_genes must be a positive number of genes, or None to keep all genes; got {n_top_genes!r}."
        raise ValueError(msg)
    if max_value is not None and not (_is_number(max_value) and max_value > 0):
        msg = (
            f"max_value must be a positive clip of the scaled values (e.g. 10), or None for no clip; got {max_value!r}."
        )
        raise ValueError(msg)


def _reference_params(reference: AnnData, adata: AnnData) -> dict:
    """The reference's preprocess parameters, once its genes and statistics are checked to serve ``adata``."""
    missing = reference.var_names.difference(adata.var_names)
    if len(missing):
        msg = f"{len(missing)} genes of the reference are missing from adata: {list(missing[:10])}. Both must share the reference's genes."
        raise KeyError(msg)
    for k in (_keys.VAR_MEAN, _keys.VAR_STD):
        if k not in reference.var:
            msg = f"The reference has no .var[{k!r}]; preprocess it with `sad.pp.preprocess` first."
            raise KeyError(msg)
    rec = reference.uns.get(_keys.UNS, {}).get(_keys.STEP_PREPROCESS)
    if not isinstance(rec, dict) or "params" not in rec:
        msg = (
            f"The reference has no .uns[{_keys.UNS!r}][{_keys.STEP_PREPROCESS!r}] record; preprocess it with "
            "`sad.pp.preprocess` first."
        )
        raise KeyError(msg)
    return dict(rec["params"])


def _resolve_target_sum(target_sum: float | None, ref_params: dict | None) -> float:
    """The target sum of this call: the given one, else the reference's (so new data are normalized like it), else 1e4.

    A given value that differs from the reference's is an error: the reference's statistics are of values
    normalized to its own target sum. A reference preprocessed from log-normalized values applied none, so
    its recorded value only stands in for the default.
    """
    ref_ts = None if ref_params is None else ref_params.get("target_sum")
    if ref_ts is None:
        return float(TARGET_SUM if target_sum is None else target_sum)
    if target_sum is None:
        return float(ref_ts)
    if float(target_sum) != float(ref_ts) and not ref_params.get("already_log", False):
        msg = (
            f"target_sum={target_sum:g} differs from the reference's ({float(ref_ts):g}), whose statistics scale "
            "values normalized to its own target sum: leave target_sum=None to use the reference's."
        )
        raise ValueError(msg)
    return float(target_sum)


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
    target_sum: float | None = None,
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
        Whether the matrix is already log-normalized. ``None`` decides from the whole matrix: integer
        values are counts, anything else is taken as log-normalized (``uns['log1p']`` also says so).
        Either way the values are checked to fit: counts are non-negative integers (non-integer counts,
        e.g. estimated, warn; small non-integer values given as counts look log-normalized and raise);
        log-normalized values are neither integer counts, nor negative (scaled), nor above 30 (not logged).
    target_sum
        Total counts per cell after normalization (positive); ``None``: the reference's with
        ``reference``, else 1e4. (Unlike scanpy's ``None``, never the median library size: count-space
        tools need the one target sum the record keeps.)
    n_top_genes
        Number of highly variable genes (at least 1); ``None`` or more than the genes present keeps all genes.
    flavor
        Flavor of :func:`scanpy.pp.highly_variable_genes` (``'seurat'`` works on log data).
    max_value
        Clip of the scaled values (positive; ``None``: no clip).
    subset
        Keep only the selected genes (the full log-normalized matrix goes to ``.raw``); ``False``
        only marks them in ``.var['highly_variable']`` and keeps every gene (all genes are scaled).
    reference
        A preprocessed AnnData whose genes, per-gene mean/std, clip and target sum are reused, so that
        new data are normalized and scaled exactly like the training data (a ``target_sum`` that differs
        from the reference's raises). The record keeps this call's own ``layer``, ``already_log`` and
        ``output``.
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
    _check_params(target_sum=target_sum, n_top_genes=n_top_genes, max_value=max_value)
    _check_backed(adata, layer, copy=copy)
    copied = adata.isbacked  # a backed adata is copied to memory here; others below, after the checks
    if copied:  # the file's X is read by chunks below; everything else is copied to memory
        source = adata.X if layer is None else None  # a backed view's X is read already: in memory
        adata = _backed.in_memory_shell(adata, None if is_backed(source) else source)
        M = source if is_backed(source) else get_matrix(adata, layer, dense=False, check=False)
    else:
        M = get_matrix(adata, layer, dense=False, check=False)  # checked once, just below
    lazy, backed = is_dask(M), is_backed(M)
    given, uns_log = already_log, ("log1p" in adata.uns and layer is None)
    already_log = _check_input(M, matrix_name(layer), already_log=given, uns_log=uns_log)
    ref_params = None if reference is None else _reference_params(reference, adata)
    target_sum = _resolve_target_sum(target_sum, ref_params)

    import scanpy as sc

    if copy and not copied:
        adata = adata.copy()
    # Memory: the input, its float32 log-normalized copy (-> .raw) and, at the end, the outputs. No other
    # full-size copy: counts are read from the input after the gene subset, statistics and scaling run by
    # chunks of cells (``_chunked``), bit-identical to the whole-matrix numpy operations.
    # Dask input: the same steps block by block of cells, lazily (``_dask``); only per-gene statistics are computed.
    # Backed input: X read by chunks of cells (``_backed``); the counts are never all in memory.
    lognorm_full, already_log = _lognorm_full(
        M, matrix_name(layer), already_log=already_log, given=given, uns_log=uns_log, target_sum=target_sum
    )
    work = AnnData(
        lognorm_full,
        obs=adata.obs[[]].copy(),
        var=adata.var[[]].copy(),
    )

    if reference is not None:
        genes = reference.var_names
        # the reference's genes, statistics and clip; this call's own input, normalization and output
        params = {
            **ref_params,
            "layer": layer or "X",
            "already_log": bool(already_log),
            "target_sum": float(target_sum),
        }
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
