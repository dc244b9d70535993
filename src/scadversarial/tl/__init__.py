"""AnnData-facing tools: classifier, attacks, detection and evaluation (``sad.tl``)."""

from ._attack import attack
from ._classifier import predict, train_classifier
from ._evaluate import detect, evaluate, meta_features, train_detector
from ._models import get_model, load_models, save_models
