"""Model-agnostic gene-modification attacks (the adverSCarial attack modes) on AnnData.

Every function takes any classifier: ``None`` (the package's trained classifier,
:func:`~scadversarial.tl.get_model`), a torch module returning logits, an estimator with
``predict_proba`` or a callable ``X -> probabilities`` (cells x classes) with ``classes=``.
A cluster's call is the most frequent per-cell type (ties to the class listed first), its score the
fraction of its cells with that type; a flip is a change of the call from the call on the unmodified
matrix. Attacks modify only the target cluster's cells, each candidate starting from the original
matrix.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .. import _keys
from .._settings import logger, progress
from .._validate import (
    check_adata,
    check_finite,
    check_obs_key,
    get_matrix,
    h5ad_safe,
    matrix_name,
    uns_root,
)
from ..attacks._oracle import ClusterOracle
from ..attacks._protocol import ClassifierAdapter, ClassifierSpec, TiedScoresWarning, declared_genes
from ..attacks.cgd import SUMMARY_COLUMNS, cgd_search
from ..attacks.grid import grid_search
from ..attacks.max_change import max_change_search
from ..attacks.modifications import check_modification, modification_name, modified_values
from ..attacks.random_walk import random_walk_search
from ..attacks.sign_genes import distant_pairs, pairwise_pvalues, sign_genes_order
from ..attacks.single_gene import single_gene_search

__all__ = [
    "ClassifierSpec",
    "attack_overview",
    "cgd_attack",
    "grid_attack",
    "max_change_attack",
    "random_walk_attack",
    "sign_genes",
    "single_gene_attack",
]

_PRODUCER = "your annotation or `sad.pp.pseudo_labels`"
# max-change over more genes than this is slow enough (minutes on a laptop for a non-linear classifier) that the
# user is told the estimate and the usual remedy (highly variable genes) before it starts
_MANY_GENES = 5_000
# per gene and cell, the seconds a max-change question costs a non-linear classifier: measured on the 2-core
# reference machine, a 9-class CellTypist/scikit-learn model on PBMC3k (~2e-7 s per value, ~2 log2(n) questions
# per gene); an order-of-magnitude estimate, stated as such
_SECONDS_PER_VALUE = 2e-7


# ----------------------------------------------------------------------------------------------
# shared set-up
# ----------------------------------------------------------------------------------------------
@dataclass
class _Ctx:
    X: np.ndarray  # cells x genes, the classifier's input matrix
    genes: np.ndarray  # gene names of X's columns
    labels: np.ndarray  # cluster of each cell (str)
    adapter: ClassifierAdapter
    var_idx: np.ndarray | None  # columns of X in adata.var (None: identical)
    classifier_name: str


class _LognormView:
    """A sad classifier fed log-normalized values through its built-in transform."""

    def __new__(cls, model):
        import torch

        class _View(torch.nn.Module):
            def __init__(self, m) -> None:
                super().__init__()
                self.m = m
                self.classes = list(m.classes)

            def forward(self, x):
                return self.m.forward_lognorm(x)

        return _View(model)


def _setup(
    adata: AnnData,
    *,
    groupby: str,
    target: str | Sequence[str] | None,
    classifier: Any,
    classes: Sequence[str] | None,
    layer: str | None,
    batch_size: int | None,
    check_matrix: bool = True,
) -> _Ctx:
    """Check the inputs and wrap the classifier (``ctx.X`` may share memory with ``adata``: read it only).

    ``check_matrix=False`` leaves the finiteness check of the matrix to a caller that reads only part of it.
    """
    check_adata(adata)
    if not isinstance(groupby, str):
        msg = f"groupby must be the name of an adata.obs column, got {groupby!r}."
        raise TypeError(msg)
    labels = check_obs_key(adata, groupby, producer=_PRODUCER)
    cat = labels.array if isinstance(labels.dtype, pd.CategoricalDtype) else None
    by_code = cat is not None and pd.api.types.is_string_dtype(cat.categories)
    n_missing = int(np.count_nonzero(cat.codes < 0)) if by_code else int(labels.isna().sum())
    if n_missing:
        msg = f"{n_missing} cells have no cluster in adata.obs[{groupby!r}]. Drop them or fill them first."
        raise ValueError(msg)
    if by_code:  # string categories (the usual cluster column): the same labels, taken by code (no per-cell work)
        labels = np.asarray(cat.categories, dtype=object)[cat.codes]
        present = cat.categories[np.bincount(cat.codes, minlength=len(cat.categories)) > 0]
    else:
        labels = labels.astype(str).to_numpy()
        present = pd.unique(labels)
    for t in [] if target is None else ([target] if isinstance(target, str) else list(target)):
        if t not in set(present):
            msg = f"Target cluster {t!r} not found in adata.obs[{groupby!r}] (clusters: {sorted(map(str, present))}). Pass one of them as target=."
            raise ValueError(msg)
    name = None
    if classifier is None:
        from ._models import get_model

        classifier = get_model(adata, _keys.STEP_CLASSIFIER)
    model = classifier.model if isinstance(classifier, ClassifierSpec) else classifier
    if hasattr(model, "forward_lognorm") and hasattr(model, "classes"):
        name = "sad classifier"
        if layer == _keys.LAYER_LOGNORM:  # the classifier scales the log-normalized values itself
            spec = classifier if isinstance(classifier, ClassifierSpec) else ClassifierSpec(model)
            genes = spec.genes if spec.genes is not None else declared_genes(model)
            classifier = ClassifierSpec(_LognormView(model), classes=spec.classes, genes=genes, output=spec.output)
    adapter = ClassifierAdapter(classifier, classes, batch_size=batch_size)
    if adapter.genes is not None:  # the classifier's genes, taken from adata by name
        X = _aligned_matrix(adata, adapter.genes, layer, check=check_matrix)
        genes = np.asarray(adapter.genes)
        var_idx = None if adata.var_names.equals(pd.Index(genes)) else adata.var_names.get_indexer(genes)
    else:
        X = get_matrix(adata, layer, check=check_matrix)
        genes = adata.var_names.to_numpy().astype(str)
        var_idx = None
    name = name or adapter.kind
    n_feat = adapter.n_features
    if n_feat is not None and n_feat != X.shape[1]:
        msg = (
            f"The classifier expects {n_feat} genes but the matrix ({'X' if layer is None else layer!r}) has {X.shape[1]}. "
            "Pass the matrix the classifier was trained on (layer=...), or subset adata to its genes."
        )
        raise ValueError(msg)
    # probe the classifier on the first cell(s) (a torch module gets one whole block: the work of one padded
    # cell, without the padding copy): wrong input or output shapes fail here, before anything is written
    sample = X[: adapter.block_rows]
    if not check_matrix and target is not None:  # only the target's cells are known to be checked: probe on them
        sample = X[
            np.flatnonzero(np.isin(labels, [target] if isinstance(target, str) else list(target)))[: len(sample)]
        ]
        check_finite(sample, "The target cluster's expression")
    try:
        probe = adapter(sample)
    except (RuntimeError, ValueError) as err:
        msg = f"The classifier failed on a {X.shape[1]}-gene matrix ({err}). Check that it takes this matrix (layer=...) and returns probabilities."
        raise ValueError(msg) from err
    if probe.shape[1] < 2:
        msg = f"The classifier returned {probe.shape[1]} probability column(s); a cell-type classifier needs at least 2 classes."
        raise ValueError(msg)
    adapter.reset_counter()
    return _Ctx(X=X, genes=genes, labels=labels, adapter=adapter, var_idx=var_idx, classifier_name=name)


def _aligned_matrix(adata: AnnData, genes: list[str], layer: str | None, *, check: bool) -> np.ndarray:
    """``adata``'s matrix with the columns of the classifier's ``genes``, in their order (missing: a KeyError)."""
    idx = adata.var_names.get_indexer(pd.Index(genes))
    if (idx < 0).any():
        absent = [g for g, i in zip(genes, idx, strict=True) if i < 0]
        shown = ", ".join(absent[:10]) + (", ..." if len(absent) > 10 else "")
        msg = (
            f"The classifier reads {len(genes)} genes; {len(absent)} are missing from adata.var_names: {shown}. "
            "Pass an AnnData with all of its genes (e.g. before subsetting to highly variable genes, or "
            "`adata.raw.to_adata()`), or declare the genes it reads: classifier=ClassifierSpec(model, genes=[...])."
        )
        raise KeyError(msg)
    if adata.var_names.equals(pd.Index(genes)):
        return get_matrix(adata, layer, check=check)
    # the classifier's columns first, then dense: a whole transcriptome is never densified for a few genes
    X = get_matrix(adata, layer, dense=False, check=False)[:, idx]
    X = X.toarray() if sparse.issparse(X) else np.asarray(X)
    X = X.astype(np.float32, copy=False)
    if check:
        check_finite(X, matrix_name(layer))
    return X


def _warn_ties(ctx: _Ctx, where: str) -> None:
    """Warn (:class:`~scadversarial.attacks._protocol.TiedScoresWarning`) when classified rows had tied top scores."""
    msg = ctx.adapter.tie_message(where)
    if msg is not None:
        warnings.warn(msg, TiedScoresWarning, stacklevel=3)


def _warn_many_genes(ctx: _Ctx, n_genes: int, n_cells: int, what: str) -> None:
    """Log how long max-change over many genes may take, and the usual remedy."""
    if n_genes <= _MANY_GENES:
        return
    linear = ctx.adapter.linear_head() is not None
    # ~2 log2(n) questions per gene on the cluster's cells (an upper estimate; a linear classifier is much faster)
    seconds = _SECONDS_PER_VALUE * n_genes * n_cells * 2 * np.log2(max(n_genes, 2)) * (0.05 if linear else 1.0)
    logger.warning(
        "%s searches %d genes on %d cells: expect roughly %.0f s (order of magnitude). Restrict it to the highly "
        "variable genes (genes=adata.var_names[adata.var['highly_variable']]) or a gene budget to make it faster.",
        what,
        n_genes,
        n_cells,
        seconds,
    )


def _gene_positions(ctx: _Ctx, names: list[str], index: pd.Index | None = None) -> np.ndarray:
    """Positions of ``names`` among the classifier's genes (-1: not there), as ``pd.Index.get_indexer``.

    ``index``: the classifier's genes as a string :class:`pandas.Index` (``adata.var_names`` when they are adata's),
    looked up with the hash table pandas keeps with it.
    """
    if index is not None:
        return index.get_indexer(np.asarray(names, dtype=object))
    lookup = dict(zip(ctx.genes.tolist(), range(len(ctx.genes)), strict=True))
    if len(lookup) != len(ctx.genes):  # duplicated gene names: pandas raises its own error
        return pd.Index(ctx.genes).get_indexer(names)
    return np.fromiter((lookup.get(g, -1) for g in names), dtype=np.intp, count=len(names))


def _gene_indices(
    ctx: _Ctx,
    genes: Sequence[str] | None,
    exclude: Sequence[str] | None,
    *,
    what: str = "genes",
    index: pd.Index | None = None,
) -> np.ndarray:
    """Positions of ``genes`` (all by default, duplicates dropped) without ``exclude``; ``index`` as in :func:`_gene_positions`."""
    if genes is None:
        idx = np.arange(len(ctx.genes))
    else:
        genes = [genes] if isinstance(genes, str) else [str(g) for g in genes]
        pos = _gene_positions(ctx, genes, index)
        if (pos < 0).any():
            bad = [g for g, p in zip(genes, pos, strict=True) if p < 0]
            msg = f"{len(bad)} of the {what} are not among the classifier's genes: {bad[:10]}. Pass names from adata.var_names."
            raise KeyError(msg)
        idx = pd.unique(pos)  # first occurrences, in order
    if exclude is not None and len(exclude):
        drop = _gene_positions(ctx, [str(g) for g in exclude], index)
        idx = idx[~np.isin(idx, drop)]
    if len(idx) == 0:
        msg = f"No {what} left to attack. Check genes= and exclude_genes=."
        raise ValueError(msg)
    return idx


def _oracle(
    ctx: _Ctx, target: str, modification, *, rng, fixed_value, aberrant_factor, batch_bytes, cache=None, like=None
) -> ClusterOracle:
    """The target cluster's oracle; its ``setup_seconds`` is the time spent on the modified values and the unmodified call.

    ``like``: an oracle of the same cluster and classifier, whose unmodified call is reused.
    """
    t0 = time.perf_counter()
    rows = np.flatnonzero(ctx.labels == target)
    mods = modification if isinstance(modification, list) else [modification]
    Vs = [
        modified_values(ctx.X, rows, m, fixed_value=fixed_value, aberrant_factor=aberrant_factor, rng=rng, cache=cache)
        for m in mods
    ]
    if like is None:
        oracle = ClusterOracle(ctx.adapter, ctx.X[rows], Vs, batch_bytes=batch_bytes)
    else:
        oracle = like.with_values(Vs)
    oracle.setup_seconds = time.perf_counter() - t0
    return oracle


def _classes(ctx: _Ctx) -> list[str]:
    return ctx.adapter.classes


def _na_idx(ctx: _Ctx, na_class: str | Sequence[str] | None) -> list[int]:
    if na_class is None:
        return []
    names = [na_class] if isinstance(na_class, str) else list(na_class)
    return [i for i, c in enumerate(_classes(ctx)) if c in names]


def _check_method(method: str) -> None:
    if method not in ("fast", "plain"):
        msg = (
            f"method must be 'fast' (stacked calls) or 'plain' (one call per candidate, the reference), got {method!r}."
        )
        raise ValueError(msg)


def _key(key: str) -> str:
    return str(key).replace("/", "_")


def _store(adata: AnnData, key: str, *, mode: str, params: dict, metrics: dict, table: pd.DataFrame, **extra) -> None:
    root = uns_root(adata)
    attacks = root.setdefault(_keys.STEP_ATTACKS, {})
    attacks[key] = h5ad_safe(
        {"kind": "blackbox", "mode": mode, "params": params, "metrics": metrics, "table": table, **extra}
    )


def _mod_params(modification) -> str:
    return modification_name(modification)


# ----------------------------------------------------------------------------------------------
# single gene
# ----------------------------------------------------------------------------------------------
def single_gene_attack(
    adata: AnnData,
    *,
    groupby: str,
    target: str,
    classifier: Any = None,
    classes: Sequence[str] | None = None,
    layer: str | None = None,
    modification: str | Callable = "perc99",
    fixed_value: float = 3.0,
    aberrant_factor: float = 1e4,
    genes: Sequence[str] | None = None,
    exclude_genes: Sequence[str] | None = None,
    first_dichot: int = 100,
    max_split_size: int = 1,
    return_first_found: bool = False,
    change_type: str = "any",
    na_class: str | Sequence[str] | None = "NA",
    method: str = "fast",
    batch_size: int | None = None,
    batch_bytes: int = 16 * 2**20,
    random_state: int = 0,
    key_added: str | None = None,
) -> pd.DataFrame:
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
    adata
        Annotated data matrix.
    groupby
        ``.obs`` column with the clusters.
    target
        The cluster to attack.
    classifier
        ``None`` (the trained sad classifier), a torch module returning logits, a CellTypist ``Model``
        (fed log1p-normalized values: pass that layer), an estimator with ``predict_proba`` (a scikit-learn
        ``Pipeline`` included), a callable ``X -> probabilities``, or a :class:`ClassifierSpec` naming the
        model's ``genes`` and ``output`` (``'logits'``: decision values, which do not tie when probabilities
        underflow). A classifier that declares its genes (``genes=``, ``var_names``, ``features``,
        ``feature_names_in_``) gets exactly those columns of ``adata``, by name; a missing gene is a KeyError
        naming it. Cells whose top scores tie are counted (``metrics['n_tied_rows']``) and warned about
        (:class:`~scadversarial.attacks._protocol.TiedScoresWarning`).
    classes
        Class names of the probability columns (for callables or modules without ``classes``).
    layer
        Matrix to attack (default ``X``). With a sad classifier and ``layer='sad_lognorm'``, the
        classifier scales the log-normalized values itself.
    modification
        ``'perc1'``, ``'perc99'``, ``'decile+N'`` / ``'decile-N'``, ``'random'``, ``'positive_aberrant'``,
        ``'negative_aberrant'``, ``'fixed'`` or a callable ``fn(x_target, x_all)`` (see
        :mod:`scadversarial.attacks.modifications`). ``'random'`` values are drawn once per call
        (seeded), so the same gene always gets the same random values.
    fixed_value
        Value of ``modification='fixed'``.
    aberrant_factor
        Multiplier of the gene's max for the aberrant modifications.
    genes
        Restrict the search to these genes (in this order).
    exclude_genes
        Genes never modified.
    first_dichot
        Number of round-robin bins.
    max_split_size
        Flipping gene lists of at most this size are recorded.
    return_first_found
        Stop at the first record (depth-first order).
    change_type
        ``'any'``, or ``'not_na'`` to ignore flips to the class(es) ``na_class`` (an abstaining classifier).
    na_class
        Name(s) of the "no call" class.
    method
        ``'fast'`` or ``'plain'``.
    batch_size
        Rows per forward pass of a torch classifier.
    batch_bytes
        Largest stacked call, in bytes of input.
    random_state
        Seed of ``modification='random'``.
    key_added
        Key in ``.uns['sad']['attacks']`` (default ``'single_gene_<target>_<modification>'``).

    Returns
    -------
    A DataFrame, one row per record in depth-first order: ``gene`` (genes joined by ``'__'`` when
    ``max_split_size > 1``), ``n_genes``, ``new_call``, ``score`` (fraction of the cluster's cells with
    the new call), ``cluster``, ``modification``, ``orig_call``.

    Writes ``.uns['sad']['attacks'][key_added]``: ``kind='blackbox'``, ``mode='single_gene'``,
    ``params``, ``metrics`` (``orig_call``, ``orig_score``, ``n_found``, ``n_calls``, ``n_rows``,
    ``n_tested``, ``seconds``, ``setup_seconds``: the part of ``seconds`` spent on the modified values
    and the unmodified call) and ``table`` (the DataFrame's columns as arrays).

    """
    modification = check_modification(modification)
    _check_method(method)
    if change_type not in ("any", "not_na"):
        msg = f"change_type must be 'any' or 'not_na', got {change_type!r}."
        raise ValueError(msg)
    ctx = _setup(
        adata,
        groupby=groupby,
        target=target,
        classifier=classifier,
        classes=classes,
        layer=layer,
        batch_size=batch_size,
    )
    idx = _gene_indices(ctx, genes, exclude_genes)
    t0 = time.perf_counter()
    oracle = _oracle(
        ctx,
        target,
        modification,
        rng=np.random.default_rng(random_state),
        fixed_value=fixed_value,
        aberrant_factor=aberrant_factor,
        batch_bytes=batch_bytes,
    )
    res = single_gene_search(
        oracle,
        idx,
        first_dichot=first_dichot,
        max_split_size=max_split_size,
        return_first_found=return_first_found,
        change_type=change_type,
        na_classes=_na_idx(ctx, na_class),
        method=method,
    )
    seconds = time.perf_counter() - t0
    classes_ = _classes(ctx)
    table = pd.DataFrame(
        {
            "gene": ["__".join(ctx.genes[g]) for g in res.genes],
            "n_genes": np.array([len(g) for g in res.genes], dtype=np.int64),
            "new_call": [classes_[c] for c in res.calls],
            "score": np.asarray(res.scores, dtype=float),
        }
    )
    table["cluster"] = target
    table["modification"] = modification_name(modification)
    table["orig_call"] = classes_[oracle.orig_call]
    key = _key(key_added or f"single_gene_{target}_{modification_name(modification)}")
    metrics = {
        "orig_call": classes_[oracle.orig_call],
        "orig_score": oracle.orig_score,
        "n_found": len(table),
        "n_calls": ctx.adapter.n_calls,
        "n_tied_rows": ctx.adapter.n_tied,
        "n_rows": ctx.adapter.n_rows,
        "n_tested": res.n_tested,
        "seconds": seconds,
        "setup_seconds": oracle.setup_seconds,
    }
    params = {
        "groupby": groupby,
        "target": target,
        "layer": layer or "X",
        "modification": modification_name(modification),
        "fixed_value": fixed_value,
        "aberrant_factor": aberrant_factor,
        "first_dichot": first_dichot,
        "max_split_size": max_split_size,
        "return_first_found": return_first_found,
        "change_type": change_type,
        "method": method,
        "random_state": random_state,
        "classifier": ctx.classifier_name,
        "output": ctx.adapter.output,
        "n_genes_searched": len(idx),
    }
    _store(adata, key, mode="single_gene", params=params, metrics=metrics, table=table)
    _warn_ties(ctx, f"single_gene_attack on {target!r}")
    logger.info(
        "single_gene_attack %s/%s: %d genes flip the call (%d calls)",
        target,
        params["modification"],
        len(table),
        ctx.adapter.n_calls,
    )
    return table


# ----------------------------------------------------------------------------------------------
# max change
# ----------------------------------------------------------------------------------------------
def max_change_attack(
    adata: AnnData,
    *,
    groupby: str,
    target: str,
    classifier: Any = None,
    classes: Sequence[str] | None = None,
    layer: str | None = None,
    modification: str | Callable = "perc99",
    fixed_value: float = 3.0,
    aberrant_factor: float = 1e4,
    genes: Sequence[str] | None = None,
    exclude_genes: Sequence[str] | None = None,
    max_split_size: int = 1,
    method: str = "fast",
    batch_size: int | None = None,
    batch_bytes: int = 16 * 2**20,
    random_state: int = 0,
    key_added: str | None = None,
) -> pd.DataFrame:
    """Find the largest gene set whose joint modification keeps the target cluster's call.

    adverSCarial's recursive halving: a half that keeps the call alone is merged with the genes kept
    so far if the union still keeps it, otherwise (or when it flips alone) it is split again; the
    order of the two halves of each split is drawn from ``random_state``. The kept genes, modified
    together, keep the call; the other genes are the cluster's *signature* for this classifier.
    ``method='fast'`` (speculative stacked calls) returns exactly the result of ``method='plain'``.

    Parameters
    ----------
    adata, groupby, target, classifier, classes, layer, modification, fixed_value, aberrant_factor, genes, exclude_genes
        As in :func:`single_gene_attack`.
    max_split_size
        Gene lists of at most this size are not split further (1: the largest set).
    method
        ``'fast'`` or ``'plain'``.
    batch_size, batch_bytes
        As in :func:`single_gene_attack`.
    random_state
        Seed of the halves' order (and of ``modification='random'``).
    key_added
        Key in ``.uns['sad']['attacks']`` (default ``'max_change_<target>_<modification>'``).

    Returns
    -------
    A DataFrame, one row per searched gene: ``gene``, ``kept`` (bool: modified in the max-change
    attack), ``signature`` (bool: not kept), ``cluster``, ``modification``.

    Writes ``.uns['sad']['attacks'][key_added]``: ``kind='blackbox'``, ``mode='max_change'``,
    ``params``, ``metrics`` (``orig_call``, ``orig_score``, ``n_kept``, ``n_signature``, ``call`` and
    ``score`` with all kept genes modified, ``n_questions``, ``n_tested``, ``n_calls``, ``n_rows``,
    ``seconds``, ``setup_seconds``) and ``table``.

    """
    modification = check_modification(modification)
    _check_method(method)
    ctx = _setup(
        adata,
        groupby=groupby,
        target=target,
        classifier=classifier,
        classes=classes,
        layer=layer,
        batch_size=batch_size,
    )
    idx = _gene_indices(ctx, genes, exclude_genes)
    _warn_many_genes(ctx, len(idx), int(np.count_nonzero(ctx.labels == target)), "max_change_attack")
    t0 = time.perf_counter()
    rng = np.random.default_rng(random_state)
    oracle = _oracle(
        ctx,
        target,
        modification,
        rng=rng,
        fixed_value=fixed_value,
        aberrant_factor=aberrant_factor,
        batch_bytes=batch_bytes,
    )
    res = max_change_search(oracle, idx, max_split_size=max_split_size, random_state=rng, method=method)
    seconds = time.perf_counter() - t0
    classes_ = _classes(ctx)
    kept = np.isin(idx, res.kept)
    table = pd.DataFrame({"gene": ctx.genes[idx], "kept": kept, "signature": ~kept})
    table["cluster"] = target
    table["modification"] = modification_name(modification)
    key = _key(key_added or f"max_change_{target}_{modification_name(modification)}")
    metrics = {
        "orig_call": classes_[oracle.orig_call],
        "orig_score": oracle.orig_score,
        "n_kept": int(kept.sum()),
        "n_signature": int((~kept).sum()),
        "call": classes_[res.call],
        "score": res.score,
        "n_questions": res.n_questions,
        "n_tested": res.n_tested,
        "n_calls": ctx.adapter.n_calls,
        "n_tied_rows": ctx.adapter.n_tied,
        "n_rows": ctx.adapter.n_rows,
        "seconds": seconds,
        "setup_seconds": oracle.setup_seconds,
    }
    params = {
        "groupby": groupby,
        "target": target,
        "layer": layer or "X",
        "modification": modification_name(modification),
        "fixed_value": fixed_value,
        "aberrant_factor": aberrant_factor,
        "max_split_size": max_split_size,
        "method": method,
        "random_state": random_state,
        "classifier": ctx.classifier_name,
        "output": ctx.adapter.output,
        "kept_order": ctx.genes[res.kept],
    }
    _store(adata, key, mode="max_change", params=params, metrics=metrics, table=table)
    _warn_ties(ctx, f"max_change_attack on {target!r}")
    return table


# ----------------------------------------------------------------------------------------------
# sign genes and CGD
# ----------------------------------------------------------------------------------------------
def _sign_genes_table(X, genes, labels, method) -> pd.DataFrame:
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


def sign_genes(
    adata: AnnData,
    *,
    groupby: str,
    layer: str | None = None,
    method: str = "wilcoxon",
    key_added: str = "sign_genes",
) -> pd.DataFrame:
    """Rank genes by how well they separate pairs of clusters (adverSCarial's ``getSignGenes``).

    For every pair of clusters (ordered so consecutive pairs share no cluster where possible), genes
    are ranked by the p-value of a two-sided test between the two clusters; the final ranking takes
    the best gene of every pair, then the second best, and so on, each gene once.

    Parameters
    ----------
    adata
        Annotated data matrix.
    groupby
        ``.obs`` column with the clusters.
    layer
        Matrix to test (default ``X``).
    method
        ``'wilcoxon'`` (Mann-Whitney U) or ``'t-test'`` (Welch).
    key_added
        Key in ``.uns['sad']['attacks']``.

    Returns
    -------
    A DataFrame, one row per gene in ranking order: ``gene``, ``rank`` (1 = best), ``pval`` (the
    p-value that placed it), ``cluster_1`` and ``cluster_2`` (the pair).

    Writes ``.uns['sad']['attacks'][key_added]``: ``kind='ranking'``, ``params`` and ``table``.

    """
    check_adata(adata)
    if method not in ("wilcoxon", "t-test", "ttest"):
        msg = f"method must be 'wilcoxon' or 't-test', got {method!r}."
        raise ValueError(msg)
    labels = check_obs_key(adata, groupby, producer=_PRODUCER)
    if labels.isna().any():
        msg = (
            f"{int(labels.isna().sum())} cells have no cluster in adata.obs[{groupby!r}]. Drop them or fill them first."
        )
        raise ValueError(msg)
    X = get_matrix(adata, layer)
    table = _sign_genes_table(X, adata.var_names.to_numpy().astype(str), labels.astype(str).to_numpy(), method)
    root = uns_root(adata)
    root.setdefault(_keys.STEP_ATTACKS, {})[_key(key_added)] = h5ad_safe(
        {
            "kind": "ranking",
            "mode": "sign_genes",
            "params": {"groupby": groupby, "layer": layer or "X", "method": method},
            "metrics": {},
            "table": table,
        }
    )
    return table


def _copy_checked(src: np.ndarray, where: str) -> np.ndarray:
    """A C-ordered copy of ``src``, checked to be finite (:func:`~scadversarial._validate.check_finite`)."""
    out = np.array(src, order="C", copy=True)
    check_finite(out, where)
    return out


def cgd_attack(
    adata: AnnData,
    *,
    groupby: str,
    target: str,
    classifier: Any = None,
    classes: Sequence[str] | None = None,
    layer: str | None = None,
    genes: Sequence[str] | None = None,
    alpha: float = 0.1,
    epsilon: float = 0.0,
    new_target: str | None = None,
    exclude_new_targets: Sequence[str] = (),
    stop_at_switch: bool = True,
    sign_method: str = "wilcoxon",
    method: str = "fast",
    batch_size: int | None = None,
    key_added: str | None = None,
) -> pd.DataFrame:
    """Cluster-based gradient descent: step genes one by one until the cluster switches type.

    For each gene (in ``genes`` order; default the :func:`sign_genes` ranking), on the target cells
    not already called the new target, the trial step ``x -> (1 + alpha*sign(x))*x + epsilon`` is
    classified; per cell, if the new target's probability rose more than the original type's the
    step is committed, if it rose less the opposite step ``x -> (1 - alpha*sign(x))*x - epsilon`` is
    committed. After each gene the new target is the most frequent other per-cell type of the
    cluster (class order breaks ties). The attack stops when the new target is called for more
    cells than the original type (unless ``stop_at_switch=False``). ``method='fast'`` makes one
    classifier call per gene on the rows that can change and returns the same result as
    ``method='plain'`` (two calls per gene on the whole cluster, as the R package).

    Parameters
    ----------
    adata, groupby, target, classifier, classes, layer
        As in :func:`single_gene_attack`.
    genes
        Genes in the order they are visited (default: :func:`sign_genes` on the attacked matrix).
    alpha, epsilon
        Multiplicative and additive step sizes.
    new_target
        The first new target (default: chosen from the cluster's predictions).
    exclude_new_targets
        Classes never chosen as new target.
    stop_at_switch
        Stop when the new target outnumbers the original type.
    sign_method
        Test of the default gene ranking.
    method
        ``'fast'`` or ``'plain'``.
    batch_size
        Rows per forward pass of a torch classifier.
    key_added
        Name of the layer and of the record (default ``'sad_cgd_<target>'``).

    Returns
    -------
    The per-gene summary as a DataFrame, one row per visited gene (``order=0`` is the start):
    ``order``, ``gene``, ``n_modified_cells``, ``frac_orig`` and ``frac_new`` (fractions of the
    cluster's cells called the original type / the new target), ``proba_orig_cells`` and
    ``proba_new_cells`` (mean probability of that type over the cells called it),
    ``proba_orig_cluster`` and ``proba_new_cluster`` (over the whole cluster).

    Writes ``.layers[key_added]`` (the attacked matrix: the cluster's cells modified, other cells
    and genes unchanged) and ``.uns['sad']['attacks'][key_added]``: ``kind='blackbox'``,
    ``mode='cgd'``, ``params``, ``layers``, ``metrics`` (``orig_call``, ``new_target``, ``switched``,
    ``n_modified_genes``, ``n_genes_visited``, ``frac_orig``, ``frac_new``, ``n_calls``, ``n_rows``,
    ``seconds``, ``setup_seconds``), ``modified_genes`` and ``table``.

    """
    _check_method(method)
    # The attacked layer is a private copy of adata's matrix with the cluster's rows written back. A large float32
    # array (the usual case) is copied on a second thread, started at once: the copy (memory bound, mostly page
    # faults) overlaps the checks and the search, which only read the matrix (numpy releases the GIL while it
    # copies). The copy also checks that the matrix is finite (so the main thread checks only what it reads first).
    # The layer waits for it and an error of the copy propagates before anything is written; after an error of the
    # checks the copy finishes on its own, unused. Otherwise the layer is ctx.X itself when that is already a new array (sparse or
    # converted input), else a copy made after the search.
    src = None
    if isinstance(adata, AnnData) and (layer is None or layer in adata.layers):
        src = adata.X if layer is None else adata.layers[layer]
    n_cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    pool = None
    if isinstance(src, np.ndarray) and src.dtype == np.float32 and src.nbytes >= 1 << 22 and n_cpus > 1:
        pool = ThreadPoolExecutor(max_workers=1)
    try:
        copied = pool.submit(_copy_checked, src, matrix_name(layer)) if pool is not None else None
        ctx = _setup(
            adata,
            groupby=groupby,
            target=target,
            classifier=classifier,
            classes=classes,
            layer=layer,
            batch_size=batch_size,
            # the copy checks the whole matrix; with given genes the search reads the cluster's cells only (it
            # checks them), without them the gene ranking reads every cell
            check_matrix=copied is None or genes is None,
        )
        classes_ = _classes(ctx)
        for name, val in (
            ("new_target", [] if new_target is None else [new_target]),
            ("exclude_new_targets", list(exclude_new_targets)),
        ):
            bad = [v for v in val if v not in classes_]
            if bad:
                msg = f"{name} {bad} not among the classifier's classes {classes_}."
                raise ValueError(msg)
        if genes is None:
            order = _sign_genes_table(ctx.X, ctx.genes, ctx.labels, sign_method)["gene"].to_numpy()
            idx = pd.Index(ctx.genes).get_indexer(order)
        else:
            # adata's own gene index when the classifier's genes are its (string) names: pandas keeps its hash table
            names = adata.var_names
            index = names if ctx.var_idx is None and pd.api.types.is_string_dtype(names) else None
            idx = _gene_indices(ctx, genes, None, index=index)
        key = _key(key_added or f"sad_cgd_{target}")
        rows = np.flatnonzero(ctx.labels == target)
        t0 = time.perf_counter()
        res = cgd_search(
            ctx.adapter,
            ctx.X,
            idx,
            alpha=alpha,
            epsilon=epsilon,
            new_target=None if new_target is None else classes_.index(new_target),
            exclude_new_targets=[classes_.index(c) for c in exclude_new_targets],
            stop_at_switch=stop_at_switch,
            method=method,
            rows=rows,
        )
        seconds = time.perf_counter() - t0
        if copied is not None:  # a float32 copy of src: what get_matrix(adata, layer, copy=True) returns
            base = copied.result()
        elif ctx.var_idx is not None:
            base = get_matrix(adata, layer, copy=True)
        elif sparse.issparse(src) or (isinstance(src, np.ndarray) and not np.may_share_memory(ctx.X, src)):
            base = ctx.X
        else:
            base = ctx.X.copy()
    finally:
        if pool is not None:
            pool.shutdown(wait=False)
    columns = {}  # the summary's numeric columns typed here (no inference), gene names as pandas infers them
    for c in SUMMARY_COLUMNS:
        values = [row[c] for row in res.summary]
        if c == "gene":
            columns[c] = ["" if g < 0 else ctx.genes[g] for g in values]
        else:
            columns[c] = np.array(values, dtype=np.int64 if c in ("order", "n_modified_cells") else np.float64)
    table = pd.DataFrame(columns, copy=False)
    if ctx.var_idx is None:
        base[rows] = res.X
    else:
        base[np.ix_(rows, ctx.var_idx)] = res.X
    adata.layers[key] = base
    last = res.summary[-1]
    metrics = {
        "orig_call": classes_[res.orig_call],
        "new_target": classes_[res.new_target],
        "switched": res.switched,
        "n_modified_genes": len(res.modified_genes),
        "n_genes_visited": res.n_genes_visited,
        "frac_orig": last["frac_orig"],
        "frac_new": last["frac_new"],
        "n_calls": ctx.adapter.n_calls,
        "n_tied_rows": ctx.adapter.n_tied,
        "n_rows": ctx.adapter.n_rows,
        "seconds": seconds,
        "setup_seconds": 0.0,  # no modified values to prepare: the search starts at once
    }
    params = {
        "groupby": groupby,
        "target": target,
        "layer": layer or "X",
        "alpha": alpha,
        "epsilon": epsilon,
        "new_target": new_target or "auto",
        "exclude_new_targets": list(exclude_new_targets),
        "stop_at_switch": stop_at_switch,
        "genes": "sign_genes" if genes is None else "given",
        "method": method,
        "classifier": ctx.classifier_name,
        "output": ctx.adapter.output,
    }
    _store(
        adata,
        key,
        mode="cgd",
        params=params,
        metrics=metrics,
        table=table,
        layers=[key],
        modified_genes=ctx.genes[res.modified_genes] if res.modified_genes else np.array([], dtype=str),
    )
    _warn_ties(ctx, f"cgd_attack on {target!r}")
    return table


# ----------------------------------------------------------------------------------------------
# random walk and grid
# ----------------------------------------------------------------------------------------------
def _mods_list(modifications) -> list:
    if isinstance(modifications, str) or callable(modifications):
        modifications = [modifications]
    mods = [check_modification(m) for m in modifications]
    if not mods:
        msg = "Pass at least one modification."
        raise ValueError(msg)
    return mods


def random_walk_attack(
    adata: AnnData,
    *,
    groupby: str,
    target: str,
    classifier: Any = None,
    classes: Sequence[str] | None = None,
    layer: str | None = None,
    genes: Sequence[str] | None = None,
    modifications: Sequence[str | Callable] = ("perc1", "perc99"),
    fixed_value: float = 3.0,
    aberrant_factor: float = 1e4,
    first_batch: int = 100,
    walk_length: int = 100,
    step_change_ratio: float = 0.2,
    max_tries: int = 10000,
    change_type: str = "any",
    na_class: str | Sequence[str] | None = "NA",
    method: str = "fast",
    batch_size: int | None = None,
    batch_bytes: int = 16 * 2**20,
    random_state: int = 0,
    key_added: str | None = None,
) -> pd.DataFrame:
    """Random walk towards the fewest modified genes that still flip the target cluster's call.

    Random assignments of a modification (or none) to each gene are tried until one flips the call
    (the seed); then, for ``walk_length`` steps, a smaller assignment is drawn around the best one and
    kept when it still flips the call. ``method='fast'`` (stacked, speculative) returns exactly the
    walk of ``method='plain'`` for the same ``random_state``.

    Parameters
    ----------
    adata, groupby, target, classifier, classes, layer, fixed_value, aberrant_factor
        As in :func:`single_gene_attack`.
    genes
        Genes the walk may modify (default all).
    modifications
        The modifications a gene can take.
    first_batch
        Random assignments tried to find a seed.
    walk_length
        Walk steps.
    step_change_ratio
        Probability of redrawing a modified gene at each step.
    max_tries
        Proposals drawn per step before the walk gives up.
    change_type, na_class
        As in :func:`single_gene_attack`.
    method, batch_size, batch_bytes
        As in :func:`single_gene_attack`.
    random_state
        Seed of the walk.
    key_added
        Key in ``.uns['sad']['attacks']`` (default ``'random_walk_<target>'``).

    Returns
    -------
    The best attack found, one row per modified gene: ``gene``, ``modification``, ``new_call``,
    ``score``, ``cluster`` (empty when no seed flipped the call).

    Writes ``.uns['sad']['attacks'][key_added]``: ``kind='blackbox'``, ``mode='random_walk'``,
    ``params``, ``metrics`` (``orig_call``, ``found``, ``n_genes``, ``new_call``, ``score``,
    ``n_tested``, ``n_calls``, ``n_rows``, ``seconds``, ``setup_seconds``), ``table`` and ``history`` (``step``,
    ``n_genes``, ``call``, ``score`` of every improvement).

    """
    mods = _mods_list(modifications)
    _check_method(method)
    ctx = _setup(
        adata,
        groupby=groupby,
        target=target,
        classifier=classifier,
        classes=classes,
        layer=layer,
        batch_size=batch_size,
    )
    idx = _gene_indices(ctx, genes, None)
    rng = np.random.default_rng(random_state)
    t0 = time.perf_counter()
    oracle = _oracle(
        ctx, target, mods, rng=rng, fixed_value=fixed_value, aberrant_factor=aberrant_factor, batch_bytes=batch_bytes
    )
    res = random_walk_search(
        oracle,
        idx,
        first_batch=first_batch,
        walk_length=walk_length,
        step_change_ratio=step_change_ratio,
        max_tries=max_tries,
        change_type=change_type,
        na_classes=_na_idx(ctx, na_class),
        random_state=rng,
        method=method,
    )
    seconds = time.perf_counter() - t0
    classes_ = _classes(ctx)
    names = [modification_name(m) for m in mods]
    if res.best is None:
        table = pd.DataFrame(
            {
                "gene": pd.Series(dtype=str),
                "modification": pd.Series(dtype=str),
                "new_call": pd.Series(dtype=str),
                "score": pd.Series(dtype=float),
            }
        )
    else:
        sel = np.flatnonzero(res.best >= 0)
        table = pd.DataFrame(
            {
                "gene": ctx.genes[sel],
                "modification": [names[m] for m in res.best[sel]],
                "new_call": classes_[res.best_call],
                "score": res.best_score,
            }
        )
    table["cluster"] = target
    history = pd.DataFrame(res.history, columns=["step", "n_genes", "call", "score"])
    history["call"] = [classes_[int(c)] for c in history["call"]]
    metrics = {
        "orig_call": classes_[oracle.orig_call],
        "found": res.best is not None,
        "n_genes": len(table),
        "new_call": classes_[res.best_call] if res.best is not None else "",
        "score": res.best_score,
        "n_tested": res.n_tested,
        "n_calls": ctx.adapter.n_calls,
        "n_tied_rows": ctx.adapter.n_tied,
        "n_rows": ctx.adapter.n_rows,
        "seconds": seconds,
        "setup_seconds": oracle.setup_seconds,
    }
    params = {
        "groupby": groupby,
        "target": target,
        "layer": layer or "X",
        "modifications": names,
        "first_batch": first_batch,
        "walk_length": walk_length,
        "step_change_ratio": step_change_ratio,
        "change_type": change_type,
        "method": method,
        "random_state": random_state,
        "classifier": ctx.classifier_name,
        "output": ctx.adapter.output,
    }
    _store(
        adata,
        _key(key_added or f"random_walk_{target}"),
        mode="random_walk",
        params=params,
        metrics=metrics,
        table=table,
        history=history,
    )
    _warn_ties(ctx, f"random_walk_attack on {target!r}")
    if res.best is None:
        logger.warning(
            "random_walk_attack: no random assignment flipped the call of %r; try a larger first_batch.", target
        )
    return table


def grid_attack(
    adata: AnnData,
    *,
    groupby: str,
    target: str,
    genes: Sequence[str],
    classifier: Any = None,
    classes: Sequence[str] | None = None,
    layer: str | None = None,
    modifications: Sequence[str | Callable] = ("perc1", "perc99"),
    fixed_value: float = 3.0,
    aberrant_factor: float = 1e4,
    return_first_found: bool = False,
    change_type: str = "any",
    na_class: str | Sequence[str] | None = "NA",
    max_combinations: int = 100_000,
    method: str = "fast",
    batch_size: int | None = None,
    batch_bytes: int = 16 * 2**20,
    random_state: int = 0,
    key_added: str | None = None,
) -> pd.DataFrame:
    """Classify every combination of modifications (or none) of a handful of genes.

    Combinations come smallest first (fewest modified genes), so with ``return_first_found=True``
    the search stops at a smallest flipping combination.

    Parameters
    ----------
    adata, groupby, target, classifier, classes, layer, fixed_value, aberrant_factor
        As in :func:`single_gene_attack`.
    genes
        The few genes of the grid (``(len(modifications) + 1) ** len(genes) - 1`` combinations).
    modifications
        The modifications each gene can take.
    return_first_found
        Stop at the first flipping combination.
    change_type, na_class
        As in :func:`single_gene_attack`.
    max_combinations
        Refuse grids larger than this (combinatorial explosion).
    method, batch_size, batch_bytes
        As in :func:`single_gene_attack`.
    random_state
        Seed of ``'random'`` modifications.
    key_added
        Key in ``.uns['sad']['attacks']`` (default ``'grid_<target>'``).

    Returns
    -------
    A DataFrame, one row per combination classified: one column per gene (the modification's name
    or ``'none'``), ``n_genes_modified``, ``new_call``, ``score``, ``flipped``.

    Writes ``.uns['sad']['attacks'][key_added]``: ``kind='blackbox'``, ``mode='grid'``, ``params``,
    ``metrics`` (``orig_call``, ``n_combinations``, ``n_flipped``, ``n_calls``, ``n_rows``,
    ``seconds``, ``setup_seconds``) and ``table``.

    """
    mods = _mods_list(modifications)
    _check_method(method)
    if genes is None or len(genes) == 0:
        msg = "grid_attack needs genes=[...] (a handful of gene names)."
        raise ValueError(msg)
    n_combos = (len(mods) + 1) ** len(genes) - 1
    if n_combos > max_combinations:
        msg = (
            f"A grid over {len(genes)} genes x {len(mods)} modifications has {n_combos:,} combinations, more than "
            f"max_combinations={max_combinations:,}. Pass fewer genes or modifications, or raise max_combinations."
        )
        raise ValueError(msg)
    ctx = _setup(
        adata,
        groupby=groupby,
        target=target,
        classifier=classifier,
        classes=classes,
        layer=layer,
        batch_size=batch_size,
    )
    idx = _gene_indices(ctx, genes, None)
    t0 = time.perf_counter()
    oracle = _oracle(
        ctx,
        target,
        mods,
        rng=np.random.default_rng(random_state),
        fixed_value=fixed_value,
        aberrant_factor=aberrant_factor,
        batch_bytes=batch_bytes,
    )
    res = grid_search(
        oracle,
        idx,
        return_first_found=return_first_found,
        change_type=change_type,
        na_classes=_na_idx(ctx, na_class),
        max_combinations=max_combinations,
        method=method,
    )
    seconds = time.perf_counter() - t0
    classes_ = _classes(ctx)
    names = np.array(["none", *[modification_name(m) for m in mods]])
    table = pd.DataFrame({ctx.genes[g]: names[res.combos[:, j] + 1] for j, g in enumerate(idx)})
    table["n_genes_modified"] = (res.combos >= 0).sum(axis=1)
    table["new_call"] = [classes_[c] for c in res.calls]
    table["score"] = res.scores
    table["flipped"] = res.flipped
    metrics = {
        "orig_call": classes_[oracle.orig_call],
        "n_combinations": len(table),
        "n_flipped": int(res.flipped.sum()),
        "n_calls": ctx.adapter.n_calls,
        "n_tied_rows": ctx.adapter.n_tied,
        "n_rows": ctx.adapter.n_rows,
        "seconds": seconds,
        "setup_seconds": oracle.setup_seconds,
    }
    params = {
        "groupby": groupby,
        "target": target,
        "layer": layer or "X",
        "genes": list(ctx.genes[idx]),
        "modifications": list(names[1:]),
        "return_first_found": return_first_found,
        "change_type": change_type,
        "method": method,
        "random_state": random_state,
        "classifier": ctx.classifier_name,
        "output": ctx.adapter.output,
    }
    _store(adata, _key(key_added or f"grid_{target}"), mode="grid", params=params, metrics=metrics, table=table)
    _warn_ties(ctx, f"grid_attack on {target!r}")
    return table


# ----------------------------------------------------------------------------------------------
# overview
# ----------------------------------------------------------------------------------------------
def attack_overview(
    adata: AnnData,
    *,
    groupby: str,
    classifier: Any = None,
    classes: Sequence[str] | None = None,
    layer: str | None = None,
    clusters: Sequence[str] | None = None,
    genes: Sequence[str] | None = None,
    modifications: Sequence[str | Callable] = ("perc1", "perc99"),
    modes: Sequence[str] = ("single_gene", "max_change"),
    fixed_value: float = 3.0,
    aberrant_factor: float = 1e4,
    first_dichot: int = 100,
    max_split_size: int = 100,
    method: str = "fast",
    batch_size: int | None = None,
    batch_bytes: int = 16 * 2**20,
    random_state: int = 0,
    key_added: str = "overview",
) -> pd.DataFrame:
    """Single-gene and max-change attacks for every cluster x modification, as one table.

    Parameters
    ----------
    adata, groupby, classifier, classes, layer, fixed_value, aberrant_factor
        As in :func:`single_gene_attack`.
    clusters
        Clusters to attack (default all).
    genes
        Genes both searches may modify (default all the classifier's genes); e.g. the highly variable genes,
        to keep max-change over a whole transcriptome short.
    modifications
        Modifications to try.
    modes
        ``'single_gene'`` and/or ``'max_change'``.
    first_dichot
        Bins of the single-gene search.
    max_split_size
        ``max_split_size`` of both searches (100 by default, as the R package's overviews: faster,
        coarser; a single-gene record is then a small flipping gene group).
    method, batch_size, batch_bytes
        As in :func:`single_gene_attack`.
    random_state
        Seed of the max-change searches (and of ``'random'``).
    key_added
        Key in ``.uns['sad']['attacks']``.

    Returns
    -------
    A DataFrame, one row per cluster x modification: ``cluster``, ``modification``, ``n_cells``,
    ``orig_call``, ``orig_score`` and, per mode, ``single_gene_n_found`` (flipping records),
    ``single_gene_n_genes`` (genes in them), ``single_gene_genes`` (the records, ``';'``-separated),
    ``max_change_n_kept``, ``max_change_score``, ``max_change_signature`` (the searched genes not kept,
    ``';'``-separated: the cluster's signature for this classifier).

    Writes ``.uns['sad']['attacks'][key_added]``: ``kind='blackbox'``, ``mode='overview'``,
    ``params``, ``metrics`` (``n_calls``, ``n_rows``, ``seconds``, ``setup_seconds``) and ``table``.

    """
    mods = _mods_list(modifications)
    _check_method(method)
    modes = [modes] if isinstance(modes, str) else list(modes)
    bad = [m for m in modes if m not in ("single_gene", "max_change")]
    if bad or not modes:
        msg = f"modes must be among 'single_gene' and 'max_change', got {modes}."
        raise ValueError(msg)
    ctx = _setup(
        adata,
        groupby=groupby,
        target=clusters,
        classifier=classifier,
        classes=classes,
        layer=layer,
        batch_size=batch_size,
    )
    clusters = [str(c) for c in pd.unique(ctx.labels)] if clusters is None else list(clusters)
    classes_ = _classes(ctx)
    idx = _gene_indices(ctx, genes, None)
    if "max_change" in modes:
        n_cells = int(np.isin(ctx.labels, clusters).sum()) * len(mods)
        _warn_many_genes(ctx, len(idx), n_cells, "attack_overview's max-change")
    rng = np.random.default_rng(random_state)
    rows = []
    cache: dict = {}  # per-gene sorted values, shared by all clusters
    t0 = time.perf_counter()
    setup_seconds = 0.0  # over all clusters and modifications
    # one loop step per cluster x modification; cells and genes are batched
    for cl in progress(clusters, desc="clusters"):
        oracle = None
        for m in mods:
            oracle = _oracle(
                ctx,
                cl,
                m,
                rng=rng,
                fixed_value=fixed_value,
                aberrant_factor=aberrant_factor,
                batch_bytes=batch_bytes,
                cache=cache,
                like=oracle,  # the cluster's unmodified call and logits, once for all modifications
            )
            setup_seconds += oracle.setup_seconds
            row = {
                "cluster": cl,
                "modification": modification_name(m),
                "n_cells": oracle.n_cells,
                "orig_call": classes_[oracle.orig_call],
                "orig_score": oracle.orig_score,
            }
            if "single_gene" in modes:
                sg = single_gene_search(
                    oracle, idx, first_dichot=first_dichot, max_split_size=max_split_size, method=method
                )
                row["single_gene_n_found"] = len(sg.genes)
                row["single_gene_n_genes"] = int(sum(len(g) for g in sg.genes))
                row["single_gene_genes"] = ";".join("__".join(ctx.genes[g]) for g in sg.genes)
            if "max_change" in modes:
                mc = max_change_search(oracle, idx, max_split_size=max_split_size, random_state=rng, method=method)
                row["max_change_n_kept"] = len(mc.kept)
                row["max_change_score"] = mc.score
                row["max_change_signature"] = ";".join(ctx.genes[idx[~np.isin(idx, mc.kept)]])
            rows.append(row)
    seconds = time.perf_counter() - t0
    table = pd.DataFrame(rows)
    params = {
        "groupby": groupby,
        "layer": layer or "X",
        "clusters": clusters,
        "n_genes_searched": len(idx),
        "modifications": [modification_name(m) for m in mods],
        "modes": modes,
        "first_dichot": first_dichot,
        "max_split_size": max_split_size,
        "method": method,
        "random_state": random_state,
        "classifier": ctx.classifier_name,
        "output": ctx.adapter.output,
    }
    metrics = {
        "n_calls": ctx.adapter.n_calls,
        "n_tied_rows": ctx.adapter.n_tied,
        "n_rows": ctx.adapter.n_rows,
        "seconds": seconds,
        "setup_seconds": setup_seconds,
    }
    _store(adata, _key(key_added), mode="overview", params=params, metrics=metrics, table=table)
    _warn_ties(ctx, "attack_overview")
    return table
