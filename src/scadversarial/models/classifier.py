"""The cell-type classifier: a multilayer perceptron carrying its own input transform."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn

from .._settings import settings
from ._base import SadModel, register_model_class
from ._filter import WeakInputLayer


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
    filter_threshold
        Weak-input filtering as the first layer (``models._filter.WeakInputLayer``,
        Rademaker et al. 2019): a value less than this many log units above the gene's minimum over
        the clean training cells is set to that minimum before the network (backward pass: the
        identity). ``None`` (default): no filter. Set from
        :class:`~scadversarial.tl.WeakInputFilter` by :func:`~scadversarial.tl.train_classifier`,
        which also fits the per-gene minimum.

    """

    kind = "classifier"

    def __init__(
        self,
        var_names: Sequence[str],
        classes: Sequence[str],
        hidden: Sequence[int] = (256, 128, 64),
        dropout: Sequence[float] = (0.4, 0.4, 0.3),
        clip: float | None = 10.0,
        filter_threshold: float | None = None,
    ) -> None:
        var_names, classes = [str(v) for v in var_names], [str(c) for c in classes]
        hidden, dropout = [int(h) for h in hidden], [float(d) for d in dropout]
        if len(hidden) != len(dropout):
            msg = f"`hidden` ({len(hidden)} layers) and `dropout` ({len(dropout)} values) must have the same length."
            raise ValueError(msg)
        config = {"var_names": var_names, "classes": classes, "hidden": hidden, "dropout": dropout, "clip": clip}
        if filter_threshold is not None:  # only then: an unfiltered model's config and state stay as they were
            config["filter_threshold"] = float(filter_threshold)
        super().__init__(config)
        self.var_names, self.classes = var_names, classes
        self.transform = InputTransform(len(var_names), clip)
        # the filter is the body's first module, so whatever runs the body (the forward, the embedding, the
        # activations and dropout passes of the baseline detectors) runs it; without one the body is as before
        layers: list[nn.Module] = [] if filter_threshold is None else [WeakInputLayer(len(var_names), filter_threshold)]
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

    @property
    def input_filter(self) -> WeakInputLayer | None:
        """The weak-input filter, the first module of :attr:`body` (``None`` without one)."""
        first = self.body[0] if len(self.body) else None
        return first if isinstance(first, WeakInputLayer) else None

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

    def for_space(self, space: Space, *, target_sum: float | None = None) -> SpaceClassifier:
        """The classifier fed the matrix of ``space`` through its own differentiable transform.

        See :class:`SpaceClassifier`; ``target_sum`` is needed for ``space='counts'``.
        """
        return SpaceClassifier(self, space, target_sum=target_sum)

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


Space = Literal["scaled", "log", "counts"]
SPACES: tuple[str, ...] = ("scaled", "log", "counts")
_MIN_LIBRARY = 1e-12  # guards the division for a cell whose library is 0 (its counts are all 0 then)


def counts_to_lognorm(counts: torch.Tensor, other: torch.Tensor, target_sum: float) -> torch.Tensor:
    """``log1p(counts * target_sum / library)`` with ``library = other + counts.sum(1)`` (differentiable).

    ``sad.pp.preprocess`` normalizes each cell by its total counts over *all* genes, while the
    classifier sees only the kept genes; ``other`` is each cell's count outside them (its original
    total minus the kept genes' counts), so a change of the kept counts moves the library size
    exactly as re-preprocessing the changed cell would.
    """
    library = other[:, None] + counts.sum(1, keepdim=True)
    # a cell with no counts at all normalizes to zeros (scanpy leaves it at zero too)
    return torch.log1p(counts * (target_sum / library.clamp_min(_MIN_LIBRARY)))


class SpaceClassifier(nn.Module):
    """A :class:`CellClassifier` taking the matrix of one feature space, through its own transform.

    ``'scaled'``: the classifier's input ``X`` as is; ``'log'``: log-normalized values
    (``.layers['sad_lognorm']``) -> per-gene scaling -> clip; ``'counts'``: counts of the kept genes
    (``.layers['counts']``) -> library-size normalization -> ``log1p`` -> scaling -> clip. Every
    step is differentiable, so an attack on that space reaches the classifier end to end.

    Parameters
    ----------
    classifier
        The classifier (any module mapping scaled input to logits; ``'log'`` and ``'counts'`` need
        its ``transform``).
    space
        The input's feature space.
    target_sum
        Library size after normalization (``.uns['sad']['preprocess']['params']['target_sum']``);
        needed for ``'counts'``.

    Examples
    --------
    >>> import torch
    >>> clf = CellClassifier(["g1", "g2"], ["a", "b"])
    >>> view = clf.for_space("counts", target_sum=1e4)
    >>> view(torch.tensor([[3.0, 0.0]]), torch.tensor([97.0])).shape
    torch.Size([1, 2])

    """

    def __init__(self, classifier: nn.Module, space: Space, *, target_sum: float | None = None) -> None:
        super().__init__()
        if space not in SPACES:
            msg = f"Unknown space {space!r}; choose one of {SPACES}."
            raise ValueError(msg)
        if space != "scaled" and not isinstance(getattr(classifier, "transform", None), nn.Module):
            msg = f"space={space!r} needs a classifier with an input transform (a sad CellClassifier); use space='scaled'."
            raise TypeError(msg)
        if space == "counts" and (target_sum is None or target_sum <= 0):
            msg = "space='counts' needs the positive target_sum of the normalization (`sad.pp.preprocess`'s record)."
            raise ValueError(msg)
        self.classifier, self.space = classifier, space
        self.target_sum = None if target_sum is None else float(target_sum)
        # a new module starts in training mode: take the classifier's, so that restoring the
        # view's mode after an attack never switches the classifier's dropout on
        self.train(classifier.training)

    def to_scaled(self, x: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
        """The classifier's scaled input from ``x`` in this space (``other``: counts outside the kept genes)."""
        if self.space == "scaled":
            return x
        if self.space == "counts":
            if other is None:
                msg = "space='counts' needs each cell's counts outside the kept genes (`other`)."
                raise ValueError(msg)
            x = counts_to_lognorm(x, other, self.target_sum)
        return self.classifier.transform(x)

    def forward(self, x: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of ``x`` given in this space."""
        return self.classifier(self.to_scaled(x, other))
