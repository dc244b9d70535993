"""``sad.tl.train_classifier`` and ``sad.tl.predict``."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData

from .. import _keys
from .._docs import doc_copy, doc_example_pbmc3k, doc_params, doc_returns_copy
from .._settings import logger, settings
from .._validate import (
    check_adata,
    check_choice,
    check_copy,
    check_finite,
    check_labels,
    check_obs_key,
    get_matrix,
    h5ad_safe,
    matrix_name,
    quiet_fill,
    set_record,
    warn_filled,
)
from ..models._adversarial import (
    AdversarialTraining,
    Augmentation,
    GaussianAugmentation,
    ThinningAugmentation,
    TrainingInputs,
)
from ..models._filter import WeakInputFilter
from ..models.classifier import CellClassifier, SpaceClassifier
from ..models.training import (
    VAL_STREAM,
    InputSpace,
    MatrixRows,
    StreamedRows,
    TrainingConfig,
    fit_classifier,
    stratified_quota,
    stratified_sample,
)
from ._attack_record import require_every_row
from ._chunks import is_backed, is_chunked, is_dask, iter_chunks, map_chunks, x_is_lognorm
from ._input import classifier_input, read_input, x_source
from ._metrics import classification_metrics
from ._models import get_model, set_model_reference
from ._shifts import library_counts
from ._space import FILLED_AT_MEAN, other_counts, source_layers, target_sum, to_scaled

#: training cells densified at once while taking each gene's minimum for the weak-input filter
#: (4,096 cells x 2,000 genes in float32 is 32 MB, whatever the number of cells)
MIN_BLOCK = 4096


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
    augment: Augmentation | None = None,
    key_added: str = _keys.STEP_CLASSIFIER,
    copy: bool = False,
) -> AnnData | None:
    """Train the MLP cell-type classifier on the training split, with early stopping on validation accuracy.

    Architecture ``genes -> 256 -> 128 -> 64 -> classes`` (ReLU, dropout 0.4/0.4/0.3); AdamW;
    the weights of the epoch with the best (clean) validation accuracy are kept. Clean predictions
    of every cell are then written (see :func:`predict`). Optionally hardened: adversarial training
    in log or count space (``adversarial``), binomial thinning of the training cells' counts or
    Gaussian noise on their log values (``augment``), see :class:`~scadversarial.tl.AdversarialTraining`,
    :class:`~scadversarial.tl.ThinningAugmentation` and :class:`~scadversarial.tl.GaussianAugmentation`.

    Memory: mini-batches are densified one at a time from the matrix as it is stored, so nothing of
    size cells x genes is made. ``X`` left sparse log-normalized by ``sad.pp.preprocess(output='lognorm')``
    is scaled batch by batch by the model's own transform (the same model as training on the scaled
    ``X``); a backed or dask ``X`` has its validation sample and training cells read into memory as
    stored (sparse stays sparse): all training cells once, or with ``config.max_cells_per_epoch``
    each epoch's sample before the epoch, so memory follows the cap, not the data (hardening then
    raises: it needs an in-memory AnnData). ``config.max_cells_per_epoch`` trains each epoch on a
    new sample of the training cells stratified by label, and early stopping watches at most ``config.max_val_cells``
    validation cells (a seeded sample stratified by label when the split is larger). The
    predictions of every cell are computed chunk by chunk for large, backed or dask data.

    Parameters
    ----------
    adata
        Preprocessed AnnData (:func:`~scadversarial.pp.preprocess`) with a split (:func:`~scadversarial.pp.split`);
        ``X`` may be backed (``backed='r'``) or a dask array.
    labels_key
        ``.obs`` column with the cell types (e.g. ``'sad_label'`` from :func:`~scadversarial.pp.pseudo_labels`).
    layer
        Matrix to train on (default ``X``, scaled or log-normalized as the preprocessing record says;
        hardening needs ``X``).
    max_epochs
        At most this many epochs (``None``: ``config.max_epochs``, 60).
    random_state
        Seed of the weight initialisation, batch order, thinning draws and attack starts (torch's
        generator, forked: the global random state is left unchanged), and of the validation and
        per-epoch samples (NumPy generators of their own).
    config
        Architecture, optimiser, early stopping, split column, cells per epoch, validation sample,
        device, save folder and an optional weak-input filter as the first layer
        (:class:`~scadversarial.models.training.TrainingConfig`; default its defaults). The filter
        (``input_filter=``:class:`~scadversarial.tl.WeakInputFilter`) takes each gene's minimum from
        the clean training cells, converts a UMI threshold at their median library size, and is
        trained with: the network learns filtered input.
    adversarial
        Adversarial training (:class:`~scadversarial.tl.AdversarialTraining`):
        PGD-AT or TRADES against an L-inf attack on the expressed genes' log values or counts.
        Needs ``.layers['sad_lognorm']`` (log space) or ``.layers['counts']`` (count space).
    augment
        Thinning augmentation (:class:`~scadversarial.tl.ThinningAugmentation`):
        a share of each batch's cells thinned to 25-100 % of their depth and re-normalized with the
        reference's gene mean and std, as real shallower data; needs ``.layers['counts']``. Or
        Gaussian augmentation (:class:`~scadversarial.tl.GaussianAugmentation`): noise on the log
        values, the training randomized smoothing (:func:`~scadversarial.tl.certify`) wants; needs
        ``.layers['sad_lognorm']``, and no ``adversarial``.
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
        With another ``key_added`` than ``'classifier'`` (a second classifier, e.g. a hardened one)
        these four are ``'<key_added>_pred'``, ``'<key_added>_confidence'``, ``'<key_added>_proba'``
        and ``'X_<key_added>_embedding'``: the default classifier's calls stay in place.
    ``.uns['sad'][key_added]``
        ``params`` (``labels_key``, ``layer``, the :class:`TrainingConfig` fields but ``device`` and
        ``save_dir``, ``random_state``, and ``adversarial`` / ``augment`` (with ``kind``, the class name) /
        ``input_filter`` with their fields when given; ``input_filter`` also has ``threshold_log``, the threshold the layer applies), ``metrics`` (accuracy per split, per-class accuracy and confusion matrix on the
        test split, training history, and ``cells``: the training cells ``train``, the cells of each
        epoch ``per_epoch`` and ``per_epoch_per_class``, the validation cells watched ``val`` of
        ``val_of`` and ``val_per_class``) and ``model`` (the reference).

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
    check_adata(adata, min_obs=3, allow_backed=True)
    check_copy(adata, copy=copy, name="train_classifier")
    labels = check_obs_key(adata, labels_key, producer="sad.pp.pseudo_labels")
    cat = check_labels(labels, key=labels_key)
    masks = _split_masks(adata, config.split_key)
    classes = [str(c) for c in cat.categories]
    y = cat.codes.astype(np.int64)
    _check_train_classes(classes, y, masks["train"], labels_key=labels_key, split_key=config.split_key)
    if not masks["val"].any():
        logger.warning("No validation cells: early stopping monitors training accuracy.")
    data = _training_data(adata, layer, masks, y, config=config, random_state=random_state)
    if (adversarial is not None or augment is not None) and data.from_file:
        msg = (
            "Adversarial training and thinning read the training cells' counts or log values in memory; X here is "
            "backed or a dask array. Train hardened classifiers on an in-memory AnnData (e.g. `adata.to_memory()`, "
            "or a sample of cells), or train without `adversarial=` / `augment=`."
        )
        raise ValueError(msg)
    inputs = _hardening_inputs(adata, masks["train"], layer=layer, adversarial=adversarial, augment=augment)
    threshold_log = _filter_threshold(adata, config.input_filter, masks["train"])
    if copy:
        adata = adata.copy()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(random_state))
        # the filter has no weights: a filtered model starts from the same weights as an unfiltered one
        model = CellClassifier(
            adata.var_names, classes, hidden=config.hidden, dropout=config.dropout, filter_threshold=threshold_log
        )
    if _keys.VAR_MEAN in adata.var and layer is None:
        model.transform.set(adata.var[_keys.VAR_MEAN].to_numpy(), adata.var[_keys.VAR_STD].to_numpy())
    if model.input_filter is not None:
        model.input_filter.set(_train_minimum(model, data), model.transform.std.detach().cpu().numpy())
    history = fit_classifier(
        model,
        (data.train, y[data.train_rows]),
        (data.X_val, y[data.val_rows]),
        config=config,
        random_state=random_state,
        adversarial=adversarial,
        augment=augment,
        inputs=inputs,
        input_space=data.space,
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
        "augment": {"kind": type(augment).__name__, **asdict(augment)} if augment is not None else None,
    }
    if config.input_filter is not None:
        params["input_filter"] = {**asdict(config.input_filter), "threshold_log": threshold_log}
    set_record(adata, key_added, params=params)
    set_model_reference(adata, key_added, model, save_dir=config.save_dir)
    keys = _keys.classifier_keys(key_added)
    outputs = _training_outputs(adata, model, layer, data.space)
    pred = _write_outputs(adata, model, *outputs, layer=None, keys=keys)
    metrics = {s: classification_metrics(y[m], pred[m], classes) for s, m in masks.items() if m.any()}
    metrics = {
        "accuracy": {s: m["accuracy"] for s, m in metrics.items()},
        "test": metrics.get("test", metrics.get("val", metrics["train"])),
        "best_epoch": best_epoch,
        "epochs_run": len(history["loss"]),
        "history": history,
        "cells": data.record(y, classes, config),
    }
    adata.uns[_keys.UNS][key_added]["metrics"] = h5ad_safe(metrics)
    logger.info("classifier: test accuracy %.4f (best epoch %d)", metrics["test"]["accuracy"], best_epoch)
    return adata if copy else None


def _filter_threshold(adata: AnnData, options: WeakInputFilter | None, train: np.ndarray) -> float | None:
    """The weak-input filter's threshold in log units (``None`` without a filter); UMI at the training cells' median depth."""
    if options is None or options.unit == "log":
        return None if options is None else options.log_threshold()
    if _keys.LAYER_COUNTS not in adata.layers or _keys.LAYER_LOGNORM not in adata.layers:
        msg = (
            f"WeakInputFilter(unit='umi') converts UMI to log units at the training cells' median library size, read "
            f"from .layers[{_keys.LAYER_COUNTS!r}] and .layers[{_keys.LAYER_LOGNORM!r}] (`sad.pp.preprocess` on raw "
            "counts writes them); with log-normalized data give the threshold in log units: WeakInputFilter(threshold=..., "
            "unit='log')."
        )
        raise KeyError(msg)
    sub = adata[train]
    kept = np.asarray(get_matrix(sub, _keys.LAYER_COUNTS, dense=False).sum(1), dtype=np.float64).ravel()
    library = float(np.median(other_counts(sub, sub.var_names) + kept))
    return options.log_threshold(library=library, target_sum=target_sum(adata))


def _train_minimum(model: CellClassifier, data: _TrainingData) -> np.ndarray:
    """Each gene's smallest scaled value over the clean training cells, read :data:`MIN_BLOCK` cells at a time."""
    n = len(data.train)
    minimum = np.full(model.n_genes, np.inf, dtype=np.float32)
    for start in range(0, n, MIN_BLOCK):
        pos = np.arange(start, min(start + MIN_BLOCK, n))
        if isinstance(data.train, StreamedRows):  # nothing is loaded before the first epoch: read the block
            block = MatrixRows(data.train.read(pos)).take(np.arange(len(pos)))
        else:
            block = data.train.take(pos)
        minimum = np.minimum(minimum, block.min(0))
    if data.space == "log":  # the scaling is increasing in every gene: the scaled minimum is the minimum's scaling
        with torch.no_grad():
            minimum = model.transform(torch.as_tensor(minimum)[None].to(model.transform.mean.device))[0].cpu().numpy()
    return minimum


@dataclass(frozen=True, eq=False)
class _TrainingData:
    """The cells training reads: training rows (densified a mini-batch at a time) and the validation sample."""

    train: MatrixRows | StreamedRows
    train_rows: np.ndarray
    val_rows: np.ndarray
    n_val: int
    X_val: np.ndarray
    space: InputSpace
    from_file: bool

    def record(self, y: np.ndarray, classes: list[str], config: TrainingConfig) -> dict:
        """The cells trained on per epoch and watched by early stopping, per class (``metrics['cells']``)."""
        n_class = len(classes)
        counts = np.bincount(y[self.train_rows], minlength=n_class)
        cap = config.max_cells_per_epoch
        quota = stratified_quota(counts, len(self.train_rows) if cap is None else int(cap))
        per_val = np.bincount(y[self.val_rows], minlength=n_class)
        return {
            "train": len(self.train_rows),
            "per_epoch": int(quota.sum()),
            "per_epoch_per_class": {c: int(q) for c, q in zip(classes, quota, strict=True)},
            "val": len(self.val_rows),
            "val_of": self.n_val,
            "val_per_class": {c: int(q) for c, q in zip(classes, per_val, strict=True)},
        }


def _training_data(
    adata: AnnData,
    layer: str | None,
    masks: dict[str, np.ndarray],
    y: np.ndarray,
    *,
    config: TrainingConfig,
    random_state: int,
) -> _TrainingData:
    """The training rows as a :class:`MatrixRows` (no dense copy) and the dense validation sample.

    An in-memory matrix (dense or sparse) is read in place; a backed or dask one has its training
    rows read once into memory as stored (sparse stays sparse), or, with ``max_cells_per_epoch``,
    each epoch's sample read before the epoch (:class:`StreamedRows`). ``X`` that
    ``sad.pp.preprocess(output='lognorm')`` left log-normalized is read in log space (the model's
    transform scales it).
    """
    train_rows = np.flatnonzero(masks["train"])
    val_rows = np.flatnonzero(masks["val"] if masks["val"].any() else masks["train"])
    n_val = len(val_rows)
    if config.max_val_cells is not None and n_val > int(config.max_val_cells):
        rng = np.random.default_rng((int(random_state), VAL_STREAM))
        val_rows = val_rows[stratified_sample(y[val_rows], int(config.max_val_cells), rng)]
    space: InputSpace = "log" if layer is None and x_is_lognorm(adata) else "scaled"
    M = adata.X if layer is None else adata.layers.get(layer)
    from_file = M is not None and (is_backed(M) or is_dask(M))
    if not from_file:
        M = get_matrix(adata, layer, dense=False)  # checked finite; nothing densified or copied
        train = MatrixRows(M, train_rows)
        X_val = MatrixRows(M, val_rows).take(np.arange(len(val_rows)))
    else:
        cap = config.max_cells_per_epoch
        if cap is not None and int(cap) < len(train_rows):  # memory for one epoch's cells, read before each epoch
            train = StreamedRows(partial(_read_train_rows, adata, layer, train_rows), len(train_rows))
        else:  # every epoch reads all training cells: read them once
            train = MatrixRows(_read_rows(adata, layer, train_rows))
        X_val = MatrixRows(_read_rows(adata, layer, val_rows)).take(np.arange(len(val_rows)))
    return _TrainingData(train, train_rows, val_rows, n_val, X_val, space, from_file)


def _read_train_rows(adata: AnnData, layer: str | None, train_rows: np.ndarray, positions: np.ndarray):
    """The training cells at ``positions`` (among ``train_rows``), read into memory (:func:`_read_rows`)."""
    return _read_rows(adata, layer, train_rows[positions])


def _read_rows(adata: AnnData, layer: str | None, rows: np.ndarray):
    """Rows of a backed or dask ``X`` (or layer) read into memory, sparse kept sparse (float32).

    A backed matrix is read chunk by chunk (:func:`iter_chunks`); a dask one in one computation, so
    that each block is read once however the rows spread over the blocks.
    """
    M = adata.X if layer is None else adata.layers[layer]
    if is_dask(M):
        part = M[np.asarray(rows)].compute()
        check_finite(part, matrix_name(layer))
        return part.astype(np.float32, copy=False) if sp.issparse(part) else np.asarray(part, np.float32)
    parts = []
    for _, chunk in iter_chunks(adata, layers=_layers(layer), rows=rows):
        part = chunk.X if layer is None else chunk.layers[layer]
        check_finite(part, matrix_name(layer))
        parts.append(part.astype(np.float32, copy=False) if sp.issparse(part) else np.asarray(part, np.float32))
    if not parts:
        return np.zeros((0, adata.n_vars), np.float32)
    if all(sp.issparse(p) for p in parts):
        return sp.vstack(parts, format="csr")
    return np.concatenate([p.toarray() if sp.issparse(p) else p for p in parts])


def _layers(layer: str | None) -> tuple[str, ...]:
    return () if layer in (None, "X") else (layer,)


def _hardening_inputs(
    adata: AnnData,
    train: np.ndarray,
    *,
    layer: str | None,
    adversarial: AdversarialTraining | None,
    augment: Augmentation | None,
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
    thinning = isinstance(augment, ThinningAugmentation)
    if thinning or (adversarial is not None and adversarial.space == "counts"):
        if _keys.LAYER_COUNTS not in adata.layers or _keys.LAYER_LOGNORM not in adata.layers:
            msg = (
                f"Thinning and count-space adversarial training need .layers[{_keys.LAYER_COUNTS!r}] and "
                f".layers[{_keys.LAYER_LOGNORM!r}] from `sad.pp.preprocess` on raw counts; with log-normalized "
                "data use adversarial=AdversarialTraining(space='log') and no augment."
            )
            raise KeyError(msg)
        counts, other = library_counts(adata)
        return TrainingInputs(counts=counts[train], other=other[train], target_sum=target_sum(adata))
    if _keys.LAYER_LOGNORM not in adata.layers:
        msg = (
            f"Gaussian augmentation and log-space adversarial training perturb log-normalized values: they need "
            f".layers[{_keys.LAYER_LOGNORM!r}], which `sad.pp.preprocess(adata)` writes. Preprocess again (or keep "
            "that layer) before training."
        )
        raise KeyError(msg)
    lognorm = get_matrix(adata, _keys.LAYER_LOGNORM, dense=False)[train]  # densify the training cells only
    return TrainingInputs(lognorm=np.asarray(lognorm.toarray() if sp.issparse(lognorm) else lognorm, np.float32))


def _write_outputs(
    adata: AnnData,
    model: CellClassifier,
    logits: np.ndarray,
    emb: np.ndarray,
    *,
    layer: str | None,
    keys: _keys.ClassifierKeys | None = None,
) -> np.ndarray:
    """Write the predictions of ``X`` (class, confidence, probabilities, embedding, under ``keys``) or of a layer (class)."""
    proba = torch.softmax(torch.from_numpy(logits), 1).numpy()
    pred_idx = proba.argmax(1)
    pred = pd.Categorical.from_codes(pred_idx, categories=model.classes)
    if layer is None:
        keys = keys or _keys.classifier_keys()
        adata.obs[keys.pred] = pd.Series(pred, index=adata.obs_names)
        adata.obs[keys.confidence] = proba.max(1)
        adata.obsm[keys.proba] = proba
        adata.obsm[keys.embedding] = emb
    else:
        adata.obs[_keys.pred_key(layer)] = pd.Series(pred, index=adata.obs_names)
    return pred_idx


def _joined(parts: list[tuple[np.ndarray, np.ndarray]], model: CellClassifier) -> tuple[np.ndarray, np.ndarray]:
    """The chunks' ``(logits, embedding)`` joined in cell order."""
    if not parts:
        return model.predict_arrays(np.zeros((0, model.n_genes), np.float32))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _forward_options() -> dict:
    """Batch size and device for chunks computed elsewhere (dask workers keep their own ``sad.settings``)."""
    return {"batch_size": int(settings.batch_size), "device": str(settings.torch_device())}


def _matrix_outputs(
    chunk: AnnData, *, model: CellClassifier, layer: str | None, space: InputSpace, batch_size: int, device: str
) -> tuple[np.ndarray, np.ndarray]:
    """``(logits, embedding)`` of a chunk's training matrix (log values through the model's transform)."""
    X = get_matrix(chunk, layer)
    if space == "log":
        X = to_scaled(SpaceClassifier(model, "log"), X, batch_size=batch_size)
    return model.predict_arrays(X, batch_size=batch_size, device=device)


def _training_outputs(
    adata: AnnData, model: CellClassifier, layer: str | None, space: InputSpace
) -> tuple[np.ndarray, np.ndarray]:
    """``(logits, embedding)`` of every cell's training matrix; chunked (:mod:`._chunks`) when ``adata`` is large."""
    if not is_chunked(adata, layers=_layers(layer)):
        return _matrix_outputs(adata, model=model, layer=layer, space=space, **_forward_options())
    fn = partial(_matrix_outputs, model=model, layer=layer, space=space, **_forward_options())
    return _joined(map_chunks(adata, fn, layers=_layers(layer)), model)


def _input_outputs(
    chunk: AnnData,
    *,
    model: CellClassifier,
    layer: str | None,
    source: str | None,
    missing: str,
    batch_size: int,
    device: str,
) -> tuple[np.ndarray, np.ndarray]:
    """``(logits, embedding)`` of a chunk's ``X`` (read from ``source``, :func:`x_source`) or layer, as the classifier's input."""
    with quiet_fill():  # :func:`predict` logged the filled genes once
        X = read_input(chunk, model, layer, source=source, missing=missing)
    return model.predict_arrays(X, batch_size=batch_size, device=device)


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
    Large, backed (``backed='r'``) or dask data, and ``X`` left log-normalized by
    ``sad.pp.preprocess(output='lognorm')``, are read chunk by chunk (dask: one task per block, on a
    ``dask.distributed`` cluster when a client is active); the results equal the whole-matrix path
    bit for bit on CPU (chunks hold whole forward batches).

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
        lacks; ``'fill'``: fill them with the training mean, 0 once scaled (logged once).
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
    check_adata(adata, allow_backed=True)
    check_choice("missing", missing, ("raise", "fill"))
    if model is not None:
        if classifier is not None:
            msg = "predict got both classifier= and model=; pass classifier= only."
            raise TypeError(msg)
        warnings.warn("predict(model=...) is deprecated: pass classifier= instead.", FutureWarning, stacklevel=2)
        classifier = model
    model = get_model(adata, _keys.STEP_CLASSIFIER) if classifier is None else classifier
    check_copy(adata, copy=copy, name="predict")
    require_every_row(adata, layer, caller="sad.tl.predict")
    if is_chunked(adata, layers=_layers(layer)):
        # X's input check (and its fallback to .layers['sad_lognorm']) decided once, on the whole AnnData
        if missing == "fill":
            warn_filled(adata, model.var_names, FILLED_AT_MEAN)
        with quiet_fill():
            source = x_source(adata, model, missing=missing) if layer in (None, "X") else None
        fn = partial(_input_outputs, model=model, layer=layer, source=source, missing=missing, **_forward_options())
        needed = (*source_layers(adata, layer), *((source,) if source is not None else ()))
        outputs = _joined(map_chunks(adata, fn, layers=needed), model)
    else:
        outputs = model.predict_arrays(classifier_input(adata, model, layer, missing=missing))
    if copy:
        adata = adata.copy()
    _write_outputs(adata, model, *outputs, layer=layer)
    return adata if copy else None


__all__ = [
    "AdversarialTraining",
    "GaussianAugmentation",
    "ThinningAugmentation",
    "TrainingConfig",
    "WeakInputFilter",
    "predict",
    "train_classifier",
]
