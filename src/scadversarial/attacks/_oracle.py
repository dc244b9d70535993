"""Classify modified copies of one cluster's cells, one at a time (reference) or stacked (fast).

Every black-box search asks the same question many times: *if these genes of the target cells take
their modified values, what is the cluster's call?* :class:`ClusterOracle` answers it. The cluster's
call is the most frequent per-cell type (per-cell type = first argmax of the probabilities; ties
between types go to the class listed first), its score the fraction of the cluster's cells of
that type.

The classifier only sees the target cells: black-box classifiers are per-cell (a cell's
probabilities depend on its own expression), so the other cells cannot change the cluster's call.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["ClusterOracle", "cluster_call"]


def cluster_call(types: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cluster calls from per-cell types.

    Parameters
    ----------
    types
        ``(n_candidates, n_cells)`` (or ``(n_cells,)``) integer per-cell types.
    n_classes
        Number of classes.

    Returns
    -------
    call
        Most frequent type per candidate (ties to the lowest class index).
    score
        Fraction of the cells with that type.
    counts
        ``(n_candidates, n_classes)`` per-type counts.

    """
    types = np.asarray(types)
    squeeze = types.ndim == 1
    types = np.atleast_2d(types)
    b, n = types.shape
    offs = (np.arange(b, dtype=np.int64) * n_classes)[:, None]
    counts = np.bincount((types + offs).ravel(), minlength=b * n_classes).reshape(b, n_classes)
    call = counts.argmax(axis=1)
    score = counts[np.arange(b), call] / max(n, 1)
    if squeeze:
        return call[0], score[0], counts[0]
    return call, score, counts


class ClusterOracle:
    """The cluster's call under gene modifications of its cells.

    Parameters
    ----------
    proba_fn
        ``proba_fn(X) -> (n_cells, n_classes)`` probabilities (a
        :class:`~scadversarial.attacks._protocol.ClassifierAdapter` counts its calls).
    X_target
        ``(n_target, n_genes)`` expression of the target cells (unmodified).
    V
        ``(n_target, n_genes)`` modified values (:func:`~scadversarial.attacks.modifications.modified_values`).
    batch_bytes
        Upper bound on the size of one stacked call (candidates x cells x genes x itemsize).

    Attributes
    ----------
    orig_proba, orig_types, orig_call, orig_score
        Probabilities, per-cell types, call and score on the unmodified cells.
    n_evaluated
        Number of candidate modifications classified.

    """

    def __init__(
        self,
        proba_fn,
        X_target: np.ndarray,
        V: np.ndarray | Sequence[np.ndarray],
        *,
        batch_bytes: int = 64 * 2**20,
    ) -> None:
        X_target = np.ascontiguousarray(X_target)
        Vs = [V] if isinstance(V, np.ndarray) and V.ndim == 2 else list(V)
        self.Vs = [np.ascontiguousarray(v, dtype=X_target.dtype) for v in Vs]
        V = self.Vs[0]
        if X_target.shape != V.shape:
            msg = f"Modified values have shape {V.shape}, expected {X_target.shape}."
            raise ValueError(msg)
        if X_target.shape[0] == 0:
            msg = "The target cluster has no cells."
            raise ValueError(msg)
        self.proba_fn = proba_fn
        self.base = X_target
        self.V = V
        self.batch_bytes = int(batch_bytes)
        self.n_evaluated = 0
        self._buf: np.ndarray | None = None
        P = np.asarray(proba_fn(X_target))
        self.orig_proba = P
        self.n_classes = P.shape[1]
        self.orig_types = P.argmax(axis=1)
        call, score, counts = cluster_call(self.orig_types, self.n_classes)
        self.orig_call, self.orig_score, self.orig_counts = int(call), float(score), counts

    @property
    def n_cells(self) -> int:
        """Number of target cells."""
        return self.base.shape[0]

    @property
    def n_genes(self) -> int:
        """Number of genes."""
        return self.base.shape[1]

    def modified(self, genes: np.ndarray | Sequence[int]) -> np.ndarray:
        """A copy of the target cells with ``genes`` modified."""
        X = self.base.copy()
        genes = np.asarray(genes, dtype=np.intp)
        X[:, genes] = self.V[:, genes]
        return X

    def evaluate_one(self, genes: np.ndarray | Sequence[int]) -> tuple[int, float]:
        """Call and score with ``genes`` modified: one classifier call (the reference path)."""
        P = self.proba_fn(self.modified(genes))
        self.n_evaluated += 1
        call, score, _ = cluster_call(np.asarray(P).argmax(axis=1), self.n_classes)
        return int(call), float(score)

    def chunk_size(self, n_rows: int | None = None) -> int:
        """Number of candidates stacked in one classifier call (``n_rows`` cells each)."""
        n_rows = self.n_cells if n_rows is None else n_rows
        per = n_rows * self.n_genes * self.base.itemsize
        return max(1, self.batch_bytes // max(per, 1))

    def assignment_genes(self, assignment: np.ndarray) -> list[tuple[np.ndarray, int]]:
        """``[(genes, modification index), ...]`` of a per-gene assignment (-1: gene not modified)."""
        assignment = np.asarray(assignment)
        return [(np.flatnonzero(assignment == m), m) for m in range(len(self.Vs)) if (assignment == m).any()]

    def evaluate_assignment(self, assignment: np.ndarray) -> tuple[int, float]:
        """Call and score of one per-gene assignment of modifications (one classifier call)."""
        X = self.base.copy()
        for genes, m in self.assignment_genes(assignment):
            X[:, genes] = self.Vs[m][:, genes]
        P = self.proba_fn(X)
        self.n_evaluated += 1
        call, score, _ = cluster_call(np.asarray(P).argmax(axis=1), self.n_classes)
        return int(call), float(score)

    def evaluate_assignments(self, assignments: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Exact calls, scores and flip flags of many per-gene assignments, in stacked calls."""
        cands = [self.assignment_genes(a) for a in assignments]
        counts = (
            cluster_call(self._types(cands, slice(None)), self.n_classes)[2]
            if cands
            else np.zeros((0, self.n_classes), int)
        )
        calls = counts.argmax(axis=1)
        scores = counts[np.arange(len(cands)), calls] / self.n_cells
        self.n_evaluated += len(cands)
        return calls, scores, calls != self.orig_call

    def _types(self, gene_lists: Sequence, rows: slice) -> np.ndarray:
        """Per-cell types of ``rows`` of every candidate, ``(n_candidates, n_rows)``, in stacked calls.

        A candidate is an array of gene indices (first modification) or a list of ``(genes, m)`` pairs.
        """
        base = self.base[rows]
        Vs = [v[rows] for v in self.Vs]
        n, g = base.shape
        m = len(gene_lists)
        out = np.empty((m, n), dtype=np.int64)
        step = self.chunk_size(n)
        for start in range(0, m, step):
            lists = gene_lists[start : start + step]
            b = len(lists)
            if self._buf is None or self._buf.size < b * n * g:
                self._buf = np.empty(min(step, m) * n * g, dtype=base.dtype)
            buf = self._buf[: b * n * g].reshape(b, n, g)
            buf[...] = base
            for j, cand in enumerate(lists):  # one step per candidate; its cells and genes are vectorized
                pairs = cand if isinstance(cand, list) else [(cand, 0)]
                for genes, m in pairs:
                    genes = np.asarray(genes, dtype=np.intp)
                    buf[j][:, genes] = Vs[m][:, genes]
            P = np.asarray(self.proba_fn(buf.reshape(b * n, g)))
            out[start : start + b] = P.argmax(axis=1).reshape(b, n)
        return out

    def evaluate_many(
        self, gene_lists: Sequence[np.ndarray], *, need_exact: np.ndarray | bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Calls of many candidates, stacked into as few classifier calls as memory allows.

        The cells are classified in two passes: a strict majority of the cells first, then the rest only for
        the candidates whose flip status is still open, or that flip and need an exact call and score.
        The results equal :meth:`evaluate_one`'s on every candidate whose call is reported exactly.

        Parameters
        ----------
        gene_lists
            One array of gene indices per candidate.
        need_exact
            Per candidate (or for all): whether a flipping candidate needs its exact call and score.

        Returns
        -------
        calls
            The cluster's call per candidate (exact where ``need_exact`` or not flipped; else the leader so far).
        scores
            The call's fraction of cells (NaN where not computed exactly).
        flipped
            Whether the call differs from the call on the unmodified cells (always exact).

        """
        m = len(gene_lists)
        n, K, orig = self.n_cells, self.n_classes, self.orig_call
        need = np.broadcast_to(np.asarray(need_exact, dtype=bool), (m,))
        if m == 0:
            return np.empty(0, np.int64), np.empty(0), np.empty(0, bool)
        n1 = n // 2 + 1 if n >= 8 else n
        rest = n - n1
        counts = cluster_call(self._types(gene_lists, slice(0, n1)), K)[2]
        # the call is certainly orig when orig beats every other class even if all remaining cells join it
        others = counts.copy()
        others[:, orig] = -1
        cls = np.arange(K)
        margin = counts[:, [orig]] - (others + rest)  # > 0 (or == 0 for classes listed after orig) keeps orig
        sure_keep = np.all((margin > 0) | ((margin == 0) & (cls > orig)[None, :]) | (cls == orig)[None, :], axis=1)
        # the call is certainly not orig when some class beats orig even if all remaining cells go to orig
        lead = counts - (counts[:, [orig]] + rest)
        sure_flip = np.any(((lead > 0) | ((lead == 0) & (cls < orig)[None, :])) & (cls != orig)[None, :], axis=1)
        todo = np.flatnonzero(~sure_keep & (~sure_flip | need))
        if rest and len(todo):
            counts[todo] += cluster_call(self._types([gene_lists[i] for i in todo], slice(n1, n)), K)[2]
        full = np.zeros(m, dtype=bool)
        full[todo] = True
        if not rest:
            full[:] = True
        calls = counts.argmax(axis=1)
        calls[sure_keep] = orig
        flipped = calls != orig
        scores = np.where(full, counts[np.arange(m), calls] / n, np.nan)
        self.n_evaluated += m
        return calls, scores, flipped
