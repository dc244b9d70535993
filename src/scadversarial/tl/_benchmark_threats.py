"""The threats of :func:`~scadversarial.tl.benchmark_detectors`: running them on the benchmarked cells, reading their layers.

An attacked layer is read in the space its attack record states (scaled, log or counts), through the
classifier's own transform, exactly as the attack saw it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from anndata import AnnData

from .. import _keys
from .._validate import check_choice, matrix_for_genes
from ..models.classifier import CellClassifier
from ._attack_threat import tighter
from ._input import classifier_input
from ._space import other_counts, space_layer, space_model, to_scaled

Space = Literal["scaled", "log", "counts"]
#: A spec of one threat: keyword arguments of :func:`~scadversarial.tl.attack`, a list of them (a sweep whose
#: layers are pooled worst case per cell), or a callable that writes attacked layers on the cells and names them.
ThreatSpec = Mapping[str, Any] | Sequence[Mapping[str, Any]] | Callable[[AnnData], Sequence[str] | Mapping[str, Space]]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", str(name)).strip("_") or "threat"


def _record_space(rec: Mapping | None) -> tuple[str, str]:
    """``(space, constraint)`` an attack record states (older records: from their ``layer`` and ``bounds``)."""
    params = dict(rec.get("params", {})) if rec is not None else {}
    space = params.get("space")
    if space is None:
        layer = str(params.get("layer", "X"))
        space = {_keys.LAYER_LOGNORM: "log", _keys.LAYER_COUNTS: "counts"}.get(layer, "scaled")
    constraint = params.get("constraint")
    if constraint is None:
        bounds = str(params.get("bounds", "none"))
        constraint = bounds if bounds != "none" else "none"
    return str(space), str(constraint)


def _layer_record(adata: AnnData, layer: str) -> tuple[str | None, dict | None]:
    for key, rec in adata.uns.get(_keys.UNS, {}).get(_keys.STEP_ATTACKS, {}).items():
        if layer in [str(x) for x in np.atleast_1d(rec.get("layers", []))]:
            return key, rec
    return None, None


class _Inputs:
    """Turns a matrix of the benchmarked cells in any space into the classifier's scaled input.

    Log and count layers go through the classifier's own transform, exactly as the attacks saw them
    (count space: each cell's library includes its counts of the genes ``preprocess`` dropped).
    """

    def __init__(self, cells: AnnData, clf: CellClassifier) -> None:
        self.cells, self.clf = cells, clf
        self._other: np.ndarray | None = None

    def scaled(self, layer: str | None, space: str) -> np.ndarray:
        check_choice("space", space, Space)
        if layer is None and space == "scaled":  # X: checked to be in the classifier's scaled space
            return classifier_input(self.cells, self.clf)
        M = matrix_for_genes(self.cells, self.clf.var_names, layer)
        if space == "scaled":
            return M
        if space == "counts" and self._other is None:
            self._other = other_counts(self.cells, self.clf.var_names)
        other = self._other if space == "counts" else None
        return to_scaled(space_model(self.cells, self.clf, space), M, other)


def _run_threat(
    cells: AnnData, name: str, spec: ThreatSpec, index: int, classifier: CellClassifier | None = None
) -> list[tuple[str, list[tuple[str, str]], tuple[str, str]]]:
    """Run one threat on the benchmarked cells (against ``classifier``, default the record's).

    Returns ``[(row name, [(layer, its space)] pooled in that row, (space, constraint) of the row)]``.
    """
    from ._attack import attack

    if callable(spec):
        written = spec(cells)
        if isinstance(written, Mapping):  # {layer: space}
            layers = {str(k): (str(v), "custom") for k, v in written.items()}
        else:  # layer names: their attack record states the space
            layers = {str(k): _record_space(_layer_record(cells, str(k))[1]) for k in written}
        missing = [x for x in layers if x not in cells.layers]
        if not layers or missing:
            msg = (
                f"Threat {name!r}: its callable must write attacked layers and return their names (or "
                f"{{layer: space}}); missing: {missing or list(layers)}."
            )
            raise ValueError(msg)
        return [(name if len(layers) == 1 else f"{name} {lay}", [(lay, meta[0])], meta) for lay, meta in layers.items()]
    sweep = not isinstance(spec, Mapping)
    specs = list(spec) if sweep else [spec]
    if not specs or not all(isinstance(s, Mapping) for s in specs):
        msg = (
            f"Threat {name!r} must be a dict of `sad.tl.attack` arguments, a non-empty list of them (a sweep), "
            f"or a callable writing layers; got {type(spec).__name__}."
        )
        raise TypeError(msg)
    done = []
    for j, s in enumerate(specs):
        if "copy" in s or "key_added" in s:
            msg = f"Threat {name!r}: leave `copy` and `key_added` out of the attack spec; the benchmark sets them."
            raise ValueError(msg)
        key = f"sad_bench{'' if classifier is None else '_hardened'}{index}_{j}_{_slug(name)}"
        attack(cells, **s, key_added=key, **({} if classifier is None else {"classifier": classifier}))
        rec = cells.uns[_keys.UNS][_keys.STEP_ATTACKS][key]
        done.append((rec, [str(x) for x in np.atleast_1d(rec["layers"])]))
    if sweep:
        metas = {_record_space(rec) for rec, _ in done}
        meta = metas.pop() if len(metas) == 1 else ("mixed", "mixed")
        return [(name, [(lay, _record_space(rec)[0]) for rec, layers in done for lay in layers], meta)]
    rec, layers = done[0]
    eps = np.atleast_1d(rec.get("eps", [])).astype(float)
    rows = []
    for i, lay in enumerate(layers):
        label = f"eps={eps[i]:g}" if len(eps) == len(layers) else lay
        meta = _record_space(rec)
        rows.append((name if len(layers) == 1 else f"{name} {label}", [(lay, meta[0])], meta))
    return rows


def _observed_over_all_cells(adata: AnnData, spec: ThreatSpec, model: CellClassifier) -> tuple[ThreatSpec, bool]:
    """``spec`` with ``constraint='observed'`` turned into each gene's range over *all* cells of ``adata``.

    The benchmark attacks a copy of the test cells, where ``attack`` would take the range of those
    cells alone (a tighter box than the documented threat). The range is read from the matrix the
    attack reads (``X`` as the model's scaled input, or the space's layer) and intersected with any
    custom ``bounds`` of the spec, as ``attack`` does. Returns the spec and whether it changed.
    """
    if callable(spec):
        return spec, False
    if not isinstance(spec, Mapping):
        pairs = [_observed_over_all_cells(adata, s, model) for s in spec]
        return [p[0] for p in pairs], any(p[1] for p in pairs)
    bounds, constraint = spec.get("bounds"), spec.get("constraint")
    observed = constraint == "observed" or bounds == "observed"
    if not observed:
        return spec, False
    if bounds == "observed" and constraint not in (None, "observed"):  # as attack() refuses it
        msg = (
            f"Threat spec {dict(spec)!r}: bounds='observed' is the 'observed' constraint, and "
            f"constraint={constraint!r} was given too; pass one of them."
        )
        raise ValueError(msg)
    layer = spec.get("layer", space_layer(spec.get("space") or "scaled"))
    layer = None if layer == "X" else layer
    M = classifier_input(adata, model) if layer is None else matrix_for_genes(adata, model.var_names, layer)
    lower, upper = M.min(0), M.max(0)
    if bounds is not None and not isinstance(bounds, str):
        lower, upper = tighter(bounds[0], lower, np.maximum), tighter(bounds[1], upper, np.minimum)
    out = {k: v for k, v in spec.items() if k not in ("constraint", "bounds")}
    return {**out, "bounds": (lower, upper)}, True


__all__ = ["Space", "ThreatSpec"]
