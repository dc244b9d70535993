"""One batch of cells and its goal: what every white-box method iterates on (tensors, no AnnData)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

TINY = 1e-12  # keeps divisions by a zero gradient norm finite


def reached(logits: torch.Tensor, y: torch.Tensor, *, targeted: bool) -> torch.Tensor:
    """Per cell: the attack's goal is met (targeted: predicted ``y``; untargeted: predicted another class)."""
    pred = logits.argmax(1)
    return pred == y if targeted else pred != y


@dataclass(frozen=True)
class Batch:
    """One batch of cells and its goal (tensors on one device).

    Parameters
    ----------
    x
        The clean values, cells x genes.
    y
        Per cell, the class to leave (untargeted) or to reach (``targeted``).
    targeted
        Whether ``y`` is the class to reach.
    other
        Per cell, counts outside the kept genes (count space, passed to a ``SpaceClassifier``).

    """

    x: torch.Tensor
    y: torch.Tensor
    targeted: bool = False
    other: torch.Tensor | None = None

    def logits(self, model: nn.Module, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``model``'s logits of ``x``: the batch's cells ``rows`` (default all), with their other counts."""
        if self.other is None:
            return model(x)
        return model(x, self.other if rows is None else self.other[rows])

    def reached(self, logits: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Per cell (of ``rows``, default all): the goal is met."""
        return reached(logits, self.y if rows is None else self.y[rows], targeted=self.targeted)


__all__ = ["TINY", "Batch", "reached"]
