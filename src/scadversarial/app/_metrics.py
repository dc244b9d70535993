"""The page's global evaluation: attack a split in batches, then score it with :func:`scadversarial.tl.evaluate`.

The app attacks with the sidebar's settings and scores at the sidebar's threshold, so it cannot
reuse the pipeline's recorded layers. It writes what it computed into a small AnnData of the
evaluated cells, with the fields and records :func:`~scadversarial.tl.evaluate` reads, calls it and
reads the table back with :func:`scadversarial.get.evaluation_table`: the page's numbers are the
package's metrics, under the names in :data:`SHOWN`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _keys, get, tl
from .._validate import set_record, uns_root
from ._cell import attack_rows, attack_settings, quiet, score
from ._state import DEVICE, AppError, Pipeline

#: The rows of :func:`~scadversarial.tl.evaluate`'s table (``section``, ``metric``) the page shows, and
#: the names it shows them under.
SHOWN: dict[tuple[str, str], str] = {
    ("classifier", "accuracy"): "classifier accuracy (clean)",
    ("attack", "flip_rate"): "flip rate",
    ("detector", "clean_accuracy"): "detection accuracy, clean cells",
    ("detector", "adversarial_accuracy"): "detection accuracy, attacked cells",
    ("detector", "auroc"): "AUROC (clean vs. attacked)",
}
#: Rows the page adds, which :func:`~scadversarial.tl.evaluate` has no metric for.
CELLS = "cells evaluated"
ATTACKED_ACCURACY = "classifier accuracy (attacked)"
SUCCESSFUL = "detection accuracy, successful attacks"
#: The order of the rows in the page's table.
ORDER = (
    CELLS,
    SHOWN["classifier", "accuracy"],
    ATTACKED_ACCURACY,
    SHOWN["attack", "flip_rate"],
    SHOWN["detector", "clean_accuracy"],
    SHOWN["detector", "adversarial_accuracy"],
    SUCCESSFUL,
    SHOWN["detector", "auroc"],
)
#: Names of the attack, its layer and the detector in the AnnData handed to ``evaluate``.
ATTACK_KEY = "app_attack"
LAYER = "app_attack_layer"
#: The detector id of that AnnData's records: ``evaluate`` only checks that its scores and its
#: detector record name the same detector, and the app scored them all with one.
DETECTOR_ID = "app"
#: Cells attacked per batch: one progress step each.
BATCH_SIZE = 256


@dataclass
class EvalResult:
    """Evaluation of the classifier, the attack and the detector on a set of cells."""

    n_cells: int
    method: str
    eps: float
    threshold: float | None
    metrics: dict[str, float]
    split: str

    def table(self) -> pd.DataFrame:
        """One row per metric: ``metric, value``."""
        return pd.DataFrame({"metric": list(self.metrics), "value": [float(v) for v in self.metrics.values()]})


@dataclass(frozen=True)
class _Outcome:
    """What the batches computed for the evaluated cells ``idx``."""

    idx: np.ndarray
    clean_pred: np.ndarray
    adv_pred: np.ndarray
    X_adv: np.ndarray
    s_clean: np.ndarray | None
    s_adv: np.ndarray | None


def _evaluation_adata(pipe: Pipeline, out: _Outcome, threshold: float | None) -> AnnData:
    """The evaluated cells with what :func:`~scadversarial.tl.evaluate` reads.

    ``.obs``: labels, clean and attacked predictions, and the detector's scores and flags at
    ``threshold`` for the clean cells and the attacked layer; ``.uns['sad']``: the classifier,
    attack, detector and detect records that name them.
    """
    classes = np.asarray(pipe.classes)
    a = AnnData(
        pipe.X[out.idx],
        obs=pd.DataFrame(index=np.asarray(pipe.obs_names)[out.idx]),
        var=pd.DataFrame(index=pipe.genes),
    )
    a.layers[LAYER] = out.X_adv
    clean = classes[out.clean_pred]
    # without true labels the classifier row is dropped: any labels do for the other rows
    a.obs[_keys.OBS_LABEL] = clean if pipe.labels is None else pipe.labels[out.idx]
    a.obs[_keys.OBS_PRED] = clean
    a.obs[_keys.pred_key(LAYER)] = classes[out.adv_pred]
    set_record(a, _keys.STEP_CLASSIFIER, params={"labels_key": _keys.OBS_LABEL})
    uns_root(a)[_keys.STEP_ATTACKS] = {
        ATTACK_KEY: {"kind": "whitebox", "params": {"labels_key": "predicted"}, "layers": [LAYER]}
    }
    if out.s_clean is not None and threshold is not None:
        for layer, s in ((None, out.s_clean), (LAYER, out.s_adv)):
            a.obs[_keys.score_key(layer)] = s
            a.obs[_keys.flag_key(layer)] = s >= threshold
        set_record(a, _keys.STEP_DETECTOR, model={"id": DETECTOR_ID})
        per = {"threshold": float(threshold), "detector_id": DETECTOR_ID}
        set_record(a, _keys.STEP_DETECT, metrics={"X": per, LAYER: per})
    return a


def _metrics(pipe: Pipeline, out: _Outcome, threshold: float | None) -> dict[str, float]:
    """The page's metrics: :func:`~scadversarial.tl.evaluate`'s rows under :data:`SHOWN`'s names, and its own."""
    a = _evaluation_adata(pipe, out, threshold)
    has_scores = _keys.STEP_DETECTOR in uns_root(a)
    tl.evaluate(
        a,
        attack_key=ATTACK_KEY,
        labels_key=_keys.OBS_LABEL,
        subset=None,
        detector_key=_keys.STEP_DETECTOR if has_scores else None,
    )
    table = get.evaluation_table(a)
    table = table[table["group"].isin(["overall", LAYER])]
    found = {
        SHOWN[s, m]: float(v)
        for s, m, v in zip(table["section"], table["metric"], table["value"], strict=True)
        if (s, m) in SHOWN
    }
    found[CELLS] = float(len(out.idx))
    if pipe.labels is None:
        del found[SHOWN["classifier", "accuracy"]]
    else:
        found[ATTACKED_ACCURACY] = float((np.asarray(pipe.classes)[out.adv_pred] == pipe.labels[out.idx]).mean())
    flipped = out.adv_pred != out.clean_pred
    if has_scores and flipped.any():
        found[SUCCESSFUL] = float((out.s_adv[flipped] >= threshold).mean())
    return {name: found[name] for name in ORDER if name in found}


def _cells(pipe: Pipeline, split: str, max_cells: int | None) -> tuple[np.ndarray, str]:
    """The cells of ``split`` (all cells when the pipeline has no split or no such cell) and the split used."""
    if pipe.split is not None and split != "all" and (pipe.split == split).any():
        idx, used = np.flatnonzero(pipe.split == split), split
    else:
        idx, used = np.arange(pipe.n_cells), "all"
    if max_cells is not None:
        idx = idx[: int(max_cells)]
    if not len(idx):
        msg = f"No cells to evaluate (split {used!r}, max_cells {max_cells})."
        raise AppError(msg)
    return idx, used


def evaluate_iter(
    pipe: Pipeline,
    *,
    method: str = "pgd",
    eps: float = 0.1,
    threshold: float | None = None,
    alpha: float | None = None,
    steps: int | None = None,
    split: str = "test",
    batch_size: int = BATCH_SIZE,
    max_cells: int | None = None,
    random_state: int = 0,
) -> Iterator[tuple[float, EvalResult | None]]:
    """Evaluate in batches, yielding ``(fraction_done, None)`` after each batch and ``(1.0, result)`` at the end.

    On the cells of ``split`` (all cells when the pipeline has no split or no such cell): attack
    each against its clean prediction, then report :func:`scadversarial.tl.evaluate`'s metrics
    (names in :data:`SHOWN`): the classifier's accuracy (clean, against the true labels), the
    flip rate (attacked prediction differs from the clean one), the detector's accuracy on clean
    cells (score below ``threshold``) and on attacked cells (score at or above it), and the AUROC of
    clean vs. attacked scores; and the page's own: the classifier's accuracy on the attacked cells
    and the detector's accuracy on the attacks that flipped the prediction.

    Parameters
    ----------
    pipe
        The loaded pipeline.
    method
        ``'pgd'``, ``'pgd_rs'``, ``'pgd_l2'`` or ``'fgsm'``.
    eps
        Budget.
    threshold
        Detection threshold (default the stored one).
    alpha
        PGD step size; ``None`` (or 0) is :func:`~scadversarial.app.logic.auto_alpha`.
    steps
        PGD steps (default the pipeline's recorded attack's).
    split
        Which cells: ``'test'``, ``'val'``, ``'train'`` or ``'all'``.
    batch_size
        Cells per batch.
    max_cells
        Evaluate at most this many cells (the first ones of the split).
    random_state
        Seed of the random start.

    Raises
    ------
    AppError
        No cell to evaluate (``max_cells=0``), an unknown method or a budget that is not positive.

    """
    idx, used = _cells(pipe, split, max_cells)
    threshold = pipe.threshold if threshold is None else float(threshold)
    attack = attack_settings(pipe, method=method, eps=eps, alpha=alpha, steps=steps)
    clean_pred = pipe.pred[idx]
    adv_pred = np.empty_like(clean_pred)
    X_adv = np.empty((len(idx), pipe.X.shape[1]), dtype=pipe.X.dtype)
    has_det = pipe.detector is not None
    s_clean = np.empty(len(idx)) if has_det else None
    s_adv = np.empty(len(idx)) if has_det else None
    starts = list(range(0, len(idx), batch_size))
    for b, start in enumerate(starts):
        rows = slice(start, start + batch_size)
        Xb = pipe.X[idx[rows]]
        with quiet():
            X_adv[rows] = attack_rows(
                pipe, Xb, clean_pred[rows], attack, batch_size=batch_size, random_state=random_state + b
            )
        logits, _ = pipe.classifier.predict_arrays(X_adv[rows], device=DEVICE)
        adv_pred[rows] = logits.argmax(1)
        if has_det:
            s_clean[rows] = score(pipe, Xb)
            s_adv[rows] = score(pipe, X_adv[rows])
        yield (b + 1) / (len(starts) + 1), None
    outcome = _Outcome(idx=idx, clean_pred=clean_pred, adv_pred=adv_pred, X_adv=X_adv, s_clean=s_clean, s_adv=s_adv)
    metrics = _metrics(pipe, outcome, threshold)
    yield (
        1.0,
        EvalResult(
            n_cells=len(idx), method=attack.method, eps=attack.eps, threshold=threshold, metrics=metrics, split=used
        ),
    )


def evaluate(pipe: Pipeline, *, progress: Callable[[float], None] | None = None, **kwargs) -> EvalResult:
    """Run :func:`evaluate_iter` to the end (calling ``progress(fraction)`` after each batch)."""
    result = None
    for frac, res in evaluate_iter(pipe, **kwargs):
        if progress is not None:
            progress(frac)
        result = res if res is not None else result
    return result


def stored_evaluation(pipe: Pipeline) -> pd.DataFrame | None:
    """The evaluation table recorded by the pipeline run (:func:`scadversarial.get.evaluation_table`), if any.

    Returns the overall rows of :func:`scadversarial.tl.evaluate`'s long table (``section``,
    ``metric``, ``group``, ``value``, ``n_cells``), without the per-class rows.
    """
    try:
        df = get.evaluation_table(pipe.adata)
    except (KeyError, ValueError, TypeError):
        return None
    if not {"section", "metric", "group", "value"} <= set(df.columns):
        return None
    df = df[~df["group"].astype(str).str.contains("|", regex=False)]
    df = df[~((df["section"] == "classifier") & (df["group"] != "overall"))]
    return df.reset_index(drop=True)
