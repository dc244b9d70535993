"""What every evaluation engine shares: the target cells and their modified values, and the engine interface.

A *candidate* is a list of ``(genes, modification index)`` pairs (each gene in one pair at most). A *job*
asks for the per-cell types of some rows of one candidate: ``(pairs, rows)``. An :class:`Engine` answers
jobs with the per-class counts of the cells it could type exactly, and the rows it leaves to the
classifier (cells too close to call for the linear updates; none for the engines that call it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = ["CellValues", "Engine", "Job", "Pairs", "RowTypes", "as_pairs"]

Pairs = list[tuple[np.ndarray, int]]
"""One candidate: ``[(genes, modification index), ...]``."""

Job = tuple[Pairs, np.ndarray]
"""Some rows of one candidate: ``(pairs, rows)``."""


def as_pairs(cand) -> Pairs:
    """A candidate as ``(genes, modification)`` pairs: a gene array is the first modification's."""
    if isinstance(cand, list):
        return [(np.asarray(g, dtype=np.intp), m) for g, m in cand]
    return [(np.asarray(cand, dtype=np.intp), 0)]


@dataclass(frozen=True)
class RowTypes:
    """An engine's answer to a list of jobs.

    Attributes
    ----------
    counts
        ``(n_jobs, n_classes)`` per-class counts of the rows typed exactly.
    left
        Per job, the rows not typed: the classifier must classify them when the answer depends on them.

    """

    counts: np.ndarray
    left: list[np.ndarray]


class Engine(Protocol):
    """Types rows of candidate modifications: the interface of the reference, stacked and linear engines."""

    def type_rows(self, jobs: Sequence[Job]) -> RowTypes:
        """Per-class counts of the rows each job asks for that the engine types exactly, and the rows left."""
        ...


@dataclass(frozen=True)
class CellValues:
    """The target cells and the values their genes take under each modification (read by every engine).

    Attributes
    ----------
    base
        ``(n_cells, n_genes)`` unmodified expression, C-contiguous.
    values
        One ``(n_cells, n_genes)`` matrix of modified values per modification, in ``base``'s dtype.
    equal
        Per modification, ``(n_cells, n_genes)``: whether a cell's value already equals its modified value.
    equal_any
        Per modification, ``(n_genes,)``: whether some cell keeps its value (else every row changes).
    one_row
        Per modification, its single row when every cell takes the same value per gene (percentiles,
        aberrant, fixed), else None.
    all_rows
        ``arange(n_cells)``, read-only (shared by every candidate that changes every row).

    """

    base: np.ndarray
    values: tuple[np.ndarray, ...]
    equal: tuple[np.ndarray, ...]
    equal_any: tuple[np.ndarray, ...]
    one_row: tuple[np.ndarray | None, ...]
    all_rows: np.ndarray

    @classmethod
    def build(cls, base: np.ndarray, V: np.ndarray | Sequence[np.ndarray]) -> CellValues:
        """Check the modified values ``V`` (one matrix, or one per modification) against ``base`` and index them."""
        Vs = [V] if isinstance(V, np.ndarray) and V.ndim == 2 else list(V)
        values = tuple(np.ascontiguousarray(v, dtype=base.dtype) for v in Vs)
        if base.shape != values[0].shape:
            msg = f"Modified values have shape {values[0].shape}, expected {base.shape}."
            raise ValueError(msg)
        equal = tuple(base == v for v in values)
        all_rows = np.arange(base.shape[0])
        all_rows.flags.writeable = False
        return cls(
            base=base,
            values=values,
            equal=equal,
            equal_any=tuple(e.any(axis=0) for e in equal),
            one_row=tuple(v[0] if (v == v[0]).all() else None for v in values),
            all_rows=all_rows,
        )

    @property
    def n_cells(self) -> int:
        """Number of target cells."""
        return self.base.shape[0]

    @property
    def n_genes(self) -> int:
        """Number of genes."""
        return self.base.shape[1]

    def unchanged(self, genes: np.ndarray, m: int = 0) -> np.ndarray | None:
        """Per cell, whether modifying ``genes`` with ``m`` leaves its row as it is (None: every row changes)."""
        genes = np.asarray(genes, dtype=np.intp)
        if not len(genes):
            return np.ones(self.n_cells, dtype=bool)
        if not self.equal_any[m][genes].all():
            return None
        return self.equal[m][:, genes].all(axis=1)

    def changed_rows(self, pairs: Pairs) -> np.ndarray:
        """Target cells whose row the candidate changes (the others keep their original types)."""
        keep = None
        for genes, m in pairs:
            if len(genes) == 0:
                continue
            if not self.equal_any[m][genes].all():  # some gene changes every cell
                return self.all_rows
            e = self.equal[m][:, genes].all(axis=1)
            keep = e if keep is None else keep & e
        return self.all_rows if keep is None else np.flatnonzero(~keep)

    def changed_rows_many(self, pairs_list: Sequence[Pairs]) -> list[np.ndarray]:
        """:meth:`changed_rows` of many candidates; those with one modification and equal gene counts at once."""
        out: list = [None] * len(pairs_list)
        groups: dict[tuple[int, int], list[int]] = {}
        for j, pairs in enumerate(pairs_list):
            if len(pairs) == 1 and len(pairs[0][0]):
                groups.setdefault((pairs[0][1], len(pairs[0][0])), []).append(j)
            else:
                out[j] = self.changed_rows(pairs)
        for (m, _), js in groups.items():
            genes = np.stack([pairs_list[j][0][0] for j in js])  # candidates x genes
            partial = self.equal_any[m][genes].all(axis=1)  # else some gene changes every cell
            for j in np.asarray(js)[~partial]:
                out[j] = self.all_rows
            if partial.any():
                keep = self.equal[m][:, genes[partial]].all(axis=2)  # cells x candidates: all values unchanged
                for i, j in enumerate(np.asarray(js)[partial]):
                    out[j] = np.flatnonzero(~keep[:, i])
        return out

    def modified(self, pairs: Pairs) -> np.ndarray:
        """A copy of the target cells with the candidate's genes modified."""
        X = self.base.copy()
        for genes, m in pairs:
            X[:, genes] = self.values[m][:, genes]
        return X
