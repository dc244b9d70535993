"""Baseline adversarial-example detectors from the literature, with one fit / score / calibrate API.

Array level (no AnnData inside): every detector watches a classifier (a
:class:`~scadversarial.models.CellClassifier`) and reads **scaled classifier inputs** (cells x
genes). A higher score means a more suspicious cell; a cell is flagged when ``score >= threshold``,
and the threshold is calibrated on clean *validation* cells for a target false-positive rate
(never on test cells).

========================  ===============================================================  ==========================
name                      score                                                            adversarial training cells
========================  ===============================================================  ==========================
``'max_softmax'``         ``1 - max softmax`` (Hendrycks & Gimpel 2017)                    not used
``'mahalanobis'``         min over classes of the Mahalanobis distance of the 64-d         not used
                          embedding, class means and tied covariance of clean training
                          cells (Lee et al. 2018)
``'lid'``                 local intrinsic dimensionality of every hidden layer and the     logistic regression on the
                          logits w.r.t. a reference of clean cells (Ma et al. 2018)        LIDs (else their mean z-score)
``'kd_bu'``               kernel density of the embedding among clean training cells of    logistic regression on the
                          the predicted class and MC-dropout variance (Feinman et al.      two (else their mean z-score)
                          2017)
``'squeeze'``             L1 distance between the probabilities of the cell and of its     not used
                          squeezed copy (Xu et al. 2018; weak-input filtering of
                          Rademaker et al.)
========================  ===============================================================  ==========================

``max_softmax``, ``mahalanobis`` and ``squeeze`` also give ``score_logit(x)``, a differentiable
torch tensor increasing with the score, for an attacker who targets the detector.

Examples
--------
>>> import numpy as np
>>> from scadversarial.detection import make_baseline
>>> det = make_baseline("mahalanobis")  # doctest: +SKIP
>>> det.fit(clf, X_train).calibrate(X_val, target_fpr=0.05)  # doctest: +SKIP
>>> flagged = det.flag(X_test)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, Protocol, get_args, runtime_checkable

import numpy as np
import torch

from ..models._filter import filter_weak
from ._calibrated import RngLike, _as_float32, _Baseline, _class_codes, _eval_mode
from ._features import straight_through
from ._reference_baselines import LOG_FLOOR, KernelDensityDetector, LIDDetector, ReferenceSplit, reference_split

if TYPE_CHECKING:
    from typing import Self  # Python 3.11; the annotations are strings

BaselineName = Literal["max_softmax", "mahalanobis", "lid", "kd_bu", "squeeze"]
Squeezer = Literal["filter", "quantize"]

#: Ridge added to the tied covariance, as a fraction of its mean variance: dead ReLU units of the
#: embedding have zero variance and would make the covariance singular.
COVARIANCE_RIDGE = 1e-3
#: Bit depth of the ``'quantize'`` squeezer: 31 levels over ~6 log units, a step of ~0.2 (between
#: the log-expression of 1 and 2 counts at typical depth, so measured profiles barely move).
SQUEEZE_BITS = 5


@runtime_checkable
class BaselineDetector(Protocol):
    """What every baseline detector offers (and what :func:`sad.tl.benchmark_detectors` calls)."""

    name: str
    threshold: float

    #: ``fit(classifier, X_clean, *, X_adv=None, y=None, rng=None) -> Self``: fit on clean training
    #: cells (parameters: :meth:`_Baseline.fit <scadversarial.detection._calibrated._Baseline.fit>`).
    fit: Callable[..., Self]

    def score(self, X: np.ndarray) -> np.ndarray:
        """Scores of scaled cells (higher: more suspicious)."""

    def calibrate(
        self, X_clean_val: np.ndarray, X_adv_val: np.ndarray | None = None, *, target_fpr: float = 0.05
    ) -> float:
        """Set and return ``threshold`` from clean validation cells."""


# ----------------------------------------------------------------------------- max-softmax
class MaxSoftmaxDetector(_Baseline):
    """Max-softmax baseline (Hendrycks & Gimpel 2017): score ``1 - max_c softmax(logits)_c``.

    Needs no training beyond the classifier. ``score_logit`` is ``log((1 - p_max) / p_max)``, the
    logit of the score.

    Examples
    --------
    >>> det = MaxSoftmaxDetector().fit(clf, X_train)  # doctest: +SKIP
    >>> det.calibrate(X_val, target_fpr=0.05)  # doctest: +SKIP
    """

    name = "max_softmax"

    def _fit(self, X_clean: np.ndarray, X_adv: np.ndarray | None, y: np.ndarray | None, rng: RngLike) -> None:
        """Keep the classifier (``X_clean``, ``X_adv``, ``y``, ``rng`` are not needed)."""

    def _score_batch(self, x: torch.Tensor) -> np.ndarray:
        p = torch.softmax(self.classifier(x).double(), 1)
        return (1 - p.amax(1)).cpu().numpy()

    def score_logit(self, x: torch.Tensor) -> torch.Tensor:
        """``logit(1 - p_max)`` of scaled input ``x``: the log-sum-exp of the other logits minus the top logit."""
        clf = self._check_fitted()
        with _eval_mode(clf):
            logits = clf(x)
        top = logits.detach().argmax(1, keepdim=True)
        return logits.scatter(1, top, float("-inf")).logsumexp(1) - logits.gather(1, top).squeeze(1)


# ----------------------------------------------------------------------------- Mahalanobis
class MahalanobisDetector(_Baseline):
    """Mahalanobis distance of the classifier embedding (Lee et al. 2018).

    Class-conditional Gaussians with one tied covariance, fitted on the 64-d embeddings of clean
    training cells (classes from ``y``, else the classifier's predictions); the covariance gets a
    ridge of :data:`COVARIANCE_RIDGE` times its mean variance. Score: the smallest squared
    Mahalanobis distance to a class mean (the paper's confidence score with its sign flipped, without
    input preprocessing or layer ensembles). ``score_logit`` is its logarithm.

    Examples
    --------
    >>> det = MahalanobisDetector().fit(clf, X_train, y=labels)  # doctest: +SKIP
    """

    name = "mahalanobis"

    def _fit(self, X_clean: np.ndarray, X_adv: np.ndarray | None, y: np.ndarray | None, rng: RngLike) -> None:
        """Class means and tied covariance of the clean cells' embeddings (``X_adv`` is not used)."""
        clf = self.classifier
        logits, emb = clf.predict_arrays(_as_float32(X_clean), batch_size=self.batch_size, device=self.device)
        codes = _class_codes(clf, y, logits)
        emb = emb.astype(np.float64)
        present = np.unique(codes)
        means = np.stack([emb[codes == c].mean(0) for c in present])
        centred = emb - means[np.searchsorted(present, codes)]
        cov = centred.T @ centred / len(emb)
        cov += COVARIANCE_RIDGE * np.trace(cov) / len(cov) * np.eye(len(cov))
        # with cov^-1 = L L^T, the distance is |(e - mu) L|^2: whiten once, then Euclidean distances
        self.whiten = np.linalg.cholesky(np.linalg.inv(cov))
        self.means_white = means @ self.whiten
        self.classes_ = present

    def _distances(self, emb: torch.Tensor) -> torch.Tensor:
        w = torch.as_tensor(self.whiten, dtype=emb.dtype, device=emb.device)
        m = torch.as_tensor(self.means_white, dtype=emb.dtype, device=emb.device)
        z = emb @ w
        return (z[:, None, :] - m[None]).square().sum(2).amin(1)

    def _score_batch(self, x: torch.Tensor) -> np.ndarray:
        return self._distances(self.classifier.embed(x).double()).cpu().numpy()

    def score_logit(self, x: torch.Tensor) -> torch.Tensor:
        """Log of the smallest squared Mahalanobis distance of scaled input ``x`` (differentiable)."""
        clf = self._check_fitted()
        with _eval_mode(clf):
            return torch.log(self._distances(clf.embed(x)) + LOG_FLOOR)


# ----------------------------------------------------------------------------- LID


# ----------------------------------------------------------------------------- feature squeezing
class SqueezeDetector(_Baseline):
    """Feature squeezing (Xu et al. 2018) with squeezers suited to expression profiles.

    Score: the L1 distance between the classifier's probabilities of a cell and of its squeezed
    copy, the largest over ``squeezers`` (the paper's joint detection). Both squeezers work in
    log-expression units above each gene's minimum, read through the classifier's own scaling
    (``log = x * std``, relative to the gene's minimum over the clean training cells):

    ``'filter'``
        Weak-input filtering (the biomimetic filtering of weak inputs of Rademaker et al.,
        "Attack and defence in cellular decision-making"): values less than ``threshold`` log
        units above the gene's minimum, or below it, are set to the minimum (unexpressed). The
        default threshold, half the smallest expressed value in the clean training cells, leaves
        every measured cell unchanged: only perturbations of unexpressed genes (and values below
        the minimum, which no measured cell has) are removed.
    ``'quantize'``
        Bit-depth reduction: log values are rounded to ``2**bits`` levels over the clean range.

    ``score_logit`` is the log of the score, with the squeezer's backward pass taken as the
    identity (BPDA, Athalye et al. 2018), as an adaptive attacker would.

    Parameters
    ----------
    squeezers
        One or both of ``'filter'`` and ``'quantize'``.
    threshold
        Filter threshold in log units; ``None``: half the smallest expressed value seen at fit.
    bits
        Bit depth of ``'quantize'``.
    batch_size, device
        Scoring batches and torch device.

    Examples
    --------
    >>> det = SqueezeDetector(squeezers=("filter", "quantize")).fit(clf, X_train)  # doctest: +SKIP
    """

    name = "squeeze"

    def __init__(
        self,
        *,
        squeezers: tuple[Squeezer, ...] = ("filter",),
        threshold: float | None = None,
        bits: int = SQUEEZE_BITS,
        batch_size: int | None = None,
        device: str | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, device=device)
        squeezers = tuple(squeezers)
        bad = [s for s in squeezers if s not in get_args(Squeezer)]
        if bad or not squeezers:
            msg = f"Unknown squeezers {bad or squeezers}; choose one or more of {get_args(Squeezer)}."
            raise ValueError(msg)
        if threshold is not None and not threshold > 0:
            msg = f"threshold must be positive log units (or None for the data-driven default), got {threshold}."
            raise ValueError(msg)
        if not 1 <= bits <= 16:
            msg = f"bits must be an integer in 1..16, got {bits}."
            raise ValueError(msg)
        self.squeezers, self.threshold_log, self.bits = squeezers, threshold, int(bits)

    def _fit(self, X_clean: np.ndarray, X_adv: np.ndarray | None, y: np.ndarray | None, rng: RngLike) -> None:
        """Per-gene minimum and scale, filter threshold and quantization range from clean cells."""
        X_clean = _as_float32(X_clean)
        std = self.classifier.transform.std.detach().cpu().double().numpy()
        self.min_ = X_clean.min(0).astype(np.float64)
        self.std_ = std
        above = (X_clean - self.min_) * std  # log units above the gene's minimum
        expressed = above[above > LOG_FLOOR]
        # without any expressed value (an all-zero training matrix) one log unit stands in for both
        # the filter threshold and the quantization range: nothing measured sits in between
        if self.threshold_log is None:
            self.threshold_ = 0.5 * float(expressed.min()) if len(expressed) else 1.0
        else:
            self.threshold_ = float(self.threshold_log)
        self.log_max_ = float(above.max()) if above.size else 1.0

    def _squeeze(self, x: torch.Tensor, how: Squeezer) -> torch.Tensor:
        mn = torch.as_tensor(self.min_, dtype=x.dtype, device=x.device)
        std = torch.as_tensor(self.std_, dtype=x.dtype, device=x.device)
        if how == "filter":  # exact where nothing is filtered: measured cells come back bit-identical
            return filter_weak(x, mn, std, self.threshold_)
        step = self.log_max_ / (2**self.bits - 1)
        return mn + torch.round(((x - mn) * std).clamp_min(0) / step) * step / std

    def _score_tensor(self, x: torch.Tensor, *, bpda: bool) -> torch.Tensor:
        p = torch.softmax(self.classifier(x), 1)
        scores = []
        for how in self.squeezers:
            xs = self._squeeze(x, how)
            if bpda:
                xs = straight_through(xs, x)
            scores.append((p - torch.softmax(self.classifier(xs), 1)).abs().sum(1))
        return torch.stack(scores, 1).amax(1)

    def _score_batch(self, x: torch.Tensor) -> np.ndarray:
        return self._score_tensor(x, bpda=False).double().cpu().numpy()

    def score_logit(self, x: torch.Tensor) -> torch.Tensor:
        """Log of the squeezing score of scaled input ``x``; the squeezer's backward pass is the identity (BPDA)."""
        with _eval_mode(self._check_fitted()):
            return torch.log(self._score_tensor(x, bpda=True) + LOG_FLOOR)


BASELINES: dict[str, type[_Baseline]] = {
    "max_softmax": MaxSoftmaxDetector,
    "mahalanobis": MahalanobisDetector,
    "lid": LIDDetector,
    "kd_bu": KernelDensityDetector,
    "squeeze": SqueezeDetector,
}


def make_baseline(name: BaselineName, **kwargs) -> _Baseline:
    """A new, unfitted baseline detector by name.

    Parameters
    ----------
    name
        One of :data:`BASELINES`: ``'max_softmax'``, ``'mahalanobis'``, ``'lid'``, ``'kd_bu'``, ``'squeeze'``.
    **kwargs
        Keyword options of that detector's class (e.g. ``k=`` for ``'lid'``, ``squeezers=`` for ``'squeeze'``).

    Returns
    -------
    The detector; call ``.fit(classifier, X_clean, X_adv=..., y=..., rng=...)``, then
    ``.calibrate(X_clean_val, target_fpr=0.05)``, then ``.score(X)`` / ``.flag(X)``.

    Examples
    --------
    >>> from scadversarial.detection import make_baseline
    >>> make_baseline("lid", k=10).k
    10
    """
    if name not in BASELINES:
        msg = f"Unknown baseline detector {name!r}; choose one of {sorted(BASELINES)}."
        raise ValueError(msg)
    return BASELINES[name](**kwargs)


__all__ = [
    "BASELINES",
    "BaselineDetector",
    "BaselineName",
    "KernelDensityDetector",
    "LIDDetector",
    "MahalanobisDetector",
    "MaxSoftmaxDetector",
    "ReferenceSplit",
    "SqueezeDetector",
    "make_baseline",
    "reference_split",
]
