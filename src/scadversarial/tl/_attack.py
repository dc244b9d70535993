"""``sad.tl.attack``: white-box adversarial attacks under a threat model, written to layers.

The options live in :mod:`._attack_options` (:class:`ThreatModel`, :class:`AttackOptions`), their
translation to arrays in :mod:`._attack_threat`, the attack of a chunk of cells (in memory, backed or dask)
in :mod:`._attack_chunks`, the score-based dispatch in :mod:`._attack_score` and what is written (layers,
predictions, the run record) in :mod:`._attack_record`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from .. import _keys
from .._docs import doc_params
from .._settings import settings
from .._validate import check_adata, check_choice, check_copy
from ..attacks.whitebox import DETECTOR_METHODS, Evasion
from ..models.classifier import CellClassifier
from ._attack_chunks import Plan, is_lazy, lazy_layer, run_chunks, whole_range
from ._attack_options import SCORE_METHODS, AttackCall, AttackMethod, AttackOptions, ThreatModel, resolve_options
from ._attack_record import (
    Storage,
    attacked_key,
    flip_table,
    record_params,
    stack_dense,
    stack_rows,
    store_record,
    write_chunked_layers,
)
from ._attack_score import attack_foreign
from ._attack_threat import check_threat, resolve_cells, resolve_mask, source_codes, target_codes
from ._chunks import is_backed, is_dask
from ._fragments import doc_example_classifier
from ._models import get_model

if TYPE_CHECKING:
    from ..models.classifier import Space


def _check_foreign_input(adata: AnnData, options: AttackOptions) -> None:
    """Another classifier's score-based attack reads its whole matrix in memory: refuse what that cannot serve."""
    mats = [adata.X, *adata.layers.values()]
    lazy = adata.isbacked or any(is_dask(M) or is_backed(M) for M in mats)
    if options.cells is not None or lazy:
        msg = (
            "A score-based attack on another classifier reads its whole matrix in memory: cells=, backed and dask "
            "input are supported for the package's CellClassifier only. Attack a sample in memory instead: "
            "sub = adata[cells].copy() (adata[cells].to_memory() when backed); sad.tl.attack(sub, ...)."
        )
        raise ValueError(msg)


def _check_detector(detector, model: CellClassifier, method: str) -> None:
    if detector is None:
        return
    if not callable(getattr(detector, "score_logit", None)) or not isinstance(detector, torch.nn.Module):
        msg = (
            f"detector must be a torch module with a differentiable `score_logit(x_scaled)` (an AdversarialDetector); "
            f"got {type(detector).__name__}."
        )
        raise TypeError(msg)
    genes = getattr(detector, "var_names", None)
    if genes is not None and list(genes) != list(model.var_names):
        msg = "The detector watches other genes than the classifier; pass the detector trained on this classifier."
        raise ValueError(msg)
    if method not in DETECTOR_METHODS:
        msg = f"A detector-aware attack runs with a step-wise method {DETECTOR_METHODS}, got {method!r}."
        raise ValueError(msg)


@doc_params(doc_example_classifier=doc_example_classifier)
def attack(
    adata: AnnData,
    method: AttackMethod = "pgd",
    *,
    eps: float | Sequence[float] = (0.05, 0.1, 0.15),
    threat: ThreatModel | None = None,
    target_class: str | Sequence[str] | np.ndarray | None = None,
    detector: torch.nn.Module | None = None,
    options: AttackOptions | None = None,
    key_added: str | None = None,
    copy: bool = False,
    **kwargs: Any,
) -> AnnData | None:
    """White-box adversarial attack on the classifier under a threat model, one layer per budget.

    Each cell is pushed away from its clean prediction (or its label in ``labels_key``), or toward
    ``target_class``, inside a budget ``eps`` of the matrix of the threat's space, and through the
    classifier's own differentiable transform from that space.

    Large inputs are read a chunk of cells at a time (:mod:`~scadversarial.tl._chunks`): a backed
    AnnData (``X`` stays on disk; pass ``classifier=``), a sparse log-normalized ``X``
    (``sad.pp.preprocess(output='lognorm')``: scaled space reads it through the classifier's transform)
    and dask arrays in ``X`` / the layers. With dask input each budget's layer is a dask array: its
    blocks are attacked when they are computed or written (e.g. ``adata.write_zarr``), on the active
    scheduler, bit for bit as the in-memory attack on CPU (the attack runs once here for the predictions
    and the record, and again when the layer is computed). ``AttackOptions(cells=...)`` attacks only a
    sample of the cells and stores only their rows.

    Every field of :class:`ThreatModel` (``space``, ``constraint``, ``max_log_fc``, ``mask``,
    ``bounds``, ``layer``) and of :class:`AttackOptions` (``alpha``, ``steps``, ``detector_weight``,
    ``labels_key``, ``classifier``, ``random_state``, ...) can also be passed as a keyword: it overrides
    the one in ``threat`` / ``options``. So each threat is one call, e.g.
    ``attack(adata, 'pgd', eps=0.5, space='log', constraint='expressed')``.

    Parameters
    ----------
    adata
        AnnData with a trained classifier (:func:`train_classifier`).
    method
        ``'pgd'`` (L-inf projected gradient descent), ``'pgd_rs'`` (PGD from a random start),
        ``'pgd_l2'`` (L2 PGD), ``'fgsm'`` (one signed-gradient step of size eps), ``'cw'``
        (Carlini-Wagner L2: the smallest change that flips the cell, by a binary search over its
        trade-off constant, within eps), ``'deepfool'`` (DeepFool L2: steps to the nearest
        linearised class boundary, within eps), or the score-based black-box ``'square'`` (Square
        Attack) and ``'nes'`` (NES gradient estimates), which query only the classifier's
        probabilities (``max_queries`` per cell; L-inf; scaled or log space).
    eps
        One or several budgets in the space's units, L-inf for ``pgd``/``pgd_rs``/``fgsm``/``square``/``nes``
        and L2 for ``pgd_l2``/``cw``/``deepfool``; each gets its own layer.
    threat
        The threat model (:class:`ThreatModel`; default: scaled space, unconstrained).
    target_class
        Targeted attack: one class name for every cell, or one per cell. ``None``: untargeted.
    detector
        A detector the attacker knows (an :class:`~scadversarial.models.AdversarialDetector`, or any
        torch module with a differentiable ``score_logit(x_scaled)`` and a probability ``threshold``):
        PGD maximises the classifier loss minus ``detector_weight`` times the detector logit and
        keeps, per cell, the flipped iterate with the lowest detector score (over every weight of a
        sweep). PGD methods only.
    options
        Iterations, the detector weight(s), labels, classifier and hardware (:class:`AttackOptions`).
    key_added
        Prefix of the layers and name of the run record (default ``'sad_<method>'``).
    copy
        Return a new AnnData instead of modifying ``adata``.
    **kwargs
        Fields of :class:`ThreatModel` or :class:`AttackOptions`, overriding ``threat`` / ``options``.

    Returns
    -------
    ``None``, or the new AnnData when ``copy=True``. Sets, for each budget:

    ``.layers['<key_added>_eps<eps>']``
        The attacked matrix, in the threat's space (scaled values, log-normalized values or counts),
        e.g. ``.layers['sad_pgd_eps0.1']``: dense; a dask array for dask input; with ``cells=`` a CSR
        matrix holding the attacked cells' rows only (the other rows are empty, not attacks).
    ``.obs['<key_added>_eps<eps>_pred']``
        The classifier's prediction on it (through its transform from that space); missing for cells
        not attacked.
    ``.obs['<key_added>_attacked']``
        With ``cells=``: whether the cell was attacked (its row of the layers holds an attack).

    ``.uns['sad']['attacks'][key_added]``
        ``kind`` (``'whitebox'``, or ``'score_based'`` for ``square``/``nes``), ``layers``, ``eps``;
        ``storage`` (``'dense'``, ``'lazy'``: dask layers computed when read or written, or ``'rows'``:
        CSR layers of the attacked rows); ``cells``: ``n_cells`` attacked and ``obs_key`` (the
        ``.obs`` column marking them, ``''`` when every cell was attacked); the metrics are over the
        attacked cells; ``params``: ``cells`` (``'all'``, the ``.obs`` column, ``'mask'`` or
        ``'indices'``), ``method``, ``eps``, ``norm``, ``space``, ``constraint``, ``max_log_fc`` (``-1``:
        none), ``layer`` (the matrix attacked), ``target`` (``'none'``, a class, or ``'per_cell'``),
        ``labels_key``, ``mask``, ``bounds``, ``detector`` and ``detector_weight``, ``random_state``,
        and ``alpha`` (per budget) and ``steps`` (gradient methods), ``max_queries`` (score-based),
        ``cw_*`` (CW), ``overshoot`` (DeepFool); ``metrics``: ``flip_rate`` per layer, ``flip_rate_any``, ``per_class``,
        ``flip_rate_per_eps``; with ``target_class`` ``target_rate`` (cells predicted as their
        target) per layer; for integer counts ``flip_rate_continuous`` (before rounding) per layer;
        with a detector ``detector`` (``threshold``, and per layer ``flagged``, ``evasion`` (flipped
        and not flagged) and ``weight_chosen`` (cells per weight)); for score-based methods
        ``queries`` (mean queries per cell) per layer.

    With ``classifier=`` another classifier (score-based methods only), the attacked matrix is ``layer``
    (default ``X``) as the classifier reads it, its declared genes aligned by name; the layer written
    holds it with the other genes unchanged, ``.obs['<layer>_pred']`` the classifier's calls (its
    ``classes``), ``params['space']`` is ``'classifier_input'`` (values as read, no transform;
    :func:`layer_space` gives the space of ``params['layer']``), and ``params`` add ``classifier``
    (``'torch'``, ``'sklearn'``, ``'celltypist'`` or ``'callable'``), ``output`` and ``n_genes``.
    ``constraint='expressed'`` then moves only the nonzero entries of that (non-negative) matrix.

    Examples
    --------
    {doc_example_classifier}
    >>> sad.tl.attack(adata, "pgd", eps=(0.05, 0.1))  # the seed threat: scaled space, all genes
    >>> sad.tl.attack(adata, "pgd", eps=0.5, space="log", constraint="expressed", key_added="sad_pgd_expr")
    >>> sad.tl.attack(adata, "cw", eps=5.0, threat=sad.tl.ThreatModel(space="log", max_log_fc=1.0))
    >>> sad.tl.attack(adata, "pgd", eps=0.5, target_class=clf.classes[0], key_added="sad_pgd_to0")
    >>> adata.uns["sad"]["attacks"]["sad_pgd_expr"]["params"]["space"]
    'log'
    >>> from sklearn.ensemble import RandomForestClassifier
    >>> L = adata.layers["sad_lognorm"]
    >>> rf = RandomForestClassifier(n_estimators=20).fit(L, adata.obs["sad_label"])
    >>> sad.tl.attack(
    ...     adata, "square", eps=1.0, classifier=rf, layer="sad_lognorm", constraint="expressed", max_queries=100
    ... )

    """
    check_adata(adata, allow_backed=True)  # a backed X is read chunk by chunk; layers and .obs are written in memory
    check_copy(adata, copy=copy, name="attack")
    threat, options = resolve_options(threat, options, kwargs)
    check_choice("method", method, AttackMethod)
    eps_list = [float(e) for e in np.atleast_1d(eps)]
    if not eps_list or any(not e > 0 for e in eps_list):
        msg = f"eps must be positive, got {eps}."
        raise ValueError(msg)
    names = [f"{e:g}" for e in eps_list]
    if len(set(names)) < len(names):  # each budget writes .layers['<key>_eps<eps:g>']: one would overwrite another
        msg = f"eps holds budgets with the same layer name (eps{', eps'.join(names)}); give each budget once."
        raise ValueError(msg)
    options.check()
    if options.max_queries < 1:
        msg = f"max_queries must be at least 1 (queries per cell of 'square'/'nes'), got {options.max_queries}."
        raise ValueError(msg)
    prefix = key_added or f"sad_{method}"
    call = AttackCall(method, eps_list, threat, options, target_class, detector, prefix)
    if options.classifier is not None and not isinstance(options.classifier, CellClassifier):
        if method not in SCORE_METHODS:
            msg = (
                f"method={method!r} needs the gradients of the package's CellClassifier; a "
                f"{type(options.classifier).__name__} is attacked through its probabilities only: use a score-based "
                f"method {SCORE_METHODS} here, or the black-box modes (sad.tl.single_gene_attack, max_change_attack, "
                "cgd_attack, grid_attack, random_walk_attack)."
            )
            raise ValueError(msg)
        _check_foreign_input(adata, options)
        adata = adata.copy() if copy else adata
        attack_foreign(adata, call)
        return adata if copy else None
    space, layer = check_threat(adata, threat, method)
    model = options.classifier if options.classifier is not None else get_model(adata, _keys.STEP_CLASSIFIER)
    _check_detector(detector, model, method)
    plan = _plan(adata, call, space, layer, model)
    idx = resolve_cells(adata, options.cells)
    lazy = idx is None and method not in SCORE_METHODS and is_lazy(adata, plan)
    # score-based methods draw from one generator over all the cells they attack: one chunk of them
    results = run_chunks(adata, plan, idx, keep=not lazy, single=method in SCORE_METHODS)
    if copy:
        adata = adata.copy()
    storage: Storage = "rows" if idx is not None else ("lazy" if lazy else "dense")
    layers = {}
    for e in eps_list:
        if storage == "lazy":
            layers[e] = lazy_layer(adata, plan, e)
        elif storage == "rows":
            layers[e] = stack_rows([r.adversarial[e] for r in results], idx, adata.n_obs)
        else:
            layers[e] = stack_dense([r.adversarial[e] for r in results])
    source = np.concatenate([r.source for r in results])
    preds = {e: np.concatenate([r.preds[e] for r in results]) for e in eps_list}
    goal = None if plan.goal is None else (plan.goal if idx is None else plan.goal[idx])
    names, extra = write_chunked_layers(
        adata, prefix, layers, preds=preds, classes=list(model.classes), cells=idx, goal=goal, source=source
    )
    extra.update(_run_metrics(results, names, source, plan))
    params = record_params(call, space=space, layer=layer, n_genes=len(model.var_names))
    kind = "score_based" if method in SCORE_METHODS else "whitebox"
    cells = {"n_cells": len(source), "obs_key": attacked_key(prefix) if idx is not None else ""}
    pred_names = dict(zip(names, (preds[e] for e in eps_list), strict=True))
    store_record(
        adata,
        prefix,
        source=source,
        preds=pred_names,
        classes=list(model.classes),
        extra=extra,
        params=params,
        kind=kind,
        storage=storage,
        cells=cells,
    )
    return adata if copy else None


def _plan(adata: AnnData, call: AttackCall, space: Space, layer: str | None, model: CellClassifier) -> Plan:
    """What every chunk's attack needs: the options resolved, labels, targets and the mask checked on all cells."""
    options, threat = call.options, call.threat
    classes = list(model.classes)
    labels = None
    if options.labels_key is not None:
        rows = resolve_cells(adata, options.cells)
        labels = source_codes(adata, options.labels_key, classes, lambda: np.zeros(0, np.int64), rows)
    mask = None
    if threat.mask is not None and not isinstance(threat.mask, str):
        resolve_mask(adata, threat.mask, pd.Index(model.var_names))  # checked once, on all cells
        mask = np.asarray(threat.mask) if np.ndim(threat.mask) == 2 else None
    weights = tuple(float(w) for w in np.atleast_1d(options.detector_weight))
    plan = Plan(
        method=call.method,
        eps=tuple(call.eps),
        threat=threat,
        space=space,
        layer=layer,
        model=model,
        config=options.iter_config(),
        options=options,
        predict_batch=int(settings.batch_size),
        labels=labels,
        goal=target_codes(adata, call.target_class, classes),
        mask=mask,
        evasion=None if call.detector is None else Evasion(call.detector, weights),
    )
    if threat.constraint == "observed":  # the range of every cell, whichever cells are attacked
        plan = replace(plan, observed=whole_range(adata, plan))
    return plan


def _run_metrics(results: list, names: list[str], source: np.ndarray, plan: Plan) -> dict[str, Any]:
    """The metrics beyond the flip table: flips before rounding, the detector's flags, queries (over attacked cells)."""
    continuous: dict[str, float] = {}
    evaded: dict[str, Any] = {}
    queries: dict[str, float] = {}
    for e, name in zip(plan.eps, names, strict=True):
        if e in results[0].continuous:
            continuous[name] = float(np.concatenate([r.continuous[e] for r in results]).mean())
        if e in results[0].queries:
            queries[name] = results[0].queries[e]  # score-based methods run in one chunk
        if plan.evasion is not None:
            flagged = np.concatenate([r.flagged[e] for r in results])
            flipped = np.concatenate([r.preds[e] for r in results]) != source
            chosen = np.concatenate([r.weight[e] for r in results])
            evaded[name] = {
                "flagged": float(flagged.mean()),
                "evasion": float((flipped & ~flagged).mean()),
                "weight_chosen": np.array([(chosen == np.float32(w)).sum() for w in plan.evasion.weights]),
            }
            evaded["threshold"] = float(plan.evasion.detector.threshold)
    return {"flip_rate_continuous": continuous, "detector": evaded, "queries": queries}


__all__ = ["AttackOptions", "ThreatModel", "attack", "flip_table"]
