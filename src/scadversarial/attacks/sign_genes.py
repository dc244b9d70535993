"""Rank genes by how well they separate pairs of clusters (adverSCarial's ``getSignGenes``)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

__all__ = ["distant_pairs", "pairwise_pvalues", "sign_genes_order"]


def distant_pairs(clusters: Sequence[str]) -> list[tuple[str, str]]:
    """All pairs of clusters, ordered so that consecutive pairs share no cluster where possible."""
    todo = list(itertools.combinations(clusters, 2))
    out: list[tuple[str, str]] = []
    prev: tuple[str, ...] = ()
    while todo:
        pick = next((p for p in todo if p[0] not in prev and p[1] not in prev), todo[0])
        todo.remove(pick)
        out.append(pick)
        prev = pick
    return out


def pairwise_pvalues(
    X: np.ndarray, labels: np.ndarray, pairs: Sequence[tuple[str, str]], *, method: str = "wilcoxon"
) -> np.ndarray:
    """``(n_pairs, n_genes)`` p-values of a two-sided test between the two clusters of each pair.

    ``method`` is ``'wilcoxon'`` (Mann-Whitney U) or ``'t-test'`` (Welch). Constant genes get p = 1.
    """
    from scipy import stats

    out = np.ones((len(pairs), X.shape[1]))
    labels = np.asarray(labels)
    for k, (a, b) in enumerate(pairs):  # one vectorized test over all genes per pair
        xa, xb = X[labels == a], X[labels == b]
        if len(xa) < 2 or len(xb) < 2:
            continue
        with np.errstate(all="ignore"):
            if method == "wilcoxon":
                p = stats.mannwhitneyu(xa, xb, axis=0, alternative="two-sided").pvalue
            elif method in ("t-test", "ttest"):
                p = stats.ttest_ind(xa, xb, axis=0, equal_var=False).pvalue
            else:
                msg = f"method must be 'wilcoxon' or 't-test', got {method!r}."
                raise ValueError(msg)
        out[k] = np.where(np.isfinite(p), p, 1.0)
    return out


def sign_genes_order(pvals: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Interleave the per-pair rankings: the best gene of every pair, then the second best, ...

    Returns
    -------
    order
        Gene indices, each once, in ranking order.
    pval
        The p-value that placed each gene.
    pair
        The index of the pair that placed each gene.

    """
    n_pairs, n_genes = pvals.shape
    ranked = np.argsort(pvals, axis=1, kind="stable")  # (n_pairs, n_genes)
    flat = ranked.T.ravel()  # rank 0 of every pair, then rank 1, ...
    pair_of = np.tile(np.arange(n_pairs), n_genes)
    _, first = np.unique(flat, return_index=True)
    first = np.sort(first)
    order, pair = flat[first], pair_of[first]
    return order, pvals[pair, order], pair
