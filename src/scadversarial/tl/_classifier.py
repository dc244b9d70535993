"""``sad.tl.train_classifier`` and ``sad.tl.predict``."""

from __future__ import annotations

import warnings
from dataclasses import asdict, replace
from typing import Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from .. import _keys
from .._docs import doc_copy, doc_example_pbmc3k, doc_params, doc_returns_copy
from .._settings import logger
from .._validate import check_adata, check_choice, check_labels, check_obs_key, get_matrix, h5ad_safe, set_record
from ..models._adversarial import AdversarialTraining, ThinningAugmentation, TrainingInputs
from ..models.classifier import CellClassifier
from ..models.training import TrainingConfig, fit_classifier
from ._input import classifier_input
from ._metrics import classification_metrics
from ._models import get_model, set_model_reference
from ._shifts import library_counts
from ._space import target_sum


def _split_masks(adata: AnnData, split_key: str) -> dict[str, np.ndarray]:
    split = check_obs_key(adata, split_key, producer="sad.pp.split").astype(str).to_numpy()
    masks = {s: split == s for s in _keys.SPLITS}
    if not masks["train"].any():
        msg = f"No 'train' cells in adata.obs[{split_key!r}]. Run `sad.pp.split(adata)`."
        raise ValueError(msg)
    return masks


def _check_train_classes(
    classes: list[str], y: np.ndarray, train: np.ndarray, *, labels_key: str, split_key: str
) -> None:
    """Refuse labels with a class that has no training cell: the model would have an output it never learnt.

    ``check_labels`` already asks for two classes, so this also refuses a training split with a single class.
    """
    n_train = np.bincount(y[train], minlength=len(classes))
    absent = {c: int((y == i).sum()) for i, c in enumerate(classes) if n_train[i] == 0}
    if absent:
        msg = (
            f"Classes of adata.obs[{labels_key!r}] with no cell in the 'train' part of adata.obs[{split_key!r}] "
            f"(class: its cells): {absent}. The classifier cannot learn them. Run `sad.pp.split(adata, {labels_key!r})` "
            "again on these labels, or drop or merge those classes first, e.g. "
            f"`adata = adata[~adata.obs[{labels_key!r}].isin([...])].copy()`."
        )
        raise ValueError(msg)


@doc_params(doc_copy=doc_copy, doc_returns_copy=doc_returns_copy, doc_example_pbmc3k=doc_example_pbmc3k)
def train_classifier(
    adata: AnnData,
    labels_key: str = _keys.OBS_LABEL,
    *,
    layer: str | None = None,
    max_epochs: int | None = None,
    random_state: int = 0,
    config: TrainingConfig | None = None,
    adversarial: AdversarialTraining | None = None,
    augment: ThinningAugmentation | None = None,
    key_added: str = _keys.STEP_CLASSIFIER,
    copy: bool = False,
) -> AnnData | None:
    """Train the MLP cell-type classifier on the training split, with early stopping on validation accuracy.

    Architecture ``genes -> 256 -> 128 -> 64 -> classes`` (ReLU, dropout 0.4/0.4/0.3); AdamW;
    the weights of the epoch with the best (clean) validation accuracy are kept. Clean predictions
    of every cell are then written (see :func:`predict`). Optionally hardened: adversarial training
    in log or count space (``adversarial``) and binomial thinning of the training cells' counts
    (``augment``), see :class:`~scadversarial.tl.AdversarialTraining` and :class:`~scadversarial.tl.ThinningAugmentation`.

    Parameters
    ----------
    adata
        Preprocessed AnnData (:func:`~scadversarial.pp.preprocess`) with a split (:func:`~scadversarial.pp.split`).
    labels_key
        ``.obs`` column with the cell types (e.g. ``'sad_label'`` from :func:`~scadversarial.pp.pseudo_labels`).
    layer
        Matrix to train on (default the scaled ``X``; hardening needs ``X``).
    max_epochs
        At most this many epochs (``None``: ``config.max_epochs``, 60).
    random_state
        Seed of the weight initialisation, batch order, thinning draws and attack starts (torch's
        generator, forked: the global random state is left unchanged).
    config
        Architecture, optimiser, early stopping, split column, device and save folder
        (:class:`~scadversarial.models.training.TrainingConfig`; default its defaults).
    adversarial
        Adversarial training (:class:`~scadversarial.tl.AdversarialTraining`):
        PGD-AT or TRADES against an L-inf attack on the expressed genes' log values or counts.
        Needs ``.layers['sad_lognorm']`` (log space) or ``.layers['counts']`` (count space).
    augment
        Thinning augmentation (:class:`~scadversarial.tl.ThinningAugmentation`):
        a share of each batch's cells thinned to 25-100 % of their depth and re-normalized with the
        reference's gene mean and std, as real shallower data. Needs ``.layers['counts']``.
    key_added
        Name of the run record in ``.uns['sad']``; the model is read back with
        ``sad.get.model(adata, key_added)``.
    {doc_copy}

    Returns
    -------
    {doc_returns_copy} Sets:

    ``.obs['sad_pred']``, ``.obs['sad_confidence']``
        Predicted class and its probability, for every cell.
    ``.obsm['sad_proba']``, ``.obsm['X_sad_embedding']``
        Class probabilities and the 64-d embedding.
    ``.uns['sad'][key_added]``
        ``params`` (``labels_key``, ``layer``, the :class:`TrainingConfig` fields but ``device`` and
        ``save_dir``, ``random_state``, and ``adversarial`` / ``augment`` with their fields when
        given), ``metrics`` (accuracy per split, per-class accuracy and confusion matrix on the
        test split, training history) and ``model`` (the reference).

    Examples
    --------
    {doc_example_pbmc3k}
    >>> sad.tl.train_classifier(
    ...     adata,
    ...     "seurat_cell_type",
    ...     adversarial=sad.tl.AdversarialTraining("trades", eps=2.0),
    ...     augment=sad.tl.ThinningAugmentation(),
    ... )  # doctest: +SKIP
    >>> model = sad.get.model(adata)  # doctest: +SKIP

    """
    config = config or TrainingConfig()
    if max_epochs is not None:
        config = replace(config, max_epochs=int(max_epochs))
    check_adata(adata, min_obs=3)
    labels = check_obs_key(adata, labels_key, producer="sad.pp.pseudo_labels")
    cat = check_labels(labels, key=labels_key)
    masks = _split_masks(adata, config.split_key)
    X = get_matrix(adata, layer)
    classes = [str(c) for c in cat.categories]
    y = cat.codes.astype(np.int64)
    _check_train_classes(classes, y, masks["train"], labels_key=labels_key, split_key=config.split_key)
    inputs = _hardening_inputs(adata, masks["train"], layer=layer, adversarial=adversarial, augment=augment)
    if copy:
        adata = adata.copy()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(random_state))
        model = CellClassifier(adata.var_names, classes, hidden=config.hidden, dropout=config.dropout)
    if _keys.VAR_MEAN in adata.var and layer is None:
        model.transform.set(adata.var[_keys.VAR_MEAN].to_numpy(), adata.var[_keys.VAR_STD].to_numpy())
    val_mask = masks["val"] if masks["val"].any() else masks["train"]
    if not masks["val"].any():
        logger.warning("No validation cells: early stopping monitors training accuracy.")
    history = fit_classifier(
        model,
        (X[masks["train"]], y[masks["train"]]),
        (X[val_mask], y[val_mask]),
        config=config,
        random_state=random_state,
        adversarial=adversarial,
        augment=augment,
        inputs=inputs,
    )
    best_epoch = history.pop("best_epoch")

    fields = {k: v for k, v in asdict(config).items() if k not in ("device", "save_dir")}
    params = {
        "labels_key": labels_key,
        "layer": layer or "X",
        **fields,
        "hidden": list(config.hidden),
        "dropout": list(config.dropout),
        "random_state": int(random_state),
        "adversarial": asdict(adversarial) if adversarial is not None else None,
        "augment": asdict(augment) if augment is not None else None,
    }
    set_record(adata, key_added, params=params)
    set_model_reference(adata, key_added, model, save_dir=config.save_dir)
    _write_predictions(adata, model, X, layer=None)
    pred = pd.Categorical(adata.obs[_keys.OBS_PRED], categories=classes).codes
    metrics = {s: classification_metrics(y[m], pred[m], classes) for s, m in masks.items() if m.any()}
    metrics = {
        "accuracy": {s: m["accuracy"] for s, m in metrics.items()},
        "test": metrics.get("test", metrics.get("val", metrics["train"])),
        "best_epoch": best_epoch,
        "epochs_run": len(history["loss"]),
        "history": history,
    }
    adata.uns[_keys.UNS][key_added]["metrics"] = h5ad_safe(metrics)
    logger.info("classifier: test accuracy %.4f (best epoch %d)", metrics["test"]["accuracy"], best_epoch)
    return adata if copy else None


def _hardening_inputs(
    adata: AnnData,
    train: np.ndarray,
    *,
    layer: str | None,
    adversarial: AdversarialTraining | None,
    augment: ThinningAugmentation | None,
) -> TrainingInputs | None:
    """The training cells' counts or log values that adversarial training and thinning work on."""
    if adversarial is None and augment is None:
        return None
    if layer is not None or _keys.VAR_MEAN not in adata.var:
        msg = (
            "Adversarial training and thinning reach the classifier through its own transform: train on X "
            f"scaled by `sad.pp.preprocess` (layer=None, adata.var[{_keys.VAR_MEAN!r}] present)."
        )
        raise ValueError(msg)
    if augment is not None or adversarial.space == "counts":
        if _keys.LAYER_COUNTS not in adata.layers or _keys.LAYER_LOGNORM not in adata.layers:
            msg = (
                f"Thinning and count-space adversarial training need .layers[{_keys.LAYER_COUNTS!r}] and "
                f".layers[{_keys.LAYER_LOGNORM!r}] from `sad.pp.preprocess` on raw counts; with log-normalized "
                "data use adversarial=AdversarialTraining(space='log') and no augment."
            )
            raise KeyError(msg)
        counts, other = library_counts(adata)
        return TrainingInputs(counts=counts[train], other=other[train], target_sum=target_sum(adata))
    return TrainingInputs(lognorm=np.asarray(get_matrix(adata, _keys.LAYER_LOGNORM))[train])


def _write_predictions(adata: AnnData, model: CellClassifier, X: np.ndarray, *, layer: str | None) -> np.ndarray:
    logits, emb = model.predict_arrays(X)
    proba = torch.softmax(torch.from_numpy(logits), 1).numpy()
    pred_idx = proba.argmax(1)
    pred = pd.Categorical.from_codes(pred_idx, categories=model.classes)
    if layer is None:
        adata.obs[_keys.OBS_PRED] = pd.Series(pred, index=adata.obs_names)
        adata.obs[_keys.OBS_CONFIDENCE] = proba.max(1)
        adata.obsm[_keys.OBSM_PROBA] = proba
        adata.obsm[_keys.OBSM_EMBEDDING] = emb
    else:
        adata.obs[_keys.pred_key(layer)] = pd.Series(pred, index=adata.obs_names)
    return pred_idx


def predict(
    adata: AnnData,
    classifier: CellClassifier | None = None,
    *,
    layer: str | None = None,
    missing: Literal["raise", "fill"] = "raise",
    copy: bool = False,
    model: CellClassifier | None = None,
) -> AnnData | None:
    """Apply a trained classifier to ``adata`` (the training data or a new AnnData).

    Genes are aligned by name to the model's genes. The input must be scaled like the training
    data (:func:`~scadversarial.pp.preprocess` with ``reference=``). A log-normalized or count
    layer (``sad_lognorm``, ``counts``, or an attack layer made in log or count space, see
    :func:`layer_space`) is converted through the model's own transform first. ``X`` is checked
    to be scaled with the model's statistics (:func:`input_space_problem`): raw counts,
    unscaled log values or another scaling are read from ``.layers['sad_lognorm']`` through the
    model's transform when that layer exists (a warning says so), else refused with the fix.

    Parameters
    ----------
    adata
        AnnData to classify.
    classifier
        A classifier; by default the one referenced in ``adata.uns['sad']['classifier']``.
    layer
        Matrix to classify (default ``X``), e.g. an attack layer.
    missing
        ``'raise'`` (default): a :class:`KeyError` names genes the model needs that ``adata``
        lacks; ``'fill'``: fill them with the training mean (logged).
    copy
        Return a new AnnData instead of modifying ``adata``.
    model
        Deprecated spelling of ``classifier`` (a :class:`FutureWarning`; removed in the next release).

    Returns
    -------
    ``None``, or the new AnnData when ``copy=True``. For ``X`` sets ``.obs['sad_pred']``,
    ``.obs['sad_confidence']``, ``.obsm['sad_proba']`` and ``.obsm['X_sad_embedding']``; for a
    layer sets ``.obs['<layer>_pred']``.

    """
    check_adata(adata)
    check_choice("missing", missing, ("raise", "fill"))
    if model is not None:
        if classifier is not None:
            msg = "predict got both classifier= and model=; pass classifier= only."
            raise TypeError(msg)
        warnings.warn("predict(model=...) is deprecated: pass classifier= instead.", FutureWarning, stacklevel=2)
        classifier = model
    model = get_model(adata, _keys.STEP_CLASSIFIER) if classifier is None else classifier
    X = classifier_input(adata, model, layer, missing=missing)
    if copy:
        adata = adata.copy()
    _write_predictions(adata, model, X, layer=layer)
    return adata if copy else None


__all__ = ["AdversarialTraining", "ThinningAugmentation", "TrainingConfig", "predict", "train_classifier"]
