"""One gene per cell set to the clip: a threat of :func:`~scadversarial.tl.benchmark_detectors`.

The classifier's transform clips scaled values at ``clip`` (10), so an entry at the clip is the
largest value real preprocessing outputs and the rules cannot invert it to a count. The default
detector flags it only when the gene's log value at the clip lies above the rules' ceiling
(``detector.rule_fit.log_max``: one gene holding more of the cell's library than ``DetectorConfig.share_margin`` times the most
a gene holds in a training cell). :class:`GeneAtClip` is the attacker who
sets one gene per cell there; given the detector, it is the one who knows the ceiling.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .. import _keys
from .._docs import doc_params
from ..models.classifier import CellClassifier
from ._attack_record import full_width
from ._input import classifier_input
from ._inside_checks import AGAINST_SUFFIX, check_attacked_classifier

if TYPE_CHECKING:
    from typing import Self  # Python 3.11; the annotations are strings

    from anndata import AnnData

    from ..models.detector import AdversarialDetector

#: Genes (steepest loss gradient first) the attacker who knows the ceiling tries per cell: beyond the
#: first few the loss gained by a gene at the clip falls off (PBMC3k), and each costs one forward pass.
CLIP_CANDIDATES = 20


#: Docstring fragments of the one-gene attackers' parameters (:func:`~scadversarial._docs.doc_params`).
DOC_DETECTOR = """\
detector
    The default detector whose rules the attacker knows
    (:class:`~scadversarial.models.AdversarialDetector` with rules), or ``None``."""
DOC_LAYER_CLASSIFIER = """\
key_added
    The attacked layer's name.
classifier
    The classifier attacked (:class:`~scadversarial.models.CellClassifier`); ``None``: the
    cells' own (``sad.get.model(cells, 'classifier')``). Set it with :meth:`against`."""


@dataclass(frozen=True)
class OneGeneAttacker:
    """The options, their checks and :meth:`against` of the one-gene attackers.

    :class:`GeneAtClip` and :class:`~scadversarial.tl.GeneInCounts` differ only in how they move
    the gene and in their layer's name.
    """

    detector: AdversarialDetector | None = None
    candidates: int = CLIP_CANDIDATES
    key_added: str = "sad_one_gene"
    classifier: CellClassifier | None = None

    def __post_init__(self) -> None:
        check_one_gene_options(type(self).__name__, self.candidates, self.detector, self.classifier)

    def against(self, classifier: CellClassifier) -> Self:
        """The same attacker made against ``classifier`` (e.g. a hardened one), its layer ``key_added + '_against'``."""
        return replace(self, classifier=classifier, key_added=self.key_added + AGAINST_SUFFIX)


@doc_params(doc_detector=DOC_DETECTOR, doc_layer_classifier=DOC_LAYER_CLASSIFIER)
@dataclass(frozen=True)
class GeneAtClip(OneGeneAttacker):
    """One gene per cell set to the clip of the classifier's scaled input (a threat of a benchmark).

    Without ``detector``: the gene whose increase raises the loss of the cell's clean call fastest
    (largest input gradient). With ``detector`` (the attacker who knows its rules): among the genes
    whose log value at the clip is at or below the rules' ceiling (``detector.rule_fit.log_max``), so
    that no rule can object, the one of the ``candidates`` steepest that raises the loss most. The
    attacked layer is in the scaled space; its cells' other genes are unchanged.

    Parameters
    ----------
    {doc_detector}
    candidates
        Genes tried per cell by the attacker who knows the rules.
    {doc_layer_classifier}

    Examples
    --------
    >>> det = sad.get.model(adata, "detector")  # doctest: +SKIP
    >>> sad.tl.benchmark_detectors(
    ...     adata, attacks={{"gene at the clip": sad.tl.GeneAtClip(), "... knowing the rules": sad.tl.GeneAtClip(det)}}
    ... )  # doctest: +SKIP
    """

    key_added: str = "sad_gene_at_clip"

    def __call__(self, cells: AnnData) -> dict[str, str]:
        """Attack ``cells`` (preprocessed, in memory); returns ``{layer: 'scaled'}``."""
        clf = attacked_classifier(cells, self.classifier)
        if clf.transform.clip is None:
            msg = "GeneAtClip needs a classifier whose transform clips its input (sad.pp.preprocess's clip)."
            raise ValueError(msg)
        clip = float(clf.transform.clip)
        X = np.asarray(classifier_input(cells, clf), dtype=np.float32)
        with evaluating(clf):
            gene = self._genes(clf, X, clip)
        Z = X.copy()
        Z[np.arange(len(X)), gene] = clip
        # the classifier's genes in its order; the cells' other genes keep their X values
        cells.layers[self.key_added] = full_width(cells, Z, None, pd.Index(clf.var_names))
        return {self.key_added: "scaled"}

    def _genes(self, clf: CellClassifier, X: np.ndarray, clip: float) -> np.ndarray:
        """Per cell, the gene the attacker sets to the clip."""
        y, grad = clean_gradient(clf, X)
        if self.detector is None:
            return grad.argmax(1)
        t = clf.transform
        at_clip = (t.mean.double() + clip * t.std.double()).cpu().numpy()
        grad[:, at_clip > self.detector.rule_fit.log_max] = -np.inf  # a rule would flag these
        rows = np.arange(len(X))

        def at_the_clip(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            Z = X.copy()
            Z[rows, g] = clip
            return Z, np.isfinite(grad[rows, g])

        return highest_loss(clf, y, np.argsort(-grad, axis=1)[:, : int(self.candidates)], at_the_clip, grad.argmax(1))


def check_one_gene_options(threat: str, candidates: int, detector, classifier) -> None:
    """Refuse the options a one-gene attacker cannot use (``threat``: its class name, for the message)."""
    if int(candidates) < 1:
        msg = f"{threat} needs candidates >= 1 (genes tried per cell); got {candidates!r}."
        raise ValueError(msg)
    if detector is not None and not getattr(detector, "has_rules", False):
        msg = f"{threat}(detector=...) needs the default detector (an AdversarialDetector with rules=True)."
        raise TypeError(msg)
    check_attacked_classifier(threat, classifier)


def attacked_classifier(cells: AnnData, classifier: CellClassifier | None) -> CellClassifier:
    """``classifier``, or the cells' own (``sad.get.model(cells, 'classifier')``) when it is ``None``."""
    from .. import get

    return classifier if classifier is not None else get.model(cells, _keys.STEP_CLASSIFIER)


@contextmanager
def evaluating(clf: CellClassifier) -> Iterator[None]:
    """``clf`` in eval mode for the block, its mode restored afterwards."""
    was_training = clf.training
    clf.eval()
    try:
        yield
    finally:
        clf.train(was_training)


def clean_gradient(clf: CellClassifier, X: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """The classifier's calls on the scaled input ``X`` and the input gradient of their loss (cells x genes)."""
    dev = next(clf.parameters()).device
    with torch.no_grad():
        y = torch.as_tensor(clf.predict_arrays(X)[0].argmax(1), device=dev)
    x = torch.as_tensor(X, device=dev).requires_grad_(requires_grad=True)
    (grad,) = torch.autograd.grad(F.cross_entropy(clf(x), y, reduction="sum"), x)
    return y, grad.cpu().numpy()


def highest_loss(
    clf: CellClassifier,
    y: torch.Tensor,
    genes: np.ndarray,
    attacked: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    best: np.ndarray,
) -> np.ndarray:
    """Per cell, the candidate gene whose attacked input gives its clean call ``y`` the highest loss.

    ``genes`` (cells x candidates) are tried column by column; ``attacked(g)`` returns the scaled
    input with each cell's gene ``g`` attacked and which cells may take it. ``best``: the gene of a
    cell no candidate is allowed for.
    """
    dev = next(clf.parameters()).device
    best_loss = np.full(len(genes), -np.inf)
    for g in genes.T:
        Z, allowed = attacked(g)
        with torch.no_grad():
            loss = F.cross_entropy(clf(torch.as_tensor(Z, device=dev)), y, reduction="none").cpu().numpy()
        better = (loss > best_loss) & allowed
        best, best_loss = np.where(better, g, best), np.where(better, loss, best_loss)
    return best


__all__ = [
    "CLIP_CANDIDATES",
    "GeneAtClip",
    "attacked_classifier",
    "check_one_gene_options",
    "clean_gradient",
    "evaluating",
    "highest_loss",
]
