"""The stacked engine: the changed rows of many candidates classified together, in few large calls."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..._docs import doc_engine_params, doc_params
from .._protocol import ClassifierAdapter
from ._counts import stacked_counts
from ._engine import CellValues, Job, Pairs, RowTypes

__all__ = ["StackedEngine"]


@doc_params(doc_engine_params=doc_engine_params)
class StackedEngine:
    """Classifies the asked rows of many candidates in calls of at most ``batch_bytes`` bytes.

    Each call holds whole blocks of the classifier's forward size (``block_rows``), so a torch module
    never pads; the padding rows are not counted as cells.

    Parameters
    ----------
    {doc_engine_params}
    batch_bytes
        Upper bound on the size of one call (rows x genes x itemsize).

    """

    def __init__(self, proba_fn, cells: CellValues, n_classes: int, batch_bytes: int) -> None:
        self.proba_fn = proba_fn
        self.cells = cells
        self.n_classes = n_classes
        self.batch_bytes = batch_bytes
        self._adapter = isinstance(proba_fn, ClassifierAdapter)
        self._buf: np.ndarray | None = None  # the stacked rows, reused by every call

    def _fill(self, blk: np.ndarray, pairs: Pairs, rows: np.ndarray) -> None:
        """Write the candidate ``pairs``'s rows ``rows`` into ``blk``."""
        cells = self.cells
        r = len(rows)
        contiguous = r > 0 and rows[-1] - rows[0] + 1 == r
        sel = slice(int(rows[0]), int(rows[0]) + r) if contiguous else rows

        def take(M, cols):
            return M[sel, cols] if contiguous else M[np.ix_(rows, cols)]

        def take_v(m, cols):
            row1 = cells.one_row[m]
            return row1[cols] if row1 is not None else take(cells.values[m], cols)

        if len(pairs) == 1 and 2 * len(pairs[0][0]) > cells.n_genes:  # most genes modified: start from V
            genes, m = pairs[0]
            keep = np.ones(cells.n_genes, dtype=bool)
            keep[genes] = False
            keep = np.flatnonzero(keep)
            blk[...] = cells.one_row[m] if cells.one_row[m] is not None else cells.values[m][sel]
            blk[:, keep] = take(cells.base, keep)
            return
        blk[...] = cells.base[sel]
        for genes, m in pairs:
            blk[:, genes] = take_v(m, genes)

    def types(self, jobs: Sequence[Job]) -> list[np.ndarray]:
        """Per-cell types of the given rows of each candidate, in stacked calls."""
        g = self.cells.n_genes
        base = self.cells.base
        budget = max(self.batch_bytes // (g * base.itemsize), 1)  # rows per call
        out: list[np.ndarray] = [None] * len(jobs)
        j = 0
        while j < len(jobs):
            # a chunk of whole candidates within the row budget (at least one candidate)
            k, total = j, 0
            while k < len(jobs) and (k == j or total + len(jobs[k][1]) <= budget):
                total += len(jobs[k][1])
                k += 1
            if total == 0:
                for i in range(j, k):
                    out[i] = np.empty(0, dtype=np.int64)
                j = k
                continue
            block = max(int(getattr(self.proba_fn, "block_rows", 1) or 1), 1)
            padded = -(-total // block) * block  # whole blocks: the classifier need not pad
            if self._buf is None or self._buf.shape[0] < padded:
                self._buf = np.zeros((max(padded, budget + block), g), dtype=base.dtype)
            buf = self._buf[:total]
            pos = 0
            for i in range(j, k):  # one step per candidate; its cells and genes are vectorized
                pairs, rows = jobs[i]
                r = len(rows)
                self._fill(buf[pos : pos + r], pairs, rows)
                pos += r
            # (padding rows are not cells: an adapter leaves them out of its count of tied rows)
            P = self.proba_fn(self._buf[:padded], n_valid=total) if self._adapter else self.proba_fn(self._buf[:padded])
            types = np.asarray(P).argmax(axis=1)[:total]
            pos = 0
            for i in range(j, k):
                r = len(jobs[i][1])
                out[i] = types[pos : pos + r]
                pos += r
            j = k
        return out

    def type_rows(self, jobs: Sequence[Job]) -> RowTypes:
        """Counts of the asked rows' types, in stacked calls; nothing is left."""
        return RowTypes(stacked_counts(self.types(jobs), self.n_classes), [np.empty(0, dtype=np.intp) for _ in jobs])
