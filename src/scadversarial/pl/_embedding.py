"""UMAP of the detector's triplet embedding or the classifier's embedding: ``embedding``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .. import _keys, get
from .._docs import doc_params
from .._validate import check_adata
from . import _utils as u

BASES = ("triplet", "classifier")


_DOC_INPUTS = """\
adata
    AnnData with ``.obsm['X_sad_triplet']`` and ``.obsm['X_sad_triplet_<layer>']``
    (:func:`~scadversarial.tl.detect` on ``X`` and the layer) for ``basis='triplet'``, or a
    classifier (:func:`~scadversarial.tl.train_classifier`) for ``basis='classifier'``.
layer
    Attack layer whose cells to add (default: the largest epsilon of the first white-box
    attack that has the needed embedding; ``None`` without attacks: clean cells only). Of an
    attack of a sample of cells (``cells=``) only the attacked cells are added.
basis
    ``'triplet'``: the detector's triplet embedding; ``'classifier'``: the classifier's 64-d
    embedding (``.obsm['X_sad_embedding']``; attacked cells are embedded by the classifier)."""

_DOC_GRAPH = """\
n_neighbors
    Neighbours of the kNN graph.
random_state
    Seed of the UMAP layout."""


def _adv_embedding(adata: AnnData, layer: str, basis: str, fn: str, idx: np.ndarray) -> np.ndarray:
    """The embedding of the cells ``idx`` of the attack layer ``layer`` (only their rows are read)."""
    if basis == "triplet":
        key = _keys.triplet_key(layer)
        if key not in adata.obsm:
            msg = f"sad.pl.{fn} needs adata.obsm[{key!r}], which is written by `sad.tl.detect(adata, layer={layer!r})`."
            raise KeyError(msg)
        return np.asarray(adata.obsm[key])[idx]
    from ..tl._input import classifier_input

    model = get.model(adata)
    return model.predict_arrays(classifier_input(adata[idx], model, layer))[1]  # each layer read in its own space


@doc_params(doc_inputs=_DOC_INPUTS, doc_labels_key=u.doc_labels_key, doc_split=u.doc_split, doc_graph=_DOC_GRAPH)
def embedding_adata(
    adata: AnnData,
    layer: str | None = None,
    *,
    basis: str = "triplet",
    labels_key: str | None = None,
    split: str | None = "test",
    n_neighbors: int = 15,
    random_state: int = 0,
) -> AnnData:
    """The AnnData that :func:`embedding` plots: clean and attacked cells stacked, with a UMAP.

    Use it to draw several colorings of one UMAP with :func:`scanpy.pl.umap`.

    Parameters
    ----------
    {doc_inputs}
    {doc_labels_key}
    {doc_split}
    {doc_graph}

    Returns
    -------
    A new AnnData (``adata`` is unchanged) with one row per clean cell and, with a layer, one per
    attacked cell (of a sampled attack: per cell it attacked): ``.obs['state']``
    (``'clean'``/``'adversarial'``), ``.obs['label']``,
    ``.obs['prediction']``, ``.obs['score']`` and ``.obs['flagged']`` (when scored),
    ``.obs['cell']``; ``.obsm['X_rep']`` (the embedding) and ``.obsm['X_umap']``.

    """
    import scanpy as sc

    fn = "embedding"
    check_adata(adata)
    if basis not in BASES:
        msg = f"basis must be one of {BASES}, got {basis!r}."
        raise ValueError(msg)
    rep_key = _keys.OBSM_TRIPLET if basis == "triplet" else _keys.OBSM_EMBEDDING
    if rep_key not in adata.obsm:
        producer = "sad.tl.detect(adata)" if basis == "triplet" else "sad.tl.train_classifier"
        msg = f"sad.pl.{fn} needs adata.obsm[{rep_key!r}], which is written by `{producer}`."
        raise KeyError(msg)
    if layer is not None:
        u.check_layer(adata, layer, fn)
    trained = bool(u.optional_record(adata, _keys.STEP_CLASSIFIER))
    lk = u.labels_key(adata, labels_key, fn) if (labels_key or trained) else None
    mask = u.cell_mask(adata, split, fn)
    idx = np.flatnonzero(mask)
    versions = [(None, "clean", idx, np.asarray(adata.obsm[rep_key])[idx])]
    if layer is not None:
        adv = np.flatnonzero(u.attacked_mask(adata, [layer], mask, fn))  # a sampled attack's empty rows: no attack
        versions.append((layer, "adversarial", adv, _adv_embedding(adata, layer, basis, fn, adv)))
    obs = []
    for lay, state, rows, _ in versions:
        o = pd.DataFrame(index=[f"{n}|{state}" for n in adata.obs_names[rows]])
        o["cell"] = np.asarray(adata.obs_names[rows])
        o["state"] = state
        if lk:
            o["label"] = adata.obs[lk].astype(str).to_numpy()[rows]
        pk = _keys.pred_key(lay)
        if pk in adata.obs:
            o["prediction"] = adata.obs[pk].astype(str).to_numpy()[rows]
        sk, fk = _keys.score_key(lay), _keys.flag_key(lay)
        if sk in adata.obs:
            o["score"] = adata.obs[sk].to_numpy(float)[rows]
        if fk in adata.obs:
            o["flagged"] = np.where(adata.obs[fk].to_numpy(bool)[rows], "flagged", "not flagged")
        obs.append(o)
    obs = pd.concat(obs)
    obs["state"] = pd.Categorical(obs["state"], categories=[v[1] for v in versions])
    for col in ("label", "prediction", "flagged"):
        if col in obs:
            obs[col] = obs[col].astype("category")
    rep = np.concatenate([v[3] for v in versions]).astype(np.float32)
    emb = AnnData(obs=obs, obsm={"X_rep": rep})
    emb.uns["state_colors"] = [u.STATE_COLORS[s] for s in obs["state"].cat.categories]
    if "flagged" in obs:
        emb.uns["flagged_colors"] = [
            u.STATE_COLORS["adversarial"] if c == "flagged" else "#bbbbbb" for c in obs["flagged"].cat.categories
        ]
    for col in ("label", "prediction"):
        if col in obs and lk:
            cmap = u.category_colors(adata, lk, list(obs[col].cat.categories))
            emb.uns[f"{col}_colors"] = [cmap[c] for c in obs[col].cat.categories]
    sc.pp.neighbors(emb, use_rep="X_rep", n_neighbors=min(n_neighbors, emb.n_obs - 1), random_state=random_state)
    sc.tl.umap(emb, random_state=random_state)
    emb.uns["sad_embedding"] = {"basis": basis, "layer": layer or "", "split": split or "all"}
    return emb


@doc_params(
    doc_inputs=_DOC_INPUTS,
    doc_labels_key=u.doc_labels_key,
    doc_split=u.doc_split,
    doc_graph=_DOC_GRAPH,
    doc_show=u.doc_show,
)
def embedding(  # noqa: PLR0913  scanpy's plot signature: ax, show, return_fig beside the plot's options
    adata: AnnData,
    layer: str | None = None,
    *,
    basis: str = "triplet",
    color: str | Sequence[str] = "state",
    labels_key: str | None = None,
    split: str | None = "test",
    n_neighbors: int = 15,
    random_state: int = 0,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    **kwargs,
) -> Axes | list[Axes] | Figure | None:
    """UMAP of the detector's triplet embedding (or the classifier's embedding) of clean and attacked cells.

    The clean cells and their attacked versions on ``layer`` are stacked, a kNN graph is built on
    the embedding (:func:`scanpy.pp.neighbors`), laid out by :func:`scanpy.tl.umap` and drawn by
    :func:`scanpy.pl.embedding`. A detector that works separates the ``'adversarial'`` points from
    the ``'clean'`` ones.

    Parameters
    ----------
    {doc_inputs}
    color
        ``'state'`` (clean / adversarial), ``'label'`` (true labels), ``'prediction'``,
        ``'score'`` (detector score), ``'flagged'`` (detector verdict), or a list of them (one panel each).
    {doc_labels_key}
    {doc_split}
    {doc_graph}
    ax
        Axes to draw into (a single ``color`` only).
    {doc_show}
    **kwargs
        Passed to :func:`scanpy.pl.embedding` (e.g. ``size``, ``legend_loc``, ``frameon``).

    Returns
    -------
    The Axes (a list for several colors), the Figure with ``return_fig=True``, or ``None`` when shown.

    """
    import scanpy as sc

    check_adata(adata)
    whitebox = [r for r in u.all_attacks(adata).values() if u.is_whitebox(r)]
    if layer is None and whitebox:  # the largest epsilon that has the embedding
        le = sorted(u.layers_eps(whitebox[0]), key=lambda t: -t[1])
        ok = [x for x, _ in le if basis == "classifier" or _keys.triplet_key(x) in adata.obsm]
        layer = ok[0] if ok else le[0][0]
    emb = embedding_adata(
        adata,
        layer,
        basis=basis,
        labels_key=labels_key,
        split=split,
        n_neighbors=n_neighbors,
        random_state=random_state,
    )
    colors = [color] if isinstance(color, str) else list(color)
    for c in colors:
        if c not in emb.obs:
            hint = {"score": "sad.tl.detect", "flagged": "sad.tl.detect", "prediction": "sad.tl.train_classifier"}.get(
                c
            )
            msg = f"sad.pl.embedding cannot color by {c!r} (available: {list(emb.obs.columns)})" + (
                f"; it comes from `{hint}`." if hint else "."
            )
            raise KeyError(msg)
    if ax is not None and len(colors) > 1:
        msg = "sad.pl.embedding draws one panel per color; pass a single color with ax=."
        raise ValueError(msg)
    title = f"{basis} embedding" + (f", {u.eps_label(adata, layer)}" if layer else "")
    kwargs.setdefault("title", [f"{title}: {c}" for c in colors] if len(colors) > 1 else f"{title}: {colors[0]}")
    if "score" in colors:
        kwargs.setdefault("vmin", 0.0)
        kwargs.setdefault("vmax", 1.0)
        kwargs.setdefault("color_map", "RdBu_r")
    if len(colors) > 1:
        kwargs.setdefault("wspace", 0.45)
    out = sc.pl.embedding(
        emb,
        basis="umap",
        color=colors if len(colors) > 1 else colors[0],
        ax=ax,
        show=False,
        return_fig=return_fig,
        **kwargs,
    )
    if return_fig:
        return out
    fig = (out[0] if isinstance(out, list) else out).figure
    return u.finish(fig, out, show=show, return_fig=False, ax_given=ax is not None)
