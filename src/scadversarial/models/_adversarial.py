"""Hardening the classifier in training: adversarial training (PGD-AT, TRADES), count-thinning and Gaussian augmentation.

Array level (tensors, no AnnData). :func:`hardened_loss` builds the mini-batch loss
:func:`~scadversarial.models.training.fit` minimises:

- **thinning augmentation**: a share of each batch's cells is binomially thinned to a random
  fraction of its depth (the kept genes' counts and the cell's count of all other genes, as
  :func:`~scadversarial.tl.benign_shift` does), then re-normalized by the thinned library, ``log1p``
  and scaled with the reference's per-gene mean and std by the classifier's own transform: the
  same values :func:`~scadversarial.pp.preprocess` gives real thinned data with ``reference=``;
- **Gaussian augmentation**: Gaussian noise added to the cells' log-normalized values, the noise
  of randomized smoothing (:func:`~scadversarial.tl.certify`): Cohen et al. (2019) train the base
  classifier of a smoothed one under the noise it is certified with;
- **adversarial training** in a threat model of the attacks: log-normalized values or counts of the
  genes a cell expresses (zeros stay zero, values stay ``>= 0``), an L-inf budget ``eps`` (log units
  or UMI per gene). The inner attack is PGD through the differentiable transform
  (:class:`~scadversarial.models.classifier.SpaceClassifier`), every iterate passed through the
  attacks' :class:`~scadversarial.attacks.threat.Projection`. In count space it is the continuous
  relaxation: the iterates are not rounded to integers (the attacks round only their final
  iterate; a relaxed attack is at least as strong as a rounded one within the same budget).
  ``'pgd'`` trains on the attacked cells only (Madry et al. 2018); ``'trades'`` on the clean loss
  plus ``beta`` times the KL divergence between the clean and attacked predictions, the attack
  maximising that divergence (Zhang et al. 2019).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._validate import check_choice
from ..attacks.threat import Projection
from ..attacks.whitebox import STEP_SCALE
from .classifier import SpaceClassifier, counts_to_lognorm

AdversarialMethod = Literal["pgd", "trades"]
HardeningSpace = Literal["log", "counts"]
#: TRADES' weight of the robustness term: Zhang et al. (2019)'s setting, 1/lambda = 6
TRADES_BETA = 6.0
#: the inner attack's PGD steps: 5 steps at 2.5 eps / 5 cross the ball twice, at ~6x the cost of clean training
INNER_STEPS = 5
#: thinning draws a depth fraction in this range: a quarter of the reference's depth up to its full depth
THIN_FRACTION = (0.25, 1.0)
#: share of the cells of each batch that are thinned (the rest keep their depth)
THIN_PROBABILITY = 0.5
#: Gaussian augmentation's noise level, log units: certify's default sigma (train under the noise certified with)
NOISE_SIGMA = 0.25
#: share of each batch's cells given noise: every cell, as Cohen et al. (2019) train
NOISE_PROBABILITY = 1.0


@dataclass(frozen=True)
class AdversarialTraining:
    """Adversarial training of the classifier (see the module's description).

    Parameters
    ----------
    method
        ``'pgd'``: PGD adversarial training, the loss on attacked cells only (Madry et al. 2018);
        ``'trades'``: the clean loss plus ``beta`` times the KL divergence between clean and attacked
        predictions (Zhang et al. 2019).
    space
        ``'counts'``: the counts of the kept genes, moved by at most ``eps`` UMI per expressed gene
        (continuous relaxation in training); ``'log'``: log-normalized values of the expressed genes,
        moved by at most ``eps`` log units. Zeros stay zero and values stay ``>= 0`` in both.
    eps
        L-inf budget of the inner attack, in the space's units.
    steps
        PGD steps of the inner attack.
    alpha
        PGD step size; ``None``: ``2.5 * eps / steps``.
    beta
        TRADES' weight of the robustness term (unused by ``'pgd'``).

    Examples
    --------
    >>> from scadversarial.models._adversarial import AdversarialTraining
    >>> AdversarialTraining("trades", space="counts", eps=2.0)
    AdversarialTraining(method='trades', space='counts', eps=2.0, steps=5, alpha=None, beta=6.0)

    """

    method: AdversarialMethod = "pgd"
    space: HardeningSpace = "counts"
    eps: float = 2.0
    steps: int = INNER_STEPS
    alpha: float | None = None
    beta: float = TRADES_BETA

    def __post_init__(self) -> None:
        check_choice("method", self.method, AdversarialMethod)
        check_choice("space", self.space, HardeningSpace)
        if not self.eps > 0 or int(self.steps) < 1 or self.beta < 0 or (self.alpha is not None and not self.alpha > 0):
            msg = f"AdversarialTraining needs eps > 0, steps >= 1, alpha > 0 (or None) and beta >= 0; got {self}."
            raise ValueError(msg)

    @property
    def step_size(self) -> float:
        """The PGD step of the inner attack."""
        return float(self.alpha) if self.alpha is not None else STEP_SCALE * float(self.eps) / int(self.steps)


@dataclass(frozen=True)
class ThinningAugmentation:
    """Binomial thinning of training cells' counts, so predictions survive sequencing depth.

    Parameters
    ----------
    fraction
        ``(low, high)``: each thinned cell keeps a depth fraction drawn uniformly from this range.
    probability
        Share of the cells of each mini-batch that are thinned.

    Examples
    --------
    >>> from scadversarial.models._adversarial import ThinningAugmentation
    >>> ThinningAugmentation(fraction=(0.5, 1.0))
    ThinningAugmentation(fraction=(0.5, 1.0), probability=0.5)

    """

    fraction: tuple[float, float] = THIN_FRACTION
    probability: float = THIN_PROBABILITY

    def __post_init__(self) -> None:
        lo, hi = (float(f) for f in self.fraction)
        if not (0 < lo <= hi <= 1 and 0 <= self.probability <= 1):
            msg = (
                f"ThinningAugmentation needs 0 < fraction[0] <= fraction[1] <= 1 and probability in [0, 1]; got {self}."
            )
            raise ValueError(msg)


@dataclass(frozen=True)
class GaussianAugmentation:
    """Gaussian noise on training cells' log-normalized values, so randomized smoothing certifies more cells.

    The base classifier of :func:`~scadversarial.tl.certify` votes on noisy copies
    ``x + N(0, sigma^2 I)`` of a cell's log-expression; trained on such copies, it votes for the
    right class more often under that noise, which widens the certified radii (Cohen et al. 2019).

    Parameters
    ----------
    sigma
        Noise standard deviation, log units: use the ``sigma`` you certify with.
    probability
        Share of the cells of each mini-batch that get noise.

    Examples
    --------
    >>> from scadversarial.models._adversarial import GaussianAugmentation
    >>> GaussianAugmentation(sigma=0.5)
    GaussianAugmentation(sigma=0.5, probability=1.0)

    """

    sigma: float = NOISE_SIGMA
    probability: float = NOISE_PROBABILITY

    def __post_init__(self) -> None:
        if not (np.isfinite(self.sigma) and self.sigma > 0 and 0 <= self.probability <= 1):
            msg = f"GaussianAugmentation needs a positive, finite sigma (log units) and probability in [0, 1]; got {self}."
            raise ValueError(msg)


#: What ``augment=`` of :func:`~scadversarial.tl.train_classifier` takes.
Augmentation = ThinningAugmentation | GaussianAugmentation


@dataclass(frozen=True, eq=False)
class TrainingInputs:
    """The training cells in count and log space, rows as the scaled training matrix.

    Parameters
    ----------
    counts
        Counts of the kept genes (cells x genes); needed for thinning and count-space training.
    other
        Each cell's count of all other genes (the rest of its library).
    lognorm
        Log-normalized values of the kept genes; used by log-space training without thinning.
    target_sum
        Library size after normalization (the preprocessing's ``target_sum``).

    """

    counts: np.ndarray | None = None
    other: np.ndarray | None = None
    lognorm: np.ndarray | None = None
    target_sum: float | None = None


def thin(counts: torch.Tensor, other: torch.Tensor, augment: ThinningAugmentation) -> tuple[torch.Tensor, torch.Tensor]:
    """Thin a share of the cells to a random depth fraction (binomial draws from torch's global generator).

    A sum of binomials with one probability is binomial, so thinning the other genes' total is exact.
    """
    n = counts.shape[0]
    lo, hi = (float(f) for f in augment.fraction)
    frac = lo + (hi - lo) * torch.rand(n, 1, device=counts.device)
    chosen = torch.rand(n, 1, device=counts.device) < augment.probability
    frac = torch.where(chosen, frac, torch.ones_like(frac))
    new_counts = torch.binomial(counts, frac.expand_as(counts).contiguous())
    return new_counts, torch.binomial(other, frac[:, 0].contiguous())


def add_noise(x: torch.Tensor, augment: GaussianAugmentation) -> torch.Tensor:
    """Add ``N(0, sigma^2)`` noise to every value of a share of the cells (draws from torch's global generator)."""
    chosen = torch.rand(x.shape[0], 1, device=x.device) < augment.probability
    return x + torch.where(chosen, float(augment.sigma) * torch.randn_like(x), torch.zeros_like(x))


def inner_attack(
    view: SpaceClassifier,
    x0: torch.Tensor,
    other: torch.Tensor | None,
    target: torch.Tensor,
    adversarial: AdversarialTraining,
) -> torch.Tensor:
    """PGD from a random start inside the expressed-gene threat of ``x0``, the classifier in eval mode.

    ``target``: class codes (ascend their cross-entropy) or, for TRADES, clean probabilities
    (ascend the KL divergence from them). Only input gradients are formed.
    """
    proj = Projection(
        eps=float(adversarial.eps), lower=torch.zeros(x0.shape[1], device=x0.device), mask=(x0 > 0).to(x0.dtype)
    )
    kl = target.is_floating_point()
    was_training = view.training
    view.eval()  # no dropout in the attack: it targets the model as it will be used
    try:
        delta = proj.masked((torch.rand_like(x0) * 2 - 1) * proj.eps)
        for _ in range(int(adversarial.steps)):
            x = proj.clamp(x0 + delta).requires_grad_()
            logits = view(x, other)
            if kl:
                obj = F.kl_div(F.log_softmax(logits, 1), target, reduction="sum")
            else:
                obj = F.cross_entropy(logits, target, reduction="sum")
            (grad,) = torch.autograd.grad(obj, x)
            delta = proj.delta(x.detach() - x0 + adversarial.step_size * proj.masked(grad.sign()))
        return proj(x0, delta).detach()
    finally:
        view.train(was_training)


def _to_tensor(a: np.ndarray | None, device: torch.device) -> torch.Tensor | None:
    return None if a is None else torch.as_tensor(np.asarray(a, dtype=np.float32), device=device)


def hardened_loss(
    y: torch.Tensor,
    inputs: TrainingInputs | None,
    *,
    adversarial: AdversarialTraining | None,
    augment: Augmentation | None,
    label_smoothing: float = 0.0,
    device: torch.device | str = "cpu",
):
    """The mini-batch loss ``(net, batch indices) -> loss`` of adversarial training and/or thinning.

    Parameters
    ----------
    y
        Class codes of the training cells (on ``device``).
    inputs
        The training cells' counts (thinning, count space) or log values (log space).
    adversarial, augment
        What to train against (either may be ``None``, not both). Gaussian augmentation works in
        log space, without adversarial training.
    label_smoothing
        Label smoothing of the cross-entropy terms.
    device
        Where the inputs live.

    """
    if adversarial is None and augment is None:
        msg = "hardened_loss needs `adversarial` or `augment`."
        raise ValueError(msg)
    inputs = inputs or TrainingInputs()
    thinning = augment if isinstance(augment, ThinningAugmentation) else None
    noise = augment if isinstance(augment, GaussianAugmentation) else None
    if noise is not None and adversarial is not None:
        # the attacks' threat models keep unexpressed genes at zero; a noisy cell has no such genes
        msg = "Gaussian augmentation trains alone (Cohen et al. 2019): pass `augment=` or `adversarial=`, not both."
        raise ValueError(msg)
    space = adversarial.space if adversarial is not None else ("log" if noise is not None else "counts")
    needs_counts = thinning is not None or space == "counts"
    if needs_counts and (inputs.counts is None or inputs.other is None or not inputs.target_sum):
        msg = "Thinning and count-space training need the training cells' counts, other-gene totals and target sum."
        raise ValueError(msg)
    if not needs_counts and inputs.lognorm is None:
        msg = "Log-space adversarial training needs the training cells' log-normalized values."
        raise ValueError(msg)
    dev = torch.device(device)
    C, O, L = _to_tensor(inputs.counts, dev), _to_tensor(inputs.other, dev), _to_tensor(inputs.lognorm, dev)
    ts = float(inputs.target_sum) if inputs.target_sum else None
    ce = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def batch_loss(net: nn.Module, bi: torch.Tensor) -> torch.Tensor:
        yb = y[bi]
        other = None
        if needs_counts:
            c, o = C[bi], O[bi]
            if thinning is not None:
                c, o = thin(c, o, thinning)
            x0, other = (c, o) if space == "counts" else (counts_to_lognorm(c, o, ts), None)
        else:
            x0 = L[bi]
        if noise is not None:
            x0 = add_noise(x0, noise)
        view = SpaceClassifier(net, space, target_sum=ts)
        if adversarial is None:
            return ce(view(x0, other), yb)
        if adversarial.method == "pgd":
            return ce(view(inner_attack(view, x0, other, yb, adversarial), other), yb)
        with torch.no_grad():
            was_training = view.training
            view.eval()
            p_clean = F.softmax(view(x0, other), 1)
            view.train(was_training)
        x_adv = inner_attack(view, x0, other, p_clean, adversarial)
        logits = view(x0, other)
        robust = F.kl_div(F.log_softmax(view(x_adv, other), 1), F.softmax(logits, 1), reduction="batchmean")
        return ce(logits, yb) + float(adversarial.beta) * robust

    return batch_loss


__all__ = [
    "AdversarialMethod",
    "AdversarialTraining",
    "Augmentation",
    "GaussianAugmentation",
    "HardeningSpace",
    "ThinningAugmentation",
    "TrainingInputs",
    "add_noise",
    "hardened_loss",
    "inner_attack",
    "thin",
]
