"""``sad.tl.attack``: white-box adversarial attacks under a threat model, written to layers.

The options live in :mod:`._attack_options` (:class:`ThreatModel`, :class:`AttackOptions`), their
translation to arrays in :mod:`._attack_threat`, the score-based dispatch in :mod:`._attack_score` and
what is written (layers, predictions, the run record) in :mod:`._attack_record`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from .. import _keys
from .._docs import doc_params
from .._validate import check_adata, check_choice, matrix_for_genes
from ..attacks.whitebox import DETECTOR_METHODS, Evasion, run_attack
from ..models.classifier import CellClassifier
from ._attack_options import SCORE_METHODS, AttackCall, AttackMethod, AttackOptions, ThreatModel, resolve_options
from ._attack_record import detector_logits, flip_table, record_params, store_record, write_layers
from ._attack_score import attack_foreign, score_run, view_proba
from ._attack_threat import check_threat, source_codes, target_codes, threat_arrays
from ._classifier import _write_predictions
from ._fragments import doc_example_classifier
from ._input import classifier_input
from ._models import get_model
from ._space import other_counts, space_model, to_scaled


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
        e.g. ``.layers['sad_pgd_eps0.1']``.
    ``.obs['<key_added>_eps<eps>_pred']``
        The classifier's prediction on it (through its transform from that space).

    ``.uns['sad']['attacks'][key_added]``
        ``kind`` (``'whitebox'``, or ``'score_based'`` for ``square``/``nes``), ``layers``, ``eps``;
        ``params``: ``method``, ``eps``, ``norm``, ``space``, ``constraint``, ``max_log_fc`` (``-1``:
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
    check_adata(adata)
    threat, options = resolve_options(threat, options, kwargs)
    check_choice("method", method, AttackMethod)
    eps_list = [float(e) for e in np.atleast_1d(eps)]
    if not eps_list or any(not e > 0 for e in eps_list):
        msg = f"eps must be positive, got {eps}."
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
        adata = adata.copy() if copy else adata
        attack_foreign(adata, call)
        return adata if copy else None
    space, layer = check_threat(adata, threat, method)
    model = options.classifier if options.classifier is not None else get_model(adata, _keys.STEP_CLASSIFIER)
    _check_detector(detector, model, method)
    # X is checked to be in the classifier's scaled space (a raw or unscaled X would be attacked silently)
    X = classifier_input(adata, model) if layer is None else matrix_for_genes(adata, model.var_names, layer)
    view = space_model(adata, model, space)
    other = other_counts(adata, model.var_names) if space == "counts" else None
    config = options.iter_config()
    dev, bs = config.device, config.batch_size
    X_clean = to_scaled(view, X, other, batch_size=bs)
    classes = list(model.classes)
    source = source_codes(
        adata, options.labels_key, classes, lambda: model.predict_arrays(X_clean, device=dev)[0].argmax(1)
    )
    goal = target_codes(adata, target_class, classes)
    tarr = threat_arrays(adata, threat, space, method, X, model)
    y = source if goal is None else goal
    queries: dict[float, float] = {}
    weights = tuple(float(w) for w in np.atleast_1d(options.detector_weight))
    if method in SCORE_METHODS:
        was_training, home = model.training, next(model.parameters()).device
        model.eval().to(dev)
        try:
            run, queries = score_run(
                view_proba(view, bs),
                X,
                y,
                method=method,
                eps_list=eps_list,
                tarr=tarr,
                targeted=goal is not None,
                options=options,
                bs=bs,
            )
        finally:  # the caller's model comes back as it was: mode and device
            model.train(was_training).to(home)
    else:
        run = run_attack(
            view,
            X,
            y,
            method=method,
            eps=eps_list,
            threat=tarr,
            config=config,
            targeted=goal is not None,
            other=other,
            evasion=None if detector is None else Evasion(detector, weights),
        )

    if copy:
        adata = adata.copy()
    continuous: dict[str, float] = {}
    evaded: dict[str, Any] = {}

    def predict(e: float, name: str, Xa: np.ndarray) -> np.ndarray:
        Xs = to_scaled(view, Xa, other, batch_size=bs)
        codes = _write_predictions(adata, model, Xs, layer=name)
        if e in run.continuous:
            p_cont = model.predict_arrays(to_scaled(view, run.continuous[e], other, batch_size=bs), device=dev)[0]
            continuous[name] = float((p_cont.argmax(1) != source).mean())
        if detector is not None:
            thr = float(detector.threshold)
            flagged = detector_logits(detector, Xs, bs, dev) >= float(np.log(thr / (1 - thr)))
            flipped = codes != source
            chosen = [(run.detector_weight[e] == np.float32(w)).sum() for w in weights]
            evaded[name] = {
                "flagged": float(flagged.mean()),
                "evasion": float((flipped & ~flagged).mean()),
                "weight_chosen": np.array(chosen),
            }
            evaded["threshold"] = thr
        return codes

    genes = pd.Index(model.var_names)
    preds, extra = write_layers(adata, prefix, run, layer=layer, genes=genes, predict=predict, source=source, goal=goal)
    extra["flip_rate_continuous"] = continuous
    extra["detector"] = evaded
    extra["queries"] = {name: queries[e] for e, name in zip(run.adversarial, preds, strict=True) if e in queries}
    params = record_params(call, space=space, layer=layer, n_genes=X.shape[1])
    kind = "score_based" if method in SCORE_METHODS else "whitebox"
    store_record(adata, prefix, source=source, preds=preds, classes=classes, extra=extra, params=params, kind=kind)
    return adata if copy else None


__all__ = ["AttackOptions", "ThreatModel", "attack", "flip_table"]
