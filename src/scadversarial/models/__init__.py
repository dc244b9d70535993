"""Torch models (classifier, detectors) and their safe, pickle-free persistence."""

from ._base import MODEL_CLASSES, SadModel, register_model_class
from ._io import load_model, save_model
from .classifier import CellClassifier, InputTransform
from .detector import AdversarialDetector, ResidualDetector, TripletNet
