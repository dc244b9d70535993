"""White-box gradient attacks on a differentiable classifier: FGSM and PGD (L-inf and L2).

Array level: inputs and outputs are numpy arrays, the model is any :class:`torch.nn.Module`
mapping ``cells x genes`` to logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._settings import progress

METHODS = ("pgd", "fgsm", "pgd_rs", "pgd_l2")


def _as_tensor(a, dev, n_genes) -> torch.Tensor | None:
    if a is None:
        return None
    t = torch.as_tensor(np.asarray(a, dtype=np.float32), device=dev)
    if t.ndim == 0:
        t = t.expand(n_genes)
    return t


def _l2_normalize(g: torch.Tensor) -> torch.Tensor:
    return g / g.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None]


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    n = delta.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return delta * torch.clamp(eps / n, max=1.0)


def perturb_batch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    norm: str = "linf",
    random_start: bool = False,
    lower: torch.Tensor | None = None,
    upper: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Untargeted PGD on one batch (tensors on the model's device); FGSM is ``steps=1, alpha=eps``.

    Maximises the cross-entropy of ``y`` within the ``eps``-ball (``norm`` ``'linf'`` or ``'l2'``)
    around ``x``, changing only genes where ``mask`` is true and keeping values in ``[lower, upper]``.
    Only the input gradient is computed (``torch.autograd.grad``), never parameter gradients.
    """
    x = x.detach()
    delta = torch.zeros_like(x)
    if random_start:
        noise = torch.rand(x.shape, generator=generator, device="cpu").to(x.device) * 2 - 1
        delta = noise * eps if norm == "linf" else _project(noise, eps, norm)
    if mask is not None:
        delta = delta * mask
    for _ in range(steps):
        x_adv = x + delta
        if lower is not None or upper is not None:
            x_adv = torch.clamp(x_adv, min=lower, max=upper)
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_adv)
        step = grad.sign() if norm == "linf" else _l2_normalize(grad)
        if mask is not None:
            step = step * mask
        delta = _project(x_adv.detach() - x + alpha * step, eps, norm)
    x_adv = x + delta
    if lower is not None or upper is not None:
        x_adv = torch.clamp(x_adv, min=lower, max=upper)
    return x_adv.detach()


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
    """Adversarial versions of ``X`` against labels ``y``, one per epsilon.

    Parameters
    ----------
    model
        Differentiable classifier returning logits.
    X, y
        Cells x genes (float) and the integer class each cell is pushed away from.
    method
        ``'pgd'`` (L-inf PGD), ``'pgd_rs'`` (with a uniform random start), ``'pgd_l2'`` (L2 PGD)
        or ``'fgsm'`` (one step of size eps).
    eps, alpha, steps
        Budget(s), step size and number of steps (``alpha`` and ``steps`` unused by FGSM).
    lower, upper
        Per-gene (or scalar) bounds of the perturbed values.
    mask
        Boolean per gene: only these genes may change.
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
    norm = "l2" if method == "pgd_l2" else "linf"
    dev = torch.device(device)
    was_training = model.training
    model.eval().to(dev)
    grads_on = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    n_genes = X.shape[1]
    lo, hi = _as_tensor(lower, dev, n_genes), _as_tensor(upper, dev, n_genes)
    m = None if mask is None else torch.as_tensor(np.asarray(mask, dtype=np.float32), device=dev)
    gen = torch.Generator().manual_seed(int(random_state))
    out = {e: np.empty(X.shape, dtype=np.float32) for e in eps_list}
    try:
        batches = range(0, X.shape[0], batch_size)
        bar = progress(total=len(batches) * len(eps_list), desc=f"{method} attack", unit="batch")
        for start in batches:
            xb = torch.as_tensor(np.ascontiguousarray(X[start : start + batch_size], dtype=np.float32), device=dev)
            yb = torch.as_tensor(np.asarray(y[start : start + batch_size], dtype=np.int64), device=dev)
            for e in eps_list:
                if method == "fgsm":
                    kw = {"alpha": e, "steps": 1, "random_start": False}
                else:
                    kw = {"alpha": alpha, "steps": steps, "random_start": method == "pgd_rs"}
                adv = perturb_batch(model, xb, yb, eps=e, norm=norm, lower=lo, upper=hi, mask=m, generator=gen, **kw)
                out[e][start : start + len(xb)] = adv.cpu().numpy()
                bar.update(1)
        bar.close()
    finally:
        for p, g in zip(model.parameters(), grads_on, strict=True):
            p.requires_grad_(g)
        model.train(was_training)
    return out
