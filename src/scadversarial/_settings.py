"""Package-wide settings: compute device, verbosity and progress bars."""

from __future__ import annotations

import logging
import sys
from enum import IntEnum

import torch

logger = logging.getLogger("scadversarial")


class Verbosity(IntEnum):
    """Levels of ``sad.settings.verbosity``, as scanpy's: 0 errors only ... 3 debug messages."""

    error = 0
    warning = 1
    info = 2
    debug = 3

    @property
    def level(self) -> int:
        """The :mod:`logging` level of the ``scadversarial`` logger at this verbosity."""
        return (logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG)[self]


class _FallbackHandler(logging.StreamHandler):
    """Prints the package's messages to stderr where the application configured no logging.

    Records still propagate: where the root logger has handlers (``logging.basicConfig``, pytest, a
    notebook's setup), those print them and this handler stays silent, so nothing is printed twice.
    """

    def emit(self, record: logging.LogRecord) -> None:
        if logging.getLogger().handlers:
            return
        self.setStream(sys.stderr)  # the current stderr (redirections made after import are honoured)
        super().emit(record)


def _install_handler() -> None:
    """Attach one :class:`_FallbackHandler` to the package logger (idempotent across reloads)."""
    if not any(isinstance(h, _FallbackHandler) for h in logger.handlers):
        handler = _FallbackHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        logger.addHandler(handler)


class _Settings:
    """Settings of :mod:`scadversarial`, reachable as ``sad.settings``.

    Attributes
    ----------
    device
        ``'auto'`` (CUDA when available, else CPU), ``'cpu'``, ``'cuda'`` or any torch device string.
    progress
        Show :mod:`tqdm` progress bars on long work.
    verbosity
        Level of the ``scadversarial`` logger, as in scanpy: ``0`` (or ``'error'``) errors only,
        ``1`` (``'warning'``, the default), ``2`` (``'info'``), ``3`` (``'debug'``). Messages go to
        the application's logging handlers when it configured any, else to stderr.
    batch_size
        Default number of cells per batch for inference, attacks and meta-features.

    """

    def __init__(self) -> None:
        self._device = "auto"
        self.progress = True
        self.batch_size = 1024
        self.verbosity = Verbosity.warning

    @property
    def device(self) -> str:
        return self._device

    @device.setter
    def device(self, value: str) -> None:
        if value != "auto":
            torch.device(value)  # raises on an invalid device string
        self._device = value

    @property
    def verbosity(self) -> Verbosity:
        return self._verbosity

    @verbosity.setter
    def verbosity(self, value: int | str) -> None:
        self._verbosity = _parse_verbosity(value)
        _install_handler()
        logger.setLevel(self._verbosity.level)

    def torch_device(self, device: str | torch.device | None = None) -> torch.device:
        """Resolve ``device`` (or the setting) to a :class:`torch.device`."""
        device = self._device if device is None else device
        if isinstance(device, torch.device):
            return device
        if device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(device)

    def __repr__(self) -> str:
        return f"sad.settings(device={self._device!r}, progress={self.progress}, verbosity={int(self._verbosity)}, batch_size={self.batch_size})"


def _parse_verbosity(value: int | str) -> Verbosity:
    """``value`` (0-3 or a level name, any case) as a :class:`Verbosity`, else a :class:`ValueError`."""
    if isinstance(value, str) and value.lower() in Verbosity.__members__:
        return Verbosity[value.lower()]
    if isinstance(value, int | Verbosity) and not isinstance(value, bool) and 0 <= value <= max(Verbosity):
        return Verbosity(value)
    msg = (
        f"Unknown verbosity {value!r}. Use 0 ('error'), 1 ('warning'), 2 ('info') or 3 ('debug'), "
        "e.g. `sad.settings.verbosity = 'info'`."
    )
    raise ValueError(msg)


settings = _Settings()


def progress(iterable=None, **kwargs):
    """A :func:`tqdm.auto.tqdm` progress bar that honours ``sad.settings.progress``."""
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", not settings.progress)
    kwargs.setdefault("leave", False)
    return tqdm(iterable, **kwargs)
