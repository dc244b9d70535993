"""Plots of classifier, attack and detector results (``sad.pl``).

Every function takes ``adata`` first and keyword-only options, draws into ``ax`` (or a new
figure) and returns the Axes (``show=False``) or the Figure (``return_fig=True``).
"""

from ._attack import flip_rate, perturbation, robustness
from ._benchmark import benchmark
from ._cell import cell
from ._certify import certified_accuracy
from ._classifier import class_accuracy, confusion
from ._detect import roc, score_distribution
from ._embedding import embedding, embedding_adata
from ._overview import attack_overview

__all__ = [
    "confusion",
    "class_accuracy",
    "flip_rate",
    "robustness",
    "perturbation",
    "score_distribution",
    "roc",
    "embedding",
    "embedding_adata",
    "cell",
    "attack_overview",
    "benchmark",
    "certified_accuracy",
]
