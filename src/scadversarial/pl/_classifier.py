"""Plots of the classifier's clean (and attacked) predictions: ``confusion``, ``class_accuracy``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from .. import _keys
from .._docs import doc_params
from .._validate import check_adata
from . import _utils as u


def _confusion_table(truth: pd.Series, pred: pd.Series, classes: list[str]) -> tuple[np.ndarray, list[str]]:
    """Counts with rows = true labels (``classes`` then unknown labels), columns = ``classes``."""
    truth, pred = truth.astype(str).to_numpy(), pred.astype(str).to_numpy()
    rows = classes + sorted(set(truth) - set(classes))
    r = pd.Index(rows).get_indexer(truth)
    c = pd.Index(classes).get_indexer(pred)
    conf = np.zeros((len(rows), len(classes)), dtype=np.int64)
    ok = c >= 0
    np.add.at(conf, (r[ok], c[ok]), 1)
    return conf, rows


def _bar_style(k: int) -> dict:
    """Alpha and hatch of the ``k``-th bar of a class: solid for the clean predictions, lighter and hatched after."""
    return {"alpha": 1.0 if k == 0 else max(0.35, 0.8 - 0.15 * k), "hatch": None if k == 0 else "//"}


def pred_classes(adata: AnnData, fn: str) -> list[str]:
    """The classifier's classes, in the order of ``.obs['sad_pred']``'s categories."""
    pred = u.obs_key(adata, _keys.OBS_PRED, fn, "sad.tl.train_classifier")
    if isinstance(pred.dtype, pd.CategoricalDtype):
        return [str(c) for c in pred.cat.categories]
    return sorted(pred.astype(str).unique())


@doc_params(doc_labels_key=u.doc_labels_key, doc_show=u.doc_show)
def confusion(
    adata: AnnData,
    layer: str | None = None,
    *,
    labels_key: str | None = None,
    split: str | None = "test",
    normalize: bool = True,
    annotate: bool | None = None,
    cmap: str = "Blues",
    ax: Sequence[Axes] | Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> list[Axes] | Figure | None:
    """Confusion matrices of the clean predictions and of the predictions on an attack layer, side by side.

    Rows are the true labels, columns the predicted classes; with ``normalize`` each row sums
    to 1 (the diagonal is the per-class recall). The title of each panel gives the accuracy.
    With an attack of a sample of cells (``cells=``) both panels show its attacked cells only.

    Parameters
    ----------
    adata
        AnnData with clean predictions (:func:`~scadversarial.tl.train_classifier` or
        :func:`~scadversarial.tl.predict`) and, for the second panel, an attack (:func:`~scadversarial.tl.attack`).
    layer
        Attack layer of the second panel, e.g. ``'sad_pgd_eps0.1'``. Default: the largest
        epsilon of the first white-box attack; without attacks only the clean panel is drawn.
    {doc_labels_key}
    split
        Cells of this split of ``.obs['sad_split']`` (default ``'test'``, the honest choice); ``None`` for all cells.
    normalize
        Show row fractions instead of counts.
    annotate
        Write the value in each cell (default: when there are at most 12 classes).
    cmap
        Colormap.
    ax
        One Axes per panel (two, or one without an attack layer).
    {doc_show}

    Returns
    -------
    The list of Axes (clean, attacked), the Figure with ``return_fig=True``, or ``None`` when shown.

    """
    check_adata(adata)
    fn = "confusion"
    labels_key = u.labels_key(adata, labels_key, fn)
    classes = pred_classes(adata, fn)
    if layer is None and any(u.is_whitebox(r) for r in u.all_attacks(adata).values()):
        layer = u.default_layer(adata, fn)
    if layer is not None:
        u.check_layer(adata, layer, fn)
    mask = u.cell_mask(adata, split, fn)
    if layer is not None:  # the clean panel shows the same cells as the attacked one
        mask = u.attacked_mask(adata, [layer], mask, fn)
    truth = adata.obs[labels_key][mask]
    panels = [("clean", _keys.OBS_PRED)] + ([(u.eps_label(adata, layer), _keys.pred_key(layer))] if layer else [])

    size = max(3.2, 0.38 * len(classes) + 1.6)
    fig, axs = u.new_panels(ax, len(panels), fn, (size * len(panels) + 0.8, size))
    if annotate is None:
        annotate = len(classes) <= 12
    im = None
    for a, (title, key) in zip(axs, panels, strict=True):
        conf, rows = _confusion_table(truth, adata.obs[key][mask], classes)
        acc = float(np.trace(conf[: len(classes)]) / max(conf.sum(), 1))
        shown = conf / np.maximum(conf.sum(1, keepdims=True), 1) if normalize else conf
        im = a.imshow(shown, cmap=cmap, vmin=0, vmax=1 if normalize else max(conf.max(), 1), aspect="auto")
        a.grid(visible=False)
        a.set_xticks(range(len(classes)), classes, rotation=90)
        a.set_yticks(range(len(rows)), rows)
        a.set_xlabel("predicted")
        a.set_ylabel(f"true ({labels_key})")
        a.set_title(f"{title}: accuracy {acc:.2f}")
        if annotate:
            text = np.array([f"{v:.2f}" if normalize else f"{v:d}" for v in shown.ravel()]).reshape(shown.shape)
            u.annotate_cells(a, np.where(conf > 0, text, ""), shown > (0.5 if normalize else 0.5 * shown.max()))
    if ax is None:
        fig.colorbar(im, ax=axs, shrink=0.7, label="fraction of true class" if normalize else "cells")
    return u.finish(fig, axs, show=show, return_fig=return_fig, ax_given=ax is not None)


@doc_params(doc_labels_key=u.doc_labels_key, doc_split=u.doc_split, doc_ax=u.doc_ax, doc_returns_ax=u.doc_returns_ax)
def class_accuracy(
    adata: AnnData,
    layers: str | Sequence[str] | None = None,
    *,
    labels_key: str | None = None,
    split: str | None = "test",
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Per-class accuracy of the clean predictions (optionally beside the accuracy under attack).

    One bar per class in the class's color (``adata.uns[f'{{labels_key}}_colors']`` or scanpy's
    default palette), with the number of cells above it; attack layers add lighter, hatched bars.
    With attack layers of a sample of cells (``cells=``) every bar covers the cells attacked in all of them.

    Parameters
    ----------
    adata
        AnnData with clean predictions (:func:`~scadversarial.tl.train_classifier`).
    layers
        Attack layers whose per-class accuracy to show beside the clean one (default: none).
    {doc_labels_key}
    {doc_split}
    {doc_ax}

    Returns
    -------
    {doc_returns_ax}

    """
    check_adata(adata)
    fn = "class_accuracy"
    labels_key = u.labels_key(adata, labels_key, fn)
    u.obs_key(adata, _keys.OBS_PRED, fn, "sad.tl.train_classifier")
    layers = [] if layers is None else ([layers] if isinstance(layers, str) else list(layers))
    for layer in layers:
        u.check_layer(adata, layer, fn)
    mask = u.attacked_mask(adata, layers, u.cell_mask(adata, split, fn), fn)
    truth = adata.obs[labels_key][mask].astype(str)
    col = adata.obs[labels_key]
    order = (
        [str(c) for c in col.cat.categories] if isinstance(col.dtype, pd.CategoricalDtype) else sorted(truth.unique())
    )
    order = [c for c in order if (truth == c).any()]
    colors = u.category_colors(adata, labels_key, order)
    keys = [("clean", _keys.OBS_PRED)] + [(u.eps_label(adata, x), _keys.pred_key(x)) for x in layers]

    fig, ax_ = u.new_axes(ax, (max(4.0, 0.55 * len(order) * len(keys) + 1.5), 3.6))
    width = 0.8 / len(keys)
    x = np.arange(len(order))
    for k, (name, key) in enumerate(keys):
        pred = adata.obs[key][mask].astype(str)
        acc = np.array([(pred[truth == c] == c).mean() for c in order])
        style = _bar_style(k)
        colored = [colors[c] for c in order]
        pos = x + (k - (len(keys) - 1) / 2) * width
        bars = ax_.bar(
            pos, acc, width=width * 0.95, color=colored, edgecolor="black", linewidth=0.4, label=name, **style
        )
        if k == 0:
            n = [int((truth == c).sum()) for c in order]
            ax_.bar_label(bars, labels=[f"n={v}" for v in n], fontsize=7, padding=1)
    ax_.set_xticks(x, order, rotation=45, ha="right")
    ax_.set_ylim(0, 1.1)
    ax_.set_ylabel("accuracy")
    ax_.set_xlabel(labels_key)
    ax_.set_title(f"per-class accuracy ({split or 'all'} cells)")
    if len(keys) > 1:
        handles = [
            Patch(facecolor="0.45", edgecolor="black", label=name, **_bar_style(k)) for k, (name, _) in enumerate(keys)
        ]
        ax_.legend(handles=handles, fontsize=8, loc="lower right")
    return u.finish(fig, ax_, show=show, return_fig=return_fig, ax_given=ax is not None)
