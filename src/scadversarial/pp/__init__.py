"""Preprocessing: normalization and scaling, pseudo-labels, train/val/test split (``sad.pp``)."""

from ._labels import pseudo_labels
from ._preprocess import preprocess
from ._split import split

__all__ = ["preprocess", "pseudo_labels", "split"]
