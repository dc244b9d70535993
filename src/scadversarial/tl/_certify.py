"""``sad.tl.certify``: randomized smoothing in log space (Cohen, Rosenfeld & Kolter 2019).

The smoothed classifier ``g(x) = argmax_c P(f(x + e) = c)``, ``e ~ N(0, sigma^2 I)``, adds Gaussian
noise to a cell's log-normalized expression and feeds it to the classifier ``f`` through the
classifier's own log -> scaled transform. If the top class's probability is at least ``p_A > 1/2``,
``g`` returns that class for every input within L2 distance ``sigma * Phi^-1(p_A)`` (their
Theorem 1). :func:`certify` estimates ``p_A`` as in the paper's CERTIFY: ``n0`` selection draws pick
the top class, ``n`` fresh estimation draws give a one-sided Clopper-Pearson lower bound ``p_lower``
at level ``1 - alpha``, and a cell is certified at radius ``sigma * Phi^-1(p_lower)`` or abstains
when ``p_lower <= 1/2``. With probability at least ``1 - alpha`` per cell (over the draws), a
certified cell's smoothed prediction is constant on that ball.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scipy import stats

from .. import _keys
from .._docs import doc_copy, doc_example_pbmc3k, doc_params, doc_returns_copy
from .._settings import logger, progress, settings
from .._validate import check_adata, h5ad_safe, labelled_cells, matrix_for_genes, uns_root
from ..models.classifier import CellClassifier, SpaceClassifier
from ._attack_record import require_every_row
from ._models import _model_refs, get_model
from ._space import layer_space

#: Category of ``.obs['<key>_pred']`` for cells the smoothed classifier does not call.
ABSTAIN = "abstain"
#: The smoothed prediction is certified only when the top class's lower bound exceeds this: a class
#: with probability above one half under the noise is the majority whatever the other classes do.
MAJORITY = 0.5
#: Selection draws ``n0`` per cell: Cohen et al. use 100, enough to pick the top class that the
#: estimation draws then bound (a wrong pick only costs an abstention, never a wrong certificate).
N_SELECT = 100
#: Radii (L2, log units) at which the record reports certified accuracy: a tenth, a quarter and half
#: a log unit, the scale of the log-space threats of the benchmark.
CERTIFIED_RADII = (0.1, 0.25, 0.5)
#: Noisy rows per forward pass (default): 8,192 x 2,000 genes of float32 is 64 MB.
ROWS_PER_PASS = 8192


@dataclass(frozen=True)
class CertifyOptions:
    """Options of :func:`certify`.

    Attributes
    ----------
    n_select
        Selection draws ``n0`` per cell, which pick the top class (Cohen et al.: 100).
    radii
        L2 radii (log units) at which the record reports certified accuracy.
    split
        Cells of this split of ``.obs[split_key]`` on which the record's metrics are computed
        (``'test'``, held-out cells); ``None`` for all cells. Every cell is certified.
    split_key
        ``.obs`` column of the split (:func:`~scadversarial.pp.split`).
    labels_key
        ``.obs`` column of the true labels (default: the classifier's training labels). Cells
        without one (NaN) are left out of the accuracies only.
    random_state
        Seed of the noise (a local torch generator; the global random state is left unchanged).
    rows_per_pass
        Noisy rows per forward pass (memory: rows x genes x 4 bytes).
    device
        Torch device (default ``sad.settings.device``).

    """

    n_select: int = N_SELECT
    radii: tuple[float, ...] = CERTIFIED_RADII
    split: str | None = "test"
    split_key: str = _keys.OBS_SPLIT
    labels_key: str | None = None
    random_state: int = 0
    rows_per_pass: int = ROWS_PER_PASS
    device: str | None = None


@dataclass(frozen=True)
class Certificate:
    """The smoothed classifier's answer for each cell.

    Attributes
    ----------
    pred
        Class index, ``-1`` where it abstains.
    radius
        Certified L2 radius (log units), ``0`` where it abstains.
    p_lower
        One-sided Clopper-Pearson lower bound on the top class's probability under the noise.
    top
        The class the selection draws picked (also where the estimate abstains).
    count
        Estimation draws that gave ``top``.

    """

    pred: np.ndarray
    radius: np.ndarray
    p_lower: np.ndarray
    top: np.ndarray
    count: np.ndarray


def clopper_pearson_lower(count: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """One-sided ``1 - alpha`` Clopper-Pearson lower bound on a binomial proportion (``count`` of ``n``)."""
    count = np.asarray(count, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        low = stats.beta.ppf(alpha, count, n - count + 1)
    return np.where(count > 0, low, 0.0)


def certified_radius(p_lower: np.ndarray, sigma: float) -> np.ndarray:
    """``sigma * Phi^-1(p_lower)`` where ``p_lower > 1/2``, else 0 (abstain)."""
    p_lower = np.asarray(p_lower, dtype=np.float64)
    return np.where(p_lower > MAJORITY, sigma * stats.norm.ppf(np.clip(p_lower, MAJORITY, 1.0)), 0.0)


@torch.no_grad()
def smoothed_counts(
    view: SpaceClassifier,
    X: np.ndarray,
    *,
    sigma: float,
    n: int,
    generator: torch.Generator,
    rows_per_pass: int = ROWS_PER_PASS,
    bar=None,
) -> np.ndarray:
    """Per cell, how many of ``n`` noisy copies ``x + N(0, sigma^2 I)`` the classifier assigns to each class.

    ``view`` takes ``X``'s space (e.g. ``clf.for_space('log')``) and is run in evaluation mode on the
    generator's device. Cells are batched so that a forward pass holds at most ``rows_per_pass`` rows
    (a cell's draws are split over passes when ``n`` exceeds it). Returns cells x classes, int64.
    """
    dev = generator.device
    n_classes = len(view.classifier.classes)
    out = np.zeros((len(X), n_classes), dtype=np.int64)
    per_pass = max(1, int(rows_per_pass) // n)  # cells per pass
    draws = min(n, int(rows_per_pass))  # draws per cell and pass
    for s in range(0, len(X), per_pass):
        xb = torch.as_tensor(np.ascontiguousarray(X[s : s + per_pass], dtype=np.float32), device=dev)
        k = len(xb)
        cells = torch.arange(k, device=dev)
        counts = torch.zeros(k * n_classes, dtype=torch.int64, device=dev)
        for d in range(0, n, draws):
            m = min(draws, n - d)
            noise = torch.randn((k, m, xb.shape[1]), generator=generator, device=dev)
            noisy = (xb[:, None, :] + sigma * noise).reshape(k * m, -1)
            cls = view(noisy).argmax(1).reshape(k, m)
            counts += torch.bincount((cells[:, None] * n_classes + cls).ravel(), minlength=k * n_classes)
        out[s : s + k] = counts.reshape(k, n_classes).cpu().numpy()
        if bar is not None:
            bar.update(k)
    return out


def certify_arrays(
    view: SpaceClassifier,
    X: np.ndarray,
    *,
    sigma: float,
    n: int,
    alpha: float,
    n_select: int = N_SELECT,
    generator: torch.Generator,
    rows_per_pass: int = ROWS_PER_PASS,
    bar=None,
) -> Certificate:
    """CERTIFY of Cohen et al. (2019) for each row of ``X`` (in ``view``'s space): see :func:`certify`."""
    was_training = view.training
    view.eval()
    try:
        kw = {"sigma": sigma, "generator": generator, "rows_per_pass": rows_per_pass}
        top = smoothed_counts(view, X, n=n_select, **kw).argmax(1)
        counts = smoothed_counts(view, X, n=n, bar=bar, **kw)
    finally:
        view.train(was_training)
    count = counts[np.arange(len(X)), top]
    p_lower = clopper_pearson_lower(count, n, alpha)
    radius = certified_radius(p_lower, sigma)
    pred = np.where(p_lower > MAJORITY, top, -1)
    return Certificate(pred=pred, radius=radius, p_lower=p_lower, top=top, count=count)


def certified_accuracy(correct: np.ndarray, radius: np.ndarray, radii) -> np.ndarray:
    """Fraction of cells whose smoothed call is correct *and* certified at radius ``r``, per ``r`` in ``radii``.

    An abstaining cell counts as not correct (Cohen et al.'s certified test-set accuracy).
    """
    correct, radius = np.asarray(correct, dtype=bool), np.asarray(radius, dtype=np.float64)
    if len(correct) == 0:
        return np.full(len(np.atleast_1d(radii)), np.nan)
    return np.array([float((correct & (radius >= r)).mean()) for r in np.atleast_1d(radii)])


def _check(sigma: float, n_samples: int, alpha: float, opts: CertifyOptions) -> None:
    if not (np.isfinite(sigma) and sigma > 0):
        msg = f"sigma must be a positive noise level in log units, got {sigma!r}; e.g. sigma=0.25."
        raise ValueError(msg)
    for name, v in (("n_samples", n_samples), ("options.n_select", opts.n_select)):
        if int(v) != v or v < 1:
            msg = f"{name} must be a positive integer of noise draws per cell, got {v!r}."
            raise ValueError(msg)
    if not 0 < alpha < 1:
        msg = f"alpha must be in (0, 1), the chance a certificate is wrong; got {alpha!r} (Cohen et al.: 0.001)."
        raise ValueError(msg)
    if any(not r >= 0 for r in opts.radii) or opts.rows_per_pass < 1:
        msg = f"options.radii must be >= 0 and rows_per_pass >= 1; got {opts.radii!r} and {opts.rows_per_pass!r}."
        raise ValueError(msg)


def _classifier(adata: AnnData, classifier) -> CellClassifier:
    model = get_model(adata, _keys.STEP_CLASSIFIER) if classifier is None else classifier
    if isinstance(model, str):
        model = get_model(adata, model)
    if not isinstance(model, CellClassifier):
        msg = (
            f"certify needs a sad CellClassifier (its log -> scaled transform), got {type(model).__name__}; "
            "train one with `sad.tl.train_classifier` or pass classifier=sad.get.model(adata, key)."
        )
        raise TypeError(msg)
    return model


def _measured(adata: AnnData, classifier, clf: CellClassifier, opts: CertifyOptions) -> tuple[np.ndarray, str | None]:
    """The cells of ``opts.split`` (all when ``None``) and the labels to measure on, checked before any work.

    By default the labels are those the certified classifier was trained on (its own run record).
    """
    cells = np.ones(adata.n_obs, dtype=bool)
    if opts.split is not None:
        if opts.split_key not in adata.obs:
            msg = f"options.split={opts.split!r} needs adata.obs[{opts.split_key!r}] (`sad.pp.split`); or split=None."
            raise KeyError(msg)
        cells = adata.obs[opts.split_key].astype(str).to_numpy() == opts.split
        if not cells.any():
            msg = f"No cell of adata.obs[{opts.split_key!r}] is {opts.split!r}; pass options=CertifyOptions(split=...)."
            raise ValueError(msg)
    if opts.labels_key is not None:
        if opts.labels_key not in adata.obs:
            msg = f"options.labels_key={opts.labels_key!r} is not a column of adata.obs; pass an existing one or None."
            raise KeyError(msg)
        return cells, opts.labels_key
    if classifier is None or isinstance(classifier, str):
        key = _keys.STEP_CLASSIFIER if classifier is None else classifier
    else:
        key = next((k for k, ref in _model_refs(adata).items() if ref["id"] == getattr(clf, "_sad_id", None)), None)
    params = adata.uns.get(_keys.UNS, {}).get(key, {}).get("params", {}) if key is not None else {}
    return cells, params.get("labels_key")


def _truth(adata: AnnData, labels_key: str | None, cells: np.ndarray, split: str | None) -> np.ndarray | None:
    """Per cell the true label as a string, or ``None`` where it is missing (NaN); ``None`` without the column.

    Checked before any work: a missing label is left out of the accuracies (a warning says how many),
    never compared as the string ``'nan'``; measured cells without any label are an error.
    """
    if labels_key is None or labels_key not in adata.obs:
        return None
    col = adata.obs[labels_key]
    where = "" if split is None else f" of split {split!r}"
    known = labelled_cells(
        adata,
        labels_key,
        cells,
        caller="certify",
        measured="the accuracy",
        keeps="abstention and mean_radius",
        fix=f"Measured: the cells{where}. Pass options=CertifyOptions(labels_key=...) naming a column with true "
        "labels, annotate some of these cells, or pass another split (split=None for all cells).",
    )
    return np.where(known, col.astype(str).to_numpy(), None)


def _metrics(
    cert: Certificate, classes: list[str], truth: np.ndarray | None, cells: np.ndarray, opts: CertifyOptions
) -> dict:
    """Abstention and certified accuracy on ``cells``; accuracy only with the true labels ``truth``.

    Accuracies are over the cells of ``cells`` with a label (``truth`` not ``None``).
    """
    out = {
        "n_cells": int(cells.sum()),
        "abstention": float((cert.pred[cells] < 0).mean()) if cells.any() else float("nan"),
        "mean_radius": float(cert.radius[cells].mean()) if cells.any() else float("nan"),
        "radii": np.asarray(opts.radii, dtype=np.float64),
    }
    if truth is not None:
        labelled = cells & pd.notna(truth)
        called = np.asarray([*classes, ABSTAIN], dtype=object)[cert.pred[labelled]]
        correct = called == truth[labelled]
        out["smoothed_accuracy"] = float(correct.mean()) if labelled.any() else float("nan")
        out["certified_accuracy"] = certified_accuracy(correct, cert.radius[labelled], opts.radii)
        out["n_unlabelled"] = int((cells & ~labelled).sum())
    return out


@doc_params(doc_copy=doc_copy, doc_returns_copy=doc_returns_copy, doc_example_pbmc3k=doc_example_pbmc3k)
def certify(
    adata: AnnData,
    *,
    sigma: float = 0.25,
    n_samples: int = 1000,
    alpha: float = 0.001,
    layer: str | None = None,
    classifier: CellClassifier | str | None = None,
    options: CertifyOptions | None = None,
    key_added: str = _keys.STEP_CERTIFY,
    copy: bool = False,
) -> AnnData | None:
    """Certify each cell's smoothed prediction against L2 changes of its log-expression (randomized smoothing).

    Gaussian noise of standard deviation ``sigma`` is added to the cell's log-normalized
    expression (``.layers['sad_lognorm']``, natural-log units, every gene the classifier reads) and
    fed to the classifier through its own log -> scaled transform (scaling, clip). The smoothed
    prediction is the class the noisy copies vote for most (Cohen, Rosenfeld & Kolter 2019, CERTIFY):
    ``options.n_select`` draws pick the top class, ``n_samples`` fresh draws bound its probability
    from below (one-sided Clopper-Pearson, level ``1 - alpha``) by ``p_lower``. A cell abstains when
    ``p_lower <= 0.5``; otherwise its smoothed prediction is certified constant on the L2 ball of
    radius ``sigma * Phi^-1(p_lower)`` in log space: no change of the log-expression within it can
    change the smoothed call (with probability at least ``1 - alpha`` per cell, over the draws).
    The certificate covers any change in log space, zeros included; a count-space attacker is
    covered insofar as the log values of the changed counts stay in the ball. The certificate is
    for the *smoothed* classifier, not for the classifier itself.

    Every cell is certified (``n_select + n_samples`` forward passes each); subset ``adata`` to
    certify fewer cells.

    Parameters
    ----------
    adata
        AnnData preprocessed by :func:`~scadversarial.pp.preprocess` with a trained classifier.
    sigma
        Noise level (log units). Larger certifies larger radii but lowers the smoothed accuracy.
    n_samples
        Estimation draws ``n`` per cell. The largest radius reachable is ``sigma * Phi^-1(alpha^(1/n))``
        (2.4 sigma for ``n=1000``, ``alpha=0.001``).
    alpha
        Chance that a cell's certificate is wrong.
    layer
        Log-normalized matrix to smooth around (default ``.layers['sad_lognorm']``); an attack layer
        made in log space certifies the attacked cells.
    classifier
        A :class:`~scadversarial.models.CellClassifier`, the key of its run record, or ``None`` for
        the one of :func:`train_classifier`.
    options
        A :class:`CertifyOptions`: selection draws, reported radii, split and labels of the
        metrics, seed, rows per forward pass, device.
    key_added
        Prefix of the ``.obs`` columns and name of the record in ``.uns['sad']``.
    {doc_copy}

    Returns
    -------
    {doc_returns_copy} Sets:

    ``.obs['<key_added>_pred']``
        Smoothed prediction (categorical: the classifier's classes and ``'abstain'``).
    ``.obs['<key_added>_radius']``
        Certified L2 radius in log units (0 where it abstains).
    ``.uns['sad'][key_added]``
        ``params`` (``sigma``, ``n_samples``, ``alpha``, ``layer``, ``classes`` and the
        :class:`CertifyOptions` fields but ``device``) and ``metrics`` on the cells of
        ``options.split``: ``n_cells``, ``abstention`` (fraction abstaining), ``mean_radius``,
        ``radii``, and, when the true labels are known, ``labels_key``, ``smoothed_accuracy``
        (correct smoothed calls) and ``certified_accuracy`` (per radius in ``radii``: correct
        and certified at least that radius), both over the cells with a label, and
        ``n_unlabelled`` (cells left out of both for a missing label, NaN in ``labels_key``;
        logged as a warning), plus ``seconds`` (wall time).

    Examples
    --------
    {doc_example_pbmc3k}
    >>> sad.tl.train_classifier(adata, "seurat_cell_type")  # doctest: +SKIP
    >>> test = adata[adata.obs["sad_split"] == "test"].copy()  # doctest: +SKIP
    >>> sad.tl.certify(test, sigma=0.25, n_samples=1000)  # doctest: +SKIP
    >>> sad.get.record(test, "sad_certified")["metrics"]["certified_accuracy"]  # doctest: +SKIP
    >>> sad.pl.certified_accuracy(test)  # doctest: +SKIP

    """
    check_adata(adata)
    opts = options or CertifyOptions()
    _check(sigma, n_samples, alpha, opts)
    clf = _classifier(adata, classifier)
    layer = _keys.LAYER_LOGNORM if layer is None else layer
    if layer not in adata.layers:
        msg = f"certify smooths log-normalized values: adata.layers[{layer!r}] is missing (`sad.pp.preprocess`)."
        raise KeyError(msg)
    require_every_row(adata, layer, caller="sad.tl.certify")
    if layer_space(adata, layer) != "log":
        msg = f"adata.layers[{layer!r}] is in {layer_space(adata, layer)!r} space; certify needs a log-space layer."
        raise ValueError(msg)
    X = matrix_for_genes(adata, clf.var_names, layer)
    cells, labels_key = _measured(adata, classifier, clf, opts)
    truth = _truth(adata, labels_key, cells, opts.split)
    if copy:
        adata = adata.copy()

    dev = settings.torch_device(opts.device)
    clf.to(dev)
    gen = torch.Generator(device=dev).manual_seed(int(opts.random_state))
    t0 = time.perf_counter()
    with progress(total=adata.n_obs, desc=f"certify (sigma={sigma:g})", unit="cell") as bar:
        cert = certify_arrays(
            clf.for_space("log"),
            X,
            sigma=float(sigma),
            n=int(n_samples),
            alpha=float(alpha),
            n_select=int(opts.n_select),
            generator=gen,
            rows_per_pass=int(opts.rows_per_pass),
            bar=bar,
        )
    seconds = time.perf_counter() - t0

    classes = [str(c) for c in clf.classes]
    codes = np.where(cert.pred >= 0, cert.pred, len(classes))
    pred = pd.Categorical.from_codes(codes, categories=[*classes, ABSTAIN])
    adata.obs[_keys.certified_pred_key(key_added)] = pd.Series(pred, index=adata.obs_names)
    adata.obs[_keys.certified_radius_key(key_added)] = cert.radius
    metrics = {**_metrics(cert, classes, truth, cells, opts), "seconds": seconds}
    if truth is not None:
        metrics["labels_key"] = str(labels_key)
    fields = {k: v for k, v in asdict(opts).items() if k != "device"}
    params = {"sigma": float(sigma), "n_samples": int(n_samples), "alpha": float(alpha), "layer": layer}
    uns_root(adata)[key_added] = h5ad_safe({"params": {**params, **fields, "classes": classes}, "metrics": metrics})
    logger.info(
        "certify: sigma %g, %d cells, abstention %.3f, %.1f s", sigma, adata.n_obs, metrics["abstention"], seconds
    )
    return adata if copy else None


__all__ = ["ABSTAIN", "CertifyOptions", "Certificate", "certify", "certify_arrays", "smoothed_counts"]
