"""Thresholds and detection metrics (array level)."""

from __future__ import annotations

import numpy as np


def _roc(y: np.ndarray, scores: np.ndarray):
    from sklearn.metrics import roc_curve

    return roc_curve(y, scores, drop_intermediate=False)


def _check_binary(y: np.ndarray) -> None:
    if not (np.any(y == 0) and np.any(y == 1)):
        msg = "Detection metrics need both clean (0) and adversarial (1) cells."
        raise ValueError(msg)


def check_fraction(name: str, value: float) -> None:
    """Refuse a false-positive rate outside [0, 1), naming it."""
    if not 0 <= value < 1:
        msg = f"{name} must be a fraction in [0, 1), got {value}."
        raise ValueError(msg)


def choose_threshold(
    y: np.ndarray, scores: np.ndarray, *, target_fpr: float | None = None, max_fpr: float | None = None
) -> dict:
    """Decision threshold on scores (flag: ``score >= threshold``).

    Parameters
    ----------
    y
        1 for adversarial, 0 for clean.
    scores
        Detector scores (higher: more likely adversarial).
    target_fpr
        ``None``: maximise Youden's J (TPR - FPR); a fraction: the threshold with the highest TPR
        whose false-positive rate on these clean cells is at most ``target_fpr``.
    max_fpr
        With ``target_fpr=None``: maximise Youden's J only among the thresholds whose
        false-positive rate on these clean cells is at most ``max_fpr`` (the strictest threshold
        when none is). ``None``: among all thresholds.

    Returns
    -------
    ``{'threshold', 'tpr', 'fpr', 'method'}`` measured on ``y``/``scores``. Of the thresholds that
    give the chosen calibration counts, the middle one (in logit space for scores in (0, 1)) is returned.

    """
    y, scores = np.asarray(y).astype(int), np.asarray(scores, dtype=np.float64)
    _check_binary(y)
    fpr, tpr, thr = _roc(y, scores)
    finite = np.isfinite(thr)
    if target_fpr is None:
        allowed = finite
        method = "youden"
        if max_fpr is not None:
            check_fraction("max_fpr", max_fpr)
            allowed = finite & (fpr <= max_fpr)
            if not allowed.any():  # ties at the top score: the strictest finite threshold
                allowed = finite & (fpr == fpr[finite].min())
            method = f"youden, fpr<={max_fpr:g}"
        j = np.where(allowed, tpr - fpr, -np.inf)
        i = int(np.argmax(j))
    else:
        check_fraction("target_fpr", target_fpr)
        ok = np.where(finite & (fpr <= target_fpr))[0]
        i = int(ok[-1]) if len(ok) else int(np.argmax(finite))
        method = f"target_fpr={target_fpr:g}"
    t = float(thr[i])
    # every threshold in (next lower score, t] gives the same calibration counts: take the middle
    # of that interval (in logit space for probabilities) rather than its edge, to generalize better
    lower = scores[scores < t]
    if len(lower):
        lo = float(lower.max())
        if lo > 0 and t < 1:
            mid = 0.5 * (np.log(lo / (1 - lo)) + np.log(t / (1 - t)))
            t_mid = float(1 / (1 + np.exp(-mid)))
        else:
            t_mid = 0.5 * (lo + t)
        if lo < t_mid <= t:
            t = t_mid
    pred = scores >= t
    return {
        "threshold": t,
        "tpr": float(pred[y == 1].mean()),
        "fpr": float(pred[y == 0].mean()),
        "method": method,
    }


def tpr_at_fpr(y: np.ndarray, scores: np.ndarray, fpr_max: float = 0.05) -> float:
    """Highest true-positive rate among thresholds whose false-positive rate is at most ``fpr_max``."""
    y = np.asarray(y).astype(int)
    _check_binary(y)
    fpr, tpr, _ = _roc(y, np.asarray(scores, dtype=np.float64))
    ok = fpr <= fpr_max + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def detection_metrics(y: np.ndarray, scores: np.ndarray, threshold: float, *, fpr_max: float = 0.05) -> dict:
    """AUROC, average precision, TPR at ``fpr_max`` FPR and accuracies at ``threshold``.

    Returns
    -------
    ``auroc``, ``average_precision``, ``tpr_at_5fpr`` (for the default ``fpr_max``),
    ``clean_accuracy`` (clean cells not flagged), ``adversarial_accuracy`` (adversarial cells
    flagged), ``accuracy`` (all cells), ``n_clean``, ``n_adversarial``.

    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    y, scores = np.asarray(y).astype(int), np.asarray(scores, dtype=np.float64)
    _check_binary(y)
    pred = scores >= threshold
    return {
        "auroc": float(roc_auc_score(y, scores)),
        "average_precision": float(average_precision_score(y, scores)),
        f"tpr_at_{round(fpr_max * 100):d}fpr": tpr_at_fpr(y, scores, fpr_max),
        "clean_accuracy": float((~pred[y == 0]).mean()),
        "adversarial_accuracy": float(pred[y == 1].mean()),
        "accuracy": float((pred == (y == 1)).mean()),
        "n_clean": int((y == 0).sum()),
        "n_adversarial": int((y == 1).sum()),
    }
