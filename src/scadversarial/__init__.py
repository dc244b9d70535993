"""scadversarial: adversarial attacks on single-cell cell-type classifiers, and their detection."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import datasets, get, pl, pp, tl
from ._settings import settings
from .tl._models import load_models, save_models

try:
    __version__ = version("scadversarial")
except PackageNotFoundError:  # pragma: no cover
    __version__ = "0.0.0"

__all__ = ["datasets", "get", "pp", "tl", "pl", "settings", "load_models", "save_models", "__version__"]
