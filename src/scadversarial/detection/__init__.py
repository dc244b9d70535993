"""Array-level meta-features, triplet training, detector, calibration and baseline detectors (no AnnData inside)."""

from . import baselines
from ._calibration import choose_threshold, detection_metrics, tpr_at_fpr
from ._count_model import CountModelDetector, RecoveredCounts, recover_counts
from ._ensemble import EnsembleDetector, EnsembleReport, fit_ensemble
from ._features import (
    FEATURE_GROUPS,
    SURROGATE_WIDTH,
    InputConsistency,
    compute_meta_features,
    differentiable_meta_features,
    feature_names,
    first_linear,
    fit_input_reference,
    gradient_basis,
    meta_feature_tensor,
    straight_through,
)
from ._fit import MAX_FPR, DetectorConfig, DetectorFeatures, DetectorFit, FeatureSpec, fit_detector
from ._rule_layer import (
    CHECKS,
    FLAG_REASONS,
    REASONS,
    CountChecks,
    RuleFit,
    TwoCountFit,
    check_counts,
    fit_rules,
    non_integer_counts,
    reason_key,
    rule_counts,
    rule_reasons,
)
from ._rules import RULES, Lattice, PlausibilityRules, RuleReport, Transform, fit_lattice
from ._singletons import fit_count_checks, fit_singleton_min, poisson_resample, singleton_fraction
from ._stability import KNNConsistency, ThinningStability
from ._training import sample_triplets, train_residual, train_triplet
from .baselines import (
    BASELINES,
    BaselineDetector,
    BaselineName,
    KernelDensityDetector,
    LIDDetector,
    MahalanobisDetector,
    MaxSoftmaxDetector,
    ReferenceSplit,
    SqueezeDetector,
    make_baseline,
    reference_split,
)

__all__ = [
    "MAX_FPR",
    "DetectorConfig",
    "DetectorFeatures",
    "DetectorFit",
    "FeatureSpec",
    "fit_detector",
    "CHECKS",
    "FLAG_REASONS",
    "REASONS",
    "CountChecks",
    "RuleFit",
    "TwoCountFit",
    "check_counts",
    "fit_count_checks",
    "fit_rules",
    "fit_singleton_min",
    "poisson_resample",
    "singleton_fraction",
    "non_integer_counts",
    "reason_key",
    "rule_counts",
    "rule_reasons",
    "CountModelDetector",
    "EnsembleDetector",
    "EnsembleReport",
    "KNNConsistency",
    "RecoveredCounts",
    "ThinningStability",
    "fit_ensemble",
    "recover_counts",
    "RULES",
    "Lattice",
    "PlausibilityRules",
    "RuleReport",
    "Transform",
    "fit_lattice",
    "FEATURE_GROUPS",
    "SURROGATE_WIDTH",
    "InputConsistency",
    "choose_threshold",
    "compute_meta_features",
    "differentiable_meta_features",
    "detection_metrics",
    "feature_names",
    "first_linear",
    "fit_input_reference",
    "gradient_basis",
    "meta_feature_tensor",
    "sample_triplets",
    "straight_through",
    "tpr_at_fpr",
    "train_residual",
    "train_triplet",
]
__all__ += baselines.__all__
