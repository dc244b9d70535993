"""``sad.tl.attack``'s threat model on arrays: the space and matrix attacked, the mask, the bounds, the classes.

Everything here reads the AnnData and checks it; nothing is written. The result is a
:class:`~scadversarial.attacks.whitebox.ThreatArrays` for the array-level attacks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from .._validate import check_obs_key, get_matrix
from ..attacks.whitebox import ThreatArrays
from ._attack_options import SCORE_METHODS, method_norm
from ._space import expressed_mask, layer_space, space_layer

if TYPE_CHECKING:
    from anndata import AnnData

    from ..models.classifier import CellClassifier, Space
    from ._attack_options import ThreatModel

#: per gene, the ``(min, max)`` of the attacked space's clean values over all cells
Observed = tuple[np.ndarray, np.ndarray]
#: where each space's clean values come from, for the message when that layer is missing
_LAYER_PRODUCER = {"log": "`sad.pp.preprocess`", "counts": "`sad.pp.preprocess` on raw counts"}


def check_threat(adata: AnnData, threat: ThreatModel, method: str) -> tuple[Space, str | None]:
    """Validate the threat model against ``adata`` in one place; return the space and the matrix attacked."""
    space = threat.space
    given = threat.layer
    if space is None:
        space = layer_space(adata, given) if given is not None else "scaled"
    if threat.constraint == "counts" and space != "counts":
        msg = f"constraint='counts' (non-negative integer counts) needs space='counts', got space={space!r}."
        raise ValueError(msg)
    if method in SCORE_METHODS and space == "counts":
        msg = f"Score-based method {method!r} queries stacked samples without per-cell libraries; use space='log' or 'scaled'."
        raise ValueError(msg)
    check_max_log_fc(threat.max_log_fc)
    layer = given if given is not None else space_layer(space)
    held = layer_space(adata, layer) if layer is not None else "scaled"
    # a layer known to hold another space (counts, log values, an attack record's) would be read as this one
    if held not in ("scaled", space):
        msg = (
            f"Layer {layer!r} holds {held!r} values but space={space!r} was asked for; pass space={held!r} "
            f"(or leave it out), or the layer of that space ({space_layer(space) or 'None for X'})."
        )
        raise ValueError(msg)
    if layer is not None and layer not in adata.layers:
        hint = _LAYER_PRODUCER.get(space, "")
        msg = f"Layer {layer!r} not found in adata.layers (available: {list(adata.layers)}). " + (
            f"Space {space!r} reads it; it is written by {hint}." if hint else "Pass an existing layer."
        )
        raise KeyError(msg)
    if threat.bounds is not None and not (isinstance(threat.bounds, Sequence) and len(threat.bounds) == 2):
        msg = "bounds must be None, 'observed' or a (lower, upper) pair of scalars or per-gene arrays."
        raise ValueError(msg)
    return space, layer


def check_max_log_fc(max_log_fc: float | None) -> None:
    """A fold-change limit must be a positive natural-log fold change."""
    if max_log_fc is not None and not max_log_fc > 0:
        msg = f"max_log_fc must be positive (a natural-log fold change), got {max_log_fc}."
        raise ValueError(msg)


def resolve_mask(adata: AnnData, mask, genes: pd.Index, *, require_any: bool = True) -> np.ndarray | None:
    """The mask as a boolean array over the model's genes (1-d) or cells x genes (2-d).

    ``require_any=False`` for a chunk of cells, whose rows of a valid mask may all be ``False``.
    """
    if mask is None:
        return None
    name = None
    if isinstance(mask, str):
        name = mask
        if mask in adata.var:
            mask = adata.var[mask].to_numpy()
        elif mask in adata.layers:
            mask = get_matrix(adata, mask) != 0
        else:
            msg = f"Mask {mask!r} is neither a .var column ({list(adata.var.columns)}) nor a layer ({list(adata.layers)})."
            raise KeyError(msg)
    mask = np.asarray(mask)
    shapes = {(adata.n_vars,), (adata.n_obs, adata.n_vars)}
    if mask.dtype != bool or mask.shape not in shapes:
        what = f"{name!r}" if name else "mask"
        msg = (
            f"{what} must be boolean with one value per gene ({adata.n_vars}) or a cells x genes matrix "
            f"({adata.n_obs} x {adata.n_vars}), or the name of a boolean .var column or a layer; got {mask.dtype} {mask.shape}."
        )
        raise ValueError(msg)
    if not adata.var_names.equals(genes):
        mask = mask[..., adata.var_names.get_indexer(genes)]
    if require_any and not mask.any():
        msg = "mask allows no entry to change; pass None or a mask with at least one True."
        raise ValueError(msg)
    return mask


def _custom_bounds(bounds, n_genes: int):
    lower, upper = bounds
    for b in (lower, upper):
        if b is not None and np.ndim(b) == 1 and len(b) != n_genes:
            msg = f"Per-gene bounds need {n_genes} values (one per gene), got {len(b)}."
            raise ValueError(msg)
    return lower, upper


def tighter(a, b, pick):
    """The tighter of two bounds (``pick``: ``np.maximum`` for lower bounds, ``np.minimum`` for upper ones)."""
    if a is None:
        return b
    if b is None:
        return a
    return pick(np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32))


def base_box(
    adata: AnnData,
    threat: ThreatModel,
    X: np.ndarray,
    genes: pd.Index,
    *,
    observed: Observed | None = None,
    whole: bool = True,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """``(lower, upper, mask)`` from the custom bounds, the observed range of ``X`` and the mask (any classifier).

    ``observed``: the per-gene ``(min, max)`` over all cells when ``X`` is only a chunk of them
    (:func:`observed_range`); default: the range of ``X``. ``whole=False``: ``X`` is a chunk, whose
    rows of a valid cells x genes mask may all be ``False``.
    """
    lower = upper = None
    if threat.bounds is not None:
        lower, upper = _custom_bounds(threat.bounds, X.shape[1])
    if threat.constraint == "observed":
        lo, hi = observed if observed is not None else (X.min(0), X.max(0))
        lower, upper = tighter(lower, lo, np.maximum), tighter(upper, hi, np.minimum)
    return lower, upper, resolve_mask(adata, threat.mask, genes, require_any=whole)


def observed_range(chunks: Iterable[np.ndarray]) -> Observed:
    """Per gene, the ``(min, max)`` over the rows of every chunk (the ``'observed'`` constraint of chunked input)."""
    lo = hi = None
    for X in chunks:
        if not len(X):
            continue
        lo = X.min(0) if lo is None else np.minimum(lo, X.min(0))
        hi = X.max(0) if hi is None else np.maximum(hi, X.max(0))
    if lo is None:
        msg = "The observed range needs at least one cell."
        raise ValueError(msg)
    return lo, hi


def threat_arrays(
    adata: AnnData,
    threat: ThreatModel,
    space: Space,
    method: str,
    X: np.ndarray,
    model: CellClassifier,
    *,
    observed: Observed | None = None,
    whole: bool = True,
) -> ThreatArrays:
    """The array-level threat of ``X`` (the model's genes, in ``space``; ``observed``, ``whole``: see :func:`base_box`)."""
    genes = pd.Index(model.var_names)
    lower, upper, mask = base_box(adata, threat, X, genes, observed=observed, whole=whole)
    if space == "counts":
        lower = tighter(lower, np.float32(0), np.maximum)  # the transform's log needs counts >= 0
    if threat.constraint == "expressed":
        if space == "scaled":  # zero expression is a per-gene value in scaled units
            with torch.no_grad():
                floor = model.transform(torch.zeros(1, X.shape[1], device=model.transform.mean.device))
            floor = floor.cpu().numpy()[0]
        else:
            floor = np.zeros(X.shape[1], np.float32)
        lower = tighter(lower, floor, np.maximum)
        expressed = expressed_mask(adata, genes, space, X)
        mask = expressed if mask is None else (mask & expressed)
    std = model.transform.std.detach().cpu().numpy() if space == "scaled" else None
    return ThreatArrays(
        norm=method_norm(method),
        lower=lower,
        upper=upper,
        mask=mask,
        max_log_fc=threat.max_log_fc,
        space=space,
        std=std,
        integer=threat.constraint == "counts",
    )


def source_codes(
    adata: AnnData,
    labels_key: str | None,
    classes: list[str],
    predicted: Callable[[], np.ndarray],
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """The class each cell is pushed away from: ``predicted()`` (clean calls), or its label in ``labels_key``.

    ``rows``: the cells attacked (default: all); only they need a label (the others' codes are -1).
    """
    if labels_key is None:
        return predicted()
    column = check_obs_key(adata, labels_key)
    missing = int(column.isna().to_numpy()[slice(None) if rows is None else rows].sum())
    if missing:
        n = adata.n_obs if rows is None else len(rows)
        msg = (
            f"{missing} of {n} attacked cells have no label in {labels_key!r} (NaN): there is nothing to push them "
            f"away from. Attack the labelled ones, e.g. options=sad.tl.AttackOptions(cells=adata.obs[{labels_key!r}]"
            ".notna().to_numpy()), or leave labels_key out to push every cell away from its clean call."
        )
        raise ValueError(msg)
    known = column.notna().to_numpy()
    labels = column.astype(str).where(known)  # as strings, as the classes are; NaN stays NaN (code -1)
    judged = known if rows is None else known & np.isin(np.arange(adata.n_obs), rows)  # only attacked cells
    unknown = sorted(set(labels[judged]) - set(classes))
    if unknown:
        msg = f"Labels {unknown[:5]} in {labels_key!r} are not classes of the classifier ({classes}). Use the key it was trained on."
        raise ValueError(msg)
    return pd.Categorical(labels, categories=classes).codes.astype(np.int64)


def resolve_cells(adata: AnnData, cells) -> np.ndarray | None:
    """The positions of the cells to attack, increasing (``None``: all cells).

    ``cells``: the name of a boolean ``.obs`` column, a boolean mask over cells, or cell positions.
    """
    if cells is None:
        return None
    what = "cells"
    if isinstance(cells, str):
        what = f"adata.obs[{cells!r}]"
        cells = check_obs_key(adata, cells).to_numpy()
    idx = np.asarray(cells)
    if idx.dtype == bool:
        if idx.shape != (adata.n_obs,):
            msg = f"A boolean {what} needs one value per cell ({adata.n_obs}), got shape {idx.shape}."
            raise ValueError(msg)
        idx = np.flatnonzero(idx)
    elif idx.dtype.kind not in "iu" or idx.ndim != 1:
        msg = (
            f"{what} must be a boolean .obs column name, a boolean mask over cells or integer cell positions; "
            f"got {idx.dtype} with shape {idx.shape}."
        )
        raise ValueError(msg)
    elif idx.size and (idx.min() < 0 or idx.max() >= adata.n_obs):
        msg = f"Cell positions must lie in [0, {adata.n_obs}), got {idx.min()} .. {idx.max()}."
        raise ValueError(msg)
    if idx.size == 0:
        msg = f"{what} selects no cell; select at least one cell to attack, or pass cells=None for all."
        raise ValueError(msg)
    return np.unique(idx).astype(np.int64)  # the layer stores rows in the cells' order


def target_codes(adata: AnnData, target_class, classes: list[str]) -> np.ndarray | None:
    """Per cell, the class to reach (``None``: untargeted)."""
    if target_class is None:
        return None
    names = (
        np.full(adata.n_obs, target_class, dtype=object) if isinstance(target_class, str) else np.asarray(target_class)
    )
    if names.shape != (adata.n_obs,):
        msg = f"target_class must be one class name or one per cell ({adata.n_obs}), got shape {names.shape}."
        raise ValueError(msg)
    unknown = sorted(set(map(str, names)) - set(classes))
    if unknown:
        msg = (
            f"Target classes {unknown[:5]} are not classes of the model ({classes}). Pass one of them as target_class."
        )
        raise ValueError(msg)
    return pd.Categorical(names.astype(str), categories=classes).codes.astype(np.int64)


__all__ = [
    "Observed",
    "base_box",
    "check_threat",
    "observed_range",
    "resolve_mask",
    "resolve_cells",
    "source_codes",
    "target_codes",
    "threat_arrays",
    "tighter",
]
