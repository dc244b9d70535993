"""The one projection every white-box attack uses: budget, mask, bounds and integer counts.

Array level (tensors, no AnnData). A :class:`Projection` holds, for one batch of cells, what the
attacker may do: the norm ball of radius ``eps`` around the clean cells, the entries allowed to
move (a mask per gene or per cell and gene) and the box ``[lower, upper]`` (per gene or per cell
and gene). PGD, Carlini-Wagner and DeepFool all pass their iterates through it, so every method
respects the same threat model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch

Norm = Literal["linf", "l2"]
NORMS: tuple[str, ...] = ("linf", "l2")
_TINY = 1e-12  # keeps the L2 normalisation of an all-zero vector finite
_L2_SLACK = 1e-6  # float32 rounding of an L2 norm: a rounded change exactly on the ball's surface stays inside


def _rows(t: torch.Tensor | None, sl: slice) -> torch.Tensor | None:
    """Rows ``sl`` of a per-cell tensor; a per-gene (1-d) tensor is shared by every cell."""
    return t if t is None or t.ndim < 2 else t[sl]


@dataclass(frozen=True)
class Projection:
    """What the attacker may change, for one batch of cells (tensors on one device).

    Parameters
    ----------
    eps
        Radius of the norm ball around the clean cells.
    norm
        ``'linf'`` or ``'l2'``.
    lower, upper
        Bounds of the attacked values: per gene (1-d) or per cell and gene (2-d); ``None``: unbounded.
    mask
        Entries allowed to change (float 0/1), per gene or per cell and gene; ``None``: all.
    integer
        Values are integers (counts): :meth:`round` rounds the final iterate within the threat model.

    """

    eps: float
    norm: Norm = "linf"
    lower: torch.Tensor | None = None
    upper: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    integer: bool = False

    def rows(self, sl: slice) -> Projection:
        """The projection of cells ``sl`` (per-cell tensors sliced, per-gene ones shared)."""
        return replace(self, lower=_rows(self.lower, sl), upper=_rows(self.upper, sl), mask=_rows(self.mask, sl))

    def with_eps(self, eps: float) -> Projection:
        """The same threat with another budget."""
        return replace(self, eps=float(eps))

    def ball(self, delta: torch.Tensor) -> torch.Tensor:
        """Project a change onto the norm ball (no mask, no bounds)."""
        if self.norm == "linf":
            return delta.clamp(-self.eps, self.eps)
        n = delta.norm(dim=1, keepdim=True).clamp_min(_TINY)
        return delta * torch.clamp(self.eps / n, max=1.0)

    def clamp(self, x: torch.Tensor) -> torch.Tensor:
        """Clamp values into ``[lower, upper]``."""
        if self.lower is None and self.upper is None:
            return x
        return torch.clamp(x, min=self.lower, max=self.upper)

    def masked(self, t: torch.Tensor) -> torch.Tensor:
        """Zero the entries that may not change."""
        return t if self.mask is None else t * self.mask

    def delta(self, delta: torch.Tensor) -> torch.Tensor:
        """A change inside the threat: masked and inside the ball (before the bounds)."""
        return self.ball(self.masked(delta))

    def __call__(self, x0: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """The attacked values ``clamp(x0 + P(delta))``: masked, inside the ball and inside the bounds.

        With bounds that contain ``x0`` (all of sad's do), clamping a change inside the ball keeps it
        inside (the box is applied per entry and only moves values towards ``x0``).
        """
        return self.clamp(x0 + self.delta(delta))

    def round(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Round integer-valued iterates without leaving the threat model.

        Each entry goes to the nearest integer; a cell whose rounded change leaves the ball or the
        bounds has its change truncated toward ``x0`` instead (always inside, as ``x0`` is integer and
        both the ball and the box are convex sets containing it).
        """
        if not self.integer:
            return x
        d = x - x0
        nearest = x0 + torch.round(d)
        trunc = x0 + torch.trunc(d)
        dn = nearest - x0
        bad = (dn.abs() > self.eps).any(1) if self.norm == "linf" else dn.norm(dim=1) > self.eps * (1 + _L2_SLACK)
        if self.lower is not None:
            bad |= (nearest < self.lower).any(1)
        if self.upper is not None:
            bad |= (nearest > self.upper).any(1)
        return torch.where(bad[:, None], trunc, nearest)


__all__ = ["NORMS", "Norm", "Projection"]
