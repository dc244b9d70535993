"""Fetch, save and load the models that ``.uns['sad']`` references."""

from __future__ import annotations

import os
from pathlib import Path

from anndata import AnnData

from .. import _keys
from .._validate import check_adata
from ..models._base import SadModel
from ..models._io import genes_sha256, load_model, lookup, reference, save_model


def _model_refs(adata: AnnData) -> dict[str, dict]:
    """``{step: reference}`` of every model referenced in ``adata.uns['sad']``."""
    root = adata.uns.get(_keys.UNS, {})
    return {
        step: rec["model"]
        for step, rec in root.items()
        if isinstance(rec, dict) and isinstance(rec.get("model"), dict) and "id" in rec["model"]
    }


def get_model(adata: AnnData, key: str = _keys.STEP_CLASSIFIER) -> SadModel:
    """The live model referenced by ``adata.uns['sad'][key]['model']``.

    Loads it from its saved ``path`` when it is not in this process yet.

    Parameters
    ----------
    adata
        AnnData with a run record written by :func:`~scadversarial.tl.train_classifier` or
        :func:`~scadversarial.tl.train_detector`.
    key
        The run record: ``'classifier'``, ``'detector'`` or a ``key_added`` used at training.

    Returns
    -------
    The model (a :class:`torch.nn.Module`).

    """
    check_adata(adata, allow_backed=True)  # reads .uns only
    refs = _model_refs(adata)
    if key not in refs:
        producer = "sad.tl.train_detector" if "detector" in key else "sad.tl.train_classifier"
        msg = f"No model referenced at adata.uns['sad'][{key!r}] (models referenced: {sorted(refs)}). Run `{producer}` first."
        raise KeyError(msg)
    ref = refs[key]
    model = lookup(str(ref["id"]))
    saved = str(ref.get("path", "") or "")
    if model is None and saved and Path(saved).is_dir():
        model = load_model(saved, expected_id=str(ref["id"]), expected_genes_sha256=ref.get("var_names_sha256") or None)
    if model is None:
        where = (
            f"its saved path {saved!r} is not a directory here"
            + ("" if Path(saved).is_absolute() else f" (relative to the current directory {os.getcwd()!r})")
            if saved
            else "it has no saved path"
        )
        msg = (
            f"The {key!r} model referenced in adata.uns['sad'] (id {ref['id']}) is not loaded in this process and {where}. "
            "Call `sad.load_models(adata, DIR)` with the directory given to `sad.save_models`."
        )
        raise KeyError(msg)
    return model


def set_model_reference(adata: AnnData, key: str, model: SadModel, *, save_dir: str | Path | None = None) -> dict:
    """Reference ``model`` from ``adata.uns['sad'][key]['model']`` (saving it to ``save_dir/key`` if given)."""
    path = ""
    if save_dir is not None:  # absolute: the reference must still lead to the model from another directory
        path = str(save_model(model, Path(save_dir).resolve() / key))
    ref = reference(model, path)
    adata.uns[_keys.UNS][key]["model"] = ref
    return ref


def save_models(adata: AnnData, path: str | Path) -> Path:
    """Save every model referenced in ``adata.uns['sad']`` to ``path/<key>/``.

    Each model directory holds ``model.safetensors``, ``config.json`` and ``genes.txt``; the
    references in ``.uns`` get the new paths, so write the AnnData after this call.

    Parameters
    ----------
    adata
        AnnData with model references.
    path
        Directory to create or fill.

    Returns
    -------
    ``path``, made absolute. Updates ``adata.uns['sad'][key]['model']['path']`` for each model (absolute
    paths: a process started in another directory finds them; after moving the folder, pass it to
    :func:`load_models`).

    """
    check_adata(adata, allow_backed=True)  # writes the references in .uns only
    path = Path(path).resolve()  # absolute: the references must still lead to the models from another directory
    refs = _model_refs(adata)
    if not refs:
        msg = "adata.uns['sad'] references no model. Train one with `sad.tl.train_classifier` first."
        raise KeyError(msg)
    for key in refs:
        model = get_model(adata, key)
        save_model(model, path / key)
        refs[key]["path"] = str(path / key)
    return path


def load_models(adata: AnnData, path: str | Path | None = None, *, device=None) -> dict[str, SadModel]:
    """Load the models that ``adata.uns['sad']`` references (e.g. after ``read_h5ad`` in a new process).

    Parameters
    ----------
    adata
        AnnData read back from an ``.h5ad`` file written after :func:`save_models` (in memory or backed).
    path
        The directory given to :func:`save_models`; by default each reference's stored path.
    device
        Torch device (``sad.settings.device`` by default).

    Returns
    -------
    ``{key: model}``. The models are registered under their ids, so
    :func:`~scadversarial.tl.predict` and :func:`~scadversarial.tl.detect` work again, also on an
    AnnData read with ``backed='r'`` (only ``.uns`` is read).

    """
    check_adata(adata, allow_backed=True)  # reads .uns only: the matrices may stay on disk
    refs = _model_refs(adata)
    if not refs:
        msg = "adata.uns['sad'] references no model: nothing to load. Was the AnnData written after `sad.tl.train_classifier`?"
        raise KeyError(msg)
    out = {}
    for key, ref in refs.items():
        mpath = Path(path) / key if path is not None else Path(str(ref.get("path", "")))
        if not str(ref.get("path", "")) and path is None:
            msg = f"The {key!r} model has no saved path; pass the directory given to `sad.save_models`."
            raise FileNotFoundError(msg)
        model = load_model(
            mpath, expected_id=str(ref["id"]), expected_genes_sha256=ref.get("var_names_sha256") or None, device=device
        )
        sha = genes_sha256(getattr(model, "var_names", []) or [])
        if ref.get("var_names_sha256") and sha != ref["var_names_sha256"]:
            msg = f"The {key!r} model in {str(mpath)!r} was trained on other genes than the reference records."
            raise ValueError(msg)
        out[key] = model
    return out
