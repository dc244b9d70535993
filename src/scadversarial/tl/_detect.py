"""``sad.tl.meta_features``, ``sad.tl.train_detector`` and ``sad.tl.detect``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from .. import _keys
from .._settings import logger, settings
from .._validate import check_adata, check_obs_key, set_record, uns_root
from ..detection import (
    choose_threshold,
    compute_meta_features,
    detection_metrics,
    feature_names,
    fit_input_reference,
    train_residual,
    train_triplet,
)
from ..models.classifier import CellClassifier
from ..models.detector import AdversarialDetector
from ._input import classifier_input
from ._models import get_model, set_model_reference
from ._space import scaled_matrix

ROLES = ("meta_train", "calibration", "reference", "unused")


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


def _detector_features(det: AdversarialDetector, X: np.ndarray, dev: torch.device, batch_size: int) -> torch.Tensor:
    """Raw meta-features of ``X`` under the detector's spec, as a CPU tensor."""
    det.eval().to(dev)
    out = []
    for s in range(0, X.shape[0], batch_size):
        xb = torch.as_tensor(np.ascontiguousarray(X[s : s + batch_size]), dtype=torch.float32, device=dev)
        out.append(det.meta_features(xb).cpu())
    return torch.cat(out) if out else torch.zeros(0, len(det.feature_names))


def train_detector(
    adata: AnnData,
    attack_key: str = "sad_pgd",
    *,
    layers: Sequence[str] | None = None,
    split_key: str = _keys.OBS_SPLIT,
    meta_fraction: float = 0.25,
    calibration: str = "val",
    use_triplet: bool = True,
    gradient_features: bool = True,
    input_features: bool = True,
    labels_key: str | None = None,
    n_pcs: int = 30,
    n_neighbors: int = 1,
    n_reference: int = 1000,
    grad_genes: int = 128,
    triplet_epochs: int = 15,
    epochs: int = 30,
    patience: int = 5,
    lr: float = 1e-3,
    weight_decay: float = 1e-2,
    batch_size: int = 128,
    target_fpr: float | None = None,
    classifier_key: str = _keys.STEP_CLASSIFIER,
    random_state: int = 0,
    device: str | None = None,
    save_dir: str | None = None,
    key_added: str = _keys.STEP_DETECTOR,
    copy: bool = False,
) -> AdversarialDetector | AnnData:
    """Train the adversarial-cell detector on training-split cells and calibrate its threshold.

    The training-split cells are shuffled (``random_state``) and divided: a ``meta_fraction``
    part is the meta-training set (each clean cell labelled 0 and its perturbed versions in
    every adversarial layer labelled 1); the rest is the clean reference of the
    input-consistency features (PCA basis, kNN cells, per-gene minima). Early stopping and the
    threshold use the calibration cells: the validation split (``calibration='val'``, the
    default when it has cells), otherwise another ``meta_fraction`` of the training split.
    **Test-split cells are never read.** Meta-features are standardized with meta-training
    statistics, embedded by the triplet network (``features -> 256 -> 64``, L2-normalized,
    TripletMarginLoss with margin 1; anchor and positive: clean cells of one predicted class;
    negative: an adversarial cell of that class) and scored by the residual detector
    (``64 -> 128 -> ResBlock -> ResBlock -> 1``, BCE with logits balanced between classes,
    early stopping on the calibration loss).

    Parameters
    ----------
    adata
        AnnData with a classifier (:func:`train_classifier`), a split and adversarial layers (:func:`attack`).
    attack_key
        Attack record in ``.uns['sad']['attacks']`` whose layers are the positives.
    layers
        Adversarial layers to use instead of the attack record's.
    split_key
        ``.obs`` column with ``'train'``/``'val'``/``'test'``.
    meta_fraction
        Fraction of training-split cells in the meta-training set.
    calibration
        ``'val'``: calibrate on the validation split (falls back to ``'train'`` when it is empty);
        ``'train'``: on another ``meta_fraction`` of the training split.
    use_triplet
        Put the triplet network before the detector (``False``: detector on standardized meta-features).
    gradient_features, input_features
        Use the input-gradient and the input-consistency feature groups (the internal signals are always used).
        A detector without gradient features scores without a backward pass (``detect(low_latency=True)``).
    labels_key
        Classes for the triplets (default: the classifier's clean predictions, no label needed).
    n_pcs, n_neighbors, n_reference
        PCA components, neighbours and maximum number of reference cells of the input-consistency features.
    grad_genes
        Size of the fixed random gene subset on which the mean and variance of ``|grad|`` are
        estimated (the gradient L2 norm is exact); ``0`` forms the full input gradient (exact, slower).
    triplet_epochs, epochs, patience
        Epochs of the triplet network; maximum epochs and early-stopping patience of the detector.
    lr, weight_decay, batch_size
        AdamW settings and mini-batch size of both networks.
    target_fpr
        ``None``: threshold maximising Youden's J on the calibration cells; a fraction: the
        threshold with the best TPR at that false-positive rate on calibration clean cells.
    classifier_key
        Run record of the classifier to watch.
    random_state
        Seed of the cell partition, weight initialisation, triplet sampling and batch order
        (local generators; global random state is left unchanged).
    device
        Torch device (default ``sad.settings.device``).
    save_dir
        If given, the detector is also saved to ``save_dir/<key_added>/``.
    key_added
        Name of the run record in ``.uns['sad']``.
    copy
        Work on (and return) a copy of ``adata``.

    Returns
    -------
    The trained :class:`~scadversarial.models.AdversarialDetector` (or the new AnnData when ``copy=True``). Sets:

    ``.obs['sad_detector_role']``
        Categorical ``'meta_train'``, ``'calibration'``, ``'reference'`` or ``'unused'`` (all
        test-split cells are ``'unused'``).
    ``.uns['sad'][key_added]``
        ``params``; ``metrics`` (threshold and its TPR/FPR on the calibration cells, calibration
        AUROC etc., training histories, cell counts); ``model`` (the reference); ``feature_names``.

    """
    check_adata(adata, min_obs=4)
    if not 0 < meta_fraction < 1:
        msg = f"meta_fraction must be in (0, 1), got {meta_fraction}."
        raise ValueError(msg)
    if calibration not in ("val", "train"):
        msg = f"calibration must be 'val' or 'train', got {calibration!r}."
        raise ValueError(msg)
    clf = get_model(adata, classifier_key)
    if not isinstance(clf, CellClassifier):
        msg = f"The {classifier_key!r} model is a {type(clf).__name__}; the detector needs a CellClassifier (`sad.tl.train_classifier`)."
        raise TypeError(msg)
    layers = _attack_layers(adata, attack_key, layers)
    split = _split_array(adata, split_key)
    rng = np.random.default_rng(random_state)
    train_idx = np.flatnonzero(split == "train")
    val_idx = np.flatnonzero(split == "val")
    perm = rng.permutation(train_idx)
    n_meta = max(2, round(meta_fraction * len(train_idx)))
    meta_idx = np.sort(perm[:n_meta])
    cal_source = "val" if calibration == "val" and len(val_idx) >= 2 else "train"
    if cal_source == "val":
        cal_idx, rest = val_idx, perm[n_meta:]
    else:
        cal_idx, rest = np.sort(perm[n_meta : 2 * n_meta]), perm[2 * n_meta :]
    ref_idx = np.sort(rest if len(rest) <= n_reference else rng.choice(rest, n_reference, replace=False))
    if input_features and len(ref_idx) < 2:
        msg = (
            f"Only {len(ref_idx)} training-split cells are left for the input-consistency reference. "
            "Lower `meta_fraction`, use more training cells (`sad.pp.split(train_size=...)`), or pass input_features=False."
        )
        raise ValueError(msg)
    if len(cal_idx) < 2:
        msg = "Too few cells to calibrate the detector. Use a validation split (`sad.pp.split(val_size=...)`) or more cells."
        raise ValueError(msg)
    if labels_key is not None:
        labels = check_obs_key(adata, labels_key).astype(str).to_numpy()

    dev = settings.torch_device(device)
    X = classifier_input(adata, clf)
    advs = {name: scaled_matrix(adata, clf, name) for name in layers}  # each layer read in its own space
    rows = np.concatenate([meta_idx, cal_idx, ref_idx])
    if (split[rows] == "test").any():  # cannot happen by construction; never train on test cells
        msg = "Internal error: a test-split cell was selected for detector training."
        raise RuntimeError(msg)

    groups = ["internal"] + (["gradient"] if gradient_features else []) + (["input"] if input_features else [])
    ref = fit_input_reference(X[ref_idx], n_pcs=n_pcs, n_neighbors=n_neighbors) if input_features else None
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(int(random_state))
        det = AdversarialDetector(
            clf.var_names, clf.classes, clf.config, groups=groups, use_triplet=use_triplet,
            n_pcs=ref.components.shape[0] if ref is not None else n_pcs,
            n_reference=len(ref_idx) if ref is not None else 0, n_neighbors=n_neighbors, grad_genes=grad_genes,
            classifier_id=str(getattr(clf, "_sad_id", "")),
        )  # fmt: skip
        det.set_classifier(clf, rng=rng)
        if ref is not None:
            det.input_ref.load_state_dict(ref.state_dict())
        det.eval()
        bs = settings.batch_size

        def feats(idx):
            return [_detector_features(det, M[idx], dev, bs) for M in (X, *advs.values())]

        F_meta, F_cal = feats(meta_idx), feats(cal_idx)
        F_tr = torch.cat(F_meta)
        mean, std = F_tr.mean(0), F_tr.std(0)
        std = torch.where(std > 1e-6, std, torch.ones_like(std))
        det.feat_mean.copy_(mean.to(dev))
        det.feat_std.copy_(std.to(dev))
        det.to(dev)
        S_meta = [det.standardize(f.to(dev)) for f in F_meta]
        S_cal = [det.standardize(f.to(dev)) for f in F_cal]
        logits_meta = det.classifier.predict_arrays(X[meta_idx], device=dev)[0]
        cls_meta = labels[meta_idx] if labels_key is not None else logits_meta.argmax(1)
        cls_meta = pd.Categorical(cls_meta).codes
        hist: dict = {}
        if use_triplet:
            hist["triplet_loss"] = train_triplet(
                det.triplet, S_meta[0], cls_meta, torch.cat(S_meta[1:]), np.tile(cls_meta, len(layers)),
                epochs=triplet_epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size, rng=rng,
            )  # fmt: skip
            with torch.no_grad():
                Z_meta = [det.triplet(s) for s in S_meta]
                Z_cal = [det.triplet(s) for s in S_cal]
        else:
            Z_meta, Z_cal = S_meta, S_cal

        def xy(Z):
            y = torch.cat([torch.zeros(len(Z[0]))] + [torch.ones(len(z)) for z in Z[1:]]).to(dev)
            return torch.cat(Z), y

        res = train_residual(
            det.detector, *xy(Z_meta), *xy(Z_cal), epochs=epochs, patience=patience, lr=lr,
            weight_decay=weight_decay, batch_size=batch_size,
        )  # fmt: skip
        hist.update(detector_loss=res["loss"], detector_val_loss=res["val_loss"], best_epoch=res["best_epoch"])
        with torch.no_grad():
            Zc, yc = xy(Z_cal)
            cal_scores = torch.sigmoid(det.detector(Zc)).cpu().numpy()
        yc = yc.cpu().numpy()
        thr = choose_threshold(yc, cal_scores, target_fpr=target_fpr)
        det.threshold.fill_(thr["threshold"])
    det.eval()

    if copy:
        adata = adata.copy()
    role = np.full(adata.n_obs, "unused", dtype=object)
    role[ref_idx] = "reference"
    role[cal_idx] = "calibration"
    role[meta_idx] = "meta_train"
    adata.obs[_keys.OBS_DETECTOR_ROLE] = pd.Categorical(role, categories=list(ROLES))
    cal_metrics = detection_metrics(yc, cal_scores, thr["threshold"])
    params = {
        "attack_key": attack_key, "layers": layers, "split_key": split_key, "meta_fraction": meta_fraction,
        "calibration": cal_source, "use_triplet": use_triplet, "gradient_features": gradient_features,
        "input_features": input_features, "groups": groups, "labels_key": labels_key or "predicted",
        "n_pcs": n_pcs, "n_neighbors": n_neighbors, "n_reference": n_reference, "grad_genes": grad_genes,
        "triplet_epochs": triplet_epochs,
        "epochs": epochs, "patience": patience, "lr": lr, "weight_decay": weight_decay, "batch_size": batch_size,
        "target_fpr": -1.0 if target_fpr is None else float(target_fpr), "classifier_key": classifier_key,
        "random_state": int(random_state),
    }  # fmt: skip
    metrics = {
        "threshold": thr["threshold"], "threshold_method": thr["method"], "calibration_tpr": thr["tpr"],
        "calibration_fpr": thr["fpr"], "calibration": cal_metrics, "history": hist,
        "n_meta_train": len(meta_idx), "n_calibration": len(cal_idx), "n_reference": len(ref_idx),
        "n_meta_examples": len(meta_idx) * (1 + len(layers)),
    }  # fmt: skip
    set_record(adata, key_added, params=params, metrics=metrics, feature_names=det.feature_names)
    set_model_reference(adata, key_added, det, save_dir=save_dir)
    logger.info(
        "detector: threshold %.4f, calibration AUROC %.4f, TPR %.3f at FPR %.3f",
        thr["threshold"], cal_metrics["auroc"], thr["tpr"], thr["fpr"],
    )  # fmt: skip
    return adata if copy else det


def _layer_list(layer) -> list[str | None]:
    if layer is None or isinstance(layer, str):
        return [layer]
    return list(layer)


def detect(
    adata: AnnData,
    layer: str | Sequence[str] | None = None,
    *,
    model: AdversarialDetector | None = None,
    detector_key: str = _keys.STEP_DETECTOR,
    low_latency: bool = False,
    threshold: float | None = None,
    missing: str = "raise",
    batch_size: int | None = None,
    device: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Score every cell: was its expression profile adversarially manipulated?

    Computes the meta-features of ``X`` (or of ``layer``) under the detector's feature spec, the
    triplet embedding and the detector score (a probability), and flags cells whose score
    reaches the calibrated threshold. Genes are aligned by name to the detector's genes.

    Parameters
    ----------
    adata
        AnnData to score (the training data or new data scaled with :func:`~scadversarial.pp.preprocess` ``reference=``).
    layer
        Matrix to score: ``None`` (``X``), a layer name, or a list of them. A layer made in log or
        count space (see :func:`layer_space`) is converted through the classifier's transform first.
    model
        A detector; by default the one referenced in ``adata.uns['sad'][detector_key]``.
    detector_key
        Run record of the detector.
    low_latency
        Score without a backward pass and write only scores and flags (no ``.obsm``). Needs a
        detector trained with ``gradient_features=False``.
    threshold
        Decision threshold instead of the calibrated one.
    missing
        ``'raise'``: a :class:`KeyError` names missing genes; ``'fill'``: fill them with the training mean (logged).
    batch_size
        Cells per batch (default ``sad.settings.batch_size``).
    device
        Torch device (default ``sad.settings.device``).
    copy
        Return a new AnnData instead of modifying ``adata``.

    Returns
    -------
    ``None``, or the new AnnData when ``copy=True``. For each scored matrix (``X``; a layer ``L``):

    ``.obs['sad_score']`` / ``.obs['sad_score_L']``
        Detector score in [0, 1].
    ``.obs['sad_adversarial']`` / ``.obs['sad_adversarial_L']``
        ``score >= threshold``.
    ``.obsm['sad_meta']`` / ``.obsm['sad_meta_L']``
        Raw meta-features (column names in ``.uns['sad']['detect']['feature_names']``); not with ``low_latency``.
    ``.obsm['X_sad_triplet']`` / ``.obsm['X_sad_triplet_L']``
        Triplet embedding (standardized meta-features for a detector without triplet net); not with ``low_latency``.
    ``.uns['sad']['detect']``
        ``params``, ``feature_names`` and per matrix (``metrics['X']``, ``metrics['L']``) the
        threshold, fraction flagged, number of cells and the id of the detector that made the scores
        (``detector_id``, as in ``.uns['sad'][detector_key]['model']['id']``; ``''`` for an
        unregistered model) with its ``detector_key``.

    """
    check_adata(adata)
    if model is None:
        model = get_model(adata, detector_key)
    if not isinstance(model, AdversarialDetector):
        msg = f"Expected an AdversarialDetector, got {type(model).__name__}. Train one with `sad.tl.train_detector`."
        raise TypeError(msg)
    if low_latency and model.uses_gradient:
        msg = (
            "low_latency=True skips the backward pass, but this detector uses gradient features. "
            "Train one with `sad.tl.train_detector(adata, gradient_features=False)`, or pass low_latency=False."
        )
        raise ValueError(msg)
    layers = _layer_list(layer)
    mats = {lay: classifier_input(adata, model, lay, missing=missing) for lay in layers}
    thr = float(model.threshold) if threshold is None else float(threshold)
    detector_id = str(getattr(model, "_sad_id", ""))  # scores name their detector, so a stale one is never reused
    results = {
        lay: model.score_arrays(M, batch_size=batch_size, device=settings.torch_device(device))
        for lay, M in mats.items()
    }
    if copy:
        adata = adata.copy()
    per = {}
    for lay, (f, z, s) in results.items():
        adata.obs[_keys.score_key(lay)] = s
        adata.obs[_keys.flag_key(lay)] = s >= thr
        if not low_latency:
            adata.obsm[_keys.meta_key(lay)] = f
            adata.obsm[_keys.triplet_key(lay)] = z
        per[lay or "X"] = {
            "threshold": thr, "fraction_flagged": float((s >= thr).mean()), "n_cells": len(s),
            "detector_id": detector_id, "detector_key": detector_key,
        }  # fmt: skip
    root = uns_root(adata)
    prev = root.get(_keys.STEP_DETECT, {}).get("metrics", {})
    set_record(
        adata, _keys.STEP_DETECT,
        params={"detector_key": detector_key, "low_latency": low_latency, "threshold": thr, "layers": [v or "X" for v in layers]},
        metrics={**prev, **per}, feature_names=model.feature_names,
    )  # fmt: skip
    return adata if copy else None


def meta_features(
    adata: AnnData,
    layer: str | Sequence[str] | None = None,
    *,
    model: AdversarialDetector | CellClassifier | None = None,
    gradient_features: bool = True,
    input_features: bool = True,
    split_key: str = _keys.OBS_SPLIT,
    n_pcs: int = 30,
    n_neighbors: int = 1,
    missing: str = "raise",
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
    training-split cells of ``X``.

    Parameters
    ----------
    adata
        AnnData with a trained classifier.
    layer
        ``None`` (``X``), a layer (e.g. ``'sad_pgd_eps0.1'``) or a list of them.
    model
        An :class:`~scadversarial.models.AdversarialDetector` or a classifier (default: the
        referenced detector, else the referenced classifier).
    gradient_features, input_features
        Feature groups, when no detector sets them.
    split_key
        ``.obs`` split whose training cells fit the input-consistency reference (no detector).
    n_pcs, n_neighbors
        Input-consistency PCA components and neighbours (no detector).
    missing
        ``'raise'`` or ``'fill'`` for genes the model needs and ``adata`` lacks.
    batch_size
        Cells per batch (default ``sad.settings.batch_size``).
    device
        Torch device (default ``sad.settings.device``).
    copy
        Return a new AnnData instead of modifying ``adata``.

    Returns
    -------
    ``None``, or the new AnnData when ``copy=True``. Sets ``.obsm['sad_meta']`` (for a layer
    ``L``: ``.obsm['sad_meta_L']``) and ``.uns['sad']['meta_features']`` (``params``, ``feature_names``).

    """
    check_adata(adata)
    if model is None:
        root = adata.uns.get(_keys.UNS, {})
        has_det = isinstance(root.get(_keys.STEP_DETECTOR), dict) and "model" in root[_keys.STEP_DETECTOR]
        model = get_model(adata, _keys.STEP_DETECTOR if has_det else _keys.STEP_CLASSIFIER)
    layers = _layer_list(layer)
    bs = int(batch_size or settings.batch_size)
    dev = settings.torch_device(device)
    mats = {lay: classifier_input(adata, model, lay, missing=missing) for lay in layers}
    if isinstance(model, AdversarialDetector):
        out = {lay: model.score_arrays(M, batch_size=bs, device=dev)[0] for lay, M in mats.items()}
        names, groups, source = model.feature_names, model.groups, "detector"
    elif isinstance(model, CellClassifier):
        ref = None
        if input_features:
            split = _split_array(adata, split_key)
            X = mats[None] if None in mats else classifier_input(adata, model, missing=missing)
            ref = fit_input_reference(X[split == "train"], n_pcs=n_pcs, n_neighbors=n_neighbors)
        out = {
            lay: compute_meta_features(model, M, gradient=gradient_features, input_ref=ref, batch_size=bs, device=dev)
            for lay, M in mats.items()
        }
        groups = ["internal"] + (["gradient"] if gradient_features else []) + (["input"] if input_features else [])
        names, source = feature_names(groups, model.config["hidden"][-1], model.classes), "classifier"
    else:
        msg = f"model must be an AdversarialDetector or a CellClassifier, got {type(model).__name__}."
        raise TypeError(msg)
    if copy:
        adata = adata.copy()
    for lay, f in out.items():
        adata.obsm[_keys.meta_key(lay)] = f
    set_record(
        adata, _keys.STEP_META,
        params={"layers": [v or "X" for v in layers], "groups": groups, "source": source, "split_key": split_key, "n_pcs": n_pcs, "n_neighbors": n_neighbors},
        feature_names=names,
    )  # fmt: skip
    return adata if copy else None


__all__ = ["train_detector", "detect", "meta_features"]
