"""Cluster-based gradient descent (CGD, adverSCarial's equations 3-4).

Genes are visited in a given order. For each gene, on the target cells not already called the new
target, a trial step ``x -> (1 + alpha*sign(x))*x + epsilon`` is classified; per cell, when the new
target's probability rose more than the original type's, the step is committed
(``x -> (1 + alpha*sign(x))*x + epsilon``), when it rose less the opposite step is committed
(``x -> (1 - alpha*sign(x))*x - epsilon``); on an exact tie the cell is left unchanged. After each gene
with committed steps, the new target becomes the most frequent per-cell type of the cluster other than
the original type (class order breaks ties; with a single predicted type, the class of highest mean
probability). The search stops when more cells are called the new target than the original type
(unless ``stop_at_switch=False``).

The search is encoded once (:func:`_search`); the methods differ only in how they answer its two questions
per gene: the trial's probabilities, and the committed cluster's. ``method='plain'`` (:class:`_OneByOne`)
answers each with one classifier call on the whole cluster: two calls per gene with committed steps, one per
gene without, one at the start and one on the final cluster unless the search stopped at the switch, as the
R package. ``method='fast'`` (:class:`_Stacked`) makes one call per gene, on the rows that can change: the
trial rows of the next gene stacked with the rows of this gene's cells that took the opposite step (the cells
that took the trial step already have their probabilities). Per-cell classifiers give both methods the same
result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .._settings import progress
from .._validate import check_choice, check_finite
from ._protocol import ClassifierAdapter

__all__ = ["CGDResult", "cgd_search"]

_WHERE = "The target cluster's expression"  # the only cells the search reads: checked where it copies them

SUMMARY_COLUMNS = (
    "order",
    "gene",
    "n_modified_cells",
    "frac_orig",
    "frac_new",
    "proba_orig_cells",
    "proba_new_cells",
    "proba_orig_cluster",
    "proba_new_cluster",
)


@dataclass
class CGDResult:
    """Result of a CGD attack.

    Attributes
    ----------
    X
        Modified expression of the target cells (with ``method='fast'``, a view of the search's work buffer).
    modified_genes
        Indices of the genes with committed steps, in order.
    summary
        One dict per visited gene (plus the start, ``order=0``) with the fields of ``SUMMARY_COLUMNS``.
    orig_call, new_target
        Class index of the original call and of the final new target.
    orig_types, types
        Per-cell types before and after the attack.
    switched
        Whether more cells are called the new target than the original type at the end.
    n_genes_visited
        Number of genes visited.

    """

    X: np.ndarray
    modified_genes: list[int] = field(default_factory=list)
    summary: list[dict] = field(default_factory=list)
    orig_call: int = -1
    new_target: int = -1
    orig_types: np.ndarray | None = None
    types: np.ndarray | None = None
    switched: bool = False
    n_genes_visited: int = 0


@dataclass(frozen=True)
class _Sizes:
    """The step sizes: ``x -> (1 + alpha*sign(x))*x + epsilon`` and its opposite."""

    alpha: float
    epsilon: float


@dataclass(frozen=True)
class _Steps:
    """The search's fixed settings: the original call, the excluded targets and when to stop."""

    orig: int
    excl: tuple[int, ...]
    stop_at_switch: bool


def _choose_new_target(counts: np.ndarray, P: np.ndarray, orig: int, excl: Sequence[int]) -> int:
    """The new target from the per-class cell counts ``counts`` (``np.bincount(types)``) and probabilities ``P``."""
    cand = counts.tolist()  # a few classes: Python lists beat numpy calls
    n_types = len(cand) - cand.count(0)
    cand[orig] = -1
    for e in excl:
        cand[e] = -1
    top = max(cand)
    if n_types > 1 and top > 0:
        return cand.index(top)  # most frequent other type; ties to the class listed first
    mean = P.mean(axis=0)
    order = np.argsort(-mean, kind="stable")
    order = order[order != orig]
    return int(order[0])


def _step(x: np.ndarray, sizes: _Sizes, sign: int) -> np.ndarray:
    """``(1 + sign*alpha*sign(x))*x + sign*epsilon``."""
    return (1 + sign * sizes.alpha * np.sign(x)) * x + sign * sizes.epsilon


def _mean(x: np.ndarray) -> float:
    """``float(x.mean())`` of a non-empty 1-D array, without ``np.mean``'s Python-level overhead.

    For float32 / float64 ``np.mean`` sums in the array's dtype, divides in float64 by the count and rounds
    back to the dtype: done here the same way, so the value is identical bit for bit.
    """
    if x.dtype not in (np.float32, np.float64):
        return float(x.mean())
    return float(x.dtype.type(float(np.add.reduce(x)) / len(x)))


def _summary_row(order, gene, n_mod, types, counts, P, orig, new) -> dict:
    """One summary record; ``counts`` is ``np.bincount(types, minlength=n_classes)``."""
    n = len(types)
    n_or, n_new = counts[orig], counts[new]
    return {
        "order": order,
        "gene": gene,
        "n_modified_cells": int(n_mod),
        "frac_orig": float(n_or / n),
        "frac_new": float(n_new / n),
        "proba_orig_cells": _mean(P[:, orig][types == orig]) if n_or else 0.0,
        "proba_new_cells": _mean(P[:, new][types == new]) if n_new else 0.0,
        "proba_orig_cluster": _mean(P[:, orig]),
        "proba_new_cluster": _mean(P[:, new]),
    }


def cgd_search(
    proba_fn,
    X_target: np.ndarray,
    genes: Sequence[int] | np.ndarray,
    *,
    alpha: float = 0.1,
    epsilon: float = 0.0,
    new_target: int | None = None,
    exclude_new_targets: Sequence[int] = (),
    stop_at_switch: bool = True,
    method: str = "fast",
    rows: Sequence[int] | np.ndarray | None = None,
) -> CGDResult:
    """Run CGD on one cluster.

    Parameters
    ----------
    proba_fn
        ``proba_fn(X) -> probabilities`` (see :class:`~scadversarial.attacks._protocol.ClassifierAdapter`).
    X_target
        ``(n_target, n_genes)`` expression of the cluster's cells, or with ``rows`` a matrix that holds them.
    genes
        Gene indices, in the order they are visited.
    alpha, epsilon
        Multiplicative and additive step sizes.
    new_target
        Class index of the first new target (default: chosen from the cluster's predictions).
    exclude_new_targets
        Class indices never chosen as new target.
    stop_at_switch
        Stop as soon as the new target is called for more cells than the original type.
    method
        ``'fast'`` (one call per gene, changed rows only) or ``'plain'`` (one call per question on the whole
        cluster: two per gene, as the R package).
    rows
        Indices (``0 <= i < len(X_target)``) of the cluster's cells among the rows of ``X_target`` (default: all
        its rows, in order). They are copied straight into the search's own matrix: a large ``X_target`` is not
        copied as a whole.

    Returns
    -------
    :class:`CGDResult`.

    """
    check_choice("method", method, ("fast", "plain"))
    X_target = np.asarray(X_target)
    dtype = np.result_type(X_target.dtype, np.float32)
    genes = np.asarray(genes).ravel()
    genes = genes.tolist() if genes.dtype.kind in "iu" else [int(g) for g in genes]
    if rows is not None:
        rows = np.asarray(rows).ravel()
        if rows.dtype.kind not in "iu" or (len(rows) and not 0 <= rows.min() <= rows.max() < len(X_target)):
            msg = f"rows must be indices 0 <= i < {len(X_target)} of rows of X_target."
            raise IndexError(msg)
    answers = _OneByOne if method == "plain" else _Stacked
    ask = answers(proba_fn, X_target, rows, dtype, _Sizes(alpha=alpha, epsilon=epsilon))
    P = ask.start()
    types = P.argmax(axis=1)
    counts = np.bincount(types, minlength=P.shape[1])
    orig = int(counts.argmax())
    excl = tuple(int(e) for e in exclude_new_targets)
    new = int(new_target) if new_target is not None else _choose_new_target(counts, P, orig, excl)
    steps = _Steps(orig=orig, excl=excl, stop_at_switch=stop_at_switch)
    res = CGDResult(X=ask.X, orig_call=orig, orig_types=types.copy())
    res.summary.append(_summary_row(0, -1, 0, types, counts, P, orig, new))
    # progress: genes visited; the search may stop early, at the switch
    with progress(total=len(genes), desc="CGD", unit="gene") as bar:
        _search(ask, genes, P=P, types=types, new=new, steps=steps, res=res, bar=bar)
    return res


def _classify(proba_fn, Z: np.ndarray, n_valid: int) -> np.ndarray:
    """``proba_fn(Z)``; rows past ``n_valid`` are padding (an adapter leaves them out of its count of ties)."""
    return proba_fn(Z, n_valid=n_valid) if isinstance(proba_fn, ClassifierAdapter) else proba_fn(Z)


def _block_rows(proba_fn) -> int:
    """Rows per forward pass of ``proba_fn`` (its ``block_rows``; 1 when it has none)."""
    return max(int(getattr(proba_fn, "block_rows", 1) or 1), 1)


def _whole_blocks(rows: int, block: int) -> int:
    """``rows`` rounded up to whole blocks."""
    return -(-rows // block) * block


def _after_commit(P, types, steps: _Steps, *, order: int, gene: int, n_mod: int, res: CGDResult) -> tuple[int, bool]:
    """The new target after a gene's committed steps, its summary row, and whether the search stops."""
    counts = np.bincount(types, minlength=P.shape[1])
    orig = steps.orig
    new = _choose_new_target(counts, P, orig, steps.excl)
    res.summary.append(_summary_row(order, gene, n_mod, types, counts, P, orig, new))
    stop = bool(steps.stop_at_switch and counts[new] > counts[orig])
    return new, stop


def _search(
    ask: _OneByOne | _Stacked, genes: list[int], *, P, types, new: int, steps: _Steps, res: CGDResult, bar
) -> None:
    """The CGD search, the one encoding of both methods: ``ask`` answers its questions (see the module docstring)."""
    orig = steps.orig
    stopped = False
    for i, g in enumerate(genes, start=1):
        cells = np.flatnonzero(types != new)
        if len(cells) == 0:
            break
        res.n_genes_visited = i
        bar.update(1)
        Pt = ask.trial(g, cells)
        d_new = Pt[cells, new] - P[cells, new]
        d_or = Pt[cells, orig] - P[cells, orig]
        plus, minus = cells[d_new > d_or], cells[d_new < d_or]
        if len(plus) + len(minus) == 0:
            ask.reject(g)
            res.summary.append(dict(res.summary[-1], order=i, gene=g, n_modified_cells=0))
            continue
        res.modified_genes.append(g)
        P = ask.commit(g, plus, minus, P=P, Pt=Pt, next_gene=genes[i] if i < len(genes) else None)
        types = P.argmax(axis=1)
        new, stopped = _after_commit(P, types, steps, order=i, gene=g, n_mod=len(plus) + len(minus), res=res)
        if stopped:
            break
    P = ask.end(P, stopped=stopped)
    types = P.argmax(axis=1)
    res.new_target = new
    res.types = types
    res.switched = bool((types == new).sum() > (types == orig).sum())


class _OneByOne:
    """Answers each question with one classifier call on the whole cluster (``method='plain'``, the R package's calls).

    A trial classifies a copy of the cluster with the step on the asked cells, a commit the committed cluster, and
    a search that did not stop at the switch ends with a last call on the final cluster, as the R package.
    """

    def __init__(self, proba_fn, X_target: np.ndarray, rows: np.ndarray | None, dtype, sizes: _Sizes) -> None:
        self.proba_fn, self.sizes = proba_fn, sizes
        X = np.array(X_target, dtype=dtype, copy=True) if rows is None else X_target[rows].astype(dtype, copy=False)
        check_finite(X, _WHERE)
        self.X = X  # the matrix being modified

    def start(self) -> np.ndarray:
        """Probabilities of the unmodified cluster."""
        return np.asarray(self.proba_fn(self.X))

    def trial(self, g: int, cells: np.ndarray) -> np.ndarray:
        """Probabilities of the cluster with the trial step of gene ``g`` on ``cells`` (only their rows are read)."""
        T = self.X.copy()
        T[cells, g] = _step(self.X[cells, g], self.sizes, +1)
        return np.asarray(self.proba_fn(T))

    def reject(self, g: int) -> None:
        """The trial of gene ``g`` changed no cell: nothing to undo (it classified a copy)."""

    def commit(self, g: int, plus, minus, *, P, Pt, next_gene: int | None) -> np.ndarray:
        """Commit gene ``g``'s steps (trial on ``plus``, opposite on ``minus``); the committed cluster's probabilities.

        ``P`` and ``Pt`` (the probabilities before and under the trial) and ``next_gene`` (the gene whose trial
        comes next, None after the last) are what a faster answer can use; one call on the whole cluster needs none.
        """
        del P, Pt, next_gene
        X = self.X
        X[plus, g] = _step(X[plus, g], self.sizes, +1)
        X[minus, g] = _step(X[minus, g], self.sizes, -1)
        return np.asarray(self.proba_fn(X))

    def end(self, P: np.ndarray, *, stopped: bool) -> np.ndarray:
        """The final probabilities: classified once more unless the search stopped at the switch, as the R package."""
        return P if stopped else np.asarray(self.proba_fn(self.X))


class _Stacked:
    """Answers a gene's trial and the previous gene's commit in one call, on the rows that can change (``'fast'``).

    One work buffer ``W``: rows ``[0, n)`` are the matrix being modified (``res.X`` is a view of them), the rows
    after them hold the stacked rows of a call; calls take whole blocks of rows (``block`` per forward pass of the
    classifier), so nothing is padded or copied. A trial steps the gene's whole column in place (only the asked
    cells' rows are read), then the committed column, or the unchanged one, replaces it. A commit needs new
    probabilities only for the cells that took the opposite step (those that took the trial step have theirs from
    the trial, the others are unchanged): their rows are stacked after the next gene's trial, answered ahead in the
    same call. Per-cell classifiers give the same probabilities as one call on the whole cluster.
    """

    def __init__(self, proba_fn, X_target: np.ndarray, rows: np.ndarray | None, dtype, sizes: _Sizes) -> None:
        self.proba_fn, self.sizes = proba_fn, sizes
        n = X_target.shape[0] if rows is None else len(rows)
        self.n, self.block = n, _block_rows(proba_fn)
        # rows past n are set when first classified (np.empty: no pass over the whole buffer, no page never used)
        W = np.empty((_whole_blocks(2 * n, self.block), X_target.shape[1]), dtype=dtype)
        X = W[:n]
        if rows is None:
            X[...] = X_target
        elif X_target.dtype == dtype and X_target.flags.c_contiguous:  # (rows checked: clip = raise, unbuffered)
            np.take(X_target, rows, axis=0, out=X, mode="clip")
        else:
            X[...] = X_target[rows]
        check_finite(X, _WHERE)
        self.W, self.X = W, X
        self.ready = 0  # rows [0, ready) of W hold values
        self.open: tuple[int, np.ndarray, np.ndarray] | None = None  # (gene, unmodified column, trial column)
        self.ahead: np.ndarray | None = None  # the probabilities of the open trial, answered ahead

    def _zero_to(self, called: int, filled: int) -> None:
        """Rows ``[0, called)`` of ``W`` hold values: rows ``[filled, called)`` not yet set are zeroed."""
        if called > self.ready:
            self.W[max(self.ready, filled) : called] = 0
            self.ready = called

    def start(self) -> np.ndarray:
        """Probabilities of the unmodified cluster (a copy: the commits write into it)."""
        n = self.n
        called = _whole_blocks(n, self.block)
        self._zero_to(called, n)
        return np.asarray(_classify(self.proba_fn, self.W[:called], n))[:n].copy()

    def _call(self, g: int, n_stacked: int) -> np.ndarray:
        """One call: gene ``g``'s trial on every row, and the ``n_stacked`` rows after them (set by the caller)."""
        n, X = self.n, self.X
        called = _whole_blocks(n + n_stacked, self.block)
        self._zero_to(called, n + n_stacked)
        col = X[:, g].copy()
        trial = _step(col, self.sizes, +1)
        X[:, g] = trial  # until the committed column replaces it (or col is put back)
        self.open = (g, col, trial)
        return np.asarray(_classify(self.proba_fn, self.W[:called], n + n_stacked))

    def trial(self, g: int, cells: np.ndarray) -> np.ndarray:
        """Probabilities of every row with the trial step of gene ``g`` (answered ahead when the last gene committed)."""
        del cells
        if self.ahead is not None:
            out, self.ahead = self.ahead, None
            return out
        return self._call(g, 0)[: self.n]

    def reject(self, g: int) -> None:
        """Put back gene ``g``'s unmodified column."""
        self.X[:, g] = self.open[1]
        self.open = None

    def commit(self, g: int, plus, minus, *, P, Pt, next_gene: int | None) -> np.ndarray:
        """Commit gene ``g``'s steps; ``P`` updated in place to the committed cluster's probabilities.

        The rows of ``minus`` are classified stacked after ``next_gene``'s trial, whose answer waits for
        :meth:`trial`.
        """
        n, X, W = self.n, self.X, self.W
        _, col, trial = self.open
        self.open = None
        # the committed column: the trial step where it helped (elementwise: the same values), the opposite step
        # where it hurt
        col[plus] = trial[plus]
        col[minus] = _step(col[minus], self.sizes, -1)
        X[:, g] = col
        P[plus] = Pt[plus]
        n_minus = len(minus)
        if n_minus:  # the committed rows of the opposite steps, gathered without a temporary (before the next trial)
            np.take(X, minus, axis=0, out=W[n : n + n_minus], mode="clip")  # (valid indices: clip = raise)
        if next_gene is not None:
            out = self._call(next_gene, n_minus)
            self.ahead = out[:n]
            if n_minus:
                P[minus] = out[n : n + n_minus]
        elif n_minus:  # (only after the last gene)
            P[minus] = np.asarray(self.proba_fn(W[n : n + n_minus]))
        return P

    def end(self, P: np.ndarray, *, stopped: bool) -> np.ndarray:
        """The final probabilities (those of the last commit); a trial answered ahead and not asked is undone."""
        del stopped
        if self.open is not None:
            self.X[:, self.open[0]] = self.open[1]
            self.open = self.ahead = None
        return P
