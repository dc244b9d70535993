"""Is ``X`` really the classifier's scaled input? One check shared by every tool that feeds ``X`` to a model.

A :class:`~scadversarial.models.CellClassifier` knows its input space: its input transform holds the
per-gene mean and std (and clip) of the training data, so a correctly scaled value ``x`` of gene ``g``
is ``clip((l - mean_g) / std_g)`` for a log-normalized value ``l >= 0``. Data that skipped
:func:`~scadversarial.pp.preprocess` (raw counts, log-normalized but unscaled values) or were scaled
with other statistics still run through the model and give wrong answers without a word. The check,
on the model's genes, fails when

1. ``adata.var['sad_mean']`` / ``['sad_std']`` exist and differ from the model's statistics
   (``X`` was scaled by ``sad.pp.preprocess`` without ``reference=``); else, on a sample of cells,
2. ``X`` is non-negative everywhere although the model maps an unexpressed gene (``l = 0``) to
   ``-mean_g / std_g < 0`` (counts, or log values never scaled); or
3. the log-normalized values implied by the model's statistics, ``x * std_g + mean_g``, are negative
   (``X`` was scaled with other statistics). Scaling and clipping never make them negative
   (a value clipped at ``-clip`` implies ``mean_g - clip * std_g``, above the true ``l >= 0``), so a
   correctly scaled matrix, of any size or cell subset, passes: the check has no false alarm by
   construction, up to float rounding.

The check reads at most :data:`SAMPLE_CELLS` cells, spread evenly over the matrix: a cost independent of
the number of cells. When it fails and ``.layers['sad_lognorm']`` holds the model's genes, that layer is
read through the model's own transform instead (logged); otherwise a :class:`ValueError` names the fix,
``sad.pp.preprocess(adata, reference=<training AnnData>)``.
"""

from __future__ import annotations

import numpy as np
import torch
from anndata import AnnData

from .. import _keys
from .._docs import doc_params
from .._settings import logger
from .._validate import MissingPolicy, quiet_fill
from ._chunks import iter_chunks
from ._fragments import doc_example_classifier
from ._space import layer_space, log_scaled, scaled_matrix

#: cells read by the check: per-gene statistics of a few hundred cells are plenty, and the cost stays flat
SAMPLE_CELLS = 1000
#: implied log-normalized values below ``-LOG_TOLERANCE`` cannot come from scaling: float32 rounding of
#: ``(l - mean) / std * std + mean`` stays below 1e-5 for values scaling produces, while scaling with
#: other statistics moves the zero of most genes by a tenth or more of a log unit
LOG_TOLERANCE = 1e-2
#: relative tolerance when comparing ``.var['sad_mean']`` / ``['sad_std']`` with the model's (float32) copy
STAT_RTOL = 1e-4
#: absolute tolerance of the same comparison, for genes whose mean is ~0
STAT_ATOL = 1e-6


def _transform_stats(model: torch.nn.Module) -> tuple[np.ndarray, np.ndarray] | None:
    """The model's per-gene ``(mean, std)``, or ``None`` when it has none (no transform, or the identity)."""
    clf = model if hasattr(model, "transform") else getattr(model, "classifier", None)
    transform = getattr(clf, "transform", None)
    if transform is None or not hasattr(transform, "mean"):
        return None
    mean = transform.mean.detach().cpu().numpy().astype(np.float64)
    std = transform.std.detach().cpu().numpy().astype(np.float64)
    if not mean.any() and np.all(std == 1):  # never set: trained on a layer, its input space is unknown
        return None
    return mean, std


def _var_stats_problem(adata: AnnData, model: torch.nn.Module, mean: np.ndarray, std: np.ndarray) -> str | None:
    if _keys.VAR_MEAN not in adata.var or _keys.VAR_STD not in adata.var:
        return None
    idx = adata.var_names.get_indexer([str(v) for v in model.var_names])
    ok = idx >= 0
    if not ok.any():
        return None
    var_mean = adata.var[_keys.VAR_MEAN].to_numpy(np.float64)[idx[ok]]
    var_std = adata.var[_keys.VAR_STD].to_numpy(np.float64)[idx[ok]]
    var_std = np.where(var_std > 0, var_std, 1.0)  # the transform stores a std of 0 as 1
    differ = ~(
        np.isclose(var_mean, mean[ok], rtol=STAT_RTOL, atol=STAT_ATOL)
        & np.isclose(var_std, std[ok], rtol=STAT_RTOL, atol=STAT_ATOL)
    )
    if not differ.any():
        return None
    return (
        f"adata.var[{_keys.VAR_MEAN!r}] / [{_keys.VAR_STD!r}] differ from the classifier's training statistics for "
        f"{int(differ.sum())} of {int(ok.sum())} genes: X was scaled with other statistics"
    )


@doc_params(doc_example_classifier=doc_example_classifier)
def input_space_problem(adata: AnnData, model: torch.nn.Module, X: np.ndarray) -> str | None:
    """Why ``X`` (cells x the model's genes) is not in the model's scaled input space, or ``None``.

    Parameters
    ----------
    adata
        The AnnData ``X`` was read from (its ``.var`` statistics are compared with the model's).
    model
        A :class:`~scadversarial.models.CellClassifier` or a detector (its classifier copy is used).
    X
        ``adata``'s ``X`` on the model's genes, as :func:`~scadversarial.tl.scaled_matrix` returns it.

    Returns
    -------
    A sentence naming the mismatch, or ``None`` when ``X`` looks scaled with the model's statistics
    (or the model has no statistics to compare with).

    Examples
    --------
    {doc_example_classifier}
    >>> sad.tl.input_space_problem(adata, clf, adata.X) is None
    True
    >>> sad.tl.input_space_problem(adata, clf, adata.layers["sad_lognorm"]).startswith("X is non-negative")
    True

    """
    stats = _transform_stats(model)
    if stats is None or X.size == 0:
        return None
    mean, std = stats
    problem = _var_stats_problem(adata, model, mean, std)
    if problem is not None:
        return problem
    S = np.asarray(X[sample_rows(X.shape[0])], dtype=np.float64)
    if S.min() >= 0 and (mean > 0).any():
        kind = "integer-valued (raw counts?)" if np.all(np.round(S) == S) else "not scaled (log-normalized values?)"
        return (
            f"X is non-negative everywhere, {kind}, while the classifier's scaled input is negative for "
            "every gene below its training mean"
        )
    implied = S * std + mean
    low = float(implied.min())
    if low < -LOG_TOLERANCE:
        n_genes = int((implied < -LOG_TOLERANCE).any(0).sum())
        return (
            f"X implies negative log-normalized values (down to {low:.3g}, in {n_genes} genes) under the "
            "classifier's scaling: it was scaled with other per-gene statistics"
        )
    return None


def sample_rows(n_obs: int) -> np.ndarray:
    """Positions of the cells :func:`input_space_problem` reads: at most :data:`SAMPLE_CELLS`, spread evenly."""
    if n_obs == 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.linspace(0, n_obs - 1, min(n_obs, SAMPLE_CELLS)).astype(np.int64))


def _fallback(adata: AnnData, problem: str) -> str:
    """``.layers['sad_lognorm']`` (with a warning) when ``X`` is not the model's input, else the error naming the fix."""
    if _keys.LAYER_LOGNORM in adata.layers:
        logger.warning(
            "%s. Reading adata.layers[%r] through the classifier's own transform instead.",
            problem,
            _keys.LAYER_LOGNORM,
        )
        return _keys.LAYER_LOGNORM
    msg = (
        f"{problem}. The classifier takes X scaled with its training statistics: run "
        "`sad.pp.preprocess(adata, reference=training_adata)` on this AnnData first (it keeps the model's genes "
        "and scales them like the training data), or pass `layer=` naming a matrix in the classifier's space."
    )
    raise ValueError(msg)


def x_source(adata: AnnData, model: torch.nn.Module, *, missing: MissingPolicy = "raise") -> str | None:
    """The matrix that stands for ``X`` when a chunked reader feeds ``model``: ``None`` (``X`` itself) or ``'sad_lognorm'``.

    The decision :func:`classifier_input` takes on the whole of ``X``, taken once on the cells
    :func:`input_space_problem` reads (:func:`sample_rows`, read in one chunk), so a chunked caller
    reads each chunk with :func:`read_input` without checking it again. ``X`` in log space
    (``sad.pp.preprocess(output='lognorm')``) is read through the model's transform, unchecked.
    Raises the :class:`ValueError` of :func:`classifier_input` when ``X`` is not the model's input
    and there is no ``.layers['sad_lognorm']`` to read instead.
    """
    if layer_space(adata, None) != "scaled" or _transform_stats(model) is None:
        return None
    _, chunk = next(iter_chunks(adata, rows=sample_rows(adata.n_obs)))
    problem = input_space_problem(adata, model, scaled_matrix(chunk, model, None, missing=missing))
    return None if problem is None else _fallback(adata, problem)


def read_input(
    adata: AnnData,
    model: torch.nn.Module,
    layer: str | None = None,
    *,
    source: str | None = None,
    missing: MissingPolicy = "raise",
) -> np.ndarray:
    """``X`` or a layer as the model's scaled input, ``X`` read from ``source`` (:func:`x_source`), without checks.

    For a chunk of cells: equal, row for row, to :func:`classifier_input` on the whole AnnData.
    """
    if layer not in (None, "X") or source is None:
        return scaled_matrix(adata, model, None if layer == "X" else layer, missing=missing)
    return log_scaled(adata, model, source, missing=missing)


@doc_params(doc_example_classifier=doc_example_classifier)
def classifier_input(
    adata: AnnData, model: torch.nn.Module, layer: str | None = None, *, missing: MissingPolicy = "raise"
) -> np.ndarray:
    """``X`` or a layer as the model's scaled input; ``X`` is first checked to be in the model's input space.

    A layer is read in the space it was made in (:func:`~scadversarial.tl.scaled_matrix`). ``X`` is
    checked with :func:`input_space_problem`: when it is not scaled with the model's statistics, the
    model's own transform is applied to ``.layers['sad_lognorm']`` when that layer holds the model's
    genes (a warning says so), else a :class:`ValueError` names the fix.

    Parameters
    ----------
    adata
        The AnnData.
    model
        A :class:`~scadversarial.models.CellClassifier` or a detector.
    layer
        ``None`` or ``'X'`` for ``X``, else a layer name.
    missing
        ``'raise'`` or ``'fill'`` for genes the model needs and ``adata`` lacks.

    Returns
    -------
    Cells x the model's genes, float32: ``X`` once checked (or ``.layers['sad_lognorm']`` through the
    model's transform), or the layer converted from the space it was made in. ``X`` left log-normalized
    by ``sad.pp.preprocess(output='lognorm')`` goes through the model's transform, unchecked.

    Examples
    --------
    {doc_example_classifier}
    >>> sad.tl.classifier_input(adata, clf).shape
    (700, 765)

    """
    X = scaled_matrix(adata, model, layer, missing=missing)
    if layer not in (None, "X") or layer_space(adata, None) != "scaled":
        return X
    problem = input_space_problem(adata, model, X)
    if problem is None:
        return X
    with quiet_fill():  # the same genes were filled (and logged) reading X
        return log_scaled(adata, model, _fallback(adata, problem), missing=missing)


__all__ = ["classifier_input", "input_space_problem", "read_input", "sample_rows", "x_source"]
