"""The linear engine: a linear classifier's logits of modified cells from the unmodified logits plus the change.

No modified matrix is formed: a candidate's float64 logits are the unmodified logits plus the modified
genes' change times their weights (or a recently evaluated set's logits plus the genes that differ,
whichever touches fewer genes). A cell's type is taken from them only when the gap between its top logit
and every other logit exceeds a bound on the rounding error of the classifier's own arithmetic
(``gamma_n`` times the size of the logit's terms, bounded per cell by
``beta = sum_g |x_g| max_k |w_kg| + max |b|``), plus the update's own rounding and the softmax's margin
(:mod:`._bounds`). Cells closer than that are left to the classifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ._bounds import (
    F64_U,
    GUARD,
    LARGE,
    MARGIN,
    N_RECENT,
    SOFTMAX_ULPS,
    STACKED_PRODUCT_BYTES,
    TERM_SIZE_ROOM,
    UPDATE_ULPS,
    gamma,
    unit_roundoff,
)
from ._counts import class_counts
from ._engine import CellValues, Job, Pairs, RowTypes

__all__ = ["LinearBounds", "LinearEngine", "ModTerms", "RecentSet", "UnmodifiedLogits"]


@dataclass(frozen=True)
class UnmodifiedLogits:
    """The unmodified cells' float64 logits and term bounds (any modification: shared by ``with_values``).

    Attributes
    ----------
    x_abs
        ``(2 n_genes, n_cells)`` ``[x; |x|]``, genes x cells, in the matrix's precision.
    h_beta
        ``(n_classes + 1, n_cells)`` float64 ``[H0; beta0]``: the logits, and per cell
        ``beta0 = sum_g |x_g| w_max_g + b_max`` (enlarged by its own rounding: an upper bound on the size
        of every logit's terms).
    w_max
        ``(n_genes,)`` ``max_k |w_kg|``.
    b_max
        ``max_k |b_k|``.
    u_matrix
        Unit roundoff of the matrix's dtype (0 for integers).

    """

    x_abs: np.ndarray
    h_beta: np.ndarray
    w_max: np.ndarray
    b_max: float
    u_matrix: float

    @classmethod
    def build(cls, head, base: np.ndarray) -> UnmodifiedLogits:
        """From the classifier's linear ``head`` and the unmodified cells ``base``."""
        G, n = base.shape[1], base.shape[0]
        w = head.weight
        w_max = np.abs(w).max(axis=0)
        b_max = float(np.abs(head.bias).max()) if len(head.bias) else 0.0
        x_abs = np.empty((2 * G, n), dtype=base.dtype)  # [x; |x|], genes x cells
        bt, abt = x_abs[:G], x_abs[G:]
        bt[...] = base.T
        np.abs(bt, out=abt)
        u_x = unit_roundoff(bt.dtype)
        H0 = w @ bt.astype(np.float64) + head.bias[:, None]  # (float64 both: a mixed product skips BLAS)
        # beta in the matrix's precision (one product of G nonnegative terms: relative error <= gamma_G(u_x), which is
        # <= 2 G u_x while G u_x <= 1/2), enlarged by that bound: still an upper bound
        beta0 = (w_max.astype(bt.dtype) @ abt).astype(np.float64) * (1 + 2 * G * u_x) + b_max
        return cls(x_abs, np.concatenate([H0, beta0[None]]), w_max, b_max, u_x)

    @property
    def x_t(self) -> np.ndarray:
        """``x``, genes x cells."""
        return self.x_abs[: len(self.w_max)]

    @property
    def abs_x_t(self) -> np.ndarray:
        """``|x|``, genes x cells."""
        return self.x_abs[len(self.w_max) :]


@dataclass(frozen=True)
class ModTerms:
    """One modification's values, laid out for the updates.

    Attributes
    ----------
    v_t
        Genes x cells modified values, or a ``(n_genes, 1)`` column when every cell takes one value per gene.
    v_abs
        ``[v; |v|]`` (``2 n_genes``) for a modification with one value per gene, else None.

    """

    v_t: np.ndarray
    v_abs: np.ndarray | None


@dataclass(frozen=True)
class LinearBounds:
    """The linear engine's weights and rounding bounds, built once per oracle.

    Attributes
    ----------
    w_block
        ``(n_classes + 1, 2 n_genes)`` float64 ``[[w, 0], [0, w_max]]``: one product with ``[D; A]`` (``D = v - x``,
        ``A = |v| - |x|``) gives the change of ``[H; beta]``.
    w_block_t
        ``w_block`` transposed, in the matrix's precision (the stacked products).
    h_beta0_x
        The unmodified ``[H0; beta0]`` in the matrix's precision.
    n_classes
        Number of classes ``K``.
    gamma
        ``gamma_(n_genes + 1)`` of the classifier's unit roundoff: ``|fl(l) - l| <= gamma * sum |terms|`` for its
        dot products in any order (infinite when ``n u >= 1``, e.g. bfloat16 products on many genes: every cell
        is then left to the classifier).
    gamma_update
        The same for this engine's float64 update (``UPDATE_ULPS`` per term).
    u_classifier
        The classifier's unit roundoff.
    u_stacked
        Per-term rounding of ``D`` and ``A`` in the matrix's precision, and of the stacked products summed and
        rounded in it (at most ``2 LARGE`` terms).
    coef_beta, coef_beta0
        The bound on ``|computed - exact|`` of a logit is ``coef_beta beta + coef_beta0 beta0``: the classifier's
        arithmetic, the update's, the rounding of ``D`` and ``A`` and the softmax's shift.
    types0
        The unmodified cells' types (first argmax of ``H0``).
    slack0
        How far each unmodified cell's top logit is from being too close to call (``-inf`` where it is): a change
        whose spread plus ``GUARD coef_beta`` times its increase of ``beta`` stays below it keeps the type certain.

    """

    w_block: np.ndarray
    w_block_t: np.ndarray
    h_beta0_x: np.ndarray
    n_classes: int
    gamma: float
    gamma_update: float
    u_classifier: float
    u_stacked: float
    coef_beta: float
    coef_beta0: float
    types0: np.ndarray
    slack0: np.ndarray

    @classmethod
    def build(cls, head, unmod: UnmodifiedLogits, dtype: np.dtype) -> LinearBounds:
        """From the classifier's linear ``head`` and the unmodified logits, for a matrix of ``dtype``."""
        K, G = head.weight.shape[0], len(unmod.w_max)
        w_block = np.zeros((K + 1, 2 * G))
        w_block[:K, :G], w_block[K, G:] = head.weight, unmod.w_max
        n_terms = G + 1
        g = gamma(n_terms * head.unit_roundoff)
        g64 = UPDATE_ULPS * n_terms * F64_U
        u = head.unit_roundoff
        u_x = unmod.u_matrix
        u_stacked = u_x + (2 * LARGE + 4) * u_x
        coef_beta = g + g64 + u_stacked + SOFTMAX_ULPS * u
        coef_beta0 = 2 * g64 + u_stacked
        H0, beta0 = unmod.h_beta[:K], unmod.h_beta[K]
        t0 = H0.argmax(axis=0)
        second = np.where(np.arange(K)[:, None] == t0, -np.inf, H0).max(axis=0)
        slack0 = H0.max(axis=0) - second - GUARD * (coef_beta + coef_beta0) * beta0 - MARGIN
        slack0[~(slack0 > 0)] = -np.inf
        return cls(
            w_block=w_block,
            w_block_t=np.ascontiguousarray(w_block.T).astype(dtype),
            h_beta0_x=unmod.h_beta.astype(dtype),
            n_classes=K,
            gamma=g,
            gamma_update=g64,
            u_classifier=u,
            u_stacked=u_stacked,
            coef_beta=coef_beta,
            coef_beta0=coef_beta0,
            types0=t0,
            slack0=slack0,
        )


@dataclass(frozen=True)
class RecentSet:
    """A large gene set evaluated lately: a start for the next one (:meth:`LinearEngine.rows`).

    Attributes
    ----------
    modification
        Its modification index.
    mask
        ``(n_genes,)`` its genes.
    h_beta
        Its float64 ``[H; beta]`` on every cell.
    err
        Per cell (or 0), the rounding its start added beyond what the guard allows for its own terms.
    size
        Per cell, a bound on the size of every term its computation added.

    """

    modification: int
    mask: np.ndarray
    h_beta: np.ndarray
    err: np.ndarray | float
    size: np.ndarray


class LinearEngine:
    """Types rows of candidates from a linear classifier's updated logits (see the module docstring).

    Parameters
    ----------
    head
        The classifier's :class:`~scadversarial.attacks._protocol.LinearHead`.
    cells
        The target cells and their modified values.
    unmod
        The unmodified logits (shared by oracles of the same cells).
    count
        The classifier's row counter (``count(n_rows)``), or None: typed rows count as classified.

    """

    def __init__(self, head, cells: CellValues, unmod: UnmodifiedLogits, count=None) -> None:
        self.head = head
        self.cells = cells
        self.unmod = unmod
        self.bounds = LinearBounds.build(head, unmod, cells.base.dtype)
        self.mods = tuple(
            # one value per gene: a column that broadcasts over the cells, and [v; |v|] for the stacked update
            ModTerms(row1[:, None], np.concatenate([row1, np.abs(row1)]))
            if row1 is not None
            else ModTerms(np.ascontiguousarray(v.T), None)
            for v, row1 in zip(cells.values, cells.one_row, strict=True)
        )
        self._count = count
        # caches built on first use: per modification [D; A] and the fully modified [H; beta]; recent large sets
        self._da: list[np.ndarray | None] = [None] * len(self.mods)
        self._full: list[np.ndarray | None] = [None] * len(self.mods)
        self._recent: list[RecentSet] = []

    def da(self, m: int) -> np.ndarray:
        """``[v - x; |v| - |x|]`` of modification ``m`` (genes x cells, the matrix's precision), built once.

        Each term is rounded once: ``|error| <= u_x (|v| + |x|)``. The stacked update of a modification with one
        value per gene does without it: ``[w; w_max] [v; |v|] - [w; w_max] [x; |x|]``, whose rounding (of the two
        products and their difference) is within the same ``u_x`` allowance per term ``|w| (|v| + |x|)``.
        """
        if self._da[m] is None:
            G = self.cells.n_genes
            v = self.mods[m].v_t
            DA = np.empty((2 * G, self.cells.n_cells), dtype=self.cells.base.dtype)
            np.subtract(v, self.unmod.x_t, out=DA[:G])
            np.subtract(np.abs(v), self.unmod.abs_x_t, out=DA[G:])
            self._da[m] = DA
        return self._da[m]

    def _full_h_beta(self, m: int) -> np.ndarray:
        """``[H; beta]`` of the cells with every gene modified by modification ``m`` (built once)."""
        if self._full[m] is None:
            K, vt = self.bounds.n_classes, self.mods[m].v_t.astype(np.float64)
            Hb = np.empty((K + 1, self.cells.n_cells))
            Hb[:K] = self.head.weight @ vt + self.head.bias[:, None]
            Hb[K] = self.unmod.w_max @ np.abs(vt) + self.unmod.b_max
            self._full[m] = Hb
        return self._full[m]

    def _term_sizes(self, genes: np.ndarray, m: int) -> np.ndarray:
        """Per cell, ``sum_g w_max_g (|v_g| + |x_g|)`` over ``genes`` (bounds the size of their terms in any logit)."""
        v = self.mods[m].v_t
        wmax = self.unmod.w_max[genes]
        x = wmax @ self.unmod.abs_x_t[genes].astype(np.float64)
        vv = wmax @ np.abs(v[genes].astype(np.float64))  # (one value per gene: a single column, broadcast)
        return (x + vv) * TERM_SIZE_ROOM

    def rows(self, pairs: Pairs, sel) -> tuple[np.ndarray, np.ndarray | float]:
        """Float64 ``[H; beta]`` (classes + 1 x cells) of one candidate's cells ``sel`` (a slice or indices).

        A large candidate with one modification starts from whichever known gene set differs from its
        own in the fewest genes: none, all, or one of the last large candidates (searches that reduce or grow
        a set a few genes at a time). Also returns, per cell, the rounding error such a start adds beyond what
        :meth:`guard` allows for the candidate's own terms (0 for a sum from the unmodified logits): the
        terms of genes not in the candidate (added, then taken out again, or in the fully modified logits) are
        not part of its ``beta``.
        """
        bd = self.bounds
        G, blk, n = self.cells.n_genes, bd.w_block, self.cells.n_cells
        h_beta0 = self.unmod.h_beta
        full = isinstance(sel, slice) and sel.start == 0 and sel.stop == n

        def update(DA, genes, cells=sel):
            cols = np.concatenate([genes, genes + G])
            return blk[:, cols] @ (DA[cols] if full or cells is None else DA[cols][:, cells])

        if len(pairs) == 1 and len(pairs[0][0]) > LARGE:  # on all cells: the result is kept
            genes, m = pairs[0]
            DA = self.da(m)
            mask = np.zeros(G, dtype=bool)
            mask[genes] = True
            n_in = int(mask.sum())
            best, best_cost = None, min(n_in, G - n_in)
            for entry in self._recent:
                if entry.modification == m:
                    cost = int(np.count_nonzero(mask != entry.mask))
                    if cost < best_cost:
                        best, best_cost = entry, cost
            # a product over genes S has error <= gamma_update size(S) in float64, plus the rounding of D = v - x to
            # the matrix's precision (u_stacked size(S)) unless it cancels; each array sum rounds by <= F64_U of its
            # terms
            per_term = bd.u_stacked + bd.gamma_update
            if best is not None:
                add, drop = np.flatnonzero(mask & ~best.mask), np.flatnonzero(best.mask & ~mask)
                Hb = best.h_beta + update(DA, add, None) - update(DA, drop, None)
                moved = self._term_sizes(add, m) + self._term_sizes(drop, m)
                size = best.size + moved
                err = best.err + per_term * moved + 2 * F64_U * size
            elif n_in <= G - n_in:
                Hb = h_beta0 + update(DA, np.flatnonzero(mask), None)
                size, err = h_beta0[-1] + self._term_sizes(np.flatnonzero(mask), m), 0.0
            else:
                rest = np.flatnonzero(~mask)
                Hb_full = self._full_h_beta(m)
                Hb = Hb_full - update(DA, rest, None)
                moved = self._term_sizes(rest, m)
                size = Hb_full[-1] + moved  # (the fully modified beta bounds the full logits' terms)
                err = bd.gamma_update * Hb_full[-1] + per_term * moved + 2 * F64_U * size
            self._recent.append(RecentSet(m, mask, Hb, err, size))
            del self._recent[:-N_RECENT]
            if full:
                return Hb, err
            return Hb[:, sel], (err if np.isscalar(err) else err[sel])
        Hb = h_beta0[:, sel].copy()
        for genes, m in pairs:
            if len(genes):
                Hb += update(self.da(m), genes)
        return Hb, 0.0

    def batch(self, m: int, gene_sets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-cell types and too-close flags (candidates x cells) of candidates that modify ``gene_sets`` with ``m``.

        ``gene_sets`` is candidates x genes (equal sizes); one stacked product gives the change of ``[H; beta]``
        (candidates x classes + 1 x cells). A cell whose change cannot use up its unmodified slack keeps its
        unmodified type; only candidates with other cells go through :meth:`guard`.
        """
        bd = self.bounds
        K, n = bd.n_classes, self.cells.n_cells
        cols = np.concatenate([gene_sets, gene_sets + self.cells.n_genes], axis=1)  # candidates x 2s
        # in the matrix's precision, like the guard that reads it: its rounding (|H| <= beta) is in the bound
        blk_c = bd.w_block_t[cols].transpose(0, 2, 1)  # candidates x classes + 1 x 2s
        va = self.mods[m].v_abs
        if va is None:
            upd = np.matmul(blk_c, self.da(m)[cols])
        else:  # one value per gene: [w; w_max] ([v; |v|] - [x; |x|]), as the products of each part (see da)
            upd = np.matmul(blk_c, self.unmod.x_abs[cols])
            np.subtract(np.matmul(blk_c, va[cols][:, :, None]), upd, out=upd)
        reach = upd[:, :K].max(axis=1)
        reach -= upd[:, :K].min(axis=1)
        reach += (GUARD * bd.coef_beta) * np.maximum(upd[:, K], 0)
        open_ = (reach >= bd.slack0).any(axis=1)
        t = np.broadcast_to(bd.types0, (len(gene_sets), n))
        close = np.zeros((len(gene_sets), n), dtype=bool)
        if open_.any():
            hb_open = upd[open_]  # the open candidates' [H; beta]: the unmodified ones plus the change
            hb_open += bd.h_beta0_x
            t_open, close[open_] = self.guard(hb_open, np.broadcast_to(self.unmod.h_beta[K], (len(hb_open), n)))
            t = t.copy()
            t[open_] = t_open
        return t, close

    def guard(self, Hb: np.ndarray, beta0: np.ndarray, extra=0.0) -> tuple[np.ndarray, np.ndarray]:
        """Types (first argmax) and too-close-to-call flags from ``[H; beta]`` (candidates x classes + 1 x cells).

        ``extra``: a further bound on each logit's error, per cell (see :meth:`rows`).
        """
        bd = self.bounds
        K = bd.n_classes
        H, beta = Hb[:, :K], Hb[:, K]
        top = H.max(axis=1)
        # the first argmax (np.argmax over a middle axis is several times slower): the largest weight K - k
        # among the classes k at the top
        first = np.equal(H, top[:, None]) * np.arange(K, 0, -1, dtype=np.int16)[None, :, None]
        t = K - first.max(axis=1)
        # a bound on |computed - exact| of every logit: the classifier's arithmetic, this update, the rounding of
        # D and A, and the softmax's subtraction of the largest logit (|logit| <= beta)
        bound = bd.coef_beta * beta + bd.coef_beta0 * beta0 + extra
        # too close to call (another class within twice the bound, with margin): the classifier's rounding could
        # reorder them, or its softmax tie them
        near = ~((top - GUARD * bound - MARGIN)[:, None] > H)  # (NaN, from an infinite bound: near)
        return t, np.count_nonzero(near, axis=1) > 1

    def counted(self, n_rows: int) -> None:
        """Count ``n_rows`` rows as classified by the classifier (the adapter's row counter)."""
        if self._count is not None:
            self._count(n_rows)

    def type_rows(self, jobs: Sequence[Job]) -> RowTypes:
        """Counts of the types of the asked rows that the update can call; the cells too close to call are left.

        Candidates that modify a few genes with one modification are grouped by (modification, number of
        genes) and updated on every cell in stacked products (their rows picked after); the others one by one.
        """
        bd = self.bounds
        K, n = bd.n_classes, self.cells.n_cells
        sizes = np.array([len(rows) for _, rows in jobs], dtype=np.int64)
        ends = np.cumsum(sizes)
        types = np.empty(int(ends[-1]) if len(ends) else 0, dtype=np.int64)
        close = np.zeros(len(types), dtype=bool)
        groups: dict[tuple[int, int], list[int]] = {}
        for j, (pairs, rows) in enumerate(jobs):
            if len(pairs) == 1 and len(rows) and 0 < len(pairs[0][0]) <= LARGE:
                groups.setdefault((pairs[0][1], len(pairs[0][0])), []).append(j)
            elif len(rows):
                groups.setdefault((-1, j), []).append(j)
        per = STACKED_PRODUCT_BYTES // (2 * K * n * 8) + 1  # candidates per stacked product
        for (m, _), js in groups.items():
            for c0 in range(0, len(js), per):
                part = js[c0 : c0 + per]
                if m >= 0:
                    t, c = self.batch(m, np.stack([jobs[j][0][0][0] for j in part]))
                else:
                    pairs, rows = jobs[part[0]]
                    r = len(rows)
                    sel = slice(int(rows[0]), int(rows[0]) + r) if rows[-1] - rows[0] + 1 == r else np.asarray(rows)
                    Hb, extra = self.rows(pairs, sel)
                    t, c = self.guard(Hb[None], self.unmod.h_beta[K, sel][None], extra)
                for i, j in enumerate(part):
                    rows = jobs[j][1]
                    pick = slice(None) if m < 0 or len(rows) == n else rows  # (stacked products cover every cell)
                    types[ends[j] - sizes[j] : ends[j]] = t[i][pick]
                    close[ends[j] - sizes[j] : ends[j]] = c[i][pick]
        self.counted(len(types))
        # per-class counts of the certain cells: one bincount over (candidate, type) of all candidates
        owner = np.repeat(np.arange(len(jobs), dtype=np.int64) * K, sizes)
        counts = class_counts(types, ~close, owner, len(jobs), K)
        left = [rows[close[e - r : e]] for (_, rows), e, r in zip(jobs, ends, sizes, strict=True)]
        return RowTypes(counts, left)

    def uniform_genes(self, cands: Sequence) -> np.ndarray | None:
        """The candidates as one candidates x genes array, when :meth:`type_uniform` can answer them all.

        That is when every candidate is a gene array of one size (at most ``LARGE``, the first modification)
        that changes every cell; else None.
        """
        if not len(cands):
            return None
        first = cands[0]
        if not isinstance(first, np.ndarray) or first.ndim != 1 or not 0 < len(first) <= LARGE:
            return None
        shape = first.shape
        if any(not isinstance(c, np.ndarray) or c.shape != shape for c in cands):
            return None
        gm = np.stack(cands)
        if (
            gm.dtype.kind not in "iu" or self.cells.equal_any[0][gm].all(axis=1).any()
        ):  # (some cells may keep their row)
            return None
        return gm.astype(np.intp, copy=False)

    def type_uniform(self, gm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-class counts of the certain cells and the too-close flags of the candidates ``gm``.

        ``gm`` comes from :meth:`uniform_genes`; the counts are candidates x classes, the flags candidates x cells,
        from stacked products (:meth:`batch`).
        """
        K, n = self.bounds.n_classes, self.cells.n_cells
        per = STACKED_PRODUCT_BYTES // (2 * K * n * 8) + 1  # candidates per stacked product
        types = np.empty((len(gm), n), dtype=np.int64)
        close = np.empty((len(gm), n), dtype=bool)
        for c0 in range(0, len(gm), per):
            types[c0 : c0 + per], close[c0 : c0 + per] = self.batch(0, gm[c0 : c0 + per])
        self.counted(types.size)
        counts = class_counts(types, ~close, np.arange(len(gm), dtype=np.int64)[:, None] * K, len(gm), K)
        return counts, close
