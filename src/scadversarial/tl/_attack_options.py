"""The options of ``sad.tl.attack``: the threat model, the run options and the keyword shortcuts that override them."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import InitVar, dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch

from .._settings import settings
from .._validate import check_choice
from ..attacks._protocol import ClassifierSpec
from ..attacks.score_based import ScoreMethod
from ..attacks.whitebox import METHOD_NORM, IterConfig
from ..models.classifier import CellClassifier, Space

Constraint = Literal["observed", "expressed", "counts"]
CONSTRAINTS: tuple[str, ...] = get_args(Constraint)
#: score-based black-box methods (:mod:`~scadversarial.attacks.score_based`): probabilities only, L-inf
SCORE_METHODS: tuple[str, ...] = get_args(ScoreMethod)
AttackMethod = Literal["pgd", "fgsm", "pgd_rs", "pgd_l2", "cw", "deepfool", "square", "nes"]
ALL_METHODS: tuple[str, ...] = get_args(AttackMethod)
#: ``params['space']`` of a score-based attack on another classifier: the layer it reads, moved as is
CLASSIFIER_INPUT = "classifier_input"


def method_norm(method: str) -> str:
    """The norm of ``method``'s budget (score-based methods: L-inf)."""
    return "linf" if method in SCORE_METHODS else METHOD_NORM[method]


@dataclass(frozen=True)
class ThreatModel:
    """What the attacker may change: the feature space, a constraint, a fold-change limit and a mask.

    Parameters
    ----------
    space
        ``'scaled'``: the classifier's input ``X``; ``'log'``: ``.layers['sad_lognorm']``; ``'counts'``:
        ``.layers['counts']`` (raw counts of the kept genes). The attack moves that matrix and reaches
        the classifier through its own differentiable transform (counts -> library-size
        normalization with each cell's own library -> ``log1p`` -> scaling -> clip). ``None``: the
        space of ``layer`` (``'scaled'`` without one).
    constraint
        ``None``; ``'observed'``: each gene within its observed range over all cells; ``'expressed'``:
        only genes expressed in that cell move (nonzero in ``sad_lognorm`` / counts), values stay at
        or above zero expression (``>= 0`` in log and count space) and unexpressed entries stay
        exactly as they are; ``'counts'`` (count space only): non-negative integer counts: the
        attack optimises continuously and rounds at the end (within the budget and bounds), and
        its record gives the flip rate before and after rounding. Count space always keeps
        counts ``>= 0``.
    max_log_fc
        Bound on each entry's fold change, natural log with a pseudo-count of one on the normalized
        expression: ``|x' - x| <= max_log_fc`` in log space, ``<= max_log_fc / std`` in scaled space,
        ``(c' + 1) / (c + 1)`` within ``e^(+-max_log_fc)`` for counts.
    mask
        Entries allowed to change: a boolean array over genes, the name of a boolean ``.var``
        column, a boolean cells x genes matrix, or the name of a layer (nonzero: may change).
    bounds
        Custom ``(lower, upper)`` bounds (scalars or per-gene arrays), in the space's units.
    layer
        Matrix to attack instead of the space's own (``'X'`` or ``None`` for ``X``, ``'sad_lognorm'`` or
        ``'counts'``); it must hold that space's values (a layer known to hold another space is refused).

    Examples
    --------
    >>> import scadversarial as sad
    >>> expressed_log = sad.tl.ThreatModel(space="log", constraint="expressed")
    >>> integer_counts = sad.tl.ThreatModel(space="counts", constraint="counts", max_log_fc=1.0)

    """

    space: Space | None = None
    constraint: Constraint | None = None
    max_log_fc: float | None = None
    mask: np.ndarray | str | None = dataclasses.field(default=None, compare=False)
    bounds: tuple | None = dataclasses.field(default=None, compare=False)
    layer: str | None = None

    def __post_init__(self) -> None:
        # the string options are checked here, once, whether given to ThreatModel or as keywords of attack()
        if self.space is not None:
            check_choice("space", self.space, Space)
        if self.constraint is not None:
            check_choice("constraint", self.constraint, Constraint)
        if self.layer == "X":  # adata.X, as everywhere else in sad
            object.__setattr__(self, "layer", None)


@dataclass(frozen=True)
class AttackOptions(IterConfig):
    """How :func:`attack` runs: iterations, the detector weight, the attacked labels, the classifier and the hardware.

    Parameters
    ----------
    alpha
        PGD step size (L-inf: per gene; L2: of the step) or CW's Adam learning rate. ``None``: ``0.02`` for
        L-inf PGD in scaled space where ``steps * 0.02`` reaches ``eps`` (the seed setting), else
        ``2.5 * eps / steps`` (CW: over the square root of the number of genes).
    steps
        PGD steps, CW steps per binary-search step, or DeepFool's maximum iterations (``None``: 10, 20, 30).
    cw_c, cw_search_steps, cw_confidence
        Carlini-Wagner's initial constant, its binary-search steps and the margin ``kappa``.
    overshoot
        DeepFool's overshoot.
    batch_size, device, random_state
        Cells per batch (default ``sad.settings.batch_size``), torch device (default
        ``sad.settings.device``) and the seed of the random start.
    max_queries
        Score-based methods (``'square'``, ``'nes'``): classifier queries per cell.
    detector_weight
        Weight(s) ``lambda`` of the detector logit in a detector-aware attack; several weights: per
        cell, the flipped iterate with the lowest detector score over all of them.
    labels_key
        Attack these labels instead of the clean prediction (``None``: predicted, as at inference).
    classifier
        Classifier to attack (default: the one in ``adata.uns['sad']['classifier']``): a
        :class:`~scadversarial.models.CellClassifier` for every method; for the score-based methods
        (``'square'``, ``'nes'``) also any classifier the black-box modes take, wrapped by
        :class:`~scadversarial.attacks._protocol.ClassifierAdapter`: a torch module returning logits, an
        estimator with ``predict_proba``, a CellTypist ``Model``, a callable ``X -> probabilities`` or a
        :class:`~scadversarial.tl.ClassifierSpec` (classes, declared genes, output). Such a classifier
        reads ``layer`` (default ``X``), its genes aligned by name when it declares them.
    cells
        The cells to attack (default: all): the name of a boolean ``.obs`` column, a boolean mask over
        cells or cell positions. Only their rows are read, attacked and stored: each layer is then a
        CSR matrix over all cells whose other rows are empty, and ``.obs['<key_added>_attacked']`` says
        which rows hold an attack (their ``_pred`` column is missing elsewhere). For a sample of a large
        (backed, dask or sparse) AnnData, e.g. the test split, without a dense layer over every cell.
    model
        Deprecated spelling of ``classifier`` (a :class:`FutureWarning`; removed in the next release).

    Examples
    --------
    >>> import scadversarial as sad
    >>> opts = sad.tl.AttackOptions(steps=20, detector_weight=(0.1, 1.0, 10.0))
    >>> sample = sad.tl.AttackOptions(cells="is_test")  # a boolean .obs column

    """

    batch_size: int | None = None
    device: str | None = None
    max_queries: int = 1000
    detector_weight: float | tuple[float, ...] = 1.0
    labels_key: str | None = None
    classifier: CellClassifier | ClassifierSpec | torch.nn.Module | Any | None = dataclasses.field(
        default=None, compare=False, repr=False
    )
    cells: str | np.ndarray | Sequence[int] | None = dataclasses.field(default=None, compare=False, repr=False)
    model: InitVar[Any] = None

    def __post_init__(self, model: Any) -> None:
        if model is not None:
            warnings.warn(_MODEL_DEPRECATED, FutureWarning, stacklevel=3)
            if self.classifier is not None:
                raise TypeError(_BOTH_GIVEN)
            object.__setattr__(self, "classifier", model)

    def iter_config(self) -> IterConfig:
        """The array-level settings, with the batch size and device resolved from ``sad.settings``."""
        base = {f.name: getattr(self, f.name) for f in dataclasses.fields(IterConfig)}
        base.update(batch_size=int(self.batch_size or settings.batch_size), device=settings.torch_device(self.device))
        return IterConfig(**base)


_MODEL_DEPRECATED = (
    "model= is deprecated and will be removed in the next release: pass classifier= instead "
    "(the name every sad.tl attack uses)."
)
_BOTH_GIVEN = "Pass the classifier once, as classifier= (model= is its deprecated spelling)."
_THREAT_FIELDS = {f.name for f in dataclasses.fields(ThreatModel)}
_OPTION_FIELDS = {f.name for f in dataclasses.fields(AttackOptions)}


@dataclass(frozen=True)
class AttackCall:
    """One call of :func:`~scadversarial.tl.attack`, its options resolved: what every later step reads."""

    method: str
    eps: list[float]
    threat: ThreatModel
    options: AttackOptions
    target_class: Any
    detector: Any
    prefix: str


def resolve_options(
    threat: ThreatModel | None, options: AttackOptions | None, kwargs: dict[str, Any]
) -> tuple[ThreatModel, AttackOptions]:
    """Merge keyword shortcuts (fields of ThreatModel / AttackOptions) into the two option objects."""
    threat, options = threat or ThreatModel(), options or AttackOptions()
    unknown = sorted(set(kwargs) - _THREAT_FIELDS - _OPTION_FIELDS - {"bounds", "model"})
    if unknown:
        msg = (
            f"attack() got unexpected keyword(s) {unknown}. Pass fields of sad.tl.ThreatModel "
            f"{sorted(_THREAT_FIELDS)} or sad.tl.AttackOptions {sorted(_OPTION_FIELDS)}."
        )
        raise TypeError(msg)
    kw = dict(kwargs)
    if "model" in kw:  # attack(model=...) -> resolve_options -> here: the warning points at the caller's line
        warnings.warn(_MODEL_DEPRECATED, FutureWarning, stacklevel=3)
        if "classifier" in kw:
            raise TypeError(_BOTH_GIVEN)
        kw["classifier"] = kw.pop("model")
    if isinstance(kw.get("bounds"), str):  # the older bounds='observed' is the 'observed' constraint
        if kw["bounds"] != "observed":
            msg = f"Unknown bounds {kw['bounds']!r}; use None, 'observed' or a (lower, upper) pair."
            raise ValueError(msg)
        kw.pop("bounds")
        other = kw.get("constraint", threat.constraint)
        if other not in (None, "observed"):
            msg = (
                f"bounds='observed' is the 'observed' constraint, and constraint={other!r} was given too; "
                "pass one of them (for both, constraint=... with bounds=(lower, upper) of the observed range)."
            )
            raise ValueError(msg)
        kw["constraint"] = "observed"
    if "detector_weight" in kw and not np.isscalar(kw["detector_weight"]):
        kw["detector_weight"] = tuple(float(w) for w in kw["detector_weight"])
    threat = dataclasses.replace(threat, **{k: v for k, v in kw.items() if k in _THREAT_FIELDS})
    options = dataclasses.replace(options, **{k: v for k, v in kw.items() if k in _OPTION_FIELDS})
    return threat, options


__all__ = ["AttackCall", "AttackOptions", "ThreatModel", "resolve_options"]
