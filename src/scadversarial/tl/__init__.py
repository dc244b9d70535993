"""AnnData-facing tools: classifier, attacks, detection and evaluation (``sad.tl``)."""

from ..detection._fit import DetectorConfig, FeatureSpec
from . import _blackbox
from ._attack import AttackOptions, ThreatModel, attack
from ._audit import AuditOptions, AuditReport, audit
from ._benchmark import BenchmarkOptions, benchmark_detectors
from ._benchmark_defences import CertifiedRows
from ._blackbox import *  # noqa: F403 (the names of its __all__, added to ours below)
from ._certify import CertifyOptions, certify
from ._classifier import (
    AdversarialTraining,
    GaussianAugmentation,
    ThinningAugmentation,
    TrainingConfig,
    WeakInputFilter,
    predict,
    train_classifier,
)
from ._detect import DetectorCells, detect, meta_features, train_detector
from ._evaluate import evaluate
from ._gene_at_clip import GeneAtClip
from ._gene_in_counts import GeneInCounts
from ._input import classifier_input, input_space_problem
from ._inside_checks import InsideCountChecks
from ._models import get_model, load_models, save_models
from ._shifts import BenignShift, benign_shift
from ._space import layer_space, other_counts, scaled_matrix, space_layer

__all__ = [
    "AdversarialTraining",
    "AttackOptions",
    "AuditOptions",
    "AuditReport",
    "BenchmarkOptions",
    "BenignShift",
    "CertifiedRows",
    "CertifyOptions",
    "DetectorCells",
    "DetectorConfig",
    "FeatureSpec",
    "GaussianAugmentation",
    "GeneAtClip",
    "GeneInCounts",
    "InsideCountChecks",
    "ThinningAugmentation",
    "ThreatModel",
    "TrainingConfig",
    "WeakInputFilter",
    "attack",
    "audit",
    "benchmark_detectors",
    "benign_shift",
    "certify",
    "classifier_input",
    "detect",
    "evaluate",
    "get_model",
    "input_space_problem",
    "layer_space",
    "load_models",
    "meta_features",
    "other_counts",
    "predict",
    "save_models",
    "scaled_matrix",
    "space_layer",
    "train_classifier",
    "train_detector",
]
# the black-box attacks' names, listed once in their package
__all__ += _blackbox.__all__
