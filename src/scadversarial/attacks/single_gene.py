"""Single-gene attack: every gene whose modification alone flips the cluster's call.

The search order is adverSCarial's: genes are dealt round-robin into ``first_dichot`` bins (bin ``s``
holds ``genes[s::first_dichot]``); a gene list under test is split into its interleaved halves
``lst[0::2]`` and ``lst[1::2]``; each half is modified and classified; a flipping half of at most
``max_split_size`` genes is recorded, a larger flipping half is searched the same way, a half that
does not flip is dropped. Results come in depth-first order.

The search is encoded once (:class:`_Search`): the halves not classified yet, kept in depth-first order,
each one question (does modifying it flip the call?) whose answer records, drops or splits it. The methods
differ only in how many of the leading questions they answer at once, and how. ``method='plain'`` answers
the first one with one classifier call (the reference: depth-first, adverSCarial's calls one by one);
``method='fast'`` answers all of them, a level of the search, in stacked calls (or with the linear update).
Both return the same records.
"""

from __future__ import annotations

from bisect import bisect_left
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


@dataclass(frozen=True, slots=True)
class _Half:
    """One question of the search: does modifying ``genes`` flip the call?

    ``path`` is the bin, then 0 (first half) or 1 (second half) per split: the depth-first order of the
    halves is the order of their paths (a half comes before its own halves, its first half before its second).
    """

    path: tuple[int, ...]
    genes: np.ndarray


def _halves(path: tuple[int, ...], lst: np.ndarray) -> list[_Half]:
    """The non-empty interleaved halves of ``lst``, first half first."""
    return [_Half((*path, h), lst[h::2]) for h in (0, 1) if len(lst[h::2])]


class _Search:
    """The dichotomic search as the list of its open questions in depth-first order: the one encoding.

    :attr:`open` holds the halves not classified yet; :meth:`answer` takes the calls of the first few of them
    and replaces them by the halves of those split further. Answering the first open half each time is the
    depth-first search; answering all of them each time is a level-by-level one. With ``first_found`` the
    halves after the first record in depth-first order are dropped, so the search stops at the depth-first
    search's first record whatever the number answered at once.
    """

    __slots__ = ("first_found", "max_split", "n_answered", "na_idx", "not_na", "open", "orig", "records")

    def __init__(
        self, bins: list[np.ndarray], orig: int, max_split: int, *, first_found: bool, not_na: bool, na_idx: set[int]
    ) -> None:
        self.open = [h for s, b in enumerate(bins) for h in _halves((s,), b)]
        self.records: list[tuple[_Half, int, float]] = []
        self.n_answered = 0
        self.orig, self.max_split, self.first_found = orig, max_split, first_found
        self.not_na, self.na_idx = not_na, na_idx

    def may_record(self, half: _Half) -> bool:
        """Whether ``half`` is recorded if it flips (its answer then needs the exact call and score)."""
        return len(half.genes) <= self.max_split

    def answer(self, calls: Sequence[int], scores: Sequence[float]) -> int:
        """Take the calls and scores of the first ``len(calls)`` open halves; returns the genes they settle.

        A half that keeps the call is dropped; a flipping one is recorded when it has at most ``max_split`` genes
        (and, with ``not_na``, its call is not an abstention; otherwise dropped), else split into its halves.
        Settled genes: those of the halves dropped or recorded (and, with ``first_found``, those left unasked).
        """
        n = len(calls)
        children: list[_Half] = []
        settled = 0
        for half, call, score in zip(self.open[:n], calls, scores, strict=True):
            if int(call) != self.orig and not self.may_record(half):
                children.extend(_halves(half.path, half.genes))
                continue
            if int(call) != self.orig and (not self.not_na or int(call) not in self.na_idx):
                self.records.append((half, int(call), float(score)))
            settled += len(half.genes)
        self.open[:n] = children  # the halves of a split half come before every open half after it
        self.n_answered += n
        if self.first_found and self.records:
            first = min(r[0].path for r in self.records)
            while self.open and self.open[-1].path > first:  # no record after the first can come first
                settled += len(self.open.pop().genes)
        return settled

    def result(self) -> SingleGeneResult:
        """The records in depth-first order (only the first with ``first_found``)."""
        records = sorted(self.records, key=lambda r: r[0].path)
        if self.first_found:
            records = records[:1]
        return SingleGeneResult(
            genes=[h.genes for h, _, _ in records],
            calls=[c for _, c, _ in records],
            scores=[s for _, _, s in records],
            n_tested=self.n_answered,
        )


def _ask_plain(search: _Search, oracle: ClusterOracle, bar) -> None:
    """Answer the first open half with one classifier call on the whole modified cluster, one at a time."""
    while search.open:
        call, score = oracle.evaluate_one(search.open[0].genes)
        bar.update(search.answer([call], [score]))


def _ask_stacked(search: _Search, oracle: ClusterOracle, bar) -> None:
    """Answer all open halves at once (a level of the search) in stacked calls, or with the linear update.

    With ``first_found``, only those of a window of bins that doubles while no half in it flips: the first
    record is then found without classifying the bins after it.
    """
    end = 1 if search.first_found else float("inf")  # the window: bins < end
    while search.open:
        n = bisect_left(search.open, end, key=lambda h: h.path[0])
        if n == 0:  # the window is searched and has no record: the next bins, twice as many
            end = 2 * end + 1
            continue
        asked = search.open[:n]
        need = np.array([search.may_record(h) for h in asked], dtype=bool)
        calls, scores, _ = oracle.evaluate_many([h.genes for h in asked], need_exact=need)
        bar.update(search.answer(calls, scores))


def _bins(genes: np.ndarray, first_dichot: int) -> list[np.ndarray]:
    return [genes[s::first_dichot] for s in range(first_dichot) if len(genes[s::first_dichot])]


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
        ``'fast'`` (stacked, level by level) or ``'plain'`` (one classifier call per candidate, depth-first).

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
    search = _Search(
        _bins(genes, int(first_dichot)),
        oracle.orig_call,
        int(max_split_size),
        first_found=bool(return_first_found),
        not_na=change_type == "not_na",
        na_idx=set(na_classes),
    )
    # progress: genes settled (in a half that keeps the call, recorded, or not needed after the first record)
    with progress(total=len(genes), desc="single-gene", unit="gene") as bar:
        (_ask_plain if method == "plain" else _ask_stacked)(search, oracle, bar)
    return search.result()
