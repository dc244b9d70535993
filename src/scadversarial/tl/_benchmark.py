"""``sad.tl.benchmark_detectors``: every detector against every threat and benign shift, on held-out cells."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _keys
from .._settings import logger, settings
from .._validate import check_adata, check_choice, check_obs_key, get_record, h5ad_safe, uns_root
from ..detection import tpr_at_fpr
from ..models.classifier import CellClassifier
from ..models.detector import AdversarialDetector
from ._benchmark_defences import CertifiedRows, HardenedRows, accuracy, certified_rows, true_codes
from ._benchmark_threats import (
    ThreatSpec,
    _Inputs,
    _layer_record,
    _observed_over_all_cells,
    _record_space,
    _run_threat,
)
from ._certify import CertifyOptions
from ._input import classifier_input
from ._models import get_model
from ._shifts import DEFAULT_SHIFTS, BenignShift, benign_shift

Subset = Literal["test", "val", "train"]

#: False-positive rate of the reported TPR (the rate the honest-evaluation rules report).
REPORTED_FPR = 0.05
#: Name of ``sad``'s own trained detector in ``detectors=`` and in the table.
SAD_DETECTOR = "sad"
#: Columns of the benchmark table, in order (see :func:`benchmark_detectors`).
COLUMNS = (
    "threat",
    "kind",
    "detector",
    "space",
    "constraint",
    "n_cells",
    "flip_rate",
    "auroc",
    "auroc_flipped",
    "tpr_at_5fpr",
    "flagged",
    "evasion",
    "fpr",
    "pred_changed",
    "threshold",
    "accuracy",
)


@dataclass(frozen=True)
class BenchmarkOptions:
    """Options of :func:`benchmark_detectors`.

    Attributes
    ----------
    target_fpr
        False-positive rate of the baselines' thresholds on clean validation cells (5 %, the rate
        at which the table reports TPR).
    train_layers
        Adversarial layers of ``adata`` whose training-split rows are the baselines' adversarial
        examples (default: the layers the ``sad`` detector was trained on).
    detector_key, classifier_key
        Run records of the ``sad`` detector and of the classifier.
    random_state
        Seed of the baselines' fits and of the benign shifts.
    batch_size
        Cells per batch (default ``sad.settings.batch_size``).
    device
        Torch device (default ``sad.settings.device``).
    certified
        Rows of the randomized-smoothing certificate (:class:`CertifiedRows`: noise levels, radii,
        draws), or ``None`` for none.
    hardened_key
        Run record of a hardened classifier (``sad.tl.train_classifier(..., adversarial=...,
        key_added=hardened_key)``): its clean accuracy, and its flip rate and accuracy under every
        threat attacked anew against it (white box), or ``None`` for none. Detector-aware specs and
        callable threats are not rerun (they are tied to the standard classifier and its detector),
        except a callable with an ``against(classifier)`` method, such as
        :class:`~scadversarial.tl.InsideCountChecks`, which is rerun against the hardened classifier:
        its flip rate there bounds that attacker's evasion of the hardened classifier behind the
        detector's count checks.

    """

    target_fpr: float = 0.05
    train_layers: tuple[str, ...] | None = None
    detector_key: str = _keys.STEP_DETECTOR
    classifier_key: str = _keys.STEP_CLASSIFIER
    random_state: int = 0
    batch_size: int | None = None
    device: str | None = None
    certified: CertifiedRows | None = None
    hardened_key: str | None = None


@dataclass(frozen=True)
class _Scorer:
    """A fitted, calibrated detector: scores (higher: more suspicious) and the flag threshold."""

    score: Callable[[np.ndarray], np.ndarray]
    threshold: float


@dataclass(frozen=True)
class _Outcome:
    """What the classifier and the detectors make of one set of inputs of the benchmarked cells."""

    pred: np.ndarray  # class index per cell
    scores: dict[str, np.ndarray]  # per detector


def _baseline_names() -> tuple[str, ...]:
    from .. import detection

    return tuple(getattr(detection, "BASELINES", ()))


def _scorers(
    adata: AnnData, names, clf: CellClassifier, split: np.ndarray, opts: BenchmarkOptions
) -> dict[str, _Scorer]:
    """Fit (training split) and calibrate (validation split) every requested detector; test cells are never read."""
    bs = int(opts.batch_size or settings.batch_size)
    dev = settings.torch_device(opts.device)
    if names is None:
        names = [SAD_DETECTOR, *_baseline_names()]
    items = names.items() if isinstance(names, Mapping) else [(str(n), n) for n in names]
    out: dict[str, _Scorer] = {}
    train, val = np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
    X_train = X_val = X_adv = None
    for name, given in items:
        det = get_model(adata, opts.detector_key) if isinstance(given, str) and given == SAD_DETECTOR else given
        if isinstance(det, AdversarialDetector):
            out[name] = _Scorer(
                lambda X, d=det: d.score_arrays(X, batch_size=bs, device=dev, progress_bar=False)[2],
                float(det.threshold),
            )
            continue
        if isinstance(det, str):
            if det not in _baseline_names():
                msg = f"Unknown detector {det!r}; use {SAD_DETECTOR!r} or a baseline of {_baseline_names()}."
                raise ValueError(msg)
            from ..detection import make_baseline

            if len(train) < 2 or len(val) < 2:
                msg = (
                    f"Baseline {det!r} is fitted on training-split and calibrated on validation-split cells, "
                    f"but the split has {len(train)} / {len(val)}. Run `sad.pp.split(adata)` with a validation part."
                )
                raise ValueError(msg)
            if X_train is None:  # read the training and validation rows only (never the test rows)
                X_train = classifier_input(adata[train], clf)
                X_val = classifier_input(adata[val], clf)
                X_adv = _train_adversarial(adata, train, clf, opts)
            base = make_baseline(det, batch_size=opts.batch_size, device=opts.device)
            base.fit(clf, X_train, X_adv=X_adv, rng=np.random.default_rng(opts.random_state))
            thr = base.calibrate(X_val, target_fpr=opts.target_fpr)
            out[name] = _Scorer(base.score, float(thr))
            continue
        if callable(getattr(det, "score", None)) and getattr(det, "threshold", None) is not None:
            out[name] = _Scorer(det.score, float(det.threshold))
            continue
        msg = (
            f"Detector {name!r} is a {type(det).__name__}; pass {SAD_DETECTOR!r}, a baseline name, an "
            "AdversarialDetector, or a fitted object with `.score(X)` and a calibrated `.threshold`."
        )
        raise TypeError(msg)
    return out


def _train_adversarial(adata: AnnData, train: np.ndarray, clf: CellClassifier, opts: BenchmarkOptions) -> np.ndarray:
    """The training-split rows of the adversarial layers the baselines learn from."""
    layers = opts.train_layers
    if layers is None:
        rec = get_record(adata, opts.detector_key, producer="sad.tl.train_detector")
        layers = tuple(str(x) for x in np.atleast_1d(rec["params"]["layers"]))
    cells = adata[train]
    inputs = _Inputs(cells, clf)
    return np.concatenate([inputs.scaled(lay, _record_space(_layer_record(adata, lay)[1])[0]) for lay in layers])


def _outcome(inputs: _Inputs, X: np.ndarray, scorers: Mapping[str, _Scorer]) -> _Outcome:
    logits, _ = inputs.clf.predict_arrays(X)
    return _Outcome(logits.argmax(1), {name: np.asarray(s.score(X), dtype=np.float64) for name, s in scorers.items()})


def _row(threat: str, kind: str, detector: str, meta: tuple[str, str], n_cells: int, **values) -> dict:
    """One row of the table: the given values, NaN in the other metric columns."""
    row = dict.fromkeys(COLUMNS, np.nan)
    row.update(threat=threat, kind=kind, detector=detector, space=meta[0], constraint=meta[1], n_cells=n_cells)
    row.update(values)
    return row


def _auroc(clean: np.ndarray, attacked: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if len(clean) == 0 or len(attacked) == 0:
        return float("nan")
    y = np.r_[np.zeros(len(clean)), np.ones(len(attacked))]
    return float(roc_auc_score(y, np.r_[clean, attacked]))


def _worst_case(clean_pred: np.ndarray, outs: Sequence[_Outcome], name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(flipped, score)`` of the attacker's pick per cell among its attacked versions.

    The pick is the flipped version the detector scores lowest (the lowest-scored one when none flipped).
    """
    flips = np.stack([o.pred != clean_pred for o in outs])
    scores = np.stack([o.scores[name] for o in outs])
    pick = np.where(flips, scores, np.inf).argmin(0)
    none = ~flips.any(0)
    pick[none] = scores[:, none].argmin(0)
    cols = np.arange(scores.shape[1])
    return flips[pick, cols], scores[pick, cols]


def _attack_rows(
    threat: str,
    outs: Sequence[_Outcome],
    clean: _Outcome,
    scorers: Mapping[str, _Scorer],
    meta: tuple[str, str],
    acc: float,
) -> list[dict]:
    rows = []
    for name, s in scorers.items():
        if len(outs) == 1:
            flipped, score = outs[0].pred != clean.pred, outs[0].scores[name]
        else:
            flipped, score = _worst_case(clean.pred, outs, name)
        c = clean.scores[name]
        flagged = score >= s.threshold
        y = np.r_[np.zeros(len(c)), np.ones(len(score))]
        rows.append(
            _row(
                threat,
                "attack",
                name,
                meta,
                len(score),
                flip_rate=float(flipped.mean()),
                auroc=_auroc(c, score),
                auroc_flipped=_auroc(c, score[flipped]),
                tpr_at_5fpr=tpr_at_fpr(y, np.r_[c, score], REPORTED_FPR),
                flagged=float(flagged.mean()),
                evasion=float((flipped & ~flagged).mean()),
                fpr=float((c >= s.threshold).mean()),
                threshold=s.threshold,
                accuracy=acc,
            )
        )
    return rows


def _clean_rows(clean: _Outcome, scorers: Mapping[str, _Scorer], acc: float) -> list[dict]:
    rows = []
    for name, s in scorers.items():
        fp = float((clean.scores[name] >= s.threshold).mean())
        meta = ("scaled", "none")
        values = {"flagged": fp, "fpr": fp, "pred_changed": 0.0, "threshold": s.threshold, "accuracy": acc}
        rows.append(_row("clean", "clean", name, meta, len(clean.pred), **values))
    return rows


def _benign_rows(threat: str, out: _Outcome, clean: _Outcome, scorers: Mapping[str, _Scorer], acc: float) -> list[dict]:
    rows = []
    changed = float((out.pred != clean.pred).mean())
    for name, s in scorers.items():
        fp = float((out.scores[name] >= s.threshold).mean())
        auroc = _auroc(clean.scores[name], out.scores[name])
        values = {"auroc": auroc, "flagged": fp, "fpr": fp, "pred_changed": changed, "threshold": s.threshold}
        rows.append(_row(threat, "benign", name, ("counts", "benign"), len(out.pred), **values, accuracy=acc))
    return rows


def _check_options(subset: str, opts: BenchmarkOptions) -> None:
    check_choice("subset", subset, Subset)
    if not 0 < opts.target_fpr < 1:
        msg = f"target_fpr must be a fraction in (0, 1), got {opts.target_fpr}; 0.05 is the usual choice."
        raise ValueError(msg)


def benchmark_detectors(
    adata: AnnData,
    *,
    attacks: Mapping[str, ThreatSpec],
    detectors: Sequence[str] | Mapping[str, Any] | None = None,
    benign: Mapping[str, BenignShift] | None = None,
    split_key: str = _keys.OBS_SPLIT,
    subset: Subset = "test",
    options: BenchmarkOptions | None = None,
    key_added: str = "benchmark",
    copy: bool = False,
) -> AnnData | None:
    """Every detector against every threat and benign shift, on held-out cells, in one tidy table.

    The cells of ``subset`` (held-out test cells by default) are copied and attacked there with
    each threat; every attacked layer is read in the space its attack record states (scaled, log or
    counts, through the classifier's own transform) and scored by every detector. Baseline detectors
    are fitted on training-split cells (clean, and the training-split rows of ``train_layers``)
    and calibrated on validation-split cells; ``sad``'s detector keeps its own calibrated
    threshold. Test cells are never used to fit or calibrate anything.

    A threat given as a list of attack specs (e.g. a detector-aware attacker's ``detector_weight``
    sweep) is one row, worst case per cell and per detector: the attacker keeps, of the cell's
    attacked versions, the flipped one the detector scores lowest (the lowest-scored one when none
    flipped), so a cell evades when any version flipped and was not flagged.

    Parameters
    ----------
    adata
        AnnData with a classifier (:func:`train_classifier`), a split (:func:`~scadversarial.pp.split`)
        and, for ``'sad'``, a detector (:func:`train_detector`).
    attacks
        ``{row name: spec}``. A spec is a dict of :func:`attack` arguments (each layer it writes is
        a row, e.g. ``{'method': 'pgd', 'eps': (0.05, 0.1)}``), a list of such dicts (one
        worst-case row), or a callable that writes attacked layers on the AnnData it gets (the
        benchmarked cells) and returns their names (one row per layer; its space is read from the
        layer's attack record, scaled when it has none) or ``{layer: space}``.
    detectors
        Names (``'sad'`` and baselines of :data:`scadversarial.detection.BASELINES`), or
        ``{name: detector}`` with an :class:`~scadversarial.models.AdversarialDetector` or a fitted
        object with ``.score(X)`` and ``.threshold``. Default: ``'sad'`` and every baseline of this version.
    benign
        ``{row name: BenignShift}``; default the four shifts of ``DEFAULT_SHIFTS`` (thinning to 50 %
        and 25 %, 10 % ambient RNA, expressed-gene noise), ``{}`` for none. Needs ``.layers['counts']``.
    split_key
        ``.obs`` column with the ``'train'``/``'val'``/``'test'`` split.
    subset
        Split whose cells are attacked and reported (``'test'``; others only to debug).
    options
        A :class:`BenchmarkOptions` (target FPR, baselines' training layers, records, seed, device).
    key_added
        Name of the record in ``.uns['sad']``.
    copy
        Return a copy of ``adata`` with the record instead of writing to ``adata``.

    Returns
    -------
    ``None``, or the copy with ``copy=True``. The attacks run on a copy of the benchmarked cells, so
    ``adata`` gains only the record; read its table with :func:`scadversarial.get.benchmark_table`:
    a DataFrame, one row per threat x detector, with columns ``threat``, ``kind``
    (``'clean'``, ``'attack'`` or ``'benign'``), ``detector``, ``space``, ``constraint``, ``n_cells``,
    ``flip_rate`` (prediction differs from the clean one), ``auroc`` (clean vs attacked or shifted
    cells), ``auroc_flipped`` (clean vs flipped cells), ``tpr_at_5fpr``, ``flagged`` (fraction
    flagged at the threshold), ``evasion`` (flipped and not flagged), ``fpr`` (clean or shifted
    cells flagged; on attack rows the clean cells'), ``pred_changed`` (benign rows: predictions
    changed by the shift), ``threshold`` and ``accuracy`` (the classifier's calls that match the
    true labels of its training column, NaN without them; a sweep: right under every version).

    The defences' rows follow, with ``detector='none'``: with ``options.certified``, kind
    ``'certified'``, one row per noise level and radius (``'certified σ=0.25 r=0.1'``): ``accuracy``
    is the certified accuracy (:func:`certify`: correct and certified at least that L2 radius in log
    space), ``flagged`` the abstentions, ``pred_changed`` the smoothed calls that differ from the clean
    ones; with ``options.hardened_key``, kind ``'hardened'``, the hardened classifier's ``clean`` row,
    a row per attack row (attacked anew against it; ``flip_rate``, ``accuracy``) and per benign
    shift (``pred_changed``, ``accuracy``).

    Writes ``.uns['sad'][key_added]``: ``params`` (threats, detectors, benign shifts, subset, target
    FPR, seed, ``hardened_key``, ``certified``), ``metrics`` (``n_cells``, ``n_fit``, ``n_calibration``) and ``table`` (the columns as arrays).

    Examples
    --------
    >>> import scadversarial as sad
    >>> adata = sad.datasets.pbmc3k("pbmc3k.h5ad")  # doctest: +SKIP
    >>> sad.pp.preprocess(adata)  # doctest: +SKIP
    >>> sad.pp.split(adata, "seurat_cell_type")  # doctest: +SKIP
    >>> sad.tl.train_classifier(adata, "seurat_cell_type")  # doctest: +SKIP
    >>> sad.tl.attack(adata)  # doctest: +SKIP
    >>> sad.tl.train_detector(adata)  # doctest: +SKIP
    >>> det = sad.get.model(adata, "detector")  # doctest: +SKIP
    >>> threats = {  # doctest: +SKIP
    ...     "seed PGD": {"method": "pgd", "eps": (0.05, 0.1, 0.15)},
    ...     "expressed log": {"method": "pgd", "eps": 0.5, "space": "log", "constraint": "expressed"},
    ...     "detector-aware": [
    ...         {
    ...             "method": "pgd",
    ...             "eps": 0.5,
    ...             "space": "log",
    ...             "constraint": "expressed",
    ...             "detector": det,
    ...             "detector_weight": w,
    ...         }
    ...         for w in (0.0, 1.0, 10.0)
    ...     ],
    ... }
    >>> sad.tl.benchmark_detectors(adata, attacks=threats)  # doctest: +SKIP
    >>> table = sad.get.benchmark_table(adata)  # doctest: +SKIP
    >>> sad.pl.benchmark(table, metric="evasion")  # doctest: +SKIP

    """
    check_adata(adata)
    opts = options or BenchmarkOptions()
    _check_options(subset, opts)
    if not attacks:
        msg = "attacks is empty; pass at least one threat, e.g. {'pgd': {'method': 'pgd', 'eps': 0.1}}."
        raise ValueError(msg)
    benign = dict(DEFAULT_SHIFTS) if benign is None else dict(benign)
    bad = [k for k, v in benign.items() if not isinstance(v, BenignShift)]
    if bad:
        msg = f"benign shifts {bad} are not BenignShift objects; pass e.g. {{'thinning 50%': BenignShift('thinning', 0.5)}}."
        raise TypeError(msg)
    split = check_obs_key(adata, split_key, producer="sad.pp.split").astype(str).to_numpy()
    sel = np.flatnonzero(split == subset)
    if len(sel) < 2:
        msg = f"Only {len(sel)} cells in split {subset!r} of adata.obs[{split_key!r}]; run `sad.pp.split(adata)`."
        raise ValueError(msg)
    clf = get_model(adata, opts.classifier_key)
    if not isinstance(clf, CellClassifier):
        msg = f"The {opts.classifier_key!r} model is a {type(clf).__name__}; the benchmark needs a CellClassifier (`sad.tl.train_classifier`)."
        raise TypeError(msg)
    scorers = _scorers(adata, detectors, clf, split, opts)
    hard = None if opts.hardened_key is None else HardenedRows(adata, opts.hardened_key)
    labels_key = get_record(adata, opts.classifier_key, producer="sad.tl.train_classifier")["params"].get("labels_key")

    cells = adata[sel].copy()
    cells.uns[_keys.UNS].pop(_keys.STEP_ATTACKS, None)  # the benchmark's own attack records only
    inputs = _Inputs(cells, clf)
    truth = true_codes(cells, clf, labels_key)
    clean = _outcome(inputs, inputs.scaled(None, "scaled"), scorers)
    rows = _clean_rows(clean, scorers, accuracy(clean.pred, truth))
    if hard is not None:
        hard.start(cells, labels_key)
    # attacked against the benchmarked classifier (not the default record's when classifier_key names another)
    other = None if opts.classifier_key == _keys.STEP_CLASSIFIER else clf
    for i, (name, given) in enumerate(attacks.items()):
        spec, observed = _observed_over_all_cells(adata, given, clf)
        for row, layers, (space, constraint) in _run_threat(cells, str(name), spec, i, other):
            meta = (space, "observed" if observed else constraint)
            outs = [_outcome(inputs, inputs.scaled(lay, sp), scorers) for lay, sp in layers]
            rows += _attack_rows(row, outs, clean, scorers, meta, accuracy([o.pred for o in outs], truth))
            logger.info("benchmark: %s done (%d layers)", row, len(layers))
        if hard is not None:
            hard.attack(cells, str(name), spec, i, observed=observed)
    for j, (name, shift) in enumerate(benign.items()):
        shifted = benign_shift(cells, shift.kind, amount=shift.amount, random_state=opts.random_state + j)
        out = _outcome(_Inputs(shifted, clf), classifier_input(shifted, clf), scorers)
        rows += _benign_rows(str(name), out, clean, scorers, accuracy(out.pred, truth))
        if hard is not None:
            hard.shift(str(name), shifted)
    if opts.certified is not None:
        cert_opts = CertifyOptions(
            split=None, labels_key=labels_key, random_state=opts.random_state, device=opts.device
        )
        rows += certified_rows(cells, clf, clean_pred=clean.pred, truth=truth, spec=opts.certified, options=cert_opts)
    rows += [] if hard is None else hard.rows
    table = pd.DataFrame(rows, columns=list(COLUMNS))

    params = {
        "threats": [str(k) for k in attacks],
        "detectors": list(scorers),
        "benign": list(benign),
        "benign_kind": [s.kind for s in benign.values()],
        "benign_amount": [float(s.amount) for s in benign.values()],
        "split_key": split_key,
        "subset": subset,
        "target_fpr": opts.target_fpr,
        "random_state": int(opts.random_state),
        "detector_key": opts.detector_key,
        "hardened_key": opts.hardened_key,
        "certified": None if opts.certified is None else asdict(opts.certified),
    }
    n_fit, n_cal = int((split == "train").sum()), int((split == "val").sum())
    metrics = {"n_cells": len(sel), "n_fit": n_fit, "n_calibration": n_cal}
    out = adata.copy() if copy else adata
    uns_root(out)[key_added] = h5ad_safe({"params": params, "metrics": metrics, "table": table})
    return out if copy else None


__all__ = ["BenchmarkOptions", "benchmark_detectors"]
