"""An ensemble of detection signals: the smallest calibrated p-value, thresholded over clean validation cells.

Array level (no AnnData inside). Each member is a detector with the baselines' API
(``fit`` / ``score`` / ``calibrate``). At calibration every member scores the clean validation
cells; a cell's p-value under a member is the fraction of those scores at least as high as its
own (conformal, with the ``+1`` correction; validation cells get leave-one-out p-values). The
ensemble score is ``-log10`` of the smallest p-value over the members, and the threshold flags
``target_fpr`` of the validation cells overall (not per member). A
:class:`~scadversarial.detection.PlausibilityRules` member is a hard rule: a cell that breaks a
rule scores above every p-value-based score and is always flagged. Each flag has a reason: the
rule the cell breaks, else the name of the member with the smallest p-value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ._calibrated import RngLike, _Baseline, _clean_quantile_threshold, _rng
from ._rules import PlausibilityRules

if TYPE_CHECKING:
    from ..models.classifier import CellClassifier

#: A rule-breaking cell scores this many decades above the largest p-value-based score (``log10(n + 1)``),
#: plus ``log10(1 + violations)``: always flagged, and still growing with the number of violating entries.
HARD_MARGIN = 1.0
#: Splits of the data that :func:`fit_ensemble` reads; every other row (the test split) is never touched.
FIT_SPLIT, CALIBRATION_SPLIT = "train", "val"


@dataclass(frozen=True)
class EnsembleReport:
    """What the ensemble makes of each cell.

    Attributes
    ----------
    score
        Ensemble score (float64): ``-log10`` of the smallest p-value, or above every such score for a rule-breaking cell.
    flagged
        ``score >= threshold``.
    reason
        For flagged cells, the rule broken (``'out_of_range'``, ``'above_ceiling'``, ...) or the member with the smallest
        p-value (its name); ``''`` for cells not flagged (object array of str).
    pvalues
        Cells x members: calibrated p-value of each member, columns in the order of ``names``.
    names
        Member names.
    """

    score: np.ndarray
    flagged: np.ndarray
    reason: np.ndarray
    pvalues: np.ndarray
    names: tuple[str, ...]


class EnsembleDetector(_Baseline):
    """Max of calibrated per-signal evidence (smallest p-value), one threshold at ``target_fpr`` overall.

    Parameters
    ----------
    members
        ``{name: detector}`` with the baselines' API; fitted by :meth:`fit` (a
        :class:`~scadversarial.detection.PlausibilityRules` member acts as a hard rule).

    :meth:`fit` fits every member (each with its own child generator of ``rng``); :meth:`calibrate`
    stores the members' scores of the clean validation cells and sets one threshold at
    ``target_fpr`` overall (``X_adv_val`` is unused: the threshold rests on clean cells only, so
    no attack is favoured), and calibrates every member too.

    Examples
    --------
    >>> from scadversarial.detection import CountModelDetector, EnsembleDetector, PlausibilityRules
    >>> ens = EnsembleDetector({"rules": PlausibilityRules(), "count_model": CountModelDetector(statistic="deviance")})
    >>> ens.names
    ('rules', 'count_model')
    >>> ens.fit(clf, X_train, y=y_train, rng=0).calibrate(X_val, target_fpr=0.05)  # doctest: +SKIP
    >>> ens.explain(X_test).reason  # doctest: +SKIP
    """

    name = "ensemble"

    def __init__(self, members: Mapping[str, object]) -> None:
        if not members:
            msg = "An ensemble needs at least one member, e.g. {'rules': PlausibilityRules()}."
            raise ValueError(msg)
        bad = [n for n, d in members.items() if not all(callable(getattr(d, a, None)) for a in ("fit", "score"))]
        if bad:
            msg = f"Members {bad} lack fit()/score(); pass detectors with the baselines' API."
            raise TypeError(msg)
        super().__init__()
        self.members = dict(members)
        self.names = tuple(str(n) for n in self.members)
        self.reference_: list[np.ndarray] | None = None

    def __repr__(self) -> str:
        return f"EnsembleDetector(members={list(self.names)}, threshold={self.threshold:.6g})"

    def _fit(self, X_clean: np.ndarray, X_adv: np.ndarray | None, y: np.ndarray | None, rng: RngLike) -> None:
        """Fit every member on clean training cells (each with its own child generator of ``rng``)."""
        gens = _rng(rng).spawn(len(self.members))
        for det, gen in zip(self.members.values(), gens, strict=True):
            det.fit(self.classifier, X_clean, X_adv=X_adv, y=y, rng=gen)

    def _member_scores(self, X: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(d.score(X), dtype=np.float64) for d in self.members.values()]

    def _hard(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(violating entries, reason)`` per cell over the rule members."""
        n = np.zeros(len(X))
        reason = np.full(len(X), "", dtype=object)
        for det in self.members.values():
            if isinstance(det, PlausibilityRules):
                rep = det.explain(X)
                reason = np.where((reason == "") & (rep.score > 0), rep.reason, reason)
                n += rep.score
        return n, reason

    def _threshold(self, X_clean_val: np.ndarray, X_adv_val: np.ndarray | None, target_fpr: float) -> float:
        """Store the members' clean validation scores; the threshold at ``target_fpr`` overall (``X_adv_val`` unused)."""
        scores = self._member_scores(X_clean_val)
        n = len(X_clean_val)
        if n < 2:
            msg = f"Calibration needs at least 2 clean validation cells, got {n}; pass the validation split."
            raise ValueError(msg)
        self.reference_ = [np.sort(s) for s in scores]
        # leave-one-out p-values of the validation cells: each is scored against the other n - 1
        loo = np.stack(
            [(n - np.searchsorted(r, s, side="left")) / n for r, s in zip(self.reference_, scores, strict=True)], 1
        )
        stat = self._combine(loo, self._hard(X_clean_val)[0], n_ref=n)
        for det in self.members.values():  # members keep their own thresholds too (for their own flags)
            if callable(getattr(det, "calibrate", None)):
                det.calibrate(X_clean_val, target_fpr=target_fpr)
        return _clean_quantile_threshold(stat, target_fpr)

    def _combine(self, p: np.ndarray, hard: np.ndarray, *, n_ref: int) -> np.ndarray:
        stat = -np.log10(p.min(1))
        top = np.log10(n_ref + 1) + HARD_MARGIN
        return np.where(hard > 0, top + np.log10(1 + hard), stat)

    def pvalues(self, X: np.ndarray) -> np.ndarray:
        """Cells x members: conformal p-value of each member's score against the clean validation cells."""
        if self.reference_ is None:
            msg = "The ensemble is not calibrated; call `.calibrate(X_clean_val)` first."
            raise RuntimeError(msg)
        n = len(self.reference_[0])
        cols = [
            (n - np.searchsorted(r, s, side="left") + 1) / (n + 1)
            for r, s in zip(self.reference_, self._member_scores(X), strict=True)
        ]
        return np.stack(cols, 1)

    def explain(self, X: np.ndarray) -> EnsembleReport:
        """Score, flag, reason and per-member p-values of scaled cells ``X``.

        Returns
        -------
        An :class:`EnsembleReport`.
        """
        p = self.pvalues(X)
        hard, hard_reason = self._hard(X)
        score = self._combine(p, hard, n_ref=len(self.reference_[0]))
        flagged = score >= self.threshold
        names = np.array(self.names, dtype=object)
        reason = np.where(hard > 0, hard_reason, names[p.argmin(1)])
        return EnsembleReport(score, flagged, np.where(flagged, reason, ""), p, self.names)

    def score(self, X: np.ndarray) -> np.ndarray:
        """Ensemble scores of scaled cells ``X`` (float64; higher: more suspicious)."""
        return self.explain(X).score

    def flag(self, X: np.ndarray) -> np.ndarray:
        """Whether each cell is flagged (``score >= threshold``)."""
        return self.explain(X).flagged


def fit_ensemble(
    classifier: CellClassifier,
    X: np.ndarray,
    split: np.ndarray,
    members: Mapping[str, object],
    *,
    y: np.ndarray | None = None,
    target_fpr: float = 0.05,
    rng: np.random.Generator | int | None = None,
) -> EnsembleDetector:
    """An :class:`EnsembleDetector` fitted on the training rows of ``X`` and calibrated on its validation rows.

    Rows of any other split (the test cells) are never read.

    Parameters
    ----------
    classifier
        The watched classifier.
    X
        Scaled input of all cells (cells x genes).
    split
        Split of each row (``'train'``, ``'val'``, ``'test'``), e.g. ``adata.obs['sad_split']``.
    members
        ``{name: unfitted detector}``.
    y
        Labels of all rows (only the training rows are read); ``None``: the classifier's predictions.
    target_fpr
        False-positive rate of the threshold on the validation cells.
    rng
        Seed or generator of the members' fits.

    Returns
    -------
    The fitted, calibrated ensemble.

    Examples
    --------
    >>> from scadversarial.detection import CountModelDetector, PlausibilityRules, fit_ensemble
    >>> members = {"rules": PlausibilityRules(), "count_model": CountModelDetector(statistic="deviance")}
    >>> ens = fit_ensemble(clf, adata.X, adata.obs["sad_split"], members, rng=0)  # doctest: +SKIP
    """
    split = np.asarray(split).astype(str)
    if len(split) != len(X):
        msg = f"split has {len(split)} entries for {len(X)} cells; pass one split label per row of X."
        raise ValueError(msg)
    train, val = np.flatnonzero(split == FIT_SPLIT), np.flatnonzero(split == CALIBRATION_SPLIT)
    if len(train) < 2 or len(val) < 2:
        msg = f"fit_ensemble needs '{FIT_SPLIT}' and '{CALIBRATION_SPLIT}' rows, got {len(train)} / {len(val)}; run `sad.pp.split`."
        raise ValueError(msg)
    X_train = np.asarray(X[train], dtype=np.float32)
    y_train = None if y is None else np.asarray(y)[train]
    ens = EnsembleDetector(members).fit(classifier, X_train, y=y_train, rng=rng)
    ens.calibrate(np.asarray(X[val], dtype=np.float32), target_fpr=target_fpr)
    return ens


__all__ = ["EnsembleDetector", "EnsembleReport", "fit_ensemble"]
