"""White-box attacks: FGSM, PGD (L-inf, L2, targeted), Carlini-Wagner L2 and DeepFool, under any threat model.

Array level: inputs and outputs are numpy arrays, the model is any :class:`torch.nn.Module`
mapping ``cells x genes`` to logits, or a :class:`~scadversarial.models.classifier.SpaceClassifier`
that reaches the classifier from log-normalized values or counts through its own transform.
Every method passes its iterates through one :class:`~scadversarial.attacks.threat.Projection`
built from a :class:`ThreatArrays` (budget, mask, bounds, fold-change limit, integer counts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._settings import progress
from .._validate import check_choice
from ..models.classifier import Space, SpaceClassifier
from ._batch import TINY, Batch, reached
from ._cw_deepfool import cw_batch, deepfool_batch
from .threat import Norm, Projection

Method = Literal["pgd", "fgsm", "pgd_rs", "pgd_l2", "cw", "deepfool"]
METHODS: tuple[str, ...] = get_args(Method)
#: the norm each method's budget is measured in
METHOD_NORM: dict[str, Norm] = {
    "pgd": "linf",
    "fgsm": "linf",
    "pgd_rs": "linf",
    "pgd_l2": "l2",
    "cw": "l2",
    "deepfool": "l2",
}
#: methods that can take a detector term (a loss maximised step by step)
DETECTOR_METHODS: tuple[str, ...] = ("pgd", "fgsm", "pgd_rs", "pgd_l2")
#: iterations when ``steps`` is not given: PGD's seed setting; CW per binary-search step and DeepFool's
#: cap, both small enough to attack ~700 cells in seconds on a CPU (DeepFool stops once a cell flips)
DEFAULT_STEPS: dict[str, int] = {"pgd": 10, "fgsm": 1, "pgd_rs": 10, "pgd_l2": 10, "cw": 20, "deepfool": 30}
STEP_SCALE = 2.5  # step = 2.5 * eps / steps lets the steps cross the ball (Madry et al. 2018)
#: the seed pipeline's PGD step in scaled units, kept as the L-inf default wherever its steps reach the budget
#: (beyond, ``STEP_SCALE * eps / steps``: a fixed step would cap every larger budget at ``steps * 0.02``)
SCALED_ALPHA = 0.02
#: the L-inf PGD methods ``SCALED_ALPHA`` applies to
LINF_STEPPED = ("pgd", "pgd_rs")


@dataclass(frozen=True)
class IterConfig:
    """How the white-box methods iterate, and on what hardware.

    Parameters
    ----------
    alpha
        PGD step size (L-inf: per gene; L2: of the whole step) or CW's Adam learning rate. ``None``:
        ``0.02`` for PGD in scaled space (the seed setting), else ``2.5 * eps / steps`` (CW: divided by
        the square root of the number of genes, as Adam moves every gene by about the rate).
    steps
        PGD steps, CW steps per binary-search step, DeepFool's maximum iterations (``None``: 10, 20, 30).
    cw_c
        CW's initial trade-off constant between distance and the margin loss.
    cw_search_steps
        CW's binary-search steps over the constant (per cell).
    cw_confidence
        CW's margin ``kappa``: how far past the decision boundary a cell is pushed.
    overshoot
        DeepFool's overshoot of the linearised boundary.
    batch_size
        Cells per batch.
    device
        Torch device.
    random_state
        Seed of the random start (a local generator).

    """

    alpha: float | None = None
    steps: int | None = None
    cw_c: float = 1.0
    cw_search_steps: int = 4
    cw_confidence: float = 0.0
    overshoot: float = 0.02
    batch_size: int = 1024
    device: str | torch.device = "cpu"
    random_state: int = 0

    def n_steps(self, method: str) -> int:
        """Iterations of ``method``."""
        return 1 if method == "fgsm" else int(self.steps if self.steps is not None else DEFAULT_STEPS[method])

    def step_size(self, method: str, eps: float, *, space: str, n_genes: int) -> float:
        """Step size (or learning rate) of ``method`` at budget ``eps``."""
        if method == "fgsm":
            return float(eps)
        if self.alpha is not None:
            return float(self.alpha)
        n = self.n_steps(method)
        if space == "scaled" and method in LINF_STEPPED and SCALED_ALPHA * n >= eps:
            return SCALED_ALPHA
        a = STEP_SCALE * float(eps) / n
        return a / np.sqrt(n_genes) if method == "cw" else a

    def check(self) -> None:
        """Raise a :class:`ValueError` for settings no method can use."""
        bad = {
            "alpha": self.alpha is not None and self.alpha <= 0,
            "steps": self.steps is not None and self.steps < 1,
            "cw_c": self.cw_c <= 0,
            "cw_search_steps": self.cw_search_steps < 1,
            "cw_confidence": self.cw_confidence < 0,
            "overshoot": self.overshoot < 0,
        }
        wrong = [k for k, v in bad.items() if v]
        if wrong:
            msg = f"Invalid iteration settings {wrong}: alpha, steps, cw_c and cw_search_steps must be positive, cw_confidence and overshoot >= 0."
            raise ValueError(msg)


@dataclass(frozen=True)
class ThreatArrays:
    """Array-level threat model of a matrix in one feature space (numpy; per-batch tensors on demand).

    :meth:`projection` turns it into the :class:`~scadversarial.attacks.threat.Projection` of one batch.

    Parameters
    ----------
    norm
        ``'linf'`` or ``'l2'`` (the budget's norm).
    lower, upper
        Bounds of the attacked values: scalars, per gene, or per cell and gene.
    mask
        Entries allowed to change: boolean per gene, or per cell and gene.
    max_log_fc
        Bound on each entry's fold change, ``|log1p(x') - log1p(x)|`` of the normalized expression:
        ``x0 +- max_log_fc`` in log space, ``x0 +- max_log_fc / std`` in scaled space (``std`` per gene)
        and ``[(x0 + 1) e^-m - 1, (x0 + 1) e^m - 1]`` for counts.
    space
        Feature space of the matrix (for the fold-change bound).
    std
        Per-gene scaling std (scaled space's fold-change bound).
    integer
        The values are integer counts: the result is rounded inside the threat model.

    """

    norm: Norm = "linf"
    lower: np.ndarray | float | None = None
    upper: np.ndarray | float | None = None
    mask: np.ndarray | None = None
    max_log_fc: float | None = None
    space: Space = "scaled"
    std: np.ndarray | None = field(default=None, repr=False)
    integer: bool = False

    def __post_init__(self) -> None:
        check_choice("norm", self.norm, Norm)
        check_choice("space", self.space, Space)

    def projection(self, x0: torch.Tensor, rows: slice, eps: float) -> Projection:
        """The :class:`Projection` of the cells ``rows`` (clean values ``x0``) at budget ``eps``."""
        dev = x0.device

        def t(a):
            if a is None:
                return None
            a = np.asarray(a)
            if a.ndim == 2:
                a = a[rows]
            out = torch.as_tensor(a.astype(np.float32, copy=False), device=dev)
            return out.expand(x0.shape[1]) if out.ndim == 0 else out

        lower, upper, mask = t(self.lower), t(self.upper), t(self.mask)
        if self.max_log_fc is not None:
            m = float(self.max_log_fc)
            if self.space == "counts":
                lo, hi = (x0 + 1) * float(np.exp(-m)) - 1, (x0 + 1) * float(np.exp(m)) - 1
            else:
                w = m if self.space == "log" or self.std is None else m / t(self.std)
                lo, hi = x0 - w, x0 + w
            lower = lo if lower is None else torch.maximum(lower, lo)
            upper = hi if upper is None else torch.minimum(upper, hi)
        # a box that leaves out a clean value would move it whatever the mask and the budget allow: such an
        # entry's bound is widened to its clean value (it may move back towards the box, never away from it)
        if lower is not None and bool((x0 < lower).any()):
            lower = torch.minimum(lower, x0)
        if upper is not None and bool((x0 > upper).any()):
            upper = torch.maximum(upper, x0)
        return Projection(eps=float(eps), norm=self.norm, lower=lower, upper=upper, mask=mask, integer=self.integer)


# ----------------------------------------------------------------------------------------------
# goals and objectives
# ----------------------------------------------------------------------------------------------
def _as_space(model: nn.Module) -> SpaceClassifier:
    return model if isinstance(model, SpaceClassifier) else SpaceClassifier(model, "scaled")


@dataclass(frozen=True)
class DetectorTerm:
    """A detector the attacker differentiates through: the objective subtracts ``weight * logit``.

    ``detector.score_logit(x_scaled)`` must return one differentiable logit per cell (the logit
    behind the detector's score); lower means "looks clean".
    """

    detector: nn.Module
    weight: float


@dataclass(frozen=True)
class Evasion:
    """A detector the attack must evade, and the weight(s) of its logit in PGD's objective.

    With several weights, per cell, the goal-reaching iterate with the lowest detector logit over
    all weights is kept.
    """

    detector: nn.Module
    weights: tuple[float, ...] = (1.0,)


def _l2_normalize(g: torch.Tensor) -> torch.Tensor:
    return g / g.flatten(1).norm(dim=1).clamp_min(TINY)[:, None]


# ----------------------------------------------------------------------------------------------
# PGD family (FGSM, PGD L-inf / L2, random start, targeted, detector-aware)
# ----------------------------------------------------------------------------------------------
def pgd_batch(
    model: nn.Module,
    batch: Batch,
    proj: Projection,
    *,
    alpha: float,
    steps: int,
    random_start: bool = False,
    detector: DetectorTerm | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """PGD on one batch: ascend the cross-entropy of ``y`` (targeted: descend it) inside ``proj``.

    With a ``detector`` the objective is ``CE - weight * detector_logit`` and, per cell, the iterate
    that reaches the goal with the lowest detector logit is kept (the last iterate where none does).
    Only input gradients are formed (``torch.autograd.grad``), never parameter gradients.

    Returns
    -------
    ``(x_adv, detector_logit)``: the attacked batch and, with a detector, the kept iterate's detector
    logit (``+inf`` where the goal was never reached), else ``None``.

    """
    x, y = batch.x.detach(), batch.y
    delta = torch.zeros_like(x)
    if random_start:
        noise = torch.rand(x.shape, generator=generator, device="cpu").to(x.device) * 2 - 1
        delta = noise * proj.eps if proj.norm == "linf" else proj.ball(noise)
    delta = proj.masked(delta)
    sign = -1.0 if batch.targeted else 1.0
    space = _as_space(model) if detector is not None else None
    best = best_logit = None
    if detector is not None:
        best, best_logit = x.clone(), torch.full((len(x),), float("inf"), device=x.device)
    for i in range(steps + (detector is not None)):
        x_adv = proj.clamp(x + delta)
        x_adv.requires_grad_(requires_grad=True)
        if detector is None:
            loss = sign * F.cross_entropy(batch.logits(model, x_adv), y, reduction="sum")
        else:
            xs = space.to_scaled(x_adv, batch.other)
            logits = space.classifier(xs)
            dl = detector.detector.score_logit(xs)
            cand, seen, seen_dl = _as_kept(space, proj, x, x_adv, batch, detector, logits, dl)
            with torch.no_grad():
                better = batch.reached(seen) & (seen_dl < best_logit)
                best = torch.where(better[:, None], cand, best)
                best_logit = torch.where(better, seen_dl, best_logit)
            if i == steps:  # the last iterate, scored only
                last = x_adv.detach()
                break
            loss = sign * F.cross_entropy(logits, y, reduction="sum") - detector.weight * dl.sum()
        (grad,) = torch.autograd.grad(loss, x_adv)
        step = grad.sign() if proj.norm == "linf" else _l2_normalize(grad)
        delta = proj.delta(x_adv.detach() - x + alpha * proj.masked(step))
    if detector is not None:
        done = torch.isfinite(best_logit)
        return torch.where(done[:, None], best, last), best_logit
    return proj.clamp(x + delta).detach(), None


def _as_kept(
    space: SpaceClassifier,
    proj: Projection,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    batch: Batch,
    detector: DetectorTerm,
    logits: torch.Tensor,
    dl: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(iterate, logits, detector logit)`` as the attack would return the iterate (all detached).

    Integer threats are rounded after the attack: an iterate chosen before rounding for reaching
    the goal at the lowest detector logit is often one that just reached it, and rounding undoes
    that. Its rounded version is scored instead (one more forward pass per step).
    """
    if not proj.integer:
        return x_adv.detach(), logits.detach(), dl.detach()
    xr = proj.round(x, x_adv.detach()).requires_grad_(requires_grad=True)
    with torch.enable_grad():  # detectors may differentiate the classifier inside score_logit
        xrs = space.to_scaled(xr, batch.other)
        seen, seen_dl = space.classifier(xrs), detector.detector.score_logit(xrs)
    return xr.detach(), seen.detach(), seen_dl.detach()


# ----------------------------------------------------------------------------------------------
# the batched driver
# ----------------------------------------------------------------------------------------------
@dataclass
class AttackRun:
    """The output of :func:`run_attack`, one entry per budget.

    Attributes
    ----------
    adversarial
        ``{eps: X_adv}`` (float32, rounded when the threat is integer).
    continuous
        ``{eps: X_adv before rounding}`` when the threat is integer, else empty.
    detector_logit
        ``{eps: logit}`` of the kept iterates when a detector was attacked (``+inf``: never reached
        the goal), else empty.
    detector_weight
        ``{eps: weight}`` per cell, the detector weight whose iterate was kept (detector attacks).

    """

    adversarial: dict[float, np.ndarray]
    continuous: dict[float, np.ndarray] = field(default_factory=dict)
    detector_logit: dict[float, np.ndarray] = field(default_factory=dict)
    detector_weight: dict[float, np.ndarray] = field(default_factory=dict)


def run_attack(  # noqa: PLR0913  first_row places a chunk's batches in the whole matrix; the rest are grouped already
    model: nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    *,
    method: Method = "pgd",
    eps: float | Sequence[float] = (0.05, 0.1, 0.15),
    threat: ThreatArrays | None = None,
    config: IterConfig | None = None,
    targeted: bool = False,
    other: np.ndarray | None = None,
    evasion: Evasion | None = None,
    first_row: int = 0,
) -> AttackRun:
    """Attack ``X`` (cells x genes of one space) under a threat model, one result per budget.

    Cells are attacked in batches of ``config.batch_size``; a random start is drawn from a generator
    seeded by ``config.random_state``, the batch's index in the whole matrix and the budget
    (:func:`batch_seed`), so the rows of a chunk attacked on their own (``first_row``: its first row, a
    multiple of the batch size) equal those rows of the whole matrix's attack bit for bit, and each
    budget's result does not depend on the other budgets of the call.

    Parameters
    ----------
    model
        A module mapping ``X``'s rows to logits: a classifier on scaled input, or a
        :class:`~scadversarial.models.classifier.SpaceClassifier` for log or count input.
    X, y
        The clean matrix and, per cell, the class to leave (untargeted) or to reach (``targeted``).
    method
        ``'pgd'``, ``'pgd_rs'``, ``'pgd_l2'``, ``'fgsm'``, ``'cw'`` or ``'deepfool'``.
    eps
        Budget(s) in ``threat.norm`` (which must be the method's norm, :data:`METHOD_NORM`).
    threat
        Mask, bounds, fold-change limit and integer rounding (default: none).
    config
        Iteration settings, batch size, device and the seed of the random start (:class:`IterConfig`).
    targeted
        Whether ``y`` is the class to reach.
    other
        Per cell, counts outside the kept genes (count space, passed to a ``SpaceClassifier``).
    evasion
        A detector with ``score_logit(x_scaled)`` (and a ``threshold``) to evade, and the weight(s) of
        its logit in PGD's objective (:class:`Evasion`); PGD methods only.
    first_row
        Position of ``X``'s first row in the whole matrix a chunk was cut from (a multiple of
        ``config.batch_size``): the random starts of its batches are those of the whole matrix.

    Returns
    -------
    An :class:`AttackRun`.

    """
    check_choice("method", method, Method)
    threat = threat or ThreatArrays(norm=METHOD_NORM[method])
    config = config or IterConfig()
    config.check()
    if threat.norm != METHOD_NORM[method]:
        msg = (
            f"Method {method!r} measures its budget in {METHOD_NORM[method]}, but the threat's norm is {threat.norm!r}."
        )
        raise ValueError(msg)
    eps_list = [float(e) for e in np.atleast_1d(eps)]
    if not eps_list or any(e <= 0 for e in eps_list):
        msg = f"eps must be positive, got {eps_list}."
        raise ValueError(msg)
    if evasion is not None and method not in DETECTOR_METHODS:
        msg = f"A detector-aware attack needs a step-wise method {DETECTOR_METHODS}, got {method!r}."
        raise ValueError(msg)
    dev = torch.device(config.device)
    bs = int(config.batch_size)
    if first_row < 0 or first_row % bs:
        msg = (
            f"first_row must be a non-negative multiple of the batch size {bs} (a chunk's first row), got {first_row}."
        )
        raise ValueError(msg)
    mods = [model] + ([evasion.detector] if evasion is not None else [])
    state = [(m, m.training, [p.requires_grad for p in m.parameters()]) for m in mods]
    for m in mods:
        m.eval().to(dev)
        for p in m.parameters():
            p.requires_grad_(requires_grad=False)
    steps = config.n_steps(method)
    run = AttackRun({e: np.empty(X.shape, dtype=np.float32) for e in eps_list})
    if threat.integer:
        run.continuous = {e: np.empty(X.shape, dtype=np.float32) for e in eps_list}
    if evasion is not None:
        run.detector_logit = {e: np.empty(len(X), dtype=np.float32) for e in eps_list}
        run.detector_weight = {e: np.empty(len(X), dtype=np.float32) for e in eps_list}
    try:
        batches = range(0, X.shape[0], bs)
        bar = progress(total=len(batches) * len(eps_list), desc=f"{method} attack", unit="batch")
        for start in batches:
            sl = slice(start, start + bs)
            batch = Batch(
                x=torch.as_tensor(np.ascontiguousarray(X[sl], dtype=np.float32), device=dev),
                y=torch.as_tensor(np.asarray(y[sl], dtype=np.int64), device=dev),
                targeted=targeted,
                other=None if other is None else torch.as_tensor(np.asarray(other[sl], dtype=np.float32), device=dev),
            )
            for e in eps_list:
                proj = threat.projection(batch.x, sl, e)
                alpha = config.step_size(method, e, space=threat.space, n_genes=X.shape[1])
                gen = torch.Generator().manual_seed(batch_seed(config.random_state, (first_row + sl.start) // bs, e))
                job = _Job(method, model, batch, proj, alpha=alpha, steps=steps, config=config, generator=gen)
                if evasion is None:
                    adv, _ = job(None)
                else:
                    adv, dl, wsel = _detector_sweep(job, evasion)
                    run.detector_logit[e][sl] = dl.cpu().numpy()
                    run.detector_weight[e][sl] = wsel.cpu().numpy()
                if threat.integer:
                    run.continuous[e][sl] = adv.cpu().numpy()
                    adv = proj.round(batch.x, adv)
                run.adversarial[e][sl] = adv.cpu().numpy()
                bar.update(1)
        bar.close()
    finally:
        for m, was_training, grads_on in state:
            for p, g in zip(m.parameters(), grads_on, strict=True):
                p.requires_grad_(g)
            m.train(was_training)
    return run


def batch_seed(random_state: int, batch: int, eps: float) -> int:
    """The seed of one batch's random start: ``random_state``, the batch's index in the whole matrix and the budget.

    One generator per batch and budget (not one for the whole run) makes a batch's random start
    independent of the batches and budgets attacked before it: a chunk, or one budget, attacked on
    its own gets the bits it gets inside the whole run.
    """
    eps_bits = int(np.float64(eps).view(np.uint64))
    entropy = [int(random_state) % 2**64, int(batch), eps_bits]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))


@dataclass(frozen=True)
class _Job:
    """One method on one batch at one budget: ``job(detector_term) -> (x_adv, detector_logit)``."""

    method: str
    model: nn.Module
    batch: Batch
    proj: Projection
    alpha: float
    steps: int
    config: IterConfig
    generator: torch.Generator

    def __call__(self, term: DetectorTerm | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.method in DETECTOR_METHODS:
            return pgd_batch(
                self.model,
                self.batch,
                self.proj,
                alpha=self.alpha,
                steps=self.steps,
                random_start=self.method == "pgd_rs",
                detector=term,
                generator=self.generator,
            )
        cfg = self.config
        if self.method == "cw":
            search = {"c": cfg.cw_c, "search_steps": cfg.cw_search_steps, "confidence": cfg.cw_confidence}
            return cw_batch(self.model, self.batch, self.proj, lr=self.alpha, steps=self.steps, **search), None
        return deepfool_batch(self.model, self.batch, self.proj, steps=self.steps, overshoot=cfg.overshoot), None


def _detector_sweep(job: _Job, evasion: Evasion) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run each detector weight; per cell keep the goal-reaching iterate with the lowest detector logit."""
    best = best_logit = wsel = None
    for w in evasion.weights:
        adv, dl = job(DetectorTerm(evasion.detector, w))
        if best is None:
            best, best_logit = adv, dl
            wsel = torch.full((len(adv),), w, device=adv.device)
            continue
        better = dl < best_logit
        best = torch.where(better[:, None], adv, best)
        best_logit = torch.where(better, dl, best_logit)
        wsel = torch.where(better, torch.full_like(wsel, w), wsel)
    return best, best_logit, wsel


def attack_arrays(  # noqa: PLR0913  the app's one-call scaled-space shortcut, flat keywords by design; run_attack groups them
    model: nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    *,
    method: Method = "pgd",
    eps: float | Sequence[float] = (0.05, 0.1, 0.15),
    alpha: float = 0.02,
    steps: int = 10,
    lower: np.ndarray | float | None = None,
    upper: np.ndarray | float | None = None,
    mask: np.ndarray | None = None,
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
    random_state: int = 0,
) -> dict[float, np.ndarray]:
    """Adversarial versions of a scaled ``X`` against labels ``y``, one per epsilon (untargeted).

    The scaled-space shortcut of :func:`run_attack`.

    Parameters
    ----------
    model
        Differentiable classifier returning logits.
    X, y
        Cells x genes (float) and the integer class each cell is pushed away from.
    method
        ``'pgd'`` (L-inf PGD), ``'pgd_rs'`` (with a uniform random start), ``'pgd_l2'`` (L2 PGD),
        ``'fgsm'`` (one step of size eps), ``'cw'`` (Carlini-Wagner L2) or ``'deepfool'``.
    eps, alpha, steps
        Budget(s), step size (CW: learning rate) and number of steps (``alpha`` and ``steps`` unused by FGSM).
    lower, upper
        Per-gene (or scalar) bounds of the perturbed values.
    mask
        Boolean per gene (or per cell and gene): only these entries may change.
    batch_size, device, random_state
        Cells per batch, torch device and the seed of the random start (a local generator).

    Returns
    -------
    ``{eps: X_adv}`` with float32 arrays shaped like ``X``.

    """
    check_choice("method", method, Method)
    eps_list = [float(e) for e in np.atleast_1d(eps)]
    if any(e <= 0 for e in eps_list) or alpha <= 0 or steps < 1:
        msg = f"eps ({eps_list}), alpha ({alpha}) and steps ({steps}) must be positive."
        raise ValueError(msg)
    threat = ThreatArrays(norm=METHOD_NORM[method], lower=lower, upper=upper, mask=mask)
    config = IterConfig(alpha=alpha, steps=steps, batch_size=batch_size, device=device, random_state=random_state)
    return run_attack(model, X, y, method=method, eps=eps_list, threat=threat, config=config).adversarial


__all__ = [
    "DETECTOR_METHODS",
    "METHODS",
    "METHOD_NORM",
    "AttackRun",
    "Batch",
    "DetectorTerm",
    "Evasion",
    "IterConfig",
    "Method",
    "ThreatArrays",
    "attack_arrays",
    "batch_seed",
    "cw_batch",
    "deepfool_batch",
    "pgd_batch",
    "reached",
    "run_attack",
]
