"""``grid_attack``: every combination of modifications (or none) of a handful of genes."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ...attacks.grid import grid_search
from ._fragments import fill_docs
from ._options import GridOptions, as_modifications
from ._record import Run, oracle_metrics
from ._setup import gene_indices, make_oracle, na_indices

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData


@fill_docs
def grid_attack(
    adata: AnnData,
    *,
    groupby: str,
    target: str,
    genes: Sequence[str],
    classifier: Any = None,
    layer: str | None = None,
    modifications: Sequence[Any] = ("perc1", "perc99"),
    options: GridOptions | None = None,
    key_added: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Classify every combination of modifications (or none) of a handful of genes.

    Combinations come smallest first (fewest modified genes), so with ``return_first_found=True``
    the search stops at a smallest flipping combination.

    Parameters
    ----------
    {doc_adata}
    {doc_groupby}
    {doc_target}
    genes
        The few genes of the grid (``(len(modifications) + 1) ** len(genes) - 1`` combinations).
    {doc_classifier_blackbox}
    {doc_layer_blackbox}
    {doc_modifications}
    options
        Search options (:class:`~scadversarial.tl.GridOptions`): ``return_first_found``,
        ``change_type`` and ``na_class``, ``max_combinations`` (larger grids are refused),
        ``method`` (``'fast'`` or ``'plain'``), ``batch_bytes`` and ``random_state`` (seed of
        ``'random'`` values).
    {doc_key_added_blackbox}
        Default ``'grid_<target>'``.
    {doc_copy}

    Returns
    -------
    {doc_returns_copy}

    Writes ``.uns['sad']['attacks'][key_added]`` with ``mode='grid'``; its ``table`` has one row per
    combination classified: one column per gene (the modification's name or ``'none'``),
    ``n_genes_modified``, ``new_call``, ``score``, ``flipped``; its ``metrics`` add ``n_combinations``
    and ``n_flipped``.

    {doc_blackbox_record}

    """
    run = Run.begin(dict(locals()), GridOptions)
    options, mods = run.options, as_modifications(modifications)
    if genes is None or len(genes) == 0:
        msg = "grid_attack needs genes=[...] (a handful of gene names)."
        raise ValueError(msg)
    n_combos = (len(mods) + 1) ** len(genes) - 1
    if n_combos > options.max_combinations:
        msg = (
            f"A grid over {len(genes)} genes x {len(mods)} modifications has {n_combos:,} combinations, more than "
            f"max_combinations={options.max_combinations:,}. Pass fewer genes or modifications, or raise "
            "max_combinations."
        )
        raise ValueError(msg)
    ctx = run.setup()
    idx = gene_indices(ctx, genes, None)
    t0 = time.perf_counter()
    oracle = make_oracle(
        ctx, target, mods, rng=np.random.default_rng(options.random_state), batch_bytes=options.batch_bytes
    )
    res = grid_search(
        oracle,
        idx,
        return_first_found=options.return_first_found,
        change_type=options.change_type,
        na_classes=na_indices(ctx, options.na_class),
        max_combinations=options.max_combinations,
        method=options.method,
    )
    seconds = time.perf_counter() - t0
    classes = ctx.adapter.classes
    names = np.array(["none", *[m.label for m in mods]])
    table = pd.DataFrame({ctx.genes[g]: names[res.combos[:, j] + 1] for j, g in enumerate(idx)})
    table["n_genes_modified"] = (res.combos >= 0).sum(axis=1)
    table["new_call"] = [classes[c] for c in res.calls]
    table["score"] = res.scores
    table["flipped"] = res.flipped
    return run.write(
        key_added or f"grid_{target}",
        mode="grid",
        metrics={
            "n_combinations": len(table),
            "n_flipped": int(res.flipped.sum()),
            **oracle_metrics(ctx, oracle, seconds=seconds),
        },
        table=table,
        resolved={"genes": list(ctx.genes[idx])},
    )
