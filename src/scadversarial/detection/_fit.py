"""Fitting the default detector on meta-features (array level): standardize, triplet net, residual net, threshold.

:func:`fit_detector` is the whole training of an
:class:`~scadversarial.models.AdversarialDetector` once its meta-features are computed;
:func:`~scadversarial.tl.train_detector` only selects the cells, computes their features and
writes the records. The settings are one frozen :class:`DetectorConfig` (as scvi-tools' training
configs), the detector's feature spec one :class:`FeatureSpec`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import torch

from .._docs import doc_device, doc_params
from .._settings import settings
from ._calibration import choose_threshold, detection_metrics
from ._rules import SHARE_MARGIN, check_share_margin
from ._training import train_residual, train_triplet

if TYPE_CHECKING:
    from ..models.detector import AdversarialDetector

#: Where the threshold is calibrated: the validation split, or another part of the training split.
Calibration = Literal["val", "train"]
#: A standard deviation below this is a constant feature: it is divided by 1 instead.
MIN_STD = 1e-6
#: Largest fraction of clean calibration cells the default threshold may flag: half the 2 % of clean
#: cells a user can afford (issue 14), leaving room for the sampling error of a quantile on ~500
#: validation cells (binomial sd at 1 %: 0.43 points, so 1 % + 2 sd stays under 2 %). The rules
#: carry the detection of every input no preprocessing can produce, so the learned detector's
#: threshold is set for false alarms first; plain Youden spent up to 6.6 % of them on PBMC3k.
MAX_FPR = 0.01


@dataclass(frozen=True)
class FeatureSpec:
    """Which meta-features the detector computes, and the shape of its input-consistency reference.

    Parameters
    ----------
    gradient
        Input-gradient statistics (a backward pass; ``False``: scoring without one, ``detect(low_latency=True)``).
    input
        Input-consistency features (genes at, below and just above their minimum, PCA residual, kNN distance).
    n_pcs, n_neighbors
        PCA components and neighbours of the input-consistency features.
    grad_genes
        Size of the fixed random gene subset on which the mean and variance of ``|grad|`` are
        estimated (the gradient L2 norm is exact); ``0`` forms the full input gradient (exact, slower).
    tol
        Tolerance, in input units, for a value to sit at a gene's minimum (unexpressed) value.

    Examples
    --------
    >>> FeatureSpec(gradient=False).groups
    ['internal', 'input']
    """

    gradient: bool = True
    input: bool = True
    n_pcs: int = 30
    n_neighbors: int = 1
    grad_genes: int = 128
    tol: float = 1e-4

    @property
    def groups(self) -> list[str]:
        """Meta-feature groups: ``'internal'`` always, then ``'gradient'`` and ``'input'`` when switched on."""
        return ["internal"] + (["gradient"] if self.gradient else []) + (["input"] if self.input else [])


@doc_params(doc_device=doc_device)
@dataclass(frozen=True, kw_only=True)
class DetectorConfig:
    """How the default detector is trained and calibrated (as scvi-tools' training configs).

    Parameters
    ----------
    use_triplet
        Put the triplet network before the residual detector (``False``: the detector reads the
        standardized meta-features).
    triplet_epochs
        Epochs of the triplet network.
    epochs, patience
        Maximum epochs and early-stopping patience (on the calibration loss) of the residual detector.
    lr, weight_decay, batch_size
        AdamW settings and mini-batch size of both networks.
    target_fpr
        ``None``: threshold maximising Youden's J on the calibration cells (among those allowed by
        ``max_fpr``); a fraction: the threshold with the best TPR at that false-positive rate on
        calibration clean cells.
    max_fpr
        With ``target_fpr=None``: the Youden threshold is chosen among those that flag at most
        this fraction of the clean calibration cells (default :data:`MAX_FPR`, 1 %); ``None``:
        among all thresholds.
    rules
        Put the plausibility rules in front of the learned detector (the default detector; see
        :func:`~scadversarial.detection.rule_counts`).
    singletons
        With ``rules``: add the singleton check (a cell on the count lattice with too few genes at
        one count).
    two_counts
        With ``rules``: add the two-count check (a cell on the count lattice with too few genes at
        two counts among those at two or more, :class:`~scadversarial.detection.TwoCountFit`).
        The count checks together flag at most ``max_fpr`` (default 1 %) of the clean calibration
        cells and of their Poisson resampling (:func:`~scadversarial.detection.fit_count_checks`).
    share_margin
        With ``rules``: the log ceiling lets one gene hold this many times the largest share of its
        library one gene holds in a clean training cell (default :data:`~scadversarial.detection._rules.SHARE_MARGIN`, 1.5; at
        most the whole library);
        ``None``: the whole library. Raise it, or train on them, when query cells of a type that
        training lacks hold more in one gene (plasma cells, erythrocytes) and are flagged ``'dominant gene'``.
    {doc_device}
    save_dir
        If given, :func:`~scadversarial.tl.train_detector` also saves the detector to ``save_dir/<key_added>/``.

    Examples
    --------
    >>> DetectorConfig(epochs=5, target_fpr=0.05).patience
    5
    """

    use_triplet: bool = True
    triplet_epochs: int = 15
    epochs: int = 30
    patience: int = 5
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 128
    target_fpr: float | None = None
    max_fpr: float | None = MAX_FPR
    rules: bool = True
    singletons: bool = True
    two_counts: bool = True
    share_margin: float | None = SHARE_MARGIN
    device: str | None = None
    save_dir: str | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "patience", "batch_size"):
            if int(getattr(self, name)) < 1:
                msg = f"DetectorConfig.{name} must be at least 1, got {getattr(self, name)}."
                raise ValueError(msg)
        for name in ("target_fpr", "max_fpr"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                msg = f"DetectorConfig.{name} must be None or a fraction in [0, 1), got {value}."
                raise ValueError(msg)
        check_share_margin(self.share_margin)


@dataclass(frozen=True)
class DetectorFeatures:
    """Raw meta-features of the cells a detector is fitted on.

    Attributes
    ----------
    train
        Meta-training cells: the clean cells first, then one tensor per adversarial layer (same cells, same order).
    calibration
        Calibration cells, in the same layout (early stopping and the threshold).
    """

    train: Sequence[torch.Tensor]
    calibration: Sequence[torch.Tensor]


@dataclass(frozen=True)
class DetectorFit:
    """What :func:`fit_detector` measured.

    Attributes
    ----------
    threshold
        ``{'threshold', 'tpr', 'fpr', 'method'}`` of :func:`choose_threshold` on the calibration cells.
    calibration
        :func:`detection_metrics` of the learned score on the calibration cells at that threshold.
    history
        Training losses: ``triplet_loss`` (with a triplet net), ``detector_loss``, ``detector_val_loss``, ``best_epoch``.
    """

    threshold: dict
    calibration: dict
    history: dict = field(default_factory=dict)


def _labelled(Z: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked rows and their labels: 0 for the clean tensor (the first), 1 for the others."""
    y = torch.cat([torch.zeros(len(Z[0]))] + [torch.ones(len(z)) for z in Z[1:]]).to(Z[0].device)
    return torch.cat(list(Z)), y


def fit_detector(
    detector: AdversarialDetector,
    features: DetectorFeatures,
    labels: np.ndarray,
    config: DetectorConfig | None = None,
    *,
    rng: np.random.Generator | int | None = None,
) -> DetectorFit:
    """Standardize the meta-features, train the triplet net and the residual detector, pick the threshold.

    ``detector`` (its classifier copy, input reference and feature spec already set) is trained
    in place: its feature mean and standard deviation come from the meta-training features, the
    triplet network (anchor and positive: clean cells of one class; negative: an adversarial cell
    of that class) and the residual detector (BCE balanced between classes, early stopping on the
    calibration loss) are trained, and its threshold is chosen on the calibration cells only.
    Batch order, dropout and weight draws come from torch's global generator: seed it around the
    detector's construction and this call (as :func:`~scadversarial.tl.train_detector` does).

    Parameters
    ----------
    detector
        An untrained :class:`~scadversarial.models.AdversarialDetector`.
    features
        Raw meta-features of the meta-training and calibration cells (:class:`DetectorFeatures`).
    labels
        Class of each meta-training cell (the triplets' classes): any labels, e.g. the classifier's predictions.
    config
        Training settings (:class:`DetectorConfig`; default settings when ``None``).
    rng
        Seed or generator of the triplet sampling.

    Returns
    -------
    A :class:`DetectorFit`; ``detector`` is left trained, calibrated and in evaluation mode.
    """
    config = config or DetectorConfig()
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    if len(features.train) < 2 or len(features.train) != len(features.calibration):
        msg = "features need the clean cells and at least one adversarial layer, for training and calibration alike."
        raise ValueError(msg)
    dev = settings.torch_device(config.device) if config.device is not None else detector.feat_mean.device
    stacked = torch.cat(list(features.train))
    std = stacked.std(0)
    detector.feat_mean.copy_(stacked.mean(0).to(detector.feat_mean.device))
    detector.feat_std.copy_(torch.where(std > MIN_STD, std, torch.ones_like(std)).to(detector.feat_std.device))
    detector.to(dev)
    S_train = [detector.standardize(f.to(dev)) for f in features.train]
    S_cal = [detector.standardize(f.to(dev)) for f in features.calibration]
    cls = pd.Categorical(np.asarray(labels)).codes
    history: dict = {}
    if detector.triplet is not None:
        history["triplet_loss"] = train_triplet(
            detector.triplet,
            S_train[0],
            cls,
            torch.cat(S_train[1:]),
            np.tile(cls, len(S_train) - 1),
            config=config,
            rng=rng,
        )
        with torch.no_grad():
            S_train = [detector.triplet(s) for s in S_train]
            S_cal = [detector.triplet(s) for s in S_cal]
    res = train_residual(
        detector.detector,
        *_labelled(S_train),
        *_labelled(S_cal),
        config=config,
    )
    history.update(detector_loss=res["loss"], detector_val_loss=res["val_loss"], best_epoch=res["best_epoch"])
    Zc, yc = _labelled(S_cal)
    with torch.no_grad():
        scores = torch.sigmoid(detector.detector(Zc)).cpu().numpy()
    yc = yc.cpu().numpy()
    thr = choose_threshold(yc, scores, target_fpr=config.target_fpr, max_fpr=config.max_fpr)
    detector.threshold.fill_(thr["threshold"])
    detector.eval()
    return DetectorFit(thr, detection_metrics(yc, scores, thr["threshold"]), history)


__all__ = ["MAX_FPR", "Calibration", "DetectorConfig", "DetectorFeatures", "DetectorFit", "FeatureSpec", "fit_detector"]
