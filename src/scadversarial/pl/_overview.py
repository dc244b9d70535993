"""The adverSCarial-style overview of the black-box attacks: ``attack_overview``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .. import get
from .._docs import doc_params
from .._validate import check_adata
from . import _utils as u

#: (column of the overview table, panel title, colormap) per mode
_PANELS = {
    "single_gene": ("single-gene: gene lists that flip the call", "Reds"),
    "max_change": ("max-change: genes modified without a flip", "Blues"),
}


def _overview_table(adata: AnnData, key: str) -> tuple[pd.DataFrame, dict]:
    recs = u.all_attacks(adata)
    if key not in recs:
        have = [k for k, r in recs.items() if isinstance(r, dict) and r.get("mode") == "overview"]
        msg = (
            f"sad.pl.attack_overview needs adata.uns['sad']['attacks'][{key!r}], which is written by "
            f"`sad.tl.attack_overview` (overview records present: {have})."
        )
        raise KeyError(msg)
    rec = recs[key]
    if rec.get("mode") != "overview" or "table" not in rec:
        msg = f"adata.uns['sad']['attacks'][{key!r}] is a {rec.get('mode', rec.get('kind', '?'))!r} record, not an overview from `sad.tl.attack_overview`."
        raise ValueError(msg)
    return get.attack_table(adata, key), rec


@doc_params(doc_ax_panels=u.doc_ax_panels)
def attack_overview(
    adata: AnnData,
    key: str = "overview",
    *,
    modes: str | Sequence[str] | None = None,
    single_gene: str = "n_found",
    annotate: bool = True,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> list[Axes] | Figure | None:
    """Heatmaps of the black-box overview: cluster × modification counts, one panel per attack mode.

    Like adverSCarial's overview plots. **single-gene**: how many genes (gene lists of at most
    ``max_split_size`` genes) flip the cluster's call when modified alone; many means the call
    rests on fragile evidence. **max-change**: how many genes can be modified together without
    changing the call; many means a robust call. Row labels give the cluster, its size and its
    call on the unmodified data.

    Parameters
    ----------
    adata
        AnnData with an overview from :func:`~scadversarial.tl.attack_overview`.
    key
        Key of the overview in ``.uns['sad']['attacks']``.
    modes
        ``'single_gene'`` and/or ``'max_change'`` (default: those in the table).
    single_gene
        ``'n_found'``: number of flipping records (as adverSCarial counts); ``'n_genes'``: the
        number of genes in them.
    annotate
        Write the count in each cell.
    {doc_ax_panels}

    Returns
    -------
    The list of Axes (one per mode), the Figure with ``return_fig=True``, or ``None`` when shown.

    """
    check_adata(adata)
    if single_gene not in ("n_found", "n_genes"):
        msg = f"single_gene must be 'n_found' or 'n_genes', got {single_gene!r}."
        raise ValueError(msg)
    table, rec = _overview_table(adata, key)
    columns = {"single_gene": f"single_gene_{single_gene}", "max_change": "max_change_n_kept"}
    present = [m for m in _PANELS if columns[m] in table]
    modes = present if modes is None else ([modes] if isinstance(modes, str) else list(modes))
    missing = [m for m in modes if m not in present]
    if missing or not modes:
        msg = f"The overview {key!r} has no {missing or modes} results (modes present: {present}); run `sad.tl.attack_overview(..., modes=...)`."
        raise ValueError(msg)
    params = rec.get("params", {})
    clusters = [str(c) for c in np.atleast_1d(params.get("clusters", pd.unique(table["cluster"])))]
    clusters = [c for c in clusters if c in set(table["cluster"].astype(str))]
    mods = [str(m) for m in np.atleast_1d(params.get("modifications", pd.unique(table["modification"])))]
    table = table.assign(cluster=table["cluster"].astype(str), modification=table["modification"].astype(str))
    first = table.drop_duplicates("cluster").set_index("cluster")
    rows = []
    for c in clusters:
        call, n = str(first.loc[c, "orig_call"]), int(first.loc[c, "n_cells"])
        rows.append(f"{c} (n={n})" if call == c else f"{c} (n={n}, called {call})")

    width = max(2.6, 0.75 * len(mods) + 1.6)
    figsize = (width * len(modes) + 2.8, max(2.6, 0.32 * len(clusters) + 1.4))
    fig, axs = u.new_panels(ax, len(modes), "attack_overview", figsize, sharey=True)
    max_split = int(params.get("max_split_size", 1))
    for a, mode in zip(axs, modes, strict=True):
        title, cmap = _PANELS[mode]
        if mode == "single_gene" and single_gene == "n_genes":
            title = "single-gene: genes in flipping lists"
        grid = table.pivot_table(index="cluster", columns="modification", values=columns[mode], aggfunc="first")
        grid = grid.reindex(index=clusters, columns=mods).to_numpy(dtype=float)
        im = a.imshow(grid, cmap=cmap, aspect="auto", vmin=0, vmax=max(1.0, np.nanmax(grid)))
        a.grid(visible=False)
        a.set_xticks(range(len(mods)), mods, rotation=45, ha="right")
        a.set_yticks(range(len(clusters)), rows)
        a.set_xlabel("modification")
        a.set_title(
            title + (f"\n(lists of ≤ {max_split} genes)" if mode == "single_gene" and max_split > 1 else ""),
            fontsize=10,
        )
        if annotate:
            top = np.nanmax(grid) if np.isfinite(grid).any() else 1
            text = np.array([f"{int(v)}" if np.isfinite(v) else "" for v in grid.ravel()]).reshape(grid.shape)
            u.annotate_cells(a, text, grid > 0.6 * top)
        fig.colorbar(
            im, ax=a, shrink=0.8, label="genes" if mode == "max_change" or single_gene == "n_genes" else "gene lists"
        )
    axs[0].set_ylabel(str(params.get("groupby", "cluster")))
    return u.finish(fig, axs, show=show, return_fig=return_fig, ax_given=ax is not None)
