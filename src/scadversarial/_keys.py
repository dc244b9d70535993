"""Every default AnnData key written or read by :mod:`scadversarial`, in one place."""

from __future__ import annotations

from dataclasses import dataclass

UNS = "sad"  #: ``.uns['sad']`` holds run records, one per step

# preprocessing
VAR_MEAN = "sad_mean"
VAR_STD = "sad_std"
LAYER_COUNTS = "counts"
LAYER_LOGNORM = "sad_lognorm"
VAR_HVG = "highly_variable"

# labels and split
OBS_LABEL = "sad_label"
OBS_SPLIT = "sad_split"
SPLITS = ("train", "val", "test")

# classifier outputs
OBS_PRED = "sad_pred"
OBS_CONFIDENCE = "sad_confidence"
OBSM_EMBEDDING = "X_sad_embedding"
OBSM_PROBA = "sad_proba"

# detection outputs
OBSM_META = "sad_meta"
OBSM_TRIPLET = "X_sad_triplet"
OBS_SCORE = "sad_score"
OBS_FLAG = "sad_adversarial"

# run-record steps in .uns['sad']
STEP_PREPROCESS = "preprocess"
STEP_LABELS = "pseudo_labels"
STEP_SPLIT = "split"
STEP_CLASSIFIER = "classifier"
STEP_ATTACKS = "attacks"
STEP_DETECTOR = "detector"
STEP_EVALUATE = "evaluate"


@dataclass(frozen=True)
class ClassifierKeys:
    """Where a classifier's calls on ``X`` go: ``.obs`` ``pred`` and ``confidence``, ``.obsm`` ``proba`` and ``embedding``."""

    pred: str
    confidence: str
    proba: str
    embedding: str


def classifier_keys(key: str = STEP_CLASSIFIER) -> ClassifierKeys:
    """Output keys of ``train_classifier(key_added=key)``: the ``sad_*`` keys for the default record, else prefixed by ``key``.

    A second classifier (e.g. a hardened one, ``key_added='hardened'``) writes ``'hardened_pred'``,
    ``'hardened_confidence'``, ``'hardened_proba'`` and ``'X_hardened_embedding'``, so the calls of
    the classifier the detector watches stay in ``'sad_pred'``.
    """
    if key == STEP_CLASSIFIER:
        return ClassifierKeys(OBS_PRED, OBS_CONFIDENCE, OBSM_PROBA, OBSM_EMBEDDING)
    return ClassifierKeys(f"{key}_pred", f"{key}_confidence", f"{key}_proba", f"X_{key}_embedding")


def pred_key(layer: str) -> str:
    """``.obs`` key of the predictions on ``layer`` (``'sad_pred'`` for ``X``)."""
    return OBS_PRED if layer is None else f"{layer}_pred"


def score_key(layer: str | None) -> str:
    """``.obs`` key of the detector score on ``layer`` (``'sad_score'`` for ``X``)."""
    return OBS_SCORE if layer is None else f"{OBS_SCORE}_{layer}"


def flag_key(layer: str | None) -> str:
    """``.obs`` key of the detector flag on ``layer`` (``'sad_adversarial'`` for ``X``)."""
    return OBS_FLAG if layer is None else f"{OBS_FLAG}_{layer}"


# detector: role of each cell in training the detector (meta_train / calibration / reference / unused)
OBS_DETECTOR_ROLE = "sad_detector_role"
STEP_DETECT = "detect"
STEP_META = "meta_features"


def meta_key(layer: str | None) -> str:
    """``.obsm`` key of the meta-features of ``layer`` (``'sad_meta'`` for ``X``)."""
    return OBSM_META if layer is None else f"{OBSM_META}_{layer}"


def triplet_key(layer: str | None) -> str:
    """``.obsm`` key of the detector's triplet embedding of ``layer`` (``'X_sad_triplet'`` for ``X``)."""
    return OBSM_TRIPLET if layer is None else f"{OBSM_TRIPLET}_{layer}"


# randomized-smoothing certification (sad.tl.certify): record and prefix of its .obs columns
STEP_CERTIFY = "sad_certified"


def certified_pred_key(key: str = STEP_CERTIFY) -> str:
    """``.obs`` key of the smoothed predictions of ``certify(key_added=key)`` (``'sad_certified_pred'``)."""
    return f"{key}_pred"


def certified_radius_key(key: str = STEP_CERTIFY) -> str:
    """``.obs`` key of the certified L2 radii of ``certify(key_added=key)`` (``'sad_certified_radius'``)."""
    return f"{key}_radius"
