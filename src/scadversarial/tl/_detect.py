"""``sad.tl.meta_features``, ``sad.tl.train_detector`` and ``sad.tl.detect``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from .. import _keys
from .._docs import doc_copy, doc_params, doc_returns_copy
from .._settings import logger, settings
from .._validate import check_adata, check_choice, check_copy, check_obs_key, set_record, uns_root
from ..detection import (
    DetectorConfig,
    DetectorFeatures,
    FeatureSpec,
    feature_names,
    fit_detector,
    fit_input_reference,
    reason_key,
)
from ..detection._fit import Calibration
from ..detection._rule_layer import FLAG_REASONS, REASONS
from ..detection._singletons import fit_first_layer
from ..models.classifier import CellClassifier
from ..models.detector import AdversarialDetector, DetectorArchitecture
from ._attack_record import attacked_cells
from ._chunks import map_chunks
from ._detect_score import (
    DOC_CHUNKED,
    DOC_SCORING,
    ChunkReader,
    chunk_layers,
    chunk_reader,
    concat_reports,
    detect_chunk,
    detector_features,
    layer_list,
    map_layers,
    meta_chunk,
    on_all_cells,
    read_rows,
    scores_and_reasons,
    watched_classifier,
)
from ._models import get_model, set_model_reference
from ._space import counts_target_sum

#: Role of each cell in ``.obs['sad_detector_role']``.
ROLES = ("meta_train", "calibration", "reference", "unused")
#: Second word of the seed of the singleton check's Poisson resampling: a stream apart from the detector's training.
SINGLETON_STREAM = 1
Missing = Literal["raise", "fill"]


def _attack_layers(adata: AnnData, attack_key: str, layers: Sequence[str] | None) -> list[str]:
    if layers is None:
        rec = adata.uns.get(_keys.UNS, {}).get(_keys.STEP_ATTACKS, {}).get(attack_key)
        if rec is None:
            msg = (
                f"No attack {attack_key!r} in adata.uns['sad']['attacks']. Run `sad.tl.attack(adata)` first, "
                "or pass `layers=[...]` naming perturbed layers."
            )
            raise KeyError(msg)
        layers = [str(v) for v in np.atleast_1d(rec["layers"])]
    layers = [str(v) for v in layers]
    missing = [v for v in layers if v not in adata.layers]
    if missing or not layers:
        msg = f"Adversarial layers {missing or layers} not found in adata.layers ({list(adata.layers)}). Run `sad.tl.attack` first."
        raise KeyError(msg)
    return layers


def _split_array(adata: AnnData, split_key: str) -> np.ndarray:
    split = check_obs_key(adata, split_key, producer="sad.pp.split").astype(str).to_numpy()
    if not (split == "train").any():
        msg = f"No 'train' cells in adata.obs[{split_key!r}]. Run `sad.pp.split(adata)`."
        raise ValueError(msg)
    return split


@dataclass(frozen=True)
class DetectorCells:
    """Which cells :func:`train_detector` reads, and the role each plays.

    Parameters
    ----------
    split_key
        ``.obs`` column with ``'train'``/``'val'``/``'test'``.
    meta_fraction
        Fraction of training-split cells in the meta-training set.
    calibration
        ``'val'``: calibrate on the validation split (falls back to ``'train'`` when it is empty);
        ``'train'``: on another ``meta_fraction`` of the training split.
    n_reference
        Maximum number of reference cells of the input-consistency features.
    labels_key
        Classes for the triplets (default: the classifier's clean predictions, no label needed).
    """

    split_key: str = _keys.OBS_SPLIT
    meta_fraction: float = 0.25
    calibration: Calibration = "val"
    n_reference: int = 1000
    labels_key: str | None = None

    def __post_init__(self) -> None:
        if not 0 < self.meta_fraction < 1:
            msg = f"meta_fraction must be in (0, 1), got {self.meta_fraction}."
            raise ValueError(msg)
        check_choice("calibration", self.calibration, Calibration)


@dataclass(frozen=True)
class _Roles:
    meta: np.ndarray
    calibration: np.ndarray
    reference: np.ndarray
    calibration_source: str


def _roles(split: np.ndarray, cells: DetectorCells, rng: np.random.Generator, *, reference_needed: bool) -> _Roles:
    """Meta-training, calibration and reference cells, all from the training and validation splits."""
    train_idx = np.flatnonzero(split == "train")
    val_idx = np.flatnonzero(split == "val")
    perm = rng.permutation(train_idx)
    n_meta = max(2, round(cells.meta_fraction * len(train_idx)))
    meta_idx = np.sort(perm[:n_meta])
    source = "val" if cells.calibration == "val" and len(val_idx) >= 2 else "train"
    if source == "val":
        cal_idx, rest = val_idx, perm[n_meta:]
    else:
        cal_idx, rest = np.sort(perm[n_meta : 2 * n_meta]), perm[2 * n_meta :]
    n_ref = cells.n_reference
    ref_idx = np.sort(rest if len(rest) <= n_ref else rng.choice(rest, n_ref, replace=False))
    if reference_needed and len(ref_idx) < 2:
        msg = (
            f"Only {len(ref_idx)} training-split cells are left for the input-consistency reference. "
            "Lower `meta_fraction`, use more training cells (`sad.pp.split(train_size=...)`), "
            "or pass features=FeatureSpec(input=False)."
        )
        raise ValueError(msg)
    if len(cal_idx) < 2:
        msg = "Too few cells to calibrate the detector. Use a validation split (`sad.pp.split(val_size=...)`) or more cells."
        raise ValueError(msg)
    if (split[np.concatenate([meta_idx, cal_idx, ref_idx])] == "test").any():  # cannot happen by construction
        msg = "Internal error: a test-split cell was selected for detector training."
        raise RuntimeError(msg)
    return _Roles(meta_idx, cal_idx, ref_idx, source)


def _attacked_roles(roles: _Roles, keep: np.ndarray) -> _Roles:
    """Meta-training and calibration cells of a sampled attack: those attacked in every layer (the reference is clean)."""
    meta, cal = roles.meta[keep[roles.meta]], roles.calibration[keep[roles.calibration]]
    if len(meta) < 2 or len(cal) < 2:
        msg = (
            f"The sampled attack left {len(meta)} meta-training and {len(cal)} calibration cells (at least 2 "
            "each): the detector learns from attacked cells only. Attack more training and validation cells, "
            "e.g. `sad.tl.attack(adata, cells=adata.obs['sad_split'] != 'test')`."
        )
        raise ValueError(msg)
    return replace(roles, meta=meta, calibration=cal)


def _record_params(
    attack_key: str,
    layers: list[str],
    cells: DetectorCells,
    features: FeatureSpec,
    config: DetectorConfig,
    roles: _Roles,
    classifier_key: str,
    random_state: int,
) -> dict:
    """The run record's ``params``: the call's own arguments, flat (the keys of earlier versions)."""
    return {
        "attack_key": attack_key,
        "layers": layers,
        "split_key": cells.split_key,
        "meta_fraction": cells.meta_fraction,
        "calibration": roles.calibration_source,
        "use_triplet": config.use_triplet,
        "gradient_features": features.gradient,
        "input_features": features.input,
        "groups": features.groups,
        "labels_key": cells.labels_key or "predicted",
        "n_pcs": features.n_pcs,
        "n_neighbors": features.n_neighbors,
        "n_reference": cells.n_reference,
        "grad_genes": features.grad_genes,
        "triplet_epochs": config.triplet_epochs,
        "epochs": config.epochs,
        "patience": config.patience,
        "lr": config.lr,
        "weight_decay": config.weight_decay,
        "batch_size": config.batch_size,
        "target_fpr": -1.0 if config.target_fpr is None else float(config.target_fpr),
        "max_fpr": -1.0 if config.max_fpr is None else float(config.max_fpr),
        "rules": config.rules,
        "singletons": config.rules and config.singletons,
        "two_counts": config.rules and config.two_counts,
        "share_margin": -1.0 if config.share_margin is None else float(config.share_margin),
        "classifier_key": classifier_key,
        "random_state": int(random_state),
    }


def _share_ceiling(log_max: float, target_sum: float | None) -> float | None:
    """The largest share of its library one gene may hold under the log ceiling ``log_max`` (``None``: no target sum)."""
    return None if target_sum is None else min(float(np.expm1(log_max)) / target_sum, 1.0)


def _column_max(reader: ChunkReader, chunk: AnnData) -> np.ndarray:
    return reader.inputs(chunk)[0].max(0)


def _gene_max(adata: AnnData, clf: CellClassifier, cells: np.ndarray) -> np.ndarray:
    """Per gene, the largest value of the classifier's scaled input over ``cells`` (a mask), read chunk by chunk."""
    reader = chunk_reader(adata, clf, [None], missing="raise", batch_size=None, device="cpu")
    layers = chunk_layers(adata, reader.layers, reader.source)
    parts = map_chunks(adata, partial(_column_max, reader), layers=layers, rows=np.flatnonzero(cells))
    return np.max(np.stack(parts), 0)


@doc_params(doc_copy=doc_copy, doc_returns_copy=doc_returns_copy)
def train_detector(
    adata: AnnData,
    attack_key: str = "sad_pgd",
    *,
    layers: Sequence[str] | None = None,
    cells: DetectorCells | None = None,
    features: FeatureSpec | None = None,
    config: DetectorConfig | None = None,
    classifier_key: str = _keys.STEP_CLASSIFIER,
    random_state: int = 0,
    key_added: str = _keys.STEP_DETECTOR,
    copy: bool = False,
) -> AnnData | None:
    """Train the default adversarial-cell detector on training-split cells and calibrate its threshold.

    The detector has two layers. The **plausibility rules** (``config.rules``, on by default) flag
    a cell whose scaled input no preprocessing of integer counts can produce: a value beyond the
    clip or above the log ceiling (one gene holding more of its cell's library than
    ``config.share_margin``, 1.5 by default, times the most any gene holds in a training cell, at
    most the whole library; the target sum is read from the preprocessing record, no ceiling when
    the data were not normalized from counts here), a negative log-expression, a value off the
    cell's lattice ``log1p(k * target_sum / N)`` (see :func:`~scadversarial.detection.rule_counts`).
    They learn only the smallest positive value of the clean training cells, whether those lie on
    the lattice and the largest share of its library one gene holds in any training cell; each cell's unit
    ``target_sum / N`` is estimated from its own values. With them, the **count checks**
    (``config.singletons``, ``config.two_counts``, on by default for count data) flag a cell on the
    lattice with too few genes at one count, or at two counts among those at two or more; their
    thresholds are fitted on the calibration cells and their Poisson resampling
    (:func:`~scadversarial.detection.fit_count_checks`). The **learned detector** scores every
    cell: the training-split cells are shuffled (``random_state``) and divided: a
    ``cells.meta_fraction`` part is the meta-training set (each clean cell labelled 0 and its
    perturbed versions in every adversarial layer labelled 1); the rest is the clean reference
    of the input-consistency features (PCA basis, kNN cells, per-gene minima). Early stopping and
    the threshold use the calibration cells: the validation split (``cells.calibration='val'``,
    the default when it has cells), otherwise another ``meta_fraction`` of the training split.
    With a sampled attack (``sad.tl.attack(..., cells=...)``) the meta-training and calibration
    cells are those attacked in every layer. **No test-split cell is learned from**: the detector
    is fitted on the meta-training, calibration and reference cells (and the log ceiling on the
    training split), read chunk by chunk from a backed, dask or sparse log-normalized input. The one
    read beyond them is the input-format check of ``X`` (:func:`input_space_problem`), which reads
    up to 1,000 cells spread over the whole matrix, test cells included, and decides only whether
    ``X`` is read as is or ``.layers['sad_lognorm']`` through the classifier's transform (the same
    values, up to float rounding, when ``X`` is the classifier's input). The training itself is
    :func:`~scadversarial.detection.fit_detector`: meta-features standardized with meta-training
    statistics, embedded by the triplet network (``features -> 256 -> 64``, L2-normalized,
    TripletMarginLoss with margin 1) and scored by the residual detector
    (``64 -> 128 -> ResBlock -> ResBlock -> 1``, BCE with logits balanced between classes).

    Parameters
    ----------
    adata
        AnnData with a classifier (:func:`train_classifier`), a split and adversarial layers (:func:`attack`).
    attack_key
        Attack record in ``.uns['sad']['attacks']`` whose layers are the positives.
    layers
        Adversarial layers to use instead of the attack record's.
    cells
        The split column and the roles of its cells (:class:`DetectorCells`).
    features
        Meta-feature groups and input-consistency sizes (:class:`~scadversarial.detection.FeatureSpec`).
        A detector without gradient features scores without a backward pass (``detect(low_latency=True)``).
    config
        Training, threshold, rules and device settings (:class:`~scadversarial.detection.DetectorConfig`).
    classifier_key
        Run record of the classifier to watch.
    random_state
        Seed of the cell partition, weight initialisation, triplet sampling and batch order
        (local generators; global random state is left unchanged).
    key_added
        Name of the run record in ``.uns['sad']``.
    {doc_copy}

    Returns
    -------
    {doc_returns_copy} The detector is read back with ``sad.get.model(adata, key_added)``. Sets:

    ``.obs['sad_detector_role']``
        Categorical ``'meta_train'``, ``'calibration'``, ``'reference'`` or ``'unused'`` (all
        test-split cells are ``'unused'``).
    ``.uns['sad'][key_added]``
        ``params``; ``metrics`` (threshold and its TPR/FPR on the calibration cells, calibration
        AUROC etc. of the learned score, training histories, cell counts, and ``rules``: the rules'
        bound, lattice switch and log ceiling ``log_max`` and the count checks' thresholds, ``None``
        for a check that is off);
        ``model`` (the reference); ``feature_names``.

    """
    check_adata(adata, min_obs=4, allow_backed=True)
    check_copy(adata, copy=copy, name="train_detector")
    cells, features, config = cells or DetectorCells(), features or FeatureSpec(), config or DetectorConfig()
    clf = watched_classifier(adata, classifier_key)
    layers = _attack_layers(adata, attack_key, layers)
    split = _split_array(adata, cells.split_key)
    rng = np.random.default_rng(random_state)
    roles = _roles(split, cells, rng, reference_needed=features.input)
    if att := [m for lay in layers if (m := attacked_cells(adata, lay)) is not None]:
        roles = _attacked_roles(roles, np.logical_and.reduce(att))
    labels = check_obs_key(adata, cells.labels_key).astype(str).to_numpy() if cells.labels_key else None

    dev = settings.torch_device(config.device)
    # only the cells the detector reads, chunk by chunk, each layer in its own space; ``local``: their rows there
    needed = np.unique(np.concatenate([roles.meta, roles.calibration, roles.reference]))
    reader = chunk_reader(adata, clf, [None, *layers], missing="raise", batch_size=None, device=config.device)
    X, *advs = read_rows(adata, reader, needed)
    local = _Roles(*(np.searchsorted(needed, r) for r in (roles.meta, roles.calibration, roles.reference)), "")
    ref = (
        fit_input_reference(X[local.reference], n_pcs=features.n_pcs, n_neighbors=features.n_neighbors)
        if features.input
        else None
    )
    spec = replace(features, n_pcs=ref.components.shape[0]) if ref is not None else features
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(int(random_state))
        det = AdversarialDetector(
            clf.var_names,
            clf.classes,
            clf.config,
            features=spec,
            architecture=DetectorArchitecture(use_triplet=config.use_triplet),
            n_reference=len(roles.reference) if ref is not None else 0,
            rules=config.rules,
            singletons=config.rules and config.singletons,
            two_counts=config.rules and config.two_counts,
            classifier_id=str(getattr(clf, "_sad_id", "")),
        )
        det.set_classifier(clf, rng=rng)
        if ref is not None:
            det.input_ref.load_state_dict(ref.state_dict())
        if config.rules:  # rules: clean training cells (read anyway); count checks: calibration cells
            train = X[np.sort(np.concatenate([local.meta, local.reference]))]
            seed = (int(random_state), SINGLETON_STREAM)
            ts = counts_target_sum(adata)
            # the log ceiling's share: every training cell, so that no rare cell type outside the sample is flagged
            top = None if ts is None or config.share_margin is None else _gene_max(adata, clf, split == "train")
            fit_first_layer(det, clf, train, X[local.calibration], config, seed=seed, target_sum=ts, gene_max=top)
        bs = settings.batch_size
        data = DetectorFeatures(
            *([detector_features(det, M[idx], dev, bs) for M in (X, *advs)] for idx in (local.meta, local.calibration))
        )
        if labels is None:
            labels = np.empty(adata.n_obs, dtype=np.int64)
            labels[roles.meta] = det.classifier.predict_arrays(X[local.meta], device=dev)[0].argmax(1)
        fit = fit_detector(det, data, labels[roles.meta], replace(config, device=str(dev)), rng=rng)

    if copy:
        adata = adata.copy()
    role = np.full(adata.n_obs, "unused", dtype=object)
    role[roles.reference] = "reference"
    role[roles.calibration] = "calibration"
    role[roles.meta] = "meta_train"
    adata.obs[_keys.OBS_DETECTOR_ROLE] = pd.Categorical(role, categories=list(ROLES))
    thr = fit.threshold
    metrics = {
        "threshold": thr["threshold"],
        "threshold_method": thr["method"],
        "calibration_tpr": thr["tpr"],
        "calibration_fpr": thr["fpr"],
        "calibration": fit.calibration,
        "history": fit.history,
        "n_meta_train": len(roles.meta),
        "n_calibration": len(roles.calibration),
        "n_reference": len(roles.reference),
        "n_meta_examples": len(roles.meta) * (1 + len(layers)),
    }
    if config.rules:
        two = det.count_checks.two_counts
        metrics["rules"] = {
            "zero_bound": float(det.rule_zero_bound),
            "lattice": bool(det.rule_lattice),
            "log_max": float(det.rule_log_max),
            # the same ceiling as the largest share of its library one gene may hold (what 'dominant gene' means)
            "share_ceiling": _share_ceiling(float(det.rule_log_max), counts_target_sum(adata)),
            "singleton_min": det.singleton_threshold if config.singletons else None,
            "two_count_rate": None if two is None else two.rate,
            "two_count_z_min": None if two is None else two.z_min,
        }
    params = _record_params(attack_key, layers, cells, features, config, roles, classifier_key, random_state)
    set_record(adata, key_added, params=params, metrics=metrics, feature_names=det.feature_names)
    set_model_reference(adata, key_added, det, save_dir=config.save_dir)
    logger.info(
        "detector: threshold %.4f, calibration AUROC %.4f, TPR %.3f at FPR %.3f",
        thr["threshold"],
        fit.calibration["auroc"],
        thr["tpr"],
        thr["fpr"],
    )
    return adata if copy else None


@doc_params(doc_scoring=DOC_SCORING, doc_chunked=DOC_CHUNKED, doc_copy=doc_copy, doc_returns_copy=doc_returns_copy)
def detect(
    adata: AnnData,
    layer: str | Sequence[str] | None = None,
    *,
    model: AdversarialDetector | None = None,
    detector_key: str = _keys.STEP_DETECTOR,
    low_latency: bool = False,
    threshold: float | None = None,
    missing: Missing = "raise",
    batch_size: int | None = None,
    device: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Score every cell: was its expression profile adversarially manipulated, and why is it flagged?

    The default detector (:func:`train_detector`) has two layers. First the **plausibility
    rules**: a value beyond the classifier's clip or above the log ceiling fitted by
    :func:`train_detector` (an entry at the clip included, when the clip's own log value already lies above it), a
    negative log-expression, a value off the
    cell's count lattice ``log1p(k * target_sum / N)`` (or, for a layer in count space,
    non-integer counts) cannot come from preprocessing real counts; such a cell is flagged
    whatever the learned detector says, and scores ``1 + log1p(violations) + log1p(excess)``, above every
    cell the rules pass: the score keeps growing with the number of impossible entries and with
    their *excess*, how far in log units they lie outside the range counts can produce (below
    zero, between zero and the smallest value a count gives, above the ceiling, beyond the clip;
    :func:`~scadversarial.detection.rule_excess`). So is a
    cell the count checks flag (too few genes at one or at two counts; its violations: the genes
    missing there). Then the
    **learned detector**: meta-features under the detector's feature spec, the triplet embedding
    and the residual detector's probability, flagged at the threshold calibrated on validation
    cells. The rules need no information beyond the scored matrix: each cell's library unit
    ``target_sum / N`` is estimated from its own values, and the bound on the smallest positive
    value was fitted on clean training cells. Genes are aligned by name to the detector's genes. A
    layer of a sampled attack (``sad.tl.attack(..., cells=...)``) is scored on its attacked cells only
    (score NaN, flag False, reason ``''``, NaN ``.obsm`` rows elsewhere; its metrics count those cells).

    {doc_chunked}

    Parameters
    ----------
    adata
        AnnData to score (the training data or new data scaled with :func:`~scadversarial.pp.preprocess` ``reference=``).
    layer
        Matrix to score: ``None`` or ``'X'`` (``X``), a layer name, or a list of them. A layer made in log or
        count space (see :func:`layer_space`) is converted through the classifier's transform first.
    model
        A detector; by default the one referenced in ``adata.uns['sad'][detector_key]``.
    detector_key
        Run record of the detector.
    low_latency
        Score without a backward pass and write only scores, flags and reasons (no ``.obsm``).
        Needs a detector trained with ``features=FeatureSpec(gradient=False)``.
    threshold
        Decision threshold of the learned score instead of the calibrated one.
    {doc_scoring}
    {doc_copy}

    Returns
    -------
    {doc_returns_copy} For each scored matrix (``X``; a layer ``L``):

    ``.obs['sad_score']`` / ``.obs['sad_score_L']``
        Detector score: the learned probability in [0, 1], or ``1 + log1p(violations) + log1p(excess)``
        (above 1) for a cell that breaks a rule.
    ``.obs['sad_adversarial']`` / ``.obs['sad_adversarial_L']``
        ``score >= threshold``, or a broken rule (whatever the threshold).
    ``.obs['sad_reason']`` / ``.obs['sad_reason_L']``
        Why a cell is flagged: ``'out of range'`` (beyond the clip), ``'dominant gene'`` (one gene
        holding more of the cell's library than the ceiling allows), ``'negative'``, ``'non-integer counts'``,
        ``'off lattice'`` (the first rule it breaks), ``'few single counts'``, ``'few double counts'``
        (the count checks), ``'learned'`` (the learned detector alone), ``''`` when not flagged (categorical).
    ``.obsm['sad_meta']`` / ``.obsm['sad_meta_L']``
        Raw meta-features (column names in ``.uns['sad']['detect']['feature_names']``); not with ``low_latency``.
    ``.obsm['X_sad_triplet']`` / ``.obsm['X_sad_triplet_L']``
        Triplet embedding (standardized meta-features for a detector without triplet net); not with ``low_latency``.
    ``.uns['sad']['detect']``
        ``params``, ``feature_names`` and per matrix (``metrics['X']``, ``metrics['L']``) the
        threshold, fraction flagged, fraction flagged by the rules, number of cells and the id of
        the detector that made the scores (``detector_id``, as in
        ``.uns['sad'][detector_key]['model']['id']``; ``''`` for an unregistered model) with its ``detector_key``.

    """
    check_adata(adata, allow_backed=True)
    check_copy(adata, copy=copy, name="detect")
    check_choice("missing", missing, Missing)
    if model is None:
        model = get_model(adata, detector_key)
    if not isinstance(model, AdversarialDetector):
        msg = f"Expected an AdversarialDetector, got {type(model).__name__}. Train one with `sad.tl.train_detector`."
        raise TypeError(msg)
    if low_latency and model.uses_gradient:
        msg = (
            "low_latency=True skips the backward pass, but this detector uses gradient features. Train one with "
            "`sad.tl.train_detector(adata, features=FeatureSpec(gradient=False))`, or pass low_latency=False."
        )
        raise ValueError(msg)
    layers = layer_list(layer)
    thr = float(model.threshold) if threshold is None else float(threshold)
    detector_id = str(getattr(model, "_sad_id", ""))  # scores name their detector, so a stale one is never reused
    reader = chunk_reader(adata, model, layers, missing=missing, batch_size=batch_size, device=device)
    reports = {
        lay: (concat_reports([r for r, _ in parts]), np.concatenate([n for _, n in parts]), cells)
        for lay, (parts, cells) in map_layers(adata, detect_chunk, reader).items()
    }
    if copy:
        adata = adata.copy()
    per = {}
    for lay, (rep, non_int, cells) in reports.items():  # ``cells``: the attacked cells of a sampled attack
        score, reason = scores_and_reasons(rep, non_int, thr)
        flag = (score >= thr) | np.isin(reason, FLAG_REASONS)
        adata.obs[_keys.score_key(lay)] = on_all_cells(score, cells, np.nan)
        # False (not NA) on cells not attacked: readers of the flags (evaluate, pl) convert them to bool
        adata.obs[_keys.flag_key(lay)] = on_all_cells(flag, cells, fill=False)
        adata.obs[reason_key(lay)] = pd.Categorical(on_all_cells(reason, cells, ""), categories=list(REASONS))
        if not low_latency:
            adata.obsm[_keys.meta_key(lay)] = on_all_cells(rep.meta, cells, np.nan)
            adata.obsm[_keys.triplet_key(lay)] = on_all_cells(rep.embedding, cells, np.nan)
        per[lay or "X"] = {
            "threshold": thr,
            "fraction_flagged": float(flag.mean()),
            "fraction_rules": float(np.isin(reason, FLAG_REASONS).mean()),
            "n_cells": len(score),
            "detector_id": detector_id,
            "detector_key": detector_key,
        }
    prev = uns_root(adata).get(_keys.STEP_DETECT, {}).get("metrics", {})
    params = {
        "detector_key": detector_key,
        "low_latency": low_latency,
        "threshold": thr,
        "layers": [v or "X" for v in layers],
        "rules": model.has_rules,
    }
    set_record(adata, _keys.STEP_DETECT, params=params, metrics={**prev, **per}, feature_names=model.feature_names)
    return adata if copy else None


@doc_params(doc_scoring=DOC_SCORING, doc_chunked=DOC_CHUNKED, doc_copy=doc_copy, doc_returns_copy=doc_returns_copy)
def meta_features(
    adata: AnnData,
    layer: str | Sequence[str] | None = None,
    *,
    model: AdversarialDetector | CellClassifier | None = None,
    features: FeatureSpec | None = None,
    split_key: str = _keys.OBS_SPLIT,
    missing: Missing = "raise",
    batch_size: int | None = None,
    device: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Per-cell meta-features: the classifier's internal signals, input-gradient statistics and input consistency.

    Internal signals: the 64-d embedding, logits, softmax probabilities, top-1 minus top-2 logit
    margin and entropy. Gradient group: log mean, log variance and log L2 norm of the absolute
    input gradient of the cross-entropy at the **predicted** class. Input-consistency group:
    fractions of genes at, below and just above their minimum (unexpressed) value, depth below
    the minima, PCA residual and kNN distance to clean training cells (see
    :class:`~scadversarial.detection.InputConsistency`).

    With a trained detector (``model`` or the one referenced in ``.uns['sad']['detector']``)
    its own feature spec and reference are used, so the values are the detector's inputs.
    Otherwise the classifier is used and the input-consistency reference is fitted on the
    training-split cells of ``X`` (the one step that reads them together).

    {doc_chunked}

    Parameters
    ----------
    adata
        AnnData with a trained classifier.
    layer
        ``None`` or ``'X'`` (``X``), a layer (e.g. ``'sad_pgd_eps0.1'``) or a list of them.
    model
        An :class:`~scadversarial.models.AdversarialDetector` or a classifier (default: the
        referenced detector, else the referenced classifier).
    features
        Feature groups and input-consistency sizes when no detector sets them
        (:class:`~scadversarial.detection.FeatureSpec`).
    split_key
        ``.obs`` split whose training cells fit the input-consistency reference (no detector).
    {doc_scoring}
    {doc_copy}

    Returns
    -------
    {doc_returns_copy} Sets ``.obsm['sad_meta']`` (for a layer ``L``: ``.obsm['sad_meta_L']``; NaN
    rows for the cells a sampled attack left out) and ``.uns['sad']['meta_features']`` (``params``, ``feature_names``).

    """
    check_adata(adata, allow_backed=True)
    check_copy(adata, copy=copy, name="meta_features")
    check_choice("missing", missing, Missing)
    spec = features or FeatureSpec()
    if model is None:
        root = adata.uns.get(_keys.UNS, {})
        has_det = isinstance(root.get(_keys.STEP_DETECTOR), dict) and "model" in root[_keys.STEP_DETECTOR]
        model = get_model(adata, _keys.STEP_DETECTOR if has_det else _keys.STEP_CLASSIFIER)
    if not isinstance(model, AdversarialDetector | CellClassifier):
        msg = f"model must be an AdversarialDetector or a CellClassifier, got {type(model).__name__}."
        raise TypeError(msg)
    layers = layer_list(layer)
    reader = chunk_reader(adata, model, layers, missing=missing, batch_size=batch_size, device=device)
    ref = None
    if isinstance(model, AdversarialDetector):
        names, groups, source = model.feature_names, model.groups, "detector"
    else:
        if spec.input:  # the one cross-cell step: the reference is fitted on all training-split cells at once
            train = np.flatnonzero(_split_array(adata, split_key) == "train")
            (X,) = read_rows(adata, replace(reader, layers=(None,)), train)
            ref = fit_input_reference(X, n_pcs=spec.n_pcs, n_neighbors=spec.n_neighbors)
            del X
        groups = spec.groups
        names, source = feature_names(groups, model.config["hidden"][-1], model.classes), "classifier"
    chunk_fn = partial(meta_chunk, gradient=spec.gradient, input_ref=ref)
    out = {lay: (np.concatenate(parts), cells) for lay, (parts, cells) in map_layers(adata, chunk_fn, reader).items()}
    if copy:
        adata = adata.copy()
    for lay, (f, cells) in out.items():  # ``cells``: the attacked cells of a sampled attack (NaN elsewhere)
        adata.obsm[_keys.meta_key(lay)] = on_all_cells(f, cells, np.nan)
    params = {
        "layers": [v or "X" for v in layers],
        "groups": groups,
        "source": source,
        "split_key": split_key,
        "n_pcs": spec.n_pcs,
        "n_neighbors": spec.n_neighbors,
    }
    set_record(adata, _keys.STEP_META, params=params, feature_names=names)
    return adata if copy else None


__all__ = ["DetectorCells", "detect", "meta_features", "train_detector"]
