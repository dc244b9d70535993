"""Shared helpers of the plotting functions: records, cell selection, colors, figure handling."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from .. import _keys
from .._validate import get_record

#: Colors of the clean / adversarial states, taken from scanpy's default categorical palette.
STATE_COLORS = {"clean": "#1f77b4", "adversarial": "#d62728"}


def classifier_record(adata: AnnData, fn: str) -> dict:
    """``.uns['sad']['classifier']`` or a :class:`KeyError` naming the plot and the producer."""
    try:
        return get_record(adata, _keys.STEP_CLASSIFIER, producer="sad.tl.train_classifier")
    except KeyError as e:
        msg = f"sad.pl.{fn}: {e.args[0]}"
        raise KeyError(msg) from None


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


def uns_step(adata: AnnData, step: str, fn: str, producer: str) -> dict:
    """``adata.uns['sad'][step]`` or a :class:`KeyError` naming the plot and the producer."""
    rec = adata.uns.get(_keys.UNS, {}).get(step)
    if rec is None:
        msg = f"sad.pl.{fn} needs adata.uns['sad'][{step!r}], which is written by `{producer}`. Run it first."
        raise KeyError(msg)
    return rec


def attack_records(adata: AnnData, fn: str) -> dict[str, dict]:
    """All records in ``.uns['sad']['attacks']``."""
    recs = adata.uns.get(_keys.UNS, {}).get(_keys.STEP_ATTACKS, {})
    if not recs:
        msg = f"sad.pl.{fn} needs an attack in adata.uns['sad']['attacks']; run `sad.tl.attack(adata)` first."
        raise KeyError(msg)
    return recs


def whitebox_records(adata: AnnData, fn: str, attacks: str | Sequence[str] | None = None) -> dict[str, dict]:
    """Records of the (layer-writing, epsilon-indexed) attacks: the named ones or all of them."""
    recs = attack_records(adata, fn)
    if attacks is None:
        out = {k: r for k, r in recs.items() if "layers" in r and "eps" in r}
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
        if "layers" not in recs[name] or "eps" not in recs[name]:
            msg = f"sad.pl.{fn}: attack {name!r} has no layers per epsilon (it is not a white-box attack from `sad.tl.attack`)."
            raise ValueError(msg)
        out[name] = recs[name]
    return out


def attack_layers(adata: AnnData, fn: str) -> list[str]:
    """Every attack layer (of every attack with layers), in record order."""
    out = []
    for rec in attack_records(adata, fn).values():
        out += [str(x) for x in np.atleast_1d(rec.get("layers", []))]
    return [x for x in out if x in adata.layers]


def default_layer(adata: AnnData, fn: str) -> str:
    """The strongest layer (largest epsilon) of the first white-box attack."""
    rec = next(iter(whitebox_records(adata, fn).values()))
    layers = [str(x) for x in np.atleast_1d(rec["layers"])]
    eps = np.atleast_1d(rec["eps"]).astype(float)
    return layers[int(np.argmax(eps))]


def record_of_layer(adata: AnnData, layer: str) -> tuple[str, dict] | tuple[None, None]:
    """``(attack key, record)`` of the attack that wrote ``layer``."""
    for key, rec in adata.uns.get(_keys.UNS, {}).get(_keys.STEP_ATTACKS, {}).items():
        if layer in [str(x) for x in np.atleast_1d(rec.get("layers", []))]:
            return key, rec
    return None, None


def check_layer(adata: AnnData, layer: str, fn: str) -> str:
    """Raise a :class:`KeyError` when ``layer`` is not an attack layer with predictions."""
    if layer not in adata.layers:
        msg = f"sad.pl.{fn}: layer {layer!r} not in adata.layers (have {list(adata.layers)}); attack layers are written by `sad.tl.attack`."
        raise KeyError(msg)
    obs_key(adata, _keys.pred_key(layer), fn, "sad.tl.attack (or sad.tl.predict(adata, layer=...))")
    return layer


def eps_label(adata: AnnData, layer: str) -> str:
    """A short legend label of an attack layer, e.g. ``'pgd ε=0.1'``."""
    key, rec = record_of_layer(adata, layer)
    if rec is None or "eps" not in rec:
        return layer
    layers = [str(x) for x in np.atleast_1d(rec["layers"])]
    eps = float(np.atleast_1d(rec["eps"])[layers.index(layer)])
    method = str(rec.get("params", {}).get("method", key))
    return f"{method} ε={eps:g}"


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


def default_split(adata: AnnData) -> str | None:
    """``'test'`` when the data have a split with test cells, else ``None`` (all cells)."""
    if _keys.OBS_SPLIT in adata.obs and (adata.obs[_keys.OBS_SPLIT].astype(str) == "test").any():
        return "test"
    return None


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


def new_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    """``(figure, axes)``: the given axes or a new figure."""
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax.figure, ax


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
