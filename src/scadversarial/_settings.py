"""Package-wide settings: compute device, verbosity and progress bars."""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger("scadversarial")


class _Settings:
    """Settings of :mod:`scadversarial`, reachable as ``sad.settings``.

    Attributes
    ----------
    device
        ``'auto'`` (CUDA when available, else CPU), ``'cpu'``, ``'cuda'`` or any torch device string.
    progress
        Show :mod:`tqdm` progress bars on long work.
    verbosity
        Level of the ``scadversarial`` logger (``'warning'``, ``'info'``, ``'debug'`` or a logging level).
    batch_size
        Default number of cells per batch for inference, attacks and meta-features.

    """

    def __init__(self) -> None:
        self._device = "auto"
        self.progress = True
        self.batch_size = 1024
        self._verbosity = "warning"

    @property
    def device(self) -> str:
        return self._device

    @device.setter
    def device(self, value: str) -> None:
        if value != "auto":
            torch.device(value)  # raises on an invalid device string
        self._device = value

    @property
    def verbosity(self) -> str | int:
        return self._verbosity

    @verbosity.setter
    def verbosity(self, value: str | int) -> None:
        level = value if isinstance(value, int) else logging.getLevelName(str(value).upper())
        if not isinstance(level, int):
            msg = f"Unknown verbosity {value!r}; use 'warning', 'info', 'debug' or a logging level."
            raise ValueError(msg)
        logger.setLevel(level)
        self._verbosity = value

    def torch_device(self, device: str | torch.device | None = None) -> torch.device:
        """Resolve ``device`` (or the setting) to a :class:`torch.device`."""
        device = self._device if device is None else device
        if isinstance(device, torch.device):
            return device
        if device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(device)

    def __repr__(self) -> str:
        return f"sad.settings(device={self._device!r}, progress={self.progress}, verbosity={self._verbosity!r}, batch_size={self.batch_size})"


settings = _Settings()


def progress(iterable=None, **kwargs):
    """A :func:`tqdm.auto.tqdm` progress bar that honours ``sad.settings.progress``."""
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", not settings.progress)
    kwargs.setdefault("leave", False)
    return tqdm(iterable, **kwargs)
