"""``sad.pl.certified_accuracy``: certified accuracy against the L2 radius (the curve of Cohen et al. 2019)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .. import _keys, get
from .._docs import doc_params
from .._validate import labelled_cells
from ..tl._certify import ABSTAIN
from . import _utils as u

_FN = "certified_accuracy"
#: Points of the radius grid: enough for the step curve to look continuous at figure size.
_GRID_POINTS = 200


def _labelled(adata: AnnData, cells: np.ndarray, labels_key: str, split: str | None) -> np.ndarray:
    """The cells of ``cells`` with a true label: a missing one (NaN) is left out, never compared as ``'nan'``."""
    where = "" if split is None else f" of split {split!r}"
    known = labelled_cells(
        adata,
        labels_key,
        cells,
        caller=f"sad.pl.{_FN}",
        measured="the curves",
        keeps="the abstention rates",
        fix=f"Plotted: the cells{where}. Pass labels_key= naming a column with true labels, annotate some of "
        "these cells, or pass another split (split=None for all cells).",
    )
    return cells & known


def _curve(adata: AnnData, key: str, cells: np.ndarray, labels_key: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(radius, certified accuracy, record)`` of one certification on ``cells`` (all labelled).

    The curve is on the radii the cells reached.
    """
    try:
        rec = get.record(adata, key)
    except KeyError as e:
        msg = f"sad.pl.{_FN}: {e.args[0]} (it is written by `sad.tl.certify(adata, key_added={key!r})`)."
        raise KeyError(msg) from None
    pred = u.obs_key(adata, _keys.certified_pred_key(key), _FN, "sad.tl.certify").astype(str).to_numpy()[cells]
    radius = u.obs_key(adata, _keys.certified_radius_key(key), _FN, "sad.tl.certify").to_numpy(float)[cells]
    correct = pred == adata.obs[labels_key].astype(str).to_numpy()[cells]
    top = float(radius.max()) if len(radius) else 0.0
    grid = np.linspace(0.0, max(top, 1e-12), _GRID_POINTS)
    acc = (correct[None, :] & (radius[None, :] >= grid[:, None])).mean(1)
    return grid, acc, rec


@doc_params(doc_labels_key=u.doc_labels_key, doc_split=u.doc_split, doc_show=u.doc_show)
def certified_accuracy(
    adata: AnnData,
    *,
    key: str | Sequence[str] = _keys.STEP_CERTIFY,
    split: str | None = "test",
    labels_key: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Certified accuracy against the L2 radius in log space (Cohen, Rosenfeld & Kolter 2019, Figure 1).

    At radius ``r`` the curve gives the fraction of cells whose smoothed prediction
    (:func:`~scadversarial.tl.certify`) is correct *and* certified at a radius of at least ``r``:
    a lower bound on the smoothed classifier's accuracy against any change of the log-expression of
    L2 norm below ``r`` (with probability ``1 - alpha`` per cell). Abstaining cells count as wrong;
    the value at ``r = 0`` is the smoothed classifier's accuracy. Cells without a label (NaN in
    ``labels_key``) are left out of the curves (a warning says how many), not of the abstention
    rates. One curve per certification (e.g. one per noise level ``sigma``), labelled with its
    ``sigma`` and abstention rate.

    Parameters
    ----------
    adata
        AnnData with ``.obs['<key>_pred']``, ``.obs['<key>_radius']`` and ``.uns['sad'][key]``
        from :func:`~scadversarial.tl.certify`.
    key
        The ``key_added`` of one certification, or several (one curve each).
    {doc_split}
    {doc_labels_key}
    ax
        Axes to draw into.
    {doc_show}

    Returns
    -------
    The Axes, the Figure with ``return_fig=True``, or ``None`` when shown.

    Examples
    --------
    >>> import scadversarial as sad
    >>> sad.tl.certify(test, sigma=0.25, key_added="sigma0.25")  # doctest: +SKIP
    >>> sad.tl.certify(test, sigma=0.5, key_added="sigma0.5")  # doctest: +SKIP
    >>> sad.pl.certified_accuracy(test, key=["sigma0.25", "sigma0.5"], split=None)  # doctest: +SKIP

    """
    keys = [key] if isinstance(key, str) else list(key)
    if not keys:
        msg = f"sad.pl.{_FN}: key is empty; pass the key_added of a `sad.tl.certify` run."
        raise ValueError(msg)
    cells = u.cell_mask(adata, split, _FN)
    labels_key = u.labels_key(adata, labels_key, _FN)
    labelled = _labelled(adata, cells, labels_key, split)
    ax_given = ax is not None
    fig, ax = u.new_axes(ax, (4.5, 3.2))
    colors = u.default_palette(len(keys))
    for k, color in zip(keys, colors, strict=True):
        grid, acc, rec = _curve(adata, k, labelled, labels_key)
        abstain = float(np.mean(adata.obs[_keys.certified_pred_key(k)].astype(str).to_numpy()[cells] == ABSTAIN))
        sigma = rec.get("params", {}).get("sigma")
        name = f"σ={float(sigma):g}" if sigma is not None else k
        ax.plot(grid, acc, drawstyle="steps-post", color=color, label=f"{name} (abstain {abstain:.0%})")
    ax.set_xlabel("L2 radius (log units)")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1)
    ax.set_xlim(left=0)
    where = "all cells" if split is None else f"{split} cells"
    left_out = int(cells.sum() - labelled.sum())
    n = f"n={int(labelled.sum())}" + (f", {left_out} unlabelled left out" if left_out else "")
    ax.set_title(f"randomized smoothing, {where} ({n})", fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    return u.finish(fig, ax, show=show, return_fig=return_fig, ax_given=ax_given)
