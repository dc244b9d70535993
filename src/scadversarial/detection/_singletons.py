"""The singleton check of the default detector: too few genes at one count for a cell on the count lattice.

Array level (no AnnData inside). In droplet data most expressed genes of a cell are seen once: on
PBMC3k 60-77 % of a cell's expressed classifier genes (5th-95th percentile) sit at one count. An
attacker who moves every expressed gene by one or two UMI (integer counts, zeros kept at zero, the
count-space threat) takes a single count to zero or to three, so the attacked cell keeps 2-33 % of
its expressed genes at one count: it stays on the count lattice, where the plausibility rules see
nothing, but its count profile is one no sequencing run produces. Depth barely moves the fraction
(thinning to 10 % of the depth leaves it at 60-86 %), nor does ambient RNA; extra Poisson noise
lowers it to 30-50 %, so the threshold is the :data:`~scadversarial.detection.MAX_FPR` quantile
of clean calibration cells *and* of their Poisson resampling (every expressed count redrawn from a
Poisson law with that mean, a technical replicate of the cell): a noisier run than the reference
is not flagged. The counts are those of the rules' lattice fit of each cell (its unit estimated
from its own values), so the check reads only the scored matrix.

Query cells sequenced deeper than the calibration cells have fewer genes at one count and can be
flagged: train the detector on cells of that depth, or switch the check off
(``DetectorConfig(singletons=False)``).

An attacker who knows the check can spare the genes at one count (see ``docs/threat_model.md``):
the check raises the price of the count-space attack, it does not end it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ._count_model import recover_counts
from ._fit import MAX_FPR
from ._rule_layer import MIN_EXPRESSED, RuleFit, fit_rules, singleton_stats
from ._rules import Transform

if TYPE_CHECKING:
    from ..models.classifier import CellClassifier
    from ..models.detector import AdversarialDetector
    from ._fit import DetectorConfig


def singleton_fraction(classifier: CellClassifier, X: np.ndarray, fit: RuleFit) -> np.ndarray:
    """Per cell of scaled ``X``, the fraction of its lattice-checked genes at one count (NaN below :data:`MIN_EXPRESSED`).

    Examples
    --------
    >>> f = singleton_fraction(clf, X_scaled, fit_rules(clf, X_train))  # doctest: +SKIP
    """
    t = classifier.transform
    clip = None if t.clip is None else float(t.clip)
    ones, checked = singleton_stats(torch.as_tensor(np.asarray(X, dtype=np.float32)), t.mean, t.std, clip, fit)
    ones, checked = ones.numpy().astype(np.float64), checked.numpy()
    return np.where(checked >= MIN_EXPRESSED, ones / np.maximum(checked, 1), np.nan)


def poisson_resample(classifier: CellClassifier, X: np.ndarray, fit: RuleFit, rng: np.random.Generator) -> np.ndarray:
    """Scaled ``X`` with every expressed count redrawn from a Poisson law of that mean (zeros stay zero).

    Each cell keeps its lattice unit (its library changes by a fraction of a percent).
    """
    tf = Transform.of(classifier)
    rc = recover_counts(tf, X, fit.zero_bound)
    K = np.where(rc.counts > 0, rng.poisson(rc.counts), 0.0)
    return tf.to_scaled(np.log1p(K * np.nan_to_num(rc.unit)[:, None]))


def fit_singleton_min(
    classifier: CellClassifier, X_cal: np.ndarray, fit: RuleFit, *, max_fpr: float, rng: np.random.Generator
) -> float | None:
    """The singleton threshold: the ``max_fpr`` quantile of clean calibration cells and their Poisson resampling.

    ``None`` (the check off) when the rules found the training cells off the count lattice (data
    that were never counts) or no calibration cell has :data:`MIN_EXPRESSED` checked genes.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> fit_singleton_min(clf, X_val, fit_rules(clf, X_train), max_fpr=0.01, rng=rng)  # doctest: +SKIP
    0.318...
    """
    if not fit.lattice:
        return None
    f = np.concatenate(
        [singleton_fraction(classifier, M, fit) for M in (X_cal, poisson_resample(classifier, X_cal, fit, rng))]
    )
    f = f[np.isfinite(f)]
    return float(np.quantile(f, max_fpr)) if len(f) else None


def fit_first_layer(
    det: AdversarialDetector,
    classifier: CellClassifier,
    X_train: np.ndarray,
    X_cal: np.ndarray,
    config: DetectorConfig,
    *,
    seed: tuple[int, int],
) -> None:
    """Fit the rules on clean training cells and, with ``config.singletons``, the singleton threshold on calibration cells.

    ``seed`` seeds the Poisson resampling with a generator of its own, apart from the one that
    trains the learned detector (whose results stay those of a detector without the check).
    """
    rule_fit = fit_rules(classifier, X_train)
    det.set_rules(rule_fit)
    if config.singletons:
        fpr = MAX_FPR if config.max_fpr is None else config.max_fpr
        rng = np.random.default_rng(list(seed))
        det.set_singletons(fit_singleton_min(classifier, X_cal, rule_fit, max_fpr=fpr, rng=rng))


__all__ = ["fit_first_layer", "fit_singleton_min", "poisson_resample", "singleton_fraction"]
