"""Torch modules of the adversarial-cell detector.

:class:`AdversarialDetector` is one self-contained model: a frozen copy of the classifier it
watches, the input-consistency reference (fitted on clean training cells), the feature
standardization, the optional triplet network, the residual meta-detector and the decision
threshold. Saving it (safetensors + ``config.json``) and loading it reproduces its scores exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .._settings import settings
from ..detection._features import (
    FEATURE_GROUPS,
    SURROGATE_WIDTH,
    InputConsistency,
    differentiable_meta_features,
    feature_names,
    gradient_basis,
    meta_feature_tensor,
)
from ._base import SadModel, register_model_class
from .classifier import CellClassifier


class TripletNet(nn.Module):
    """Meta-feature embedding ``features -> 256 -> 64``, L2-normalized (trained with a triplet loss)."""

    def __init__(self, n_in: int, hidden: int = 256, n_out: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))

    def forward(self, f: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return nn.functional.normalize(self.net(f), dim=1)


class ResBlock(nn.Module):
    """``relu(x + W2 dropout(relu(W1 x)))``."""

    def __init__(self, dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return torch.relu(x + self.lin2(self.drop(torch.relu(self.lin1(x)))))


class ResidualDetector(nn.Module):
    """Residual meta-detector ``n_in -> 128 -> ResBlock -> ResBlock -> 1`` (one logit per cell)."""

    def __init__(self, n_in: int, hidden: int = 128, n_blocks: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        self.inp = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU())
        self.blocks = nn.Sequential(*[ResBlock(hidden, dropout) for _ in range(n_blocks)])
        self.out = nn.Linear(hidden, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.out(self.blocks(self.inp(z))).squeeze(1)


@register_model_class
class AdversarialDetector(SadModel):
    """Composite detector: classifier copy -> meta-features -> standardize -> (triplet net) -> residual detector.

    Parameters
    ----------
    var_names
        Genes of the classifier input, in column order.
    classes
        Classes of the classifier.
    classifier
        Config of the watched :class:`~scadversarial.models.CellClassifier` (``hidden``, ``dropout``, ``clip``).
    groups
        Meta-feature groups: any of ``'internal'`` (embedding, logits, probabilities, margin,
        entropy), ``'gradient'`` (statistics of the input gradient of the loss at the predicted
        label) and ``'input'`` (input-consistency features).
    use_triplet
        Put the triplet network between the standardized features and the detector.
    n_pcs, n_reference, n_neighbors
        Shape of the input-consistency reference (PCA components, reference cells, k of the kNN distance).
    tol
        Tolerance, in input units, for a value to sit at a gene's minimum (unexpressed) value.
    grad_genes
        Genes (a fixed random subset) on which the mean and variance of ``|grad|`` are estimated;
        the L2 norm stays exact. ``0``: all genes, forming the full input gradient (slower; see
        :func:`~scadversarial.detection.meta_feature_tensor`).
    triplet_hidden, triplet_dim, hidden, n_blocks, dropout
        Sizes of the triplet network and of the residual detector.
    classifier_id
        Id of the classifier the detector was trained against (for the record).

    """

    kind = "detector"

    def __init__(
        self,
        var_names: Sequence[str],
        classes: Sequence[str],
        classifier: dict,
        groups: Sequence[str] = FEATURE_GROUPS,
        use_triplet: bool = True,
        n_pcs: int = 30,
        n_reference: int = 0,
        n_neighbors: int = 1,
        tol: float = 1e-4,
        triplet_hidden: int = 256,
        triplet_dim: int = 64,
        hidden: int = 128,
        n_blocks: int = 2,
        dropout: float = 0.1,
        grad_genes: int = 128,
        classifier_id: str = "",
    ) -> None:
        var_names, classes = [str(v) for v in var_names], [str(c) for c in classes]
        groups = [str(g) for g in groups]
        unknown = sorted(set(groups) - set(FEATURE_GROUPS))
        if unknown or not groups or "internal" not in groups:
            msg = f"Feature groups must include 'internal' and be among {FEATURE_GROUPS}; got {groups}."
            raise ValueError(msg)
        groups = [g for g in FEATURE_GROUPS if g in groups]
        clf_cfg = {k: classifier[k] for k in ("hidden", "dropout", "clip") if k in classifier}
        super().__init__(
            {
                "var_names": var_names, "classes": classes, "classifier": clf_cfg, "groups": groups,
                "use_triplet": bool(use_triplet), "n_pcs": int(n_pcs), "n_reference": int(n_reference),
                "n_neighbors": int(n_neighbors), "tol": float(tol), "triplet_hidden": int(triplet_hidden),
                "triplet_dim": int(triplet_dim), "hidden": int(hidden), "n_blocks": int(n_blocks),
                "dropout": float(dropout), "grad_genes": int(grad_genes), "classifier_id": str(classifier_id),
            }
        )  # fmt: skip
        self.var_names, self.classes = var_names, classes
        self.classifier = CellClassifier(var_names, classes, **clf_cfg)
        for p in self.classifier.parameters():
            p.requires_grad_(False)
        n_emb = self.classifier.config["hidden"][-1]
        self.feature_names = feature_names(groups, n_emb, classes)
        n_feat = len(self.feature_names)
        self.input_ref = (
            InputConsistency(len(var_names), n_pcs, n_reference, n_neighbors, tol) if "input" in groups else None
        )
        self.register_buffer("feat_mean", torch.zeros(n_feat))
        self.register_buffer("feat_std", torch.ones(n_feat))
        self.register_buffer("threshold", torch.tensor(0.5))
        n_sub = min(int(grad_genes), len(var_names)) if "gradient" in groups and grad_genes > 0 else 0
        h1 = self.classifier.config["hidden"][0]
        self.register_buffer("grad_index", torch.arange(n_sub, dtype=torch.long))
        self.register_buffer("grad_basis", torch.zeros((h1, h1 + n_sub) if n_sub else (0, 0)))
        self.triplet = TripletNet(n_feat, triplet_hidden, triplet_dim) if use_triplet else None
        self.detector = ResidualDetector(triplet_dim if use_triplet else n_feat, hidden, n_blocks, dropout)

    # ------------------------------------------------------------------
    @property
    def groups(self) -> list[str]:
        """Meta-feature groups the detector uses."""
        return list(self.config["groups"])

    @property
    def uses_gradient(self) -> bool:
        """Whether scoring needs the input gradient (a backward pass through the classifier)."""
        return "gradient" in self.config["groups"]

    def meta_features(self, x: torch.Tensor) -> torch.Tensor:
        """Raw meta-features of scaled input ``x`` (cells x genes)."""
        basis = self.grad_basis if len(self.grad_index) else None
        fused = self._fused_first_layer() if basis is not None and self.input_ref is not None else None
        return meta_feature_tensor(
            self.classifier, x, gradient=self.uses_gradient, input_ref=self.input_ref, grad_basis=basis, fused=fused
        )

    def _fused_first_layer(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Classifier first layer stacked with the PCA projection (one matrix product), cached.

        The cache is rebuilt whenever one of its source tensors is replaced or modified in place
        (e.g. by ``load_state_dict``), so it never goes stale.
        """
        lin1, ref = self.classifier.body[0], self.input_ref
        srcs = (lin1.weight, lin1.bias, ref.components, ref.pca_mean)
        key = tuple((t.data_ptr(), t._version, t.device) for t in srcs)
        if getattr(self, "_fused_key", None) != key:
            with torch.no_grad():
                proj = ref.projection_weight()
                # zero rows up to a multiple of 32 outputs: misaligned GEMM shapes cost up to 25% more
                pad = -(lin1.out_features + proj.shape[0]) % 32
                w = torch.cat([lin1.weight, proj, proj.new_zeros(pad, proj.shape[1])]).contiguous()
                b = torch.cat([lin1.bias, lin1.bias.new_zeros(proj.shape[0] + pad)])
            self._fused, self._fused_key = (w, b), key
        return self._fused

    def set_classifier(self, classifier: CellClassifier, *, rng: np.random.Generator | None = None) -> None:
        """Copy the weights of ``classifier`` and fill the gradient buffers (gene subset and its basis)."""
        self.classifier.load_state_dict(classifier.state_dict())
        n_sub = len(self.grad_index)
        if n_sub:
            rng = rng or np.random.default_rng(0)
            idx = np.sort(rng.choice(len(self.var_names), n_sub, replace=False))
            self.grad_index.copy_(torch.as_tensor(idx, dtype=torch.long))
            self.grad_basis.copy_(gradient_basis(self.classifier, self.grad_index))

    def standardize(self, f: torch.Tensor) -> torch.Tensor:
        """Standardized meta-features."""
        return (f - self.feat_mean) / self.feat_std

    def embed(self, f: torch.Tensor) -> torch.Tensor:
        """Detector input from raw meta-features: the triplet embedding, or the standardized features."""
        z = self.standardize(f)
        return self.triplet(z) if self.triplet is not None else z

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(meta_features, embedding, score)`` of scaled input ``x``; ``score`` is a probability."""
        f = self.meta_features(x)
        with torch.no_grad():
            z = self.embed(f)
            score = torch.sigmoid(self.detector(z))
        return f, z, score

    def score_logit(self, x: torch.Tensor, *, width: float = SURROGATE_WIDTH) -> torch.Tensor:
        """Detector logit of scaled input ``x`` (cells x genes), differentiable with respect to ``x``.

        ``sigmoid(score_logit(x))`` equals the score of the fast path (:meth:`forward`,
        :meth:`score_arrays`, :func:`~scadversarial.tl.detect`) up to float rounding (1e-5), and
        ``score_logit(x) >= logit(threshold)`` is the detector's flag. Unlike the fast path, the
        meta-features keep their graph (:func:`~scadversarial.detection.differentiable_meta_features`):
        the gradient features by double backpropagation, the step-function input features
        (``frac_at_min``, ``frac_below_min``) with smooth stand-ins of width ``width`` (scaled units)
        in the backward pass only. This is the path for a detector-aware (adaptive) attacker, e.g.
        PGD on ``loss - weight * det.score_logit(x)``. It runs in evaluation mode (dropout off,
        deterministic) whatever the module's mode, and costs about 2-3x the fast path.

        Parameters
        ----------
        x
            Scaled classifier input, on the detector's device, float32 or float64.
        width
            Width, in scaled units, of the smooth stand-ins of the step-function features.

        Returns
        -------
        One logit per cell, shape ``(cells,)``, with a graph to ``x``.

        Examples
        --------
        >>> import torch
        >>> x = torch.as_tensor(X_scaled[:8], requires_grad=True)  # doctest: +SKIP
        >>> (g,) = torch.autograd.grad(det.score_logit(x).sum(), x)  # doctest: +SKIP
        """
        was_training = self.training
        self.eval()
        try:
            basis = self.grad_basis if len(self.grad_index) else None
            fused = self._fused_first_layer() if basis is not None and self.input_ref is not None else None
            f = differentiable_meta_features(
                self.classifier,
                x,
                gradient=self.uses_gradient,
                input_ref=self.input_ref,
                grad_basis=basis,
                fused=fused,
                width=width,
            )
            return self.detector(self.embed(f))
        finally:
            self.train(was_training)

    def score_differentiable(self, x: torch.Tensor, *, width: float = SURROGATE_WIDTH) -> torch.Tensor:
        """Detector score (probability) of scaled input ``x``: ``sigmoid(score_logit(x))``, differentiable.

        Examples
        --------
        >>> s = det.score_differentiable(torch.as_tensor(X_scaled[:8]))  # doctest: +SKIP
        >>> flagged = s >= det.threshold  # doctest: +SKIP
        """
        return torch.sigmoid(self.score_logit(x, width=width))

    def score_arrays(
        self, X: np.ndarray, *, batch_size: int | None = None, device=None, progress_bar: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Meta-features, embedding and score of a scaled matrix, in evaluation mode and batches.

        Returns
        -------
        ``(meta_features, embedding, score)`` as float32 arrays (the embedding is the triplet
        embedding, or the standardized meta-features without a triplet network).

        """
        from .._settings import progress

        was_training = self.training
        self.eval()
        dev = settings.torch_device(device)
        self.to(dev)
        bs = int(batch_size or settings.batch_size)
        feats, embs, scores = [], [], []
        try:
            starts = range(0, X.shape[0], bs)
            for start in progress(
                starts, desc="detect", unit="batch", disable=not (progress_bar and settings.progress)
            ):
                xb = torch.as_tensor(np.ascontiguousarray(X[start : start + bs]), dtype=torch.float32, device=dev)
                f, z, s = self(xb)
                feats.append(f.cpu().numpy())
                embs.append(z.cpu().numpy())
                scores.append(s.cpu().numpy())
        finally:
            self.train(was_training)
        if not feats:
            n_z = self.config["triplet_dim"] if self.triplet is not None else len(self.feature_names)
            return (
                np.zeros((0, len(self.feature_names)), np.float32),
                np.zeros((0, n_z), np.float32),
                np.zeros(0, np.float32),
            )
        return np.concatenate(feats), np.concatenate(embs), np.concatenate(scores)


__all__ = ["AdversarialDetector", "ResidualDetector", "TripletNet", "ResBlock"]
