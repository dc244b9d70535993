"""``sad.pl.benchmark``: the detector benchmark as an annotated heatmap (threats x detectors)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .. import get
from .._docs import doc_params
from .._validate import check_choice
from . import _utils as u

Metric = Literal["evasion", "flagged", "auroc", "auroc_flipped", "tpr_at_5fpr", "flip_rate"]
BenignMetric = Literal["fpr", "auroc"]
#: Attack metrics where a high value is bad for the defender (drawn in reds; the others in blues). On benign
#: shifts every metric is bad when high (false positives, a detector that sees a benign shift).
_HIGH_IS_BAD = {"evasion", "flip_rate"}
_LABELS = {
    "evasion": "evasion (flipped, not flagged)",
    "flagged": "flagged at threshold",
    "auroc": "AUROC (clean vs attacked)",
    "auroc_flipped": "AUROC (clean vs flipped)",
    "tpr_at_5fpr": "TPR at 5 % FPR",
    "flip_rate": "flip rate",
    "fpr": "false-positive rate",
}


def _table(data: AnnData | pd.DataFrame, key: str) -> pd.DataFrame:
    if isinstance(data, pd.DataFrame):
        return data
    if isinstance(data, AnnData):
        try:
            return get.benchmark_table(data, key)
        except KeyError as e:
            msg = f"sad.pl.benchmark: {e.args[0]}"
            raise KeyError(msg) from None
    msg = f"sad.pl.benchmark takes an AnnData or the DataFrame of `benchmark_detectors`, got {type(data).__name__}."
    raise TypeError(msg)


def _grid(tab: pd.DataFrame, kind: str, metric: str, extra: str) -> tuple[pd.DataFrame, list[str]]:
    """Mean of ``metric`` per threat x detector (over repeated runs) and row labels with the ``extra`` column."""
    part = tab[tab["kind"] == kind]
    order = list(dict.fromkeys(part["threat"]))
    dets = list(dict.fromkeys(part["detector"]))
    grid = part.pivot_table(index="threat", columns="detector", values=metric, aggfunc="mean", dropna=False)
    grid = grid.reindex(index=order, columns=dets)
    side = part.groupby("threat", sort=False)[extra].mean().reindex(order)
    name = "flip" if extra == "flip_rate" else "pred. changed"
    labels = [f"{t}  ({name} {v:.0%})" if np.isfinite(v) else t for t, v in zip(order, side, strict=True)]
    return grid, labels


def _draw(a: Axes, grid: pd.DataFrame, labels: list[str], *, cmap: str, annotate: bool):
    values = grid.to_numpy(dtype=float)
    im = a.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    a.grid(visible=False)
    a.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns], rotation=45, ha="right")
    a.set_yticks(range(grid.shape[0]), labels)
    if annotate:
        text = np.array([f"{v:.2f}" if np.isfinite(v) else "–" for v in values.ravel()]).reshape(values.shape)
        u.annotate_cells(a, text, np.isfinite(values) & (values > 0.5))
    return im


@doc_params(doc_show=u.doc_show)
def benchmark(
    data: AnnData | pd.DataFrame,
    *,
    metric: Metric = "evasion",
    benign_metric: BenignMetric = "fpr",
    key: str = "benchmark",
    annotate: bool = True,
    cmap: str | None = None,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> list[Axes] | Figure | None:
    """The detector benchmark as an annotated heatmap: attacks x detectors, benign shifts beside.

    The first panel shows ``metric`` for every attack (rows; each label gives the attack's flip
    rate) and detector (columns); the second, when the table has benign shifts, their
    ``benign_metric`` (each label gives the fraction of predictions the shift changed). Repeated
    rows (e.g. tables of several seeds concatenated) are averaged.

    Parameters
    ----------
    data
        AnnData with ``.uns['sad'][key]`` from :func:`~scadversarial.tl.benchmark_detectors`, or its DataFrame.
    metric
        ``'evasion'`` (flipped and not flagged), ``'flagged'``, ``'auroc'``, ``'auroc_flipped'``,
        ``'tpr_at_5fpr'`` or ``'flip_rate'``.
    benign_metric
        ``'fpr'`` (shifted cells flagged) or ``'auroc'`` (clean vs shifted: how much the detector sees the shift).
    key
        Record of the benchmark in ``.uns['sad']``.
    annotate
        Write each value in its cell.
    cmap
        Colormap (default: reds where high is bad for the defender, blues where high is good).
    ax
        One Axes, or two (attacks, benign shifts).
    {doc_show}

    Returns
    -------
    The list of Axes (attacks, then benign shifts when drawn), the Figure with ``return_fig=True``, or
    ``None`` when shown.

    Examples
    --------
    >>> import scadversarial as sad
    >>> sad.tl.benchmark_detectors(adata, attacks={{"pgd": {{"method": "pgd", "eps": 0.1}}}})  # doctest: +SKIP
    >>> sad.pl.benchmark(adata, metric="auroc")  # doctest: +SKIP

    """
    check_choice("metric", metric, Metric)
    check_choice("benign_metric", benign_metric, BenignMetric)
    tab = _table(data, key)
    if not (tab["kind"] == "attack").any():
        msg = "sad.pl.benchmark: the table has no attack rows; run `benchmark_detectors` with at least one attack."
        raise ValueError(msg)
    panels = [("attack", metric, "flip_rate")]
    if (tab["kind"] == "benign").any():
        panels.append(("benign", benign_metric, "pred_changed"))
    grids = [_grid(tab, kind, m, extra) for kind, m, extra in panels]

    heights = [max(1.5, 0.32 * g.shape[0] + 0.6) for g, _ in grids]
    figsize = (max(4.5, 0.75 * grids[0][0].shape[1] + 3.5), sum(heights) + 1.2)
    fig, axs = u.new_panels(ax, len(panels), "benchmark", figsize, vertical=True, height_ratios=heights)
    ax_given = ax is not None
    for a, (kind, m, _), (grid, labels) in zip(axs, panels, grids, strict=True):
        bad_high = kind == "benign" or m in _HIGH_IS_BAD
        im = _draw(a, grid, labels, cmap=cmap or ("Reds" if bad_high else "Blues"), annotate=annotate)
        label = "AUROC (clean vs shifted)" if (kind, m) == ("benign", "auroc") else _LABELS[m]
        a.set_title(f"{'attacks' if kind == 'attack' else 'benign shifts'}: {label}", fontsize=9)
        if not ax_given:
            fig.colorbar(im, ax=a, shrink=0.9)
    return u.finish(fig, axs, show=show, return_fig=return_fig, ax_given=ax_given)
