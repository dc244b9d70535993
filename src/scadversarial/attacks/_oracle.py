"""Classify modified copies of one cluster's cells, one at a time (reference) or stacked (fast).

Every black-box search asks the same question many times: *if these genes of the target cells take
their modified values, what is the cluster's call?* :class:`ClusterOracle` answers it. The cluster's
call is the most frequent per-cell type (per-cell type = first argmax of the probabilities; ties
between types go to the class listed first), its score the fraction of the cluster's cells of
that type.

The classifier only sees the target cells: black-box classifiers are per-cell (a cell's
probabilities depend on its own expression), so the other cells cannot change the cluster's call.

:meth:`ClusterOracle.evaluate_one` is the reference: one classifier call on the whole modified
cluster. :meth:`ClusterOracle.evaluate_many` answers many candidates with few, large calls and
classifies only what can matter, with the same answers:

- the candidates' modified cells are stacked into calls of at most ``batch_bytes`` bytes (in whole
  blocks of the classifier's forward size, so a torch module never pads);
- a cell whose row a candidate does not change (its values already equal the modified values)
  keeps its original type without being classified;
- cells are classified in two passes: first just enough for the original type to reach a strict
  majority, then the rest only for the candidates whose call is still open, or that flip and need an
  exact call and score (a kept call needs no score);
- for a linear classifier (:meth:`~scadversarial.attacks._protocol.ClassifierAdapter.linear_head`),
  no modified matrix is formed: a candidate's logits are the unmodified logits plus the modified
  genes' change times their weights (or a recently evaluated set's logits plus the genes that
  differ, whichever touches fewer genes). A cell's type is taken from them only when the gap between
  its top logit and every other logit exceeds a bound on the rounding error of the classifier's own
  arithmetic (``gamma_n = n u / (1 - n u)`` times the size of the logit's terms, bounded per cell
  by ``beta = sum_g |x_g| max_k |w_kg| + max |b|``), plus the update's own rounding and a margin for
  the softmax. Cells closer than that count as not classified yet (like the second pass above): the
  classifier classifies them only when the call or the score depends on them, so every answer is
  that of :meth:`evaluate_one`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from ._protocol import ClassifierAdapter

__all__ = ["ClusterOracle", "cluster_call"]

_BLAS = None


def _one_blas_thread():
    """Context in which numpy's BLAS runs on one thread.

    The linear updates are many small products: on a busy machine, BLAS threads spend more time
    waiting for each other than computing (measured: 5-30x slower on 2 shared cores).
    """
    global _BLAS
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController

        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=1, user_api="blas")


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


def _gamma(nu):
    """``gamma_n = n u / (1 - n u)`` from ``nu = n u`` (infinite where ``n u >= 1``: no bound)."""
    if isinstance(nu, float):  # (a scalar: no numpy call)
        return nu / (1 - nu) if nu < 1 else np.inf
    nu = np.asarray(nu, dtype=np.float64)
    with np.errstate(divide="ignore"):
        g = np.where(nu < 1, nu / np.maximum(1 - nu, 0), np.inf)
    return float(g) if g.ndim == 0 else g


class LinearBase(NamedTuple):
    """A gene set's certified per-cell types under the incremental update (:meth:`ClusterOracle.linear_base`).

    ``HB`` is its ``[H; B; z]``; ``types`` the first argmax of ``H``; ``slack`` how far each cell's top logit
    is from being too close to call (``-inf`` where it is); ``counts`` the per-class counts of the certain
    cells; ``a_max``, ``z_max``, ``B_max`` the largest error coefficient, nonzero count and term size.
    """

    HB: np.ndarray
    types: np.ndarray
    slack: np.ndarray
    counts: np.ndarray
    a_max: float
    z_max: float
    B_max: float


def _decided(counts: list[int], rest: int, orig: int) -> bool | None:
    """Whether the call flips given per-class ``counts`` and ``rest`` cells of unknown type (None: depends on them).

    The call is the first class with the most cells: it stays ``orig`` when ``orig`` beats every other class even
    if all unknown cells join that class, and it flips when some class beats ``orig`` even if they all join ``orig``.
    """
    co = counts[orig]
    keep = True
    for c, k in enumerate(counts):
        if c == orig:
            continue
        if k > co + rest or (k == co + rest and c < orig):
            return True
        if k + rest > co or (k + rest == co and c < orig):
            keep = False
    return False if keep else None  # (with rest = 0, a class that would take the call returned True above)


def _class_counts(types: np.ndarray, keep: np.ndarray, owner: np.ndarray, n_cands: int, n_classes: int) -> np.ndarray:
    """Per-candidate counts of the types of the cells where ``keep`` (candidates x classes).

    ``owner`` is each cell's candidate index times ``n_classes`` (broadcast against ``types``).
    """
    return np.bincount((owner + types)[keep], minlength=n_cands * n_classes).reshape(n_cands, n_classes)


def _stacked_counts(types: Sequence[np.ndarray], n_classes: int) -> np.ndarray:
    """Per-type counts of each array of ``types`` (one bincount for all)."""
    sizes = np.fromiter((len(t) for t in types), dtype=np.int64, count=len(types))
    if not sizes.sum():
        return np.zeros((len(types), n_classes), dtype=np.int64)
    offs = np.repeat(np.arange(len(types), dtype=np.int64) * n_classes, sizes)
    flat = np.concatenate(types).astype(np.int64, copy=False) + offs
    return np.bincount(flat, minlength=len(types) * n_classes).reshape(len(types), n_classes)


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
    linear
        Use the linear update for a linear classifier (see the module docstring); ``False`` always
        classifies stacked modified matrices.

    Attributes
    ----------
    orig_proba, orig_types, orig_call, orig_score
        Probabilities, per-cell types, call and score on the unmodified cells.
    n_evaluated
        Number of candidate modifications classified.
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
        self._adapter = isinstance(proba_fn, ClassifierAdapter)
        self.base = X_target
        self.batch_bytes = int(batch_bytes)
        self.setup_seconds = 0.0
        self._all_rows = np.arange(X_target.shape[0])
        self._all_rows.flags.writeable = False  # shared by every candidate that changes every cell
        head = getattr(proba_fn, "linear_head", None) if linear else None
        head = head() if callable(head) else None
        self._head = head if head is not None and head.weight.shape[1] == X_target.shape[1] else None
        self._lin0: dict | None = None  # the unmodified cells' float64 logits and bounds (any modification)
        self._set_values(V)
        P = np.asarray(proba_fn(X_target))
        self.orig_proba = P
        self.n_classes = P.shape[1]
        self.orig_types = P.argmax(axis=1)
        call, score, counts = cluster_call(self.orig_types, self.n_classes)
        self.orig_call, self.orig_score, self.orig_counts = int(call), float(score), counts

    def _set_values(self, V: np.ndarray | Sequence[np.ndarray]) -> None:
        """Take the modified values ``V`` (and start the counters and caches that depend on them)."""
        Vs = [V] if isinstance(V, np.ndarray) and V.ndim == 2 else list(V)
        self.Vs = [np.ascontiguousarray(v, dtype=self.base.dtype) for v in Vs]
        self.V = self.Vs[0]
        if self.base.shape != self.V.shape:
            msg = f"Modified values have shape {self.V.shape}, expected {self.base.shape}."
            raise ValueError(msg)
        self.n_evaluated = 0
        self.n_exact_rows = 0  # cells of linear evaluations too close to call, classified by the classifier
        self._buf: np.ndarray | None = None
        self._lin: dict | None = None  # float64 logits and error bounds, built at the first stacked evaluation
        self._lin_recent: list[tuple[int, np.ndarray, np.ndarray]] = []  # (modification, gene mask, [H; beta])
        # cells whose value already equals the modified value: their row does not change
        self._eq = [self.base == v for v in self.Vs]
        self._eq_any = [e.any(axis=0) for e in self._eq]
        # modifications with one value per gene (percentiles, aberrant, fixed): fill from a single row
        self._rows1 = [v[0] if (v == v[0]).all() else None for v in self.Vs]

    def with_values(self, V: np.ndarray | Sequence[np.ndarray]) -> ClusterOracle:
        """The same cells and classifier under other modified values.

        The unmodified call and the unmodified cells' logits (for the linear update) are reused, not recomputed;
        the new oracle has its own counters (the classifier's call counter is the same object).
        """
        new = object.__new__(ClusterOracle)
        new.__dict__.update(self.__dict__)
        new._set_values(V)
        new.setup_seconds = 0.0
        return new

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
        return self.evaluate_many([self.assignment_genes(a) for a in assignments], exact_all=True)

    def _pairs(self, cand) -> list[tuple[np.ndarray, int]]:
        if isinstance(cand, list):
            return [(np.asarray(g, dtype=np.intp), m) for g, m in cand]
        return [(np.asarray(cand, dtype=np.intp), 0)]

    def _changed_rows(self, pairs) -> np.ndarray:
        """Target cells whose row the candidate changes (the others keep their original types)."""
        keep = None
        for genes, m in pairs:
            if len(genes) == 0:
                continue
            if not self._eq_any[m][genes].all():  # some gene changes every cell
                return self._all_rows
            e = self._eq[m][:, genes].all(axis=1)
            keep = e if keep is None else keep & e
        return self._all_rows if keep is None else np.flatnonzero(~keep)

    def _changed_rows_many(self, pairs_list: Sequence[list]) -> list[np.ndarray]:
        """:meth:`_changed_rows` of many candidates; those with one modification and equal gene counts at once."""
        out: list = [None] * len(pairs_list)
        groups: dict[tuple[int, int], list[int]] = {}
        for j, pairs in enumerate(pairs_list):
            if len(pairs) == 1 and len(pairs[0][0]):
                groups.setdefault((pairs[0][1], len(pairs[0][0])), []).append(j)
            else:
                out[j] = self._changed_rows(pairs)
        for (m, _), js in groups.items():
            genes = np.stack([pairs_list[j][0][0] for j in js])  # candidates x genes
            partial = self._eq_any[m][genes].all(axis=1)  # else some gene changes every cell
            for j in np.asarray(js)[~partial]:
                out[j] = self._all_rows
            if partial.any():
                keep = self._eq[m][:, genes[partial]].all(axis=2)  # cells x candidates: all values unchanged
                for i, j in enumerate(np.asarray(js)[partial]):
                    out[j] = np.flatnonzero(~keep[:, i])
        return out

    def _fill(self, blk: np.ndarray, pairs, rows: np.ndarray) -> None:
        """Write the candidate ``pairs``'s rows ``rows`` into ``blk``."""
        r = len(rows)
        contiguous = r > 0 and rows[-1] - rows[0] + 1 == r
        sel = slice(int(rows[0]), int(rows[0]) + r) if contiguous else rows

        def take(M, cols):
            return M[sel, cols] if contiguous else M[np.ix_(rows, cols)]

        def take_v(m, cols):
            row1 = self._rows1[m]
            return row1[cols] if row1 is not None else take(self.Vs[m], cols)

        if len(pairs) == 1 and 2 * len(pairs[0][0]) > self.n_genes:  # most genes modified: start from V
            genes, m = pairs[0]
            keep = np.ones(self.n_genes, dtype=bool)
            keep[genes] = False
            keep = np.flatnonzero(keep)
            blk[...] = self._rows1[m] if self._rows1[m] is not None else self.Vs[m][sel]
            blk[:, keep] = take(self.base, keep)
            return
        blk[...] = self.base[sel]
        for genes, m in pairs:
            blk[:, genes] = take_v(m, genes)

    _LARGE = 64  # gene sets larger than this are updated from the closest known set
    _N_RECENT = 8  # known large sets kept

    @property
    def is_linear(self) -> bool:
        """Whether stacked evaluations use the linear update (a linear classifier and ``linear=True``)."""
        return self._head is not None

    def _linear_state(self) -> dict:
        """What the linear update needs, built once (arrays are classes or genes x cells).

        ``H0``: float64 logits of the unmodified cells. ``beta0``: per cell, ``sum_g |x_g| wmax_g +
        max |b|`` with ``wmax_g = max_k |w_kg|``, an upper bound on every ``sum_g |x_g w_kg| + |b_k|``
        (the size of the terms of a logit, which bounds its rounding error). Per modification, ``DA``
        stacks ``D = v - x`` over ``A = |v| - |x|`` (2 genes x cells, in the matrix's precision): one
        product with ``blk = [[w, 0], [0, wmax]]`` gives the change of the logits and of ``beta``.
        """
        if self._lin is None:
            head = self._head
            G, K, n = self.n_genes, head.weight.shape[0], self.n_cells
            if self._lin0 is None:  # the unmodified cells (shared with_values)
                w = head.weight
                wmax = np.abs(w).max(axis=0)
                bmax = float(np.abs(head.bias).max()) if len(head.bias) else 0.0
                XA = np.empty((2 * G, n), dtype=self.base.dtype)  # [x; |x|], genes x cells
                bt, abt = XA[:G], XA[G:]
                bt[...] = self.base.T
                np.abs(bt, out=abt)
                u_x = float(np.finfo(bt.dtype).eps) / 2 if bt.dtype.kind == "f" else 0.0
                H0 = w @ bt.astype(np.float64) + head.bias[:, None]  # (float64 both: a mixed product skips BLAS)
                # beta in the matrix's precision, enlarged by its relative rounding bound: still an upper bound
                beta0 = (wmax.astype(bt.dtype) @ abt).astype(np.float64) * (1 + 2 * G * u_x) + bmax
                self._lin0 = {"XA": XA, "bt": bt, "abt": abt, "Hb0": np.concatenate([H0, beta0[None]]), "wmax": wmax}
                self._lin0.update(bmax=bmax, u_x=u_x)
            bt, abt, Hb0, wmax = (self._lin0[k] for k in ("bt", "abt", "Hb0", "wmax"))
            bmax, u_x = self._lin0["bmax"], self._lin0["u_x"]
            blk = np.zeros((K + 1, 2 * G))
            blk[:K, :G], blk[K, G:] = head.weight, wmax
            mods = []
            for v, row1 in zip(self.Vs, self._rows1, strict=True):
                # one value per gene (percentiles, aberrant, fixed): a column that broadcasts over the cells, and
                # [v; |v|] for the stacked update
                vt = row1[:, None] if row1 is not None else np.ascontiguousarray(v.T)
                va = None if row1 is None else np.concatenate([row1, np.abs(row1)])
                mods.append({"v": vt, "va": va, "DA": None})
            n_terms = G + 1
            self._lin = {
                "blk": blk,
                "blk_t": np.ascontiguousarray(blk.T).astype(self.base.dtype),
                "Hb0": Hb0,
                "Hb0_x": Hb0.astype(self.base.dtype),
                "mods": mods,
                "K": K,
                "wmax": wmax,
                "bmax": bmax,
                # |fl(l) - l| <= gamma sum |terms| for the classifier's own dot products (any order)
                # (no bound once n u >= 1: coarse products, e.g. bfloat16, on many genes; every cell is then
                # left to the classifier)
                "gamma": _gamma(n_terms * head.unit_roundoff),
                # this update in float64: the unmodified logits plus the terms it adds
                "gamma64": 4 * n_terms * 2.0**-53,
                "u": head.unit_roundoff,
                # D and A are rounded to the matrix's precision: |error| <= u_x (|v| + |x|) per term; stacked
                # updates (at most 2 _LARGE terms, weights rounded to it) are summed in that precision too, and
                # their logits rounded to it
                "u_x": u_x + (2 * self._LARGE + 4) * u_x,
            }
            st = self._lin
            # the guard's bound on |computed - exact| of a logit: a beta + b beta0 (see _linear_guard)
            st["bound_a"] = st["gamma"] + st["gamma64"] + st["u_x"] + 8 * st["u"]
            st["bound_b"] = 2 * st["gamma64"] + st["u_x"]
            # the unmodified cells' types and slack under the guard: a change whose spread (largest minus smallest
            # change of a logit) plus 2.2 a (increase of beta) stays below the slack keeps the type certain
            H0, beta0 = st["Hb0"][:K], st["Hb0"][K]
            t0 = H0.argmax(axis=0)
            second = np.where(np.arange(K)[:, None] == t0, -np.inf, H0).max(axis=0)
            slack0 = H0.max(axis=0) - second - 2.2 * (st["bound_a"] + st["bound_b"]) * beta0 - 1e-5
            slack0[~(slack0 > 0)] = -np.inf
            st["t0"], st["slack0"] = t0, slack0
        return self._lin

    def _mod_da(self, m: int) -> np.ndarray:
        """``DA = [v - x; |v| - |x|]`` of modification ``m`` (genes x cells, the matrix's precision), built once.

        Each term is rounded once: ``|error| <= u_x (|v| + |x|)``. The stacked update of a modification with one
        value per gene does without it: ``[w; wmax] [v; |v|] - [w; wmax] [x; |x|]``, whose rounding (of the two
        products and their difference) is within the same ``u_x`` allowance per term ``|w| (|v| + |x|)``.
        """
        mod = self._linear_state()["mods"][m]
        if mod["DA"] is None:
            G = self.n_genes
            bt, abt = self._lin0["bt"], self._lin0["abt"]
            DA = np.empty((2 * G, self.n_cells), dtype=self.base.dtype)
            np.subtract(mod["v"], bt, out=DA[:G])
            np.subtract(np.abs(mod["v"]), abt, out=DA[G:])
            mod["DA"] = DA
        return mod["DA"]

    def _linear_full(self, m: int) -> np.ndarray:
        """``[H; beta]`` of the cells with every gene modified by modification ``m`` (built once)."""
        st = self._linear_state()
        mod = st["mods"][m]
        if "Hb" not in mod:
            head, K, vt = self._head, st["K"], mod["v"].astype(np.float64)
            Hb = np.empty((K + 1, self.n_cells))
            Hb[:K] = head.weight @ vt + head.bias[:, None]
            Hb[K] = st["wmax"] @ np.abs(vt) + st["bmax"]
            mod["Hb"] = Hb
        return mod["Hb"]

    def _linear_rows(self, pairs, sel) -> tuple[np.ndarray, np.ndarray | float]:
        """Float64 ``[H; beta]`` (classes + 1 x cells) of one candidate's cells ``sel`` (a slice or indices).

        A large candidate with one modification starts from whichever known gene set differs from its
        own in the fewest genes: none, all, or one of the last large candidates (searches that reduce or grow
        a set a few genes at a time). Also returns, per cell, the rounding error such a start adds beyond what
        :meth:`_linear_guard` allows for the candidate's own terms (0 for a sum from the unmodified logits): the
        terms of genes not in the candidate (added, then taken out again, or in the fully modified logits) are
        not part of its ``beta``.
        """
        st = self._linear_state()
        G, blk = self.n_genes, st["blk"]
        full = isinstance(sel, slice) and sel.start == 0 and sel.stop == self.n_cells

        def update(DA, genes, cells=sel):
            cols = np.concatenate([genes, genes + G])
            return blk[:, cols] @ (DA[cols] if full or cells is None else DA[cols][:, cells])

        if len(pairs) == 1 and len(pairs[0][0]) > self._LARGE:  # on all cells: the result is kept
            genes, m = pairs[0]
            DA = self._mod_da(m)
            mask = np.zeros(G, dtype=bool)
            mask[genes] = True
            n_in = int(mask.sum())
            best, best_cost = None, min(n_in, G - n_in)
            for entry in self._lin_recent:
                if entry[0] == m:
                    cost = int(np.count_nonzero(mask != entry[1]))
                    if cost < best_cost:
                        best, best_cost = entry, cost
            # a product over genes S has error <= gamma64 size(S) in float64, plus the rounding of D = v - x to the
            # matrix's precision (u_x size(S)) unless it cancels; each array sum rounds by <= 2^-53 of its terms
            per_term = st["u_x"] + st["gamma64"]
            if best is not None:
                add, drop = np.flatnonzero(mask & ~best[1]), np.flatnonzero(best[1] & ~mask)
                Hb = best[2] + update(DA, add, None) - update(DA, drop, None)
                moved = self._term_sizes(add, m) + self._term_sizes(drop, m)
                size = best[4] + moved
                err = best[3] + per_term * moved + 2 * 2.0**-53 * size
            elif n_in <= G - n_in:
                Hb = st["Hb0"] + update(DA, np.flatnonzero(mask), None)
                size, err = st["Hb0"][-1] + self._term_sizes(np.flatnonzero(mask), m), 0.0
            else:
                rest = np.flatnonzero(~mask)
                Hb_full = self._linear_full(m)
                Hb = Hb_full - update(DA, rest, None)
                moved = self._term_sizes(rest, m)
                size = Hb_full[-1] + moved  # (the fully modified beta bounds the full logits' terms)
                err = st["gamma64"] * Hb_full[-1] + per_term * moved + 2 * 2.0**-53 * size
            self._lin_recent.append((m, mask, Hb, err, size))
            del self._lin_recent[: -self._N_RECENT]
            if full:
                return Hb, err
            return Hb[:, sel], (err if np.isscalar(err) else err[sel])
        Hb = st["Hb0"][:, sel].copy()
        for genes, m in pairs:
            if len(genes):
                Hb += update(self._mod_da(m), genes)
        return Hb, 0.0

    def _term_sizes(self, genes: np.ndarray, m: int) -> np.ndarray:
        """Per cell, ``sum_g wmax_g (|v_g| + |x_g|)`` over ``genes`` (bounds the size of their terms in any logit)."""
        st = self._linear_state()
        v = st["mods"][m]["v"]
        wmax = st["wmax"][genes]
        x = wmax @ self._lin0["abt"][genes].astype(np.float64)
        vv = wmax @ np.abs(v[genes].astype(np.float64))  # (one value per gene: a single column, broadcast)
        return (x + vv) * 1.01  # (their own rounding, with room)

    def _linear_batch(self, m: int, gene_sets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-cell types and too-close flags (candidates x cells) of candidates that modify ``gene_sets`` with ``m``.

        ``gene_sets`` is candidates x genes (equal sizes); one stacked product gives the change of ``[H; beta]``
        (candidates x classes + 1 x cells). A cell whose change cannot use up its unmodified slack keeps its
        unmodified type; only candidates with other cells go through :meth:`_linear_guard`.
        """
        st = self._linear_state()
        K, n = st["K"], self.n_cells
        cols = np.concatenate([gene_sets, gene_sets + self.n_genes], axis=1)  # candidates x 2s
        # in the matrix's precision, like the guard that reads it: its rounding (|H| <= beta) is in the bound
        blk_c = st["blk_t"][cols].transpose(0, 2, 1)  # candidates x classes + 1 x 2s
        va = st["mods"][m]["va"]
        if va is None:
            upd = np.matmul(blk_c, self._mod_da(m)[cols])
        else:  # one value per gene: [w; wmax] ([v; |v|] - [x; |x|]), as the products of each part (see _mod_da)
            upd = np.matmul(blk_c, self._lin0["XA"][cols])
            np.subtract(np.matmul(blk_c, va[cols][:, :, None]), upd, out=upd)
        reach = upd[:, :K].max(axis=1)
        reach -= upd[:, :K].min(axis=1)
        reach += (2.2 * st["bound_a"]) * np.maximum(upd[:, K], 0)
        open_ = (reach >= st["slack0"]).any(axis=1)
        t = np.broadcast_to(st["t0"], (len(gene_sets), n))
        close = np.zeros((len(gene_sets), n), dtype=bool)
        if open_.any():
            HB = upd[open_]
            HB += st["Hb0_x"]
            t_open, close[open_] = self._linear_guard(HB, np.broadcast_to(st["Hb0"][K], (len(HB), n)))
            t = t.copy()
            t[open_] = t_open
        return t, close

    def _types_linear(self, jobs: Sequence[tuple[list, np.ndarray]]) -> tuple[list[np.ndarray], np.ndarray]:
        """Which of the given rows of each candidate are too close to call, and the per-class counts of the others.

        Each cell is typed from the linear update. The cells too close to call are left out of the counts
        (candidates x classes): :meth:`evaluate_many` counts them as not classified yet, and has the classifier
        classify them when the call depends on them.
        """
        st = self._linear_state()
        K, n = st["K"], self.n_cells
        sizes = np.array([len(rows) for _, rows in jobs], dtype=np.int64)
        ends = np.cumsum(sizes)
        types = np.empty(int(ends[-1]) if len(ends) else 0, dtype=np.int64)
        close = np.zeros(len(types), dtype=bool)
        # candidates that modify a few genes with one modification: grouped by (modification, number of genes)
        # and updated on every cell in stacked products (their rows picked after); the others one by one
        groups: dict[tuple[int, int], list[int]] = {}
        for j, (pairs, rows) in enumerate(jobs):
            if len(pairs) == 1 and len(rows) and 0 < len(pairs[0][0]) <= self._LARGE:
                groups.setdefault((pairs[0][1], len(pairs[0][0])), []).append(j)
            elif len(rows):
                groups.setdefault((-1, j), []).append(j)
        per = 4 * 2**20 // (2 * K * n * 8) + 1  # candidates per stacked product (a few MB of output)
        for (m, _), js in groups.items():
            for c0 in range(0, len(js), per):
                part = js[c0 : c0 + per]
                if m >= 0:
                    t, c = self._linear_batch(m, np.stack([jobs[j][0][0][0] for j in part]))
                else:
                    pairs, rows = jobs[part[0]]
                    r = len(rows)
                    sel = slice(int(rows[0]), int(rows[0]) + r) if rows[-1] - rows[0] + 1 == r else np.asarray(rows)
                    Hb, extra = self._linear_rows(pairs, sel)
                    t, c = self._linear_guard(Hb[None], st["Hb0"][K, sel][None], extra)
                for i, j in enumerate(part):
                    rows = jobs[j][1]
                    pick = slice(None) if m < 0 or len(rows) == n else rows  # (stacked products cover every cell)
                    types[ends[j] - sizes[j] : ends[j]] = t[i][pick]
                    close[ends[j] - sizes[j] : ends[j]] = c[i][pick]
        count = getattr(self.proba_fn, "count", None)
        if callable(count):
            count(len(types))
        # per-class counts of the certain cells: one bincount over (candidate, type) of all candidates
        owner = np.repeat(np.arange(len(jobs), dtype=np.int64) * K, sizes)
        counts = _class_counts(types, ~close, owner, len(jobs), K)
        return [close[e - r : e] for e, r in zip(ends, sizes, strict=True)], counts

    def _linear_guard(self, Hb: np.ndarray, beta0: np.ndarray, extra=0.0) -> tuple[np.ndarray, np.ndarray]:
        """Types (first argmax) and too-close-to-call flags from ``[H; beta]`` (candidates x classes + 1 x cells).

        ``extra``: a further bound on each logit's error, per cell (see :meth:`_linear_rows`).
        """
        st = self._linear_state()
        K = st["K"]
        H, beta = Hb[:, :K], Hb[:, K]
        top = H.max(axis=1)
        # the first argmax (np.argmax over a middle axis is several times slower): the largest weight K - k
        # among the classes k at the top
        first = np.equal(H, top[:, None]) * np.arange(K, 0, -1, dtype=np.int16)[None, :, None]
        t = K - first.max(axis=1)
        # a bound on |computed - exact| of every logit: the classifier's arithmetic, this update, the rounding of
        # D and A, and the softmax's subtraction of the largest logit (|logit| <= beta)
        bound = st["bound_a"] * beta + st["bound_b"] * beta0 + extra
        # too close to call (another class within twice the bound, with margin): the classifier's rounding could
        # reorder them, or its softmax tie them
        near = ~((top - 2.2 * bound - 1e-5)[:, None] > H)  # (NaN, from an infinite bound: near)
        return t, np.count_nonzero(near, axis=1) > 1

    # ------------------------------------------------------------------
    # one gene set at a time, updated incrementally (searches that grow a set: max-change)
    #
    # These track, per cell, the logits H, a bound per class B_k = sum_g |x_g w_kg| + |b_k| (the size of logit
    # k's terms) and the number z of nonzero values x_g, as one (2 classes + 1 x cells) array [H; B; z]. Logit
    # k's rounding error in the classifier is at most gamma_(z+1) B_k, whatever the order of its sums: a zero
    # product and an addition of an exact zero are exact, so each term meets at most z + 1 roundings (its
    # product, and an addition with each other nonzero term or the bias). With the update's own rounding, the
    # error is at most a(z) B_k + b beta0 (inc_a, inc_b below) -- tighter than the stacked path's single bound
    # per cell (gamma_(n_genes+1) max_k B_k), for twice the update's work, which a search asking about one set
    # at a time can afford.
    def _incremental_state(self) -> dict:
        st = self._linear_state()
        if "HB0" not in st:
            w, b = self._head.weight, self._head.bias
            K = st["K"]
            H0 = st["Hb0"][:K]
            B0 = np.abs(w) @ self._lin0["abt"].astype(np.float64) + np.abs(b)[:, None]  # (|x|, already built)
            st["HB0"] = np.concatenate([H0, B0, np.count_nonzero(self.base, axis=1).astype(np.float64)[None]])
            # D = v - x and A = |v| - |x| are rounded to the matrix's precision once (no stacked float32 sums):
            # |error| <= u_x0 (|v| + |x|) per term
            u_x0 = float(np.finfo(self.base.dtype).eps) / 2 if self.base.dtype.kind == "f" else 0.0
            st["inc_rest"] = st["gamma64"] + u_x0 + 8 * st["u"]
            st["inc_b"] = 2 * st["gamma64"] + u_x0
            st["e_b"] = 1.1 * st["inc_b"] * B0.max(axis=0)  # the beta0 part of every e_k
        return st

    def _inc_layout(self, st: dict, order: np.ndarray) -> None:
        """Store the update gene by gene in ``order`` (a permutation of all genes).

        Row ``3 s + j`` of a modification's ``DAZ`` is term ``j`` (``D``, ``A``, ``Z``) of the gene in slot ``s``,
        and column ``3 s + j`` of ``blk3`` its weights: one product ``blk3[:, cols] @ DAZ[cols]`` gives
        ``[dH; dB; dz]`` (float64 both: a mixed-precision product would skip BLAS), ``Z`` being the change of each
        value's being nonzero. Genes in consecutive slots are read as slices, without a gather.
        """
        w = self._head.weight
        K, G, n = st["K"], self.n_genes, self.n_cells
        blk3 = np.zeros((2 * K + 1, G, 3))
        blk3[:K, :, 0], blk3[K : 2 * K, :, 1], blk3[2 * K, :, 2] = w[:, order], np.abs(w[:, order]), 1.0
        nz_t = (self.base != 0).T
        daz = []
        for m, mod in enumerate(st["mods"]):
            DAZ = np.empty((G, 3, n))
            DA = self._mod_da(m)
            DAZ[:, 0], DAZ[:, 1] = DA[order], DA[G + order]
            v_nz = mod["v"][order] != 0  # (a column per gene, or one value per gene that broadcasts)
            np.subtract(v_nz, nz_t[order], out=DAZ[:, 2], dtype=np.float64)
            daz.append(DAZ.reshape(3 * G, n))
        slot = np.empty(G, dtype=np.intp)
        slot[order] = np.arange(G)
        st["blk3"], st["DAZ"], st["slot"] = blk3.reshape(2 * K + 1, 3 * G), daz, slot

    def linear_layout(self, genes: np.ndarray) -> None:
        """Lay the update out so that every list of the interleaved halving of ``genes`` is read as a slice.

        Max-change splits a list ``lst`` into ``lst[0::2]`` and ``lst[1::2]``, so each list it asks about is
        ``genes[r::2**d]``: the positions ``i`` in ``genes`` with ``i = r (mod 2**d)``. Sorted by their bit-reversed
        value, those positions are consecutive. ``genes`` (distinct) come first in that order, the other genes after.
        """
        st = self._incremental_state()
        genes = np.asarray(genes, dtype=np.intp)
        n_bits = max(int(len(genes) - 1).bit_length(), 1)
        pos = np.arange(len(genes))
        rev = np.zeros(len(genes), dtype=np.int64)
        for bit in range(n_bits):
            rev |= ((pos >> bit) & 1) << (n_bits - 1 - bit)
        rest = np.ones(self.n_genes, dtype=bool)
        rest[genes] = False
        order = np.concatenate([genes[np.argsort(rev, kind="stable")], np.flatnonzero(rest)])
        if "slot" not in st or not np.array_equal(order, np.argsort(st["slot"])):
            self._inc_layout(st, order)

    def _inc_a(self, z: np.ndarray) -> np.ndarray:
        """Per cell, the coefficient ``a`` of ``B_k`` in the bound on a logit's error, for ``z`` nonzero values."""
        st = self._incremental_state()
        return _gamma((z + 1) * st["u"]) + st["inc_rest"]  # z values and the bias: at most z + 1 roundings per term

    def linear_start(self) -> np.ndarray:
        """Float64 ``[H; B; z]`` (2 classes + 1 x cells) of the unmodified cells, the start of :meth:`linear_delta` sums."""
        return self._incremental_state()["HB0"]

    def linear_delta(self, genes: np.ndarray, m: int = 0) -> np.ndarray:
        """Float64 change of ``[H; B; z]`` (2 classes + 1 x cells) when the distinct ``genes`` take modification ``m``.

        ``linear_start()`` plus the deltas of disjoint gene sets is ``[H; B; z]`` of their union, within the
        float64 rounding the guard allows for (it bounds the update's terms, whatever their order). Genes in
        consecutive slots of the layout (:meth:`linear_layout`) are read as slices.
        """
        st = self._incremental_state()
        if "slot" not in st:  # no layout asked for: gene order
            self._inc_layout(st, np.arange(self.n_genes))
        s = st["slot"][np.asarray(genes, dtype=np.intp)]
        if not len(s):
            return np.zeros_like(st["HB0"])
        a = int(s.min())
        b = a + len(s)
        if int(s.max()) == b - 1:  # distinct: exactly the slots a..b-1
            return st["blk3"][:, 3 * a : 3 * b] @ st["DAZ"][m][3 * a : 3 * b]
        cols = (3 * s[:, None] + np.arange(3)).ravel()
        return st["blk3"][:, cols] @ st["DAZ"][m][cols]

    def unchanged(self, genes: np.ndarray, m: int = 0) -> np.ndarray | None:
        """Per cell, whether modifying ``genes`` leaves its row as it is (None: every row changes)."""
        genes = np.asarray(genes, dtype=np.intp)
        if not len(genes):
            return np.ones(self.n_cells, dtype=bool)
        if not self._eq_any[m][genes].all():
            return None
        return self._eq[m][:, genes].all(axis=1)

    def linear_base(self, HB: np.ndarray) -> LinearBase:
        """The certified per-cell types of a gene set from its ``[H; B; z]``: a base for :meth:`linear_flipped`."""
        st = self._incremental_state()
        K = st["K"]
        a = self._inc_a(HB[2 * K])
        t, slack = self._slack(HB, (1.1 * a) * HB[K : 2 * K] + st["e_b"])
        slack[~(slack > 0)] = -np.inf  # (NaN, from an infinite bound: not certain either)
        sure = slack > 0
        return LinearBase(
            HB,
            t,
            slack,
            np.bincount(t[sure], minlength=K),
            float(a.max()),
            float(HB[2 * K].max()),
            float(HB[K : 2 * K].max()),
        )

    def _slack(self, HB: np.ndarray, err: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First-argmax types of ``H`` and ``H_t - e_t - max_(k != t) (H_k + e_k) - 1e-5`` (``err``: the ``e_k``)."""
        H = HB[: self._lin["K"]]
        t = H.argmax(axis=0)
        idx = np.arange(H.shape[1])
        low = H[t, idx] - err[t, idx]
        up = H + err
        up[t, idx] = -np.inf
        return t, low - up.max(axis=0) - 1e-5

    def linear_flipped(
        self,
        bases: Sequence[LinearBase],
        delta: np.ndarray,
        same: Sequence[np.ndarray | None],
        genes: Sequence[Callable[[], np.ndarray]],
        m: int = 0,
        *,
        deferred: list | None = None,
    ) -> np.ndarray:
        """Whether the call flips, for candidates that add one gene set's change to known gene sets (one evaluation).

        Candidate ``j`` is ``bases[j]`` (:meth:`linear_base`) plus ``delta`` (:meth:`linear_delta` of the added
        genes); ``same[j]`` are its :meth:`unchanged` cells (they keep their original types) and ``genes[j]()``
        returns its whole gene set. A cell whose change cannot use up its slack keeps the base's type; the others
        are typed from their new logits; cells too close to call are classified by the classifier (one stacked
        call for all candidates) only where the answer depends on them, so every answer equals
        :meth:`evaluate_one`'s.

        With a ``deferred`` list, those cells are not classified now: the answer is a guess from their float64
        logits (exact but for the classifier's rounding, so almost always right), and ``(j, job, counts)`` is
        appended to the list for :meth:`linear_resolve`, which gives the exact answers later.
        """
        st = self._incremental_state()
        K, orig, n = st["K"], self.orig_call, self.n_cells
        dH = delta[:K]
        # The gap between two logits changes by at most the spread of their changes; an error bound
        # e_k = 1.1 (a B_k + b beta0) grows by at most 1.1 ((a' - a) B'_k + a dB_k), where a' - a <= a(Z) - a(Z - dz)
        # (a is convex in z; Z the largest z + dz, dz the largest increase of z) and B'_k <= max B + max dB
        dz = max(float(delta[2 * K].max()), 0.0)
        z_top = max(b.z_max for b in bases) + dz
        a_top = self._inc_a(z_top)  # a of every candidate cell is at most this
        grow = a_top - self._inc_a(z_top - dz) if dz else 0.0
        dB = delta[K : 2 * K].max(axis=0)
        reach = dH.max(axis=0)
        reach -= dH.min(axis=0)
        reach += (2.2 * max(b.a_max for b in bases)) * np.maximum(dB, 0)
        reach += 2.2 * grow * (max(b.B_max for b in bases) + max(float(dB.max()), 0.0))
        if not np.isfinite(a_top):  # no rounding bound (coarse products): nothing is certain
            reach[:] = np.inf
        flipped = np.zeros(len(bases), dtype=bool)
        todo = []
        for j, (base, s) in enumerate(zip(bases, same, strict=True)):
            t = base.types
            unsure = reach >= base.slack
            if s is None:  # the base's certain cells, less the unsure ones (uncertain cells are all unsure)
                u = np.flatnonzero(unsure)
                counts = base.counts - np.bincount(t[u[base.slack[u] > 0]], minlength=K)
            else:  # unchanged rows keep their original types, exactly
                unsure &= ~s
                u = np.flatnonzero(unsure)
                t = np.where(s, self.orig_types, t)
                counts = np.bincount(t, minlength=K) - np.bincount(t[u], minlength=K)
            decided = _decided(counts.tolist(), len(u), orig)  # often settled whatever the unsure cells are
            if decided is None:
                HBu = base.HB[:, u] + delta[:, u]
                tu, su = self._slack(HBu, (1.1 * a_top) * HBu[K : 2 * K] + st["e_b"][u])
                sure = su > 0
                counts += np.bincount(tu[sure], minlength=K)
                close = u[~sure]
                decided = _decided(counts.tolist(), len(close), orig)
                if decided is None:
                    todo.append((j, counts, close))
                    if deferred is not None:
                        guess = counts + np.bincount(tu[~sure], minlength=K)
                        flipped[j] = int(guess.argmax()) != orig
                    continue
            flipped[j] = decided
        count = getattr(self.proba_fn, "count", None)
        if callable(count):
            count(n * len(bases))
        self.n_evaluated += len(bases)
        if todo:
            items = [(j, ([(np.asarray(genes[j](), dtype=np.intp), m)], rows), counts) for j, counts, rows in todo]
            if deferred is not None:
                deferred.extend(items)
            else:
                for (j, _, _), f in zip(items, self.linear_resolve(items), strict=True):
                    flipped[j] = f
        return flipped

    def linear_resolve(self, items: Sequence[tuple]) -> list[bool]:
        """Exact answers of the candidates :meth:`linear_flipped` deferred, ``[(j, job, counts), ...]``: one stacked call."""
        if not items:
            return []
        K, orig = self.n_classes, self.orig_call
        out = []
        for item, t in zip(items, self._types_stacked([item[1] for item in items]), strict=True):
            out.append(int((item[2] + np.bincount(t, minlength=K)).argmax()) != orig)
            self.n_exact_rows += len(t)
        return out

    def _types_stacked(self, jobs: Sequence[tuple[list, np.ndarray]]) -> list[np.ndarray]:
        """Per-cell types of the given rows of each candidate, ``jobs = [(pairs, rows), ...]``, in stacked calls."""
        g = self.n_genes
        budget = max(self.batch_bytes // (g * self.base.itemsize), 1)  # rows per call
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
                self._buf = np.zeros((max(padded, budget + block), g), dtype=self.base.dtype)
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
        gm = self._uniform_genes(cands)
        if gm is not None:  # linear, one modification, one size, every cell changed: no per-candidate bookkeeping
            with _one_blas_thread():
                counts, close_all = self._linear_uniform(gm)
            rest = np.count_nonzero(close_all, axis=1)
        else:
            counts, rest, pairs, later = self._counts_many(cands, exact_all, single)
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
            more = self._types_stacked(jobs)
            counts[todo] += _stacked_counts(more, K)
            if self._head is not None:
                self.n_exact_rows += int(rest[todo].sum())
        full = rest == 0
        full[todo] = True
        calls = counts.argmax(axis=1)
        calls[sure_keep & ~full] = orig
        flipped = calls != orig
        scores = np.where(full, counts[np.arange(m), calls] / n, np.nan)
        self.n_evaluated += m
        return calls, scores, flipped

    def _counts_many(self, cands: Sequence, exact_all: bool, single: np.ndarray) -> tuple:
        """Per-class counts of the cells typed so far, and how many are left, per candidate.

        Also returns what :meth:`evaluate_many` needs to type the rest later: the candidates' ``(genes,
        modification)`` pairs and each one's cells left.
        """
        n, K = self.n_cells, self.n_classes
        pairs = [self._pairs(c) for c in cands]
        changed = self._changed_rows_many(pairs)
        counts = np.tile(self.orig_counts, (len(cands), 1))
        for j, ch in enumerate(changed):  # unchanged cells keep their original types
            if len(ch) == n:
                counts[j] = 0
            elif len(ch):
                counts[j] -= np.bincount(self.orig_types[ch], minlength=K)
        if self._head is not None:
            # every changed cell typed by the linear update; cells too close to call are left for later
            with _one_blas_thread():
                close, sure_counts = self._types_linear(list(zip(pairs, changed, strict=True)))
            counts += sure_counts
            later = [ch[c] for ch, c in zip(changed, close, strict=True)]
        else:
            first = [
                len(ch)
                if exact_all or n < 8 or single[j]
                # enough changed cells for the original type to reach a strict majority
                else int(min(len(ch), max(0, n // 2 + 1 - (n - len(ch)))))
                for j, ch in enumerate(changed)
            ]
            types = self._types_stacked([(p, ch[:f]) for p, ch, f in zip(pairs, changed, first, strict=True)])
            counts += _stacked_counts(types, K)
            later = [ch[f:] for ch, f in zip(changed, first, strict=True)]
        return counts, np.array([len(r) for r in later]), pairs, later

    def _uniform_genes(self, cands: Sequence) -> np.ndarray | None:
        """The candidates as one candidates x genes array, when :meth:`_linear_uniform` can answer them all.

        That is when the update is linear and every candidate is a gene array of one size (at most ``_LARGE``,
        the first modification) that changes every cell; else None.
        """
        if self._head is None or not len(cands):
            return None
        first = cands[0]
        if not isinstance(first, np.ndarray) or first.ndim != 1 or not 0 < len(first) <= self._LARGE:
            return None
        shape = first.shape
        if any(not isinstance(c, np.ndarray) or c.shape != shape for c in cands):
            return None
        gm = np.stack(cands)
        if gm.dtype.kind not in "iu" or self._eq_any[0][gm].all(axis=1).any():  # (some cells may keep their row)
            return None
        return gm.astype(np.intp, copy=False)

    def _linear_uniform(self, gm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-class counts of the certain cells and the too-close flags of the candidates ``gm``.

        ``gm`` comes from :meth:`_uniform_genes`; the counts are candidates x classes, the flags candidates x cells,
        from stacked products (:meth:`_linear_batch`).
        """
        K, n = self._linear_state()["K"], self.n_cells
        per = 4 * 2**20 // (2 * K * n * 8) + 1  # candidates per stacked product (a few MB of output)
        types = np.empty((len(gm), n), dtype=np.int64)
        close = np.empty((len(gm), n), dtype=bool)
        for c0 in range(0, len(gm), per):
            types[c0 : c0 + per], close[c0 : c0 + per] = self._linear_batch(0, gm[c0 : c0 + per])
        count = getattr(self.proba_fn, "count", None)
        if callable(count):
            count(types.size)
        counts = _class_counts(types, ~close, np.arange(len(gm), dtype=np.int64)[:, None] * K, len(gm), K)
        return counts, close
