"""Dask-backed input to ``sad.pp.preprocess``: the same steps, block by block of cells, lazily.

Normalization, log1p, densifying and scaling act on each cell alone, so they run as ``map_blocks`` over blocks
of cells (all genes in one chunk) and give the in-memory values bit for bit. The per-gene mean and std are
folds over the blocks in cell order (:mod:`._chunked`), so they are bit-identical too, however the cells are
chunked. The highly-variable-gene statistics are scanpy's own dask reductions (:func:`scanpy.pp.highly_variable_genes`
accepts dask arrays); their float64 sums are associated per block, so they may differ in the last bits from the
in-memory sums, which moves a gene across the selection threshold only at an exact tie.
Only per-gene vectors and small per-block summaries are ever computed; the outputs stay dask arrays
(``output='lognorm'``: ``X`` of float32 CSR blocks, whose statistics are folded from the blocks densified one at a time).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from ._chunked import (
    add_rows,
    add_squared_deviations,
    block_summary,
    dense_columns,
    finish_mean_std,
    fold_summaries,
    lognorm_block,
    scale_into,
    sparse_columns,
)

if TYPE_CHECKING:
    import dask.array as da


def _one_gene_chunk(M: da.Array) -> da.Array:
    """``M`` with all genes of a cell in one chunk (per-cell steps need whole rows)."""
    return M if len(M.chunks[1]) == 1 else M.rechunk({1: -1})


def summarize(M: da.Array) -> tuple[int, float, float, bool]:
    """``(non-finite values, min, max, all integers)`` of ``M`` (:func:`._chunked.fold_summaries`), one pass over the blocks.

    The whole matrix decides counts or log-normalized, as in memory: no block stands for the others.
    """
    import dask

    parts = [dask.delayed(block_summary)(b) for b in _one_gene_chunk(M).to_delayed().ravel()]
    return fold_summaries(np.concatenate(dask.compute(*parts)))


def lognorm(M: da.Array, *, already_log: bool, target_sum: float) -> da.Array:
    """Log-normalized ``M`` block by block (float32 for sparse blocks, the input's dtype for dense ones)."""
    M = _one_gene_chunk(M)
    meta = M._meta.astype(np.float32) if sp.issparse(M._meta) else M._meta
    return M.map_blocks(lognorm_block, already_log=already_log, target_sum=target_sum, dtype=meta.dtype, meta=meta)


def _csr_float32(block) -> sp.csr_matrix:
    return sp.csr_matrix(block, dtype=np.float32)


def counts(M: da.Array) -> da.Array:
    """The counts layer of dask input: sparse blocks as float32 CSR (as in memory), dense blocks unchanged."""
    if not sp.issparse(M._meta):
        return M
    return M.map_blocks(_csr_float32, dtype=np.float32, meta=sp.csr_matrix((0, 0), dtype=np.float32))


def _kept_columns(lognorm_full: da.Array, keep: np.ndarray | None, *, as_sparse: bool) -> da.Array:
    """The kept genes (all for ``None``) of each block, float32: CSR blocks or dense ones."""
    n_out = lognorm_full.shape[1] if keep is None else len(keep)
    meta = sp.csr_matrix((0, 0), dtype=np.float32) if as_sparse else np.empty((0, 0), dtype=np.float32)
    return lognorm_full.map_blocks(
        sparse_columns if as_sparse else dense_columns,
        keep,
        dtype=np.float32,
        chunks=(lognorm_full.chunks[0], (n_out,)),
        meta=meta,
    )


def dense(lognorm_full: da.Array, keep: np.ndarray | None) -> da.Array:
    """The dense float32 log-normalized layer: the kept genes (all for ``None``) of each block."""
    return _kept_columns(lognorm_full, keep, as_sparse=False)


def sparse(lognorm_full: da.Array, keep: np.ndarray | None) -> da.Array:
    """The ``output='lognorm'`` ``X``: the kept genes (all for ``None``) of each block as float32 CSR."""
    return _kept_columns(lognorm_full, keep, as_sparse=True)


def mean_std(X: da.Array) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and std of dask ``X`` (dense or CSR blocks), bit-identical to :func:`._chunked.mean_std` on ``X`` in memory.

    Each pass is one graph: the blocks are computed in parallel, their rows added to a float64 accumulator
    in cell order (a chain of small tasks), so no block-wise re-association changes a bit.
    """
    import dask

    blocks = list(X.to_delayed().ravel())
    n_obs, n_vars = X.shape
    total = np.zeros(n_vars)
    for b in blocks:
        total = dask.delayed(add_rows)(total, b)
    (total,) = dask.compute(total)
    squares = None
    if n_obs > 1:
        mean = total / n_obs
        squares = np.zeros(n_vars)
        for b in blocks:
            squares = dask.delayed(add_squared_deviations)(squares, b, mean)
        (squares,) = dask.compute(squares)
    return finish_mean_std(total, squares, n_obs)


def scale(X: da.Array, mean: np.ndarray, std: np.ndarray, max_value: float | None) -> da.Array:
    """``clip((X - mean) / std)`` block by block, as :func:`._chunked.scale_into`."""
    return X.map_blocks(scale_into, mean, std, max_value, dtype=np.float32, meta=np.empty((0, 0), np.float32))
