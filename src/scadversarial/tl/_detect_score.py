"""Scoring cells chunk by chunk for ``sad.tl.detect``, ``sad.tl.meta_features`` and ``sad.tl.train_detector``.

Each function here runs on one chunk of cells (:func:`~scadversarial.tl._chunks.map_chunks`: in this
process, or as a dask task on a worker) and returns per-cell arrays; the callers concatenate them in cell
order. A chunk is read as the whole matrix would be (:func:`~scadversarial.tl._input.read_input` with
the source of ``X`` decided once on the whole AnnData), and its boundaries are multiples of the forward
batch size, so the concatenated results equal the whole-matrix ones bit for bit. There is no cross-cell
step in scoring: every forward batch, meta-feature and rule reads only its own cells (the
input-consistency reference is fitted beforehand and travels with the model).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from functools import partial

import numpy as np
import torch
from anndata import AnnData

from .._settings import settings
from .._validate import absent_genes, matrix_for_genes, quiet_fill, warn_filled
from ..detection import compute_meta_features, non_integer_counts
from ..detection._features import InputConsistency
from ..detection._rule_layer import CHECKS, FLAG_REASONS, LEARNED, NON_INTEGER, combine, rule_reasons
from ..models.classifier import CellClassifier
from ..models.detector import AdversarialDetector, DetectorReport
from ._attack_record import attacked_cells
from ._chunks import is_chunked, map_chunks
from ._input import read_input, x_source
from ._models import get_model
from ._space import FILLED_AT_MEAN, layer_space, source_layers, zero_count_scaled


@dataclass(frozen=True)
class ChunkReader:
    """How every chunk is read and scored (picklable: it travels to dask workers with the model).

    Parameters
    ----------
    model
        The detector or classifier whose scaled input the matrices are read as.
    layers
        The matrices to read (``None``: ``X``).
    source
        The matrix standing for ``X`` (:func:`~scadversarial.tl._input.x_source`).
    missing
        ``'raise'`` or ``'fill'`` for genes the model needs and the data lack.
    batch_size
        Cells per forward batch.
    device
        Torch device of the forward passes.
    progress
        Show the per-batch progress bar (one chunk: the whole matrix).
    """

    model: torch.nn.Module
    layers: tuple[str | None, ...]
    source: str | None
    missing: str
    batch_size: int
    device: torch.device
    progress: bool = False

    def inputs(self, chunk: AnnData) -> list[np.ndarray]:
        """The chunk's matrices as the model's scaled input, one per layer."""
        with quiet_fill():  # :func:`chunk_reader` logged the filled genes once
            return [read_input(chunk, self.model, lay, source=self.source, missing=self.missing) for lay in self.layers]


def layer_list(layer) -> list[str | None]:
    """``layer`` of ``detect`` / ``meta_features`` as a list (``None``: ``X``; ``'X'`` is read as ``None``, as elsewhere)."""
    layers = [layer] if layer is None or isinstance(layer, str) else list(layer)
    return [None if lay == "X" else lay for lay in layers]


DOC_CHUNKED = """\
Big inputs are read a chunk of cells at a time, never densified whole: an AnnData opened with
``anndata.read_h5ad(path, backed='r')`` (rows read from the file; the results are written to
``.obs`` / ``.obsm`` / ``.uns`` in memory and the file is not changed; ``copy=True`` is refused),
dask arrays in ``X`` or the layers (one task per block of cells on the active dask scheduler, e.g. a
``dask.distributed`` cluster), a sparse log-normalized ``X`` (``sad.pp.preprocess(output='lognorm')``,
read through the classifier's transform) or many cells. Chunks are whole forward batches, so the
results equal those of the whole matrix bit for bit."""


def chunk_reader(
    adata: AnnData, model, layers, *, missing: str, batch_size: int | None, device: str | None
) -> ChunkReader:
    """How :func:`detect` and :func:`meta_features` read ``layers`` chunk by chunk (``X``'s source decided once).

    Genes filled by ``missing='fill'`` are logged here, once, not by every chunk.
    """
    if missing == "fill":
        how = FILLED_AT_MEAN
        if isinstance(model, AdversarialDetector) and model.has_rules:
            how += "; the plausibility rules read them as unexpressed (a zero count)"
        warn_filled(adata, model.var_names, how)
    with quiet_fill():
        source = x_source(adata, model, missing=missing) if any(lay in (None, "X") for lay in layers) else None
    return ChunkReader(
        model,
        tuple(layers),
        source,
        missing,
        int(batch_size or settings.batch_size),
        settings.torch_device(device),
        progress=not is_chunked(adata, layers=[lay for lay in layers if lay is not None]),
    )


DOC_SCORING = """\
missing
    ``'raise'``: a :class:`KeyError` names genes the model needs and ``adata`` lacks; ``'fill'``:
    fill them (logged once). A filled gene sits at its training mean (0 once scaled) for the
    learned detector and the meta-features: the value the classifier saw on average, which moves
    the learned score least. The plausibility rules and count checks (``detect``) read it as a zero
    count, the scaled value of log 0, ``clip((0 - mean) / std)``: no count gives the mean, so at the
    mean every cell would break the lattice rule, while an unexpressed gene breaks no rule.
batch_size
    Cells per batch (default ``sad.settings.batch_size``).
device
    Torch device (default ``sad.settings.device``)."""


def chunk_layers(adata: AnnData, layers, source: str | None) -> tuple[str, ...]:
    """The layers a chunk must hold to read ``layers`` (and ``X`` from ``source``)."""
    need: list[str] = []
    for lay in layers:
        need += source_layers(adata, lay)
        if lay in (None, "X") and source is not None:
            need.append(source)
    return tuple(dict.fromkeys(need))


def read_rows(adata: AnnData, reader: ChunkReader, rows: np.ndarray) -> list[np.ndarray]:
    """``reader``'s matrices (one per layer, the model's scaled input) of the cells ``rows``, read chunk by chunk."""
    parts = map_chunks(
        adata,
        reader.inputs,
        layers=chunk_layers(adata, reader.layers, reader.source),
        rows=rows,
        batch_size=reader.batch_size,
    )
    return [np.concatenate([p[i] for p in parts]) for i in range(len(reader.layers))]


def by_attacked_cells(adata: AnnData, layers) -> list[tuple[np.ndarray | None, list[str | None]]]:
    """``layers`` grouped by the cells they hold: every cell (``None``) or the cells of a sampled attack.

    A sampled attack (``sad.tl.attack(..., cells=...)``) stores rows for its attacked cells only; its
    other rows are empty, not attacks (:func:`~scadversarial.tl._attack_record.attacked_cells`).
    Groups keep the order in which their first layer comes.
    """
    groups: dict[bytes | None, tuple[np.ndarray | None, list[str | None]]] = {}
    for lay in layers:
        att = None if lay in (None, "X") else attacked_cells(adata, lay)
        if att is not None and not att.any():
            msg = f"Attack layer {lay!r} holds no attacked cell: there is nothing to score."
            raise ValueError(msg)
        groups.setdefault(None if att is None else att.tobytes(), (att, []))[1].append(lay)
    return list(groups.values())


def map_layers(
    adata: AnnData, chunk_fn: Callable, reader: ChunkReader
) -> dict[str | None, tuple[list, np.ndarray | None]]:
    """Per layer of ``reader``: ``chunk_fn(chunk, reader=...)``'s results chunk by chunk, and the cells read.

    Each layer is read on the cells it holds (:func:`by_attacked_cells`: the attacked cells of a
    sampled attack, else every cell); layers holding the same cells are read together. The cells read
    are ``None`` (every cell) or a boolean mask.
    """
    out = {}
    for att, group in by_attacked_cells(adata, reader.layers):
        sub = replace(reader, layers=tuple(group))
        parts = map_chunks(
            adata,
            partial(chunk_fn, reader=sub),
            layers=chunk_layers(adata, group, reader.source),
            rows=None if att is None else np.flatnonzero(att),
            batch_size=reader.batch_size,
        )
        for i, lay in enumerate(group):
            out[lay] = ([p[i] for p in parts], att)
    return {lay: out[lay] for lay in reader.layers}


def on_all_cells(values: np.ndarray, cells: np.ndarray | None, fill) -> np.ndarray:
    """Per-cell ``values`` of the cells ``cells`` (``None``: every cell) spread over every cell, ``fill`` elsewhere."""
    if cells is None:
        return values
    out = np.full((len(cells), *values.shape[1:]), fill, dtype=values.dtype)
    out[cells] = values
    return out


def non_integer(adata: AnnData, model: AdversarialDetector, layer: str | None, *, missing: str = "raise") -> np.ndarray:
    """Per cell, non-integer entries of a count-space layer on the model's genes (0: other spaces, no rules).

    A gene filled by ``missing='fill'`` counts 0, an integer.
    """
    if not model.has_rules or layer_space(adata, layer) != "counts":
        return np.zeros(adata.n_obs, dtype=np.int64)
    return non_integer_counts(matrix_for_genes(adata, model.var_names, layer, missing=missing))


@torch.no_grad()
def filled_checks(
    model: AdversarialDetector, M: np.ndarray, absent: np.ndarray, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(check counts, excess)`` of scaled ``M`` with its filled genes ``absent`` read as a zero count.

    The learned detector reads a filled gene at its training mean (:func:`read_input`), a value no
    count gives: the rules would flag every cell off the lattice, so they read an unexpressed gene instead.
    """
    R = M.copy()
    R[:, absent] = zero_count_scaled(model)[absent]
    dev = model.classifier.transform.mean.device
    counts, excess = [], []
    for s in range(0, R.shape[0], batch_size):
        c, e = model.check_layer(torch.as_tensor(R[s : s + batch_size], dtype=torch.float32, device=dev))
        counts.append(c.cpu().numpy())
        excess.append(e.cpu().numpy())
    if not counts:
        return np.zeros((0, len(CHECKS)), np.int64), np.zeros(0, np.float64)
    return np.concatenate(counts), np.concatenate(excess)


def detect_chunk(chunk: AnnData, reader: ChunkReader) -> list[tuple[DetectorReport, np.ndarray]]:
    """Per layer, the detector's report on one chunk and its non-integer counts (one matrix dense at a time)."""
    model = reader.model
    absent = absent_genes(chunk, model.var_names) if reader.missing == "fill" else None
    out = []
    with quiet_fill():  # :func:`chunk_reader` logged the filled genes once
        for lay in reader.layers:
            M = read_input(chunk, model, lay, source=reader.source, missing=reader.missing)
            rep = model.explain_arrays(
                M, batch_size=reader.batch_size, device=reader.device, progress_bar=reader.progress
            )
            if absent is not None and absent.any() and model.has_rules:
                counts, excess = filled_checks(model, M, absent, reader.batch_size)
                score = combine(rep.learned, counts.sum(1), excess).astype(np.float32)
                rep = replace(rep, score=score, rule_counts=counts, excess=excess)
            out.append((rep, non_integer(chunk, model, lay, missing=reader.missing)))
    return out


def meta_chunk(
    chunk: AnnData, reader: ChunkReader, *, gradient: bool = True, input_ref: InputConsistency | None = None
) -> list[np.ndarray]:
    """Per layer, the meta-features of one chunk: the detector's own, or the classifier's with ``input_ref``."""
    out = []
    for lay in reader.layers:
        with quiet_fill():  # :func:`chunk_reader` logged the filled genes once
            M = read_input(chunk, reader.model, lay, source=reader.source, missing=reader.missing)
        if isinstance(reader.model, AdversarialDetector):
            f = reader.model.score_arrays(
                M, batch_size=reader.batch_size, device=reader.device, progress_bar=reader.progress
            )[0]
        else:
            f = compute_meta_features(
                reader.model,
                M,
                gradient=gradient,
                input_ref=input_ref,
                batch_size=reader.batch_size,
                device=reader.device,
            )
        out.append(f)
    return out


def concat_reports(reports: list[DetectorReport]) -> DetectorReport:
    """The reports of consecutive chunks as one, in cell order."""
    if len(reports) == 1:
        return reports[0]
    return DetectorReport(*(np.concatenate([getattr(r, f.name) for r in reports]) for f in fields(DetectorReport)))


def scores_and_reasons(rep: DetectorReport, non_int: np.ndarray, thr: float) -> tuple[np.ndarray, np.ndarray]:
    """Combined score and reason of each cell; non-integer counts rank with the rules (before the lattice)."""
    counts = rep.rule_counts
    n = counts.sum(1) + non_int
    score = np.where(non_int > 0, combine(rep.learned, n, rep.excess), rep.score).astype(np.float32)
    reason = rule_reasons(counts)
    # every first-layer reason REASONS ranks after non-integer counts, or none, gives way to it
    outranked = [*FLAG_REASONS[FLAG_REASONS.index(NON_INTEGER) + 1 :], ""]
    reason = np.where((non_int > 0) & np.isin(reason, outranked), NON_INTEGER, reason)
    reason = np.where((reason == "") & (score >= thr), LEARNED, reason)
    return score, reason


def watched_classifier(adata: AnnData, classifier_key: str) -> CellClassifier:
    """The classifier the detector watches (a :class:`~scadversarial.models.CellClassifier`), also for a backed AnnData."""
    clf = get_model(adata, classifier_key)
    if not isinstance(clf, CellClassifier):
        msg = f"The {classifier_key!r} model is a {type(clf).__name__}; the detector needs a CellClassifier (`sad.tl.train_classifier`)."
        raise TypeError(msg)
    return clf


def detector_features(det: AdversarialDetector, X: np.ndarray, dev: torch.device, batch_size: int) -> torch.Tensor:
    """Raw meta-features of ``X`` under the detector's spec, as a CPU tensor."""
    det.eval().to(dev)
    out = []
    for s in range(0, X.shape[0], batch_size):
        xb = torch.as_tensor(np.ascontiguousarray(X[s : s + batch_size]), dtype=torch.float32, device=dev)
        out.append(det.meta_features(xb).cpu())
    return torch.cat(out) if out else torch.zeros(0, len(det.feature_names))


__all__ = [
    "DOC_CHUNKED",
    "DOC_SCORING",
    "ChunkReader",
    "by_attacked_cells",
    "chunk_reader",
    "layer_list",
    "map_layers",
    "chunk_layers",
    "concat_reports",
    "detector_features",
    "detect_chunk",
    "filled_checks",
    "meta_chunk",
    "non_integer",
    "on_all_cells",
    "scores_and_reasons",
    "watched_classifier",
]
