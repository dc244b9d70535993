"""The reference engine: one classifier call on the whole modified cluster per candidate."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..._docs import doc_engine_params, doc_params
from ._engine import CellValues, Job, Pairs, RowTypes

__all__ = ["ReferenceEngine"]


@doc_params(doc_engine_params=doc_engine_params)
class ReferenceEngine:
    """Classifies each candidate's whole modified cluster in its own call (what ``method='plain'`` does).

    Parameters
    ----------
    {doc_engine_params}

    """

    def __init__(self, proba_fn, cells: CellValues, n_classes: int) -> None:
        self.proba_fn = proba_fn
        self.cells = cells
        self.n_classes = n_classes

    def types(self, pairs: Pairs) -> np.ndarray:
        """Per-cell types of every target cell with the candidate's genes modified (one classifier call)."""
        return np.asarray(self.proba_fn(self.cells.modified(pairs))).argmax(axis=1)

    def type_rows(self, jobs: Sequence[Job]) -> RowTypes:
        """Counts of the asked rows' types, one call per job; nothing is left."""
        counts = np.zeros((len(jobs), self.n_classes), dtype=np.int64)
        for j, (pairs, rows) in enumerate(jobs):
            counts[j] = np.bincount(self.types(pairs)[rows], minlength=self.n_classes)
        return RowTypes(counts, [np.empty(0, dtype=np.intp) for _ in jobs])
