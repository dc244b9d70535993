"""``attack_overview``: single-gene and max-change searches for every cluster x modification."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..._settings import progress
from ...attacks.max_change import max_change_search
from ...attacks.single_gene import single_gene_search
from ._fragments import fill_docs
from ._options import OverviewOptions, as_modifications
from ._record import Run, classifier_metrics
from ._setup import Ctx, gene_indices, make_oracle, warn_many_genes

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

    from ...attacks._oracle import ClusterOracle


def _searches(ctx: Ctx, oracle: ClusterOracle, idx: np.ndarray, options: OverviewOptions, rng) -> dict[str, Any]:
    """The overview's columns of one cluster x modification."""
    row: dict[str, Any] = {}
    if "single_gene" in options.modes:
        sg = single_gene_search(
            oracle, idx, first_dichot=options.first_dichot, max_split_size=options.max_split_size, method=options.method
        )
        row["single_gene_n_found"] = len(sg.genes)
        row["single_gene_n_genes"] = int(sum(len(g) for g in sg.genes))
        row["single_gene_genes"] = ";".join("__".join(ctx.genes[g]) for g in sg.genes)
    if "max_change" in options.modes:
        mc = max_change_search(
            oracle, idx, max_split_size=options.max_split_size, random_state=rng, method=options.method
        )
        row["max_change_n_kept"] = len(mc.kept)
        row["max_change_score"] = mc.score
        row["max_change_signature"] = ";".join(ctx.genes[idx[~np.isin(idx, mc.kept)]])
    return row


@fill_docs
def attack_overview(
    adata: AnnData,
    *,
    groupby: str,
    classifier: Any = None,
    layer: str | None = None,
    clusters: Sequence[str] | None = None,
    genes: Sequence[str] | None = None,
    modifications: Sequence[Any] = ("perc1", "perc99"),
    options: OverviewOptions | None = None,
    key_added: str = "overview",
    copy: bool = False,
) -> AnnData | None:
    """Single-gene and max-change attacks for every cluster x modification, as one table.

    Parameters
    ----------
    {doc_adata}
    {doc_groupby}
    {doc_classifier_blackbox}
    {doc_layer_blackbox}
    clusters
        Clusters to attack (default all).
    genes
        Genes both searches may modify (default all the classifier's genes); e.g. the highly variable
        genes, to keep max-change over a whole transcriptome short.
    {doc_modifications}
    options
        Search options (:class:`~scadversarial.tl.OverviewOptions`): ``modes`` (``'single_gene'``
        and/or ``'max_change'``), ``first_dichot``, ``max_split_size`` of both searches (100 by
        default, as the R package's overviews: faster, coarser; a single-gene record is then a small
        flipping gene group), ``method``, ``batch_bytes`` and ``random_state`` (seed of the max-change
        searches and of ``'random'`` values).
    key_added
        Key of the record in ``.uns['sad']['attacks']`` (plotted by
        :func:`~scadversarial.pl.attack_overview`); read the table back with
        :func:`~scadversarial.get.attack_table`.
    {doc_copy}

    Returns
    -------
    {doc_returns_copy}

    Writes ``.uns['sad']['attacks'][key_added]`` with ``mode='overview'``; its ``table`` has one row per
    cluster x modification: ``cluster``, ``modification``, ``n_cells``, ``orig_call``, ``orig_score``
    and, per mode, ``single_gene_n_found`` (flipping records), ``single_gene_n_genes`` (genes in them),
    ``single_gene_genes`` (the records, ``';'``-separated), ``max_change_n_kept``,
    ``max_change_score``, ``max_change_signature`` (the searched genes not kept, ``';'``-separated:
    the cluster's signature for this classifier). Its ``metrics`` hold only the classifier's figures
    and the time (``orig_call`` and ``orig_score`` are per row of the table).

    {doc_blackbox_record}

    """
    run = Run.begin(dict(locals()), OverviewOptions)
    options, mods = run.options, as_modifications(modifications)
    ctx = run.setup()
    clusters = [str(c) for c in pd.unique(ctx.labels)] if clusters is None else list(clusters)
    classes = ctx.adapter.classes
    idx = gene_indices(ctx, genes, None)
    if "max_change" in options.modes:
        n_cells = int(np.isin(ctx.labels, clusters).sum()) * len(mods)
        warn_many_genes(ctx, len(idx), n_cells, "attack_overview's max-change")
    rng = np.random.default_rng(options.random_state)
    rows = []
    cache: dict = {}  # per-gene sorted values, shared by all clusters
    t0 = time.perf_counter()
    setup_seconds = 0.0  # over all clusters and modifications
    # one loop step per cluster x modification; cells and genes are batched
    for cl in progress(clusters, desc="clusters"):
        oracle = None
        for m in mods:
            # like=oracle: the cluster's unmodified call and logits, once for all modifications
            oracle = make_oracle(ctx, cl, [m], rng=rng, batch_bytes=options.batch_bytes, cache=cache, like=oracle)
            setup_seconds += oracle.setup_seconds
            row = {
                "cluster": cl,
                "modification": m.label,
                "n_cells": oracle.n_cells,
                "orig_call": classes[oracle.orig_call],
                "orig_score": oracle.orig_score,
            }
            rows.append(row | _searches(ctx, oracle, idx, options, rng))
    seconds = time.perf_counter() - t0
    return run.write(
        key_added,
        mode="overview",
        metrics=classifier_metrics(ctx, seconds=seconds, setup_seconds=setup_seconds),
        table=pd.DataFrame(rows),
        resolved={"clusters": clusters, "n_genes_searched": len(idx)},
    )
