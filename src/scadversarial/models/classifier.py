"""The cell-type classifier: a multilayer perceptron carrying its own input transform."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .._settings import settings
from ._base import SadModel, register_model_class


class InputTransform(nn.Module):
    """Fixed per-gene scaling ``clip((x - mean) / std, -clip, clip)`` as a differentiable layer.

    The classifier is trained on scaled values; this layer lets it take log-normalized values
    with gradients flowing through (``space='lognorm'``).
    """

    def __init__(self, n_genes: int, clip: float | None = 10.0) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_genes))
        self.register_buffer("std", torch.ones(n_genes))
        self.clip = clip

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        z = (x - self.mean) / self.std
        return z if self.clip is None else z.clamp(-self.clip, self.clip)

    def set(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Set the per-gene mean and std (a std of 0 is treated as 1)."""
        std = np.where(np.asarray(std) > 0, std, 1.0)
        self.mean.copy_(torch.as_tensor(np.asarray(mean), dtype=self.mean.dtype))
        self.std.copy_(torch.as_tensor(std, dtype=self.std.dtype))


@register_model_class
class CellClassifier(SadModel):
    """MLP cell-type classifier ``genes -> 256 -> 128 -> 64 -> classes`` (ReLU, dropout).

    The last hidden layer is the 64-d cell embedding used for meta-features. In evaluation mode
    the model is deterministic (dropout off, no noise).

    Parameters
    ----------
    var_names
        Gene names, in input column order.
    classes
        Class names, in output column order.
    hidden
        Hidden layer widths; the last one is the embedding size.
    dropout
        Dropout after each hidden layer.
    clip
        Clip of the built-in input transform used for log-normalized input.

    """

    kind = "classifier"

    def __init__(
        self,
        var_names: Sequence[str],
        classes: Sequence[str],
        hidden: Sequence[int] = (256, 128, 64),
        dropout: Sequence[float] = (0.4, 0.4, 0.3),
        clip: float | None = 10.0,
    ) -> None:
        var_names, classes = [str(v) for v in var_names], [str(c) for c in classes]
        hidden, dropout = [int(h) for h in hidden], [float(d) for d in dropout]
        if len(hidden) != len(dropout):
            msg = f"`hidden` ({len(hidden)} layers) and `dropout` ({len(dropout)} values) must have the same length."
            raise ValueError(msg)
        super().__init__(
            {"var_names": var_names, "classes": classes, "hidden": hidden, "dropout": dropout, "clip": clip}
        )
        self.var_names, self.classes = var_names, classes
        self.transform = InputTransform(len(var_names), clip)
        layers: list[nn.Module] = []
        d_in = len(var_names)
        for h, p in zip(hidden, dropout, strict=True):
            layers += [nn.Linear(d_in, h), nn.ReLU(), nn.Dropout(p)]
            d_in = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(d_in, len(classes))

    @property
    def n_genes(self) -> int:
        """Number of input genes."""
        return len(self.var_names)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The 64-d embedding of scaled input ``x``."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of scaled input ``x`` (cells x genes)."""
        return self.head(self.body(x))

    def forward_with_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embedding, logits)`` of scaled input ``x``."""
        z = self.body(x)
        return z, self.head(z)

    def forward_lognorm(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of log-normalized input ``x``, scaled by the built-in transform (differentiable)."""
        return self(self.transform(x))

    @torch.no_grad()
    def predict_arrays(
        self, X: np.ndarray, *, batch_size: int | None = None, device=None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Logits and embeddings of a scaled matrix, in evaluation mode and batches.

        Returns
        -------
        ``(logits, embedding)`` as float32 arrays.

        """
        was_training = self.training
        self.eval()
        dev = settings.torch_device(device)
        self.to(dev)
        bs = batch_size or settings.batch_size
        logits, emb = [], []
        try:
            for start in range(0, X.shape[0], bs):
                xb = torch.as_tensor(np.ascontiguousarray(X[start : start + bs]), dtype=torch.float32, device=dev)
                z, lo = self.forward_with_embedding(xb)
                logits.append(lo.cpu().numpy())
                emb.append(z.cpu().numpy())
        finally:
            self.train(was_training)
        n_emb = self.config["hidden"][-1]
        if not logits:
            return np.zeros((0, len(self.classes)), np.float32), np.zeros((0, n_emb), np.float32)
        return np.concatenate(logits), np.concatenate(emb)
