"""``sad.tl.benign_shift``: benign technical shifts of the counts, re-preprocessed like the training data."""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .. import _keys
from .._validate import check_adata, check_choice, get_record
from ._space import other_counts

ShiftKind = Literal["thinning", "ambient", "noise"]

#: Name of the extra column that carries a cell's counts of the genes ``preprocess`` dropped. Only its total
#: matters (it is part of the library size ``preprocess`` normalizes by), so all those genes travel as one.
OTHER_GENES = "_sad_other_genes"


@dataclass(frozen=True)
class BenignShift:
    """A benign technical shift of the counts.

    :func:`benign_shift` applies it to every cell; the threat benchmark scores detectors on the result.

    Attributes
    ----------
    kind
        ``'thinning'``: binomial thinning of every count to a fraction of the depth (a shallower
        sequencing run); ``'ambient'``: ambient-RNA contamination, a fraction of each cell's counts
        replaced by counts drawn from the mean profile of all cells; ``'noise'``: the expressed
        genes' counts redrawn as Poisson counts around a multiplicative log-normal change (zeros stay zero).
    amount
        Fraction of the depth kept (thinning, in (0, 1]), contamination fraction (ambient, in
        [0, 1)), or the standard deviation of the natural-log fold change (noise, >= 0; 0 is a plain
        Poisson resampling of the expressed genes).

    """

    kind: ShiftKind
    amount: float

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, ShiftKind)
        a = float(self.amount)
        ok = {"thinning": 0 < a <= 1, "ambient": 0 <= a < 1, "noise": a >= 0}[self.kind]
        if not ok:
            rng = {"thinning": "(0, 1]", "ambient": "[0, 1)", "noise": ">= 0"}[self.kind]
            msg = f"amount of a {self.kind!r} shift must be in {rng}, got {self.amount}."
            raise ValueError(msg)


#: The benchmark's default benign shifts: half and quarter depth (a deep reference vs a shallower query),
#: 10 % ambient RNA (the upper end of what SoupX-style estimates report for droplet data), and
#: 20 % log-normal multiplicative noise on expressed genes on top of Poisson resampling.
DEFAULT_SHIFTS = {
    "thinning 50%": BenignShift("thinning", 0.5),
    "thinning 25%": BenignShift("thinning", 0.25),
    "ambient 10%": BenignShift("ambient", 0.1),
    "noise 0.2": BenignShift("noise", 0.2),
}


def _dense(M) -> np.ndarray:
    return M.toarray() if sp.issparse(M) else np.asarray(M)


def library_counts(adata: AnnData) -> tuple[np.ndarray, np.ndarray]:
    """Counts of the kept genes and each cell's count of all other genes, as ``preprocess`` saw them.

    ``preprocess`` normalizes a cell by its total count over *all* genes, but keeps the counts of
    the selected genes only. The total is recovered exactly from the kept genes: their
    log-normalized value is ``log1p(k * target_sum / N)``, so ``N = target_sum * sum(k) / sum(expm1(lognorm))``.

    Returns
    -------
    ``(counts, other)``: the kept genes' counts (cells x genes, float64 integers) and the other genes'
    total per cell (float64 integers, from :func:`~scadversarial.tl.other_counts`).

    """
    missing = [key for key in (_keys.LAYER_COUNTS, _keys.LAYER_LOGNORM) if key not in adata.layers]
    if missing:
        msg = (
            f"Benign shifts work on counts: adata needs .layers[{_keys.LAYER_COUNTS!r}] and "
            f".layers[{_keys.LAYER_LOGNORM!r}], written by `sad.pp.preprocess` from raw counts (missing: {missing}). "
            "Preprocess the counts (not log-normalized data), or leave out the benign shifts (`benign={}`)."
        )
        raise KeyError(msg)
    counts = _dense(adata.layers[_keys.LAYER_COUNTS]).astype(np.float64)
    # the same library the count-space attacks and the benchmark normalize by
    return counts, other_counts(adata, adata.var_names)


def _shifted_counts(
    counts: np.ndarray, other: np.ndarray, shift: BenignShift, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    a = float(shift.amount)
    c = counts.astype(np.int64)
    o = other.astype(np.int64)
    if shift.kind == "thinning":
        # a sum of binomials with one p is binomial: thinning the other genes' total is exact
        return rng.binomial(c, a).astype(np.float64), rng.binomial(o, a).astype(np.float64)
    if shift.kind == "ambient":
        depth = counts.sum(1) + other
        profile = np.concatenate([counts.sum(0), [other.sum()]])
        profile = profile / max(profile.sum(), 1.0)
        lam = a * depth[:, None] * profile[None, :]
        keep_c, keep_o = rng.binomial(c, 1 - a), rng.binomial(o, 1 - a)
        soup = rng.poisson(lam)
        return (keep_c + soup[:, :-1]).astype(np.float64), (keep_o + soup[:, -1]).astype(np.float64)
    # noise: a mean-preserving log-normal fold change per expressed gene, then Poisson counts (zeros stay zero)
    fold = np.exp(a * rng.standard_normal(c.shape) - 0.5 * a * a)
    new = np.where(c > 0, rng.poisson(c * fold), 0)
    # the other genes' total: the sum of their Poisson draws is Poisson (their fold changes average out)
    return new.astype(np.float64), rng.poisson(o).astype(np.float64)


def benign_shift(
    adata: AnnData,
    kind: ShiftKind = "thinning",
    *,
    amount: float = 0.5,
    random_state: int = 0,
) -> AnnData:
    """A benign technical shift of every cell's counts, re-preprocessed exactly like ``adata``.

    The shift acts on ``.layers['counts']`` of the kept genes and on each cell's total count of
    the genes :func:`~scadversarial.pp.preprocess` dropped (recovered from the log-normalized
    values, see :func:`library_counts`), so the new cells are normalized by the library size a
    real shallower or noisier measurement would have. The result is re-preprocessed with
    ``sad.pp.preprocess(new, reference=adata)``; thinning with ``amount=1`` reproduces ``X``.

    Parameters
    ----------
    adata
        AnnData preprocessed from counts by :func:`~scadversarial.pp.preprocess`.
    kind
        ``'thinning'``, ``'ambient'`` or ``'noise'`` (see :class:`BenignShift`).
    amount
        Fraction of depth kept, contamination fraction, or log-normal noise level (see :class:`BenignShift`).
    random_state
        Seed of the draws (a local generator).

    Returns
    -------
    A new AnnData with the same cells and genes as ``adata``, its ``.obs`` annotations (not the
    ``sad_`` outputs of the unshifted cells, except split and pseudo-labels), its model records
    (``.uns['sad'][step]`` with a ``model`` reference, so :func:`predict` works) and, as written by
    :func:`~scadversarial.pp.preprocess`: ``.X`` (scaled with ``adata``'s mean and std),
    ``.layers['counts']`` (the shifted counts), ``.layers['sad_lognorm']``, ``.var['sad_mean']``,
    ``.var['sad_std']``, ``.var['highly_variable']`` and ``.uns['sad']['preprocess']``; also
    ``.uns['sad']['benign_shift']`` (``params``: ``kind``, ``amount``, ``random_state``). The
    classifier's and detector's outputs are not computed (run :func:`predict` / :func:`detect`).

    Examples
    --------
    >>> import scadversarial as sad
    >>> adata = sad.datasets.pbmc3k("pbmc3k.h5ad")  # doctest: +SKIP
    >>> sad.pp.preprocess(adata)  # doctest: +SKIP
    >>> half = sad.tl.benign_shift(adata, "thinning", amount=0.5)  # doctest: +SKIP
    >>> sad.tl.predict(half)  # doctest: +SKIP

    """
    from ..pp import preprocess

    check_adata(adata)
    shift = BenignShift(kind, amount)
    counts, other = library_counts(adata)
    rng = np.random.default_rng(random_state)
    new_c, new_o = _shifted_counts(counts, other, shift, rng)
    var = pd.DataFrame(index=pd.Index([*map(str, adata.var_names), OTHER_GENES]))
    # outputs computed on the unshifted cells would be stale: keep the annotations and the model records only
    keep = [c for c in adata.obs.columns if not str(c).startswith("sad_") or c in (_keys.OBS_SPLIT, _keys.OBS_LABEL)]
    new = AnnData(np.column_stack([new_c, new_o]).astype(np.float32), obs=adata.obs[keep].copy(), var=var)
    records = adata.uns.get(_keys.UNS, {})
    new.uns[_keys.UNS] = {k: deepcopy(v) for k, v in records.items() if isinstance(v, dict) and "model" in v}
    params = get_record(adata, _keys.STEP_PREPROCESS, producer="sad.pp.preprocess")["params"]
    preprocess(
        new,
        reference=adata,
        already_log=False,
        subset=False,
        target_sum=float(params["target_sum"]),
        output=params.get("output", "scaled"),  # the same kind of X as the original
    )
    new.uns[_keys.UNS]["benign_shift"] = {
        "params": {"kind": shift.kind, "amount": float(shift.amount), "random_state": int(random_state)}
    }
    return new


__all__ = ["BenignShift", "DEFAULT_SHIFTS", "benign_shift", "library_counts"]
