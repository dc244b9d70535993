"""The count-profile checks of the default detector: too few genes at one (or two) counts for a cell on the count lattice.

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

The two-count check answers the attacker who knows the singleton check and spares the genes at
one count: moving the genes at two or more counts by a UMI or two leaves almost none of them at
exactly two (on PBMC3k about 40 % of a clean cell's genes at two or more counts sit at two; the
attacked cells keep a few percent). Its statistic is the binomial z-score of that number (see
:class:`~scadversarial.detection.TwoCountFit`), so a shallow cell, with few genes at two or more
counts, is judged by its own sampling noise and thinning does not raise false alarms. The two
checks share one false-alarm budget: their thresholds are the same quantile of the two statistics
over the calibration cells and their Poisson resampling, chosen so that together they flag at most
``max_fpr`` of the clean cells and of the resampled ones (:func:`fit_count_checks`).

An attacker who knows both thresholds can keep each cell just inside them and still flip most
cells (see ``docs/threat_model.md``): the checks catch count attacks that ignore them, not one that
knows them; changes within Poisson noise are for a hardened classifier to withstand.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ._count_model import recover_counts
from ._fit import MAX_FPR
from ._rule_layer import (
    MIN_EXPRESSED,
    CountChecks,
    CountProfile,
    RuleFit,
    TwoCountFit,
    count_profile,
    fit_rules,
    two_count_z,
)
from ._rules import Transform

#: Bisection steps of the two checks' shared quantile: 2**-40 of ``max_fpr``, far below one cell.
JOINT_STEPS = 40

if TYPE_CHECKING:
    from ..models.classifier import CellClassifier
    from ..models.detector import AdversarialDetector
    from ._fit import DetectorConfig


def _profile(classifier: CellClassifier, X: np.ndarray, fit: RuleFit) -> CountProfile:
    """The count profile of scaled ``X``, computed on the CPU (the classifier may live on a GPU)."""
    t = classifier.transform
    clip = None if t.clip is None else float(t.clip)
    mean, std = t.mean.detach().cpu(), t.std.detach().cpu()
    return count_profile(torch.as_tensor(np.asarray(X, dtype=np.float32)), mean, std, clip, fit)


def _fraction(profile: CountProfile) -> np.ndarray:
    ones, checked = profile.ones.numpy().astype(np.float64), profile.checked.numpy()
    return np.where(checked >= MIN_EXPRESSED, ones / np.maximum(checked, 1), np.nan)


def singleton_fraction(classifier: CellClassifier, X: np.ndarray, fit: RuleFit) -> np.ndarray:
    """Per cell of scaled ``X``, the fraction of its lattice-checked genes at one count (NaN below :data:`MIN_EXPRESSED`).

    Examples
    --------
    >>> f = singleton_fraction(clf, X_scaled, fit_rules(clf, X_train))  # doctest: +SKIP
    """
    return _fraction(_profile(classifier, X, fit))


def poisson_resample(classifier: CellClassifier, X: np.ndarray, fit: RuleFit, rng: np.random.Generator) -> np.ndarray:
    """Scaled ``X`` with every expressed count redrawn from a Poisson law of that mean (zeros stay zero).

    Each cell keeps its lattice unit (its library changes by a fraction of a percent).
    """
    tf = Transform.of(classifier)
    rc = recover_counts(tf, X, fit.zero_bound)
    K = np.where(rc.counts > 0, rng.poisson(rc.counts), 0.0)
    return tf.to_scaled(np.log1p(K * np.nan_to_num(rc.unit)[:, None]))


def _two_count_rate(profile: CountProfile) -> float | None:
    """Median share of genes at two counts among genes at two or more, over the judged cells.

    ``None`` (the check off) when no cell is judged or the share is 0 or 1 (no binomial spread to test).
    """
    m = profile.at_least_two.numpy()
    ok = (profile.checked.numpy() >= MIN_EXPRESSED) & (m > 0)
    rate = float(np.median(profile.twos.numpy()[ok] / m[ok])) if ok.any() else None
    return rate if rate is not None and 0 < rate < 1 else None


def _joint_quantile(stats: list[list[np.ndarray]], max_fpr: float) -> float:
    """The largest quantile ``q`` at which the cells below any statistic's ``q`` quantile are at most ``max_fpr`` of each family.

    ``stats[k][f]``: statistic ``k`` on family ``f`` (the clean calibration cells, their resampling);
    the quantiles are over the families pooled, the budget holds in each family (a check whose tail
    is all clean cells must not flag twice the budget of them).
    """
    pooled = [np.concatenate(v) for v in stats]
    families = [[v[f] for v in stats] for f in range(len(stats[0]))]
    lo, hi = 0.0, max_fpr
    for _ in range(JOINT_STEPS):
        q = (lo + hi) / 2
        thr = [np.nanquantile(v, q) for v in pooled]
        worst = 0.0
        for fam in families:
            judged = np.logical_or.reduce([np.isfinite(v) for v in fam])
            low = np.logical_or.reduce([v < t for v, t in zip(fam, thr, strict=True)])  # NaN compares False
            worst = max(worst, float(low[judged].mean()) if judged.any() else 0.0)
        lo, hi = (q, hi) if worst <= max_fpr else (lo, q)
    return lo


def fit_count_checks(
    classifier: CellClassifier,
    X_cal: np.ndarray,
    fit: RuleFit,
    *,
    max_fpr: float,
    rng: np.random.Generator,
    singletons: bool = True,
    two_counts: bool = True,
) -> CountChecks:
    """Thresholds of the count-profile checks, on clean calibration cells and their Poisson resampling.

    The thresholds are the same quantile of each statistic over both sets of cells, the largest at
    which the checks together flag at most ``max_fpr`` of the clean cells and at most ``max_fpr`` of
    the resampled ones.
    Both are off (``None``) when the rules found the training cells off the count lattice (data that
    were never counts) or no calibration cell is judged.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> checks = fit_count_checks(clf, X_val, fit_rules(clf, X_train), max_fpr=0.01, rng=rng)  # doctest: +SKIP
    >>> checks.singleton_min, checks.two_counts.z_min  # doctest: +SKIP
    (0.31..., -2.4...)
    """
    if not fit.lattice or not (singletons or two_counts):
        return CountChecks()
    profiles = [_profile(classifier, M, fit) for M in (X_cal, poisson_resample(classifier, X_cal, fit, rng))]
    stats: dict[str, list[np.ndarray]] = {}  # per statistic, its values on each family
    if singletons:
        stats["ones"] = [_fraction(p) for p in profiles]
    rate = _two_count_rate(profiles[0]) if two_counts else None
    if rate is not None:
        stats["twos"] = [two_count_z(p, rate).numpy() for p in profiles]
    stats = {k: v for k, v in stats.items() if np.isfinite(np.concatenate(v)).any()}
    if not stats:
        return CountChecks()
    q = _joint_quantile(list(stats.values()), max_fpr)
    thr = {k: float(np.nanquantile(np.concatenate(v), q)) for k, v in stats.items()}
    two = TwoCountFit(rate, thr["twos"]) if "twos" in thr and rate is not None else None
    return CountChecks(thr.get("ones"), two)


def fit_singleton_min(
    classifier: CellClassifier, X_cal: np.ndarray, fit: RuleFit, *, max_fpr: float, rng: np.random.Generator
) -> float | None:
    """The singleton check's threshold alone, on clean calibration cells and their Poisson resampling (:func:`fit_count_checks`).

    ``None`` (the check off) when the rules found the training cells off the count lattice (data
    that were never counts) or no calibration cell has :data:`MIN_EXPRESSED` checked genes.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> fit_singleton_min(clf, X_val, fit_rules(clf, X_train), max_fpr=0.01, rng=rng)  # doctest: +SKIP
    0.318...
    """
    return fit_count_checks(classifier, X_cal, fit, max_fpr=max_fpr, rng=rng, two_counts=False).singleton_min


def fit_first_layer(
    det: AdversarialDetector,
    classifier: CellClassifier,
    X_train: np.ndarray,
    X_cal: np.ndarray,
    config: DetectorConfig,
    *,
    seed: tuple[int, int],
    target_sum: float | None = None,
    gene_max: np.ndarray | None = None,
) -> None:
    """Fit the rules on clean training cells and the count-profile checks the config asks for on calibration cells.

    ``seed`` seeds the Poisson resampling with a generator of its own, apart from the one that
    trains the learned detector (whose results stay those of a detector without the checks).
    ``target_sum``: the normalization's, the rules' log ceiling (``None``: none below the clip);
    ``gene_max``: per gene, the largest scaled value of every training cell (see :func:`fit_rules`).
    """
    rule_fit = fit_rules(
        classifier, X_train, target_sum=target_sum, share_margin=config.share_margin, gene_max=gene_max
    )
    det.set_rules(rule_fit)
    if config.singletons or config.two_counts:
        fpr = MAX_FPR if config.max_fpr is None else config.max_fpr
        rng = np.random.default_rng(list(seed))
        checks = fit_count_checks(
            classifier,
            X_cal,
            rule_fit,
            max_fpr=fpr,
            rng=rng,
            singletons=config.singletons,
            two_counts=config.two_counts,
        )
        det.set_count_checks(checks)


__all__ = ["fit_count_checks", "fit_first_layer", "fit_singleton_min", "poisson_resample", "singleton_fraction"]
