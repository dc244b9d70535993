"""Rows of the defences in :func:`~scadversarial.tl.benchmark_detectors`: the certified radius and a hardened classifier.

Both are properties of a classifier, not of a detector: their rows have ``detector='none'`` and fill
the ``accuracy`` column (and ``flip_rate`` / ``pred_changed``, ``flagged`` for abstentions), leaving
the detector columns empty.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _keys
from .._settings import logger
from ..models.classifier import CellClassifier
from ._benchmark_threats import ThreatSpec, _Inputs, _run_threat
from ._certify import CERTIFIED_RADII, CertifyOptions, certified_accuracy, certify
from ._input import classifier_input
from ._models import get_model

#: ``detector`` of the rows that measure a classifier (no detector involved).
NO_DETECTOR = "none"
#: Noise levels (log units) of the certified rows: Cohen et al.'s 0.25 and 0.5.
CERTIFIED_SIGMAS = (0.25, 0.5)
#: Estimation draws per cell of the certified rows (Cohen et al. use 100,000; 1,000 reaches radii up to 2.4 sigma).
CERTIFIED_SAMPLES = 1000


@dataclass(frozen=True)
class CertifiedRows:
    """The randomized-smoothing rows of the benchmark (:func:`~scadversarial.tl.certify` on the benchmarked cells).

    Attributes
    ----------
    sigmas
        Noise levels (log units); one certification each.
    radii
        L2 radii (log units): one row per noise level and radius, its ``accuracy`` the certified accuracy
        (correct and certified at least that radius).
    n_samples, alpha
        Estimation draws per cell and the chance a certificate is wrong (see :func:`~scadversarial.tl.certify`).

    """

    sigmas: tuple[float, ...] = CERTIFIED_SIGMAS
    radii: tuple[float, ...] = CERTIFIED_RADII
    n_samples: int = CERTIFIED_SAMPLES
    alpha: float = 0.001


def true_codes(cells: AnnData, clf: CellClassifier, labels_key: str | None) -> np.ndarray | None:
    """Class index of each cell's true label in ``clf.classes`` (-1 for a label it lacks); ``None`` without labels."""
    if labels_key is None or labels_key not in cells.obs:
        return None
    return pd.Index([str(c) for c in clf.classes]).get_indexer(cells.obs[labels_key].astype(str))


def accuracy(pred: np.ndarray | list[np.ndarray], truth: np.ndarray | None) -> float:
    """Fraction of cells called right (under every one of several predictions: a sweep's worst case)."""
    if truth is None or len(truth) == 0:
        return float("nan")
    preds = pred if isinstance(pred, list) else [pred]
    return float(np.all([p == truth for p in preds], axis=0).mean())


def certified_rows(
    cells: AnnData,
    clf: CellClassifier,
    *,
    clean_pred: np.ndarray,
    truth: np.ndarray | None,
    spec: CertifiedRows,
    options: CertifyOptions,
) -> list[dict]:
    """Certify the benchmarked cells at each noise level; one row per noise level and radius.

    ``accuracy``: certified accuracy at the radius; ``flagged``: abstentions (the smoothed classifier's
    reject option); ``pred_changed``: cells whose smoothed call (abstentions included) differs from
    the classifier's clean call.
    """
    rows = []
    for sigma in spec.sigmas:
        key = f"sad_bench_certified_{sigma:g}"
        certify(
            cells,
            sigma=sigma,
            n_samples=spec.n_samples,
            alpha=spec.alpha,
            classifier=clf,
            options=options,
            key_added=key,
        )
        codes = cells.obs[_keys.certified_pred_key(key)].cat.codes.to_numpy()  # the last category is 'abstain'
        radius = cells.obs[_keys.certified_radius_key(key)].to_numpy(np.float64)
        abstain = codes == len(clf.classes)
        correct = np.zeros(len(codes), bool) if truth is None else codes == truth
        acc = certified_accuracy(correct, radius, spec.radii) if truth is not None else np.full(len(spec.radii), np.nan)
        for r, a in zip(spec.radii, acc, strict=True):
            rows.append(
                {
                    "threat": f"certified σ={sigma:g} r={r:g}",
                    "kind": "certified",
                    "detector": NO_DETECTOR,
                    "space": "log",
                    "constraint": "l2",
                    "n_cells": len(codes),
                    "flagged": float(abstain.mean()),
                    "pred_changed": float((codes != clean_pred).mean()),
                    "accuracy": float(a),
                }
            )
    return rows


class HardenedRows:
    """The rows of a hardened classifier: its clean accuracy, and flip rate and accuracy under each threat.

    Every threat is attacked anew against the hardened classifier (white box: the attacker knows it),
    on the same cells and with the same specs; benign shifts reuse the shifted cells of the standard
    rows. A callable threat that can be aimed at another classifier (an ``against(classifier)`` method
    returning the threat made against it, as :meth:`~scadversarial.tl.InsideCountChecks.against`) is
    rerun against the hardened classifier; other callable threats and detector-aware specs are left
    out (they are tied to the standard classifier and its detector).

    The rows measure the hardened classifier alone (``detector='none'``). :class:`~scadversarial.tl.InsideCountChecks`
    keeps the cells inside the default detector's count checks, rules on the input whichever
    classifier reads it; its ``flip_rate`` is an upper bound on its evasion (flipped and not flagged)
    of the hardened classifier behind the default detector's rules and count checks, tight only where
    the attack keeps the cells inside the checks (the learned detector, trained on the standard
    classifier, is not counted).
    """

    def __init__(self, adata: AnnData, key: str) -> None:
        clf = get_model(adata, key)
        if not isinstance(clf, CellClassifier):
            msg = f"options.hardened_key={key!r} holds a {type(clf).__name__}, not a CellClassifier."
            raise TypeError(msg)
        self.clf, self.rows = clf, []

    def _pred(self, X: np.ndarray) -> np.ndarray:
        return self.clf.predict_arrays(X)[0].argmax(1)

    def _add(self, threat: str, meta: tuple[str, str], n_cells: int, **values) -> None:
        self.rows.append(
            {
                "threat": threat,
                "kind": "hardened",
                "detector": NO_DETECTOR,
                "space": meta[0],
                "constraint": meta[1],
                "n_cells": n_cells,
                **values,
            }
        )

    def start(self, cells: AnnData, labels_key: str | None) -> None:
        """The clean row; call first, on the benchmarked cells."""
        self.inputs, self.truth = _Inputs(cells, self.clf), true_codes(cells, self.clf, labels_key)
        self.clean = self._pred(self.inputs.scaled(None, "scaled"))
        self._add(
            "clean", ("scaled", "none"), len(self.clean), pred_changed=0.0, accuracy=accuracy(self.clean, self.truth)
        )

    def attack(self, cells: AnnData, name: str, spec: ThreatSpec, index: int, *, observed: bool) -> None:
        """Rows of one threat (one per layer, a sweep pooled worst case per cell), attacked against the hardened classifier.

        A callable threat is rerun only through its ``against(classifier)`` (see the class); others are skipped
        with a log line.
        """
        against = getattr(spec, "against", None) if callable(spec) else None
        if callable(against):
            spec = against(self.clf)
        elif callable(spec) or any("detector" in s for s in ([spec] if isinstance(spec, Mapping) else spec)):
            logger.info("benchmark: %s is not rerun against the hardened classifier", name)
            return
        for row, layers, (space, constraint) in _run_threat(cells, name, spec, index, self.clf):
            preds = [self._pred(self.inputs.scaled(lay, sp)) for lay, sp in layers]
            flipped = np.any([p != self.clean for p in preds], axis=0)
            meta = (space, "observed" if observed else constraint)
            self._add(row, meta, len(flipped), flip_rate=float(flipped.mean()), accuracy=accuracy(preds, self.truth))

    def shift(self, name: str, shifted: AnnData) -> None:
        """The row of one benign shift (``shifted``: the benchmarked cells after it)."""
        pred = self._pred(classifier_input(shifted, self.clf))
        changed = float((pred != self.clean).mean())
        self._add(name, ("counts", "benign"), len(pred), pred_changed=changed, accuracy=accuracy(pred, self.truth))


__all__ = ["CertifiedRows", "HardenedRows", "accuracy", "certified_rows", "true_codes"]
