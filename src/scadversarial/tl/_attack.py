"""``sad.tl.attack``: white-box adversarial attacks under a threat model, written to layers."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from .. import _keys
from .._settings import settings
from .._validate import check_adata, check_obs_key, get_matrix, h5ad_safe, matrix_for_genes, matrix_name, uns_root
from ..attacks._protocol import ClassifierAdapter, ClassifierSpec
from ..attacks.whitebox import DETECTOR_METHODS, METHOD_NORM, METHODS, AttackRun, IterConfig, ThreatArrays, run_attack
from ..models.classifier import SPACES, CellClassifier, Space
from ._blackbox import _aligned_matrix
from ._classifier import _write_predictions
from ._input import classifier_input
from ._models import get_model
from ._space import expressed_mask, layer_space, other_counts, space_layer, space_model, to_scaled

Constraint = Literal["observed", "expressed", "counts"]
CONSTRAINTS: tuple[str, ...] = ("observed", "expressed", "counts")
#: score-based black-box methods (:mod:`~scadversarial.attacks.score_based`): probabilities only, L-inf
SCORE_METHODS: tuple[str, ...] = ("square", "nes")
AttackMethod = Literal["pgd", "fgsm", "pgd_rs", "pgd_l2", "cw", "deepfool", "square", "nes"]
ALL_METHODS: tuple[str, ...] = (*METHODS, *SCORE_METHODS)
#: ``params['space']`` of a score-based attack on another classifier: the layer it reads, moved as is
CLASSIFIER_INPUT = "classifier_input"


def _norm(method: str) -> str:
    return "linf" if method in SCORE_METHODS else METHOD_NORM[method]


@dataclass(frozen=True)
class ThreatModel:
    """What the attacker may change: the feature space, a constraint, a fold-change limit and a mask.

    Parameters
    ----------
    space
        ``'scaled'``: the classifier's input ``X``; ``'log'``: ``.layers['sad_lognorm']``; ``'counts'``:
        ``.layers['counts']`` (raw counts of the kept genes). The attack moves that matrix and reaches
        the classifier through its own differentiable transform (counts -> library-size
        normalization with each cell's own library -> ``log1p`` -> scaling -> clip). ``None``: the
        space of ``layer`` (``'scaled'`` without one).
    constraint
        ``None``; ``'observed'``: each gene within its observed range over all cells; ``'expressed'``:
        only genes expressed in that cell move (nonzero in ``sad_lognorm`` / counts), values stay at
        or above zero expression (``>= 0`` in log and count space) and unexpressed entries stay
        exactly as they are; ``'counts'`` (count space only): non-negative integer counts: the
        attack optimises continuously and rounds at the end (within the budget and bounds), and
        its record gives the flip rate before and after rounding. Count space always keeps
        counts ``>= 0``.
    max_log_fc
        Bound on each entry's fold change, natural log with a pseudo-count of one on the normalized
        expression: ``|x' - x| <= max_log_fc`` in log space, ``<= max_log_fc / std`` in scaled space,
        ``(c' + 1) / (c + 1)`` within ``e^(+-max_log_fc)`` for counts.
    mask
        Entries allowed to change: a boolean array over genes, the name of a boolean ``.var``
        column, a boolean cells x genes matrix, or the name of a layer (nonzero: may change).
    bounds
        Custom ``(lower, upper)`` bounds (scalars or per-gene arrays), in the space's units.
    layer
        Matrix to attack instead of the space's own (``X``, ``sad_lognorm`` or ``counts``); it must
        hold that space's values.

    Examples
    --------
    >>> import scadversarial as sad
    >>> expressed_log = sad.tl.ThreatModel(space="log", constraint="expressed")
    >>> integer_counts = sad.tl.ThreatModel(space="counts", constraint="counts", max_log_fc=1.0)

    """

    space: Space | None = None
    constraint: Constraint | None = None
    max_log_fc: float | None = None
    mask: np.ndarray | str | None = dataclasses.field(default=None, compare=False)
    bounds: tuple | None = dataclasses.field(default=None, compare=False)
    layer: str | None = None


@dataclass(frozen=True)
class AttackOptions:
    """How :func:`attack` runs: iterations, the detector weight, the attacked labels and the hardware.

    Parameters
    ----------
    alpha
        PGD step size (L-inf: per gene; L2: of the step) or CW's Adam learning rate. ``None``: ``0.02`` for
        PGD in scaled space (the seed setting), else ``2.5 * eps / steps`` (CW: over the square root
        of the number of genes).
    steps
        PGD steps, CW steps per binary-search step, or DeepFool's maximum iterations (``None``: 10, 20, 30).
    cw_c, cw_search_steps, cw_confidence
        Carlini-Wagner's initial constant, its binary-search steps and the margin ``kappa``.
    overshoot
        DeepFool's overshoot.
    max_queries
        Score-based methods (``'square'``, ``'nes'``): classifier queries per cell.
    detector_weight
        Weight(s) ``lambda`` of the detector logit in a detector-aware attack; several weights: per
        cell, the flipped iterate with the lowest detector score over all of them.
    labels_key
        Attack these labels instead of the clean prediction (``None``: predicted, as at inference).
    model
        Classifier to attack (default: the one in ``adata.uns['sad']['classifier']``): a
        :class:`~scadversarial.models.CellClassifier` for every method; for the score-based methods
        (``'square'``, ``'nes'``) also any classifier the black-box modes take, wrapped by
        :class:`~scadversarial.attacks._protocol.ClassifierAdapter`: a torch module returning logits, an
        estimator with ``predict_proba``, a CellTypist ``Model``, a callable ``X -> probabilities`` or a
        :class:`~scadversarial.tl.ClassifierSpec` (classes, declared genes, output). Such a classifier
        reads ``layer`` (default ``X``), its genes aligned by name when it declares them.
    batch_size, device, random_state
        Cells per batch (default ``sad.settings.batch_size``), torch device (default
        ``sad.settings.device``) and the seed of the random start.

    Examples
    --------
    >>> import scadversarial as sad
    >>> opts = sad.tl.AttackOptions(steps=20, detector_weight=(0.1, 1.0, 10.0))

    """

    alpha: float | None = None
    steps: int | None = None
    cw_c: float = 1.0
    cw_search_steps: int = 4
    cw_confidence: float = 0.0
    overshoot: float = 0.02
    max_queries: int = 1000
    detector_weight: float | tuple[float, ...] = 1.0
    labels_key: str | None = None
    model: CellClassifier | ClassifierSpec | torch.nn.Module | Any | None = dataclasses.field(
        default=None, compare=False, repr=False
    )
    batch_size: int | None = None
    device: str | None = None
    random_state: int = 0

    def iter_config(self) -> IterConfig:
        """The array-level iteration settings."""
        return IterConfig(
            alpha=self.alpha, steps=self.steps, cw_c=self.cw_c, cw_search_steps=self.cw_search_steps,
            cw_confidence=self.cw_confidence, overshoot=self.overshoot,
        )  # fmt: skip


_THREAT_FIELDS = {f.name for f in dataclasses.fields(ThreatModel)}
_OPTION_FIELDS = {f.name for f in dataclasses.fields(AttackOptions)}


def _resolve_options(
    threat: ThreatModel | None, options: AttackOptions | None, kwargs: dict[str, Any]
) -> tuple[ThreatModel, AttackOptions]:
    """Merge keyword shortcuts (fields of ThreatModel / AttackOptions) into the two option objects."""
    threat, options = threat or ThreatModel(), options or AttackOptions()
    unknown = sorted(set(kwargs) - _THREAT_FIELDS - _OPTION_FIELDS - {"bounds"})
    if unknown:
        msg = (
            f"attack() got unexpected keyword(s) {unknown}. Pass fields of sad.tl.ThreatModel "
            f"{sorted(_THREAT_FIELDS)} or sad.tl.AttackOptions {sorted(_OPTION_FIELDS)}."
        )
        raise TypeError(msg)
    kw = dict(kwargs)
    if isinstance(kw.get("bounds"), str):  # the older bounds='observed' is the 'observed' constraint
        if kw["bounds"] != "observed":
            msg = f"Unknown bounds {kw['bounds']!r}; use None, 'observed' or a (lower, upper) pair."
            raise ValueError(msg)
        kw.pop("bounds")
        kw.setdefault("constraint", "observed")
    if "detector_weight" in kw and not np.isscalar(kw["detector_weight"]):
        kw["detector_weight"] = tuple(float(w) for w in kw["detector_weight"])
    threat = dataclasses.replace(threat, **{k: v for k, v in kw.items() if k in _THREAT_FIELDS})
    options = dataclasses.replace(options, **{k: v for k, v in kw.items() if k in _OPTION_FIELDS})
    return threat, options


def _check_threat(adata: AnnData, threat: ThreatModel, method: str) -> tuple[Space, str | None]:
    """Validate the threat model in one place; return the space and the matrix attacked."""
    if method not in ALL_METHODS:
        msg = f"Unknown attack method {method!r}; choose one of {ALL_METHODS}."
        raise ValueError(msg)
    space = threat.space
    if space is None:
        space = layer_space(adata, threat.layer) if threat.layer is not None else "scaled"
    if space not in SPACES:
        msg = f"Unknown space {space!r}; choose one of {SPACES}."
        raise ValueError(msg)
    if threat.constraint is not None and threat.constraint not in CONSTRAINTS:
        msg = f"Unknown constraint {threat.constraint!r}; choose None or one of {CONSTRAINTS}."
        raise ValueError(msg)
    if threat.constraint == "counts" and space != "counts":
        msg = f"constraint='counts' (non-negative integer counts) needs space='counts', got space={space!r}."
        raise ValueError(msg)
    if method in SCORE_METHODS and space == "counts":
        msg = f"Score-based method {method!r} queries stacked samples without per-cell libraries; use space='log' or 'scaled'."
        raise ValueError(msg)
    if threat.max_log_fc is not None and not threat.max_log_fc > 0:
        msg = f"max_log_fc must be positive (a natural-log fold change), got {threat.max_log_fc}."
        raise ValueError(msg)
    layer = threat.layer if threat.layer is not None else space_layer(space)
    if layer is not None and layer not in adata.layers:
        hint = {"log": "`sad.pp.preprocess`", "counts": "`sad.pp.preprocess` on raw counts"}.get(space, "")
        msg = f"Layer {layer!r} not found in adata.layers (available: {list(adata.layers)}). " + (
            f"Space {space!r} reads it; it is written by {hint}." if hint else "Pass an existing layer."
        )
        raise KeyError(msg)
    if threat.bounds is not None and not (isinstance(threat.bounds, Sequence) and len(threat.bounds) == 2):
        msg = "bounds must be None, 'observed' or a (lower, upper) pair of scalars or per-gene arrays."
        raise ValueError(msg)
    return space, layer


def _resolve_mask(adata: AnnData, mask, genes: pd.Index) -> np.ndarray | None:
    """The mask as a boolean array over the model's genes (1-d) or cells x genes (2-d)."""
    if mask is None:
        return None
    name = None
    if isinstance(mask, str):
        name = mask
        if mask in adata.var:
            mask = adata.var[mask].to_numpy()
        elif mask in adata.layers:
            mask = get_matrix(adata, mask) != 0
        else:
            msg = f"Mask {mask!r} is neither a .var column ({list(adata.var.columns)}) nor a layer ({list(adata.layers)})."
            raise KeyError(msg)
    mask = np.asarray(mask)
    shapes = {(adata.n_vars,), (adata.n_obs, adata.n_vars)}
    if mask.dtype != bool or mask.shape not in shapes:
        what = f"{name!r}" if name else "mask"
        msg = (
            f"{what} must be boolean with one value per gene ({adata.n_vars}) or a cells x genes matrix "
            f"({adata.n_obs} x {adata.n_vars}), or the name of a boolean .var column or a layer; got {mask.dtype} {mask.shape}."
        )
        raise ValueError(msg)
    if not adata.var_names.equals(genes):
        mask = mask[..., adata.var_names.get_indexer(genes)]
    if not mask.any():
        msg = "mask allows no entry to change; pass None or a mask with at least one True."
        raise ValueError(msg)
    return mask


def _custom_bounds(bounds, n_genes: int):
    lower, upper = bounds
    for b in (lower, upper):
        if b is not None and np.ndim(b) == 1 and len(b) != n_genes:
            msg = f"Per-gene bounds need {n_genes} values (one per gene), got {len(b)}."
            raise ValueError(msg)
    return lower, upper


def _tighter(a, b, pick):
    if a is None:
        return b
    if b is None:
        return a
    return pick(np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32))


def _base_box(
    adata: AnnData, threat: ThreatModel, X: np.ndarray, genes: pd.Index
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """``(lower, upper, mask)`` from the custom bounds, the observed range of ``X`` and the mask (any classifier)."""
    lower = upper = None
    if threat.bounds is not None:
        lower, upper = _custom_bounds(threat.bounds, X.shape[1])
    if threat.constraint == "observed":
        lower, upper = _tighter(lower, X.min(0), np.maximum), _tighter(upper, X.max(0), np.minimum)
    return lower, upper, _resolve_mask(adata, threat.mask, genes)


def _source_codes(adata: AnnData, labels_key: str | None, classes: list[str], predicted: Callable[[], np.ndarray]):
    """The class each cell is pushed away from: ``predicted()`` (clean calls), or its label in ``labels_key``."""
    if labels_key is None:
        return predicted()
    labels = check_obs_key(adata, labels_key).astype(str)
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        msg = f"Labels {unknown[:5]} in {labels_key!r} are not classes of the classifier ({classes}). Use the key it was trained on."
        raise ValueError(msg)
    return pd.Categorical(labels, categories=classes).codes.astype(np.int64)


def _write_layer(adata: AnnData, name: str, Xa: np.ndarray, layer: str | None, genes: pd.Index) -> None:
    """Write an attacked matrix of ``genes``; other genes of ``adata`` keep their values of ``layer``."""
    if adata.var_names.equals(genes):
        adata.layers[name] = Xa
        return
    full = get_matrix(adata, layer, copy=True)
    full[:, adata.var_names.get_indexer(genes)] = Xa
    adata.layers[name] = full


def _target_rate(pred: np.ndarray, goal: np.ndarray, source: np.ndarray) -> float:
    """Fraction of the cells sent to another class that reached it."""
    moved = goal != source
    return float((pred == goal)[moved].mean()) if moved.any() else 1.0


def _threat_arrays(
    adata: AnnData, threat: ThreatModel, space: Space, method: str, X: np.ndarray, model: CellClassifier
) -> ThreatArrays:
    """The array-level threat of ``X`` (the model's genes, in ``space``)."""
    genes = pd.Index(model.var_names)
    lower, upper, mask = _base_box(adata, threat, X, genes)
    if space == "counts":
        lower = _tighter(lower, np.float32(0), np.maximum)  # the transform's log needs counts >= 0
    if threat.constraint == "expressed":
        if space == "scaled":  # zero expression is a per-gene value in scaled units
            with torch.no_grad():
                floor = model.transform(torch.zeros(1, X.shape[1], device=model.transform.mean.device))
            floor = floor.cpu().numpy()[0]
        else:
            floor = np.zeros(X.shape[1], np.float32)
        lower = _tighter(lower, floor, np.maximum)
        expressed = expressed_mask(adata, genes, space, X)
        mask = expressed if mask is None else (mask & expressed)
    std = model.transform.std.detach().cpu().numpy() if space == "scaled" else None
    return ThreatArrays(
        norm=_norm(method), lower=lower, upper=upper, mask=mask, max_log_fc=threat.max_log_fc, space=space,
        std=std, integer=threat.constraint == "counts",
    )  # fmt: skip


def _target_codes(adata: AnnData, target_class, classes: list[str]) -> np.ndarray | None:
    if target_class is None:
        return None
    names = (
        np.full(adata.n_obs, target_class, dtype=object) if isinstance(target_class, str) else np.asarray(target_class)
    )
    if names.shape != (adata.n_obs,):
        msg = f"target_class must be one class name or one per cell ({adata.n_obs}), got shape {names.shape}."
        raise ValueError(msg)
    unknown = sorted(set(map(str, names)) - set(classes))
    if unknown:
        msg = (
            f"Target classes {unknown[:5]} are not classes of the model ({classes}). Pass one of them as target_class."
        )
        raise ValueError(msg)
    return pd.Categorical(names.astype(str), categories=classes).codes.astype(np.int64)


def flip_table(target: np.ndarray, preds: dict[str, np.ndarray], classes: list[str]) -> dict:
    """Flip rates (prediction differs from the attacked class) per layer, any layer, and per class."""
    flips = {k: p != target for k, p in preds.items()}
    any_flip = np.logical_or.reduce(list(flips.values()))
    per_class = np.full((len(flips), len(classes)), np.nan)
    for i, f in enumerate(flips.values()):
        for c in range(len(classes)):
            sel = target == c
            if sel.any():
                per_class[i, c] = f[sel].mean()
    any_class = np.array([any_flip[target == c].mean() if (target == c).any() else np.nan for c in range(len(classes))])
    return {
        "flip_rate": {k: float(f.mean()) for k, f in flips.items()},
        "flip_rate_any": float(any_flip.mean()),
        "per_class": {
            "classes": list(classes),
            "layers": list(flips),
            "flip_rate": per_class,
            "flip_rate_any": any_class,
        },
    }


def _detector_logits(detector: torch.nn.Module, Xs: np.ndarray, bs: int, dev: torch.device) -> np.ndarray:
    """The detector's logit of scaled cells (its scoring may need input gradients, so grad stays on)."""
    out = []
    with torch.enable_grad():
        for s in range(0, len(Xs), bs):
            xb = torch.as_tensor(np.ascontiguousarray(Xs[s : s + bs]), device=dev)
            out.append(detector.score_logit(xb).detach().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


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


def _record_params(
    method: str, eps_list: list[float], *, space: str, layer: str | None, threat: ThreatModel,
    options: AttackOptions, target_class, targeted: bool, detector, n_genes: int,
) -> dict:  # fmt: skip
    """The record's ``params``: the threat (space, constraint, budget, norm, fold change, target) and the settings."""
    cfg = options.iter_config()
    mask_name = threat.mask if isinstance(threat.mask, str) else ("custom" if threat.mask is not None else "none")
    if not targeted:
        target_name = "none"
    else:
        target_name = str(target_class) if isinstance(target_class, str) else "per_cell"
    params = {
        "method": method, "eps": eps_list, "norm": _norm(method), "space": space,
        "constraint": threat.constraint or "none",
        "max_log_fc": -1.0 if threat.max_log_fc is None else float(threat.max_log_fc),
        "layer": layer or "X", "target": target_name, "labels_key": options.labels_key or "predicted",
        "mask": mask_name, "bounds": "observed" if threat.constraint == "observed" else ("custom" if threat.bounds is not None else "none"),
        "random_state": int(options.random_state),
        "detector": "none" if detector is None else str(getattr(detector, "_sad_id", type(detector).__name__)),
        "detector_weight": list(np.atleast_1d(options.detector_weight).astype(float)) if detector is not None else [],
    }  # fmt: skip
    if method in SCORE_METHODS:
        params["max_queries"] = int(options.max_queries)
    else:
        params["alpha"] = [cfg.step_size(method, e, space=space, n_genes=n_genes) for e in eps_list]
        params["steps"] = cfg.n_steps(method)
    if method == "cw":
        params.update(cw_c=cfg.cw_c, cw_search_steps=cfg.cw_search_steps, cw_confidence=cfg.cw_confidence)
    if method == "deepfool":
        params["overshoot"] = cfg.overshoot
    return params


def _view_proba(view, bs: int):
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


def _score_run(proba, X, y, *, method, eps_list, tarr, targeted, options, bs) -> tuple[AttackRun, dict]:
    """Square Attack / NES on the probabilities ``proba(X)`` (cells x classes), within the threat ``tarr``."""
    from ..attacks.score_based import score_attack

    run, queries = AttackRun({}), {}
    x0 = torch.as_tensor(X)
    for e in eps_list:
        proj = tarr.projection(x0, slice(None), e)  # per-entry bounds (fold change included) and the mask
        arr = {k: None if t is None else t.numpy() for k, t in (("lower", proj.lower), ("upper", proj.upper))}
        mask = None if proj.mask is None else proj.mask.numpy() > 0
        res = score_attack(
            proba, X, y, method=method, eps=e, lower=arr["lower"], upper=arr["upper"], mask=mask,
            max_queries=options.max_queries, targeted=targeted, batch_size=bs, random_state=options.random_state,
        )  # fmt: skip
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


def _foreign_proba(adapter: ClassifierAdapter):
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


def _attack_foreign(
    adata: AnnData, method: str, eps_list: list[float], *, threat: ThreatModel, options: AttackOptions,
    target_class, detector, prefix: str,
) -> None:  # fmt: skip
    """Square Attack / NES on any classifier (:class:`ClassifierAdapter`), moving the layer it reads as is."""
    if detector is not None:
        msg = "A detector-aware attack needs the package's CellClassifier (model=None); drop detector= for this classifier."
        raise ValueError(msg)
    if threat.space is not None:
        msg = (
            f"space={threat.space!r} applies to the package's CellClassifier; another classifier reads its own "
            "matrix as is: pass layer=<the matrix it reads> instead of space=."
        )
        raise ValueError(msg)
    if threat.constraint not in (None, "observed", "expressed"):
        msg = f"constraint={threat.constraint!r} is not available for this classifier; use None, 'observed' or 'expressed'."
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
    bs = int(options.batch_size or settings.batch_size)
    adapter = ClassifierAdapter(options.model, batch_size=bs, device=options.device)
    classes = list(adapter.classes)
    if adapter.genes is not None:  # the genes it declares, taken from adata by name (the black-box modes' alignment)
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
    proba_fn = _foreign_proba(adapter)
    source = _source_codes(adata, options.labels_key, classes, lambda: proba_fn(X).argmax(1))
    goal = _target_codes(adata, target_class, classes)
    lower, upper, mask = _base_box(adata, threat, X, genes)
    if threat.constraint == "expressed":
        lower = _tighter(lower, np.float32(0), np.maximum)
        expressed = _foreign_expressed(X, layer)
        mask = expressed if mask is None else (mask & expressed)
    tarr = ThreatArrays(norm="linf", lower=lower, upper=upper, mask=mask, max_log_fc=threat.max_log_fc, space=base)
    adapter.reset_counter()
    run, queries = _score_run(
        proba_fn, X, source if goal is None else goal, method=method, eps_list=eps_list, tarr=tarr,
        targeted=goal is not None, options=options, bs=bs,
    )  # fmt: skip
    layers, preds = [], {}
    extra: dict[str, dict] = {"target_rate": {}, "queries": {}}
    for e, Xa in run.adversarial.items():
        name = f"{prefix}_eps{e:g}"
        _write_layer(adata, name, Xa, layer, genes)
        preds[name] = proba_fn(Xa).argmax(1)
        adata.obs[_keys.pred_key(name)] = pd.Series(
            pd.Categorical.from_codes(preds[name], categories=classes), index=adata.obs_names
        )
        layers.append(name)
        extra["queries"][name] = queries[e]
        if goal is not None:
            extra["target_rate"][name] = _target_rate(preds[name], goal, source)
    metrics = flip_table(source, preds, classes)
    metrics["flip_rate_per_eps"] = np.array([metrics["flip_rate"][n] for n in layers])
    metrics.update({k: v for k, v in extra.items() if v})
    params = _record_params(
        method, eps_list, space=CLASSIFIER_INPUT, layer=layer, threat=threat, options=options,
        target_class=target_class, targeted=goal is not None, detector=None, n_genes=X.shape[1],
    )  # fmt: skip
    params.update(classifier=adapter.kind, output=adapter.output, n_genes=int(X.shape[1]))
    root = uns_root(adata)
    root.setdefault(_keys.STEP_ATTACKS, {})
    root[_keys.STEP_ATTACKS][prefix] = h5ad_safe(
        {"params": params, "layers": layers, "eps": eps_list, "metrics": metrics, "kind": "score_based"}
    )


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
    ``labels_key``, ``model``, ``random_state``, ...) can also be passed as a keyword: it overrides
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
        Iterations, the detector weight(s), labels, model and hardware (:class:`AttackOptions`).
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

    With ``model=`` another classifier (score-based methods only), the attacked matrix is ``layer``
    (default ``X``) as the classifier reads it, its declared genes aligned by name; the layer written
    holds it with the other genes unchanged, ``.obs['<layer>_pred']`` the classifier's calls (its
    ``classes``), ``params['space']`` is ``'classifier_input'`` (values as read, no transform;
    :func:`layer_space` gives the space of ``params['layer']``), and ``params`` add ``classifier``
    (``'torch'``, ``'sklearn'``, ``'celltypist'`` or ``'callable'``), ``output`` and ``n_genes``.
    ``constraint='expressed'`` then moves only the nonzero entries of that (non-negative) matrix.

    Examples
    --------
    >>> import scadversarial as sad
    >>> adata = sad.datasets.pbmc68k_reduced()
    >>> sad.pp.preprocess(adata)
    >>> sad.pp.pseudo_labels(adata, n_clusters=4)
    >>> sad.pp.split(adata)
    >>> clf = sad.tl.train_classifier(adata, max_epochs=5)
    >>> sad.tl.attack(adata, "pgd", eps=(0.05, 0.1))  # the seed threat: scaled space, all genes
    >>> sad.tl.attack(adata, "pgd", eps=0.5, space="log", constraint="expressed", key_added="sad_pgd_expr")
    >>> sad.tl.attack(adata, "cw", eps=5.0, threat=sad.tl.ThreatModel(space="log", max_log_fc=1.0))
    >>> sad.tl.attack(adata, "pgd", eps=0.5, target_class=clf.classes[0], key_added="sad_pgd_to0")
    >>> adata.uns["sad"]["attacks"]["sad_pgd_expr"]["params"]["space"]
    'log'
    >>> from sklearn.ensemble import RandomForestClassifier
    >>> L = adata.layers["sad_lognorm"]
    >>> rf = RandomForestClassifier(n_estimators=20).fit(L, adata.obs["sad_label"])
    >>> sad.tl.attack(adata, "square", eps=1.0, model=rf, layer="sad_lognorm", constraint="expressed", max_queries=100)

    """
    check_adata(adata)
    threat, options = _resolve_options(threat, options, kwargs)
    if method not in ALL_METHODS:
        msg = f"Unknown attack method {method!r}; choose one of {ALL_METHODS}."
        raise ValueError(msg)
    eps_list = [float(e) for e in np.atleast_1d(eps)]
    if not eps_list or any(not e > 0 for e in eps_list):
        msg = f"eps must be positive, got {eps}."
        raise ValueError(msg)
    options.iter_config().check()
    if options.max_queries < 1:
        msg = f"max_queries must be at least 1 (queries per cell of 'square'/'nes'), got {options.max_queries}."
        raise ValueError(msg)
    prefix = key_added or f"sad_{method}"
    if options.model is not None and not isinstance(options.model, CellClassifier):
        if method not in SCORE_METHODS:
            msg = (
                f"method={method!r} needs the gradients of the package's CellClassifier; a "
                f"{type(options.model).__name__} is attacked through its probabilities only: use a score-based "
                f"method {SCORE_METHODS} here, or the black-box modes (sad.tl.single_gene_attack, max_change_attack, "
                "cgd_attack, grid_attack, random_walk_attack)."
            )
            raise ValueError(msg)
        adata = adata.copy() if copy else adata
        _attack_foreign(
            adata, method, eps_list, threat=threat, options=options, target_class=target_class, detector=detector,
            prefix=prefix,
        )  # fmt: skip
        return adata if copy else None
    space, layer = _check_threat(adata, threat, method)
    model = options.model if options.model is not None else get_model(adata, _keys.STEP_CLASSIFIER)
    _check_detector(detector, model, method)
    # X is checked to be in the classifier's scaled space (a raw or unscaled X would be attacked silently)
    X = classifier_input(adata, model) if layer is None else matrix_for_genes(adata, model.var_names, layer)
    view = space_model(adata, model, space)
    other = other_counts(adata, model.var_names) if space == "counts" else None
    dev = settings.torch_device(options.device)
    bs = int(options.batch_size or settings.batch_size)
    X_clean = to_scaled(view, X, other, batch_size=bs)
    source = _source_codes(
        adata, options.labels_key, list(model.classes), lambda: model.predict_arrays(X_clean, device=dev)[0].argmax(1)
    )
    goal = _target_codes(adata, target_class, list(model.classes))
    tarr = _threat_arrays(adata, threat, space, method, X, model)
    y = source if goal is None else goal
    queries: dict[float, float] = {}
    if method in SCORE_METHODS:
        was_training, home = model.training, next(model.parameters()).device
        model.eval().to(dev)
        try:
            run, queries = _score_run(
                _view_proba(view, bs), X, y, method=method, eps_list=eps_list, tarr=tarr, targeted=goal is not None, options=options, bs=bs
            )  # fmt: skip
        finally:  # the caller's model comes back as it was: mode and device
            model.train(was_training).to(home)
    else:
        run = run_attack(
            view, X, y, method=method, eps=eps_list, threat=tarr, config=options.iter_config(),
            targeted=goal is not None, other=other, detector=detector, detector_weight=options.detector_weight,
            batch_size=bs, device=dev, random_state=options.random_state,
        )  # fmt: skip

    if copy:
        adata = adata.copy()
    layers, preds = [], {}
    extra: dict[str, dict] = {"target_rate": {}, "flip_rate_continuous": {}, "detector": {}, "queries": {}}
    for e, Xa in run.adversarial.items():
        name = f"{prefix}_eps{e:g}"
        _write_layer(adata, name, Xa, layer, pd.Index(model.var_names))
        Xs = to_scaled(view, Xa, other, batch_size=bs)
        preds[name] = _write_predictions(adata, model, Xs, layer=name)
        layers.append(name)
        if e in queries:
            extra["queries"][name] = queries[e]
        if goal is not None:
            extra["target_rate"][name] = _target_rate(preds[name], goal, source)
        if e in run.continuous:
            p_cont = model.predict_arrays(to_scaled(view, run.continuous[e], other, batch_size=bs), device=dev)[0]
            extra["flip_rate_continuous"][name] = float((p_cont.argmax(1) != source).mean())
        if detector is not None:
            thr = float(detector.threshold)
            flagged = _detector_logits(detector, Xs, bs, dev) >= float(np.log(thr / (1 - thr)))
            flipped = preds[name] != source
            weights = np.atleast_1d(options.detector_weight).astype(float)
            extra["detector"][name] = {
                "flagged": float(flagged.mean()), "evasion": float((flipped & ~flagged).mean()),
                "weight_chosen": np.array([(run.detector_weight[e] == np.float32(w)).sum() for w in weights]),
            }  # fmt: skip
            extra["detector"]["threshold"] = thr
    metrics = flip_table(source, preds, list(model.classes))
    metrics["flip_rate_per_eps"] = np.array([metrics["flip_rate"][n] for n in layers])
    metrics.update({k: v for k, v in extra.items() if v})
    params = _record_params(
        method, eps_list, space=space, layer=layer, threat=threat, options=options, target_class=target_class,
        targeted=goal is not None, detector=detector, n_genes=X.shape[1],
    )  # fmt: skip
    root = uns_root(adata)
    root.setdefault(_keys.STEP_ATTACKS, {})
    root[_keys.STEP_ATTACKS][prefix] = h5ad_safe(
        {
            "params": params,
            "layers": layers,
            "eps": eps_list,
            "metrics": metrics,
            "kind": "score_based" if method in SCORE_METHODS else "whitebox",
        }
    )
    return adata if copy else None


__all__ = ["attack", "ThreatModel", "AttackOptions", "flip_table"]
