"""Random-walk attack: the fewest genes (each with one of several modifications) that flip the call.

adverSCarial's two steps: (1) random assignments of a modification (or none) to each gene are drawn
(``first_batch`` of them) and classified in order until one flips the cluster's call: the walk's seed;
(2) for ``walk_length`` steps, a new assignment is proposed from the best one (each modified gene is
redrawn with probability ``step_change_ratio``; an unmodified gene gets a modification with a
probability that shrinks with the number of unmodified genes), always with fewer modified genes and
never tried before; it replaces the best when it still flips the call.

The walk is encoded once; the methods differ only in how they classify a batch of assignments.
``method='plain'`` classifies one assignment per call, in batches of one; ``method='fast'`` classifies the
seeds in growing stacked batches and speculates on the walk: proposals are drawn ahead from the current
best (more of them while improvements are rare), classified together, and the generator is replayed up to
the first improvement. Both consume the generator identically and return the same walk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .._docs import doc_oracle_values, doc_params
from .._settings import progress
from .._validate import check_choice
from ._oracle import ClusterOracle

__all__ = ["RandomWalkResult", "random_walk_search"]


@dataclass
class RandomWalkResult:
    """Result of a random walk.

    Attributes
    ----------
    best
        Per-gene modification index of the best attack (-1: not modified), None when no seed flipped.
    best_call, best_score
        The cluster's call and score under ``best``.
    history
        One dict per improvement: ``step`` (0 = seed), ``n_genes``, ``call``, ``score``.
    n_tested
        Assignments classified.

    """

    best: np.ndarray | None
    best_call: int = -1
    best_score: float = float("nan")
    history: list[dict] = field(default_factory=list)
    n_tested: int = 0


def _flip_ok(call: int, orig: int, *, not_na: bool, na_idx: set[int]) -> bool:
    return call != orig and (not not_na or call not in na_idx)


def _propose(best: np.ndarray, n_mods: int, ratio: float, rng: np.random.Generator, seen: set, max_tries: int):
    """A new assignment with fewer modified genes than ``best`` and not in ``seen`` (None after ``max_tries``)."""
    n_best = int((best >= 0).sum())
    k_mod = max(int(round(1 / ratio)), 1)
    for _ in range(max_tries):
        n_unmod = int((best < 0).sum())
        k_unmod = int(round(np.sqrt(n_unmod) / ratio))
        redraw_mod = (best >= 0) & (rng.integers(0, k_mod, size=best.size) == 0)
        redraw_unmod = (best < 0) & (rng.integers(0, max(k_unmod, 1), size=best.size) == 0) & (k_unmod > 0)
        new_vals = rng.integers(-1, n_mods, size=best.size)
        cand = np.where(redraw_mod | redraw_unmod, new_vals, best)
        key = cand.tobytes()
        if int((cand >= 0).sum()) < n_best and key not in seen:
            seen.add(key)
            return cand
    return None


class _OneByOne:
    """Classifies each assignment in its own classifier call (``method='plain'``, the reference): batches of one."""

    def __init__(self, oracle: ClusterOracle) -> None:
        self.oracle = oracle

    def calls(self, assignments: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Calls and scores of ``assignments``, one classifier call each."""
        out = [self.oracle.evaluate_assignment(a) for a in assignments]
        return np.array([c for c, _ in out], dtype=np.int64), np.array([s for _, s in out])

    def wider(self, width: int) -> int:
        """The next batch's size: always one (``width`` is the last batch's)."""
        del width
        return 1


class _Stacked(_OneByOne):
    """Classifies batches of assignments in stacked calls (``method='fast'``); the batches grow while nothing flips."""

    def calls(self, assignments: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Exact calls and scores of ``assignments``, in stacked calls."""
        calls, scores, _ = self.oracle.evaluate_assignments(assignments)
        return calls, scores

    def wider(self, width: int) -> int:
        """The next batch's size after one without a flip: twice as many, up to one stacked call."""
        return min(2 * width, max(self.oracle.chunk_size(), 1))


@doc_params(doc_oracle_values=doc_oracle_values)
def random_walk_search(
    oracle: ClusterOracle,
    genes: Sequence[int] | np.ndarray,
    *,
    first_batch: int = 100,
    walk_length: int = 100,
    step_change_ratio: float = 0.2,
    max_tries: int = 10000,
    change_type: str = "any",
    na_classes: Sequence[int] = (),
    random_state: int | np.random.Generator | None = 0,
    method: str = "fast",
) -> RandomWalkResult:
    """Random-walk search of a small multi-gene attack.

    Parameters
    ----------
    {doc_oracle_values}
    genes
        Indices of the genes the walk may modify.
    first_batch
        Random assignments tried to find a seed.
    walk_length
        Walk steps.
    step_change_ratio
        Probability of redrawing a modified gene's modification at each step.
    max_tries
        Proposals drawn before giving up on finding a new, smaller one.
    change_type
        ``'any'`` or ``'not_na'`` (flips to a class of ``na_classes`` do not count).
    na_classes
        Class indices meaning "no call".
    random_state
        Seed or generator.
    method
        ``'fast'`` or ``'plain'``.

    Returns
    -------
    :class:`RandomWalkResult`; ``best`` covers all genes of the oracle (genes outside ``genes`` are -1).

    """
    check_choice("method", method, ("fast", "plain"))
    ask = _Stacked(oracle) if method == "fast" else _OneByOne(oracle)
    rng = np.random.default_rng(random_state)
    genes = np.asarray(genes, dtype=np.intp)
    n_mods = len(oracle.Vs)
    orig, not_na, na_idx = oracle.orig_call, change_type == "not_na", set(na_classes)
    res = RandomWalkResult(best=None)

    def full(a: np.ndarray) -> np.ndarray:
        out = np.full(oracle.n_genes, -1, dtype=np.int64)
        out[genes] = a
        return out

    def first_flip(calls: np.ndarray) -> int | None:
        return next((j for j, c in enumerate(calls) if _flip_ok(int(c), orig, not_na=not_na, na_idx=na_idx)), None)

    # step 1: the seed, the first of the random assignments that flips (classified in batches that grow while
    # none flips: an early seed costs little, a late one few calls)
    seeds = rng.integers(-1, n_mods, size=(int(first_batch), len(genes)))
    seen = {s.tobytes() for s in seeds}
    first = None
    start, step = 0, 1
    while start < len(seeds):
        calls, scores = ask.calls([full(s) for s in seeds[start : start + step]])
        res.n_tested += len(calls)
        j = first_flip(calls)
        if j is not None:
            first = (start + j, int(calls[j]), float(scores[j]))
            break
        start += step
        step = ask.wider(step)
    if first is None:
        return res
    best = seeds[first[0]].copy()
    res.best_call, res.best_score = first[1], first[2]
    res.history.append({"step": 0, "n_genes": int((best >= 0).sum()), "call": first[1], "score": first[2]})

    # step 2: the walk. Proposals are drawn ahead from the current best (speculating that they all fail, so
    # that they are drawn from the same best), classified together; at the first improvement the generator and
    # the seen set are replayed up to it. (Batches of one, the plain walk, never replay.) Progress: steps
    # walked, updated once per batch.
    with progress(total=int(walk_length), desc="random walk", unit="step") as bar:
        t, width = 0, 1
        while t < walk_length:
            k = min(walk_length - t, width)
            state = rng.bit_generator.state
            seen_before = set(seen) if k > 1 else None
            cands = []
            for _ in range(k):
                c = _propose(best, n_mods, step_change_ratio, rng, seen, max_tries)
                if c is None:
                    break
                cands.append(c)
            if not cands:
                break
            calls, scores = ask.calls([full(c) for c in cands])
            res.n_tested += len(cands)
            j = first_flip(calls)
            if j is None:
                t += len(cands)
                bar.update(len(cands))
                if len(cands) < k:
                    break
                width = ask.wider(width)  # improvements are rare: look further ahead
                continue
            width = max(width // 2, 1)
            if j < k - 1:  # proposals drawn past the improvement (or a failed one): replay up to it
                rng.bit_generator.state = state
                seen.clear()
                seen.update(seen_before)
                for _ in range(j + 1):
                    _propose(best, n_mods, step_change_ratio, rng, seen, max_tries)
            t += j + 1
            bar.update(j + 1)
            best, res.best_call, res.best_score = cands[j], int(calls[j]), float(scores[j])
            res.history.append(
                {"step": t, "n_genes": int((best >= 0).sum()), "call": res.best_call, "score": res.best_score}
            )
    res.best = full(best)
    return res
