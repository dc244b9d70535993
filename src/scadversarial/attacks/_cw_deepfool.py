"""Carlini-Wagner L2 and DeepFool on one batch, through the threat's :class:`~scadversarial.attacks.threat.Projection`.

Array level (tensors, no AnnData); :func:`~scadversarial.attacks.whitebox.run_attack` batches, seeds and
sweeps budgets for them like for PGD.
"""

from __future__ import annotations

import torch
from torch import nn

from ._batch import TINY, Batch
from .threat import Projection

_DEEPFOOL_STEP = 1e-4  # DeepFool's push past the linearised boundary (Moosavi-Dezfooli et al. 2016)
_CW_GROWTH = 10  # CW's constant grows tenfold per search step until the goal is reached (Carlini & Wagner 2017)


# ----------------------------------------------------------------------------------------------
# Carlini-Wagner L2
# ----------------------------------------------------------------------------------------------
def _margin(logits: torch.Tensor, batch: Batch, kappa: float) -> torch.Tensor:
    """CW's loss ``f``: how far the cell is from the goal, floored at ``-kappa``."""
    y = batch.y
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    gap = others - z_y if batch.targeted else z_y - others
    return gap.clamp_min(-kappa)


def cw_batch(
    model: nn.Module,
    batch: Batch,
    proj: Projection,
    *,
    lr: float,
    steps: int,
    c: float = 1.0,
    search_steps: int = 4,
    confidence: float = 0.0,
) -> torch.Tensor:
    """Carlini-Wagner L2 on one batch: minimise ``||delta||^2 + c * f(x + delta)`` inside ``proj``.

    Adam on the change, projected onto the threat after every step (instead of CW's tanh change of
    variables, so the same projection serves every method); a per-cell binary search over ``c``
    (x10 until the goal is reached, then bisection). Per cell, the successful iterate of smallest
    L2 norm is kept; where no iterate succeeds, the last iterate of the largest ``c``.
    """
    x = batch.x.detach()
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
            logits = batch.logits(model, x_adv)
            dist = (delta**2).sum(1)
            loss = (dist + cs * _margin(logits, batch, confidence)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():
                hit = batch.reached(logits)
                ok |= hit
                better = hit & (dist.sqrt() < best_norm)
                best = torch.where(better[:, None], x_adv, best)
                best_norm = torch.where(better, dist.sqrt(), best_norm)
            opt.step()
            with torch.no_grad():
                delta.copy_(proj(x, delta) - x)
        with torch.no_grad():
            x_adv = x + delta
            hit = batch.reached(batch.logits(model, x_adv))
            ok |= hit
            dn = delta.norm(dim=1)
            better = hit & (dn < best_norm)
            best = torch.where(better[:, None], x_adv, best)
            best_norm = torch.where(better, dn, best_norm)
            last = x_adv.detach()
            hi = torch.where(ok, torch.minimum(hi, cs), hi)
            lo = torch.where(ok, lo, torch.maximum(lo, cs))
            cs = torch.where(torch.isfinite(hi), (lo + hi) / 2, cs * _CW_GROWTH)
    return torch.where(torch.isfinite(best_norm)[:, None], best, last).detach()


# ----------------------------------------------------------------------------------------------
# DeepFool
# ----------------------------------------------------------------------------------------------
def deepfool_batch(
    model: nn.Module, batch: Batch, proj: Projection, *, steps: int, overshoot: float = 0.02
) -> torch.Tensor:
    """DeepFool (L2) on one batch: step to the nearest linearised class boundary until the goal is met.

    Untargeted: from ``y`` toward the closest other class; targeted: toward ``y`` from the current
    prediction. The accumulated step, scaled by ``1 + overshoot``, goes through ``proj`` (masked
    gradients, the ball, the bounds); cells stop as soon as they reach the goal.
    """
    x = batch.x.detach()
    r_tot = torch.zeros_like(x)
    x_adv = x.clone()
    with torch.no_grad():
        active = ~batch.reached(batch.logits(model, x))
    for _ in range(steps):
        if not active.any():
            break
        idx = active.nonzero().squeeze(1)  # only the cells still short of the goal take gradients
        xa = x_adv[idx].clone().requires_grad_(requires_grad=True)
        logits = batch.logits(model, xa, idx)
        k = logits.shape[1]
        grads = torch.stack(
            [torch.autograd.grad(logits[:, j].sum(), xa, retain_graph=j < k - 1)[0] for j in range(k)], 1
        )
        if proj.mask is not None:
            grads = grads * (proj.mask[idx, None, :] if proj.mask.ndim == 2 else proj.mask)
        z, yi = logits.detach(), batch.y[idx]
        rows = torch.arange(len(idx), device=x.device)
        if batch.targeted:
            src = z.argmax(1)
            w = grads[rows, yi] - grads[rows, src]
            f = (z[rows, yi] - z[rows, src]).abs()
        else:
            w_all = grads - grads[rows, yi][:, None]
            f_all = (z - z[rows, yi][:, None]).abs()
            dist = f_all / w_all.flatten(2).norm(dim=2).clamp_min(TINY)
            dist[rows, yi] = float("inf")
            j = dist.argmin(1)
            w, f = w_all[rows, j], f_all[rows, j]
        wn2 = (w**2).sum(1).clamp_min(TINY)
        r_tot[idx] += ((f + _DEEPFOOL_STEP) / wn2)[:, None] * w
        x_adv = proj(x, (1 + overshoot) * r_tot).detach()
        with torch.no_grad():
            active[idx] = ~batch.reached(batch.logits(model, x_adv[idx], idx), idx)
    return x_adv


__all__ = ["cw_batch", "deepfool_batch"]
