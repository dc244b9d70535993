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

``method='plain'`` classifies the whole cluster twice per gene (trial, then committed state), like the
R package. ``method='fast'`` classifies once per gene, only the rows that can change: the trial rows
of this gene stacked with the rows of the previous gene's cells that took the opposite step (the
cells that took the trial step already have their probabilities). Per-cell classifiers give both
methods the same result.
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
class _Steps:
    """The search's fixed settings: step sizes, the original call, the excluded targets and when to stop."""

    alpha: float
    epsilon: float
    orig: int
    excl: tuple[int, ...]
    stop_at_switch: bool


@dataclass(frozen=True)
class _WorkBuffer:
    """The fast search's one buffer.

    Rows ``[0, n)`` are the matrix being modified, the rows after them the stacked rows of each call
    (``block`` rows per forward pass of the classifier).
    """

    W: np.ndarray
    n: int
    block: int


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


def _step(x: np.ndarray, alpha: float, epsilon: float, sign: int) -> np.ndarray:
    """``(1 + sign*alpha*sign(x))*x + sign*epsilon``."""
    return (1 + sign * alpha * np.sign(x)) * x + sign * epsilon


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
        ``'fast'`` (one call per gene, changed rows only) or ``'plain'`` (two calls per gene, whole cluster).
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
    n = X_target.shape[0] if rows is None else len(rows)
    if method == "plain":
        M = np.array(X_target, dtype=dtype, copy=True) if rows is None else X_target[rows].astype(dtype, copy=False)
        check_finite(M, _WHERE)
        P = np.asarray(proba_fn(M))
    else:
        # one work buffer: rows [0, n) are the matrix being modified (``res.X`` is a view of them), the rows after
        # them hold the stacked rows of each call; calls take whole blocks of rows, so nothing is padded or copied.
        # Rows past n are set when first classified (np.empty: no pass over the whole buffer, no page never used)
        block = _block_rows(proba_fn)
        W = np.empty((_whole_blocks(2 * n, block), X_target.shape[1]), dtype=dtype)
        M = W[:n]
        if rows is None:
            M[...] = X_target
        elif X_target.dtype == dtype and X_target.flags.c_contiguous:  # (rows checked above: clip = raise, unbuffered)
            np.take(X_target, rows, axis=0, out=M, mode="clip")
        else:
            M[...] = X_target[rows]
        check_finite(M, _WHERE)
        ready = _whole_blocks(n, block)
        W[n:ready] = 0
        P = np.asarray(_classify(proba_fn, W[:ready], n))[:n]
    types = P.argmax(axis=1)
    K = P.shape[1]
    counts = np.bincount(types, minlength=K)
    orig = int(counts.argmax())
    excl = tuple(int(e) for e in exclude_new_targets)
    new = int(new_target) if new_target is not None else _choose_new_target(counts, P, orig, excl)
    steps = _Steps(alpha=alpha, epsilon=epsilon, orig=orig, excl=excl, stop_at_switch=stop_at_switch)
    res = CGDResult(X=M, orig_call=orig, orig_types=types.copy())
    res.summary.append(_summary_row(0, -1, 0, types, counts, P, orig, new))
    # progress: genes visited (one classifier call each); the search may stop early, at the switch
    with progress(total=len(genes), desc="CGD", unit="gene") as bar:
        if method == "plain":
            _plain(proba_fn, M, genes, P=P, types=types, new=new, steps=steps, res=res, bar=bar)
        else:
            buf = _WorkBuffer(W, n, block)
            _fast(proba_fn, buf, genes, ready=ready, P=P, types=types, new=new, steps=steps, res=res, bar=bar)
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


def _finish(res, P, types, orig, new) -> None:
    res.new_target = new
    res.types = types
    res.switched = bool((types == new).sum() > (types == orig).sum())


def _plain(proba_fn, M, genes, *, P, types, new: int, steps: _Steps, res: CGDResult, bar) -> None:
    """Two classifier calls per gene on the whole cluster (the trial, then the committed state), as the R package."""
    alpha, epsilon, orig = steps.alpha, steps.epsilon, steps.orig
    stopped = False
    for i, g in enumerate(genes, start=1):
        cells = np.flatnonzero(types != new)
        if len(cells) == 0:
            break
        res.n_genes_visited = i
        bar.update(1)
        T = M.copy()
        T[cells, g] = _step(M[cells, g], alpha, epsilon, +1)
        Pt = np.asarray(proba_fn(T))
        d_new = Pt[cells, new] - P[cells, new]
        d_or = Pt[cells, orig] - P[cells, orig]
        plus, minus = cells[d_new > d_or], cells[d_new < d_or]
        if len(plus) + len(minus) == 0:
            row = dict(res.summary[-1], order=i, gene=g, n_modified_cells=0)
            res.summary.append(row)
            continue
        res.modified_genes.append(g)
        M[plus, g] = _step(M[plus, g], alpha, epsilon, +1)
        M[minus, g] = _step(M[minus, g], alpha, epsilon, -1)
        P = np.asarray(proba_fn(M))
        types = P.argmax(axis=1)
        new, stopped = _after_commit(P, types, steps, order=i, gene=g, n_mod=len(plus) + len(minus), res=res)
        if stopped:
            break
    if not stopped:
        P = np.asarray(proba_fn(M))  # final classification, as the R package
        types = P.argmax(axis=1)
    _finish(res, P, types, orig, new)


def _fast(
    proba_fn, buf: _WorkBuffer, genes, *, ready: int, P, types, new: int, steps: _Steps, res: CGDResult, bar
) -> None:
    """One classifier call per gene, on the rows that can change (see the module docstring)."""
    W, n, block = buf.W, buf.n, buf.block
    alpha, epsilon, orig = steps.alpha, steps.epsilon, steps.orig
    # rows [0, n) of the work buffer W are the committed matrix itself (a trial steps a column in place, then the
    # committed column, or the unchanged one, replaces it), rows [n, n + #opposite) the previous gene's cells that
    # took the opposite step; rows [0, ready) hold values (rows past the stacked ones are classified with their
    # block, their outputs dropped)
    P = P.copy()
    X = W[:n]
    pending = None  # (gene index i, gene, plus cells, minus cells, trial probabilities of the plus cells)
    i = 0
    while True:
        g = genes[i] if i < len(genes) else None
        n_minus = 0 if pending is None else len(pending[3])
        if n_minus:  # committed opposite steps of the previous gene, gathered without a temporary
            np.take(X, pending[3], axis=0, out=W[n : n + n_minus], mode="clip")  # (valid indices: clip = raise)
        if g is None and not n_minus:
            if pending is None:
                break
            out_t, out_m = None, np.zeros((0, P.shape[1]))
        elif g is None:
            out_t, out_m = None, np.asarray(proba_fn(W[n : n + n_minus]))  # (only after the last gene)
        else:  # trial of this gene on every cell; only the cells not called the new target are used
            called = _whole_blocks(n + n_minus, block)
            if called > ready:
                W[max(ready, n + n_minus) : called] = 0
                ready = called
            col = X[:, g].copy()
            trial = _step(col, alpha, epsilon, +1)
            X[:, g] = trial  # until the committed column replaces it (or col is put back)
            out = np.asarray(_classify(proba_fn, W[:called], n + n_minus))
            out_t, out_m = out[:n], out[n : n + n_minus]
        if pending is not None:
            pi, pg, plus, minus, P_plus = pending
            P[plus] = P_plus
            if len(minus):
                P[minus] = out_m
            types = P.argmax(axis=1)
            new, stop = _after_commit(P, types, steps, order=pi, gene=pg, n_mod=len(plus) + len(minus), res=res)
            pending = None
            if stop:
                if g is not None:
                    X[:, g] = col
                break
        if g is None:
            break
        i += 1
        cells = np.flatnonzero(types != new)
        if len(cells) == 0:
            X[:, g] = col
            break
        res.n_genes_visited = i
        bar.update(1)
        d_new = out_t[:, new][cells] - P[:, new][cells]
        d_or = out_t[:, orig][cells] - P[:, orig][cells]
        plus, minus = cells[d_new > d_or], cells[d_new < d_or]
        if len(plus) + len(minus) == 0:
            X[:, g] = col
            res.summary.append(dict(res.summary[-1], order=i, gene=g, n_modified_cells=0))
            continue
        res.modified_genes.append(g)
        # the committed column: the trial step where it helped (elementwise: the same values), the opposite step
        # where it hurt
        col[plus] = trial[plus]
        col[minus] = _step(col[minus], alpha, epsilon, -1)
        X[:, g] = col
        pending = (i, g, plus, minus, out_t[plus])
    _finish(res, P, types, orig, new)
