"""CGD with the attacked matrix's private copy made meanwhile, on a second thread.

:func:`~scadversarial.tl.cgd_attack` writes the attacked matrix as a new layer: a private copy of the input matrix
with the cluster's rows written back. For a large float32 array (the usual case) the copy is memory bound (mostly
page faults) and as long as a short search; numpy releases the GIL while it copies, so the copy runs beside the
search, which only reads the matrix. The copy also checks that the matrix is finite, so the caller checks only the
rows the search reads first. The thread lives here, in the array layer, and never outlives the call.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .._validate import check_finite
from .cgd import CGDResult, cgd_search

__all__ = ["copies_aside", "cgd_search_copying"]

# below this many bytes the copy takes well under a millisecond: a thread would cost more than it saves
_MIN_BYTES = 1 << 22


def _n_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def copies_aside(src: Any) -> bool:
    """Whether :func:`cgd_search_copying` copies ``src`` on a second thread (a large float32 array, 2+ CPUs)."""
    return isinstance(src, np.ndarray) and src.dtype == np.float32 and src.nbytes >= _MIN_BYTES and _n_cpus() > 1


def _copy_checked(src: np.ndarray, where: str) -> np.ndarray:
    """A C-ordered copy of ``src``, checked to be finite (:func:`~scadversarial._validate.check_finite`)."""
    out = np.array(src, order="C", copy=True)
    check_finite(out, where)
    return out


def cgd_search_copying(
    proba_fn, X: np.ndarray, genes: np.ndarray, *, src: np.ndarray, where: str, **search: Any
) -> tuple[CGDResult, np.ndarray, float]:
    """:func:`~scadversarial.attacks.cgd.cgd_search`, and a checked C-ordered copy of ``src`` made meanwhile.

    Parameters
    ----------
    proba_fn
        ``proba_fn(X) -> probabilities``, the classifier the search asks.
    X
        The matrix that holds the cluster's cells (its rows ``search['rows']``).
    genes
        Gene indices, in the order the search visits them.
    src
        The matrix to copy (a float32 array: see :func:`copies_aside`).
    where
        The matrix's name in the error a NaN or infinite value of the copy raises.
    search
        The keyword arguments of :func:`~scadversarial.attacks.cgd.cgd_search` (step sizes, targets, ``method``,
        ``rows``).

    Returns
    -------
    The search's result, the copy and the seconds the search took (without the wait for the copy). An error of
    the copy is raised after the search.

    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        copied = pool.submit(_copy_checked, src, where)
        t0 = time.perf_counter()
        res = cgd_search(proba_fn, X, genes, **search)
        seconds = time.perf_counter() - t0
        return res, copied.result(), seconds
