"""Plots of white-box attack results: ``flip_rate``, ``robustness``, ``perturbation``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .. import _keys
from .._docs import doc_params
from .._validate import check_adata, get_matrix
from ..models.classifier import counts_to_lognorm
from ..tl._space import layer_space, other_counts, target_sum
from . import _utils as u


def _eps_colors(n: int) -> list:
    """Sequential colors for increasing epsilons (light to dark red)."""
    cmap = colormaps["Reds"]
    return [cmap(v) for v in np.linspace(0.4, 0.9, n)] if n > 1 else [cmap(0.7)]


def _target(adata: AnnData, rec: dict, fn: str) -> pd.Series:
    """The class each cell was pushed away from: the clean prediction, or the labels used by the attack."""
    key = str(rec.get("params", {}).get("labels_key", "predicted"))
    if key in ("predicted", ""):
        return u.obs_key(adata, _keys.OBS_PRED, fn, "sad.tl.train_classifier").astype(str)
    return u.obs_key(adata, key, fn, "the attack's labels_key").astype(str)


@doc_params(doc_ax=u.doc_ax, doc_returns_ax=u.doc_returns_ax)
def flip_rate(
    adata: AnnData,
    attack: str | None = None,
    *,
    split: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Per-class flip rate of an attack, one bar per epsilon.

    The flip rate of a class is the fraction of the cells attacked away from that class (their
    clean prediction, or the attack's ``labels_key``) whose prediction changed. With
    ``split=None`` the bars equal ``.uns['sad']['attacks'][attack]['metrics']['per_class']``.
    An attack of a sample of cells (``cells=``) counts those cells only.

    Parameters
    ----------
    adata
        AnnData with an attack from :func:`~scadversarial.tl.attack`.
    attack
        Key of the attack in ``.uns['sad']['attacks']`` (default: the first white-box attack, e.g. ``'sad_pgd'``).
    split
        Only cells of this split of ``.obs['sad_split']`` (default: all attacked cells).
    {doc_ax}

    Returns
    -------
    {doc_returns_ax}

    """
    check_adata(adata)
    fn = "flip_rate"
    name, rec = next(iter(u.whitebox_records(adata, fn, attack).items()))
    le = u.layers_eps(rec)
    target = _target(adata, rec, fn)
    mask = u.attacked_mask(adata, [x for x, _ in le], u.cell_mask(adata, split, fn), fn)
    target = target[mask]
    classes = [c for c in map(str, np.atleast_1d(rec["metrics"]["per_class"]["classes"])) if (target == c).any()]
    fig, ax_ = u.new_axes(ax, (max(4.5, 0.45 * len(classes) * len(le) + 1.8), 3.6))
    width = 0.8 / len(le)
    x = np.arange(len(classes))
    for k, ((layer, eps), color) in enumerate(zip(le, _eps_colors(len(le)), strict=True)):
        pred = u.obs_key(adata, _keys.pred_key(layer), fn, "sad.tl.attack")[mask].astype(str)
        flipped = pred != target
        rates = np.array([flipped[target == c].mean() for c in classes])
        label = f"ε={eps:g} (all: {flipped.mean():.2f})"
        ax_.bar(x + (k - (len(le) - 1) / 2) * width, rates, width=width * 0.95, color=color, label=label)
    ax_.set_xticks(x, classes, rotation=45, ha="right")
    ax_.set_ylim(0, 1.05)
    ax_.set_ylabel("flip rate")
    ax_.set_xlabel("attacked class")
    ax_.set_title(f"{u.method_name(rec, name)}: flip rate per class ({split or 'all'} cells)")
    ax_.legend(title="epsilon", fontsize=8, title_fontsize=8)
    return u.finish(fig, ax_, show=show, return_fig=return_fig, ax_given=ax is not None)


@doc_params(doc_labels_key=u.doc_labels_key, doc_split=u.doc_split, doc_ax=u.doc_ax, doc_returns_ax=u.doc_returns_ax)
def robustness(
    adata: AnnData,
    attacks: str | Sequence[str] | None = None,
    *,
    labels_key: str | None = None,
    split: str | None = "test",
    per_class: bool = False,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Accuracy under attack against epsilon (epsilon 0 is the clean accuracy).

    Each point compares the predictions on an attack layer (at epsilon 0 the clean predictions) with
    the true labels of the ``split`` cells; one line per attack, or one per class with ``per_class``.
    The line of an attack of a sample of cells (``cells=``) covers the attacked cells of the split,
    its epsilon 0 their clean accuracy.

    Parameters
    ----------
    adata
        AnnData with one or more attacks from :func:`~scadversarial.tl.attack`.
    attacks
        Keys in ``.uns['sad']['attacks']`` (default: every white-box attack); one line each.
    {doc_labels_key}
    {doc_split}
    per_class
        One line per class (in the class colors) for the first attack instead of one line per attack.
    {doc_ax}

    Returns
    -------
    {doc_returns_ax}

    """
    check_adata(adata)
    fn = "robustness"
    labels_key = u.labels_key(adata, labels_key, fn)
    recs = u.whitebox_records(adata, fn, attacks)
    clean = u.obs_key(adata, _keys.OBS_PRED, fn, "sad.tl.train_classifier")
    split_mask = u.cell_mask(adata, split, fn)
    labels = adata.obs[labels_key].astype(str).to_numpy()

    def acc(key, cells):
        return float((adata.obs[key].astype(str).to_numpy()[cells] == labels[cells]).mean())

    def cells_of(rec):  # the split's cells the attack attacked (all of them but after cells=)
        return u.attacked_mask(adata, [x for x, _ in u.layers_eps(rec)], split_mask, fn)

    fig, ax_ = u.new_axes(ax, (4.6, 3.6))
    if per_class:
        name, rec = next(iter(recs.items()))
        le = u.layers_eps(rec)
        mask = cells_of(rec)
        truth = labels[mask]
        classes = list(pd.unique(truth))
        col = adata.obs[labels_key]
        if isinstance(col.dtype, pd.CategoricalDtype):
            classes = [str(c) for c in col.cat.categories if str(c) in set(truth)]
        colors = u.category_colors(adata, labels_key, classes)
        for c in classes:
            sel = mask & (labels == c)
            ys = [acc(_keys.OBS_PRED, sel)] + [acc(_keys.pred_key(x), sel) for x, _ in le]
            ax_.plot([0] + [e for _, e in le], ys, marker="o", color=colors[c], label=f"{c} (n={int(sel.sum())})")
        ax_.set_title(f"{u.method_name(rec, name)}: accuracy per class ({split or 'all'} cells)")
        u.legend_outside(ax_)
    else:
        palette = u.default_palette(len(recs))
        for (name, rec), color in zip(recs.items(), palette, strict=True):
            le = u.layers_eps(rec)
            mask = cells_of(rec)
            ys = [acc(clean.name, mask)] + [acc(_keys.pred_key(x), mask) for x, _ in le]
            method = u.method_name(rec, name)
            ax_.plot(
                [0] + [e for _, e in le],
                ys,
                marker="o",
                color=color,
                label=method if method == name.removeprefix("sad_") else f"{method} ({name})",
            )
        ax_.set_title(f"accuracy under attack ({split or 'all'} cells)")
        ax_.legend(fontsize=8)
    ax_.set_xlabel("epsilon")
    ax_.set_ylabel("accuracy")
    ax_.set_ylim(-0.02, 1.02)
    return u.finish(fig, ax_, show=show, return_fig=return_fig, ax_given=ax is not None)


@doc_params(doc_show=u.doc_show)
def perturbation(  # noqa: PLR0913  scanpy's plot signature: ax, show, return_fig beside the plot's options
    adata: AnnData,
    layer: str | None = None,
    *,
    groupby: str | None = None,
    group: str | None = None,
    n_genes: int = 20,
    max_cells: int = 60,
    space: str = "scaled",
    cmap: str = "viridis",
    ax: Sequence[Axes] | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> list[Axes] | Figure | None:
    """Heatmaps of the genes an attack changed most in a group of cells: before, after and the change.

    The genes are the ``n_genes`` with the largest mean absolute change over the group's cells;
    cells are columns (those whose prediction flipped first), genes rows. Of an attack of a sample
    of cells (``cells=``) only the attacked cells of the group are shown.

    Parameters
    ----------
    adata
        AnnData with an attack layer (:func:`~scadversarial.tl.attack`).
    layer
        The attack layer, e.g. ``'sad_pgd_eps0.1'`` (default: the largest epsilon of the first white-box attack).
    groupby
        ``.obs`` column defining the groups (default: the attacked clusters of a black-box attack,
        else the classifier's labels).
    group
        The group to show (default: the attacked cluster of a black-box attack, else the group with
        the most flipped cells).
    n_genes
        Number of genes.
    max_cells
        At most this many cells (flipped ones first).
    space
        ``'scaled'``: the matrix the attack changed, in its own units (the scaled ``X``, or the
        log-normalized values or counts of an attack made in that space, see
        :func:`~scadversarial.tl.layer_space`); ``'log'``: log-normalized values (a scaled attack
        is mapped back with ``.var['sad_mean']``/``.var['sad_std']``, a count attack normalized
        with each cell's library as :func:`~scadversarial.pp.preprocess` did).
    cmap
        Colormap of the before/after panels (the change uses a diverging map).
    ax
        Three Axes (before, after, change); default a new figure.
    {doc_show}

    Returns
    -------
    The three Axes (before, after, change), the Figure with ``return_fig=True``, or ``None`` when shown.

    """
    check_adata(adata)
    fn = "perturbation"
    if space not in ("scaled", "log"):
        msg = f"space must be 'scaled' or 'log', got {space!r}."
        raise ValueError(msg)
    if layer is None:
        layer = u.default_layer(adata, fn)
    u.check_layer(adata, layer, fn, predicted=False)
    _, rec = u.record_of_layer(adata, layer)
    base = str(rec.get("params", {}).get("layer", "X")) if rec is not None else "X"
    base_layer = None if base in ("X", "", "None") else base
    rparams = rec.get("params", {}) if rec is not None else {}
    if groupby is None and "groupby" in rparams:  # a black-box attack on one cluster: show that cluster
        groupby = str(rparams["groupby"])
        group = str(rparams["target"]) if group is None and "target" in rparams else group
    groupby = u.labels_key(adata, None, fn) if groupby is None else groupby
    groups = u.obs_key(adata, groupby, fn, "sad.pp.pseudo_labels (or your own annotation)").astype(str).to_numpy()
    pred_key = _keys.pred_key(layer)
    known = pred_key in adata.obs and _keys.OBS_PRED in adata.obs  # predictions on the layer exist
    flipped = u.flipped(adata, layer) if known else np.zeros(adata.n_obs, dtype=bool)
    attacked = u.attacked(adata, layer)  # an empty row of a sampled attack is no attack
    if group is None:
        counts = pd.Series(flipped).groupby(groups).sum()
        most = pd.Series(groups[attacked]).value_counts().idxmax()
        group = str(counts.idxmax()) if counts.max() > 0 else str(most)
    idx = np.flatnonzero((groups == str(group)) & attacked)
    if not len(idx):
        sampled = "" if attacked.all() else f" attacked in {layer!r}"
        msg = f"sad.pl.perturbation: no cells{sampled} with adata.obs[{groupby!r}] == {group!r}."
        raise ValueError(msg)
    before = get_matrix(adata[idx], base_layer)
    after = get_matrix(adata[idx], layer)
    made_in = layer_space(adata, layer)
    if space == "log" and made_in == "scaled":
        if base_layer is not None or _keys.VAR_MEAN not in adata.var:
            msg = "space='log' needs an attack on the scaled X and .var['sad_mean'/'sad_std'] from `sad.pp.preprocess`."
            raise KeyError(msg)
        mean = adata.var[_keys.VAR_MEAN].to_numpy(np.float32)
        std = adata.var[_keys.VAR_STD].to_numpy(np.float32)
        before, after = before * std + mean, after * std + mean
    elif space == "log" and made_in == "counts":  # normalize with each cell's own library, as preprocess did
        other = torch.as_tensor(other_counts(adata, adata.var_names)[idx], dtype=torch.float32)
        ts = target_sum(adata)
        before, after = (counts_to_lognorm(torch.as_tensor(m), other, ts).numpy() for m in (before, after))
    delta = after - before
    n_genes = min(n_genes, adata.n_vars)
    # genes pushed most consistently in one direction (ties, e.g. every gene at +-eps under L-inf PGD,
    # broken by the mean absolute change); shown from most increased to most decreased
    mean_d, abs_d = delta.mean(0), np.abs(delta).mean(0)
    genes = np.lexsort((-abs_d, -np.abs(mean_d)))[:n_genes]
    genes = genes[np.argsort(-mean_d[genes], kind="stable")]
    order = np.lexsort((-np.abs(delta).sum(1), ~flipped[idx]))[:max_cells]
    B, A, D = before[order][:, genes].T, after[order][:, genes].T, delta[order][:, genes].T
    names = list(adata.var_names[genes])
    n_flip = int(flipped[idx][order].sum())

    vmin, vmax = np.percentile(np.concatenate([B.ravel(), A.ravel()]), [1, 99])
    dmax = float(np.abs(D).max()) or 1.0
    figsize = (11, max(3.0, 0.2 * n_genes + 1.4))
    fig, axs = u.new_panels(ax, 3, fn, figsize, names=" (before, after, change)", sharey=True)
    im = axs[0].imshow(B, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    axs[1].imshow(A, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    imd = axs[2].imshow(D, aspect="auto", cmap="RdBu_r", vmin=-dmax, vmax=dmax, interpolation="nearest")
    label = "log-normalized" if space == "log" else ("scaled expression" if base_layer is None else base_layer)
    if space != "log" and made_in != "scaled":
        label = {"log": "log-normalized", "counts": "counts"}[made_in] + f" ({base_layer or 'X'})"
    for a, title in zip(axs, ["before", f"after ({u.eps_label(adata, layer)})", "after − before"], strict=True):
        a.set_title(title)
        a.set_xlabel(f"cells ({len(order)}; {n_flip} flipped)" if known else f"cells ({len(order)})")
        a.set_xticks([])
        a.grid(visible=False)
        if n_flip and n_flip < len(order):
            a.axvline(n_flip - 0.5, color="white" if a is not axs[2] else "black", lw=1, ls="--")
    axs[0].set_yticks(range(n_genes), names, fontsize=7 if n_genes > 25 else 8)
    for a in axs[1:]:  # the genes are named on the first panel (shared y axes share their ticks)
        if not axs[0].get_shared_y_axes().joined(axs[0], a):
            a.set_yticks([])
    axs[0].set_ylabel("gene")
    fig.colorbar(im, ax=axs[:2], label=label, shrink=0.8)
    fig.colorbar(imd, ax=axs[2], label="change", shrink=0.8)
    title = f"{groupby} = {group}: the {n_genes} genes changed most consistently"
    if ax is None:
        fig.suptitle(title)
    else:
        axs[0].set_title(f"before ({title})", fontsize=9)
    return u.finish(fig, axs, show=show, return_fig=return_fig, ax_given=ax is not None)
