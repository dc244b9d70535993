"""Bounded-memory building blocks of ``sad.pp.preprocess``: per-gene statistics, densifying and scaling by row chunks.

Also the per-block steps shared by the dask and backed paths: log-normalizing a block of cells, the kept
genes as float32 CSR (``output='lognorm'``) and stacking blocks of rows without a second copy.

Each function walks the cells in chunks of about :data:`CHUNK_BYTES`, so its temporaries stay the size of one
chunk whatever the number of cells. The arithmetic is ordered exactly as numpy's whole-matrix reductions
(rows added one after another in float64, two passes for the variance), so the results are bit-identical to
``X.mean(0, dtype=np.float64)`` and ``X.std(0, ddof=1, dtype=np.float64)``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp

#: Bytes of one float64 chunk of cells: large enough that numpy's per-call overhead is negligible
#: (thousands of cells at 2,000 genes), small beside an N x genes matrix (8 KB per cell at 2,000 genes).
CHUNK_BYTES = 32 * 2**20

_F64_BYTES = np.dtype(np.float64).itemsize


def row_chunks(n_obs: int, n_cols: int, *, chunk_bytes: int = CHUNK_BYTES) -> Iterator[slice]:
    """Consecutive row slices covering ``range(n_obs)``, each about ``chunk_bytes`` as a float64 block."""
    step = max(1, chunk_bytes // (_F64_BYTES * max(n_cols, 1)))
    for start in range(0, n_obs, step):
        yield slice(start, min(start + step, n_obs))


def _dense(rows):
    """A chunk of rows as a dense array (a sparse chunk is densified: the statistics see the same values)."""
    return rows.toarray() if sp.issparse(rows) else rows


def add_rows(acc: np.ndarray, rows) -> np.ndarray:
    """``acc + rows[0] + rows[1] + ...`` in float64, added in row order as numpy's axis-0 sum adds them."""
    buf = np.empty((rows.shape[0] + 1, rows.shape[1]))
    buf[0] = acc
    buf[1:] = _dense(rows)
    return buf.sum(0)


def add_squared_deviations(acc: np.ndarray, rows, mean: np.ndarray) -> np.ndarray:
    """``acc + sum_i (rows[i] - mean) ** 2`` in float64, in row order (numpy's ``_var`` second pass)."""
    buf = np.empty((rows.shape[0] + 1, rows.shape[1]))
    buf[0] = acc
    dev = np.subtract(_dense(rows), mean, out=buf[1:])
    np.multiply(dev, dev, out=dev)
    return buf.sum(0)


def finish_mean_std(total: np.ndarray, squares: np.ndarray | None, n_obs: int) -> tuple[np.ndarray, np.ndarray]:
    """Float32 mean and std (ddof=1; 0 and a single cell give 1) from the sums of the two passes."""
    std = np.sqrt(squares / (n_obs - 1)) if n_obs > 1 else np.ones(total.shape[0])
    std[std == 0] = 1.0
    return (total / n_obs).astype(np.float32), std.astype(np.float32)


def mean_std(X, *, chunk_bytes: int = CHUNK_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and standard deviation (ddof=1, as :func:`scanpy.pp.scale`) as float32; 0 std becomes 1.

    Two passes over ``X`` (dense, or CSR densified one chunk at a time) by row chunks with float64
    accumulators per gene (no N x genes temporary); bit-identical to ``X.mean(0, dtype=np.float64)`` and
    ``X.std(0, ddof=1, dtype=np.float64)`` of the dense matrix.
    """
    n_obs, n_vars = X.shape
    chunks = list(row_chunks(n_obs, n_vars, chunk_bytes=chunk_bytes))
    total = np.zeros(n_vars)
    for sl in chunks:
        total = add_rows(total, X[sl])
    squares = None
    if n_obs > 1:
        mean = total / n_obs
        squares = np.zeros(n_vars)
        for sl in chunks:
            squares = add_squared_deviations(squares, X[sl], mean)
    return finish_mean_std(total, squares, n_obs)


def dense_columns(M, col: np.ndarray | None, *, chunk_bytes: int = CHUNK_BYTES) -> np.ndarray:
    """``M[:, col]`` (all columns for ``None``) as a new dense float32 array, filled by row chunks.

    ``M`` is a CSR matrix or a dense array; only one chunk of ``M``'s rows is ever copied at a time.
    """
    n_obs = M.shape[0]
    n_out = M.shape[1] if col is None else len(col)
    out = np.zeros((n_obs, n_out), dtype=np.float32)  # zero pages come lazily from the OS: no extra pass
    for sl in row_chunks(n_obs, n_out, chunk_bytes=chunk_bytes):
        block = M[sl] if col is None else M[sl][:, col]
        if sp.issparse(block):
            block.toarray(out=out[sl])  # csr_todense adds into the zeroed rows
        else:
            out[sl] = block
    return out


def scale_into(
    X: np.ndarray, mean: np.ndarray, std: np.ndarray, max_value: float | None, *, chunk_bytes: int = CHUNK_BYTES
) -> np.ndarray:
    """``clip((X - mean) / std, -max_value, max_value)`` as a new float32 array, computed by row chunks.

    The same float32 operations as on the whole matrix, so bit-identical to it, without its temporaries.
    """
    out = np.empty(X.shape, dtype=np.float32)
    for sl in row_chunks(X.shape[0], X.shape[1], chunk_bytes=chunk_bytes):
        block = out[sl]
        np.subtract(X[sl], mean, out=block, dtype=np.float32)
        np.divide(block, std, out=block)
        if max_value is not None:
            np.clip(block, -max_value, max_value, out=block)
    return out


def lognorm_block(block, *, already_log: bool, target_sum: float):
    """One block of cells normalized to ``target_sum`` and log1p'd with scanpy (unchanged when ``already_log``).

    Both steps act on each cell alone, so a block gives the rows of the whole-matrix result bit for bit.
    Sparse blocks become float32 (as the in-memory path's ``astype``), dense ones keep their dtype.
    """
    import scanpy as sc
    from anndata import AnnData

    work = AnnData(block.astype(np.float32) if sp.issparse(block) else np.array(block, copy=True))
    if not already_log:
        sc.pp.normalize_total(work, target_sum=target_sum)
        sc.pp.log1p(work)
    return work.X


#: Stored values per step of :func:`block_summary`: its temporaries stay a few MB, whatever the block.
SUMMARY_STEP = 2**20


def _value_steps(data: np.ndarray) -> Iterator[np.ndarray]:
    """``data`` (1-D stored values, or 2-D dense rows) in pieces of about :data:`SUMMARY_STEP` values, never copied whole."""
    if data.ndim != 2:  # 1-D: CSR .data (or a 0-D scalar)
        flat = data.reshape(-1)
        for start in range(0, flat.size, SUMMARY_STEP):
            yield flat[start : start + SUMMARY_STEP]
        return
    rows = max(1, SUMMARY_STEP // max(data.shape[1], 1))
    for start in range(0, data.shape[0], rows):
        yield data[start : start + rows]


def block_summary(block) -> np.ndarray:
    """``[[non-finite values, min, max, all integers]]`` of one block's stored values (one row, float64).

    Min and max are of the finite values (``inf`` / ``-inf`` when none); ``all integers`` is 1.0 when every
    finite value is a whole number (counts), else 0.0. Read in steps of :data:`SUMMARY_STEP` values, so the
    temporaries stay small; once a non-integer is met, the integer test is skipped for the rest.
    """
    data = block.data if sp.issparse(block) else np.asarray(block)
    exact = data.dtype.kind not in "fc"  # integer or boolean storage: finite whole numbers
    n_bad, low, high, integral = 0, np.inf, -np.inf, True
    for piece in _value_steps(data):
        if not exact:
            finite = np.isfinite(piece)
            if not finite.all():
                n_bad += int(piece.size - np.count_nonzero(finite))
                piece = piece[finite]  # noqa: PLW2901  the finite values only, for min, max and the integer test
            integral = integral and bool(np.all(piece == np.round(piece)))
        if piece.size:
            low, high = min(low, float(piece.min())), max(high, float(piece.max()))
    return np.array([[float(n_bad), low, high, float(integral)]])


def fold_summaries(table: np.ndarray) -> tuple[int, float, float, bool]:
    """The whole matrix's ``(n_bad, low, high, integral)`` from the rows of :func:`block_summary`."""
    table = np.asarray(table, dtype=np.float64).reshape(-1, 4)
    if not len(table):
        return 0, np.inf, -np.inf, True
    return int(table[:, 0].sum()), float(table[:, 1].min()), float(table[:, 2].max()), bool(table[:, 3].all())


def sparse_columns(M, col: np.ndarray | None, *, chunk_bytes: int = CHUNK_BYTES) -> sp.csr_matrix:
    """``M[:, col]`` (all columns for ``None``) as float32 CSR with sorted indices: the ``output='lognorm'`` ``X``.

    A CSR ``M`` is indexed at once (scipy's column indexing allocates only the result); a dense ``M`` is
    converted by row chunks, so no dense copy of the kept columns is made.
    """
    if sp.issparse(M):
        out = sp.csr_matrix(M if col is None else M[:, col], dtype=np.float32)
    else:
        n_out = M.shape[1] if col is None else len(col)
        blocks = [
            sp.csr_matrix(dense_columns(M[sl], col, chunk_bytes=chunk_bytes))
            for sl in row_chunks(M.shape[0], n_out, chunk_bytes=chunk_bytes)
        ]
        out = stack_rows(blocks)
    out.sort_indices()
    return out


def stack_rows(blocks: list):
    """Blocks of consecutive rows (all CSR, or all dense) as one matrix; empties ``blocks`` as it copies them.

    Each block is released as soon as it is copied, so the peak is the result plus one block, where
    :func:`scipy.sparse.vstack` holds the blocks and the result together (twice the result).
    """
    n_obs = sum(b.shape[0] for b in blocks)
    n_cols = blocks[0].shape[1]
    if not sp.issparse(blocks[0]):
        out = np.empty((n_obs, n_cols), dtype=blocks[0].dtype)
        row = 0
        while blocks:
            b = blocks.pop(0)
            out[row : row + b.shape[0]] = b
            row += b.shape[0]
        return out
    nnz = sum(int(b.indptr[-1]) for b in blocks)
    idx = np.int32 if max(nnz, n_cols) <= np.iinfo(np.int32).max else np.int64
    data = np.empty(nnz, dtype=blocks[0].dtype)
    indices = np.empty(nnz, dtype=idx)
    indptr = np.empty(n_obs + 1, dtype=idx)
    indptr[0] = row = pos = 0
    while blocks:
        b = blocks.pop(0)
        n, k = b.shape[0], int(b.indptr[-1])
        data[pos : pos + k] = b.data[:k]
        indices[pos : pos + k] = b.indices[:k]
        indptr[row + 1 : row + 1 + n] = b.indptr[1:].astype(idx) + idx(pos)
        row, pos = row + n, pos + k
    return sp.csr_matrix((data, indices, indptr), shape=(n_obs, n_cols))
