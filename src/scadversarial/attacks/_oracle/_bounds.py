"""The exactness constants of the linear updates, each defined once with the reason for its value.

A linear classifier's logit ``l_k = sum_g x_g w_kg + b_k`` is computed by the classifier in its own
precision (unit roundoff ``u``); the updates compute the same logit in float64 from other terms. The
fast searches take a cell's type from the updated logits only when no rounding of either computation
can reorder the top logit and another one; every cell closer than that goes to the classifier. The
bounds (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., section 3.1):

- a sum of ``n`` products, in any order, differs from the exact sum by at most
  ``gamma_n = n u / (1 - n u)`` times the sum of the terms' sizes (:func:`gamma`);
- the size of logit ``k``'s terms is at most ``beta = sum_g |x_g| max_k |w_kg| + max_k |b_k|`` per cell
  (the stacked and linear updates), or exactly ``B_k = sum_g |x_g w_kg| + |b_k|`` (the incremental update).

The constants below turn those bounds into decisions. Each is used by name; changing one changes which
cells the classifier decides, never the answers (they are exact whenever the bound holds).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "F64_U",
    "GUARD",
    "LARGE",
    "MARGIN",
    "N_RECENT",
    "ROOM",
    "SOFTMAX_ULPS",
    "STACKED_PRODUCT_BYTES",
    "TERM_SIZE_ROOM",
    "UPDATE_ULPS",
    "gamma",
    "unit_roundoff",
]

F64_U = 2.0**-53
"""Unit roundoff of float64, the precision of every update."""

ROOM = 1.1
"""Relative room on a computed error bound.

A bound is itself computed in float64 from a handful of terms: its own relative rounding is below
``10 * F64_U``, so the bound times 1.1 is still a bound, with room for the terms it leaves out that are
smaller than it by orders of magnitude (the float64 rounding of the update's sums of bound terms)."""

GUARD = 2 * ROOM
"""Factor on a per-logit error bound ``e`` when two logits are compared (2.2).

The computed top logit and another one are each within ``e`` of their exact values, so their exact
order can differ from the computed one only when the computed gap is at most ``2 e``; ``ROOM`` on top."""

MARGIN = 1e-5
"""Absolute margin on a logit gap, for the classifier's softmax.

The classifier's type is the first argmax of its probabilities, not of its logits: two probabilities
computed from distinct logits may round to the same value and tie. A gap of ``MARGIN`` makes their
exact ratio ``exp(1e-5) > 1 + 1e-5``, far above the relative rounding of a softmax computed in float32
or finer (a few units of ``2**-24``, about ``2.4e-7``), so the larger logit keeps the larger probability."""

SOFTMAX_ULPS = 8
"""The softmax's shift by the largest logit, in units of ``u beta`` per logit.

``l_k - max_j l_j`` is rounded by at most ``u |l_k - l_max| <= 2 u beta``; 8 allows four times that, for
implementations that shift twice (``log_softmax``, then ``exp``) and for the rounding of ``exp``'s input."""

UPDATE_ULPS = 4
"""Error of the float64 update per term, in units of ``F64_U`` times the number of terms.

The update adds ``n_terms`` float64 products to float64 logits: each term meets one rounding for its
product and at most ``n_terms`` for the additions (``gamma_n`` with ``n = n_terms + 1 <= 2 n_terms``); 4
is twice that, so that the bound holds for BLAS kernels that split a sum into partial sums."""

TERM_SIZE_ROOM = 1.01
"""Relative room on a float64 sum of term sizes (``sum_g max_k |w_kg| (|v_g| + |x_g|)``).

Its own rounding is at most ``gamma_G(F64_U)``, below ``1e-12`` for any realistic gene count: 1% covers it."""

LARGE = 64
"""Gene sets larger than this are updated from the closest known set (stacked products handle the rest).

Also bounds the terms of one stacked product in the matrix's precision: ``2 LARGE + 4`` roundings of
``u_x`` per term (the products of ``D`` and ``A``, their sum, and the rounding of the logits)."""

N_RECENT = 8
"""Large gene sets kept as starting points for the next large set (searches change a set a few genes at a time)."""

STACKED_PRODUCT_BYTES = 4 * 2**20
"""Output size of one stacked product of the linear update (a few MB: fits the caches, few Python steps)."""


def gamma(nu):
    """``gamma_n = n u / (1 - n u)`` from ``nu = n u`` (infinite where ``n u >= 1``: no bound)."""
    if isinstance(nu, float):  # (a scalar: no numpy call)
        return nu / (1 - nu) if nu < 1 else np.inf
    nu = np.asarray(nu, dtype=np.float64)
    with np.errstate(divide="ignore"):
        g = np.where(nu < 1, nu / np.maximum(1 - nu, 0), np.inf)
    return float(g) if g.ndim == 0 else g


def unit_roundoff(dtype: np.dtype) -> float:
    """Unit roundoff of ``dtype`` (0 for integers: their values are exact)."""
    return float(np.finfo(dtype).eps) / 2 if dtype.kind == "f" else 0.0
