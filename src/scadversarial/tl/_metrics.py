"""Classification metrics as h5ad-writable dicts."""

from __future__ import annotations

import numpy as np


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """Accuracy overall and per class, and the confusion matrix (rows: true, columns: predicted).

    ``y_true`` and ``y_pred`` are integer codes into ``classes`` (-1 for a label the model does not know).
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    n = len(classes)
    known = y_true >= 0
    conf = np.zeros((n, n), dtype=np.int64)
    np.add.at(conf, (y_true[known], y_pred[known]), 1)
    support = conf.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(support > 0, np.diag(conf) / np.maximum(support, 1), np.nan)
    acc = float((y_true == y_pred).mean()) if len(y_true) else float("nan")
    return {
        "accuracy": acc,
        "per_class_accuracy": {
            c: float(a) for c, a in zip(classes, per_class, strict=True) if support[classes.index(c)] > 0
        },
        "confusion": conf,
        "classes": list(classes),
        "n_cells": len(y_true),
    }
