"""Safe persistence of ``sad`` models and the in-process registry that ``.uns`` references point to.

A saved model is a directory with ``model.safetensors`` (weights and buffers), ``config.json``
(format version, class name, constructor config, SHA-256 of the weights file and of the gene
list) and ``genes.txt`` (input gene names, UTF-8, one a line). Loading parses JSON and safetensors only and builds classes from an
allow-list: opening a model never runs code. A save is atomic: the bundle is written into a
temporary folder beside the target and renamed into place, so an interrupted save leaves the
previous bundle as it was.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import shutil
import uuid
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ._base import MODEL_CLASSES, SadModel

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
GENES = "genes.txt"
FORMAT_VERSION = 1  # layout of a saved bundle; bump when a reader of the old layout would misread the new
BUNDLE_FILES = frozenset({WEIGHTS, CONFIG, GENES})

#: Live models of this process, keyed by the id stored in their ``.uns`` reference.
_REGISTRY: dict[str, SadModel] = {}


def genes_sha256(var_names) -> str:
    """SHA-256 of the newline-joined gene names (identifies a model's feature space)."""
    return hashlib.sha256("\n".join(map(str, var_names)).encode()).hexdigest()


def register(model: SadModel, model_id: str | None = None) -> str:
    """Put ``model`` in the registry and return its id.

    The id is ``model_id`` when given (a loaded model replaces the entry), else the model's own id,
    else a new uuid. A model whose own id is held by another live model (a copy made with
    :func:`copy.copy` or unpickled) gets a new uuid: saving or referencing it must not replace the
    model an AnnData references.
    """
    if model_id is None:
        model_id = getattr(model, "_sad_id", None)
        held = _REGISTRY.get(model_id) if model_id else None
        if not model_id or (held is not None and held is not model):
            model_id = uuid.uuid4().hex
    model._sad_id = model_id
    _REGISTRY[model_id] = model
    return model_id


_register = register  # load_model's keyword ``register`` hides the function's name there


def lookup(model_id: str) -> SadModel | None:
    """The live model registered under ``model_id``, or ``None``."""
    return _REGISTRY.get(model_id)


def reference(model: SadModel, path: str | Path = "") -> dict[str, Any]:
    """The h5ad-writable reference to ``model`` stored in ``.uns``, registering it if needed."""
    model_id = register(model)
    config = {k: v for k, v in model.config.items() if k != "var_names"}
    var_names = getattr(model, "var_names", None) or []
    return {
        "id": model_id,
        "class": type(model).__name__,
        "path": str(path),
        "config": json.dumps(config),
        "var_names_sha256": genes_sha256(var_names),
        "n_genes": len(var_names),
    }


def save_model(model: SadModel, path: str | Path) -> Path:
    """Save ``model`` to directory ``path`` as safetensors + JSON + gene list, atomically.

    The files are written into a temporary folder beside ``path`` and renamed into place: an
    interrupted or failed save leaves a previous bundle at ``path`` intact. ``path`` must be new,
    empty, or a bundle saved before (its files are replaced).

    Parameters
    ----------
    model
        The model to save.
    path
        Directory of the bundle (created, with its parents).

    Returns
    -------
    ``path``, holding ``model.safetensors``, ``config.json`` and ``genes.txt``.

    Examples
    --------
    >>> from scadversarial.models import load_model, save_model
    >>> save_model(clf, "models/classifier")  # doctest: +SKIP
    >>> clf = load_model("models/classifier")  # doctest: +SKIP

    """
    path = Path(path)
    _check_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.saving-{uuid.uuid4().hex}"
    tmp.mkdir()  # mode from the umask, like every other folder the user makes
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        weights = save_safetensors(state)
        (tmp / WEIGHTS).write_bytes(weights)  # mode from the umask, like the metadata beside it
        config = {k: v for k, v in model.config.items() if k != "var_names"}
        meta = {
            "format_version": FORMAT_VERSION,
            "class": type(model).__name__,
            "id": register(model),
            "weights_sha256": hashlib.sha256(weights).hexdigest(),
            "config": config,
        }
        if "var_names" in model.config:
            genes = [str(g) for g in model.config["var_names"]]
            meta["genes_sha256"] = genes_sha256(genes)  # genes.txt is checked on load like the weights
            # UTF-8 whatever the locale: a gene named with a non-ASCII letter reads back the same everywhere
            (tmp / GENES).write_text("\n".join(genes) + "\n", encoding="utf-8")
        (tmp / CONFIG).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _check_target(path: Path) -> None:
    """Refuse to replace a file, or a folder that holds anything but a saved bundle's files."""
    if path.exists() and not path.is_dir():
        msg = f"Cannot save a model to {str(path)!r}: it is a file. Pass a directory path (it is created)."
        raise ValueError(msg)
    if path.is_dir():
        other = sorted(p.name for p in path.iterdir() if p.name not in BUNDLE_FILES)
        if other:
            msg = (
                f"Cannot save a model to {str(path)!r}: the folder holds other files ({', '.join(other[:10])}) "
                "that the save would replace. Pass a new or empty directory, or the directory of a saved sad model."
            )
            raise ValueError(msg)


def _replace_dir(new: Path, path: Path) -> None:
    """Move the finished bundle ``new`` to ``path``, replacing a previous bundle there (two renames)."""
    if not path.exists():
        new.rename(path)
        return
    old = path.parent / f".{path.name}.old-{uuid.uuid4().hex}"
    path.rename(old)
    try:
        new.rename(path)
    except BaseException:
        old.rename(path)  # put the previous bundle back
        raise
    shutil.rmtree(old, ignore_errors=True)


def load_model(
    path: str | Path,
    *,
    expected_id: str | None = None,
    expected_genes_sha256: str | None = None,
    register: bool = True,
    device=None,
) -> SadModel:
    """Load a model saved by :func:`save_model`; no code is executed (JSON + safetensors only).

    Parameters
    ----------
    path
        Directory of the bundle.
    expected_id
        Refuse a model whose id differs (the id an AnnData's reference holds).
    expected_genes_sha256
        Refuse a model whose genes differ (the ``var_names_sha256`` an AnnData's reference holds).
    register
        Register the model under its saved id, replacing a live model registered under it (the
        default). With ``False`` the model is returned without touching the registry.
    device
        Move the model there (default: CPU).

    Returns
    -------
    The model, in eval mode. It is registered only once every check passed: a refused model never
    replaces the model an AnnData references.

    Raises
    ------
    FileNotFoundError
        ``path`` or one of its files (``config.json``, ``model.safetensors``, ``genes.txt``) is missing.
    ValueError
        A file is truncated or corrupt (the message names it), the bundle is of a newer format
        version, names an unknown model class, or does not match ``expected_id`` or
        ``expected_genes_sha256``.

    Examples
    --------
    >>> from scadversarial.models import load_model
    >>> clf = load_model("models/classifier")  # doctest: +SKIP

    """
    path = Path(path)
    if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
        msg = f"No saved sad model in {str(path)!r} (expected {CONFIG} and {WEIGHTS}). Save one with `sad.save_models(adata, DIR)`."
        raise FileNotFoundError(msg)
    meta = _read_meta(path / CONFIG)
    cls_name, config = meta["class"], dict(meta["config"])
    cls = MODEL_CLASSES.get(cls_name)
    if cls is None:
        msg = f"{str(path)!r} holds a model of unknown class {cls_name!r}; known classes: {sorted(MODEL_CLASSES)}."
        raise ValueError(msg)
    if expected_id is not None and meta.get("id") != expected_id:
        msg = f"The model in {str(path)!r} has id {meta.get('id')!r}, but the AnnData references {expected_id!r}: it is another model."
        raise ValueError(msg)
    genes = _read_genes(path / GENES, meta.get("genes_sha256"), needed=_needs_genes(cls))
    if genes is not None:
        config["var_names"] = genes
        if expected_genes_sha256 and genes_sha256(genes) != expected_genes_sha256:
            msg = (
                f"The model in {str(path)!r} was trained on other genes than the AnnData's reference records "
                f"({len(genes)} genes in {GENES}): it is another model, or {GENES} was edited."
            )
            raise ValueError(msg)
    state = _read_weights(path / WEIGHTS, meta.get("weights_sha256"))
    try:
        model = cls.from_config(config)
        model.load_state_dict(state)
    except Exception as e:
        msg = (
            f"The weights in {str(path / WEIGHTS)!r} do not fit the model that {str(path / CONFIG)!r} describes "
            f"({type(e).__name__}: {e}). The files are corrupt or mixed from two saves: re-save the model."
        )
        raise ValueError(msg) from e
    model.eval()
    if device is not None:
        model.to(device)
    if register:
        _register(model, meta.get("id"))
    else:
        model._sad_id = meta.get("id")  # still names its saved id, e.g. in a detector's record
    return model


def _needs_genes(cls: type[SadModel]) -> bool:
    """Whether ``cls`` is built from a gene list (its constructor takes ``var_names``)."""
    try:
        return "var_names" in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


def _read_genes(file: Path, sha256: str | None, *, needed: bool) -> list[str] | None:
    """The gene names of a bundle's ``genes.txt`` (UTF-8), checked against the SHA-256 recorded at save time.

    ``None`` when the file is absent and neither the model class nor the config asks for it. Bundles
    saved before the hash was recorded have none: their gene list is accepted as read.
    """
    if not file.is_file():
        if needed or sha256 is not None:
            msg = f"The gene list {str(file)!r} of the saved model is missing. Restore it, or re-save the model."
            raise FileNotFoundError(msg)
        return None
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        msg = f"The gene list {str(file)!r} is not UTF-8 text ({e}). Re-save the model, or restore the file."
        raise ValueError(msg) from e
    # one name a line; split on newlines only (str.splitlines also splits on rarer breaks a name may hold)
    text = text.removesuffix("\n")
    genes = [g.removesuffix("\r") for g in text.split("\n")] if text else []
    if sha256 is not None and genes_sha256(genes) != sha256:
        msg = (
            f"The gene list {str(file)!r} is corrupt or was edited: its SHA-256 differs from the one {CONFIG} "
            "recorded at save time. Re-save the model, or restore the file."
        )
        raise ValueError(msg)
    return genes


def _read_meta(file: Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a bundle, its format version checked (absent: the first layout)."""
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        problem = str(e)
    else:
        problem = _meta_problem(meta)
    if problem:
        msg = f"Corrupt model config {str(file)!r}: {problem}. Re-save the model."
        raise ValueError(msg)
    version = meta.get("format_version", 1)
    if version > FORMAT_VERSION:
        msg = (
            f"{str(file)!r} has format_version {version}, newer than this scadversarial reads ({FORMAT_VERSION}): "
            "it was saved by a newer version. Upgrade with `pip install -U scadversarial`."
        )
        raise ValueError(msg)
    return meta


def _meta_problem(meta: Any) -> str | None:
    """What is wrong with a parsed ``config.json`` (keys every layout has, an integer version), or ``None``."""
    if not isinstance(meta, dict) or not isinstance(meta.get("class"), str) or not isinstance(meta.get("config"), dict):
        return "it needs a 'class' name and a 'config' object"
    version = meta.get("format_version", 1)
    if isinstance(version, bool) or not isinstance(version, int):
        return f"format_version must be an integer, got {version!r}"
    return None


def _read_weights(file: Path, sha256: str | None) -> dict:
    """The tensors of a ``model.safetensors``, checked against the SHA-256 recorded at save time."""
    data = file.read_bytes()
    problem = None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        problem = f"its SHA-256 differs from the one {CONFIG} recorded at save time"
    else:
        try:
            return load_safetensors(data)
        except (SafetensorError, ValueError, KeyError, TypeError) as e:  # a bad header, short data, unknown dtype
            problem = f"{type(e).__name__}: {e}"
    msg = f"The model file {str(file)!r} is truncated or corrupt ({problem}). Re-save the model, or restore the file."
    raise ValueError(msg)


__all__ = ["save_model", "load_model", "reference", "register", "lookup", "genes_sha256"]
