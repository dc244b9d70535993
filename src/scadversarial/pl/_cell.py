"""One cell's case study: ``cell``."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from .. import _keys, get
from .._docs import doc_params
from .._validate import check_adata
from . import _utils as u


def _cell_index(adata: AnnData, cell: str | int) -> int:
    if isinstance(cell, int | np.integer):
        if not -adata.n_obs <= int(cell) < adata.n_obs:
            msg = f"Cell index {cell} out of range for {adata.n_obs} cells."
            raise IndexError(msg)
        return int(cell) % adata.n_obs
    idx = adata.obs_names.get_indexer([str(cell)])[0]
    if idx < 0:
        msg = f"Cell {cell!r} not in adata.obs_names."
        raise KeyError(msg)
    return int(idx)


def _layer_proba(adata: AnnData, i: int, layer: str) -> np.ndarray:
    """Class probabilities of cell ``i`` on ``layer`` from the referenced classifier."""
    import torch

    from ..tl._input import classifier_input

    model = get.model(adata)
    X = classifier_input(adata[[i]], model, layer)  # a log or count attack layer is read in its own space
    logits, _ = model.predict_arrays(X)
    return torch.softmax(torch.from_numpy(logits), 1).numpy()[0]


@doc_params(doc_labels_key=u.doc_labels_key, doc_ax=u.doc_ax, doc_returns_ax=u.doc_returns_ax)
def cell(
    adata: AnnData,
    cell: str | int,
    layer: str | None = None,
    *,
    labels_key: str | None = None,
    top: int | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """One cell's class probabilities before and after an attack, with the detector's verdicts.

    Solid bars are the clean probabilities, hatched bars those on the attack layer, each in
    its class color; the title gives the true label, the two predictions and, when the cell
    was scored by :func:`~scadversarial.tl.detect`, the detector's score and verdict for the
    clean and the attacked profile.

    Parameters
    ----------
    adata
        AnnData with a classifier (:func:`~scadversarial.tl.train_classifier`, still loaded or
        reloadable with :func:`~scadversarial.load_models`) and an attack layer.
    cell
        Cell name (in ``obs_names``) or integer position; a cell attacked in ``layer`` (an attack of a
        sample of cells holds no attack of the others).
    layer
        Attack layer (default: the largest epsilon of the first white-box attack).
    {doc_labels_key}
    top
        Show only the ``top`` classes with the largest clean or attacked probability (default: all).
    {doc_ax}

    Returns
    -------
    {doc_returns_ax}

    """
    from ._classifier import pred_classes

    check_adata(adata)
    fn = "cell"
    i = _cell_index(adata, cell)
    if _keys.OBSM_PROBA not in adata.obsm:
        msg = "sad.pl.cell needs adata.obsm['sad_proba'], which is written by `sad.tl.train_classifier` / `sad.tl.predict`."
        raise KeyError(msg)
    classes = pred_classes(adata, fn)
    if layer is None:
        layer = u.default_layer(adata, fn)
    u.check_layer(adata, layer, fn)
    if not u.attacked(adata, layer)[i]:
        msg = (
            f"sad.pl.cell: cell {adata.obs_names[i]!r} was not attacked in {layer!r} (the attack of a sample of "
            "cells, `sad.tl.attack(..., cells=...)`, holds an empty row for it); pick an attacked cell."
        )
        raise ValueError(msg)
    lk = u.labels_key(adata, labels_key, fn) if (labels_key or _keys.UNS in adata.uns) else None
    p_clean = np.asarray(adata.obsm[_keys.OBSM_PROBA][i], dtype=float)
    p_adv = _layer_proba(adata, i, layer)
    order = np.arange(len(classes))
    if top is not None:
        order = np.argsort(-np.maximum(p_clean, p_adv), kind="stable")[:top]
        order = np.sort(order)
    names = [classes[j] for j in order]
    colors = (
        u.category_colors(adata, lk, classes)
        if lk
        else dict(zip(classes, u.default_palette(len(classes)), strict=True))
    )

    fig, ax_ = u.new_axes(ax, (max(4.5, 0.55 * len(order) + 2), 3.8))
    x = np.arange(len(order))
    c = [colors[n] for n in names]
    ax_.bar(x - 0.2, p_clean[order], width=0.4, color=c, edgecolor="black", linewidth=0.5)
    ax_.bar(x + 0.2, p_adv[order], width=0.4, color=c, alpha=0.55, hatch="//", edgecolor="black", linewidth=0.5)
    ax_.set_xticks(x, names, rotation=45, ha="right")
    ax_.set_ylim(0, 1.3)  # room for the legend above the bars
    ax_.set_yticks(np.linspace(0, 1, 6))
    ax_.set_ylabel("class probability")

    def verdict(key_score, key_flag):
        if key_score not in adata.obs:
            return "not scored"
        s = float(adata.obs[key_score].iloc[i])
        flagged = bool(adata.obs[key_flag].iloc[i]) if key_flag in adata.obs else None
        word = "" if flagged is None else (" → flagged adversarial" if flagged else " → passes as clean")
        return f"score {s:.2f}{word}"

    label = u.eps_label(adata, layer)
    pred_c, pred_a = classes[int(p_clean.argmax())], classes[int(p_adv.argmax())]
    v_clean = verdict(_keys.OBS_SCORE, _keys.OBS_FLAG)
    v_adv = verdict(_keys.score_key(layer), _keys.flag_key(layer))
    handles = [
        Patch(facecolor="0.5", edgecolor="black", label=f"clean: {pred_c} ({p_clean.max():.2f}); {v_clean}"),
        Patch(
            facecolor="0.5",
            alpha=0.55,
            hatch="//",
            edgecolor="black",
            label=f"{label}: {pred_a} ({p_adv.max():.2f}); {v_adv}",
        ),
    ]
    ax_.legend(handles=handles, fontsize=7, loc="upper center", framealpha=0.9)
    truth = f", true {lk} = {adata.obs[lk].iloc[i]}" if lk and not pd.isna(adata.obs[lk].iloc[i]) else ""
    ax_.set_title(f"cell {adata.obs_names[i]}{truth}", fontsize=10)
    return u.finish(fig, ax_, show=show, return_fig=return_fig, ax_given=ax is not None)
