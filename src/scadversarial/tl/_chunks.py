"""Reading cells in chunks: one driver for in-memory, backed (``.h5ad``) and dask matrices.

Every ``sad.tl`` function that reads whole matrices of a big, backed or dask AnnData reads them
through :func:`iter_chunks` (a chunk at a time, in this process) or :func:`map_chunks` (a function per
chunk; for dask input one :func:`dask.delayed` task per block, computed on the active scheduler, a
``dask.distributed`` cluster when a ``Client`` is active). A chunk is an in-memory AnnData of
consecutive cells holding ``X`` and the named layers (dask blocks computed, backed rows read from the
file, in-memory matrices sliced) with the parent's ``.var`` and ``.uns`` (by reference, or pickled to a
dask worker) and its rows of ``.obs``; nothing beyond the chunk is copied.

Chunk boundaries are multiples of the forward batch size (:func:`chunk_cells`; dask blocks that are not
are re-chunked), so every forward batch holds the same cells as on the whole matrix and per-cell results
equal the whole-matrix path bit for bit.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _keys
from .._docs import doc_params
from .._settings import settings
from .._validate import is_backed, is_dask

#: cells per chunk: 16 forward batches of the default ``sad.settings.batch_size`` (1024). A dense chunk on
#: 2,000 genes is 16,384 x 2,000 float32 = 131 MB (a few such arrays per chunk stay far below the 8 GiB
#: budget at any number of cells), while the per-chunk overhead (an AnnData, a dask task) stays negligible
#: next to 16 forward batches.
CHUNK_CELLS = 16 * 1024
#: ``.uns['sad']['preprocess']['params']['output']`` value saying ``X`` holds log-normalized values
#: (``sad.pp.preprocess(output='lognorm')``), not the classifier's scaled input
OUTPUT_LOGNORM = "lognorm"

R = TypeVar("R")
Rows = slice | np.ndarray | Sequence[int] | range | None


def x_is_lognorm(adata: AnnData) -> bool:
    """Whether ``X`` holds log-normalized values: ``sad.pp.preprocess(output='lognorm')``'s marker in ``.uns``."""
    rec = adata.uns.get(_keys.UNS, {}).get(_keys.STEP_PREPROCESS, {})
    params = rec.get("params", {}) if isinstance(rec, dict) else {}
    return str(params.get("output", "")) == OUTPUT_LOGNORM


def chunk_cells(batch_size: int | None = None) -> int:
    """Cells per chunk: :data:`CHUNK_CELLS` rounded down to a multiple of the forward batch size (at least one batch)."""
    bs = int(batch_size or settings.batch_size)
    if bs < 1:
        msg = f"batch_size must be a positive number of cells, got {bs}."
        raise ValueError(msg)
    return max(bs, CHUNK_CELLS // bs * bs)


def _matrices(adata: AnnData, layers: Sequence[str | None]) -> dict[str | None, Any]:
    """``X`` and the named layers (``None`` / ``'X'`` name ``X``), as stored (lazy, backed or in memory)."""
    mats: dict[str | None, Any] = {None: adata.X}
    for lay in layers:
        if lay in (None, "X"):
            continue
        if lay not in adata.layers:
            msg = (
                f"Layer {lay!r} not found in adata.layers (available: {list(adata.layers)}). "
                "Pass an existing layer, or layer=None for adata.X; attack layers are written by `sad.tl.attack`."
            )
            raise KeyError(msg)
        mats[lay] = adata.layers[lay]
    if mats[None] is None:
        msg = "adata.X is None. Set adata.X or pass layer=..."
        raise ValueError(msg)
    return mats


def is_chunked(adata: AnnData, *, layers: Sequence[str | None] = ()) -> bool:
    """Whether ``adata`` should be read in chunks rather than densified whole.

    True when ``X`` (or one of ``layers``) is backed or a dask array, when ``X`` is sparse
    log-normalized (``sad.pp.preprocess(output='lognorm')``), or when ``adata`` has more than
    :data:`CHUNK_CELLS` cells (densifying all of them at once would be large).

    Examples
    --------
    >>> import scadversarial as sad
    >>> from scadversarial.tl._chunks import is_chunked
    >>> is_chunked(sad.datasets.pbmc68k_reduced())
    False

    """
    if adata.isbacked or x_is_lognorm(adata) or adata.n_obs > CHUNK_CELLS:
        return True
    return any(is_dask(M) or is_backed(M) for M in _matrices(adata, layers).values())


def _positions(n_obs: int, rows: Rows) -> np.ndarray | None:
    """The selected cells' positions (``None``: all cells), checked to lie in ``[0, n_obs)``."""
    if rows is None:
        return None
    if isinstance(rows, slice):
        return np.arange(n_obs)[rows]
    idx = np.asarray(rows)
    if idx.dtype == bool:
        if idx.shape != (n_obs,):
            msg = f"A boolean rows mask must have one entry per cell ({n_obs}), got shape {idx.shape}."
            raise ValueError(msg)
        return np.flatnonzero(idx)
    if idx.size and (idx.dtype.kind not in "iu" or idx.min() < 0 or idx.max() >= n_obs):
        msg = f"rows must be cell positions in [0, {n_obs}) (integers), a boolean mask or a slice."
        raise ValueError(msg)
    return idx.astype(np.int64, copy=False).ravel()


def _take(M, sl: slice, idx: np.ndarray | None):
    """Rows ``sl`` of ``M`` (of the selected rows ``idx`` when given), in memory."""
    if idx is None:
        part = M[sl]
    else:
        sel = idx[sl]
        if sel.size and np.all(np.diff(sel) == 1):  # consecutive cells: one contiguous read
            part = M[int(sel[0]) : int(sel[-1]) + 1]
        elif is_backed(M):  # files are read in increasing order
            order = np.argsort(sel, kind="stable")
            part = M[sel[order]][np.argsort(order, kind="stable")]
        else:
            part = M[sel]
    if is_dask(part):
        part = part.compute()
    if hasattr(part, "to_memory"):
        part = part.to_memory()
    return part


def _chunk_adata(mats: dict[str | None, Any], obs: pd.DataFrame, var: pd.DataFrame, uns) -> AnnData:
    """An AnnData of one chunk: its ``X`` and layers, its rows of ``.obs``, the parent's ``.var`` and ``.uns``."""
    chunk = AnnData(X=mats[None], obs=obs, var=var, layers={k: v for k, v in mats.items() if k is not None})
    chunk.uns = uns  # by reference: readers see the parent's records (``.uns`` setter keeps the object)
    return chunk


def _bounds(n: int, size: int) -> list[slice]:
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


_DOC_ADATA = """\
adata
    The AnnData (in memory, backed, or with dask arrays in ``X`` / ``.layers``)."""
_DOC_CELLS = """\
layers
    Layers to read besides ``X``.
rows
    The cells to read (a slice, positions or a boolean mask; default: all), in that order.
batch_size
    Forward batch size the chunk boundaries are multiples of (default ``sad.settings.batch_size``)."""


def _obs_rows(adata: AnnData, sl: slice, idx: np.ndarray | None) -> pd.DataFrame:
    """``.obs`` of the chunk ``sl`` of the selected cells ``idx`` (``None``: all cells)."""
    return adata.obs.iloc[sl] if idx is None else adata.obs.iloc[idx[sl]]


@doc_params(doc_adata=_DOC_ADATA, doc_cells=_DOC_CELLS)
def iter_chunks(
    adata: AnnData, *, layers: Sequence[str | None] = (), rows: Rows = None, batch_size: int | None = None
) -> Iterator[tuple[slice, AnnData]]:
    """Consecutive chunks of cells as in-memory AnnData objects, read one at a time.

    Parameters
    ----------
    {doc_adata}
    {doc_cells}

    Yields
    ------
    ``(sl, chunk)``: ``sl`` indexes the selected cells (with ``rows=None`` the cells' own positions), and
    ``chunk`` holds ``X`` and ``layers`` of those cells in memory, their ``.obs`` rows, and ``adata``'s
    ``.var`` and ``.uns`` by reference.

    Examples
    --------
    >>> import scadversarial as sad
    >>> from scadversarial.tl._chunks import iter_chunks
    >>> adata = sad.datasets.pbmc68k_reduced()
    >>> [(sl, chunk.n_obs) for sl, chunk in iter_chunks(adata, rows=range(0, 700, 2))]
    [(slice(0, 350, None), 350)]

    """
    mats = _matrices(adata, layers)
    idx = _positions(adata.n_obs, rows)
    n = adata.n_obs if idx is None else len(idx)
    for sl in _bounds(n, chunk_cells(batch_size)):
        yield (
            sl,
            _chunk_adata(
                {k: _take(M, sl, idx) for k, M in mats.items()}, _obs_rows(adata, sl, idx), adata.var, adata.uns
            ),
        )


def _run_chunk(shared: tuple, mats: dict, obs: pd.DataFrame):
    """One task: a copy of ``fn`` on the chunk made of computed blocks (on a dask worker, or here).

    ``shared`` is ``(fn, var, uns)``, one node of the graph that every task reads (sent once to a worker,
    not once per task). Tasks may run at once in threads of one process (dask's default scheduler, a
    worker with several threads) and share that one ``fn``: each task calls its own deep copy, so no
    mutable state (a model's workspace buffers, its train/eval mode) is shared between them.
    """
    fn, var, uns = shared
    mats = {k: v.to_memory() if hasattr(v, "to_memory") else v for k, v in mats.items()}
    return copy.deepcopy(fn)(_chunk_adata(mats, obs, var, uns))


def _shared(obj):
    """``obj`` as one input of every task: scattered to the cluster when a ``distributed.Client`` computes them.

    Left in the graph, it would be sent with the graph (a model of a few MB makes dask warn of a large
    graph); scattered, it goes to the workers once. Without a client it is one node of the graph.
    """
    import dask
    from dask.base import get_scheduler

    client = getattr(get_scheduler(), "__self__", None)  # the active scheduler is a Client's ``get``
    if client is not None and hasattr(client, "scatter"):
        return client.scatter(obj, hash=False)
    return dask.delayed(obj, traverse=False)


def _dask_slices(mats: dict, n: int, size: int, bs: int) -> list[slice]:
    """Row slices of the dask blocks when every dask matrix shares them and they align to ``bs``, else of ``size``."""
    starts = {tuple(np.cumsum((0, *M.chunks[0]))) for M in mats.values() if is_dask(M)}
    if len(starts) == 1:
        (cuts,) = starts
        inner = cuts[1:-1]
        if all(c % bs == 0 for c in inner):
            return [slice(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:], strict=True) if b > a]
    return _bounds(n, size)


@doc_params(doc_adata=_DOC_ADATA, doc_cells=_DOC_CELLS)
def map_chunks(
    adata: AnnData,
    fn: Callable[[AnnData], R],
    *,
    layers: Sequence[str | None] = (),
    rows: Rows = None,
    batch_size: int | None = None,
) -> list[R]:
    """``fn(chunk)`` for every chunk of cells (:func:`iter_chunks`), results in chunk order.

    For dask input each chunk is one :func:`dask.delayed` task computed on the active scheduler (a
    ``dask.distributed`` cluster when a ``Client`` is active): the chunks are the dask blocks of cells
    when every dask matrix has the same ones and their boundaries are multiples of ``batch_size``,
    otherwise :func:`chunk_cells` consecutive cells (the blocks are re-chunked). ``fn`` must then be
    picklable (a closure is fine; ``sad.settings`` of the workers are their own, so pass ``batch_size``
    and ``device`` explicitly); each task calls its own deep copy of it (tasks may run at once in
    threads), and its results are sent back to this process. Otherwise ``fn`` runs here, one chunk in
    memory at a time.

    Parameters
    ----------
    {doc_adata}
    fn
        Called on each chunk (an in-memory AnnData, see :func:`iter_chunks`); must not write to it.
    {doc_cells}

    Returns
    -------
    ``fn``'s results, one per chunk, in the order of the cells.

    Examples
    --------
    >>> import scadversarial as sad
    >>> from scadversarial.tl._chunks import map_chunks
    >>> map_chunks(sad.datasets.pbmc68k_reduced(), lambda chunk: chunk.n_obs)
    [700]

    """
    mats = _matrices(adata, layers)
    if not any(is_dask(M) for M in mats.values()):
        return [fn(chunk) for _, chunk in iter_chunks(adata, layers=layers, rows=rows, batch_size=batch_size)]
    import dask

    idx = _positions(adata.n_obs, rows)
    if idx is not None:  # dask matrices take the rows lazily; the others are read chunk by chunk below
        mats = {k: M[idx] if is_dask(M) else M for k, M in mats.items()}
    n = adata.n_obs if idx is None else len(idx)
    bs = int(batch_size or settings.batch_size)
    slices = _dask_slices(mats, n, chunk_cells(bs), bs)
    shared = _shared((fn, adata.var, adata.uns))
    tasks = []
    for sl in slices:
        parts = {}
        for k, M in mats.items():
            if is_dask(M):
                block = M[sl]
                if block.ndim == 2 and block.numblocks[1] != 1:
                    block = block.rechunk({1: -1})
                parts[k] = block.rechunk({0: -1}) if block.numblocks[0] != 1 else block
            else:
                parts[k] = _take(M, sl, idx)
        tasks.append(dask.delayed(_run_chunk)(shared, parts, _obs_rows(adata, sl, idx)))
    return list(dask.compute(*tasks))


__all__ = ["CHUNK_CELLS", "chunk_cells", "is_chunked", "iter_chunks", "map_chunks", "x_is_lognorm"]
