"""One gene per cell raised in count space: a threat of :func:`~scadversarial.tl.benchmark_detectors`.

:class:`~scadversarial.tl.GeneAtClip` writes the clip into the scaled input, which no count may
produce when the gene's clip lies above the rules' ceiling. The attacker here adds UMI to one gene
of the cell's counts instead: the cell stays on its count lattice (integer counts, a larger
library, every other gene's count unchanged), so the rules' only objection left is a log value
above their ceiling (``detector.rule_fit.log_max``). On PBMC3k it is the strongest single-gene
attacker (``benchmarks/single_gene_dependence.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .. import _keys
from .._docs import doc_params
from .._validate import matrix_for_genes
from ..models.classifier import CellClassifier
from ._attack_record import full_width
from ._gene_at_clip import (
    DOC_DETECTOR,
    DOC_LAYER_CLASSIFIER,
    OneGeneAttacker,
    attacked_classifier,
    clean_gradient,
    evaluating,
    highest_loss,
)
from ._input import classifier_input
from ._space import counts_target_sum, other_counts, space_model, to_scaled

if TYPE_CHECKING:
    from anndata import AnnData

    from ..models.detector import AdversarialDetector  # noqa: F401 (the inherited fields' annotations, for the docs)


#: Where a gene's clip needs more than this share of the library (a clip above ``log1p(target_sum)`` needs
#: all of it), the gene is raised to this share of the new library instead (as single_gene_dependence.py).
CAP_SHARE = 0.99


@doc_params(doc_detector=DOC_DETECTOR, doc_layer_classifier=DOC_LAYER_CLASSIFIER)
@dataclass(frozen=True)
class GeneInCounts(OneGeneAttacker):
    """One gene per cell raised in its counts as far as it helps (a threat of a benchmark).

    For each cell, each of the ``candidates`` genes whose increase raises the loss of the cell's
    clean call fastest (input gradient) is raised to the smallest count whose scaled value reaches
    the classifier's clip (more is invisible to the classifier; where the clip needs more than 99 %
    of the new library, to that share) or, given ``detector`` (the attacker who knows its rules), to
    the largest count whose log value in the new library stays at or below the rules' ceiling
    (``detector.rule_fit.log_max``) if that is lower. Counts are never lowered. The gene whose raised cell
    has the highest loss is kept; a cell no candidate can raise is left as it is. The cell stays on
    its count lattice: integer counts, the library grows by the added UMI, its other genes' counts
    are unchanged. The attacked layer is the classifier's scaled input of the attacked counts.

    Parameters
    ----------
    {doc_detector}
    candidates
        Genes tried per cell (steepest loss gradient first).
    {doc_layer_classifier}

    Examples
    --------
    >>> det = sad.get.model(adata, "detector")  # doctest: +SKIP
    >>> sad.tl.benchmark_detectors(
    ...     adata,
    ...     attacks={{"one gene in counts": sad.tl.GeneInCounts(), "... knowing the rules": sad.tl.GeneInCounts(det)}},
    ... )  # doctest: +SKIP
    >>> clf = sad.get.model(adata, "classifier")  # doctest: +SKIP
    >>> counts = adata[:, clf.var_names].layers["counts"].toarray()  # doctest: +SKIP
    >>> added = sad.tl.GeneInCounts(det).attacked_counts(adata) - counts  # doctest: +SKIP
    """

    key_added: str = "sad_gene_in_counts"

    def __call__(self, cells: AnnData) -> dict[str, str]:
        """Attack ``cells`` (preprocessed from raw counts, in memory); returns ``{layer: 'scaled'}``."""
        clf = attacked_classifier(cells, self.classifier)
        # the classifier's genes in its order; the cells' other genes keep their X values
        cells.layers[self.key_added] = full_width(cells, self._attack(cells)[1], None, pd.Index(clf.var_names))
        return {self.key_added: "scaled"}

    def attacked_counts(self, cells: AnnData) -> np.ndarray:
        """The attacked counts (cells x the classifier's genes in its order, float64), written nowhere.

        Its scaled input is the layer :meth:`__call__` writes (cells left as they are: their clean input).
        """
        return self._attack(cells)[0]

    def _attack(self, cells: AnnData) -> tuple[np.ndarray, np.ndarray]:
        """The attacked counts and their scaled input (cells left as they are keep their clean input)."""
        clf = attacked_classifier(cells, self.classifier)
        ts = _target_sum(cells)
        counts = matrix_for_genes(cells, clf.var_names, _keys.LAYER_COUNTS).astype(np.float64)
        other = other_counts(cells, clf.var_names)
        library = counts.sum(1) + other
        at_clip, below_ceiling = self._factors(clf, ts)
        rows = np.arange(len(counts))
        view = space_model(cells, clf, "counts")
        X = np.asarray(classifier_input(cells, clf), dtype=np.float32)

        def raised(g: np.ndarray) -> np.ndarray:
            c = counts[rows, g]
            rest = library - c  # the cell's library without the gene
            k = np.ceil(at_clip[g] * rest)
            if np.isfinite(below_ceiling):  # (inf * a rest of 0 would be NaN)
                k = np.minimum(k, np.floor(below_ceiling * rest))
            C = counts.copy()
            C[rows, g] = np.maximum(k, c)  # the attacker only adds counts
            return C

        with evaluating(clf):
            y, grad = clean_gradient(clf, X)
            order = np.argsort(-grad, axis=1)[:, : int(self.candidates)]
            everyone = np.ones(len(X), dtype=bool)
            best = highest_loss(clf, y, order, lambda g: (to_scaled(view, raised(g), other), everyone), order[:, 0])
        out = raised(best)
        moved = (out != counts).any(1)
        Z = X.copy()
        Z[moved] = to_scaled(view, out[moved], other[moved])
        return out, Z

    def _factors(self, clf: CellClassifier, ts: float) -> tuple[np.ndarray, float]:
        """Per gene, the count at the clip, and the largest count at the rules' ceiling, per UMI of the rest of the library.

        A gene's count ``k`` in the library ``rest + k`` has the log value ``log1p(k ts / (rest + k))``,
        at most ``l`` while ``k <= e rest / (ts - e)``, ``e = expm1(l) < ts`` (any ``k`` where ``e >= ts``).
        The clip's ``e`` is capped at ``CAP_SHARE * ts`` (the share ``k / (rest + k)`` then).
        The ceiling's factor is the same for every gene; ``inf`` without a detector or with a ceiling at
        or above ``log1p(ts)``.
        """
        t = clf.transform
        mean, std = t.mean.double().cpu().numpy(), t.std.double().cpu().numpy()
        clip = np.inf if t.clip is None else float(t.clip)
        e = np.minimum(np.expm1(mean + clip * std), CAP_SHARE * ts)
        ceiling = np.inf
        if self.detector is not None:
            e_max = float(np.expm1(float(self.detector.rule_fit.log_max)))
            if e_max < ts:
                ceiling = e_max / (ts - e_max)
        return e / (ts - e), ceiling


def _target_sum(cells: AnnData) -> float:
    """The normalization's target sum of ``cells``; refuses cells without their counts or without one."""
    missing = [k for k in (_keys.LAYER_COUNTS, _keys.LAYER_LOGNORM) if k not in cells.layers]
    if missing:
        msg = (
            f"GeneInCounts raises counts: the cells need .layers{missing} (their counts and log-normalized "
            "values, from which each cell's library is recovered); run `sad.pp.preprocess` on raw counts."
        )
        raise KeyError(msg)
    ts = counts_target_sum(cells)
    if ts is None:
        msg = (
            "GeneInCounts needs the normalization's target sum (adata.uns['sad']['preprocess']['params']"
            "['target_sum']), which cells preprocessed from raw counts have: run `sad.pp.preprocess` on raw "
            "counts (not on log-normalized values)."
        )
        raise ValueError(msg)
    return ts


__all__ = ["CAP_SHARE", "GeneInCounts"]
