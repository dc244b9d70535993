"""Plots of the detector's scores: ``score_distribution``, ``roc``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .. import _keys
from .._docs import doc_params
from .._validate import check_adata
from . import _utils as u
from ._attack import _eps_colors

_EPS = 1e-6


def threshold(adata: AnnData, layer: str | None = None, fn: str = "score_distribution") -> float:
    """The decision threshold the flags of ``layer`` were computed with.

    The per-matrix threshold recorded by :func:`~scadversarial.tl.detect`, else the calibrated
    threshold of :func:`~scadversarial.tl.train_detector`.
    """
    det = u.optional_record(adata, _keys.STEP_DETECT)
    per = det.get("metrics", {}).get(layer or "X", {})
    if isinstance(per, dict) and "threshold" in per:
        return float(per["threshold"])
    if "threshold" in det.get("params", {}):
        return float(det["params"]["threshold"])
    rec = u.optional_record(adata, _keys.STEP_DETECTOR)
    if "threshold" not in rec.get("metrics", {}):
        msg = f"sad.pl.{fn} needs the detector's threshold in adata.uns['sad']['detector']; run `sad.tl.train_detector` and `sad.tl.detect` first."
        raise KeyError(msg)
    return float(rec["metrics"]["threshold"])


def scored_layers(adata: AnnData, layers: str | Sequence[str] | None, fn: str) -> list[str]:
    """Attack layers with detector scores: the given ones (checked) or every scored attack layer."""
    u.obs_key(adata, _keys.OBS_SCORE, fn, "sad.tl.detect(adata)")
    if layers is None:
        cand = [str(x) for r in u.all_attacks(adata).values() for x in np.atleast_1d(r.get("layers", []))]
        layers = [x for x in cand if _keys.score_key(x) in adata.obs]
        if not layers:
            msg = f"sad.pl.{fn} found no scored attack layer (.obs['sad_score_<layer>']); run `sad.tl.detect(adata, layer=[...])` on the attack layers."
            raise KeyError(msg)
        return layers
    layers = [layers] if isinstance(layers, str) else list(layers)
    for x in layers:
        u.obs_key(adata, _keys.score_key(x), fn, f"sad.tl.detect(adata, layer={x!r})")
    return layers


def _adv_scores(adata: AnnData, layer: str, mask: np.ndarray, *, only_flipped: bool) -> np.ndarray:
    """Detector scores of the attacked cells of ``layer`` in ``mask`` (those whose prediction flipped).

    The empty rows of an attack of a sample of cells are no attacks: they are left out.
    """
    mask = mask & (u.flipped(adata, layer) if only_flipped else u.attacked(adata, layer))
    return adata.obs[_keys.score_key(layer)].to_numpy(float)[mask]


def _fractions(scores: np.ndarray) -> np.ndarray:
    """Histogram weights that make the bars of ``scores`` fractions of its cells."""
    return np.full(len(scores), 1 / max(len(scores), 1))


@doc_params(doc_ax=u.doc_ax, doc_returns_ax=u.doc_returns_ax)
def score_distribution(
    adata: AnnData,
    layers: str | Sequence[str] | None = None,
    *,
    split: str | None = "test",
    only_flipped: bool = False,
    bins: int = 40,
    xscale: str = "auto",
    log: bool = False,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Histograms of the detector score of clean cells and of their attacked versions, with the threshold.

    Each histogram shows fractions of its own cells, so layers with few flipped cells compare with the
    clean cells; the legend gives each one's share flagged at the threshold (the dashed line). When
    the layers are attacks of a sample of cells (``cells=``), each covers its attacked cells and the
    clean histogram the cells attacked in any of them.

    Parameters
    ----------
    adata
        AnnData scored by :func:`~scadversarial.tl.detect` on ``X`` and on attack layers.
    layers
        Attack layers to show (default: every layer with ``.obs['sad_score_<layer>']``).
    split
        Cells of this split of ``.obs['sad_split']`` (default ``'test'``: cells the detector never saw); ``None`` for all.
    only_flipped
        Show only attacked cells whose prediction the attack changed.
    bins
        Number of bins.
    xscale
        ``'linear'``, ``'logit'`` (spreads scores piled up next to 0 and 1, as a confident
        detector's are) or ``'auto'`` (logit when most scores or the threshold are within 0.01 of 0 or 1).
        Scores are clipped to the plotted range on either axis: a cell the plausibility rules flag
        (score above 1) is counted in the last bin.
    log
        Logarithmic fraction axis (scores pile up near 0 and 1).
    {doc_ax}

    Returns
    -------
    {doc_returns_ax}

    """
    check_adata(adata)
    fn = "score_distribution"
    layers = scored_layers(adata, layers, fn)
    thr = threshold(adata, None, fn)
    mask = u.cell_mask(adata, split, fn)
    advs = {x: _adv_scores(adata, x, mask, only_flipped=only_flipped) for x in layers}
    mask = mask & np.logical_or.reduce([u.attacked(adata, x) for x in layers])  # clean versions of attacked cells
    if not mask.any():
        msg = f"sad.pl.{fn}: no cell of split {split!r} was attacked in {layers}; pass another split, or split=None."
        raise ValueError(msg)
    clean = adata.obs[_keys.OBS_SCORE].to_numpy(float)[mask]
    every = np.concatenate([clean, *advs.values()])
    if xscale == "auto":  # saturated scores (a confident detector) are only readable on a logit axis
        near = (every < 0.01) | (every > 0.99)
        xscale = "logit" if (near.mean() > 0.5 or not 0.01 < thr < 0.99) else "linear"
    if xscale not in ("linear", "logit"):
        msg = f"xscale must be 'auto', 'linear' or 'logit', got {xscale!r}."
        raise ValueError(msg)
    if xscale == "logit":
        lo = float(np.clip(min(every.min(), thr), _EPS, 0.5))
        hi = float(np.clip(max(every.max(), thr), 0.5, 1 - _EPS))
        z = np.linspace(np.log(lo / (1 - lo)), np.log(hi / (1 - hi)), bins + 1)
        edges = 1 / (1 + np.exp(-z))
    else:
        edges = np.linspace(0, 1, bins + 1)

    def clip(v):  # a rule-flagged cell scores above 1: it belongs in the last bin, not off the axis
        return np.clip(v, edges[0], edges[-1])

    fig, ax_ = u.new_axes(ax, (7.0, 3.4))
    label = f"clean (n={mask.sum()}; {np.mean(clean >= thr):.0%} flagged)"
    ax_.hist(clip(clean), bins=edges, color=u.STATE_COLORS["clean"], alpha=0.55, weights=_fractions(clean), label=label)
    for (layer, s), color in zip(advs.items(), _eps_colors(len(layers)), strict=True):
        label = f"{u.eps_label(adata, layer)} (n={len(s)}; {np.mean(s >= thr):.0%} flagged)"
        step = {"histtype": "step", "linewidth": 1.8, "density": False}
        ax_.hist(clip(s), bins=edges, color=color, weights=_fractions(s), label=label, **step)
    ax_.axvline(thr, color="black", ls="--", lw=1.2, label=f"threshold {thr:.6g}")
    if log:
        ax_.set_yscale("log")
    if xscale == "logit":
        ax_.set_xscale("logit")
    ax_.set_xlim(edges[0], edges[-1])
    ax_.set_xlabel("detector score" + (" (logit axis)" if xscale == "logit" else ""))
    ax_.set_ylabel("fraction of cells")
    ax_.set_title(f"detector scores ({split or 'all'} cells{', flipped only' if only_flipped else ''})")
    u.legend_outside(ax_)
    return u.finish(fig, ax_, show=show, return_fig=return_fig, ax_given=ax is not None)


@doc_params(doc_split=u.doc_split, doc_ax_panels=u.doc_ax_panels)
def roc(
    adata: AnnData,
    layers: str | Sequence[str] | None = None,
    *,
    split: str | None = "test",
    only_flipped: bool = False,
    curve: str = "both",
    fpr_max: float = 0.05,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> list[Axes] | Figure | None:
    """ROC and precision-recall curves of the detector per attack layer, with the operating point.

    Positives are the attacked versions of the cells, negatives the clean cells. The marker
    is the detector's threshold; the dotted line marks ``fpr_max`` (TPR at 5% FPR is one of the
    honest evaluation numbers). The curve of an attack of a sample of cells (``cells=``) compares
    the attacked cells with their own clean versions.

    Parameters
    ----------
    adata
        AnnData scored by :func:`~scadversarial.tl.detect` on ``X`` and on attack layers.
    layers
        Attack layers (default: every layer with ``.obs['sad_score_<layer>']``); one curve each.
    {doc_split}
    only_flipped
        Count as positives only attacked cells whose prediction the attack changed.
    curve
        ``'roc'``, ``'pr'`` or ``'both'`` (two panels).
    fpr_max
        False-positive rate marked on the ROC panel.
    {doc_ax_panels}

    Returns
    -------
    The list of Axes (ROC and/or PR), the Figure with ``return_fig=True``, or ``None`` when shown.

    """
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

    check_adata(adata)
    fn = "roc"
    if curve not in ("roc", "pr", "both"):
        msg = f"curve must be 'roc', 'pr' or 'both', got {curve!r}."
        raise ValueError(msg)
    layers = scored_layers(adata, layers, fn)
    thr = threshold(adata, None, fn)
    mask = u.cell_mask(adata, split, fn)
    kinds = ["roc", "pr"] if curve == "both" else [curve]
    fig, axs = u.new_panels(ax, len(kinds), fn, (4.3 * len(kinds), 4.0))
    panel = dict(zip(kinds, axs, strict=True))
    scores = adata.obs[_keys.OBS_SCORE].to_numpy(float)
    for layer, color in zip(layers, _eps_colors(len(layers)), strict=True):
        adv = _adv_scores(adata, layer, mask, only_flipped=only_flipped)
        if not len(adv):
            continue
        clean = scores[mask & u.attacked(adata, layer)]
        y = np.r_[np.zeros(len(clean)), np.ones(len(adv))]
        s = np.r_[clean, adv]
        name = u.eps_label(adata, layer)
        op_fpr, op_tpr = float(np.mean(clean >= thr)), float(np.mean(adv >= thr))
        if "roc" in panel:
            fpr, tpr, _ = roc_curve(y, s)
            panel["roc"].plot(fpr, tpr, color=color, lw=1.6, label=f"{name} (AUROC {auc(fpr, tpr):.3f})")
            panel["roc"].plot(op_fpr, op_tpr, "o", color=color, mec="black", ms=7, zorder=3)
        if "pr" in panel:
            prec, rec, _ = precision_recall_curve(y, s)
            panel["pr"].plot(rec, prec, color=color, lw=1.6, label=f"{name} (AP {average_precision_score(y, s):.3f})")
            n_flag = np.sum(clean >= thr) + np.sum(adv >= thr)
            op_prec = float(np.sum(adv >= thr) / n_flag) if n_flag else 1.0
            panel["pr"].plot(op_tpr, op_prec, "o", color=color, mec="black", ms=7, zorder=3)
    sub = f"{split or 'all'} cells" + (", flipped only" if only_flipped else "")
    if "roc" in panel:
        a = panel["roc"]
        a.plot([0, 1], [0, 1], color="0.6", ls=":", lw=1)
        a.axvline(fpr_max, color="0.4", ls=":", lw=1)
        a.plot([], [], "o", color="white", mec="black", label=f"threshold {thr:.6g}")
        a.set_xlabel("false-positive rate (clean cells flagged)")
        a.set_ylabel("true-positive rate (attacked cells flagged)")
        a.set_title(f"ROC ({sub})")
        a.set_xlim(-0.01, 1.01)
        a.set_ylim(-0.01, 1.01)
        a.legend(fontsize=7, loc="lower right")
    if "pr" in panel:
        a = panel["pr"]
        a.set_xlabel("recall")
        a.set_ylabel("precision")
        a.set_title(f"precision-recall ({sub})")
        a.set_xlim(-0.01, 1.01)
        a.set_ylim(0, 1.01)
        a.plot([], [], "o", color="white", mec="black", label=f"threshold {thr:.6g}")
        a.legend(fontsize=7, loc="lower left")
    return u.finish(fig, axs, show=show, return_fig=return_fig, ax_given=ax is not None)
