"""Plausibility rules: inputs that no preprocessing of real counts can produce, flagged with a reason.

Array level (no AnnData inside). A classifier's scaled input is ``x = clip((l - mean) / std)`` of
log-normalized values ``l = log1p(k * target_sum / N)`` with integer counts ``k`` and the cell's
library ``N``. Inverting the classifier's own transform (``l = x * std + mean``, exact up to
float32 rounding wherever ``|x|`` is below the clip) gives five checks per entry:

``'out_of_range'``
    ``|x|`` beyond the clip: the transform never outputs it.
``'above_ceiling'``
    With the normalization's target sum known, a log value (for an entry at the clip: its smallest,
    the clip's) above the ceiling ``log1p(share * target_sum)``: one gene holding more than
    ``share`` of the cell's library, where ``share`` is :data:`SHARE_MARGIN` times the largest
    one-gene share of a clean training cell (at most 1, the whole library, which no count exceeds).
    Impossible at a share of 1; at a lower one, a gene dominating its cell more than any training
    cell's gene (a cell type training lacked may, see ``share_margin``).
``'negative_expression'``
    ``l < 0``: a log-normalized value is never negative.
``'off_zero'``
    ``0 < l`` below a quarter of the smallest positive value of the clean training cells: no count
    (not even 1 UMI of a cell four times deeper than any training cell) normalizes to it.
``'off_lattice'``
    ``expm1(l) = k * u`` is not an integer multiple of the cell's unit ``u = target_sum / N``
    (estimated per cell from its own values, :func:`fit_lattice`).

Entries at the clip are not invertible: only the checks of a single value's range (beyond the clip,
above the ceiling, negative) apply to them. The score of a
cell is its number of violating entries (it grows with the number of genes an attack moves); its
reason is the first rule of the list above that it breaks. Its *excess* (:meth:`Transform.excess`) is how
far, in log units summed over entries, it lies outside the range counts can produce (the
:data:`RANGE_RULES`): it grows with the size of an attack where the number of violating entries stops growing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import numpy as np

from .._settings import logger
from ._calibrated import RngLike, _Baseline

if TYPE_CHECKING:
    from ..models.classifier import CellClassifier

Reason = Literal["out_of_range", "above_ceiling", "negative_expression", "off_zero", "off_lattice", ""]
#: Rules in order of precedence (the reason of a cell is the first it breaks).
RULES: tuple[str, ...] = ("out_of_range", "above_ceiling", "negative_expression", "off_zero", "off_lattice")
#: The rules on the range of single values (every rule but the lattice's, which fits a cell's values together).
RANGE_RULES: tuple[str, ...] = RULES[:-1]

#: Tolerance of every check in log units. Inverting float32 scaled values of PBMC3k gives log values
#: within 5.2e-7 of the stored ones (and lattice residuals within 5.3e-7): 1e-4 is ~200x that, and
#: still far below any change that could move a prediction.
LOG_TOL = 1e-4
#: Relative tolerance on the clip: float32 holds the clip value (10) exactly, and a scaled value beyond
#: it by more than float32 rounding was not produced by the transform.
CLIP_RTOL = 1e-6
#: A value below this fraction of the smallest positive clean training value is off zero: tolerates
#: query cells up to ~4x deeper than the deepest training cell (1 UMI then normalizes to ~1/4 of it).
OFF_ZERO_FRACTION = 0.25
#: The cell's unit is tried at its smallest value divided by 1..MAX_DIVISOR: a cell whose smallest
#: count among the kept genes is 2-4 UMI (not 1) is still recognized as on the lattice.
MAX_DIVISOR = 4
#: The lattice rule stays on only when at most this fraction of clean training cells break it; more
#: means the values were not normalized from integer counts (e.g. already-processed data sets).
LATTICE_MAX_CLEAN_RATE = 0.01
#: The ceiling lets one gene hold this many times the largest share of its library one gene holds in a
#: clean training cell: validation cells of PBMC3k, clean and thinned to half depth, reach at most 1.2x
#: (benchmarks/results/single_gene_dependence.txt), a one-gene count attack takes far more.
SHARE_MARGIN = 1.5
#: Cells per chunk of the vectorized checks (cells x genes float64 arrays stay ~16 MB at 2,000 genes).
CHUNK = 1024


@dataclass(frozen=True)
class Transform:
    """The classifier's per-gene scaling, as float64 arrays: ``x = clip((l - mean) / std, -clip, clip)``.

    ``log_max``: the largest log value the rules accept, ``log1p(share * target_sum)`` (``inf``: unknown).
    """

    mean: np.ndarray
    std: np.ndarray
    clip: float | None
    log_max: float = math.inf

    @classmethod
    def of(cls, classifier: CellClassifier, *, target_sum: float | None = None) -> Transform:
        """The transform of a :class:`~scadversarial.models.CellClassifier` (and the normalization's target sum)."""
        t = classifier.transform
        clip = None if t.clip is None else float(t.clip)
        mean, std = t.mean.detach().cpu().double().numpy(), t.std.detach().cpu().double().numpy()
        return cls(mean, std, clip, log_ceiling(target_sum))

    def to_log(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(log values, invertible)`` of scaled ``X``; entries at (or beyond) the clip are not invertible."""
        X = np.asarray(X, dtype=np.float64)
        L = X * self.std + self.mean
        if self.clip is None:
            return L, np.ones(X.shape, dtype=bool)
        return L, np.abs(X) < self.clip * (1 - CLIP_RTOL)

    def out_of_range(self, X: np.ndarray) -> np.ndarray:
        """Entries beyond the clip: the transform never outputs them."""
        X = np.asarray(X, dtype=np.float64)
        return np.zeros(X.shape, dtype=bool) if self.clip is None else np.abs(X) > self.clip * (1 + CLIP_RTOL)

    def ranges(self, X: np.ndarray, zero_bound: float) -> RangeEntries:
        """The entries of scaled ``X`` that break each rule on a single value's range (one pass; :class:`RangeEntries`)."""
        X = np.asarray(X, dtype=np.float64)
        L, inv = self.to_log(X)
        beyond = self.out_of_range(X)
        above = ~beyond & (self.log_max + LOG_TOL < L)
        neg = ~(beyond | above) & (L < -LOG_TOL)
        off_zero = inv & (L > LOG_TOL) & (zero_bound > L)
        return RangeEntries(X, L, inv, beyond, above, neg, off_zero)

    def excess(self, X: np.ndarray, zero_bound: float, entries: RangeEntries | None = None) -> np.ndarray:
        """Per entry, its distance in log units from the range counts can produce (0 inside it; float64).

        An entry beyond the clip or above the ceiling lies beyond the clip by ``(|x| - clip) * std``,
        above the ceiling by ``l - log_max`` and below zero by ``-l`` (the largest counts, so the
        distance does not drop where an entry crosses the clip); a negative one lies ``-l`` below
        zero; one off zero lies ``min(l, zero_bound - l)`` from the nearest value the rules accept
        (zero, or the off-zero bound). The rules' precedence holds: an entry counts for the first of
        them it breaks. NaN entries break no rule and count 0. ``entries``: :meth:`ranges` of ``X``
        when the caller has them.
        """
        e = self.ranges(X, zero_bound) if entries is None else entries
        L = e.log
        over = np.maximum(L - self.log_max, -L)
        if self.clip is not None:
            over = np.maximum(over, (np.abs(e.scaled) - self.clip) * self.std)
        out = np.where(e.off_zero, np.minimum(L, zero_bound - L), 0.0)
        out = np.where(e.negative, -L, out)
        return np.where(e.beyond | e.above, np.maximum(over, 0.0), out)

    def to_scaled(self, L: np.ndarray) -> np.ndarray:
        """Scaled float32 values of log values ``L`` (the classifier's transform)."""
        Z = (np.asarray(L, dtype=np.float64) - self.mean) / self.std
        if self.clip is not None:
            Z = np.clip(Z, -self.clip, self.clip)
        return Z.astype(np.float32)


@dataclass(frozen=True)
class RangeEntries:
    """Scaled cells, their log values and the entries breaking each rule on a single value's range (boolean masks).

    The masks exclude each other in the rules' precedence (:data:`RANGE_RULES`).
    """

    scaled: np.ndarray
    log: np.ndarray
    invertible: np.ndarray
    beyond: np.ndarray
    above: np.ndarray
    negative: np.ndarray
    off_zero: np.ndarray


def log_ceiling(target_sum: float | None, share: float = 1.0) -> float:
    """``log1p(share * target_sum)``: the log value of one gene holding ``share`` of a cell's library.

    ``share`` is capped at 1 (the whole library, also for a NaN share); ``inf`` without a target sum.
    """
    if target_sum is None:
        return math.inf
    if not (np.isfinite(target_sum) and target_sum > 0):
        msg = f"target_sum must be a positive number (the normalization's, e.g. 1e4), got {target_sum!r}."
        raise ValueError(msg)
    share = 1.0 if np.isnan(share) else min(float(share), 1.0)
    return math.log1p(share * float(target_sum))


def check_share_margin(share_margin: float | None) -> None:
    """Refuse a ceiling margin below 1 (the ceiling would flag training cells); ``None`` (the whole library) passes."""
    if share_margin is not None and not (np.isfinite(share_margin) and share_margin >= 1):
        msg = (
            f"share_margin must be a number >= 1 (below 1 the ceiling flags training cells) or None "
            f"(the whole library), got {share_margin!r}."
        )
        raise ValueError(msg)


def largest_share(transform: Transform, X: np.ndarray, target_sum: float) -> float:
    """The largest share of its library one gene holds in a cell of scaled ``X`` (an entry at the clip: its smallest; NaN without cells).

    ``expm1(l) / target_sum`` is the share ``k / N`` of log value ``l = log1p(k * target_sum / N)``;
    the transform is increasing in ``l``, so each gene's largest scaled value gives its largest share.
    """
    X = np.asarray(X)
    if not len(X):
        return float("nan")  # no cell: no share to bound (the ceiling stays the whole library)
    top = X.max(0).astype(np.float64) * transform.std + transform.mean
    return float(np.expm1(top.max()) / target_sum)


def _zero_bound(transform: Transform, X: np.ndarray) -> float:
    """The ``'off_zero'`` bound of clean cells ``X``: :data:`OFF_ZERO_FRACTION` of their smallest positive log value."""
    L, inv = transform.to_log(X)
    pos = L[inv & (L > LOG_TOL)]
    return OFF_ZERO_FRACTION * float(pos.min()) if pos.size else LOG_TOL


@dataclass(frozen=True)
class Lattice:
    """Per-cell fit of ``expm1(l) = k * unit`` to integer counts ``k``.

    Attributes
    ----------
    unit
        Per cell, ``target_sum / N`` (float64; NaN for a cell without a checked entry).
    counts
        Cells x genes: the nearest integer count of each checked entry, 0 elsewhere (float64).
    off
        Cells x genes: checked entries more than :data:`LOG_TOL` log units from ``log1p(k * unit)``.
    """

    unit: np.ndarray
    counts: np.ndarray
    off: np.ndarray


def fit_lattice(L: np.ndarray, checked: np.ndarray) -> Lattice:
    """Fit each cell's log values to the lattice ``log1p(k * unit)`` of integer counts ``k >= 1``.

    For each divisor ``m`` in ``1..MAX_DIVISOR`` the unit starts at the cell's smallest ``expm1(l)``
    divided by ``m``, is refined by least squares over the rounded counts, and the entries off the
    lattice are counted; the divisor with the fewest wins (ties: the smallest). On clean PBMC3k
    cells every checked entry lies within 5.3e-7 log units of the lattice.

    Parameters
    ----------
    L
        Log-normalized values (cells x genes).
    checked
        Entries to fit (expressed and invertible).

    Returns
    -------
    The :class:`Lattice` of the cells.

    Examples
    --------
    >>> import numpy as np
    >>> L = np.log1p(np.array([[1.0, 3.0, 0.0, 7.0]]) * 1e4 / 2500)
    >>> lat = fit_lattice(L, L > 0)
    >>> float(np.round(lat.unit[0], 6)), lat.counts[0].tolist(), bool(lat.off.any())
    (4.0, [1.0, 3.0, 0.0, 7.0], False)
    """
    V = np.where(checked, np.expm1(np.where(checked, L, 0.0)), np.nan)
    logV = np.where(checked, L, 0.0)
    has = checked.any(1)
    vmin = np.where(has, np.nanmin(np.where(has[:, None], V, 1.0), axis=1), np.nan)
    best_unit = np.full(len(L), np.nan)
    best_off = np.zeros(L.shape, dtype=bool)
    best_counts = np.zeros(L.shape)
    best_n = np.full(len(L), np.iinfo(np.int64).max)
    with np.errstate(invalid="ignore", divide="ignore"):
        for m in range(1, MAX_DIVISOR + 1):
            u = vmin / m
            K = np.maximum(np.rint(V / u[:, None]), 1.0)
            K = np.where(checked, K, 0.0)
            u = np.where(has, np.nansum(K * np.nan_to_num(V), 1) / np.maximum((K * K).sum(1), 1.0), np.nan)
            K = np.where(checked, np.maximum(np.rint(V / u[:, None]), 1.0), 0.0)
            off = checked & (np.abs(logV - np.log1p(K * u[:, None])) > LOG_TOL)
            n = off.sum(1)
            better = n < best_n
            best_n = np.where(better, n, best_n)
            best_unit = np.where(better, u, best_unit)
            best_off[better] = off[better]
            best_counts[better] = K[better]
    return Lattice(best_unit, best_counts, best_off)


@dataclass(frozen=True)
class RuleReport:
    """What the plausibility rules find in each cell.

    Attributes
    ----------
    score
        Number of violating entries per cell (float64).
    reason
        The first rule of :data:`RULES` the cell breaks, ``''`` for none (object array of str).
    counts
        Cells x rules: violating entries per rule, columns in the order of :data:`RULES`.
    excess
        Per cell, how far its entries lie outside the range counts can produce, in log units summed
        over entries (:meth:`Transform.excess`; float64, 0 for a cell the :data:`RANGE_RULES` pass).
    """

    score: np.ndarray
    reason: np.ndarray
    counts: np.ndarray
    excess: np.ndarray


class PlausibilityRules(_Baseline):
    """Flags inputs that no preprocessing of real counts can produce, with the rule each cell breaks.

    The rules (see the module docstring) read the classifier's scaled input through its own
    transform. :meth:`fit` learns only the smallest positive value of the clean training cells
    (the ``'off_zero'`` bound), the largest share of its library one gene holds in them
    (``max_share_``, the log ceiling's; NaN without a target sum or margin) and whether those cells
    lie on the count lattice (the lattice rule
    is switched off, with a warning, when more than :data:`LATTICE_MAX_CLEAN_RATE` of them do not:
    data that were never integer counts). :meth:`calibrate` sets the threshold to at least one
    violating entry.

    Parameters
    ----------
    lattice
        Apply the lattice rule: ``'auto'`` (when the training cells obey it), or always / never.
    target_sum
        The normalization's target sum (``sad.pp.preprocess``'s, 1e4): ``'above_ceiling'`` then
        flags a log value above the ceiling, an entry at the clip included (``None``: that rule is off).
    share_margin
        The ceiling lets one gene hold this many times the largest share of its library one gene
        holds in a clean training cell (capped at the whole library); ``None``: the whole library.
        Cells of a type that training lacks may hold more (plasma cells, erythrocytes): train on
        them, or raise it.

    Examples
    --------
    >>> rules = PlausibilityRules().fit(clf, X_train)  # doctest: +SKIP
    >>> rules.calibrate(X_val, target_fpr=0.05)  # doctest: +SKIP
    >>> rep = rules.explain(X_test)  # doctest: +SKIP
    >>> rep.reason[rep.score >= rules.threshold]  # doctest: +SKIP
    """

    name = "rules"

    def __init__(
        self,
        *,
        lattice: Literal["auto", "on", "off"] = "auto",
        target_sum: float | None = None,
        share_margin: float | None = SHARE_MARGIN,
    ) -> None:
        super().__init__()
        if lattice not in ("auto", "on", "off"):
            msg = f"lattice must be 'auto', 'on' or 'off', got {lattice!r}."
            raise ValueError(msg)
        log_ceiling(target_sum)  # checked before anything is fitted
        check_share_margin(share_margin)
        self.lattice, self.target_sum, self.share_margin = lattice, target_sum, share_margin

    def _fit(self, X_clean: np.ndarray, X_adv: np.ndarray | None, y: np.ndarray | None, rng: RngLike) -> None:
        """Learn the ``'off_zero'`` bound and the ceiling, check the lattice on clean training cells (``X_adv``, ``y``, ``rng`` unused)."""
        X_clean = self._check_input(X_clean)
        self.transform_ = Transform.of(self.classifier, target_sum=self.target_sum)
        self.max_share_ = float("nan")
        if self.target_sum is not None and self.share_margin is not None:
            self.max_share_ = largest_share(self.transform_, X_clean, self.target_sum)
            ceiling = log_ceiling(self.target_sum, self.share_margin * self.max_share_)
            self.transform_ = replace(self.transform_, log_max=ceiling)
        self.zero_bound_ = _zero_bound(self.transform_, X_clean)
        self.use_lattice_ = self.lattice != "off"
        rep = self.explain(X_clean) if self.lattice == "auto" else None
        col = RULES.index("off_lattice")
        self.lattice_clean_rate_ = float(np.mean(rep.counts[:, col] > 0)) if rep is not None else float("nan")
        if self.lattice == "auto" and self.lattice_clean_rate_ > LATTICE_MAX_CLEAN_RATE:
            logger.warning(
                "rules: %.1f%% of clean training cells are off the count lattice: the values were not normalized "
                "from integer counts, so the lattice rule is off",
                100 * self.lattice_clean_rate_,
            )
            self.use_lattice_ = False

    def explain(self, X: np.ndarray) -> RuleReport:
        """Score, reason and per-rule counts of violating entries of scaled cells ``X`` (cells x genes).

        Returns
        -------
        A :class:`RuleReport`.
        """
        X = self._check_input(X)
        counts = np.zeros((len(X), len(RULES)), dtype=np.int64)
        excess = np.zeros(len(X))
        for s in range(0, len(X), CHUNK):
            counts[s : s + CHUNK], excess[s : s + CHUNK] = self._counts(X[s : s + CHUNK])
        fired = counts > 0
        names = np.array([*RULES, ""], dtype=object)
        first = np.where(fired.any(1), fired.argmax(1), len(RULES))
        return RuleReport(counts.sum(1).astype(np.float64), names[first], counts, excess)

    def _counts(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Violating entries per cell and rule, and each cell's excess."""
        t = self.transform_
        e = t.ranges(X, self.zero_bound_)
        out = np.zeros((len(X), len(RULES)), dtype=np.int64)
        for j, entries in enumerate((e.beyond, e.above, e.negative, e.off_zero)):
            out[:, j] = entries.sum(1)
        if self.use_lattice_:
            checked = e.invertible & (self.zero_bound_ <= e.log)
            out[:, len(RANGE_RULES)] = fit_lattice(e.log, checked).off.sum(1)
        return out, t.excess(X, self.zero_bound_, e).sum(1)

    def score(self, X: np.ndarray) -> np.ndarray:
        """Number of violating entries per cell (float64); 0 for a cell no rule objects to."""
        return self.explain(X).score

    def _threshold(self, X_clean_val: np.ndarray, X_adv_val: np.ndarray | None, target_fpr: float) -> float:
        """The baselines' threshold, but at least one violating entry."""
        return max(super()._threshold(X_clean_val, X_adv_val, target_fpr), 1.0)


__all__ = [
    "RANGE_RULES",
    "RULES",
    "SHARE_MARGIN",
    "RangeEntries",
    "Lattice",
    "PlausibilityRules",
    "Reason",
    "RuleReport",
    "Transform",
    "fit_lattice",
    "largest_share",
    "log_ceiling",
]
