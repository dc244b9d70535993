"""The incremental engine: one gene set at a time, its logits updated as it grows (max-change).

It tracks, per cell, the logits ``H``, a bound per class ``B_k = sum_g |x_g w_kg| + |b_k|`` (the size of
logit ``k``'s terms) and the number ``z`` of nonzero values ``x_g``, as one ``(2 classes + 1) x cells``
array ``[H; B; z]``. Logit ``k``'s rounding error in the classifier is at most ``gamma_(z+1) B_k``, whatever
the order of its sums: a zero product and an addition of an exact zero are exact, so each term meets at
most ``z + 1`` roundings (its product, and an addition with each other nonzero term or the bias). With the
update's own rounding, the error is at most ``a(z) B_k + b beta0`` (:meth:`IncrementalEngine.a`,
:attr:`IncrementalBounds.coef_beta0`) -- tighter than the linear engine's single bound per cell
(``gamma_(n_genes+1) max_k B_k``), for twice the update's work, which a search asking about one set at a
time can afford.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ._bounds import GUARD, MARGIN, ROOM, SOFTMAX_ULPS, gamma, unit_roundoff
from ._counts import decided
from ._engine import CellValues, Job, RowTypes
from ._linear import LinearEngine

__all__ = ["CertifiedSet", "IncrementalBounds", "IncrementalEngine", "Layout"]


@dataclass(frozen=True, slots=True)
class CertifiedSet:
    """A gene set's certified per-cell types under the incremental update (:meth:`IncrementalEngine.certify`).

    Attributes
    ----------
    hbz
        Its float64 ``[H; B; z]``.
    types
        First argmax of ``H`` per cell.
    slack
        How far each cell's top logit is from being too close to call (``-inf`` where it is).
    counts
        Per-class counts of the certain cells.
    a_max, z_max, b_max
        The largest error coefficient ``a``, nonzero count ``z`` and term size ``B``.

    """

    hbz: np.ndarray
    types: np.ndarray
    slack: np.ndarray
    counts: np.ndarray
    a_max: float
    z_max: float
    b_max: float


@dataclass(frozen=True)
class IncrementalBounds:
    """The unmodified ``[H; B; z]`` and the coefficients of the error bound, built once.

    Attributes
    ----------
    hbz0
        ``(2 n_classes + 1, n_cells)`` float64 ``[H0; B0; z0]`` of the unmodified cells.
    a_rest
        The part of ``a(z)`` that does not depend on ``z``: the update's float64 rounding, the rounding of
        ``D`` and ``A`` to the matrix's precision once (no stacked sums in it) and the softmax's shift.
    coef_beta0
        ``b``: the coefficient of ``beta0``, the unmodified term sizes (the update's start).
    err_beta0
        Per cell, ``ROOM b max_k B0_k``: the ``beta0`` part of every ``e_k``.

    """

    hbz0: np.ndarray
    a_rest: float
    coef_beta0: float
    err_beta0: np.ndarray


@dataclass(frozen=True)
class Layout:
    """The update laid out gene by gene in ``order``, so that a list of consecutive slots is read as a slice.

    Attributes
    ----------
    order
        The genes, slot by slot (a permutation of all genes).
    slot
        Each gene's slot (the inverse of ``order``).
    w_block3
        ``(2 n_classes + 1, 3 n_genes)``: column ``3 s + j`` holds the weights of term ``j`` (``D``, ``A``, ``Z``)
        of the gene in slot ``s``.
    terms
        Per modification, ``(3 n_genes, n_cells)``: row ``3 s + j`` is that term (``Z``: the change of each
        value's being nonzero). ``w_block3[:, cols] @ terms[m][cols]`` is ``[dH; dB; dz]`` (float64 both: a
        mixed-precision product would skip BLAS).

    """

    order: np.ndarray
    slot: np.ndarray
    w_block3: np.ndarray
    terms: tuple[np.ndarray, ...]


class IncrementalEngine:
    """Certified types of gene sets grown from the unmodified cells by adding other sets' changes.

    Parameters
    ----------
    linear
        The oracle's linear engine (its weights, ``[D; A]`` and bounds are reused).

    """

    def __init__(self, linear: LinearEngine) -> None:
        self.linear = linear
        self.cells: CellValues = linear.cells
        self.n_classes = linear.bounds.n_classes
        w, b = linear.head.weight, linear.head.bias
        bd, K = linear.bounds, self.n_classes
        H0 = linear.unmod.h_beta[:K]
        B0 = np.abs(w) @ linear.unmod.abs_x_t.astype(np.float64) + np.abs(b)[:, None]  # (|x|, already built)
        base = self.cells.base
        hbz0 = np.concatenate([H0, B0, np.count_nonzero(base, axis=1).astype(np.float64)[None]])
        # D = v - x and A = |v| - |x| are rounded to the matrix's precision once (no stacked sums):
        # |error| <= u_x0 (|v| + |x|) per term
        u_x0 = unit_roundoff(base.dtype)
        coef_beta0 = 2 * bd.gamma_update + u_x0
        self.bounds = IncrementalBounds(
            hbz0=hbz0,
            a_rest=bd.gamma_update + u_x0 + SOFTMAX_ULPS * bd.u_classifier,
            coef_beta0=coef_beta0,
            err_beta0=ROOM * coef_beta0 * B0.max(axis=0),
        )
        self.layout: Layout | None = None

    def _lay_out(self, order: np.ndarray) -> Layout:
        w = self.linear.head.weight
        K, G, n = self.n_classes, self.cells.n_genes, self.cells.n_cells
        blk3 = np.zeros((2 * K + 1, G, 3))
        blk3[:K, :, 0], blk3[K : 2 * K, :, 1], blk3[2 * K, :, 2] = w[:, order], np.abs(w[:, order]), 1.0
        nz_t = (self.cells.base != 0).T
        terms = []
        for m, mod in enumerate(self.linear.mods):
            DAZ = np.empty((G, 3, n))
            DA = self.linear.da(m)
            DAZ[:, 0], DAZ[:, 1] = DA[order], DA[G + order]
            v_nz = mod.v_t[order] != 0  # (a column per gene, or one value per gene that broadcasts)
            np.subtract(v_nz, nz_t[order], out=DAZ[:, 2], dtype=np.float64)
            terms.append(DAZ.reshape(3 * G, n))
        slot = np.empty(G, dtype=np.intp)
        slot[order] = np.arange(G)
        return Layout(order, slot, blk3.reshape(2 * K + 1, 3 * G), tuple(terms))

    def lay_out(self, genes: np.ndarray) -> None:
        """Lay the update out so that every list of the interleaved halving of ``genes`` is read as a slice.

        Max-change splits a list ``lst`` into ``lst[0::2]`` and ``lst[1::2]``, so each list it asks about is
        ``genes[r::2**d]``: the positions ``i`` in ``genes`` with ``i = r (mod 2**d)``. Sorted by their bit-reversed
        value, those positions are consecutive. ``genes`` (distinct) come first in that order, the other genes after.
        """
        genes = np.asarray(genes, dtype=np.intp)
        n_bits = max(int(len(genes) - 1).bit_length(), 1)
        pos = np.arange(len(genes))
        rev = np.zeros(len(genes), dtype=np.int64)
        for bit in range(n_bits):
            rev |= ((pos >> bit) & 1) << (n_bits - 1 - bit)
        rest = np.ones(self.cells.n_genes, dtype=bool)
        rest[genes] = False
        order = np.concatenate([genes[np.argsort(rev, kind="stable")], np.flatnonzero(rest)])
        if self.layout is None or not np.array_equal(order, self.layout.order):
            self.layout = self._lay_out(order)

    def a(self, z: np.ndarray) -> np.ndarray:
        """Per cell, the coefficient ``a`` of ``B_k`` in the bound on a logit's error, for ``z`` nonzero values."""
        # z values and the bias: at most z + 1 roundings per term
        return gamma((z + 1) * self.linear.bounds.u_classifier) + self.bounds.a_rest

    def start(self) -> np.ndarray:
        """Float64 ``[H; B; z]`` (2 classes + 1 x cells) of the unmodified cells, the start of :meth:`delta` sums."""
        return self.bounds.hbz0

    def delta(self, genes: np.ndarray, m: int = 0) -> np.ndarray:
        """Float64 change of ``[H; B; z]`` (2 classes + 1 x cells) when the distinct ``genes`` take modification ``m``.

        :meth:`start` plus the deltas of disjoint gene sets is ``[H; B; z]`` of their union, within the
        float64 rounding the guard allows for (it bounds the update's terms, whatever their order). Genes in
        consecutive slots of the layout (:meth:`lay_out`) are read as slices.
        """
        if self.layout is None:  # no layout asked for: gene order
            self.layout = self._lay_out(np.arange(self.cells.n_genes))
        lay = self.layout
        s = lay.slot[np.asarray(genes, dtype=np.intp)]
        if not len(s):
            return np.zeros_like(self.bounds.hbz0)
        a = int(s.min())
        b = a + len(s)
        if int(s.max()) == b - 1:  # distinct: exactly the slots a..b-1
            return lay.w_block3[:, 3 * a : 3 * b] @ lay.terms[m][3 * a : 3 * b]
        cols = (3 * s[:, None] + np.arange(3)).ravel()
        return lay.w_block3[:, cols] @ lay.terms[m][cols]

    def certify(self, hbz: np.ndarray) -> CertifiedSet:
        """The certified per-cell types of a gene set from its ``[H; B; z]``: a base for :meth:`flipped`."""
        K = self.n_classes
        a = self.a(hbz[2 * K])
        t, slack = self._slack(hbz, (ROOM * a) * hbz[K : 2 * K] + self.bounds.err_beta0)
        slack[~(slack > 0)] = -np.inf  # (NaN, from an infinite bound: not certain either)
        sure = slack > 0
        return CertifiedSet(
            hbz,
            t,
            slack,
            np.bincount(t[sure], minlength=K),
            float(a.max()),
            float(hbz[2 * K].max()),
            float(hbz[K : 2 * K].max()),
        )

    def _slack(self, hbz: np.ndarray, err: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First-argmax types of ``H`` and ``H_t - e_t - max_(k != t) (H_k + e_k) - MARGIN`` (``err``: the ``e_k``)."""
        H = hbz[: self.n_classes]
        t = H.argmax(axis=0)
        idx = np.arange(H.shape[1])
        low = H[t, idx] - err[t, idx]
        up = H + err
        up[t, idx] = -np.inf
        return t, low - up.max(axis=0) - MARGIN

    def flipped(
        self,
        bases: Sequence[CertifiedSet],
        delta: np.ndarray,
        same: Sequence[np.ndarray | None],
        orig: tuple[int, np.ndarray],
    ) -> tuple[np.ndarray, list[tuple[int, np.ndarray, np.ndarray, np.ndarray | None]]]:
        """Whether the call flips, for candidates that add one gene set's change to known gene sets.

        Candidate ``j`` is ``bases[j]`` (:meth:`certify`) plus ``delta`` (:meth:`delta` of the added genes);
        ``same[j]`` are its unchanged cells (they keep their original types, ``orig = (call, types)``). A cell
        whose change cannot use up its slack keeps the base's type; the others are typed from their new logits.

        Returns the answers (exact but where the cells too close to call decide, there a guess from their float64
        logits) and, for those open candidates, ``(j, counts of the certain cells, rows too close to call, guessed
        types of those rows)`` for the classifier to settle.
        """
        K, n = self.n_classes, self.cells.n_cells
        orig_call, orig_types = orig
        dH = delta[:K]
        # The gap between two logits changes by at most the spread of their changes; an error bound
        # e_k = ROOM (a B_k + b beta0) grows by at most ROOM ((a' - a) B'_k + a dB_k), where a' - a <= a(Z) - a(Z - dz)
        # (a is convex in z; Z the largest z + dz, dz the largest increase of z) and B'_k <= max B + max dB; two
        # logits' bounds: GUARD = 2 ROOM
        dz = max(float(delta[2 * K].max()), 0.0)
        z_top = max(b.z_max for b in bases) + dz
        a_top = self.a(z_top)  # a of every candidate cell is at most this
        grow = a_top - self.a(z_top - dz) if dz else 0.0
        dB = delta[K : 2 * K].max(axis=0)
        reach = dH.max(axis=0)
        reach -= dH.min(axis=0)
        reach += (GUARD * max(b.a_max for b in bases)) * np.maximum(dB, 0)
        reach += GUARD * grow * (max(b.b_max for b in bases) + max(float(dB.max()), 0.0))
        if not np.isfinite(a_top):  # no rounding bound (coarse products): nothing is certain
            reach[:] = np.inf
        flips = np.zeros(len(bases), dtype=bool)
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
                t = np.where(s, orig_types, t)
                counts = np.bincount(t, minlength=K) - np.bincount(t[u], minlength=K)
            answer = decided(counts.tolist(), len(u), orig_call)  # often settled whatever the unsure cells are
            if answer is None:
                HBu = base.hbz[:, u] + delta[:, u]
                tu, su = self._slack(HBu, (ROOM * a_top) * HBu[K : 2 * K] + self.bounds.err_beta0[u])
                sure = su > 0
                counts += np.bincount(tu[sure], minlength=K)
                close = u[~sure]
                answer = decided(counts.tolist(), len(close), orig_call)
                if answer is None:
                    guess = counts + np.bincount(tu[~sure], minlength=K)
                    flips[j] = int(guess.argmax()) != orig_call
                    todo.append((j, counts, close))
                    continue
            flips[j] = answer
        self.linear.counted(n * len(bases))
        return flips, todo

    def type_rows(self, jobs: Sequence[Job]) -> RowTypes:
        """Counts of the asked rows' types certified from ``start() + delta`` of each pair; uncertain rows are left."""
        K = self.n_classes
        counts = np.zeros((len(jobs), K), dtype=np.int64)
        left = []
        for j, (pairs, rows) in enumerate(jobs):
            hbz = self.start().copy()
            for genes, m in pairs:
                if len(genes):
                    hbz += self.delta(genes, m)
            cert = self.certify(hbz)
            sure = cert.slack[rows] > 0
            counts[j] = np.bincount(cert.types[rows][sure], minlength=K)
            left.append(np.asarray(rows)[~sure])
        self.linear.counted(sum(len(rows) for _, rows in jobs))
        return RowTypes(counts, left)
