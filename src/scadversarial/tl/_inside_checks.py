"""The count attacker who knows the detector's count checks: a threat of :func:`~scadversarial.tl.benchmark_detectors`.

The default detector flags a cell on the count lattice with too few genes at one count, or at two
counts among those at two or more (its count checks). An attacker who moves every expressed gene by
a UMI or two leaves such a profile; one who knows the thresholds keeps each cell just inside them.
:class:`InsideCountChecks` is that attacker, so a benchmark reports the worst case of the count
threat and not only the attacker who ignores the checks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .. import _keys
from ..models.classifier import CellClassifier
from ._shifts import _dense, library_counts
from ._space import scaled_matrix, target_sum

if TYPE_CHECKING:
    from anndata import AnnData

    from ..models.detector import AdversarialDetector

#: Attack, restore what the checks miss, attack again: on PBMC3k the deficits stop shrinking by the third round.
INSIDE_ROUNDS = 4
#: The temporary mask layer of the attack rounds (removed afterwards).
MASK_LAYER = "_sad_inside_checks_mask"
#: Appended to ``key_added`` by :meth:`InsideCountChecks.against`: its layers must not overwrite the standard run's.
AGAINST_SUFFIX = "_against"
#: Weights of an evaded detector's logit (``evade``): the lambda sweep of ``benchmarks/threats.py`` without
#: 0 (the plain attacker is the one without ``evade``).
EVADE_WEIGHTS = (0.1, 1.0, 10.0)


def check_attacked_classifier(threat: str, classifier) -> None:
    """Refuse a classifier a gradient threat (``against``) cannot attack; ``None`` (the cells' own) passes."""
    if classifier is not None and not isinstance(classifier, CellClassifier):
        msg = (
            f"{threat} attacks through gradients: classifier must be a CellClassifier "
            f"(`sad.get.model(adata, key)` of `sad.tl.train_classifier`), got {type(classifier).__name__}."
        )
        raise TypeError(msg)


@dataclass(frozen=True)
class InsideCountChecks:
    """Count attacker that keeps each cell just inside the detector's count checks (a threat of a benchmark).

    PGD on the integer counts of the genes a cell expresses (at most ``eps`` UMI each, zeros stay
    zero, :func:`~scadversarial.tl.attack` with ``space='counts', constraint='counts'``); then, for
    every cell the detector's count checks would flag, the moved genes it needs back at one (or two)
    counts are restored and kept out of the next round: those whose restoring costs the attack least
    (the loss gradient times the move), one more than the cell's deficit per round. After
    ``rounds`` rounds, or when no cell is flagged by the checks, the last attack's layer is the
    threat's. It spends the budget the checks leave it on every expressed gene, genes at one and two
    counts included.

    By default the attack is made against the cells' classifier (``sad.get.model(cells, 'classifier')``)
    and pushes each cell away from its ``.obs['sad_pred']``. :meth:`against` returns the same attacker
    made against another classifier (e.g. a hardened one): the attack and the restoring cost go
    through that classifier, and each cell is pushed away from that classifier's own clean call. The
    count checks read only the counts (through the detector's own transform), so the cells it keeps
    inside them stay inside whichever classifier is attacked.

    Parameters
    ----------
    detector
        The detector whose count checks the attacker knows
        (:class:`~scadversarial.models.AdversarialDetector`, e.g. ``sad.get.model(adata, 'detector')``).
    eps
        UMI per expressed gene.
    rounds
        Attack-and-restore rounds.
    key_added
        Attack record (and layer prefix) of the rounds.
    random_state
        Seed of the attacks.
    classifier
        The classifier attacked (:class:`~scadversarial.models.CellClassifier` on the cells' genes);
        ``None``: the cells' own (``sad.get.model(cells, 'classifier')``). Set it with :meth:`against`.
    evade
        A differentiable detector the attacker also evades (a torch module with ``score_logit(x_scaled)``
        and a ``threshold``, e.g. ``detector`` itself, whose learned layer the count checks leave):
        each round's PGD maximises the loss minus ``weight * score_logit`` for every weight of
        ``evade_weights`` and keeps, per cell, the flipped iterate the detector scores lowest
        (:func:`~scadversarial.tl.attack` with ``detector=``). ``None``: the count checks alone.
    evade_weights
        The weights of ``evade``'s logit.

    Examples
    --------
    >>> det = sad.get.model(adata, "detector")  # doctest: +SKIP
    >>> sad.tl.benchmark_detectors(
    ...     adata, attacks={"counts inside the checks": sad.tl.InsideCountChecks(det)}
    ... )  # doctest: +SKIP
    >>> hard = sad.get.model(adata, "classifier_hardened")  # doctest: +SKIP
    >>> sad.tl.InsideCountChecks(det).against(hard)(adata)  # doctest: +SKIP
    >>> sad.tl.InsideCountChecks(det, evade=det)(adata)  # the learned layer too  # doctest: +SKIP
    """

    detector: AdversarialDetector
    eps: float = 1.0
    rounds: int = INSIDE_ROUNDS
    key_added: str = "sad_inside_checks"
    random_state: int = 0
    classifier: CellClassifier | None = None
    evade: torch.nn.Module | None = None
    evade_weights: tuple[float, ...] = EVADE_WEIGHTS

    def __post_init__(self) -> None:
        if not (np.isfinite(self.eps) and self.eps > 0 and int(self.rounds) >= 1):
            msg = (
                f"InsideCountChecks needs eps > 0 (UMI) and rounds >= 1; got eps={self.eps!r}, rounds={self.rounds!r}."
            )
            raise ValueError(msg)
        if not callable(getattr(self.detector, "check_counts", None)):
            msg = "InsideCountChecks needs the default detector (an AdversarialDetector with count checks)."
            raise TypeError(msg)
        check_attacked_classifier("InsideCountChecks", self.classifier)
        weights = np.atleast_1d(np.asarray(self.evade_weights, dtype=float))
        if self.evade is not None and not (len(weights) and np.isfinite(weights).all() and (weights >= 0).all()):
            msg = f"InsideCountChecks needs evade_weights: one or more finite weights >= 0, got {self.evade_weights!r}."
            raise ValueError(msg)

    def against(self, classifier: CellClassifier) -> InsideCountChecks:
        """The same attacker made against ``classifier`` (its layers under ``key_added + '_against'``).

        Parameters
        ----------
        classifier
            The :class:`~scadversarial.models.CellClassifier` to attack (e.g. a hardened one,
            ``sad.get.model(adata, 'classifier_hardened')``), on the cells' genes. The attack and
            the restoring cost go through it, and each cell is pushed away from its clean call
            under it; the detector's count checks are unchanged.

        Returns
        -------
        A new :class:`InsideCountChecks`; this one is unchanged.
        """
        return replace(self, classifier=classifier, key_added=f"{self.key_added}{AGAINST_SUFFIX}")

    def __call__(self, cells: AnnData) -> dict[str, str]:
        """Attack ``cells`` (an in-memory AnnData with ``.layers['counts']``); returns ``{layer: 'counts'}``."""
        from .. import get
        from ._attack import attack

        if _keys.LAYER_COUNTS not in cells.layers:
            msg = (
                f"InsideCountChecks attacks counts: the cells need .layers[{_keys.LAYER_COUNTS!r}] from "
                "`sad.pp.preprocess` on raw counts."
            )
            raise KeyError(msg)
        clf = get.model(cells, _keys.STEP_CLASSIFIER) if self.classifier is None else self.classifier
        if [str(g) for g in clf.var_names] != [str(g) for g in cells.var_names]:
            msg = (
                "InsideCountChecks reads the cells' count matrix as the classifier's input: the cells' genes "
                "(var_names, in order) must be the classifier's; subset them with `cells[:, clf.var_names]`."
            )
            raise ValueError(msg)
        counts, other = (np.asarray(m, dtype=np.float32) for m in library_counts(cells))
        view = clf.for_space("counts", target_sum=target_sum(cells))
        y = self._labels(cells, clf)
        protect = np.zeros(counts.shape, dtype=bool)
        try:
            for _ in range(int(self.rounds)):
                cells.layers[MASK_LAYER] = (counts > 0) & ~protect
                attack(
                    cells,
                    "pgd",
                    eps=float(self.eps),
                    space="counts",
                    constraint="counts",
                    mask=MASK_LAYER,
                    random_state=self.random_state,
                    key_added=self.key_added,
                    **({} if self.classifier is None else {"classifier": self.classifier}),
                    **self._evasion(),
                )
                (layer,) = get.attack_record(cells, self.key_added)["layers"]
                deficit = self._deficits(cells, layer)
                if not deficit.any():
                    break
                attacked = _dense(cells.layers[layer]).astype(np.float32)
                cost = _restore_cost(view, attacked, counts, other, y)
                _protect(protect, deficit, counts, attacked, cost)
        finally:
            cells.layers.pop(MASK_LAYER, None)
        return {str(layer): "counts"}

    def _evasion(self) -> dict:
        """The detector-aware arguments of :func:`~scadversarial.tl.attack` (none without ``evade``)."""
        if self.evade is None:
            return {}
        return {"detector": self.evade, "detector_weight": tuple(float(w) for w in np.atleast_1d(self.evade_weights))}

    def _labels(self, cells: AnnData, clf: CellClassifier) -> torch.Tensor:
        """The calls the attack pushes each cell away from (class indices of ``clf.classes``)."""
        if self.classifier is None:  # the cells' recorded calls, as the standard attack reads them
            pred = pd.Categorical(cells.obs[_keys.OBS_PRED].astype(str), categories=clf.classes).codes
        else:  # another classifier: its own clean calls, as `attack(classifier=...)` takes them
            pred = clf.predict_arrays(scaled_matrix(cells, clf, _keys.LAYER_COUNTS))[0].argmax(1)
        return torch.as_tensor(np.asarray(pred, dtype=np.int64))

    def _deficits(self, cells: AnnData, layer: str) -> np.ndarray:
        """Per cell, the genes missing at one and at two counts for the detector's count checks (cells x 2).

        Read through the detector's own classifier copy, whichever classifier is attacked: the checks are rules on the input.
        """
        dev = next(self.detector.parameters()).device
        x = torch.as_tensor(scaled_matrix(cells, self.detector, layer), device=dev)
        with torch.no_grad():
            return self.detector.check_counts(x).cpu().numpy()[:, -2:]


def _restore_cost(view, attacked: np.ndarray, counts: np.ndarray, other: np.ndarray, y: torch.Tensor) -> np.ndarray:
    """Loss the attack gives up, to first order, by putting each gene back at its clean count."""
    dev = next(view.parameters()).device
    x = torch.tensor(attacked, device=dev, requires_grad=True)
    loss = F.cross_entropy(view(x, torch.as_tensor(other, device=dev)), y.to(dev), reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    return (grad.cpu().numpy() * (attacked - counts)).astype(np.float64)


def _protect(protect: np.ndarray, deficit: np.ndarray, counts: np.ndarray, attacked: np.ndarray, cost) -> None:
    """Mark, per flagged cell, the cheapest moved genes to restore at one (column 0) and two counts (column 1)."""
    for col, k in enumerate((1, 2)):
        for i in np.flatnonzero(deficit[:, col]):
            free = np.flatnonzero((counts[i] == k) & (attacked[i] != k) & ~protect[i])
            protect[i, free[np.argsort(cost[i, free], kind="stable")][: int(deficit[i, col]) + 1]] = True


__all__ = ["AGAINST_SUFFIX", "INSIDE_ROUNDS", "InsideCountChecks", "check_attacked_classifier"]
