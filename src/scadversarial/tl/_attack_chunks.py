"""``sad.tl.attack`` chunk by chunk: the cells are read, attacked and predicted a chunk at a time.

One function, :func:`attack_chunk`, attacks the cells of an in-memory chunk (an AnnData of consecutive
selected cells, :mod:`._chunks`); :func:`run_chunks` runs it over every chunk, here (in memory or backed
input) or as one :func:`dask.delayed` task per chunk on the active scheduler (dask input), and
:func:`lazy_layer` makes one budget's attacked matrix a dask array whose blocks are attacked only when
they are computed or written. Chunk boundaries are multiples of the forward batch sizes and the random
starts are seeded per batch (:func:`~scadversarial.attacks.whitebox.batch_seed`), so every chunk's rows
equal the rows of the whole matrix's attack bit for bit.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from .. import _keys
from .._validate import is_dask, matrix_for_genes
from ..attacks.whitebox import Evasion, IterConfig, run_attack
from ._attack_options import SCORE_METHODS
from ._attack_record import detector_logits, full_width
from ._attack_score import score_run, view_proba
from ._attack_threat import Observed, observed_range, threat_arrays
from ._chunks import _chunk_adata, _dask_slices, _matrices, chunk_cells, iter_chunks
from ._input import classifier_input
from ._space import other_counts, space_model, to_scaled

if TYPE_CHECKING:
    from collections.abc import Iterator

    from anndata import AnnData

    from ..models.classifier import CellClassifier, Space
    from ._attack_options import AttackOptions, ThreatModel


@dataclass(frozen=True)
class Plan:
    """Everything a chunk's attack needs besides its cells (picklable: it travels to dask workers).

    Per-cell arrays (``labels``, ``goal``, ``mask``) are indexed by the cells' positions in ``adata``.
    """

    method: str
    eps: tuple[float, ...]
    threat: ThreatModel
    space: Space
    layer: str | None
    model: CellClassifier
    config: IterConfig
    options: AttackOptions
    #: the clean predictions' batch size (``sad.settings.batch_size`` of the caller, not of a worker)
    predict_batch: int
    labels: np.ndarray | None = None
    goal: np.ndarray | None = None
    mask: np.ndarray | None = field(default=None, repr=False)
    evasion: Evasion | None = None
    observed: Observed | None = field(default=None, repr=False)

    @property
    def align(self) -> int:
        """Chunk boundaries are multiples of both batch sizes, so every forward batch holds the same cells."""
        return math.lcm(int(self.config.batch_size), int(self.predict_batch))

    def layers(self, adata: AnnData) -> tuple[str, ...]:
        """The layers a chunk must hold besides ``X``."""
        names = {self.layer, _keys.LAYER_LOGNORM}
        if self.space == "counts":
            names.add(_keys.LAYER_COUNTS)
        if isinstance(self.threat.mask, str):
            names.add(self.threat.mask)
        return tuple(sorted(n for n in names if n is not None and n in adata.layers))


@dataclass
class ChunkResult:
    """One chunk's attack: clean classes, predicted classes per budget, and what the record needs."""

    source: np.ndarray
    preds: dict[float, np.ndarray]
    adversarial: dict[float, np.ndarray] = field(default_factory=dict)
    continuous: dict[float, np.ndarray] = field(default_factory=dict)
    flagged: dict[float, np.ndarray] = field(default_factory=dict)
    weight: dict[float, np.ndarray] = field(default_factory=dict)
    queries: dict[float, float] = field(default_factory=dict)


def clean_matrix(plan: Plan, chunk: AnnData) -> np.ndarray:
    """The chunk's clean values of the attacked matrix, on the model's genes (dense float32)."""
    if plan.layer is None:  # X, checked to be the classifier's input (or read through its transform)
        return classifier_input(chunk, plan.model)
    return matrix_for_genes(chunk, plan.model.var_names, plan.layer)


def pred_codes(model: CellClassifier, Xs: np.ndarray, *, batch_size: int, device) -> np.ndarray:
    """Predicted classes of scaled cells, as ``predict`` writes them (argmax of the softmax)."""
    logits = model.predict_arrays(Xs, batch_size=batch_size, device=device)[0]
    return torch.softmax(torch.from_numpy(logits), 1).numpy().argmax(1)


def attack_chunk(
    plan: Plan, chunk: AnnData, rows: np.ndarray, start: int, *, keep: bool, whole: bool = False
) -> ChunkResult:
    """Attack the cells of ``chunk`` (positions ``rows`` in ``adata``; ``start``: its first row among the attacked).

    ``keep``: return the attacked matrices (over all of ``chunk``'s genes) besides the predictions.
    """
    model, config = plan.model, plan.config
    dev, bs = config.device, config.batch_size
    genes = pd.Index(model.var_names)
    X = clean_matrix(plan, chunk)
    view = space_model(chunk, model, plan.space)
    other = other_counts(chunk, genes) if plan.space == "counts" else None
    X_clean = to_scaled(view, X, other, batch_size=bs)
    if plan.labels is not None:
        source = plan.labels[rows]
    else:
        source = model.predict_arrays(X_clean, batch_size=plan.predict_batch, device=dev)[0].argmax(1)
    y = source if plan.goal is None else plan.goal[rows]
    threat = plan.threat if plan.mask is None else replace(plan.threat, mask=plan.mask[rows])
    tarr = threat_arrays(chunk, threat, plan.space, plan.method, X, model, observed=plan.observed, whole=whole)
    targeted = plan.goal is not None
    out = ChunkResult(source=source, preds={})
    if plan.method in SCORE_METHODS:
        was_training, home = model.training, next(model.parameters()).device
        model.eval().to(dev)
        try:
            run, out.queries = score_run(
                view_proba(view, bs),
                X,
                y,
                method=plan.method,
                eps_list=list(plan.eps),
                tarr=tarr,
                targeted=targeted,
                options=plan.options,
                bs=bs,
            )
        finally:  # the caller's model comes back as it was: mode and device
            model.train(was_training).to(home)
    else:
        run = run_attack(
            view,
            X,
            y,
            method=plan.method,
            eps=list(plan.eps),
            threat=tarr,
            config=config,
            targeted=targeted,
            other=other,
            evasion=plan.evasion,
            first_row=start,
        )
    for e, Xa in run.adversarial.items():
        Xs = to_scaled(view, Xa, other, batch_size=bs)
        out.preds[e] = pred_codes(model, Xs, batch_size=plan.predict_batch, device=dev)
        if e in run.continuous:
            Xc = to_scaled(view, run.continuous[e], other, batch_size=bs)
            out.continuous[e] = (
                model.predict_arrays(Xc, batch_size=plan.predict_batch, device=dev)[0].argmax(1) != source
            )
        if plan.evasion is not None:
            thr = float(plan.evasion.detector.threshold)
            out.flagged[e] = detector_logits(plan.evasion.detector, Xs, bs, dev) >= float(np.log(thr / (1 - thr)))
            out.weight[e] = run.detector_weight[e]
        if keep:
            out.adversarial[e] = full_width(chunk, Xa, plan.layer, genes)
    return out


def _blocks(M, sl: slice, idx: np.ndarray | None):
    """Rows ``sl`` of the attacked cells of a dask (or in-memory) matrix, lazy where ``M`` is; one block of cells."""
    part = M[sl] if idx is None else M[idx[sl]]
    if is_dask(part):
        part = part.rechunk({0: -1, 1: -1}) if part.ndim == 2 else part.rechunk(-1)
    return part


def _run_task(plan: Plan, parts: dict, obs: pd.DataFrame, var, uns, rows, start: int, *, eps: float | None, keep: bool):
    """One dask task: every budget's predictions (``eps=None``; the matrices with ``keep``) or one matrix."""
    mats = {k: v.to_memory() if hasattr(v, "to_memory") else v for k, v in parts.items()}
    chunk = _chunk_adata(mats, obs, var, uns)  # .uns by reference: the chunk reads the parent's records
    plan = _own_models(plan)
    if eps is None:
        return attack_chunk(plan, chunk, rows, start, keep=keep)
    return attack_chunk(replace(plan, eps=(eps,)), chunk, rows, start, keep=True).adversarial[eps]


def _own_models(plan: Plan) -> Plan:
    """The plan with its own copy of the classifier (and detector).

    An attack switches its models to evaluation mode and freezes their parameters for its duration, then
    restores them: tasks sharing one model in threads would restore it under each other's feet (a
    classifier back in training mode mid-attack applies dropout). The copies hold the same parameters,
    so the results are the same bits.
    """
    evasion = plan.evasion
    if evasion is not None:
        evasion = replace(evasion, detector=copy.deepcopy(evasion.detector))
    return replace(plan, model=copy.deepcopy(plan.model), evasion=evasion)


def is_lazy(adata: AnnData, plan: Plan) -> bool:
    """Whether a chunk's inputs include a dask array: chunks then run as dask tasks."""
    return any(is_dask(M) for M in _matrices(adata, plan.layers(adata)).values())


def _tasks(
    adata: AnnData, plan: Plan, idx: np.ndarray | None, eps: float | None, *, keep: bool = False
) -> Iterator[tuple[slice, Any]]:
    """One delayed task per chunk of the attacked cells (dask input; ``eps``, ``keep``: see :func:`_run_task`)."""
    import dask

    mats = _matrices(adata, plan.layers(adata))
    n = adata.n_obs if idx is None else len(idx)
    # one graph node each, which every task references: the plan (models, labels, masks), .var and .uns
    # are sent to a worker once, not once per task
    shared = [dask.delayed(x, traverse=False, pure=False) for x in (plan, adata.var, adata.uns)]
    # the dask blocks of cells when every dask matrix shares them, aligned to the batches; else chunk_cells
    for sl in _dask_slices(mats if idx is None else {}, n, chunk_cells(plan.align), plan.align):
        rows = np.arange(n)[sl] if idx is None else idx[sl]
        parts = {k: _blocks(M, sl, idx) for k, M in mats.items()}
        obs = adata.obs.iloc[rows]
        task = dask.delayed(_run_task)(shared[0], parts, obs, shared[1], shared[2], rows, sl.start, eps=eps, keep=keep)
        yield sl, task


def run_chunks(
    adata: AnnData, plan: Plan, idx: np.ndarray | None, *, keep: bool, single: bool = False
) -> list[ChunkResult]:
    """:func:`attack_chunk` over every chunk of the attacked cells (positions ``idx``; ``None``: all), in order.

    Dask input: one task per chunk, computed together on the active scheduler (with ``keep`` the
    attacked matrices come back; without, they stay on the workers and :func:`lazy_layer` makes them).
    Otherwise one chunk in memory at a time, here; a single chunk of an in-memory AnnData is ``adata``
    itself, not a copy. ``single``: all the attacked cells in one chunk (score-based methods).
    """
    n = adata.n_obs if idx is None else len(idx)
    if single:
        if idx is None and not adata.isbacked and not is_lazy(adata, plan):
            return [attack_chunk(plan, adata, np.arange(n), 0, keep=keep, whole=True)]
        ((_, chunk),) = iter_chunks(adata, layers=plan.layers(adata), rows=idx, batch_size=n)
        return [attack_chunk(plan, chunk, np.arange(n) if idx is None else idx, 0, keep=keep, whole=idx is None)]
    if is_lazy(adata, plan):
        import dask

        return list(dask.compute(*(task for _, task in _tasks(adata, plan, idx, None, keep=keep))))
    size = chunk_cells(plan.align)
    if idx is None and n <= size and not adata.isbacked:
        return [attack_chunk(plan, adata, np.arange(n), 0, keep=keep, whole=True)]
    layers = plan.layers(adata)
    results = []
    for sl, chunk in iter_chunks(adata, layers=layers, rows=idx, batch_size=plan.align):
        rows = np.arange(n)[sl] if idx is None else idx[sl]
        results.append(attack_chunk(plan, chunk, rows, sl.start, keep=keep))
    return results


def lazy_layer(adata: AnnData, plan: Plan, eps: float):
    """Budget ``eps``'s attacked matrix over all cells and genes as a dask array, one block per chunk.

    Nothing is attacked until a block is computed (e.g. by ``adata.write_zarr``); each block is then
    attacked anew, bit for bit as in :func:`run_chunks`.
    """
    import dask.array as da

    pieces = [
        da.from_delayed(task, shape=(sl.stop - sl.start, adata.n_vars), dtype=np.float32)
        for sl, task in _tasks(adata, plan, None, eps)
    ]
    return da.concatenate(pieces, axis=0)


def whole_range(adata: AnnData, plan: Plan) -> Observed:
    """Per gene, the ``(min, max)`` of the attacked space's clean values over all cells, read chunk by chunk."""
    if not is_lazy(adata, plan) and not adata.isbacked and adata.n_obs <= chunk_cells(plan.align):
        return observed_range([clean_matrix(plan, adata)])
    layers = plan.layers(adata)
    return observed_range(clean_matrix(plan, chunk) for _, chunk in iter_chunks(adata, layers=layers))


__all__ = ["ChunkResult", "Plan", "attack_chunk", "is_lazy", "lazy_layer", "run_chunks", "whole_range"]
