"""The demo pipeline the app opens without arguments, built once and cached on disk."""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from .._pipeline import MAX_EPOCHS
from .._settings import logger
from ._load import load_pipeline
from ._state import AppError, Pipeline

if TYPE_CHECKING:
    from anndata import AnnData

#: Name of the stamp file written next to a cached default pipeline.
CACHE_STAMP = "app_cache.json"
#: Bump to invalidate cached default pipelines built by older versions of the app.
CACHE_FORMAT = 1
DEFAULT_DATA = "pbmc68k_reduced"


def default_cache_dir() -> Path:
    """Folder of the cached default pipeline.

    ``$SCADVERSARIAL_CACHE_DIR/app-pbmc68k_reduced`` when that variable is set, else
    ``$XDG_CACHE_HOME/scadversarial/app-pbmc68k_reduced`` (``~/.cache`` by default).
    """
    root = os.environ.get("SCADVERSARIAL_CACHE_DIR")
    if root:
        return Path(root).expanduser() / f"app-{DEFAULT_DATA}"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "scadversarial" / f"app-{DEFAULT_DATA}"


@functools.cache
def _code_sha256() -> str:
    """SHA-256 of the package's Python sources: a cached pipeline is only reused by the code that built it.

    Hashed once per process: the code a process runs is the code it imported, even when the files
    change on disk while it runs (a long-running app server, a test session during an edit).
    """
    import hashlib

    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _stamp(max_epochs: int, random_state: int) -> dict:
    from .. import __version__, tl

    return {
        "format": CACHE_FORMAT,
        "version": __version__,
        "code_sha256": _code_sha256(),
        "data": DEFAULT_DATA,
        "max_epochs": int(max_epochs),
        "random_state": int(random_state),
        "detector_api": hasattr(tl, "train_detector"),
    }


def cached_pipeline_ok(folder: str | Path, *, max_epochs: int = MAX_EPOCHS, random_state: int = 0) -> bool:
    """Whether ``folder`` holds a default pipeline built with these settings by this version."""
    folder = Path(folder)
    try:
        stamp = json.loads((folder / CACHE_STAMP).read_text())
    except (OSError, ValueError):
        return False
    return (
        (folder / "adata.h5ad").is_file() and (folder / "models").is_dir() and stamp == _stamp(max_epochs, random_state)
    )


def build_default_pipeline(
    cache_dir: str | Path | None = None, *, max_epochs: int = MAX_EPOCHS, random_state: int = 0, force: bool = False
) -> Path:
    """Build (or reuse) the demo pipeline on the embedded ``pbmc68k_reduced`` data.

    Runs the same chain as ``scadversarial run --data pbmc68k_reduced`` and writes the same
    layout: ``adata.h5ad``, ``models/`` and ``report.json``, plus a stamp file. A folder built
    earlier with the same settings by the same code (version and a hash of the package's
    sources) is reused as is; otherwise it is rebuilt. The folder is written
    to a temporary sibling first and renamed, so concurrent builds never see half a pipeline.

    Parameters
    ----------
    cache_dir
        Target folder (default :func:`default_cache_dir`).
    max_epochs
        Classifier epochs cap (fewer is faster, e.g. for tests).
    random_state
        Seed of every step.
    force
        Rebuild even when a valid cache exists.

    Returns
    -------
    The folder.

    """
    from .. import datasets

    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if not force and cached_pipeline_ok(folder, max_epochs=max_epochs, random_state=random_state):
        logger.info("app: reusing the cached pipeline in %s", folder)
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        adata = datasets.pbmc68k_reduced()
        _run_chain(adata, tmp, max_epochs=max_epochs, random_state=random_state)
        # the references in adata.h5ad point at tmp/models: the app loads from the folder's own models/
        (tmp / CACHE_STAMP).write_text(json.dumps(_stamp(max_epochs, random_state), indent=1))
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        try:
            tmp.rename(folder)
        except OSError:  # another process won the race: use its folder
            if not cached_pipeline_ok(folder, max_epochs=max_epochs, random_state=random_state):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _run_chain(adata: AnnData, out: Path, *, max_epochs: int, random_state: int) -> None:
    """The ``scadversarial run`` chain writing ``out/adata.h5ad``, ``out/models``, ``out/report.json``."""
    from .._pipeline import run_pipeline
    from .._settings import settings

    progress, settings.progress = settings.progress, False
    try:
        run_pipeline(adata, out=out, random_state=random_state, max_epochs=max_epochs)
    finally:
        settings.progress = progress


def open_pipeline(
    adata: str | Path | None = None,
    models: str | Path | None = None,
    *,
    cache_dir: str | Path | None = None,
    max_epochs: int = MAX_EPOCHS,
) -> Pipeline:
    """What the app opens: the given pipeline, or the cached default one (built when needed).

    Parameters
    ----------
    adata
        ``adata.h5ad`` of a ``scadversarial run`` output (or that folder); ``None`` for the default.
    models
        Its models folder (default: ``models/`` next to the ``.h5ad``).
    cache_dir
        Folder of the default pipeline (default :func:`default_cache_dir`).
    max_epochs
        Classifier epochs cap when the default pipeline is built.

    """
    if adata is None:
        if models is not None:
            msg = "--models was given without --adata: pass the adata.h5ad the models belong to."
            raise AppError(msg)
        try:
            folder = build_default_pipeline(cache_dir, max_epochs=max_epochs)
        except AppError:
            raise
        except Exception as e:
            msg = f"Building the demo pipeline on {DEFAULT_DATA} failed ({type(e).__name__}: {e})."
            raise AppError(msg) from e
        pipe = load_pipeline(folder / "adata.h5ad", folder / "models")
        pipe.source = f"demo pipeline on {DEFAULT_DATA} (cached in {folder})"
        return pipe
    return load_pipeline(adata, models)
