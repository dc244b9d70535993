"""Linear classifiers seen from their weights: the shortcut of the black-box searches' fast paths.

A :class:`torch.nn.Linear` module or a scikit-learn ``LogisticRegression`` whose probabilities are a softmax of its
decision function gives the same per-cell type as the first argmax of ``X @ weight.T + bias``; its
:class:`LinearHead` also carries the unit roundoff of the classifier's own arithmetic, from which the oracle bounds
the rounding error of an updated logit (:mod:`scadversarial.attacks._oracle`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["LinearHead", "linear_head"]


@dataclass(frozen=True)
class LinearHead:
    """A classifier whose per-cell type is the first argmax of ``X @ weight.T + bias``.

    Attributes
    ----------
    weight
        ``(n_classes, n_genes)`` float64 weights.
    bias
        ``(n_classes,)`` float64 bias.
    unit_roundoff
        Unit roundoff of the arithmetic the classifier itself uses (``2**-24`` for float32).

    """

    weight: np.ndarray
    bias: np.ndarray
    unit_roundoff: float


def linear_head(classifier: Any, kind: str) -> LinearHead | None:
    """The :class:`LinearHead` of a linear classifier whose probabilities keep the order of its logits, or None."""
    if kind == "torch":
        import torch

        lin = classifier
        if isinstance(lin, torch.nn.Sequential) and len(lin) == 1:
            lin = lin[0]
        if type(lin) is not torch.nn.Linear or not lin.weight.dtype.is_floating_point:
            return None
        w = lin.weight.detach().cpu().double().numpy()
        b = lin.bias.detach().cpu().double().numpy() if lin.bias is not None else np.zeros(w.shape[0])
        u = float(torch.finfo(lin.weight.dtype).eps) / 2
        if lin.weight.dtype == torch.float32:  # float32 products may run in TF32 (10 bits) or bfloat16 (7 bits)
            precision = torch.get_float32_matmul_precision()
            if precision != "highest" or (lin.weight.is_cuda and torch.backends.cuda.matmul.allow_tf32):
                u = max(u, 2.0**-8 if precision == "medium" else 2.0**-11)
        return LinearHead(w, b, u)
    if kind == "sklearn":
        from sklearn.linear_model import LogisticRegression

        if type(classifier) is not LogisticRegression or not hasattr(classifier, "coef_"):
            return None
        coef = np.asarray(classifier.coef_, dtype=np.float64)
        inter = np.broadcast_to(np.asarray(classifier.intercept_, dtype=np.float64), (coef.shape[0],))
        n_classes = len(classifier.classes_)
        eps = float(np.finfo(np.result_type(classifier.coef_.dtype, np.float32)).eps) / 2
        if n_classes == 2 and coef.shape[0] == 1:  # p(class 1) = expit(d): logits (0, d) keep the order
            return LinearHead(np.vstack([np.zeros_like(coef), coef]), np.array([0.0, inter[0]]), eps)
        # one-vs-rest probabilities (older scikit-learn, liblinear) saturate and can tie: not linear here
        if getattr(classifier, "multi_class", "auto") == "ovr" or getattr(classifier, "solver", "") == "liblinear":
            return None
        if coef.shape[0] != n_classes:
            return None
        return LinearHead(coef, np.array(inter), eps)
    return None
