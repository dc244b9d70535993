"""Score-based methods of ``sad.tl.attack`` (Square Attack, NES): probabilities only, any classifier.

On the package's :class:`~scadversarial.models.CellClassifier` they query its probabilities through its
transform from the threat's space (:func:`view_proba`). On another classifier
(:class:`~scadversarial.attacks._protocol.ClassifierAdapter`) :func:`attack_foreign` moves the matrix it
reads as is and writes the same layers and record as :func:`~scadversarial.tl.attack`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from .. import _keys
from .._validate import get_matrix, matrix_name
from ..attacks._protocol import ClassifierAdapter
from ..attacks.score_based import ScoreConfig, score_attack
from ..attacks.whitebox import AttackRun, ThreatArrays
from ._attack_options import CLASSIFIER_INPUT
from ._attack_record import record_params, store_record, write_layers
from ._attack_threat import base_box, source_codes, target_codes, tighter
from ._blackbox import _aligned_matrix
from ._space import layer_space

if TYPE_CHECKING:
    from collections.abc import Callable

    from anndata import AnnData

    from ..models.classifier import SpaceClassifier
    from ._attack_options import AttackCall, AttackOptions, ThreatModel

#: the constraints another classifier's own matrix supports (no space transform to reach zero expression through)
_FOREIGN_CONSTRAINTS = (None, "observed", "expressed")


def view_proba(view: SpaceClassifier, bs: int) -> Callable[[np.ndarray], np.ndarray]:
    """The probabilities of the package's classifier, through its transform from the threat's space."""
    dev = next((b.device for b in view.classifier.buffers()), torch.device("cpu"))

    @torch.no_grad()
    def proba(Z: np.ndarray) -> np.ndarray:
        out = []
        for s in range(0, len(Z), bs):
            zb = torch.as_tensor(np.ascontiguousarray(Z[s : s + bs], dtype=np.float32), device=dev)
            out.append(torch.softmax(view(zb), 1).double().cpu().numpy())
        return np.concatenate(out)

    return proba


def score_run(
    proba: Callable[[np.ndarray], np.ndarray],
    X: np.ndarray,
    y: np.ndarray,
    *,
    method: str,
    eps_list: list[float],
    tarr: ThreatArrays,
    targeted: bool,
    options: AttackOptions,
    bs: int,
) -> tuple[AttackRun, dict[float, float]]:
    """Square Attack / NES on the probabilities ``proba(X)`` (cells x classes), within the threat ``tarr``."""
    run, queries = AttackRun({}), {}
    x0 = torch.as_tensor(X)
    config = ScoreConfig(max_queries=options.max_queries, batch_size=bs, random_state=options.random_state)
    for e in eps_list:
        proj = tarr.projection(x0, slice(None), e)  # per-entry bounds (fold change included) and the mask
        lower, upper = (None if t is None else t.numpy() for t in (proj.lower, proj.upper))
        mask = None if proj.mask is None else proj.mask.numpy() > 0
        res = score_attack(
            proba, X, y, method=method, eps=e, lower=lower, upper=upper, mask=mask, targeted=targeted, config=config
        )
        run.adversarial[e] = res.X_adv.astype(np.float32, copy=False)
        queries[e] = float(res.n_queries.mean())
    return run, queries


def _foreign_expressed(X: np.ndarray, layer: str | None) -> np.ndarray:
    """Entries that may move under ``constraint='expressed'`` on a classifier's own matrix: its nonzero entries."""
    if X.size and X.min() < 0:
        msg = (
            f"constraint='expressed' keeps zero expression at zero, but {matrix_name(layer)} has negative values "
            "(scaled?). Pass the non-negative matrix the classifier reads, e.g. layer='sad_lognorm' or 'counts'."
        )
        raise ValueError(msg)
    return X != 0


def _foreign_proba(adapter: ClassifierAdapter) -> Callable[[np.ndarray], np.ndarray]:
    """The adapter's scores as probabilities (score-based attacks take the log of probabilities)."""
    if adapter.output == "proba":
        return adapter

    def proba(Z: np.ndarray) -> np.ndarray:
        s = np.asarray(adapter(Z), dtype=np.float64)
        if adapter.output == "logits":
            s = s - s.max(1, keepdims=True)
        e = np.exp(s)
        return e / e.sum(1, keepdims=True)

    return proba


def _check_foreign(adata: AnnData, threat: ThreatModel, detector) -> str:
    """Refuse what needs the package's classifier; return the space of the matrix the classifier reads."""
    refusals = (
        (
            detector is not None,
            "A detector-aware attack needs the package's CellClassifier (classifier=None); drop detector= for this "
            "classifier.",
        ),
        (
            threat.space is not None,
            f"space={threat.space!r} applies to the package's CellClassifier; another classifier reads its own "
            "matrix as is: pass layer=<the matrix it reads> instead of space=.",
        ),
        (
            threat.constraint not in _FOREIGN_CONSTRAINTS,
            f"constraint={threat.constraint!r} is not available for this classifier; use None, 'observed' or "
            "'expressed'.",
        ),
    )
    for refused, msg in refusals:
        if refused:
            raise ValueError(msg)
    layer = threat.layer
    if layer is not None and layer not in adata.layers:
        msg = f"Layer {layer!r} not found in adata.layers (available: {list(adata.layers)}). Pass the matrix the classifier reads."
        raise KeyError(msg)
    base = layer_space(adata, layer)
    if threat.max_log_fc is not None and (base == "scaled" or not threat.max_log_fc > 0):
        msg = (
            f"max_log_fc (a positive natural-log fold change, got {threat.max_log_fc}) needs a log-normalized or "
            f"count layer; {matrix_name(layer)} is {base}. Pass layer='sad_lognorm' or drop max_log_fc."
        )
        raise ValueError(msg)
    return base


def _foreign_matrix(adata: AnnData, adapter: ClassifierAdapter, layer: str | None) -> tuple[np.ndarray, pd.Index]:
    """The matrix the classifier reads and its genes: the genes it declares, taken from ``adata`` by name, or all."""
    if adapter.genes is not None:  # the black-box modes' alignment
        X = np.array(_aligned_matrix(adata, adapter.genes, layer, check=True), dtype=np.float32)
        genes = pd.Index(adapter.genes)
    else:
        X = get_matrix(adata, layer, copy=True)
        genes = adata.var_names
    if adapter.n_features is not None and adapter.n_features != X.shape[1]:
        msg = (
            f"The classifier expects {adapter.n_features} genes but {matrix_name(layer)} has {X.shape[1]}. "
            "Pass the matrix it was trained on (layer=...), or declare its genes: ClassifierSpec(model, genes=[...])."
        )
        raise ValueError(msg)
    return X, genes


def attack_foreign(adata: AnnData, call: AttackCall) -> None:
    """Square Attack / NES on any classifier (:class:`ClassifierAdapter`), moving the layer it reads as is."""
    threat, options = call.threat, call.options
    base = _check_foreign(adata, threat, call.detector)
    layer = threat.layer
    bs = options.iter_config().batch_size
    adapter = ClassifierAdapter(options.classifier, batch_size=bs, device=options.device)
    classes = list(adapter.classes)
    X, genes = _foreign_matrix(adata, adapter, layer)
    proba_fn = _foreign_proba(adapter)
    source = source_codes(adata, options.labels_key, classes, lambda: proba_fn(X).argmax(1))
    goal = target_codes(adata, call.target_class, classes)
    lower, upper, mask = base_box(adata, threat, X, genes)
    if threat.constraint == "expressed":
        lower = tighter(lower, np.float32(0), np.maximum)
        expressed = _foreign_expressed(X, layer)
        mask = expressed if mask is None else (mask & expressed)
    tarr = ThreatArrays(norm="linf", lower=lower, upper=upper, mask=mask, max_log_fc=threat.max_log_fc, space=base)
    adapter.reset_counter()
    y = source if goal is None else goal
    run, queries = score_run(
        proba_fn,
        X,
        y,
        method=call.method,
        eps_list=call.eps,
        tarr=tarr,
        targeted=goal is not None,
        options=options,
        bs=bs,
    )

    def predict(_eps: float, name: str, Xa: np.ndarray) -> np.ndarray:
        codes = proba_fn(Xa).argmax(1)
        adata.obs[_keys.pred_key(name)] = pd.Series(
            pd.Categorical.from_codes(codes, categories=classes), index=adata.obs_names
        )
        return codes

    preds, extra = write_layers(
        adata, call.prefix, run, layer=layer, genes=genes, predict=predict, source=source, goal=goal
    )
    extra["queries"] = {name: queries[e] for e, name in zip(run.adversarial, preds, strict=True)}
    params = record_params(call, space=CLASSIFIER_INPUT, layer=layer, n_genes=X.shape[1])
    params.update(classifier=adapter.kind, output=adapter.output, n_genes=int(X.shape[1]))
    store_record(
        adata, call.prefix, source=source, preds=preds, classes=classes, extra=extra, params=params, kind="score_based"
    )


__all__ = ["attack_foreign", "score_run", "view_proba"]
