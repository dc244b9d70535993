"""``random_walk_attack``: a random walk towards the fewest modified genes that still flip the call."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..._settings import logger
from ...attacks.random_walk import random_walk_search
from ._fragments import fill_docs
from ._options import RandomWalkOptions, as_modifications
from ._record import Run, oracle_metrics
from ._setup import gene_indices, make_oracle, na_indices

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData


def _best_table(res, genes: np.ndarray, names: list[str], classes: list[str]) -> pd.DataFrame:
    """One row per gene of the best assignment (no rows when no seed flipped the call)."""
    if res.best is None:
        return pd.DataFrame(
            {
                "gene": pd.Series(dtype=str),
                "modification": pd.Series(dtype=str),
                "new_call": pd.Series(dtype=str),
                "score": pd.Series(dtype=float),
            }
        )
    sel = np.flatnonzero(res.best >= 0)
    return pd.DataFrame(
        {
            "gene": genes[sel],
            "modification": [names[m] for m in res.best[sel]],
            "new_call": classes[res.best_call],
            "score": res.best_score,
        }
    )


@fill_docs
def random_walk_attack(
    adata: AnnData,
    *,
    groupby: str,
    target: str,
    classifier: Any = None,
    layer: str | None = None,
    modifications: Sequence[Any] = ("perc1", "perc99"),
    genes: Sequence[str] | None = None,
    options: RandomWalkOptions | None = None,
    key_added: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Random walk towards the fewest modified genes that still flip the target cluster's call.

    Random assignments of a modification (or none) to each gene are tried until one flips the call
    (the seed); then, for ``walk_length`` steps, a smaller assignment is drawn around the best one and
    kept when it still flips the call. ``method='fast'`` (stacked, speculative) returns exactly the
    walk of ``method='plain'`` for the same ``random_state``.

    Parameters
    ----------
    {doc_adata}
    {doc_groupby}
    {doc_target}
    {doc_classifier_blackbox}
    {doc_layer_blackbox}
    {doc_modifications}
    genes
        Genes the walk may modify (default all the classifier's genes).
    options
        Search options (:class:`~scadversarial.tl.RandomWalkOptions`): ``first_batch`` (random
        assignments tried to find a seed), ``walk_length``, ``step_change_ratio`` (probability of
        redrawing a modified gene at each step), ``max_tries`` (proposals per step before the walk
        gives up), ``change_type`` and ``na_class``, ``method`` (``'fast'`` or ``'plain'``),
        ``batch_bytes`` and ``random_state`` (seed of the walk).
    {doc_key_added_blackbox}
        Default ``'random_walk_<target>'``.
    {doc_copy}

    Returns
    -------
    {doc_returns_copy}

    Writes ``.uns['sad']['attacks'][key_added]`` with ``mode='random_walk'`` and ``history`` (``step``,
    ``n_genes``, ``call``, ``score`` of every improvement); its ``table`` is the best attack found, one
    row per modified gene: ``gene``, ``modification``, ``new_call``, ``score``, ``cluster`` (no rows
    when no seed flipped the call); its ``metrics`` add ``found``, ``n_genes``, ``new_call``, ``score``
    and ``n_tested``.

    {doc_blackbox_record}

    """
    run = Run.begin(dict(locals()), RandomWalkOptions)
    options, mods = run.options, as_modifications(modifications)
    ctx = run.setup()
    idx = gene_indices(ctx, genes, None)
    rng = np.random.default_rng(options.random_state)
    t0 = time.perf_counter()
    oracle = make_oracle(ctx, target, mods, rng=rng, batch_bytes=options.batch_bytes)
    res = random_walk_search(
        oracle,
        idx,
        first_batch=options.first_batch,
        walk_length=options.walk_length,
        step_change_ratio=options.step_change_ratio,
        max_tries=options.max_tries,
        change_type=options.change_type,
        na_classes=na_indices(ctx, options.na_class),
        random_state=rng,
        method=options.method,
    )
    seconds = time.perf_counter() - t0
    classes = ctx.adapter.classes
    table = _best_table(res, ctx.genes, [m.label for m in mods], classes)
    table["cluster"] = target
    history = pd.DataFrame(res.history, columns=["step", "n_genes", "call", "score"])
    history["call"] = [classes[int(c)] for c in history["call"]]
    found = res.best is not None
    metrics = {
        "found": found,
        "n_genes": len(table),
        "new_call": classes[res.best_call] if found else "",
        "score": res.best_score,
        "n_tested": res.n_tested,
        **oracle_metrics(ctx, oracle, seconds=seconds),
    }
    if not found:
        logger.warning(
            "random_walk_attack: no random assignment flipped the call of %r; try a larger first_batch.", target
        )
    return run.write(
        key_added or f"random_walk_{target}",
        mode="random_walk",
        metrics=metrics,
        table=table,
        resolved={"n_genes_searched": len(idx)},
        history=history,
    )
