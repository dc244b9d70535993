"""``max_change_attack``: the largest gene set whose joint modification keeps the target cluster's call."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ...attacks.max_change import max_change_search
from ._fragments import fill_docs
from ._options import MaxChangeOptions, Modification, as_modification
from ._record import Run, oracle_metrics
from ._setup import cluster_rows, gene_indices, make_oracle, warn_many_genes

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from anndata import AnnData


@fill_docs
def max_change_attack(
    adata: AnnData,
    *,
    groupby: str,
    target: str,
    classifier: Any = None,
    layer: str | None = None,
    modification: str | Callable | Modification = "perc99",
    genes: Sequence[str] | None = None,
    options: MaxChangeOptions | None = None,
    key_added: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Find the largest gene set whose joint modification keeps the target cluster's call.

    adverSCarial's recursive halving: a half that keeps the call alone is merged with the genes kept
    so far if the union still keeps it, otherwise (or when it flips alone) it is split again; the
    order of the two halves of each split is drawn from ``random_state``. The kept genes, modified
    together, keep the call; the other genes are the cluster's *signature* for this classifier.
    ``method='fast'`` (speculative stacked calls) returns exactly the result of ``method='plain'``.

    Parameters
    ----------
    {doc_adata}
    {doc_groupby}
    {doc_target}
    {doc_classifier_blackbox}
    {doc_layer_blackbox}
    {doc_modification}
    {doc_genes_search}
    options
        Search options (:class:`~scadversarial.tl.MaxChangeOptions`): ``max_split_size`` (gene lists
        of at most this size are not split further; 1: the largest set), ``exclude_genes``, ``method``
        (``'fast'`` or ``'plain'``), ``batch_bytes`` and ``random_state`` (seed of the halves' order and
        of ``'random'`` values).
    {doc_key_added_blackbox}
        Default ``'max_change_<target>_<modification>'``.
    {doc_copy}

    Returns
    -------
    {doc_returns_copy}

    Writes ``.uns['sad']['attacks'][key_added]`` with ``mode='max_change'``; its ``table`` has one row per
    searched gene: ``gene``, ``kept`` (bool: modified in the max-change attack), ``signature`` (bool: not
    kept), ``cluster``, ``modification``; its ``metrics`` add ``n_kept``, ``n_signature``, ``call`` and
    ``score`` with all kept genes modified, ``n_questions`` and ``n_tested``; its ``params`` add
    ``kept_order`` (the kept genes in the order they were kept).

    {doc_blackbox_record}

    """
    run = Run.begin(dict(locals()), MaxChangeOptions)
    options, mod = run.options, as_modification(modification)
    ctx = run.setup()
    idx = gene_indices(ctx, genes, options.exclude_genes)
    warn_many_genes(ctx, len(idx), len(cluster_rows(ctx, target)), "max_change_attack")
    t0 = time.perf_counter()
    rng = np.random.default_rng(options.random_state)
    oracle = make_oracle(ctx, target, [mod], rng=rng, batch_bytes=options.batch_bytes)
    res = max_change_search(oracle, idx, max_split_size=options.max_split_size, random_state=rng, method=options.method)
    seconds = time.perf_counter() - t0
    classes = ctx.adapter.classes
    kept = np.isin(idx, res.kept)
    table = pd.DataFrame({"gene": ctx.genes[idx], "kept": kept, "signature": ~kept})
    table["cluster"] = target
    table["modification"] = mod.label
    metrics = {
        "n_kept": int(kept.sum()),
        "n_signature": int((~kept).sum()),
        "call": classes[res.call],
        "score": res.score,
        "n_questions": res.n_questions,
        "n_tested": res.n_tested,
        **oracle_metrics(ctx, oracle, seconds=seconds),
    }
    return run.write(
        key_added or f"max_change_{target}_{mod.label}",
        mode="max_change",
        metrics=metrics,
        table=table,
        resolved={"n_genes_searched": len(idx), "kept_order": ctx.genes[res.kept]},
    )
