"""Feature spaces of the matrices on an AnnData: which space a layer is in, and its scaled values.

``'scaled'`` is the classifier's input (``X``, unless ``sad.pp.preprocess(output='lognorm')`` left ``X``
log-normalized), ``'log'`` the log-normalized values of the kept genes (``.layers['sad_lognorm']``) and
``'counts'`` their raw counts (``.layers['counts']``). An attack
layer is in the space it was made in (its record's ``params['space']``). Every consumer (predict,
detect, evaluate, the plots) reads a layer through :func:`scaled_matrix`, which converts a log or
count layer with the classifier's own transform, exactly as the attack saw it.
"""

from __future__ import annotations

import numpy as np
import torch
from anndata import AnnData

from .. import _keys
from .._docs import doc_params
from .._settings import logger, settings
from .._validate import MissingPolicy, absent_genes, check_choice, matrix_for_genes, quiet_fill, warn_filled
from ..models.classifier import SPACES, Space, SpaceClassifier
from ._chunks import x_is_lognorm
from ._fragments import doc_example_classifier

#: the matrix holding each space's clean values (``None``: ``X``)
SPACE_LAYER: dict[str, str | None] = {"scaled": None, "log": _keys.LAYER_LOGNORM, "counts": _keys.LAYER_COUNTS}
#: ``.obs`` columns that may hold each cell's total counts (scanpy / older pipelines)
TOTAL_COUNT_KEYS = ("total_counts", "n_counts")


def space_layer(space: Space) -> str | None:
    """The layer holding the clean values of ``space`` (``None`` for ``X``)."""
    check_choice("space", space, Space)
    return SPACE_LAYER[space]


def layer_space(adata: AnnData, layer: str | None) -> Space:
    """The feature space of ``X`` or of a layer: ``'scaled'``, ``'log'`` or ``'counts'``.

    ``X`` is scaled, or log-normalized when ``sad.pp.preprocess(output='lognorm')`` made it
    (``.uns['sad']['preprocess']['params']['output'] == 'lognorm'``); ``.layers['sad_lognorm']`` log-normalized; ``.layers['counts']`` counts; an
    attack layer is in the space of its record (``.uns['sad']['attacks'][key]['params']['space']``,
    or for records without one, the space of the matrix it attacked, ``params['layer']``). Any other
    layer is taken as scaled.

    Parameters
    ----------
    adata
        The AnnData.
    layer
        ``None`` or ``'X'`` for ``X``, else a layer name.

    Returns
    -------
    The space's name.

    Examples
    --------
    >>> import scadversarial as sad
    >>> adata = sad.datasets.pbmc68k_reduced()
    >>> sad.pp.preprocess(adata)
    >>> sad.tl.layer_space(adata, "sad_lognorm")
    'log'

    """
    if layer in (None, "X"):
        return "log" if x_is_lognorm(adata) else "scaled"
    for space, lay in SPACE_LAYER.items():
        if lay is not None and layer == lay:
            return space  # type: ignore[return-value]
    attacks = adata.uns.get(_keys.UNS, {}).get(_keys.STEP_ATTACKS, {})
    for rec in attacks.values():
        if not isinstance(rec, dict) or "layers" not in rec:
            continue
        if layer in {str(v) for v in np.atleast_1d(rec["layers"])}:
            params = rec.get("params", {})
            space = str(params.get("space", ""))
            if space in SPACES:
                return space  # type: ignore[return-value]
            base = str(params.get("layer", "X"))
            if base == layer:
                return "scaled"
            return layer_space(adata, None if base in ("X", "") else base)
    return "scaled"


def counts_target_sum(adata: AnnData) -> float | None:
    """The normalization's target sum when ``sad.pp.preprocess`` normalized counts, else ``None`` (no raise)."""
    rec = adata.uns.get(_keys.UNS, {}).get(_keys.STEP_PREPROCESS)
    params = {} if rec is None else rec.get("params", {})
    if bool(params.get("already_log", False)) or params.get("target_sum") is None:
        return None
    return float(params["target_sum"])


def target_sum(adata: AnnData) -> float:
    """The normalization's target sum (``.uns['sad']['preprocess']['params']['target_sum']``); raises without one."""
    ts = counts_target_sum(adata)
    if ts is not None:
        return ts
    rec = adata.uns.get(_keys.UNS, {}).get(_keys.STEP_PREPROCESS)
    if rec is None or not rec.get("params", {}).get("already_log", False):
        msg = (
            "No target sum in adata.uns['sad']['preprocess']: count space needs `sad.pp.preprocess(adata)` "
            "on raw counts."
        )
        raise KeyError(msg)
    msg = (
        "adata was preprocessed from log-normalized values: there are no counts to attack. "
        "Preprocess raw counts with `sad.pp.preprocess`, or use space='log' or 'scaled'."
    )
    raise ValueError(msg)


def other_counts(adata: AnnData, var_names, *, missing: MissingPolicy = "raise") -> np.ndarray:
    """Per cell, its counts outside the genes ``var_names`` (float64): the library ``N - sum(c_kept)``.

    ``sad.pp.preprocess`` normalized each cell by its total ``N`` over all genes, while
    ``.layers['counts']`` holds only the kept genes. ``N`` is recovered from the kept genes'
    counts ``c`` and log-normalized values ``l = log1p(c * target_sum / N)``:
    ``N = target_sum * sum(c) / sum(expm1(l))`` (rounded, counts being integers). A cell with no
    count in the kept genes takes ``.obs['total_counts']`` or ``.obs['n_counts']`` when present,
    else the median library (its normalized values are all zero whatever ``N``). With
    ``missing='fill'``, genes of ``var_names`` that ``adata`` lacks count 0 in both layers: ``N`` is
    recovered from the others, and their counts, if any, are among the counts outside.

    Examples
    --------
    >>> import scadversarial as sad
    >>> adata = sad.datasets.pbmc3k()  # doctest: +SKIP
    >>> sad.pp.preprocess(adata)  # doctest: +SKIP
    >>> sad.tl.other_counts(adata, adata.var_names)[:3]  # doctest: +SKIP

    """
    ts = target_sum(adata)
    for key in (_keys.LAYER_COUNTS, _keys.LAYER_LOGNORM):
        if key not in adata.layers:
            msg = f"Count space needs adata.layers[{key!r}], written by `sad.pp.preprocess` from raw counts."
            raise KeyError(msg)
    C = matrix_for_genes(adata, var_names, _keys.LAYER_COUNTS, missing=missing).astype(np.float64)
    L = matrix_for_genes(adata, var_names, _keys.LAYER_LOGNORM, missing=missing).astype(np.float64)
    kept = C.sum(1)
    expr = np.expm1(L).sum(1)
    has = (kept > 0) & (expr > 0)
    N = np.full(len(C), np.nan)
    N[has] = np.round(ts * kept[has] / expr[has])
    if not has.all():
        obs_key = next((k for k in TOTAL_COUNT_KEYS if k in adata.obs), None)
        if obs_key is not None:
            N[~has] = adata.obs[obs_key].to_numpy(np.float64)[~has]
        else:
            fill = float(np.median(N[has])) if has.any() else ts
            logger.warning("%d cells have no counts in the kept genes: library size set to %g", (~has).sum(), fill)
            N[~has] = fill
    return np.maximum(N - kept, 0.0)


def space_model(adata: AnnData, model: torch.nn.Module, space: Space) -> SpaceClassifier:
    """The classifier fed ``space``'s matrix through its own transform (count space: with the preprocessing's target sum)."""
    check_choice("space", space, Space)
    ts = target_sum(adata) if space == "counts" else None
    return SpaceClassifier(model, space, target_sum=ts)


@torch.no_grad()
def to_scaled(
    view: SpaceClassifier, X: np.ndarray, other: np.ndarray | None = None, *, batch_size: int | None = None
) -> np.ndarray:
    """The classifier's scaled input from ``X`` in ``view``'s space, in batches (float32)."""
    if view.space == "scaled":
        return np.asarray(X, dtype=np.float32)
    dev = next((b.device for b in view.classifier.buffers()), torch.device("cpu"))
    bs = int(batch_size or settings.batch_size)
    out = np.empty(X.shape, dtype=np.float32)
    for s in range(0, X.shape[0], bs):
        xb = torch.as_tensor(np.ascontiguousarray(X[s : s + bs], dtype=np.float32), device=dev)
        ob = None if other is None else torch.as_tensor(np.asarray(other[s : s + bs], dtype=np.float32), device=dev)
        out[s : s + bs] = view.to_scaled(xb, ob).cpu().numpy()
    return out


#: how a gene filled by ``missing='fill'`` is filled, as the warning says it
FILLED_AT_MEAN = "at their training mean (0 once scaled)"


@doc_params(doc_example_classifier=doc_example_classifier)
def scaled_matrix(
    adata: AnnData, model: torch.nn.Module, layer: str | None = None, *, missing: MissingPolicy = "raise"
) -> np.ndarray:
    """``X`` or a layer as the classifier's scaled input, converted from the space it was made in.

    A scaled layer is read as is; a log or count layer (``.layers['sad_lognorm']``, ``.layers['counts']``
    or an attack layer made in that space) goes through the model's transform (count space:
    library-size normalization with each cell's original library, ``log1p``, scaling, clip).

    Parameters
    ----------
    adata
        The AnnData.
    model
        A :class:`~scadversarial.models.CellClassifier` (or a detector, whose classifier copy is used).
    layer
        ``None`` or ``'X'`` for ``X``, else a layer name.
    missing
        ``'raise'`` or ``'fill'`` for genes the model needs and ``adata`` lacks. A filled gene sits
        at its training mean, 0 once scaled, in every space: the value the classifier saw on average,
        so its outputs move least (a count layer's other genes are normalized without it; logged once).

    Returns
    -------
    Cells x the model's genes, float32.

    Examples
    --------
    {doc_example_classifier}
    >>> Z = sad.tl.scaled_matrix(adata, clf, "sad_lognorm")
    >>> bool(abs(Z - adata.X).max() < 1e-5)
    True

    """
    layer = None if layer == "X" else layer  # 'X' names X, as in layer_space
    space = layer_space(adata, layer)
    clf = model if hasattr(model, "transform") else model.classifier  # a detector scores with its classifier copy
    with quiet_fill():  # a log or count gene is filled with 0 first, then set to the mean below: one warning, exact
        X = matrix_for_genes(adata, model.var_names, layer, missing=missing)
        if space == "log":
            X = to_scaled(space_model(adata, clf, "log"), X)
        elif space == "counts":
            X = to_scaled(space_model(adata, clf, space), X, other_counts(adata, model.var_names, missing=missing))
    return _at_mean(adata, model, X, missing)


def _at_mean(adata: AnnData, model: torch.nn.Module, Z: np.ndarray, missing: MissingPolicy) -> np.ndarray:
    """``Z`` (scaled) with the genes ``adata`` lacks at their training mean, 0 once scaled (``missing='fill'``, logged)."""
    if missing == "fill":
        absent = absent_genes(adata, model.var_names)
        if absent.any():
            Z[:, absent] = 0.0
            warn_filled(adata, model.var_names, FILLED_AT_MEAN)
    return Z


def log_scaled(
    adata: AnnData, model: torch.nn.Module, layer: str | None, *, missing: MissingPolicy = "raise"
) -> np.ndarray:
    """A log-space matrix (``X`` or a layer) through the model's transform; missing genes (``'fill'``) at the training mean."""
    clf = model if hasattr(model, "transform") else model.classifier
    with quiet_fill():
        L = matrix_for_genes(adata, model.var_names, layer, missing=missing)
    return _at_mean(adata, model, to_scaled(space_model(adata, clf, "log"), L), missing)


def zero_count_scaled(model: torch.nn.Module) -> np.ndarray:
    """Per gene of ``model``, the scaled value of a zero count (log value 0): ``clip((0 - mean) / std)`` (float32).

    What an unexpressed gene reads as; the plausibility rules read a gene filled by ``missing='fill'``
    so, since no count gives its training mean (:func:`~scadversarial.tl.detect`).
    """
    clf = model if hasattr(model, "transform") else model.classifier
    t = clf.transform
    with torch.no_grad():
        return t(torch.zeros(1, len(model.var_names), device=t.mean.device)).cpu().numpy()[0].astype(np.float32)


def source_layers(adata: AnnData, layer: str | None) -> tuple[str, ...]:
    """The layers :func:`scaled_matrix` reads for ``X`` or ``layer``, besides ``X`` (what a chunk must hold).

    A count-space layer also needs ``.layers['counts']`` and ``.layers['sad_lognorm']``, from which each
    cell's counts outside the kept genes are recovered (:func:`other_counts`).
    """
    own = () if layer in (None, "X") else (layer,)
    if layer_space(adata, layer) == "counts":
        return (*own, *(k for k in (_keys.LAYER_COUNTS, _keys.LAYER_LOGNORM) if k not in own))
    return own


def expressed_mask(adata: AnnData, var_names, space: Space, X: np.ndarray) -> np.ndarray:
    """Per cell and gene: the gene is expressed in that cell (nonzero log-normalized value or count).

    Log and count space read their own matrix ``X``; scaled space reads ``.layers['sad_lognorm']``
    (the zero of scaled values is a per-gene offset).
    """
    if space != "scaled":
        return X != 0
    if _keys.LAYER_LOGNORM not in adata.layers:
        msg = "constraint='expressed' in scaled space needs adata.layers['sad_lognorm'] (`sad.pp.preprocess`)."
        raise KeyError(msg)
    return matrix_for_genes(adata, var_names, _keys.LAYER_LOGNORM) != 0


__all__ = [
    "layer_space",
    "space_layer",
    "scaled_matrix",
    "log_scaled",
    "zero_count_scaled",
    "source_layers",
    "other_counts",
    "space_model",
    "to_scaled",
    "expressed_mask",
]
