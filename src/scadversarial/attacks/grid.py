"""Grid attack: every combination of modifications (or none) over a handful of genes.

Combinations are visited by increasing number of modified genes, then in lexicographic order of the
per-gene choices (``-1`` = not modified, ``m`` = the ``m``-th modification), so the first flipping
combination is a smallest one. ``return_first_found`` stops there (honoured by both methods, unlike
the R package's grid).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .._docs import doc_oracle_values, doc_params
from .._settings import progress
from .._validate import check_choice
from ._oracle import ClusterOracle

__all__ = ["GridResult", "grid_combinations", "grid_search"]


@dataclass
class GridResult:
    """Result of a grid search.

    Attributes
    ----------
    combos
        ``(n_tested, n_genes)`` per-gene modification index (-1: not modified), in visiting order.
    calls, scores, flipped
        The cluster's call, score and flip flag per combination.

    """

    combos: np.ndarray
    calls: np.ndarray
    scores: np.ndarray
    flipped: np.ndarray


def grid_combinations(n_genes: int, n_mods: int, *, max_combinations: int = 100_000) -> np.ndarray:
    """All ``(n_mods + 1) ** n_genes - 1`` non-empty combinations, smallest first.

    Raises a :class:`ValueError` when there are more than ``max_combinations``.
    """
    total = (n_mods + 1) ** n_genes - 1
    if total > max_combinations:
        msg = (
            f"A grid over {n_genes} genes x {n_mods} modifications has {total:,} combinations, more than "
            f"max_combinations={max_combinations:,}. Pass fewer genes (a grid is for a handful), fewer "
            "modifications, or raise max_combinations."
        )
        raise ValueError(msg)
    combos = np.array(list(itertools.product(range(-1, n_mods), repeat=n_genes)), dtype=np.int64)[1:]
    size = (combos >= 0).sum(axis=1)
    return combos[np.argsort(size, kind="stable")]


@doc_params(doc_oracle_values=doc_oracle_values)
def grid_search(
    oracle: ClusterOracle,
    genes: Sequence[int] | np.ndarray,
    *,
    return_first_found: bool = False,
    change_type: str = "any",
    na_classes: Sequence[int] = (),
    max_combinations: int = 100_000,
    method: str = "fast",
) -> GridResult:
    """Classify every combination of modifications of ``genes``.

    Parameters
    ----------
    {doc_oracle_values}
    genes
        Indices of the few genes of the grid.
    return_first_found
        Stop at the first flipping combination (smallest first).
    change_type
        ``'any'`` or ``'not_na'`` (flips to a class of ``na_classes`` do not count as found).
    na_classes
        Class indices meaning "no call".
    max_combinations
        Guard against combinatorial explosion.
    method
        ``'fast'`` (stacked calls) or ``'plain'`` (one call per combination).

    Returns
    -------
    :class:`GridResult` over the combinations classified.

    """
    check_choice("method", method, ("fast", "plain"))
    genes = np.asarray(genes, dtype=np.intp)
    combos = grid_combinations(len(genes), len(oracle.Vs), max_combinations=max_combinations)
    na_idx = np.asarray(sorted(set(na_classes)), dtype=np.int64)

    def full(c: np.ndarray) -> np.ndarray:
        out = np.full(oracle.n_genes, -1, dtype=np.int64)
        out[genes] = c
        return out

    def found(calls: np.ndarray) -> np.ndarray:
        f = calls != oracle.orig_call
        if change_type == "not_na":
            f &= ~np.isin(calls, na_idx)
        return f

    calls, scores = [], []
    step = 1 if method == "plain" else max(oracle.chunk_size(), 1)
    # progress: combinations classified, updated once per stacked chunk (per combination in the plain search)
    with progress(total=len(combos), desc="grid", unit="combination") as bar:
        for start in range(0, len(combos), step):
            chunk = combos[start : start + step]
            if method == "plain":
                c, s = oracle.evaluate_assignment(full(chunk[0]))
                c, s = np.array([c]), np.array([s])
            else:
                c, s, _ = oracle.evaluate_assignments([full(x) for x in chunk])
            calls.append(c)
            scores.append(s)
            bar.update(len(c))
            if return_first_found and found(c).any():
                break
    calls = np.concatenate(calls)
    scores = np.concatenate(scores)
    n = len(calls)
    if return_first_found and found(calls).any():
        n = int(np.flatnonzero(found(calls))[0]) + 1
    return GridResult(combos=combos[:n], calls=calls[:n], scores=scores[:n], flipped=(calls != oracle.orig_call)[:n])
