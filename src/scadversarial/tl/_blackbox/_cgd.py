"""``sign_genes`` (adverSCarial's ``getSignGenes``) and ``cgd_attack`` (cluster-based gradient descent)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import sparse

from ..._validate import check_choice, check_obs_key, get_matrix, matrix_name
from ...attacks._cgd_run import cgd_search_copying, copies_aside
from ...attacks.cgd import SUMMARY_COLUMNS, cgd_search
from ...attacks.sign_genes import distant_pairs, pairwise_pvalues, sign_genes_order
from ._fragments import fill_docs
from ._options import CGDOptions, SignMethod
from ._record import Run, begin, call_params, classifier_metrics, finish, record_key, store
from ._setup import PRODUCER, Ctx, cluster_rows, gene_indices

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

# summary columns that count (the rest are fractions and mean probabilities)
_INT_COLUMNS = ("order", "n_modified_cells")

__all__ = ["cgd_attack", "sign_genes"]


def _sign_genes_table(X, genes, labels, method: SignMethod) -> pd.DataFrame:
    clusters = [str(c) for c in pd.unique(labels)]
    if len(clusters) < 2:
        msg = f"sign_genes needs at least 2 clusters, found {clusters}."
        raise ValueError(msg)
    pairs = distant_pairs(clusters)
    pv = pairwise_pvalues(X, labels, pairs, method=method)
    order, pval, pair = sign_genes_order(pv)
    return pd.DataFrame(
        {
            "gene": genes[order],
            "rank": np.arange(1, len(order) + 1),
            "pval": pval,
            "cluster_1": [pairs[p][0] for p in pair],
            "cluster_2": [pairs[p][1] for p in pair],
        }
    )


@fill_docs
def sign_genes(
    adata: AnnData,
    *,
    groupby: str,
    layer: str | None = None,
    method: SignMethod = "wilcoxon",
    key_added: str = "sign_genes",
    copy: bool = False,
) -> AnnData | None:
    """Rank genes by how well they separate pairs of clusters (adverSCarial's ``getSignGenes``).

    For every pair of clusters (ordered so consecutive pairs share no cluster where possible), genes
    are ranked by the p-value of a two-sided test between the two clusters; the final ranking takes
    the best gene of every pair, then the second best, and so on, each gene once.

    Parameters
    ----------
    {doc_adata}
    {doc_groupby}
    layer
        Matrix to test: a key of ``.layers`` (default ``X``).
    method
        ``'wilcoxon'`` (Mann-Whitney U) or ``'t-test'`` (Welch).
    key_added
        Key of the record in ``.uns['sad']['attacks']``; read the ranking back with
        :func:`~scadversarial.get.attack_table`.
    {doc_copy}

    Returns
    -------
    {doc_returns_copy}

    Writes ``.uns['sad']['attacks'][key_added]``: ``kind='ranking'``, ``mode='sign_genes'``, ``params``
    and ``table``, one row per gene in ranking order: ``gene``, ``rank`` (1 = best), ``pval`` (the
    p-value that placed it), ``cluster_1`` and ``cluster_2`` (the pair).

    """
    call = dict(locals())
    adata = begin(adata, copy=copy)
    check_choice("method", method, SignMethod)
    labels = check_obs_key(adata, groupby, producer=PRODUCER)
    if labels.isna().any():
        msg = (
            f"{int(labels.isna().sum())} cells have no cluster in adata.obs[{groupby!r}]. Drop them or fill them first."
        )
        raise ValueError(msg)
    X = get_matrix(adata, layer)
    table = _sign_genes_table(X, adata.var_names.to_numpy().astype(str), labels.astype(str).to_numpy(), method)
    store(
        adata,
        key_added,
        kind="ranking",
        mode="sign_genes",
        params=call_params(call, None),
        metrics={},
        table=table,
        ctx=None,
    )
    return finish(adata, copy=copy)


def _check_classes(ctx: Ctx, options: CGDOptions) -> None:
    classes = ctx.adapter.classes
    for name, values in (
        ("new_target", [] if options.new_target is None else [options.new_target]),
        ("exclude_new_targets", list(options.exclude_new_targets)),
    ):
        bad = [v for v in values if v not in classes]
        if bad:
            msg = f"{name} {bad} not among the classifier's classes {classes}."
            raise ValueError(msg)


def _attacked_matrix(adata: AnnData, layer: str | None, ctx: Ctx, src: Any) -> np.ndarray:
    """A private float32 copy of the attacked matrix ``src`` (``ctx.X`` itself when it is already a new array)."""
    if ctx.var_idx is not None:  # ctx.X holds the classifier's genes only
        return get_matrix(adata, layer, copy=True)
    if sparse.issparse(src) or (isinstance(src, np.ndarray) and not np.may_share_memory(ctx.X, src)):
        return ctx.X  # densified or converted by the set-up: nobody else holds it
    return ctx.X.copy()


def _summary_table(res, genes: np.ndarray) -> pd.DataFrame:
    """The per-gene summary, its numeric columns typed here (no inference), gene names as pandas infers them."""
    columns: dict[str, Any] = {}
    for c in SUMMARY_COLUMNS:
        values = [row[c] for row in res.summary]
        if c == "gene":
            columns[c] = ["" if g < 0 else genes[g] for g in values]
        else:
            columns[c] = np.array(values, dtype=np.int64 if c in _INT_COLUMNS else np.float64)
    return pd.DataFrame(columns, copy=False)


@fill_docs
def cgd_attack(
    adata: AnnData,
    *,
    groupby: str,
    target: str,
    classifier: Any = None,
    layer: str | None = None,
    genes: Sequence[str] | None = None,
    options: CGDOptions | None = None,
    key_added: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Cluster-based gradient descent: step genes one by one until the cluster switches type.

    For each gene (in ``genes`` order; default the :func:`~scadversarial.tl.sign_genes` ranking), on
    the target cells not already called the new target, the trial step
    ``x -> (1 + alpha*sign(x))*x + epsilon`` is classified; per cell, if the new target's probability
    rose more than the original type's the step is committed, if it rose less the opposite step
    ``x -> (1 - alpha*sign(x))*x - epsilon`` is committed. After each gene the new target is the most
    frequent other per-cell type of the cluster (class order breaks ties). The attack stops when the
    new target is called for more cells than the original type (unless ``stop_at_switch=False``).
    ``method='fast'`` makes one classifier call per gene on the rows that can change and returns the
    same result as ``method='plain'`` (two calls per gene on the whole cluster, as the R package).

    Parameters
    ----------
    {doc_adata}
    {doc_groupby}
    {doc_target}
    {doc_classifier_blackbox}
    {doc_layer_blackbox}
    genes
        Genes in the order they are visited (default: :func:`~scadversarial.tl.sign_genes` on the
        attacked matrix).
    options
        Search options (:class:`~scadversarial.tl.CGDOptions`): the step sizes ``alpha``
        (multiplicative) and ``epsilon`` (additive), ``new_target`` (the first new target; default
        chosen from the cluster's predictions), ``exclude_new_targets``, ``stop_at_switch``,
        ``sign_method`` (test of the default gene ranking) and ``method`` (``'fast'`` or ``'plain'``).
    {doc_key_added_blackbox}
        Also the name of the attacked layer. Default ``'sad_cgd_<target>'``.
    {doc_copy}

    Returns
    -------
    {doc_returns_copy}

    Writes ``.layers[key_added]`` (the attacked matrix: the cluster's cells modified, other cells and
    genes unchanged) and ``.uns['sad']['attacks'][key_added]`` with ``mode='cgd'``, ``layers`` and
    ``modified_genes``; its ``table`` is the per-gene summary, one row per visited gene (``order=0`` is
    the start): ``order``, ``gene``, ``n_modified_cells``, ``frac_orig`` and ``frac_new`` (fractions of
    the cluster's cells called the original type / the new target), ``proba_orig_cells`` and
    ``proba_new_cells`` (mean probability of that type over the cells called it),
    ``proba_orig_cluster`` and ``proba_new_cluster`` (over the whole cluster); its ``metrics`` add
    ``new_target``, ``switched``, ``n_modified_genes``, ``n_genes_visited``, ``frac_orig`` and
    ``frac_new`` (``orig_score`` is ``frac_orig`` at the start).

    {doc_blackbox_record}

    """
    run = Run.begin(dict(locals()), CGDOptions)
    adata, options = run.adata, run.options
    src = adata.X if layer is None else adata.layers.get(layer)
    aside = copies_aside(src)  # the layer's copy made beside the search, and checked there
    # with given genes the search reads the cluster's cells only (the set-up checks them); the gene ranking reads all
    ctx = run.setup(check_matrix=not aside or genes is None)
    _check_classes(ctx, options)
    classes = ctx.adapter.classes
    if genes is None:
        order = _sign_genes_table(ctx.X, ctx.genes, ctx.labels, options.sign_method)["gene"].to_numpy()
        idx = pd.Index(ctx.genes).get_indexer(order)
    else:
        # adata's own gene index when the classifier's genes are its (string) names: pandas keeps its hash table
        names = adata.var_names
        index = names if ctx.var_idx is None and pd.api.types.is_string_dtype(names) else None
        idx = gene_indices(ctx, genes, None, index=index)
    rows = cluster_rows(ctx, target)
    search = {
        "alpha": options.alpha,
        "epsilon": options.epsilon,
        "new_target": None if options.new_target is None else classes.index(options.new_target),
        "exclude_new_targets": [classes.index(c) for c in options.exclude_new_targets],
        "stop_at_switch": options.stop_at_switch,
        "method": options.method,
        "rows": rows,
    }
    if aside:
        res, base, seconds = cgd_search_copying(ctx.adapter, ctx.X, idx, src=src, where=matrix_name(layer), **search)
    else:
        t0 = time.perf_counter()
        res = cgd_search(ctx.adapter, ctx.X, idx, **search)
        seconds = time.perf_counter() - t0
        base = _attacked_matrix(adata, layer, ctx, src)
    if ctx.var_idx is None:
        base[rows] = res.X
    else:
        base[np.ix_(rows, ctx.var_idx)] = res.X
    key = record_key(key_added or f"sad_cgd_{target}")
    adata.layers[key] = base
    first, last = res.summary[0], res.summary[-1]
    metrics = {
        "orig_call": classes[res.orig_call],
        "orig_score": first["frac_orig"],
        "new_target": classes[res.new_target],
        "switched": res.switched,
        "n_modified_genes": len(res.modified_genes),
        "n_genes_visited": res.n_genes_visited,
        "frac_orig": last["frac_orig"],
        "frac_new": last["frac_new"],
        # no modified values to prepare: the search starts at once
        **classifier_metrics(ctx, seconds=seconds, setup_seconds=0.0),
    }
    return run.write(
        key,
        mode="cgd",
        metrics=metrics,
        table=_summary_table(res, ctx.genes),
        resolved={},
        layers=[key],
        modified_genes=ctx.genes[res.modified_genes] if res.modified_genes else np.array([], dtype=str),
    )
