"""Shared set-up of the black-box attacks: input checks, the wrapped classifier, gene positions, the oracle."""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ... import _keys
from ..._settings import logger
from ..._validate import check_adata, check_finite, check_obs_key, get_matrix, matrix_name
from ...attacks._oracle import ClusterOracle
from ...attacks._protocol import ClassifierAdapter, ClassifierSpec, TiedScoresWarning, declared_genes
from ...attacks.modifications import modified_values
from ._options import Modification

PRODUCER = "your annotation or `sad.pp.pseudo_labels`"
# max-change over more genes than this is slow enough (minutes on a laptop for a non-linear classifier) that the
# user is told the estimate and the usual remedy (highly variable genes) before it starts
_MANY_GENES = 5_000
# per gene and cell, the seconds a max-change question costs a non-linear classifier: measured on the 2-core
# reference machine, a 9-class CellTypist/scikit-learn model on PBMC3k (~2e-7 s per value, ~2 log2(n) questions
# per gene); an order-of-magnitude estimate, stated as such
_SECONDS_PER_VALUE = 2e-7
# a linear classifier answers a max-change question from the changed genes alone: about this fraction of the time
_LINEAR_SPEEDUP = 0.05


@dataclass
class Ctx:
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


def setup(
    adata: AnnData,
    *,
    groupby: str,
    target: str | Sequence[str] | None,
    classifier: Any,
    layer: str | None,
    check_matrix: bool = True,
) -> Ctx:
    """Check the inputs and wrap the classifier (``ctx.X`` may share memory with ``adata``: read it only).

    ``check_matrix=False`` leaves the finiteness check of the matrix to a caller that reads only part of it.
    """
    check_adata(adata)
    if not isinstance(groupby, str):
        msg = f"groupby must be the name of an adata.obs column, got {groupby!r}."
        raise TypeError(msg)
    labels = check_obs_key(adata, groupby, producer=PRODUCER)
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
        from .._models import get_model

        classifier = get_model(adata, _keys.STEP_CLASSIFIER)
    model = classifier.model if isinstance(classifier, ClassifierSpec) else classifier
    if hasattr(model, "forward_lognorm") and hasattr(model, "classes"):
        name = "sad classifier"
        if layer == _keys.LAYER_LOGNORM:  # the classifier scales the log-normalized values itself
            spec = classifier if isinstance(classifier, ClassifierSpec) else ClassifierSpec(model)
            genes = spec.genes if spec.genes is not None else declared_genes(model)
            classifier = dataclasses.replace(spec, model=_LognormView(model), genes=genes)
    adapter = ClassifierAdapter(classifier)
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
    return Ctx(X=X, genes=genes, labels=labels, adapter=adapter, var_idx=var_idx, classifier_name=name)


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


def warn_ties(ctx: Ctx, where: str, *, stacklevel: int = 3) -> None:
    """Warn (:class:`~scadversarial.attacks._protocol.TiedScoresWarning`) when classified rows had tied top scores.

    ``stacklevel`` as :func:`warnings.warn`'s, counted from this function: 3 names the caller's caller.
    """
    msg = ctx.adapter.tie_message(where)
    if msg is not None:
        warnings.warn(msg, TiedScoresWarning, stacklevel=stacklevel)


def warn_many_genes(ctx: Ctx, n_genes: int, n_cells: int, what: str) -> None:
    """Log how long max-change over many genes may take, and the usual remedy."""
    if n_genes <= _MANY_GENES:
        return
    linear = ctx.adapter.linear_head() is not None
    # ~2 log2(n) questions per gene on the cluster's cells (an upper estimate; a linear classifier is much faster)
    seconds = (
        _SECONDS_PER_VALUE * n_genes * n_cells * 2 * np.log2(max(n_genes, 2)) * (_LINEAR_SPEEDUP if linear else 1.0)
    )
    logger.warning(
        "%s searches %d genes on %d cells: expect roughly %.0f s (order of magnitude). Restrict it to the highly "
        "variable genes (genes=adata.var_names[adata.var['highly_variable']]) or a gene budget to make it faster.",
        what,
        n_genes,
        n_cells,
        seconds,
    )


def gene_positions(ctx: Ctx, names: list[str], index: pd.Index | None = None) -> np.ndarray:
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


def gene_indices(
    ctx: Ctx,
    genes: Sequence[str] | None,
    exclude: Sequence[str] | None,
    *,
    what: str = "genes",
    index: pd.Index | None = None,
) -> np.ndarray:
    """Positions of ``genes`` (all by default, duplicates dropped) without ``exclude``; ``index`` as in :func:`gene_positions`."""
    if genes is None:
        idx = np.arange(len(ctx.genes))
    else:
        genes = [genes] if isinstance(genes, str) else [str(g) for g in genes]
        pos = gene_positions(ctx, genes, index)
        if (pos < 0).any():
            bad = [g for g, p in zip(genes, pos, strict=True) if p < 0]
            msg = f"{len(bad)} of the {what} are not among the classifier's genes: {bad[:10]}. Pass names from adata.var_names."
            raise KeyError(msg)
        idx = pd.unique(pos)  # first occurrences, in order
    if exclude is not None and len(exclude):
        drop = gene_positions(ctx, [str(g) for g in exclude], index)
        idx = idx[~np.isin(idx, drop)]
    if len(idx) == 0:
        msg = f"No {what} left to attack. Check genes= and exclude_genes=."
        raise ValueError(msg)
    return idx


def make_oracle(
    ctx: Ctx,
    target: str,
    mods: list[Modification],
    *,
    rng: np.random.Generator,
    batch_bytes: int,
    cache: dict | None = None,
    like: ClusterOracle | None = None,
) -> ClusterOracle:
    """The target cluster's oracle over ``mods``, with the seconds spent on its values and unmodified call.

    ``oracle.setup_seconds`` is the time spent on the modified values and the unmodified call. ``cache``: per-gene sorted values shared by calls on the same matrix. ``like``: an oracle of the same cluster
    and classifier, whose unmodified call is reused.
    """
    t0 = time.perf_counter()
    rows = cluster_rows(ctx, target)
    Vs = [modified_values(ctx.X, rows, m.name, rng=rng, cache=cache, **m.values_kwargs()) for m in mods]
    oracle = (
        ClusterOracle(ctx.adapter, ctx.X[rows], Vs, batch_bytes=batch_bytes) if like is None else like.with_values(Vs)
    )
    oracle.setup_seconds = time.perf_counter() - t0
    return oracle


def na_indices(ctx: Ctx, na_class: str | Sequence[str] | None) -> list[int]:
    """Positions of the "no call" class(es) among the classifier's classes."""
    if na_class is None:
        return []
    names = [na_class] if isinstance(na_class, str) else list(na_class)
    return [i for i, c in enumerate(ctx.adapter.classes) if c in names]


def cluster_rows(ctx: Ctx, target: str) -> np.ndarray:
    """Rows of the target cluster's cells."""
    return np.flatnonzero(ctx.labels == target)
