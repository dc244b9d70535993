"""What ``sad.tl.attack`` writes: the attacked layers, their predictions, the flip table and the run record."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from .. import _keys
from .._settings import logger
from .._validate import get_matrix, h5ad_safe, uns_root
from ..detection._rule_layer import reason_key
from ._attack_options import SCORE_METHODS, method_norm

if TYPE_CHECKING:
    from anndata import AnnData

    from ..attacks.whitebox import AttackRun
    from ._attack_options import AttackCall

#: the metrics a run may add beyond the flip table, in the order the record lists them
EXTRA_METRICS = ("target_rate", "flip_rate_continuous", "detector", "queries")
#: how a record's layers are stored (``record['storage']``)
Storage = Literal["dense", "rows", "lazy"]


def attacked_key(prefix: str) -> str:
    """``.obs`` column saying which cells ``attack(key_added=prefix, cells=...)`` attacked."""
    return f"{prefix}_attacked"


def attacked_cells(adata: AnnData, layer: str) -> np.ndarray | None:
    """Per cell, whether the attack layer ``layer`` holds an attack in its row; ``None`` when every row does.

    An attack run with ``AttackOptions(cells=...)`` stores rows for those cells only (the others are
    empty rows of a CSR layer, not attacks): readers of attack layers score and count those cells only.

    Examples
    --------
    >>> import scadversarial as sad
    >>> from scadversarial.tl._attack_record import attacked_cells
    >>> adata = sad.datasets.pbmc68k_reduced()
    >>> attacked_cells(adata, "sad_pgd_eps0.1") is None
    True

    """
    key = _sample_key(adata, layer)
    if key is None:
        return None
    if key not in adata.obs:
        msg = f"Attack layer {layer!r} holds rows for the cells in adata.obs[{key!r}] only, and that column is gone."
        raise KeyError(msg)
    return adata.obs[key].to_numpy(bool)


def _sample_key(adata: AnnData, layer: str) -> str | None:
    """The ``.obs`` column of the cells a sampled attack layer holds, ``None`` for a layer of every cell."""
    attacks = adata.uns.get(_keys.UNS, {}).get(_keys.STEP_ATTACKS, {})
    for rec in attacks.values():
        if isinstance(rec, dict) and layer in {str(v) for v in np.atleast_1d(rec.get("layers", []))}:
            return str(rec.get("cells", {}).get("obs_key", "")) or None
    return None


def require_every_row(adata: AnnData, layer: str | None, *, caller: str) -> None:
    """Refuse a sampled attack layer (rows for some cells only) in a tool that reads every row."""
    if layer in (None, "X"):
        return
    key = _sample_key(adata, layer)
    if key is None:
        return
    msg = (
        f"adata.layers[{layer!r}] holds attacks for the cells in adata.obs[{key!r}] only (an attack "
        f"run with cells=); its other rows are empty, not cells. Run `{caller}` on those cells: "
        f"`sub = adata[adata.obs[{key!r}]].copy()`."
    )
    raise ValueError(msg)


def flip_table(target: np.ndarray, preds: dict[str, np.ndarray], classes: list[str]) -> dict:
    """Flip rates (prediction differs from the attacked class) per layer, any layer, and per class."""
    flips = {k: p != target for k, p in preds.items()}
    any_flip = np.logical_or.reduce(list(flips.values()))
    per_class = np.full((len(flips), len(classes)), np.nan)
    for i, f in enumerate(flips.values()):
        for c in range(len(classes)):
            sel = target == c
            if sel.any():
                per_class[i, c] = f[sel].mean()
    any_class = np.array([any_flip[target == c].mean() if (target == c).any() else np.nan for c in range(len(classes))])
    return {
        "flip_rate": {k: float(f.mean()) for k, f in flips.items()},
        "flip_rate_any": float(any_flip.mean()),
        "per_class": {
            "classes": list(classes),
            "layers": list(flips),
            "flip_rate": per_class,
            "flip_rate_any": any_class,
        },
    }


def _target_rate(pred: np.ndarray, goal: np.ndarray, source: np.ndarray) -> float:
    """Fraction of the cells sent to another class that reached it."""
    moved = goal != source
    return float((pred == goal)[moved].mean()) if moved.any() else 1.0


def full_width(adata: AnnData, Xa: np.ndarray, layer: str | None, genes: pd.Index) -> np.ndarray:
    """An attacked matrix of ``genes`` over all of ``adata``'s genes: the others keep their values of ``layer``."""
    if adata.var_names.equals(genes):
        return Xa
    out = get_matrix(adata, layer, copy=True)
    out[:, adata.var_names.get_indexer(genes)] = Xa
    return out


def _write_layer(adata: AnnData, name: str, Xa: np.ndarray, layer: str | None, genes: pd.Index) -> None:
    """Write an attacked matrix of ``genes``; other genes of ``adata`` keep their values of ``layer``."""
    adata.layers[name] = full_width(adata, Xa, layer, genes)


def stack_dense(blocks: list[np.ndarray]) -> np.ndarray:
    """The attacked matrix of every cell from its chunks (one chunk: that array itself, no copy)."""
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)


def stack_rows(blocks: list[np.ndarray], idx: np.ndarray, n_obs: int) -> sp.csr_matrix:
    """A CSR matrix over all ``n_obs`` cells holding the attacked rows ``idx`` (increasing); other rows are empty."""
    parts = [sp.csr_matrix(b, dtype=np.float32) for b in blocks]
    counts = np.zeros(n_obs, dtype=np.int64)
    counts[idx] = np.concatenate([np.diff(p.indptr) for p in parts])
    indptr = np.concatenate([[0], np.cumsum(counts)])
    data = np.concatenate([p.data for p in parts])
    indices = np.concatenate([p.indices for p in parts])
    return sp.csr_matrix((data, indices, indptr), shape=(n_obs, parts[0].shape[1]))


def write_chunked_layers(
    adata: AnnData,
    prefix: str,
    layers: dict[float, object],
    *,
    preds: dict[float, np.ndarray],
    classes: list[str],
    cells: np.ndarray | None,
    goal: np.ndarray | None,
    source: np.ndarray,
) -> tuple[list[str], dict[str, dict]]:
    """Write ``.layers['<prefix>_eps<eps>']`` and their ``_pred`` columns (missing for cells not attacked).

    ``layers`` hold every cell's row (dense or dask) or, with ``cells`` (the attacked positions), a CSR
    matrix whose other rows are empty; ``.obs['<prefix>_attacked']`` then marks the attacked cells.
    ``preds``, ``goal`` and ``source`` are those of the attacked cells. Returns the layer names and the
    ``target_rate`` metric.
    """
    names: list[str] = []
    target_rate: dict[str, float] = {}
    for e, M in layers.items():
        name = f"{prefix}_eps{e:g}"
        names.append(name)
        adata.layers[name] = M
        codes = preds[e]
        if cells is not None:
            codes = np.full(adata.n_obs, -1, dtype=np.int64)  # -1: missing, the cell was not attacked
            codes[cells] = preds[e]
        adata.obs[_keys.pred_key(name)] = pd.Series(
            pd.Categorical.from_codes(codes, categories=classes), index=adata.obs_names
        )
        if goal is not None:
            target_rate[name] = _target_rate(preds[e], goal, source)
    if cells is not None:
        attacked = np.zeros(adata.n_obs, dtype=bool)
        attacked[cells] = True
        adata.obs[attacked_key(prefix)] = attacked
    return names, {"target_rate": target_rate}


def write_layers(
    adata: AnnData,
    prefix: str,
    run: AttackRun,
    *,
    layer: str | None,
    genes: pd.Index,
    predict: Callable[[float, str, np.ndarray], np.ndarray],
    source: np.ndarray,
    goal: np.ndarray | None,
) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """Write ``.layers['<prefix>_eps<eps>']`` per budget and, through ``predict(eps, name, X_adv)``, its predictions.

    Returns the predicted classes per layer (in budget order) and the ``target_rate`` metric.
    """
    preds: dict[str, np.ndarray] = {}
    target_rate: dict[str, float] = {}
    for e, Xa in run.adversarial.items():
        name = f"{prefix}_eps{e:g}"
        _write_layer(adata, name, Xa, layer, genes)
        preds[name] = predict(e, name, Xa)
        if goal is not None:
            target_rate[name] = _target_rate(preds[name], goal, source)
    return preds, {"target_rate": target_rate}


def store_record(
    adata: AnnData,
    prefix: str,
    *,
    source: np.ndarray,
    preds: dict[str, np.ndarray],
    classes: list[str],
    extra: dict[str, dict],
    params: dict,
    kind: str,
    storage: Storage = "dense",
    cells: dict | None = None,
) -> None:
    """Write the run record ``.uns['sad']['attacks'][prefix]``: params, layers, budgets and metrics.

    ``source`` and ``preds`` are those of the attacked cells; ``cells`` (``n_cells``, ``obs_key``) says
    which cells those are (default: all, ``obs_key`` empty), ``storage`` how the layers are stored.
    """
    layers = list(preds)
    metrics = flip_table(source, preds, classes)
    metrics["flip_rate_per_eps"] = np.array([metrics["flip_rate"][n] for n in layers])
    metrics.update({k: extra[k] for k in EXTRA_METRICS if extra.get(k)})
    root = uns_root(adata)
    root.setdefault(_keys.STEP_ATTACKS, {})
    cells = cells or {"n_cells": len(source), "obs_key": ""}
    source = str(params.get("layer", "X"))
    _drop_replaced(adata, root[_keys.STEP_ATTACKS].get(prefix), set(layers), str(cells["obs_key"]), source)
    rec = {"params": params, "layers": layers, "eps": params["eps"], "metrics": metrics, "kind": kind}
    rec["storage"] = storage
    rec["cells"] = cells
    root[_keys.STEP_ATTACKS][prefix] = h5ad_safe(rec)


def _drop_replaced(adata: AnnData, old: dict | None, written: set[str], obs_key: str, source: str) -> None:
    """Remove what a replaced record of the same key left that no longer describes a run.

    Its layers the new run did not write (but the one the new run attacked, ``source``) would
    belong to no record, and readers would take them for scaled input whatever space they hold;
    their ``_pred`` columns and the old ``_attacked`` column would describe a run that is gone. The
    detector's outputs on every old layer but ``source`` are removed too: a rewritten layer holds
    another attack, and ``evaluate`` would otherwise reuse the old scores.
    """
    if not old:
        return
    old_layers = [str(lay) for lay in np.atleast_1d(old.get("layers", [])) if str(lay) != source]
    stale = [lay for lay in old_layers if lay not in written]
    for lay in stale:
        if lay in adata.layers:
            del adata.layers[lay]
        if _keys.pred_key(lay) in adata.obs:
            del adata.obs[_keys.pred_key(lay)]
    for lay in old_layers:
        for key in (_keys.score_key(lay), _keys.flag_key(lay), reason_key(lay)):
            if key in adata.obs:
                del adata.obs[key]
        for key in (_keys.meta_key(lay), _keys.triplet_key(lay)):
            if key in adata.obsm:
                del adata.obsm[key]
    old_key = str(old.get("cells", {}).get("obs_key", "") or "")
    if old_key and old_key != obs_key and old_key in adata.obs:
        del adata.obs[old_key]
    if stale:
        logger.info("attack: replaced the run of the same key; removed its layers %s", stale)


def detector_logits(detector: torch.nn.Module, Xs: np.ndarray, bs: int, dev: torch.device) -> np.ndarray:
    """The detector's logit of scaled cells (its scoring may need input gradients, so grad stays on)."""
    out = []
    with torch.enable_grad():
        for s in range(0, len(Xs), bs):
            xb = torch.as_tensor(np.ascontiguousarray(Xs[s : s + bs]), device=dev)
            out.append(detector.score_logit(xb).detach().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def cells_name(cells) -> str:
    """How the attacked cells were chosen, for ``params['cells']``: ``'all'``, the ``.obs`` column, ``'mask'`` or ``'indices'``."""
    if cells is None:
        return "all"
    if isinstance(cells, str):
        return cells
    return "mask" if np.asarray(cells).dtype == bool else "indices"


def record_params(call: AttackCall, *, space: str, layer: str | None, n_genes: int) -> dict:
    """The record's ``params``: the threat (space, constraint, budget, norm, fold change, target) and the settings."""
    method, eps_list, threat, options = call.method, call.eps, call.threat, call.options
    target_class, detector = call.target_class, call.detector
    mask_name = threat.mask if isinstance(threat.mask, str) else ("custom" if threat.mask is not None else "none")
    one_or_per_cell = str(target_class) if isinstance(target_class, str) else "per_cell"
    target_name = "none" if target_class is None else one_or_per_cell
    custom = "custom" if threat.bounds is not None else "none"
    bounds = "observed" if threat.constraint == "observed" else custom
    params = {
        "cells": cells_name(options.cells),
        "method": method,
        "eps": eps_list,
        "norm": method_norm(method),
        "space": space,
        "constraint": threat.constraint or "none",
        "max_log_fc": -1.0 if threat.max_log_fc is None else float(threat.max_log_fc),
        "layer": layer or "X",
        "target": target_name,
        "labels_key": options.labels_key or "predicted",
        "mask": mask_name,
        "bounds": bounds,
        "random_state": int(options.random_state),
        "detector": "none" if detector is None else str(getattr(detector, "_sad_id", type(detector).__name__)),
        "detector_weight": list(np.atleast_1d(options.detector_weight).astype(float)) if detector is not None else [],
    }
    if method in SCORE_METHODS:
        params["max_queries"] = int(options.max_queries)
    else:
        params["alpha"] = [options.step_size(method, e, space=space, n_genes=n_genes) for e in eps_list]
        params["steps"] = options.n_steps(method)
    if method == "cw":
        params.update(cw_c=options.cw_c, cw_search_steps=options.cw_search_steps, cw_confidence=options.cw_confidence)
    if method == "deepfool":
        params["overshoot"] = options.overshoot
    return params


__all__ = [
    "Storage",
    "attacked_cells",
    "attacked_key",
    "cells_name",
    "detector_logits",
    "flip_table",
    "record_params",
    "stack_dense",
    "stack_rows",
    "store_record",
    "write_chunked_layers",
    "write_layers",
]
