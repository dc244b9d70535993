"""Shared helpers of the plotting functions: records, cell selection, colors, figures, docstrings."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from .. import _keys, get
from ..tl._attack_record import attacked_cells

#: Colors of the clean / adversarial states, taken from scanpy's default categorical palette.
STATE_COLORS = {"clean": "#1f77b4", "adversarial": "#d62728"}
#: Font size of the values written into heatmap cells: fits a cell of the default figure sizes.
CELL_FONTSIZE = 7

# ----------------------------------------------------------------------------------------------
# docstring fragments of the plots (filled in by :func:`scadversarial._docs.doc_params`)
# ----------------------------------------------------------------------------------------------
doc_show = """\
show
    Show the figure and return ``None`` (default: scanpy's ``autoshow`` when no ``ax`` is given).
return_fig
    Return the :class:`~matplotlib.figure.Figure`."""

doc_ax = "ax\n    Axes to draw into.\n" + doc_show

doc_ax_panels = "ax\n    One Axes per panel.\n" + doc_show

doc_returns_ax = "The Axes, the Figure with ``return_fig=True``, or ``None`` when shown."

doc_labels_key = """\
labels_key
    ``.obs`` column of the true labels (default: the classifier's training labels)."""

doc_split = """\
split
    Cells of this split of ``.obs['sad_split']`` (default ``'test'``); ``None`` for all cells."""


# ----------------------------------------------------------------------------------------------
# records
# ----------------------------------------------------------------------------------------------
def classifier_record(adata: AnnData, fn: str) -> dict:
    """``.uns['sad']['classifier']`` or a :class:`KeyError` naming the plot and the producer."""
    try:
        return get.record(adata, _keys.STEP_CLASSIFIER)
    except KeyError as e:
        msg = f"sad.pl.{fn}: {e.args[0]}"
        raise KeyError(msg) from None


def optional_record(adata: AnnData, step: str) -> dict:
    """The run record ``.uns['sad'][step]``, or an empty dict when the step has not run."""
    try:
        return get.record(adata, step)
    except KeyError:
        return {}


def labels_key(adata: AnnData, labels_key: str | None, fn: str) -> str:
    """The ``.obs`` column of true labels: given, or the one the classifier was trained on."""
    if labels_key is None:
        labels_key = str(classifier_record(adata, fn)["params"]["labels_key"])
    obs_key(adata, labels_key, fn, "sad.pp.pseudo_labels (or your own annotation)")
    return labels_key


def obs_key(adata: AnnData, key: str, fn: str, producer: str) -> pd.Series:
    """``adata.obs[key]`` or a :class:`KeyError` naming the plot and the function that writes the key."""
    if key not in adata.obs:
        msg = f"sad.pl.{fn} needs adata.obs[{key!r}], which is written by `{producer}`. Run it first."
        raise KeyError(msg)
    return adata.obs[key]


def all_attacks(adata: AnnData) -> dict[str, dict]:
    """Every record in ``.uns['sad']['attacks']`` (empty when there is none)."""
    return adata.uns.get(_keys.UNS, {}).get(_keys.STEP_ATTACKS, {})


def is_whitebox(rec: dict) -> bool:
    """Whether an attack record has layers per epsilon (a white-box attack of ``sad.tl.attack``)."""
    return "layers" in rec and "eps" in rec


def record_layers(rec: dict) -> tuple[list[str], np.ndarray]:
    """The layers of an attack record and their epsilons (as floats), in record order."""
    return [str(x) for x in np.atleast_1d(rec["layers"])], np.atleast_1d(rec["eps"]).astype(float)


def layers_eps(rec: dict) -> list[tuple[str, float]]:
    """``(layer, epsilon)`` pairs of an attack record, by increasing epsilon."""
    return sorted(zip(*record_layers(rec), strict=True), key=lambda t: t[1])


def method_name(rec: dict, key: str) -> str:
    """The attack method of a record (its key when the record does not name one)."""
    return str(rec.get("params", {}).get("method", key))


def attack_records(adata: AnnData, fn: str) -> dict[str, dict]:
    """All records in ``.uns['sad']['attacks']``, or a :class:`KeyError` naming ``sad.tl.attack``."""
    recs = all_attacks(adata)
    if not recs:
        msg = f"sad.pl.{fn} needs an attack in adata.uns['sad']['attacks']; run `sad.tl.attack(adata)` first."
        raise KeyError(msg)
    return recs


def whitebox_records(adata: AnnData, fn: str, attacks: str | Sequence[str] | None = None) -> dict[str, dict]:
    """Records of the (layer-writing, epsilon-indexed) attacks: the named ones or all of them."""
    recs = attack_records(adata, fn)
    if attacks is None:
        out = {k: r for k, r in recs.items() if is_whitebox(r)}
        if not out:
            msg = f"sad.pl.{fn} needs a white-box attack (with layers per epsilon); run `sad.tl.attack(adata)` first."
            raise KeyError(msg)
        return out
    names = [attacks] if isinstance(attacks, str) else list(attacks)
    out = {}
    for name in names:
        if name not in recs:
            msg = f"sad.pl.{fn}: no attack {name!r} in adata.uns['sad']['attacks'] (have {sorted(recs)}); it is written by `sad.tl.attack`."
            raise KeyError(msg)
        if not is_whitebox(recs[name]):
            msg = f"sad.pl.{fn}: attack {name!r} has no layers per epsilon (it is not a white-box attack from `sad.tl.attack`)."
            raise ValueError(msg)
        out[name] = recs[name]
    return out


def default_layer(adata: AnnData, fn: str) -> str:
    """The strongest layer (largest epsilon) of the first white-box attack."""
    layers, eps = record_layers(next(iter(whitebox_records(adata, fn).values())))
    return layers[int(np.argmax(eps))]


def record_of_layer(adata: AnnData, layer: str) -> tuple[str, dict] | tuple[None, None]:
    """``(attack key, record)`` of the attack that wrote ``layer``."""
    for key, rec in all_attacks(adata).items():
        if layer in [str(x) for x in np.atleast_1d(rec.get("layers", []))]:
            return key, rec
    return None, None


def check_layer(adata: AnnData, layer: str, fn: str, *, predicted: bool = True) -> str:
    """Raise a :class:`KeyError` when ``layer`` is not a layer (with predictions, when ``predicted``)."""
    if layer not in adata.layers:
        msg = f"sad.pl.{fn}: layer {layer!r} not in adata.layers (have {list(adata.layers)}); attack layers are written by `sad.tl.attack`."
        raise KeyError(msg)
    if predicted:
        obs_key(adata, _keys.pred_key(layer), fn, "sad.tl.attack (or sad.tl.predict(adata, layer=...))")
    return layer


def eps_label(adata: AnnData, layer: str) -> str:
    """A short legend label of an attack layer, e.g. ``'pgd ε=0.1'``."""
    key, rec = record_of_layer(adata, layer)
    if rec is None or "eps" not in rec:
        return layer
    layers, eps = record_layers(rec)
    return f"{method_name(rec, key)} ε={eps[layers.index(layer)]:g}"


def attacked(adata: AnnData, layer: str) -> np.ndarray:
    """Whether each cell's row of the attack layer ``layer`` holds an attack (every cell but after ``cells=``).

    An attack of a sample of cells (:func:`~scadversarial.tl.attack` with ``cells=``) stores rows for
    those cells only; the other rows are empty and their predictions missing: no attack to show.
    """
    att = attacked_cells(adata, layer)
    return np.ones(adata.n_obs, dtype=bool) if att is None else att


def attacked_mask(adata: AnnData, layers: Sequence[str], mask: np.ndarray, fn: str) -> np.ndarray:
    """``mask`` restricted to the cells attacked in every one of ``layers``; a :class:`ValueError` when none is."""
    out = np.logical_and.reduce([mask, *(attacked(adata, x) for x in layers)])
    if not out.any():
        msg = (
            f"sad.pl.{fn}: no selected cell was attacked in {list(layers)} (an attack of a sample of cells, "
            "`sad.tl.attack(..., cells=...)`, holds those cells only); pass another split, or split=None."
        )
        raise ValueError(msg)
    return out


def flipped(adata: AnnData, layer: str) -> np.ndarray:
    """Whether each cell's prediction on ``layer`` differs from its clean prediction (``False`` where not attacked)."""
    pred = adata.obs[_keys.pred_key(layer)].astype(str).to_numpy()
    return (pred != adata.obs[_keys.OBS_PRED].astype(str).to_numpy()) & attacked(adata, layer)


def cell_mask(adata: AnnData, split: str | None, fn: str) -> np.ndarray:
    """Boolean mask of the cells of ``split`` (all cells for ``None``)."""
    if split is None:
        return np.ones(adata.n_obs, dtype=bool)
    s = obs_key(adata, _keys.OBS_SPLIT, fn, "sad.pp.split").astype(str).to_numpy()
    mask = s == split
    if not mask.any():
        msg = f"sad.pl.{fn}: no cells in split {split!r} of adata.obs['sad_split']; pass split=None for all cells."
        raise ValueError(msg)
    return mask


def category_colors(adata: AnnData, key: str, categories: Sequence[str] | None = None) -> dict[str, str]:
    """``{category: color}`` of ``.obs[key]``, as scanpy would color it.

    ``adata.uns[f'{key}_colors']`` when it matches the categories, else scanpy's default
    palette for that many categories; ``adata`` is not modified.
    """
    col = adata.obs[key] if key in adata.obs else pd.Series(categories, dtype="category")
    if not isinstance(col.dtype, pd.CategoricalDtype):
        col = col.astype(str).astype("category")
    cats = [str(c) for c in col.cat.categories]
    colors = adata.uns.get(f"{key}_colors")
    if colors is None or len(colors) < len(cats):
        colors = default_palette(len(cats))
    out = dict(zip(cats, [to_hex(c) for c in colors], strict=False))
    if categories is not None:  # classes the column does not hold get the next default colors
        extra = [c for c in map(str, categories) if c not in out]
        pal = default_palette(len(out) + len(extra))
        out.update(dict(zip(extra, pal[len(out) :], strict=False)))
    return out


def default_palette(n: int) -> list[str]:
    """The default categorical palette of scanpy for ``n`` categories."""
    from matplotlib import rcParams
    from scanpy.plotting import palettes

    cycle = rcParams["axes.prop_cycle"].by_key().get("color", [])
    if n <= len(cycle):
        return [to_hex(c) for c in cycle[:n]]
    if n <= 20:
        return list(palettes.default_20[:n])
    if n <= 28:
        return list(palettes.default_28[:n])
    return [palettes.default_102[i % 102] for i in range(n)]


# ----------------------------------------------------------------------------------------------
# figures
# ----------------------------------------------------------------------------------------------
def new_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    """``(figure, axes)``: the given axes or a new figure."""
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax.figure, ax


def new_panels(
    ax: Axes | Sequence[Axes] | None,
    n: int,
    fn: str,
    figsize: tuple[float, float],
    *,
    names: str = "",
    vertical: bool = False,
    **subplots,
) -> tuple[Figure, list[Axes]]:
    """``(figure, axes)`` of a plot with ``n`` panels: the given Axes (checked), or a new figure.

    A new figure has the panels side by side (one above the other with ``vertical=True``);
    ``subplots`` go to :func:`matplotlib.pyplot.subplots` (e.g. ``sharey``, ``height_ratios``).
    ``names`` describes the panels in the error message, e.g. ``' (before, after, change)'``.
    """
    if ax is None:
        shape = (n, 1) if vertical else (1, n)
        fig, grid = plt.subplots(*shape, figsize=figsize, layout="constrained", squeeze=False, **subplots)
        return fig, list(grid.ravel())
    axs = [ax] if isinstance(ax, Axes) else list(ax)
    if len(axs) != n:
        msg = f"sad.pl.{fn} draws {n} panels{names}; pass {n} Axes (got {len(axs)})."
        raise ValueError(msg)
    return axs[0].figure, axs


def annotate_cells(ax: Axes, labels: np.ndarray, dark: np.ndarray) -> None:
    """Write ``labels[i, j]`` into the heatmap cell ``(i, j)`` (none where it is empty); white on ``dark`` cells."""
    for (i, j), text in np.ndenumerate(labels):
        if text:
            color = "white" if dark[i, j] else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=CELL_FONTSIZE, color=color)


def legend_outside(ax: Axes, fontsize: float = 7) -> None:
    """A frameless legend to the right of the axes (for long labels)."""
    ax.legend(fontsize=fontsize, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)


def finish(fig: Figure, axes, *, show: bool | None, return_fig: bool, ax_given: bool):
    """Return the figure / axes or show the figure, scanpy style."""
    if return_fig:
        return fig
    if show is None:
        import scanpy as sc

        show = bool(sc.settings.autoshow) and not ax_given
    if show:
        plt.show()
        return None
    return axes
