"""Safe persistence of ``sad`` models and the in-process registry that ``.uns`` references point to.

A saved model is a directory with ``model.safetensors`` (weights and buffers), ``config.json``
(class name, constructor config) and ``genes.txt`` (input gene names). Loading parses JSON and
safetensors only and builds classes from an allow-list: opening a model never runs code.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from ._base import MODEL_CLASSES, SadModel

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
GENES = "genes.txt"
FORMAT_VERSION = 1

#: Live models of this process, keyed by the id stored in their ``.uns`` reference.
_REGISTRY: dict[str, SadModel] = {}


def genes_sha256(var_names) -> str:
    """SHA-256 of the newline-joined gene names (identifies a model's feature space)."""
    return hashlib.sha256("\n".join(map(str, var_names)).encode()).hexdigest()


def register(model: SadModel, model_id: str | None = None) -> str:
    """Put ``model`` in the registry and return its id (a new uuid unless given)."""
    model_id = model_id or getattr(model, "_sad_id", None) or uuid.uuid4().hex
    model._sad_id = model_id
    _REGISTRY[model_id] = model
    return model_id


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
    """Save ``model`` to directory ``path`` (created) as safetensors + JSON + gene list."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / WEIGHTS))
    config = {k: v for k, v in model.config.items() if k != "var_names"}
    meta = {"format_version": FORMAT_VERSION, "class": type(model).__name__, "id": register(model), "config": config}
    (path / CONFIG).write_text(json.dumps(meta, indent=1))
    if "var_names" in model.config:
        (path / GENES).write_text("\n".join(model.config["var_names"]) + "\n")
    return path


def load_model(path: str | Path, *, expected_id: str | None = None, device=None) -> SadModel:
    """Load a model saved by :func:`save_model`; no code is executed (JSON + safetensors only).

    Raises
    ------
    FileNotFoundError
        ``path`` or one of its files is missing.
    ValueError
        The files are corrupt, name an unknown model class, or do not match ``expected_id``.

    """
    path = Path(path)
    if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
        msg = f"No saved sad model in {str(path)!r} (expected {CONFIG} and {WEIGHTS}). Save one with `sad.save_models(adata, DIR)`."
        raise FileNotFoundError(msg)
    try:
        meta = json.loads((path / CONFIG).read_text())
        cls_name, config = meta["class"], dict(meta["config"])
    except (ValueError, KeyError, TypeError) as e:
        msg = f"Corrupt model config {str(path / CONFIG)!r}: {e}. Re-save the model."
        raise ValueError(msg) from e
    cls = MODEL_CLASSES.get(cls_name)
    if cls is None:
        msg = f"{str(path)!r} holds a model of unknown class {cls_name!r}; known classes: {sorted(MODEL_CLASSES)}."
        raise ValueError(msg)
    if expected_id is not None and meta.get("id") != expected_id:
        msg = f"The model in {str(path)!r} has id {meta.get('id')!r}, but the AnnData references {expected_id!r}: it is another model."
        raise ValueError(msg)
    if (path / GENES).is_file():
        config["var_names"] = (path / GENES).read_text().splitlines()
    try:
        model = cls.from_config(config)
        state = load_file(str(path / WEIGHTS), device="cpu")
        model.load_state_dict(state)
    except Exception as e:
        msg = f"Could not load the model in {str(path)!r} ({type(e).__name__}: {e}). The files are corrupt or from another version."
        raise ValueError(msg) from e
    model.eval()
    if device is not None:
        model.to(device)
    register(model, meta.get("id"))
    return model


__all__ = ["save_model", "load_model", "reference", "register", "lookup", "genes_sha256"]
