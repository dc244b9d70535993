"""The cluster's call under gene modifications: :class:`ClusterOracle`, the searches' single entry point."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._counts import cluster_call, one_blas_thread
from ._engine import CellValues, Job, Pairs, as_pairs
from ._incremental import CertifiedSet, IncrementalEngine
from ._linear import LinearEngine, UnmodifiedLogits
from ._reference import ReferenceEngine
from ._stacked import StackedEngine

__all__ = ["ClusterOracle"]

SMALL_CLUSTER = 8
"""Clusters of fewer cells are classified in one pass (a second pass would save a few rows for a call)."""


class _SharedLogits:
    """The unmodified cells' logits, built at the first linear evaluation and shared by ``with_values`` oracles."""

    def __init__(self) -> None:
        self.value: UnmodifiedLogits | None = None


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
        ``(n_target, n_genes)`` modified values (:func:`~scadversarial.attacks.modifications.modified_values`),
        or a list of them (one per modification).
    batch_bytes
        Upper bound on the size of one stacked call (candidates x cells x genes x itemsize).
    linear
        Use the linear engines for a linear classifier (see :mod:`._linear`); ``False`` always classifies
        stacked modified matrices.

    Attributes
    ----------
    orig_proba, orig_types, orig_call, orig_score, orig_counts
        Probabilities, per-cell types, call, score and per-class counts on the unmodified cells.
    cells
        The target cells and their modified values (:class:`~._engine.CellValues`).
    n_evaluated
        Number of candidate modifications classified.
    n_exact_rows
        Cells of linear evaluations too close to call, classified by the classifier.
    setup_seconds
        Time the caller spent building the oracle (modified values, unmodified call), when it records it.

    """

    def __init__(
        self,
        proba_fn,
        X_target: np.ndarray,
        V: np.ndarray | Sequence[np.ndarray],
        *,
        batch_bytes: int = 16 * 2**20,
        linear: bool = True,
    ) -> None:
        X_target = np.ascontiguousarray(X_target)
        if X_target.shape[0] == 0:
            msg = "The target cluster has no cells."
            raise ValueError(msg)
        self.proba_fn = proba_fn
        self.base = X_target
        self.batch_bytes = int(batch_bytes)
        self.setup_seconds = 0.0
        head = getattr(proba_fn, "linear_head", None) if linear else None
        head = head() if callable(head) else None
        self._head = head if head is not None and head.weight.shape[1] == X_target.shape[1] else None
        self._shared = _SharedLogits()
        self._set_values(V)
        P = np.asarray(proba_fn(X_target))
        self.orig_proba = P
        self.n_classes = P.shape[1]
        self.orig_types = P.argmax(axis=1)
        call, score, counts = cluster_call(self.orig_types, self.n_classes)
        self.orig_call, self.orig_score, self.orig_counts = int(call), float(score), counts

    def _set_values(self, V: np.ndarray | Sequence[np.ndarray]) -> None:
        """Take the modified values ``V`` (and start the counters and engines that depend on them)."""
        self.cells = CellValues.build(self.base, V)
        self.Vs = list(self.cells.values)
        self.V = self.Vs[0]
        self.n_evaluated = 0
        self.n_exact_rows = 0
        self._reference: ReferenceEngine | None = None
        self._stacked: StackedEngine | None = None
        self._linear: LinearEngine | None = None
        self._incremental: IncrementalEngine | None = None

    def with_values(self, V: np.ndarray | Sequence[np.ndarray]) -> ClusterOracle:
        """The same cells and classifier under other modified values.

        The unmodified call and the unmodified cells' logits (for the linear engines) are reused, not recomputed;
        the new oracle has its own counters (the classifier's call counter is the same object).
        """
        new = object.__new__(ClusterOracle)
        new.__dict__.update(self.__dict__)
        new._set_values(V)
        new.setup_seconds = 0.0
        return new

    # -- the engines, built on first use ---------------------------------------------------------------------

    @property
    def reference(self) -> ReferenceEngine:
        """One classifier call on the whole modified cluster per candidate."""
        if self._reference is None:
            self._reference = ReferenceEngine(self.proba_fn, self.cells, self.n_classes)
        return self._reference

    @property
    def stacked(self) -> StackedEngine:
        """The changed rows of many candidates in few large classifier calls."""
        if self._stacked is None:
            self._stacked = StackedEngine(self.proba_fn, self.cells, self.n_classes, self.batch_bytes)
        return self._stacked

    @property
    def linear(self) -> LinearEngine | None:
        """The linear update (None unless the classifier is linear and ``linear=True``)."""
        if self._head is None:
            return None
        if self._linear is None:
            if self._shared.value is None:
                self._shared.value = UnmodifiedLogits.build(self._head, self.base)
            count = getattr(self.proba_fn, "count", None)
            self._linear = LinearEngine(self._head, self.cells, self._shared.value, count if callable(count) else None)
        return self._linear

    @property
    def incremental(self) -> IncrementalEngine | None:
        """The incremental update of one growing gene set (None unless :attr:`linear` is)."""
        if self._incremental is None and self.linear is not None:
            self._incremental = IncrementalEngine(self.linear)
        return self._incremental

    @property
    def is_linear(self) -> bool:
        """Whether stacked evaluations use the linear update (a linear classifier and ``linear=True``)."""
        return self._head is not None

    @property
    def n_cells(self) -> int:
        """Number of target cells (those of :attr:`cells`)."""
        return self.cells.n_cells

    @property
    def n_genes(self) -> int:
        """Number of genes (those of :attr:`cells`)."""
        return self.cells.n_genes

    # -- one candidate, one classifier call (the reference) --------------------------------------------------

    def modified(self, genes: np.ndarray | Sequence[int]) -> np.ndarray:
        """A copy of the target cells with ``genes`` modified."""
        return self.cells.modified([(np.asarray(genes, dtype=np.intp), 0)])

    def evaluate_one(self, genes: np.ndarray | Sequence[int]) -> tuple[int, float]:
        """Call and score with ``genes`` modified: one classifier call (the reference path)."""
        types = self.reference.types([(np.asarray(genes, dtype=np.intp), 0)])
        self.n_evaluated += 1
        call, score, _ = cluster_call(types, self.n_classes)
        return int(call), float(score)

    def assignment_genes(self, assignment: np.ndarray) -> Pairs:
        """``[(genes, modification index), ...]`` of a per-gene assignment (-1: gene not modified)."""
        assignment = np.asarray(assignment)
        return [(np.flatnonzero(assignment == m), m) for m in range(len(self.Vs)) if (assignment == m).any()]

    def evaluate_assignment(self, assignment: np.ndarray) -> tuple[int, float]:
        """Call and score of one per-gene assignment of modifications (one classifier call)."""
        types = self.reference.types(self.assignment_genes(assignment))
        self.n_evaluated += 1
        call, score, _ = cluster_call(types, self.n_classes)
        return int(call), float(score)

    # -- many candidates, stacked --------------------------------------------------------------------------

    def chunk_size(self, n_rows: int | None = None) -> int:
        """Number of candidates stacked in one classifier call (``n_rows`` cells each)."""
        n_rows = self.n_cells if n_rows is None else n_rows
        per = n_rows * self.n_genes * self.base.itemsize
        return max(1, self.batch_bytes // max(per, 1))

    def evaluate_assignments(self, assignments: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Exact calls, scores and flip flags of many per-gene assignments, in stacked calls."""
        return self.evaluate_many([self.assignment_genes(a) for a in assignments], exact_all=True)

    def evaluate_many(
        self,
        cands: Sequence,
        *,
        need_exact: np.ndarray | bool = True,
        exact_all: bool = False,
        one_pass: np.ndarray | bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Calls of many candidates, stacked into as few classifier calls as memory allows.

        Only the cells whose row a candidate changes are classified (the others keep their original
        per-cell types: black-box classifiers are per-cell). They are classified in two passes: enough
        cells to decide whether the call can still be the original one (for a linear classifier: every
        cell the linear update can call), then the rest only for the candidates still open, or that flip
        and need an exact call and score. Every exact result equals :meth:`evaluate_one`'s.

        Parameters
        ----------
        cands
            One candidate per entry: an array of distinct gene indices (first modification) or a list of
            ``(genes, modification index)`` pairs (each gene in one pair at most).
        need_exact
            Per candidate (or for all): whether a flipping candidate needs its exact call and score.
        exact_all
            Exact calls and scores for every candidate (one pass).
        one_pass
            Per candidate (or for all): classify all its changed cells at once (for candidates whose call is
            expected to be close: a second pass would cost a call and save few cells).

        Returns
        -------
        calls
            The cluster's call per candidate (exact where ``need_exact`` or not flipped; else the leader so far).
        scores
            The call's fraction of cells (NaN where not computed exactly).
        flipped
            Whether the call differs from the call on the unmodified cells (always exact).

        """
        m = len(cands)
        n, K, orig = self.n_cells, self.n_classes, self.orig_call
        need = np.broadcast_to(np.asarray(need_exact, dtype=bool), (m,))
        single = np.broadcast_to(np.asarray(one_pass, dtype=bool), (m,))
        if m == 0:
            return np.empty(0, np.int64), np.empty(0), np.empty(0, bool)
        lin = self.linear
        gm = lin.uniform_genes(cands) if lin is not None else None
        if gm is not None:  # linear, one modification, one size, every cell changed: no per-candidate bookkeeping
            with one_blas_thread():
                counts, close_all = lin.type_uniform(gm)
            rest = np.count_nonzero(close_all, axis=1)
        else:
            counts, rest, pairs, later = self._counts_many(cands, exact_all=exact_all, single=single)
        cls = np.arange(K)
        # the call is certainly orig when orig beats every other class even if all remaining cells join it
        others = counts.copy()
        others[:, orig] = -1
        margin = counts[:, [orig]] - (others + rest[:, None])
        sure_keep = np.all((margin > 0) | ((margin == 0) & (cls > orig)[None, :]) | (cls == orig)[None, :], axis=1)
        # the call is certainly not orig when some class beats orig even if all remaining cells go to orig
        lead = counts - (counts[:, [orig]] + rest[:, None])
        sure_flip = np.any(((lead > 0) | ((lead == 0) & (cls < orig)[None, :])) & (cls != orig)[None, :], axis=1)
        todo = np.flatnonzero((rest > 0) & ((~sure_keep & (~sure_flip | need)) | exact_all))
        if len(todo):
            if gm is not None:
                jobs = [([(gm[j], 0)], np.flatnonzero(close_all[j])) for j in todo]
            else:
                jobs = [(pairs[j], later[j]) for j in todo]
            counts[todo] += self.stacked.type_rows(jobs).counts
            if lin is not None:
                self.n_exact_rows += int(rest[todo].sum())
        full = rest == 0
        full[todo] = True
        calls = counts.argmax(axis=1)
        calls[sure_keep & ~full] = orig
        flipped = calls != orig
        scores = np.where(full, counts[np.arange(m), calls] / n, np.nan)
        self.n_evaluated += m
        return calls, scores, flipped

    def _counts_many(self, cands: Sequence, *, exact_all: bool, single: np.ndarray) -> tuple:
        """Per-class counts of the cells typed so far, and how many are left, per candidate.

        Also returns what :meth:`evaluate_many` needs to type the rest later: the candidates' ``(genes,
        modification)`` pairs and each one's cells left.
        """
        n, K = self.n_cells, self.n_classes
        pairs = [as_pairs(c) for c in cands]
        changed = self.cells.changed_rows_many(pairs)
        counts = np.tile(self.orig_counts, (len(cands), 1))
        for j, ch in enumerate(changed):  # unchanged cells keep their original types
            if len(ch) == n:
                counts[j] = 0
            elif len(ch):
                counts[j] -= np.bincount(self.orig_types[ch], minlength=K)
        lin = self.linear
        if lin is not None:
            # every changed cell typed by the linear update; cells too close to call are left for later
            with one_blas_thread():
                typed = lin.type_rows(list(zip(pairs, changed, strict=True)))
            counts += typed.counts
            later = typed.left
        else:
            first = [
                len(ch)
                if exact_all or n < SMALL_CLUSTER or single[j]
                # enough changed cells for the original type to reach a strict majority
                else int(min(len(ch), max(0, n // 2 + 1 - (n - len(ch)))))
                for j, ch in enumerate(changed)
            ]
            counts += self.stacked.type_rows(
                [(p, ch[:f]) for p, ch, f in zip(pairs, changed, first, strict=True)]
            ).counts
            later = [ch[f:] for ch, f in zip(changed, first, strict=True)]
        return counts, np.array([len(r) for r in later]), pairs, later

    # -- one growing gene set (max-change with a linear classifier) ------------------------------------------

    def linear_flipped(
        self,
        bases: Sequence[CertifiedSet],
        delta: np.ndarray,
        same: Sequence[np.ndarray | None],
        genes: Sequence,
        m: int = 0,
        *,
        deferred: list | None = None,
    ) -> np.ndarray:
        """Whether the call flips, for candidates that add one gene set's change to known gene sets (one evaluation).

        Candidate ``j`` is ``bases[j]`` (:meth:`IncrementalEngine.certify`) plus ``delta``
        (:meth:`IncrementalEngine.delta` of the added genes, modification ``m``); ``same[j]`` are its unchanged
        cells (:meth:`CellValues.unchanged`) and ``genes[j]()`` returns its whole gene set. Cells too close to call
        are classified by the classifier (one stacked call for all candidates) only where the answer depends on
        them, so every answer equals :meth:`evaluate_one`'s.

        With a ``deferred`` list, those cells are not classified now: the answer is a guess from their float64
        logits (exact but for the classifier's rounding, so almost always right), and ``(j, job, counts)`` is
        appended to the list for :meth:`linear_resolve`, which gives the exact answers later.
        """
        flips, todo = self.incremental.flipped(bases, delta, same, (self.orig_call, self.orig_types))
        self.n_evaluated += len(bases)
        if todo:
            items = [(j, ([(np.asarray(genes[j](), dtype=np.intp), m)], rows), counts) for j, counts, rows in todo]
            if deferred is not None:
                deferred.extend(items)
            else:
                for (j, _, _), f in zip(items, self.linear_resolve(items), strict=True):
                    flips[j] = f
        return flips

    def linear_resolve(self, items: Sequence[tuple[int, Job, np.ndarray]]) -> list[bool]:
        """Exact answers of the candidates :meth:`linear_flipped` deferred, ``[(j, job, counts), ...]``: one stacked call."""
        if not items:
            return []
        K, orig = self.n_classes, self.orig_call
        out = []
        for item, t in zip(items, self.stacked.types([item[1] for item in items]), strict=True):
            out.append(int((item[2] + np.bincount(t, minlength=K)).argmax()) != orig)
            self.n_exact_rows += len(t)
        return out
