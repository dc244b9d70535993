"""Gene modifications of the adverSCarial attack modes, as array functions.

A modification says which value a gene takes in the attacked cells. Every built-in modification is
computed gene by gene from the gene's distribution over **all** cells, and applied to the target
cells only:

==========================  =====================================================================
``'perc1'`` / ``'perc99'``  the gene's 1st / 99th percentile over all cells (:func:`numpy.quantile`,
                            default ``'linear'`` method, the same as R's type 7)
``'decile+N'``              move each target cell's value ``N`` deciles up the gene's distribution
``'decile-N'``              ... or down (``N`` = 1..10), saturating at the gene's max / min
``'random'``                uniform between the gene's min and max (seeded)
``'positive_aberrant'``     ``+aberrant_factor`` x the gene's max (10,000 by default)
``'negative_aberrant'``     ``-aberrant_factor`` x the gene's max
``'fixed'``                 ``fixed_value``
callable                    ``fn(x_target, x_all) -> new x_target``, applied column-wise
==========================  =====================================================================
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "MODIFICATIONS",
    "apply_modification",
    "check_modification",
    "modification_name",
    "modified_values",
]

MODIFICATIONS = (
    "perc1",
    "perc99",
    "random",
    "positive_aberrant",
    "negative_aberrant",
    "fixed",
    *(f"decile+{i}" for i in range(1, 11)),
    *(f"decile-{i}" for i in range(1, 11)),
)
_DECILE = re.compile(r"^decile([+-])(\d+)$")


def modification_name(modification: str | Callable) -> str:
    """A printable name of ``modification`` (the function's name for a callable)."""
    if callable(modification):
        return getattr(modification, "__name__", "custom")
    return str(modification)


def check_modification(modification: Any) -> str | Callable:
    """Return ``modification`` when valid, else raise a :class:`ValueError` listing the valid ones."""
    if callable(modification):
        return modification
    if isinstance(modification, str):
        m = _DECILE.match(modification)
        if modification in MODIFICATIONS and (m is None or 1 <= int(m.group(2)) <= 10):
            return modification
    msg = (
        f"Unknown modification {modification!r}. Use one of 'perc1', 'perc99', 'decile+N' / 'decile-N' (N=1..10), "
        "'random', 'positive_aberrant', 'negative_aberrant', 'fixed' (with fixed_value=...) "
        "or a callable fn(x_target, x_all) -> new x_target."
    )
    raise ValueError(msg)


def _decile_values(X: np.ndarray, rows: np.ndarray, n_deciles: int) -> np.ndarray:
    """Shift ``X[rows]`` by ``n_deciles`` deciles of each column's distribution (as adverSCarial)."""
    from scipy.stats import rankdata

    n = X.shape[0]
    ordered = np.sort(X, axis=0)
    # number of values strictly below each target value (the target values are values of X)
    below = rankdata(X, method="min", axis=0)[rows].astype(np.int64) - 1
    shift = int(np.round(n_deciles * n / 10))
    idx = np.clip(below + shift - 1, 0, n - 1)  # R's 1-based orderedX[below + shift], saturated at min / max
    return np.take_along_axis(ordered, idx, axis=0)


def _percentile(X: np.ndarray, q: float, cache: dict | None) -> np.ndarray:
    """``np.quantile(X, q, axis=0)`` (numpy's default 'linear' method), bit for bit, faster.

    The two order statistics around the virtual index come from :func:`torch.topk` (exact copies of
    values); numpy itself then interpolates them with the same fraction, so the arithmetic is numpy's.
    """
    key = ("percentile", id(X), X.shape, q)
    if cache is not None and key in cache:
        return cache[key]
    n = X.shape[0]
    h = (n - 1) * q
    lo = int(np.floor(h))
    hi = min(lo + 1, n - 1)
    if X.dtype.kind != "f" or n < 2:
        out = np.quantile(X, q, axis=0)
    else:
        import torch

        T = torch.from_numpy(np.ascontiguousarray(X))
        if q > 0.5:  # the n - lo largest values, descending
            k = n - lo
            v = torch.topk(T, k, dim=0, largest=True, sorted=True).values.numpy()
            prev, nxt = v[k - 1], v[k - 1 - (hi - lo)]
        else:
            v = torch.topk(T, hi + 1, dim=0, largest=False, sorted=True).values.numpy()
            prev, nxt = v[lo], v[hi]
        out = np.quantile(np.stack([prev, nxt], axis=1), h - lo, axis=1)
    if cache is not None:
        cache[key] = out
    return out


def modified_values(
    X: np.ndarray,
    rows: np.ndarray | Sequence[int],
    modification: str | Callable = "perc99",
    *,
    fixed_value: float = 3.0,
    aberrant_factor: float = 1e4,
    rng: np.random.Generator | int | None = None,
    cache: dict | None = None,
) -> np.ndarray:
    """Values every gene takes in the target cells under ``modification``.

    Parameters
    ----------
    X
        Dense expression matrix, cells x genes (all cells: the reference distribution).
    rows
        Indices (or a boolean mask) of the target cells.
    modification
        A name from :data:`MODIFICATIONS` or a callable ``fn(x_target, x_all) -> new x_target``
        (``x_target`` is ``X[rows]``; it must work column by column: the new value of a gene may only
        depend on that gene's column).
    fixed_value
        The value of the ``'fixed'`` modification.
    aberrant_factor
        Multiplier of the gene's max for ``'positive_aberrant'`` / ``'negative_aberrant'``.
    rng
        Random generator or seed of the ``'random'`` modification.
    cache
        A dict reused across calls on the same ``X`` (per-gene percentiles are computed once).

    Returns
    -------
    ``(n_target, n_genes)`` array ``V``: modifying gene ``g`` of the target cells sets them to ``V[:, g]``.

    """
    modification = check_modification(modification)
    X = np.asarray(X)
    rows = np.asarray(rows)
    if rows.dtype == bool:
        rows = np.flatnonzero(rows)
    n_t, n_g = len(rows), X.shape[1]
    dtype = X.dtype if X.dtype.kind == "f" else np.float64
    if callable(modification):
        out = np.asarray(modification(X[rows].copy(), X), dtype=dtype)
        if out.shape != (n_t, n_g):
            msg = f"The modification function returned shape {out.shape}; expected {(n_t, n_g)} (target cells x genes)."
            raise ValueError(msg)
        return out
    if modification in ("perc1", "perc99"):
        q = 0.01 if modification == "perc1" else 0.99
        vals = _percentile(X, q, cache)  # = np.quantile(X, q, axis=0)
    elif modification == "positive_aberrant":
        vals = aberrant_factor * X.max(axis=0)
    elif modification == "negative_aberrant":
        vals = -aberrant_factor * X.max(axis=0)
    elif modification == "fixed":
        vals = np.full(n_g, fixed_value)
    elif modification == "random":
        rng = np.random.default_rng(rng)
        lo, hi = X.min(axis=0), X.max(axis=0)
        return rng.uniform(lo, hi, size=(n_t, n_g)).astype(dtype)
    else:
        m = _DECILE.match(modification)
        n_dec = int(m.group(2)) * (1 if m.group(1) == "+" else -1)
        return _decile_values(X, rows, n_dec).astype(dtype, copy=False)
    return np.broadcast_to(np.asarray(vals, dtype=dtype), (n_t, n_g)).copy()


def apply_modification(
    X: np.ndarray,
    genes: np.ndarray | Sequence[int],
    rows: np.ndarray | Sequence[int],
    modification: str | Callable = "perc99",
    **kwargs,
) -> np.ndarray:
    """Return a copy of ``X`` where ``genes`` of the ``rows`` cells are modified.

    Parameters
    ----------
    X
        Dense expression matrix, cells x genes.
    genes
        Column indices (or boolean mask) of the genes to modify.
    rows
        Row indices (or boolean mask) of the target cells.
    modification
        See :func:`modified_values`.
    **kwargs
        ``fixed_value``, ``aberrant_factor``, ``rng``: see :func:`modified_values`.

    Returns
    -------
    The modified copy of ``X``.

    """
    X = np.asarray(X)
    rows = np.asarray(rows)
    if rows.dtype == bool:
        rows = np.flatnonzero(rows)
    genes = np.asarray(genes)
    if genes.dtype == bool:
        genes = np.flatnonzero(genes)
    V = modified_values(X, rows, modification, **kwargs)
    out = X.astype(V.dtype, copy=True)
    out[np.ix_(rows, genes)] = V[:, genes]
    return out
