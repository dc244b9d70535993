"""What the app holds in memory: the loaded pipeline and one cell's result, and the app's error."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from anndata import AnnData

#: The app computes on the CPU: one cell at a time is faster there than a round trip to a GPU.
DEVICE = "cpu"


class AppError(Exception):
    """A problem the app shows as a message in the page (missing or mismatched artifacts)."""


@dataclass(frozen=True)
class AttackDefaults:
    """The attack the page starts from: the pipeline's recorded white-box attack, else these defaults.

    Attributes
    ----------
    method
        White-box method (``'pgd'``, ``'pgd_rs'``, ``'pgd_l2'`` or ``'fgsm'``).
    eps
        Budget: the middle one of the recorded budgets.
    alpha
        PGD step size recorded for that budget.
    steps
        PGD steps.
    bounds
        ``'observed'`` when the attack stayed inside each gene's observed range, else ``'none'``.

    """

    method: str = "pgd"
    eps: float = 0.1
    alpha: float = 0.02
    steps: int = 10
    bounds: str = "none"


@dataclass(frozen=True)
class Attack:
    """One attack of the page: white-box ``method``, budget ``eps``, PGD step size ``alpha`` and ``steps``.

    The fields are keywords of :func:`scadversarial.attacks.whitebox.attack_arrays`, which takes them as they are.
    """

    method: str
    eps: float
    alpha: float
    steps: int


@dataclass
class Pipeline:
    """Everything the app needs, loaded once and reused for every cell.

    Attributes
    ----------
    adata
        The AnnData of the pipeline run.
    classifier
        The trained :class:`~scadversarial.models.CellClassifier`.
    detector
        The trained detector, or ``None`` when the pipeline has none (or it could not be loaded).
    X
        Dense float32 matrix in the classifier's gene order, cells x genes: the classifier's scaled
        input as :func:`scadversarial.tl.predict` reads it (:func:`~scadversarial.tl.classifier_input`;
        ``X`` left log-normalized goes through the model's transform).
    genes
        The classifier's genes (columns of ``X``).
    classes
        The classifier's classes (columns of the probabilities).
    labels
        True label of each cell (str), or ``None`` when the pipeline records no labels key.
    labels_key
        The ``.obs`` column of ``labels``.
    split
        Train/val/test split of each cell (str), or ``None``.
    roles
        Role of each cell in training the detector (``.obs['sad_detector_role']``: ``'meta_train'``,
        ``'calibration'``, ``'reference'`` or ``'unused'``), or ``None``.
    proba
        Clean class probabilities of every cell (computed at load time).
    umap
        2-d coordinates of every cell.
    umap_key
        Where ``umap`` came from (e.g. ``'X_umap'``).
    threshold
        The stored detection threshold, or ``None`` without detector.
    attack_defaults
        The pipeline's recorded attack (or the package defaults).
    lower, upper
        Per-gene bounds of the recorded attack (``bounds='observed'``), else ``None``.
    source
        Human-readable description of where the pipeline was loaded from.
    warnings
        Non-fatal problems to show in the page (e.g. no detector).

    """

    adata: AnnData
    classifier: object
    detector: object | None
    X: np.ndarray
    genes: list[str]
    classes: list[str]
    labels: np.ndarray | None
    labels_key: str | None
    split: np.ndarray | None
    proba: np.ndarray
    umap: np.ndarray
    umap_key: str
    threshold: float | None
    attack_defaults: AttackDefaults
    lower: np.ndarray | None = None
    upper: np.ndarray | None = None
    source: str = ""
    warnings: list[str] = field(default_factory=list)
    roles: np.ndarray | None = None
    _clean_scores: np.ndarray | None = None
    _umap_base: pd.DataFrame | None = None

    @property
    def n_cells(self) -> int:
        """Number of cells."""
        return self.X.shape[0]

    @property
    def obs_names(self) -> list[str]:
        """Cell names."""
        return list(map(str, self.adata.obs_names))

    @property
    def pred(self) -> np.ndarray:
        """Clean predicted class index of every cell."""
        return self.proba.argmax(1)

    def cells_with_label(self, label: str) -> np.ndarray:
        """Indices of the cells whose true label is ``label`` (all cells without labels)."""
        if self.labels is None:
            return np.arange(self.n_cells)
        return np.flatnonzero(self.labels == str(label))


@dataclass
class CellResult:
    """Prediction (and detector verdict) of one cell, clean or attacked.

    Attributes
    ----------
    index
        Row of the cell in the AnnData.
    name
        Its ``obs_name``.
    true_label
        Its label (or ``None``).
    proba
        Class probabilities.
    predicted
        Predicted class name.
    confidence
        Probability of the predicted class.
    score
        Detector score (probability of being adversarial), or ``None`` without detector.
    attacked
        Whether this is the attacked version of the cell.
    clean_predicted
        For an attacked cell, the clean prediction it was pushed away from.
    x
        The cell's gene vector (classifier genes, scaled values).
    method, eps
        The attack (attacked cells only).
    split, role
        The cell's split and its role in training the detector (``None`` when unknown).

    """

    index: int
    name: str
    true_label: str | None
    proba: np.ndarray
    predicted: str
    confidence: float
    score: float | None = None
    attacked: bool = False
    clean_predicted: str | None = None
    x: np.ndarray | None = None
    method: str | None = None
    eps: float | None = None
    split: str | None = None
    role: str | None = None

    @property
    def success(self) -> bool | None:
        """For an attacked cell: whether the prediction changed (``None`` for a clean cell)."""
        if not self.attacked:
            return None
        return self.predicted != self.clean_predicted

    def flagged(self, threshold: float | None) -> bool | None:
        """Whether the detector flags the cell at ``threshold`` (``None`` without score or threshold)."""
        if self.score is None or threshold is None:
            return None
        return bool(self.score >= threshold)

    def verdict(self, threshold: float | None) -> str:
        """``'adversarial'``, ``'clean'``, or ``'no detector'``."""
        flag = self.flagged(threshold)
        if flag is None:
            return "no detector"
        return "adversarial" if flag else "clean"

    def proba_frame(self, classes: list[str]) -> pd.DataFrame:
        """Long table ``class, probability`` for a bar chart."""
        return pd.DataFrame({"class": list(classes), "probability": np.asarray(self.proba, dtype=float)})
