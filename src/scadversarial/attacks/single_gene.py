"""Single-gene attack: every gene whose modification alone flips the cluster's call.

The search order is adverSCarial's: genes are dealt round-robin into ``first_dichot`` bins (bin ``s``
holds ``genes[s::first_dichot]``); a gene list under test is split into its interleaved halves
``lst[0::2]`` and ``lst[1::2]``; each half is modified and classified; a flipping half of at most
``max_split_size`` genes is recorded, a larger flipping half is searched the same way, a half that
does not flip is dropped. Results come in depth-first order.

:func:`single_gene_search` with ``method='plain'`` classifies one candidate per call in that order
(the reference); ``method='fast'`` walks the search level by level and classifies all the halves of
one level in stacked calls. Both return the same records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .._settings import progress
from .._validate import check_choice
from ._oracle import ClusterOracle

__all__ = ["SingleGeneResult", "single_gene_search"]


@dataclass
class SingleGeneResult:
    """Records of a single-gene search, in depth-first order.

    Attributes
    ----------
    genes
        One array of gene indices per record (a single gene when ``max_split_size=1``).
    calls
        The cluster's call (class index) with those genes modified.
    scores
        The fraction of the cluster's cells with that call.
    n_tested
        Number of candidate gene lists classified.

    """

    genes: list[np.ndarray] = field(default_factory=list)
    calls: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    n_tested: int = 0


def _bins(genes: np.ndarray, first_dichot: int) -> list[np.ndarray]:
    return [genes[s::first_dichot] for s in range(first_dichot) if len(genes[s::first_dichot])]


def _accept(call: int, orig: int, n_genes: int, max_split_size: int, *, not_na: bool, na_idx: set[int]) -> str:
    """'record', 'split' or 'drop' for one classified half."""
    if call == orig:
        return "drop"
    if n_genes <= max_split_size:
        return "record" if (not not_na or call not in na_idx) else "drop"
    return "split"


def _plain(
    oracle, bins, *, max_split_size: int, first_found: bool, not_na: bool, na_idx: set[int], bar
) -> SingleGeneResult:
    """Depth-first, one classifier call per half (the reference)."""
    res = SingleGeneResult()
    orig = oracle.orig_call

    def dichot(lst: np.ndarray) -> None:
        for half in (lst[0::2], lst[1::2]):
            if first_found and res.genes:
                return
            if len(half) == 0:
                continue
            call, score = oracle.evaluate_one(half)
            res.n_tested += 1
            action = _accept(call, orig, len(half), max_split_size, not_na=not_na, na_idx=na_idx)
            if action == "record":
                res.genes.append(half)
                res.calls.append(call)
                res.scores.append(score)
            elif action == "split":
                dichot(half)

    for b in bins:
        if first_found and res.genes:
            break
        dichot(b)
        bar.update(len(b))  # once per bin
    return res


def _fast_bfs(oracle, roots, *, max_split_size: int, not_na: bool, na_idx: set[int], bar) -> tuple[list, int]:
    """Level-by-level search below ``roots`` (list of (path, genes)); returns [(path, genes, call, score)]."""
    orig = oracle.orig_call
    records = []
    n_tested = 0
    frontier = roots
    while frontier:
        cands = []
        for path, lst in frontier:
            for h in (0, 1):
                half = lst[h::2]
                if len(half):
                    cands.append((path + (h,), half))
        need = np.array([len(c[1]) <= max_split_size for c in cands], dtype=bool)
        calls, scores, _ = oracle.evaluate_many([c[1] for c in cands], need_exact=need)
        n_tested += len(cands)
        frontier = []
        settled = 0  # genes of the halves not split further
        for (path, half), call, score in zip(cands, calls, scores, strict=True):
            action = _accept(int(call), orig, len(half), max_split_size, not_na=not_na, na_idx=na_idx)
            if action == "record":
                records.append((path, half, int(call), float(score)))
            if action == "split":
                frontier.append((path, half))
            else:
                settled += len(half)
        bar.update(settled)  # once per level
    records.sort(key=lambda r: r[0])  # depth-first order: bin, then half 0 before half 1 at each level
    return records, n_tested


def _fast(
    oracle, bins, *, max_split_size: int, first_found: bool, not_na: bool, na_idx: set[int], bar
) -> SingleGeneResult:
    """Level by level, each level's halves in stacked calls."""
    res = SingleGeneResult()
    roots = [((s,), b) for s, b in enumerate(bins)]
    opts = {"max_split_size": max_split_size, "not_na": not_na, "na_idx": na_idx, "bar": bar}
    if not first_found:
        records, res.n_tested = _fast_bfs(oracle, roots, **opts)
    else:
        # windows of bins of growing size; the first record in depth-first order of the first window with
        # a record is the plain search's first record
        records, start, width = [], 0, 1
        while start < len(roots) and not records:
            window = roots[start : start + width]
            records, n = _fast_bfs(oracle, window, **opts)
            res.n_tested += n
            start += width
            width *= 2
        records = records[:1]
    for _, genes, call, score in records:
        res.genes.append(genes)
        res.calls.append(call)
        res.scores.append(score)
    return res


def single_gene_search(
    oracle: ClusterOracle,
    genes: Sequence[int] | np.ndarray | None = None,
    *,
    first_dichot: int = 100,
    max_split_size: int = 1,
    return_first_found: bool = False,
    change_type: str = "any",
    na_classes: Sequence[int] = (),
    method: str = "fast",
) -> SingleGeneResult:
    """Search the genes whose modification alone flips the cluster's call.

    Parameters
    ----------
    oracle
        The cluster, its modified values and the classifier.
    genes
        Gene indices to search (default: all), in the order used to fill the bins.
    first_dichot
        Number of round-robin bins before the dichotomic search.
    max_split_size
        A flipping gene list of at most this many genes is recorded.
    return_first_found
        Stop at the first record (in depth-first order).
    change_type
        ``'any'``: every flip counts; ``'not_na'``: flips to a class in ``na_classes`` are not recorded.
    na_classes
        Class indices that mean "no call" (abstention).
    method
        ``'fast'`` (stacked, level by level) or ``'plain'`` (one classifier call per candidate).

    Returns
    -------
    :class:`SingleGeneResult`.

    """
    check_choice("change_type", change_type, ("any", "not_na"))
    check_choice("method", method, ("fast", "plain"))
    if int(first_dichot) < 1 or int(max_split_size) < 1:
        msg = f"first_dichot and max_split_size must be >= 1, got {first_dichot} and {max_split_size}."
        raise ValueError(msg)
    genes = np.arange(oracle.n_genes) if genes is None else np.asarray(genes, dtype=np.intp)
    bins = _bins(genes, int(first_dichot))
    fn = _fast if method == "fast" else _plain
    # progress: genes settled (in a half that keeps the call, or recorded), updated once per level or bin
    with progress(total=len(genes), desc="single-gene", unit="gene") as bar:
        return fn(
            oracle,
            bins,
            max_split_size=int(max_split_size),
            first_found=bool(return_first_found),
            not_na=change_type == "not_na",
            na_idx=set(na_classes),
            bar=bar,
        )
