"""The cluster's call from per-cell types, and when known counts already settle it."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

__all__ = ["class_counts", "cluster_call", "decided", "one_blas_thread", "stacked_counts"]


@functools.cache
def _blas_controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def one_blas_thread():
    """Context in which numpy's BLAS runs on one thread.

    The linear updates are many small products: on a busy machine, BLAS threads spend more time
    waiting for each other than computing (measured: 5-30x slower on 2 shared cores).
    """
    return _blas_controller().limit(limits=1, user_api="blas")


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


def decided(counts: list[int], rest: int, orig: int) -> bool | None:
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


def class_counts(types: np.ndarray, keep: np.ndarray, owner: np.ndarray, n_cands: int, n_classes: int) -> np.ndarray:
    """Per-candidate counts of the types of the cells where ``keep`` (candidates x classes).

    ``owner`` is each cell's candidate index times ``n_classes`` (broadcast against ``types``).
    """
    return np.bincount((owner + types)[keep], minlength=n_cands * n_classes).reshape(n_cands, n_classes)


def stacked_counts(types: Sequence[np.ndarray], n_classes: int) -> np.ndarray:
    """Per-type counts of each array of ``types`` (one bincount for all)."""
    sizes = np.fromiter((len(t) for t in types), dtype=np.int64, count=len(types))
    if not sizes.sum():
        return np.zeros((len(types), n_classes), dtype=np.int64)
    offs = np.repeat(np.arange(len(types), dtype=np.int64) * n_classes, sizes)
    flat = np.concatenate(types).astype(np.int64, copy=False) + offs
    return np.bincount(flat, minlength=len(types) * n_classes).reshape(len(types), n_classes)
