"""Max-change attack: the largest gene set that can be modified without flipping the cluster's call.

adverSCarial's recursive halving: the gene list is split into its interleaved halves (visited in an
order drawn from the seeded generator at every split). A half that keeps the call alone is merged
with the genes kept so far when the union still keeps it, otherwise it is split again (when it has
more than ``max_split_size`` genes); a half that flips the call is split again. The kept set,
modified as a whole, keeps the call by construction; its complement is the cluster's signature.

The search is encoded once, as a state machine that asks questions and takes answers (:class:`_Search`);
the methods differ only in how they answer. ``method='plain'`` answers each question with one classifier
call (the reference). ``method='fast'`` with a linear classifier updates the logits incrementally: each
half's change is computed once and added to the unmodified logits (the half alone) and to the kept
genes' logits (the union), and only cells whose type the change could alter are looked at again (see
:meth:`ClusterOracle.linear_flipped <scadversarial.attacks._oracle.ClusterOracle.linear_flipped>`); cells
too close to call are classified a few questions later, many at once, the answers guessed meanwhile from
their float64 logits (a wrong guess sends the search back to that question). With any other classifier it
speculates: it predicts the answers of the next questions, classifies all of them in one stacked call, then
replays the search with the true answers up to the first wrong guess. All give the plain search's result
and consume the random generator identically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .._settings import progress
from .._validate import check_choice
from ._oracle import CertifiedSet, ClusterOracle, one_blas_thread

__all__ = ["MaxChangeResult", "max_change_search"]


@dataclass
class MaxChangeResult:
    """Result of a max-change search.

    Attributes
    ----------
    kept
        Gene indices that can be modified together without flipping the call (search order).
    call, score
        The cluster's call and score with all ``kept`` genes modified.
    n_tested
        Number of candidate gene lists classified (speculative ones included for ``'fast'``).
    n_questions
        Number of questions the search asked (the plain search's number of classifier calls).
    n_rewound
        Number of times the fast search with a linear classifier went back to a question it had answered on a
        wrong guess (see :func:`max_change_search`).

    """

    kept: np.ndarray
    call: int
    score: float
    n_tested: int
    n_questions: int
    n_rewound: int = 0


class _Orders:
    """The i-th ``rng.permutation(2)`` of the search, drawn lazily and shared by replays."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.start = rng.bit_generator.state
        self.perms: list[np.ndarray] = []

    def __getitem__(self, i: int) -> np.ndarray:
        while len(self.perms) <= i:
            self.perms.append(self.rng.permutation(2))
        return self.perms[i]

    def settle(self, n_draws: int) -> None:
        """Leave the generator as if only the search's ``n_draws`` permutations had been drawn.

        A speculative or rewound search may have drawn more; a generator shared with later searches (an
        overview) must go on from where the plain search leaves it.
        """
        if len(self.perms) > n_draws:
            self.rng.bit_generator.state = self.start
            for _ in range(n_draws):
                self.rng.permutation(2)
            del self.perms[n_draws:]


class _Search:
    """The max-change recursion as an explicit, copyable state machine: the one encoding of the search.

    The recursion asks two kinds of question about a half of a split list: ``'alone'`` (does modifying the half
    alone keep the call?) and, when it does and genes are kept already, ``'union'`` (does the half together with
    the kept genes keep it?). :meth:`question` gives the next question, :meth:`answer` takes its answer. Every
    method drives this one search; they differ only in how they answer its questions (:func:`_ask_plain`,
    :func:`_ask_speculative`, :func:`_ask_incremental`).
    """

    __slots__ = ("kept", "max_split", "n_draws", "n_kept", "orders", "pending", "stack")

    def __init__(self, genes: np.ndarray, max_split: int, orders: _Orders) -> None:
        self.stack: list[np.ndarray] = []
        self.kept: list[np.ndarray] = []
        self.n_kept = 0
        self.n_draws = 0
        self.pending: tuple[str, np.ndarray] | None = None
        self.orders = orders
        self.max_split = max_split
        self._dichot(genes)

    def copy(self) -> _Search:
        """An independent copy (the gene arrays are shared: they are never written)."""
        new = object.__new__(_Search)
        new.stack, new.kept = list(self.stack), list(self.kept)
        new.n_kept, new.n_draws, new.pending = self.n_kept, self.n_draws, self.pending
        new.orders, new.max_split = self.orders, self.max_split
        return new

    def _dichot(self, lst: np.ndarray) -> None:
        halves = (lst[0::2], lst[1::2])
        perm = self.orders[self.n_draws]
        self.n_draws += 1
        # a stack: push the half visited second first
        self.stack.append(halves[perm[1]])
        self.stack.append(halves[perm[0]])

    def remaining(self) -> int:
        """Genes not settled yet (kept, or in a half that flipped and is not split): those on the stack or asked."""
        return sum(len(h) for h in self.stack) + (len(self.pending[1]) if self.pending is not None else 0)

    def question(self) -> tuple[str, np.ndarray] | None:
        """The next question ``(kind, genes)`` (``kind`` is 'alone' or 'union'), or None when done."""
        while self.pending is None:
            if not self.stack:
                return None
            half = self.stack.pop()
            if len(half):
                self.pending = ("alone", half)
        kind, half = self.pending
        if kind == "alone":
            return kind, half
        return kind, np.concatenate([*self.kept, half])

    def answer(self, *, keeps: bool) -> bool:
        """Take the answer to the pending question; returns whether its half joined the kept genes."""
        kind, half = self.pending
        self.pending = None
        if keeps and kind == "alone" and not self.kept:
            self.kept.append(half)
            self.n_kept += len(half)
            return True
        if keeps and kind == "alone":
            self.pending = ("union", half)
        elif keeps:  # the union keeps the call: merge
            self.kept.append(half)
            self.n_kept += len(half)
            return True
        elif len(half) > self.max_split:
            self._dichot(half)
        return False

    def restore(self, saved: _Search) -> None:
        """Go back to a state saved with :meth:`copy`."""
        self.stack, self.kept = list(saved.stack), list(saved.kept)
        self.n_kept, self.n_draws, self.pending = saved.n_kept, saved.n_draws, saved.pending

    def kept_genes(self) -> list[int]:
        """The kept genes, in search order."""
        return np.concatenate(self.kept).tolist() if self.kept else []


@dataclass(frozen=True)
class _Tally:
    """What answering a search's questions cost: questions asked, candidates evaluated, questions asked again."""

    n_questions: int
    n_tested: int
    n_rewound: int = 0


def _advance(bar, settled: int) -> None:
    """Move the progress bar to ``settled`` genes (never back: a rewound search settles them again)."""
    if settled > bar.n:
        bar.update(settled - bar.n)


def _ask_plain(search: _Search, oracle: ClusterOracle, bar) -> _Tally:
    """Answer each question with one classifier call on the whole modified cluster (the reference)."""
    orig, n_total = oracle.orig_call, search.remaining()
    n_questions = 0
    while (q := search.question()) is not None:
        search.answer(keeps=oracle.evaluate_one(q[1])[0] == orig)
        n_questions += 1
        _advance(bar, n_total - search.remaining())
    return _Tally(n_questions, n_questions)


class _Predictor:
    """Guesses a question's answer from past answers to questions of the same kind and size.

    Returns None when the past answers disagree too often for a useful guess: the speculation then
    stops at that question.
    """

    def __init__(self, confidence: float = 0.9) -> None:
        self.stats: dict[tuple[str, int], list[int]] = {}
        self.confidence = confidence

    def update(self, kind: str, size: int, *, keeps: bool) -> None:
        s = self.stats.setdefault((kind, size), [0, 0])
        s[0] += int(keeps)
        s[1] += 1

    def __call__(self, kind: str, size: int) -> bool | None:
        s = self.stats.get((kind, size))
        if s is None:
            return True if kind == "alone" else None
        rate = s[0] / s[1]
        if rate >= self.confidence:
            return True
        if rate <= 1 - self.confidence:
            return False
        return None


def _ask_speculative(search: _Search, oracle: ClusterOracle, lookahead: int, bar) -> _Tally:
    """Answer questions ahead on guesses, classify them in one stacked call, keep the answers up to the first wrong guess.

    For any classifier: the guesses come from past answers to questions of the same kind and size (:class:`_Predictor`).
    """
    predict = _Predictor()
    n_total = search.remaining()
    n_questions = n_tested = 0
    while True:
        # speculate: run ahead on confident guesses, up to (and including) the first question without one
        spec = search.copy()
        qs, guesses = [], []
        while len(qs) < lookahead:
            q = spec.question()
            if q is None:
                break
            g = predict(q[0], len(spec.pending[1]))
            qs.append(q)
            guesses.append(g)
            if g is None:
                break
            spec.answer(keeps=g)
        if not qs:
            break
        unions = np.array([q[0] == "union" for q in qs])
        _, _, flipped = oracle.evaluate_many([q[1] for q in qs], need_exact=False, one_pass=unions)
        n_tested += len(qs)
        # replay the true answers up to (and including) the first wrong or missing guess
        for (kind, _), g, f in zip(qs, guesses, flipped, strict=True):
            keeps = not bool(f)
            search.question()
            predict.update(kind, len(search.pending[1]), keeps=keeps)
            search.answer(keeps=keeps)
            n_questions += 1
            if keeps != g:
                break
        _advance(bar, n_total - search.remaining())  # once per stacked call
    return _Tally(n_questions, n_tested)


def _answers(flipped: np.ndarray) -> tuple[bool, ...]:
    """The answers a question's evaluation gives: the half alone, and the union only when the half alone keeps."""
    return (bool(flipped[0]),) if flipped[0] or len(flipped) == 1 else (False, bool(flipped[1]))


def _both(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    """Cells unchanged by both of two gene sets (None: every row changes)."""
    return None if a is None or b is None else a & b


# questions between two progress-bar updates of the linear search (a question takes tens of microseconds;
# an update about one: every 64th keeps the bar's cost under a few percent of the search and its refresh frequent)
_BAR_EVERY = 64
_DEFER = 16  # most questions answered on a guess before the cells too close to call are classified


@dataclass(frozen=True)
class _Saved:
    """The search as it was before a guessed answer: where a wrong guess sends it back."""

    search: _Search
    kept: CertifiedSet | None
    kept_same: np.ndarray | None
    n_questions: int


def _ask_incremental(search: _Search, oracle: ClusterOracle, bar) -> _Tally:
    """Answer with a linear classifier's incremental update: one update per half, shared by its two questions.

    A half's change of the logits is computed once; the half alone adds it to the unmodified logits, the
    union with the kept genes to the kept set's logits (kept up to date at every merge, with their per-cell
    types and slack). Both questions are answered in one evaluation (the union is asked only when the half
    alone keeps the call). The update is laid out so that every half is read as a slice
    (:meth:`~scadversarial.attacks._oracle._incremental.IncrementalEngine.lay_out`). (A half's change is not
    taken as its list's change less the other half's: the rounding of that difference scales with the other
    half's terms, which the bound on the candidate's own terms does not cover.)

    An answer that depends on cells too close to call is first guessed from their float64 logits; the search
    goes on, and the cells of up to ``_DEFER`` guessed questions are classified in one call. At the first wrong
    guess the search returns to that question (its state was kept) and goes on with the true answer, so it
    asks exactly the plain search's questions. Fewer questions are guessed at once after a wrong guess.
    """
    inc = oracle.incremental
    n_total = search.remaining()
    start = inc.certify(inc.start())
    kept = kept_same = None  # the kept genes' CertifiedSet, and their unchanged cells
    n_questions = n_tested = 0
    guessed: list[tuple] = []  # (state before the answer, question, guessed answers, deferred cells), in order
    depth = _DEFER
    n_rewound = 0
    n_steps = 0  # halves evaluated (for the progress bar)

    def answer(half: np.ndarray, delta: np.ndarray, bases: list, sames: list, flipped: np.ndarray) -> None:
        nonlocal kept, kept_same, n_questions
        merged = search.answer(keeps=not flipped[0])
        n_questions += 1
        if search.pending is not None:  # the union question (search.question() would only build its gene list)
            merged = search.answer(keeps=not flipped[1])
            n_questions += 1
        if merged:
            kept = inc.certify(bases[-1].hbz + delta)
            kept_same = sames[-1]

    while True:
        more = search.question() is not None
        if guessed and (not more or len(guessed) >= depth):
            truth = iter(oracle.linear_resolve([item for g in guessed for item in g[3]]))
            wrong = None
            for saved, question, flipped, items in guessed:
                true = flipped.copy()
                for j, _, _ in items:
                    true[j] = next(truth)
                if _answers(true) != _answers(flipped):
                    wrong = saved, question, true
                    break
            guessed.clear()
            if wrong is not None:  # back to the wrongly guessed question, answered truly
                saved, question, true = wrong
                search.restore(saved.search)
                kept, kept_same, n_questions = saved.kept, saved.kept_same, saved.n_questions
                answer(*question, true)
                depth = max(depth // 2, 1)
                n_rewound += 1
                continue
            depth = min(2 * depth, _DEFER)
            _advance(bar, n_total - search.remaining())  # once per resolved block of guesses
        if not more:
            break
        half = search.pending[1]
        delta = inc.delta(half)
        same = oracle.cells.unchanged(half)
        bases, sames, sets = [start], [same], [lambda half=half: half]
        if search.kept:
            bases.append(kept)
            sames.append(_both(kept_same, same))
            sets.append(lambda parts=[*search.kept, half]: np.concatenate(parts))
        items: list = []
        flipped = oracle.linear_flipped(bases, delta, sames, sets, deferred=items)
        n_tested += len(bases)
        question = (half, delta, bases, sames)
        if items:
            guessed.append((_Saved(search.copy(), kept, kept_same, n_questions), question, flipped, items))
        answer(*question, flipped)
        n_steps += 1
        if not n_steps % _BAR_EVERY:
            _advance(bar, n_total - search.remaining())
    _advance(bar, n_total - search.remaining())
    return _Tally(n_questions, n_tested, n_rewound)


def max_change_search(
    oracle: ClusterOracle,
    genes: Sequence[int] | np.ndarray | None = None,
    *,
    max_split_size: int = 1,
    random_state: int | np.random.Generator | None = 0,
    method: str = "fast",
    lookahead: int = 256,
) -> MaxChangeResult:
    """Search the largest set of genes whose joint modification keeps the cluster's call.

    Parameters
    ----------
    oracle
        The cluster, its modified values and the classifier.
    genes
        Gene indices to search (default: all).
    max_split_size
        Lists of at most this many genes are not split further.
    random_state
        Seed or generator of the order in which the two halves of each split are visited.
    method
        ``'fast'`` (speculative, stacked) or ``'plain'`` (one classifier call per question).
    lookahead
        Most questions speculated at once by ``'fast'`` (classifiers without a linear update).

    Returns
    -------
    :class:`MaxChangeResult`.

    """
    check_choice("method", method, ("fast", "plain"))
    max_split = max(int(max_split_size), 1)
    genes = np.arange(oracle.n_genes) if genes is None else np.asarray(genes, dtype=np.intp)
    if len(genes) and not 0 <= genes.min() <= genes.max() < oracle.n_genes:
        msg = f"genes must be indices 0 <= g < {oracle.n_genes} (the oracle's genes)."
        raise IndexError(msg)
    if len(np.unique(genes)) != len(genes):
        msg = "genes has repeated indices; pass each gene once (e.g. genes=np.unique(genes))."
        raise ValueError(msg)
    orders = _Orders(np.random.default_rng(random_state))
    search = _Search(genes, max_split, orders)
    # progress: genes settled (kept, or in a flipping half too small to split)
    with progress(total=len(genes), desc="max-change", unit="gene") as bar:
        if method == "plain":
            tally = _ask_plain(search, oracle, bar)
        elif oracle.is_linear:
            with one_blas_thread():  # many small products
                oracle.incremental.lay_out(genes)
                tally = _ask_incremental(search, oracle, bar)
        else:
            tally = _ask_speculative(search, oracle, int(lookahead), bar)
    orders.settle(search.n_draws)  # (speculation and rewinds may have drawn more)
    kept = np.asarray(search.kept_genes(), dtype=np.intp)
    if len(kept):
        call, score = oracle.evaluate_one(kept)
    else:
        call, score = oracle.orig_call, oracle.orig_score
    return MaxChangeResult(
        kept=kept,
        call=int(call),
        score=float(score),
        n_tested=tally.n_tested,
        n_questions=tally.n_questions,
        n_rewound=tally.n_rewound,
    )
