"""White-box attacks: FGSM, PGD (L-inf, L2, targeted), Carlini-Wagner L2 and DeepFool, under any threat model.

Array level: inputs and outputs are numpy arrays, the model is any :class:`torch.nn.Module`
mapping ``cells x genes`` to logits, or a :class:`~scadversarial.models.classifier.SpaceClassifier`
that reaches the classifier from log-normalized values or counts through its own transform.
Every method passes its iterates through one :class:`~scadversarial.attacks.threat.Projection`
built from a :class:`ThreatArrays` (budget, mask, bounds, fold-change limit, integer counts).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._settings import progress
from ..models.classifier import SpaceClassifier
from .threat import Norm, Projection

Method = Literal["pgd", "fgsm", "pgd_rs", "pgd_l2", "cw", "deepfool"]
METHODS: tuple[str, ...] = ("pgd", "fgsm", "pgd_rs", "pgd_l2", "cw", "deepfool")
#: the norm each method's budget is measured in
METHOD_NORM: dict[str, Norm] = {
    "pgd": "linf", "fgsm": "linf", "pgd_rs": "linf", "pgd_l2": "l2", "cw": "l2", "deepfool": "l2",
}  # fmt: skip
#: methods that can take a detector term (a loss maximised step by step)
DETECTOR_METHODS: tuple[str, ...] = ("pgd", "fgsm", "pgd_rs", "pgd_l2")
#: iterations when ``steps`` is not given: PGD's seed setting; CW per binary-search step and DeepFool's
#: cap, both small enough to attack ~700 cells in seconds on a CPU (DeepFool stops once a cell flips)
DEFAULT_STEPS: dict[str, int] = {"pgd": 10, "fgsm": 1, "pgd_rs": 10, "pgd_l2": 10, "cw": 20, "deepfool": 30}
STEP_SCALE = 2.5  # step = 2.5 * eps / steps lets the steps cross the ball (Madry et al. 2018)
SCALED_ALPHA = 0.02  # the seed pipeline's PGD step in scaled units, kept as the default there
_TINY = 1e-12  # keeps divisions by a zero gradient norm finite
_DEEPFOOL_STEP = 1e-4  # DeepFool's push past the linearised boundary (Moosavi-Dezfooli et al. 2016)


@dataclass(frozen=True)
class IterConfig:
    """Iteration settings of the white-box methods.

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

    """

    alpha: float | None = None
    steps: int | None = None
    cw_c: float = 1.0
    cw_search_steps: int = 4
    cw_confidence: float = 0.0
    overshoot: float = 0.02

    def n_steps(self, method: str) -> int:
        """Iterations of ``method``."""
        return 1 if method == "fgsm" else int(self.steps if self.steps is not None else DEFAULT_STEPS[method])

    def step_size(self, method: str, eps: float, *, space: str, n_genes: int) -> float:
        """Step size (or learning rate) of ``method`` at budget ``eps``."""
        if method == "fgsm":
            return float(eps)
        if self.alpha is not None:
            return float(self.alpha)
        if space == "scaled" and method != "cw":
            return SCALED_ALPHA
        a = STEP_SCALE * float(eps) / self.n_steps(method)
        return a / np.sqrt(n_genes) if method == "cw" else a

    def check(self) -> None:
        """Raise a :class:`ValueError` for settings no method can use."""
        bad = {
            "alpha": self.alpha is not None and self.alpha <= 0, "steps": self.steps is not None and self.steps < 1,
            "cw_c": self.cw_c <= 0, "cw_search_steps": self.cw_search_steps < 1,
            "cw_confidence": self.cw_confidence < 0, "overshoot": self.overshoot < 0,
        }  # fmt: skip
        wrong = [k for k, v in bad.items() if v]
        if wrong:
            msg = f"Invalid iteration settings {wrong}: alpha, steps, cw_c and cw_search_steps must be positive, cw_confidence and overshoot >= 0."
            raise ValueError(msg)


@dataclass(frozen=True)
class ThreatArrays:
    """Array-level threat model of a matrix in one feature space (numpy; per-batch tensors on demand).

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
    space: str = "scaled"
    std: np.ndarray | None = field(default=None, repr=False)
    integer: bool = False

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
        return Projection(eps=float(eps), norm=self.norm, lower=lower, upper=upper, mask=mask, integer=self.integer)


# ----------------------------------------------------------------------------------------------
# goals and objectives
# ----------------------------------------------------------------------------------------------
def reached(logits: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Per cell: the attack's goal is met (targeted: predicted ``y``; untargeted: predicted another class)."""
    pred = logits.argmax(1)
    return pred == y if targeted else pred != y


def _call(model: nn.Module, x: torch.Tensor, other: torch.Tensor | None) -> torch.Tensor:
    return model(x) if other is None else model(x, other)


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


def _l2_normalize(g: torch.Tensor) -> torch.Tensor:
    return g / g.flatten(1).norm(dim=1).clamp_min(_TINY)[:, None]


# ----------------------------------------------------------------------------------------------
# PGD family (FGSM, PGD L-inf / L2, random start, targeted, detector-aware)
# ----------------------------------------------------------------------------------------------
def pgd_batch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    proj: Projection,
    *,
    alpha: float,
    steps: int,
    random_start: bool = False,
    targeted: bool = False,
    other: torch.Tensor | None = None,
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
    x = x.detach()
    delta = torch.zeros_like(x)
    if random_start:
        noise = torch.rand(x.shape, generator=generator, device="cpu").to(x.device) * 2 - 1
        delta = noise * proj.eps if proj.norm == "linf" else proj.ball(noise)
    delta = proj.masked(delta)
    sign = -1.0 if targeted else 1.0
    space = _as_space(model) if detector is not None else None
    best = best_logit = None
    if detector is not None:
        best, best_logit = x.clone(), torch.full((len(x),), float("inf"), device=x.device)
    for i in range(steps + (detector is not None)):
        x_adv = proj.clamp(x + delta)
        x_adv.requires_grad_(True)
        if detector is None:
            loss = sign * F.cross_entropy(_call(model, x_adv, other), y, reduction="sum")
        else:
            xs = space.to_scaled(x_adv, other)
            logits = space.classifier(xs)
            dl = detector.detector.score_logit(xs)
            with torch.no_grad():
                better = reached(logits, y, targeted) & (dl < best_logit)
                best = torch.where(better[:, None], x_adv.detach(), best)
                best_logit = torch.where(better, dl.detach(), best_logit)
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


# ----------------------------------------------------------------------------------------------
# Carlini-Wagner L2
# ----------------------------------------------------------------------------------------------
def _margin(logits: torch.Tensor, y: torch.Tensor, targeted: bool, kappa: float) -> torch.Tensor:
    """CW's loss ``f``: how far the cell is from the goal, floored at ``-kappa``."""
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    gap = others - z_y if targeted else z_y - others
    return gap.clamp_min(-kappa)


def cw_batch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    proj: Projection,
    *,
    lr: float,
    steps: int,
    c: float = 1.0,
    search_steps: int = 4,
    confidence: float = 0.0,
    targeted: bool = False,
    other: torch.Tensor | None = None,
) -> torch.Tensor:
    """Carlini-Wagner L2 on one batch: minimise ``||delta||^2 + c * f(x + delta)`` inside ``proj``.

    Adam on the change, projected onto the threat after every step (instead of CW's tanh change of
    variables, so the same projection serves every method); a per-cell binary search over ``c``
    (x10 until the goal is reached, then bisection). Per cell, the successful iterate of smallest
    L2 norm is kept; where no iterate succeeds, the last iterate of the largest ``c``.
    """
    x = x.detach()
    n = len(x)
    cs = torch.full((n,), float(c), device=x.device)
    lo = torch.zeros(n, device=x.device)
    hi = torch.full((n,), float("inf"), device=x.device)
    best = x.clone()
    best_norm = torch.full((n,), float("inf"), device=x.device)
    last = x.clone()
    for _ in range(search_steps):
        delta = torch.zeros_like(x, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=lr)
        ok = torch.zeros(n, dtype=torch.bool, device=x.device)
        for _ in range(steps):
            x_adv = x + delta
            logits = _call(model, x_adv, other)
            dist = (delta**2).sum(1)
            loss = (dist + cs * _margin(logits, y, targeted, confidence)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():
                hit = reached(logits, y, targeted)
                ok |= hit
                better = hit & (dist.sqrt() < best_norm)
                best = torch.where(better[:, None], x_adv, best)
                best_norm = torch.where(better, dist.sqrt(), best_norm)
            opt.step()
            with torch.no_grad():
                delta.copy_(proj(x, delta) - x)
        with torch.no_grad():
            x_adv = x + delta
            hit = reached(_call(model, x_adv, other), y, targeted)
            ok |= hit
            dn = delta.norm(dim=1)
            better = hit & (dn < best_norm)
            best = torch.where(better[:, None], x_adv, best)
            best_norm = torch.where(better, dn, best_norm)
            last = x_adv.detach()
            hi = torch.where(ok, torch.minimum(hi, cs), hi)
            lo = torch.where(ok, lo, torch.maximum(lo, cs))
            cs = torch.where(torch.isfinite(hi), (lo + hi) / 2, cs * 10)
    return torch.where(torch.isfinite(best_norm)[:, None], best, last).detach()


# ----------------------------------------------------------------------------------------------
# DeepFool
# ----------------------------------------------------------------------------------------------
def deepfool_batch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    proj: Projection,
    *,
    steps: int,
    overshoot: float = 0.02,
    targeted: bool = False,
    other: torch.Tensor | None = None,
) -> torch.Tensor:
    """DeepFool (L2) on one batch: step to the nearest linearised class boundary until the goal is met.

    Untargeted: from ``y`` toward the closest other class; targeted: toward ``y`` from the current
    prediction. The accumulated step, scaled by ``1 + overshoot``, goes through ``proj`` (masked
    gradients, the ball, the bounds); cells stop as soon as they reach the goal.
    """
    x = x.detach()
    r_tot = torch.zeros_like(x)
    x_adv = x.clone()
    with torch.no_grad():
        active = ~reached(_call(model, x, other), y, targeted)
    for _ in range(steps):
        if not active.any():
            break
        idx = active.nonzero().squeeze(1)  # only the cells still short of the goal take gradients
        ob = None if other is None else other[idx]
        xa = x_adv[idx].clone().requires_grad_(True)
        logits = _call(model, xa, ob)
        k = logits.shape[1]
        grads = torch.stack(
            [torch.autograd.grad(logits[:, j].sum(), xa, retain_graph=j < k - 1)[0] for j in range(k)], 1
        )
        if proj.mask is not None:
            grads = grads * (proj.mask[idx, None, :] if proj.mask.ndim == 2 else proj.mask)
        z, yi = logits.detach(), y[idx]
        rows = torch.arange(len(idx), device=x.device)
        if targeted:
            src = z.argmax(1)
            w = grads[rows, yi] - grads[rows, src]
            f = (z[rows, yi] - z[rows, src]).abs()
        else:
            w_all = grads - grads[rows, yi][:, None]
            f_all = (z - z[rows, yi][:, None]).abs()
            dist = f_all / w_all.flatten(2).norm(dim=2).clamp_min(_TINY)
            dist[rows, yi] = float("inf")
            j = dist.argmin(1)
            w, f = w_all[rows, j], f_all[rows, j]
        wn2 = (w**2).sum(1).clamp_min(_TINY)
        r_tot[idx] += ((f + _DEEPFOOL_STEP) / wn2)[:, None] * w
        x_adv = proj(x, (1 + overshoot) * r_tot).detach()
        with torch.no_grad():
            active[idx] = ~reached(_call(model, x_adv[idx], ob), yi, targeted)
    return x_adv


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


def run_attack(
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
    detector: nn.Module | None = None,
    detector_weight: float | Sequence[float] = 1.0,
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
    random_state: int = 0,
) -> AttackRun:
    """Attack ``X`` (cells x genes of one space) under a threat model, one result per budget.

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
        Iteration settings.
    targeted
        Whether ``y`` is the class to reach.
    other
        Per cell, counts outside the kept genes (count space, passed to a ``SpaceClassifier``).
    detector, detector_weight
        A module with ``score_logit(x_scaled)`` (and a ``threshold``) to evade, and the weight(s) of its
        logit in PGD's objective; with several weights, per cell, the goal-reaching iterate with the
        lowest detector logit over all weights is kept.
    batch_size, device, random_state
        Cells per batch, torch device, seed of the random start (a local generator).

    Returns
    -------
    An :class:`AttackRun`.

    """
    if method not in METHODS:
        msg = f"Unknown attack method {method!r}; choose one of {METHODS}."
        raise ValueError(msg)
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
    weights = [float(w) for w in np.atleast_1d(detector_weight)]
    if detector is not None and method not in DETECTOR_METHODS:
        msg = f"A detector-aware attack needs a step-wise method {DETECTOR_METHODS}, got {method!r}."
        raise ValueError(msg)
    dev = torch.device(device)
    mods = [model] + ([detector] if detector is not None else [])
    state = [(m, m.training, [p.requires_grad for p in m.parameters()]) for m in mods]
    for m in mods:
        m.eval().to(dev)
        for p in m.parameters():
            p.requires_grad_(False)
    gen = torch.Generator().manual_seed(int(random_state))
    steps = config.n_steps(method)
    run = AttackRun({e: np.empty(X.shape, dtype=np.float32) for e in eps_list})
    if threat.integer:
        run.continuous = {e: np.empty(X.shape, dtype=np.float32) for e in eps_list}
    if detector is not None:
        run.detector_logit = {e: np.empty(len(X), dtype=np.float32) for e in eps_list}
        run.detector_weight = {e: np.empty(len(X), dtype=np.float32) for e in eps_list}
    try:
        batches = range(0, X.shape[0], batch_size)
        bar = progress(total=len(batches) * len(eps_list), desc=f"{method} attack", unit="batch")
        for start in batches:
            sl = slice(start, start + batch_size)
            xb = torch.as_tensor(np.ascontiguousarray(X[sl], dtype=np.float32), device=dev)
            yb = torch.as_tensor(np.asarray(y[sl], dtype=np.int64), device=dev)
            ob = None if other is None else torch.as_tensor(np.asarray(other[sl], dtype=np.float32), device=dev)
            for e in eps_list:
                proj = threat.projection(xb, sl, e)
                alpha = config.step_size(method, e, space=threat.space, n_genes=X.shape[1])
                run_one = _runner(method, model, xb, yb, proj, alpha, steps, config, targeted, ob, gen)
                if detector is None:
                    adv, _ = run_one(None)
                else:
                    adv, dl, wsel = _detector_sweep(run_one, detector, weights, xb.shape[0])
                    run.detector_logit[e][sl] = dl.cpu().numpy()
                    run.detector_weight[e][sl] = wsel.cpu().numpy()
                if threat.integer:
                    run.continuous[e][sl] = adv.cpu().numpy()
                    adv = proj.round(xb, adv)
                run.adversarial[e][sl] = adv.cpu().numpy()
                bar.update(1)
        bar.close()
    finally:
        for m, was_training, grads_on in state:
            for p, g in zip(m.parameters(), grads_on, strict=True):
                p.requires_grad_(g)
            m.train(was_training)
    return run


def _runner(method, model, xb, yb, proj, alpha, steps, config, targeted, ob, gen) -> Callable:
    """A function ``detector_term -> (x_adv, detector_logit)`` running ``method`` on one batch."""

    def runner(term: DetectorTerm | None):
        return _dispatch(method, model, xb, yb, proj, alpha, steps, config, targeted, ob, gen, term)

    return runner


def _dispatch(method, model, xb, yb, proj, alpha, steps, config, targeted, ob, gen, term):
    if method in DETECTOR_METHODS:
        return pgd_batch(
            model, xb, yb, proj, alpha=alpha, steps=steps, random_start=method == "pgd_rs", targeted=targeted,
            other=ob, detector=term, generator=gen,
        )  # fmt: skip
    if method == "cw":
        adv = cw_batch(
            model, xb, yb, proj, lr=alpha, steps=steps, c=config.cw_c, search_steps=config.cw_search_steps,
            confidence=config.cw_confidence, targeted=targeted, other=ob,
        )  # fmt: skip
        return adv, None
    return deepfool_batch(
        model, xb, yb, proj, steps=steps, overshoot=config.overshoot, targeted=targeted, other=ob
    ), None


def _detector_sweep(run_one, detector, weights, n):
    """Run each detector weight; per cell keep the goal-reaching iterate with the lowest detector logit."""
    best = best_logit = wsel = None
    for w in weights:
        adv, dl = run_one(DetectorTerm(detector, w))
        if best is None:
            best, best_logit = adv, dl
            wsel = torch.full((n,), w, device=adv.device)
            continue
        better = dl < best_logit
        best = torch.where(better[:, None], adv, best)
        best_logit = torch.where(better, dl, best_logit)
        wsel = torch.where(better, torch.full_like(wsel, w), wsel)
    return best, best_logit, wsel


def attack_arrays(
    model: nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    *,
    method: str = "pgd",
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
    batch_size
        Cells per batch.
    device
        Torch device.
    random_state
        Seed of the random start (a local generator).

    Returns
    -------
    ``{eps: X_adv}`` with float32 arrays shaped like ``X``.

    """
    if method not in METHODS:
        msg = f"Unknown attack method {method!r}; choose one of {METHODS}."
        raise ValueError(msg)
    eps_list = [float(e) for e in np.atleast_1d(eps)]
    if any(e <= 0 for e in eps_list) or alpha <= 0 or steps < 1:
        msg = f"eps ({eps_list}), alpha ({alpha}) and steps ({steps}) must be positive."
        raise ValueError(msg)
    threat = ThreatArrays(norm=METHOD_NORM[method], lower=lower, upper=upper, mask=mask)
    run = run_attack(
        model, X, y, method=method, eps=eps_list, threat=threat, config=IterConfig(alpha=alpha, steps=steps),
        batch_size=batch_size, device=device, random_state=random_state,
    )  # fmt: skip
    return run.adversarial
