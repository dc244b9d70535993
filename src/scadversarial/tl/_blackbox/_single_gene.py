"""``single_gene_attack``: every gene whose modification alone flips the target cluster's call."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..._settings import logger
from ...attacks.single_gene import single_gene_search
from ._fragments import fill_docs
from ._options import Modification, SingleGeneOptions, as_modification
from ._record import Run, oracle_metrics
from ._setup import gene_indices, make_oracle, na_indices

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from anndata import AnnData


@fill_docs
def single_gene_attack(
    adata: AnnData,
    *,
    groupby: str,
    target: str,
    classifier: Any = None,
    layer: str | None = None,
    modification: str | Callable | Modification = "perc99",
    genes: Sequence[str] | None = None,
    options: SingleGeneOptions | None = None,
    key_added: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Find every gene whose modification alone flips the target cluster's call.

    adverSCarial's search order: genes are dealt round-robin into ``first_dichot`` bins; each gene
    list under test is split into its interleaved halves, each half is modified and classified;
    a flipping half of at most ``max_split_size`` genes is recorded, a larger one is split again.
    ``method='fast'`` classifies all halves of one level of the search in stacked calls and returns
    exactly the records of ``method='plain'`` (one classifier call per half), in the same order.
    For a linear classifier (a ``torch.nn.Linear`` or a scikit-learn ``LogisticRegression``) no
    modified matrix is formed: each half's logits are the unmodified logits plus the change of its
    genes, and cells closer to a tie than the classifier's rounding error could explain are
    classified by the classifier itself, so the records are still exactly the plain search's.

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
        Search options (:class:`~scadversarial.tl.SingleGeneOptions`): ``first_dichot`` (round-robin
        bins), ``max_split_size`` (flipping gene lists of at most this size are recorded),
        ``return_first_found``, ``change_type`` and ``na_class`` (flips to a "no call" class ignored),
        ``exclude_genes``, ``method`` (``'fast'`` or ``'plain'``), ``batch_bytes`` and ``random_state``
        (seed of ``'random'`` values).
    {doc_key_added_blackbox}
        Default ``'single_gene_<target>_<modification>'``.
    {doc_copy}

    Returns
    -------
    {doc_returns_copy}

    Writes ``.uns['sad']['attacks'][key_added]`` with ``mode='single_gene'``; its ``table`` has one row per
    record in depth-first order: ``gene`` (genes joined by ``'__'`` when ``max_split_size > 1``),
    ``n_genes``, ``new_call``, ``score`` (fraction of the cluster's cells with the new call), ``cluster``,
    ``modification``, ``orig_call``; its ``metrics`` add ``n_found`` and ``n_tested`` (gene lists
    classified).

    {doc_blackbox_record}

    """
    run = Run.begin(dict(locals()), SingleGeneOptions)
    options, mod = run.options, as_modification(modification)
    ctx = run.setup()
    idx = gene_indices(ctx, genes, options.exclude_genes)
    t0 = time.perf_counter()
    rng = np.random.default_rng(options.random_state)
    oracle = make_oracle(ctx, target, [mod], rng=rng, batch_bytes=options.batch_bytes)
    res = single_gene_search(
        oracle,
        idx,
        first_dichot=options.first_dichot,
        max_split_size=options.max_split_size,
        return_first_found=options.return_first_found,
        change_type=options.change_type,
        na_classes=na_indices(ctx, options.na_class),
        method=options.method,
    )
    seconds = time.perf_counter() - t0
    classes = ctx.adapter.classes
    table = pd.DataFrame(
        {
            "gene": ["__".join(ctx.genes[g]) for g in res.genes],
            "n_genes": np.array([len(g) for g in res.genes], dtype=np.int64),
            "new_call": [classes[c] for c in res.calls],
            "score": np.asarray(res.scores, dtype=float),
        }
    )
    table["cluster"] = target
    table["modification"] = mod.label
    table["orig_call"] = classes[oracle.orig_call]
    logger.info(
        "single_gene_attack %s/%s: %d genes flip the call (%d calls)",
        target,
        mod.label,
        len(table),
        ctx.adapter.n_calls,
    )
    return run.write(
        key_added or f"single_gene_{target}_{mod.label}",
        mode="single_gene",
        metrics={"n_found": len(table), "n_tested": res.n_tested, **oracle_metrics(ctx, oracle, seconds=seconds)},
        table=table,
        resolved={"n_genes_searched": len(idx)},
    )
