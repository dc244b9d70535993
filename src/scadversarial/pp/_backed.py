"""Backed input to ``sad.pp.preprocess``: ``X`` read from the ``.h5ad`` by chunks of cells, never whole.

A backed AnnData (``anndata.read_h5ad(path, backed='r')``) keeps ``X`` in the file. Its rows are read one
chunk at a time (:func:`._chunked.row_chunks`), each chunk normalized and log1p'd alone (per-cell steps, so
the rows of the whole-matrix result bit for bit) and the chunks stacked without a second copy
(:func:`._chunked.stack_rows`). The counts of the kept genes are read in a second pass, once the genes are
known. The counts themselves are never all in memory.
"""

from __future__ import annotations

import copy as _copy
from collections.abc import Iterator
from math import ceil

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from . import _chunked
from ._chunked import block_summary, fold_summaries, lognorm_block, row_chunks, stack_rows


def check_readable(X) -> None:
    """Raise for a backed CSC matrix: each chunk of cells would read the whole file."""
    if getattr(X, "format", "csr") == "csc":
        msg = (
            "adata.X is a backed CSC matrix: reading it by cells reads the whole file for each chunk. Load it "
            "(`adata = adata.to_memory()`) or write it as CSR (`adata.X = adata.X.tocsr()` before writing)."
        )
        raise ValueError(msg)


def read_chunks(X) -> Iterator[np.ndarray | sp.csr_matrix]:
    """Consecutive blocks of rows of backed ``X``, in memory, each about :data:`._chunked.CHUNK_BYTES`."""
    n_obs, n_vars = X.shape
    width = n_vars
    if hasattr(X, "to_memory"):  # anndata's backed sparse dataset: a CSR row costs ~8 bytes per stored value
        width = max(1, ceil(X.group["data"].shape[0] / max(n_obs, 1)))
    for sl in row_chunks(n_obs, width, chunk_bytes=_chunked.CHUNK_BYTES):  # read when called: tests shrink it
        yield X[sl]


def looks_like_counts(X, sample_size: int) -> bool:
    """Whether the first ``sample_size`` stored values are integers, reading only the rows they are in.

    The same sample as the in-memory check: the first values of CSR ``.data``; for a dense matrix, the first
    ``sample_size`` rows (what ``data[:sample_size]`` takes of a 2-D array).
    """
    left = sample_size
    for block in read_chunks(X):
        values = block.data[:left] if sp.issparse(block) else np.asarray(block)[:left]
        left -= values.shape[0]
        if not np.all(values == np.round(values)):
            return False
        if left <= 0:
            break
    return True


def lognorm(X, *, already_log: bool, target_sum: float):
    """The log-normalized matrix of backed ``X`` in memory, and the input's summary ``(n_bad, low, high, integral)``.

    The summary is :func:`._chunked.fold_summaries`' of the whole matrix, what the input checks read. Once a
    chunk fails them (non-finite or negative values), the rest is only summarized, so that the error reports
    the whole matrix; the caller raises before using the (then empty) result.
    """
    blocks, rows = [], []
    failed = False
    for block in read_chunks(X):
        row = block_summary(block)
        rows.append(row)
        failed = failed or bool(row[0, 0]) or row[0, 1] < 0
        if failed:
            blocks.clear()
            continue
        blocks.append(lognorm_block(block, already_log=already_log, target_sum=target_sum))
    return (stack_rows(blocks) if blocks else None), fold_summaries(np.concatenate(rows))


def kept_counts(X, keep: np.ndarray | None):
    """The counts of the kept genes (all for ``None``), read by chunks: float32 CSR, or dense in the file's dtype."""
    blocks = []
    for block in read_chunks(X):
        part = block if keep is None else block[:, keep]
        blocks.append(sp.csr_matrix(part, dtype=np.float32) if sp.issparse(part) else np.asarray(part))
    return stack_rows(blocks)


def in_memory_shell(adata: AnnData, X=None) -> AnnData:
    """An in-memory copy of backed ``adata`` with ``X`` (``None``: the file's ``X`` is read by chunks); no ``.raw``."""
    return AnnData(
        X=X,
        obs=adata.obs.copy(),
        var=adata.var.copy(),
        uns=_copy.deepcopy(dict(adata.uns)),
        obsm={k: v.copy() for k, v in adata.obsm.items()},
        varm={k: v.copy() for k, v in adata.varm.items()},
        obsp={k: v.copy() for k, v in adata.obsp.items()},
        varp={k: v.copy() for k, v in adata.varp.items()},
        layers={k: v.copy() for k, v in adata.layers.items()},
    )
