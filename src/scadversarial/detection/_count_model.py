"""Count-model signal: how likely a cell's counts are under the count model of its predicted class.

Array level (no AnnData inside). The counts of the classifier's genes are recovered from its scaled
input (the transform inverted, then each cell's values fitted to the count lattice, see
:func:`~scadversarial.detection.fit_lattice`), so the detector reads the same input as every other
detector. Per class ``c`` and gene ``g`` a negative binomial with mean ``s_i * m_cg`` (``s_i``: the
cell's library relative to the median training cell) and a per-gene dispersion is fitted on clean
training cells. An attack that moves a cell across the classifier's boundary with a few UMI per gene
leaves counts that the count model still finds likelier under the cell's true class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
from scipy.special import gammaln

from ._calibrated import RngLike, _Baseline, _class_codes
from ._rules import CHUNK, LOG_TOL, Transform, _zero_bound, fit_lattice

Statistic = Literal["relative", "deviance"]

#: Weight, in cells, of the all-cell mean profile in each class's mean: classes with a handful of
#: training cells (PBMC3k's megakaryocytes: ~9) do not get zero rates for genes they happen not to show.
PRIOR_CELLS = 5.0
#: Dispersion bounds (NB variance ``mu + alpha * mu^2``): the floor keeps the likelihood finite for
#: genes that look Poisson-like or under-dispersed by chance; the ceiling tames genes seen in a few cells.
ALPHA_MIN, ALPHA_MAX = 1e-3, 10.0
#: Floor of a class's mean rate (counts per cell of median library): a count where the model expects
#: none costs ~ -log(1e-6) nats instead of infinity.
RATE_FLOOR = 1e-6


@dataclass(frozen=True)
class RecoveredCounts:
    """Counts of the classifier's genes recovered from scaled input.

    Attributes
    ----------
    counts
        Cells x genes, integer-valued float64 (0 where the value is zero, negative or off zero).
    unit
        Per cell ``target_sum / N`` (NaN for a cell without an expressed gene).
    """

    counts: np.ndarray
    unit: np.ndarray


def recover_counts(transform: Transform, X: np.ndarray, zero_bound: float) -> RecoveredCounts:
    """Counts and unit of scaled cells ``X``: the nearest lattice point of every expressed value.

    Values at (or beyond) the upper clip take the count of the clip value (a lower bound); values
    below ``zero_bound`` log units count as 0.

    Examples
    --------
    >>> import numpy as np
    >>> t = Transform(np.zeros(3), np.ones(3), None)
    >>> rc = recover_counts(t, np.log1p(np.array([[2.0, 0.0, 5.0]]) * 4.0), 0.1)
    >>> rc.counts.tolist(), float(np.round(rc.unit[0], 6))
    ([[2.0, 0.0, 5.0]], 4.0)
    """
    X = np.asarray(X, dtype=np.float64)
    if transform.clip is not None:  # values beyond the clip are the rules' business; here they count as at it
        X = np.clip(X, -transform.clip, transform.clip)
    L, inv = transform.to_log(X)
    high = ~inv & (X > 0)
    lat = fit_lattice(L, inv & (zero_bound <= L))
    K = lat.counts
    if high.any():
        u = np.where(np.isfinite(lat.unit), lat.unit, 1.0)[:, None]
        K = np.where(high, np.maximum(np.rint(np.expm1(np.maximum(L, 0.0)) / u), 1.0), K)
    return RecoveredCounts(K, lat.unit)


def _nb_loglik(K: np.ndarray, mu: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Negative-binomial log pmf (variance ``mu + alpha * mu^2``), elementwise."""
    r = 1.0 / alpha
    return gammaln(K + r) - gammaln(r) - gammaln(K + 1) + r * np.log(r / (r + mu)) + K * np.log(mu / (r + mu))


class CountModelDetector(_Baseline):
    """Negative-binomial count model per class, fitted on clean training cells.

    Score (higher: more suspicious), by ``statistic``:

    ``'relative'``
        ``max_c loglik(c) - loglik(predicted class)`` in nats: 0 when the count model agrees with
        the classifier, large when the counts are much likelier under another class.
    ``'deviance'``
        The NB deviance of the cell under its predicted class per expressed gene, less a
        within-class linear trend in log library size, standardized by the median and MAD of
        clean training cells of that class: counts implausible under the predicted class whatever
        the other classes say.

    Parameters
    ----------
    statistic
        ``'relative'`` or ``'deviance'``.

    Examples
    --------
    >>> det = CountModelDetector().fit(clf, X_train, y=y_train)  # doctest: +SKIP
    >>> det.calibrate(X_val, target_fpr=0.05)  # doctest: +SKIP
    >>> det.flag(X_test)  # doctest: +SKIP
    """

    name = "count_model"

    def __init__(self, *, statistic: Statistic = "relative") -> None:
        super().__init__()
        if statistic not in get_args(Statistic):
            msg = f"statistic must be one of {get_args(Statistic)}, got {statistic!r}."
            raise ValueError(msg)
        self.statistic = statistic

    def _fit(self, X_clean: np.ndarray, X_adv: np.ndarray | None, y: np.ndarray | None, rng: RngLike) -> None:
        """Per-class rates and per-gene dispersions from clean training cells (``y``: their classes, else predictions).

        ``X_adv`` and ``rng`` are unused.
        """
        classifier = self.classifier
        X_clean = self._check_input(X_clean)
        self.transform_ = Transform.of(classifier)
        self.zero_bound_ = _zero_bound(self.transform_, X_clean)
        logits, _ = classifier.predict_arrays(X_clean)
        codes = _class_codes(classifier, y, logits)
        rc = recover_counts(self.transform_, X_clean, self.zero_bound_)
        lib = 1.0 / rc.unit
        self.lib_median_ = float(np.nanmedian(lib))
        s = np.nan_to_num(lib / self.lib_median_, nan=1.0)
        K = rc.counts
        overall = K.sum(0) / s.sum()
        n_classes = len(classifier.classes)
        rates = np.empty((n_classes, K.shape[1]))
        for c in range(n_classes):
            m = codes == c
            rates[c] = (K[m].sum(0) + PRIOR_CELLS * overall) / (s[m].sum() + PRIOR_CELLS)
        self.rates_ = np.maximum(rates, RATE_FLOOR)
        mu = s[:, None] * self.rates_[codes]
        alpha = ((K - mu) ** 2 - mu).sum(0) / np.maximum((mu**2).sum(0), RATE_FLOOR)
        self.alpha_ = np.clip(alpha, ALPHA_MIN, ALPHA_MAX)
        dev = self._deviance(K, s, codes)
        # the deviance per expressed gene falls with depth: a within-class slope on log library size
        # keeps shallower (thinned) query cells from looking implausible
        logs = np.log(s)
        xc, dc = logs.copy(), dev.copy()
        for c in np.unique(codes):
            m = codes == c
            xc[m] -= logs[m].mean()
            dc[m] -= dev[m].mean()
        self.dev_slope_ = float((xc * dc).sum() / max((xc * xc).sum(), RATE_FLOOR))
        resid = dev - self.dev_slope_ * logs
        self.dev_center_ = np.zeros(n_classes)
        self.dev_scale_ = np.ones(n_classes)
        for c in range(n_classes):
            r = resid[codes == c] if (codes == c).sum() >= 2 else resid
            med = float(np.median(r))
            mad = float(np.median(np.abs(r - med)))
            self.dev_center_[c], self.dev_scale_[c] = med, max(mad, LOG_TOL)

    def _size(self, unit: np.ndarray) -> np.ndarray:
        return np.nan_to_num(1.0 / unit / self.lib_median_, nan=1.0)

    def _deviance(self, K: np.ndarray, s: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """NB deviance per expressed gene of each cell under class ``codes``."""
        mu = s[:, None] * self.rates_[codes]
        sat = _nb_loglik(K, np.maximum(K, RATE_FLOOR), self.alpha_)
        dev = 2 * (sat - _nb_loglik(K, mu, self.alpha_)).sum(1)
        return dev / np.maximum((K > 0).sum(1), 1)

    def loglik(self, X: np.ndarray) -> np.ndarray:
        """Log-likelihood of each cell's recovered counts under every class (cells x classes, nats)."""
        X = self._check_input(X)
        out = np.empty((len(X), len(self.rates_)))
        for st in range(0, len(X), CHUNK):
            rc = recover_counts(self.transform_, X[st : st + CHUNK], self.zero_bound_)
            s = self._size(rc.unit)
            for c in range(len(self.rates_)):
                out[st : st + CHUNK, c] = _nb_loglik(rc.counts, s[:, None] * self.rates_[c], self.alpha_).sum(1)
        return out

    def score(self, X: np.ndarray) -> np.ndarray:
        """Scores of scaled cells ``X`` (float64; see the class docstring)."""
        X = self._check_input(X)
        pred = self._predicted(X)
        if self.statistic == "relative":
            ll = self.loglik(X)
            return ll.max(1) - ll[np.arange(len(X)), pred]
        out = np.empty(len(X))
        for st in range(0, len(X), CHUNK):
            rc = recover_counts(self.transform_, X[st : st + CHUNK], self.zero_bound_)
            p = pred[st : st + CHUNK]
            size = self._size(rc.unit)
            resid = self._deviance(rc.counts, size, p) - self.dev_slope_ * np.log(size)
            out[st : st + CHUNK] = (resid - self.dev_center_[p]) / self.dev_scale_[p]
        return out


__all__ = ["CountModelDetector", "RecoveredCounts", "Statistic", "recover_counts"]
