"""Array-level meta-features, triplet training, detector and calibration (no AnnData inside)."""

from ._calibration import choose_threshold, detection_metrics, tpr_at_fpr
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
from ._training import sample_triplets, train_residual, train_triplet

__all__ = [
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
