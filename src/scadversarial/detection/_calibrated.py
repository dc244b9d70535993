"""The shared machinery of the array-level detectors: fit, batched scoring, calibration and flagging.

Every detector of :mod:`scadversarial.detection` (the baselines, the rules, the count model, the
stability signals and the ensemble) derives from :class:`_Baseline`, which keeps the classifier,
checks inputs, scores in batches through it and sets the threshold on clean validation cells.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from torch import nn

from .._settings import settings
from ._calibration import check_fraction, choose_threshold

if TYPE_CHECKING:
    from typing import Self  # Python 3.11; the annotations are strings

    from ..models.classifier import CellClassifier

#: Seed or generator of a detector's random draws.
RngLike = np.random.Generator | int | None


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _as_float32(X: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(X, dtype=np.float32))


def _class_codes(classifier: CellClassifier, y: np.ndarray | None, logits: np.ndarray) -> np.ndarray:
    """Class index of each training cell: ``y`` (class indices or names of ``classifier.classes``), else the prediction."""
    if y is None:
        return logits.argmax(1)
    y = np.asarray(y)
    if len(y) != len(logits):
        msg = f"`y` has {len(y)} labels for {len(logits)} cells; pass one label per row of X_clean."
        raise ValueError(msg)
    if y.dtype.kind in "iu":
        codes = y.astype(np.int64)
    else:
        index = {c: i for i, c in enumerate(classifier.classes)}
        unknown = sorted({str(v) for v in y} - set(index))
        if unknown:
            msg = f"Labels {unknown[:5]} are not classes of the classifier {classifier.classes}; pass its class names or indices."
            raise ValueError(msg)
        codes = np.array([index[str(v)] for v in y], dtype=np.int64)
    if codes.min() < 0 or codes.max() >= len(classifier.classes):
        msg = f"Class indices in `y` must lie in 0..{len(classifier.classes) - 1}."
        raise ValueError(msg)
    return codes


def _batches(n: int, batch_size: int | None):
    bs = int(batch_size or settings.batch_size)
    return [slice(s, min(s + bs, n)) for s in range(0, n, bs)]


_KEEP_DEVICE = "keep"


@contextmanager
def _eval_mode(classifier: nn.Module, device: str | torch.device | None = _KEEP_DEVICE) -> Iterator[torch.device]:
    """The classifier in evaluation mode (moved to ``device`` unless it is kept), its mode restored afterwards."""
    was_training = classifier.training
    classifier.eval()
    if device != _KEEP_DEVICE:
        classifier.to(settings.torch_device(device))
    try:
        yield next(iter(classifier.parameters())).device
    finally:
        classifier.train(was_training)


class _Baseline:
    """Shared fitting, batching, calibration and flagging.

    Subclasses implement ``_fit`` (what :meth:`fit` learns) and ``_score_batch`` (or ``score``);
    ``_threshold`` may adjust the calibrated threshold.
    """

    name: ClassVar[str] = ""

    def __init__(self, *, batch_size: int | None = None, device: str | None = None) -> None:
        self.batch_size, self.device = batch_size, device
        self.threshold = float("nan")
        self.classifier: CellClassifier | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, threshold={self.threshold:.6g}, fitted={self.classifier is not None})"

    def _check_fitted(self) -> CellClassifier:
        if self.classifier is None:
            msg = f"The {self.name!r} detector is not fitted; call `.fit(classifier, X_clean)` first."
            raise RuntimeError(msg)
        return self.classifier

    def fit(
        self,
        classifier: CellClassifier,
        X_clean: np.ndarray,
        *,
        X_adv: np.ndarray | None = None,
        y: np.ndarray | None = None,
        rng: RngLike = None,
    ) -> Self:
        """Keep ``classifier`` and fit on clean training cells (and adversarial ones where the method uses them).

        Parameters
        ----------
        classifier
            The watched classifier (kept by reference, not copied).
        X_clean
            Clean training-split cells, scaled classifier input (cells x genes).
        X_adv
            Adversarial examples made from training-split cells (``'lid'`` and ``'kd_bu'`` fit a
            logistic regression on them; the others ignore them). Rows stacked as attacked copies
            of ``X_clean`` (a multiple of its length) are paired with their sources, see
            :func:`~scadversarial.detection.reference_split`.
        y
            Class of each ``X_clean`` row (class names or indices of ``classifier.classes``);
            ``None``: the classifier's predictions (``'mahalanobis'``, ``'kd_bu'``).
        rng
            Seed or generator of the reference subsets and MC-dropout masks.

        Returns
        -------
        The fitted detector itself.
        """
        self.classifier = classifier
        self._fit(X_clean, X_adv, y, rng)
        return self

    def _fit(self, X_clean: np.ndarray, X_adv: np.ndarray | None, y: np.ndarray | None, rng: RngLike) -> None:
        """Learn from the training cells; by default nothing (the classifier is all the detector needs)."""

    def _score_batch(self, x: torch.Tensor) -> np.ndarray:
        raise NotImplementedError

    def _predicted(self, X: np.ndarray) -> np.ndarray:
        """The classifier's predicted class index of each (checked) cell."""
        return self._check_fitted().predict_arrays(X)[0].argmax(1)

    def _check_input(self, X: np.ndarray) -> np.ndarray:
        clf = self._check_fitted()
        X = _as_float32(X)
        if X.ndim != 2 or X.shape[1] != clf.n_genes:
            msg = f"X has shape {X.shape}; the classifier takes {clf.n_genes} genes (scaled values, cells x genes)."
            raise ValueError(msg)
        return X

    @torch.no_grad()
    def score(self, X: np.ndarray) -> np.ndarray:
        """Scores of scaled cells ``X`` (cells x genes), float64; higher is more suspicious."""
        clf = self._check_fitted()
        X = self._check_input(X)
        with _eval_mode(clf, self.device) as dev:
            out = [self._score_batch(torch.as_tensor(X[b], device=dev)) for b in _batches(len(X), self.batch_size)]
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0)

    def calibrate(
        self, X_clean_val: np.ndarray, X_adv_val: np.ndarray | None = None, *, target_fpr: float = 0.05
    ) -> float:
        """Set ``threshold`` so that at most ``target_fpr`` of the clean validation cells are flagged.

        Parameters
        ----------
        X_clean_val
            Clean validation cells (scaled), never test cells.
        X_adv_val
            Optional adversarial validation cells: among the thresholds with that false-positive
            rate, the one in the middle of the gap to the next adversarial score
            (:func:`~scadversarial.detection.choose_threshold`).
        target_fpr
            Largest fraction of clean cells flagged (``score >= threshold``), in ``[0, 1)``.

        Returns
        -------
        The threshold (also stored as ``threshold``).
        """
        check_fraction("target_fpr", target_fpr)
        self.threshold = self._threshold(X_clean_val, X_adv_val, target_fpr)
        return self.threshold

    def _threshold(self, X_clean_val: np.ndarray, X_adv_val: np.ndarray | None, target_fpr: float) -> float:
        """The threshold of :meth:`calibrate` (``target_fpr`` already checked)."""
        clean = self.score(X_clean_val)
        if len(clean) == 0:
            msg = "Calibration needs clean validation cells; X_clean_val is empty."
            raise ValueError(msg)
        if X_adv_val is not None and len(X_adv_val):
            adv = self.score(X_adv_val)
            y = np.r_[np.zeros(len(clean)), np.ones(len(adv))]
            return float(choose_threshold(y, np.r_[clean, adv], target_fpr=target_fpr)["threshold"])
        return _clean_quantile_threshold(clean, target_fpr)

    def flag(self, X: np.ndarray) -> np.ndarray:
        """Whether each cell is flagged (``score >= threshold``); needs :meth:`calibrate` first."""
        if not np.isfinite(self.threshold):
            msg = f"The {self.name!r} detector has no threshold; call `.calibrate(X_clean_val)` first."
            raise RuntimeError(msg)
        return self.score(X) >= self.threshold


def _clean_quantile_threshold(clean: np.ndarray, target_fpr: float) -> float:
    """Lowest threshold flagging at most ``target_fpr`` of ``clean``, midway to the next score above it."""
    s = np.sort(clean)
    n = len(s)
    allowed = int(np.floor(target_fpr * n + 1e-9))  # the tolerance absorbs 0.05 * 100 = 5.000000000000001
    keep = s[n - allowed - 1]  # the highest score that must stay unflagged
    above = s[s > keep]
    return float(0.5 * (keep + above[0])) if len(above) else float(np.nextafter(keep, np.inf))
