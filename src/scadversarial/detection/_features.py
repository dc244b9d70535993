"""Meta-features of a cell seen by a classifier: internal signals, input gradient and input consistency.

Three named groups:

``'internal'``
    The classifier's 64-d embedding, logits, softmax probabilities, top-1 minus top-2 logit
    margin and the entropy of the probabilities.
``'gradient'``
    Mean, variance and L2 norm of ``|d loss / d x|`` where the loss is the cross-entropy at the
    **predicted** class (the true label is unknown at inference; using it leaks the answer).
    Stored as natural logarithms (they span orders of magnitude).
``'input'``
    Input-consistency features: does the profile look like a measured cell? Fitted on clean
    training cells only (see :class:`InputConsistency`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FEATURE_GROUPS = ("internal", "gradient", "input")
GRADIENT_FEATURES = ("grad_log_mean_abs", "grad_log_var_abs", "grad_log_l2")
INPUT_FEATURES = (
    "frac_at_min",
    "frac_below_min",
    "log_depth_below_min",
    "frac_in_gap",
    "log_pca_residual",
    "log_knn_distance",
)
_BIG = 1e30


def feature_names(groups: Sequence[str], n_embedding: int, classes: Sequence[str]) -> list[str]:
    """Names of the meta-feature columns for ``groups``, in the order :func:`meta_feature_tensor` writes them."""
    names: list[str] = []
    if "internal" in groups:
        names += [f"emb_{i}" for i in range(n_embedding)]
        names += [f"logit_{c}" for c in classes] + [f"proba_{c}" for c in classes] + ["margin", "entropy"]
    if "gradient" in groups:
        names += list(GRADIENT_FEATURES)
    if "input" in groups:
        names += list(INPUT_FEATURES)
    return names


class InputConsistency(nn.Module):
    """Input-consistency features of a scaled expression profile, from a reference of clean cells.

    Why these features: in scaled space every gene with zero counts sits exactly at one value (its
    minimum, ``-mean/std`` after scaling), and most genes of a cell are unexpressed; the smallest
    expressed value of a gene lies a gap above it (one count). An L-inf attack in scaled space moves
    nearly all genes by up to eps, so unexpressed genes leave their minimum, go below it (negative
    counts) or land in the gap, and the cell drifts off the low-dimensional manifold of real cells.
    All six features are a few elementwise passes and two small matrix products per batch:

    ``frac_at_min``
        Fraction of genes at their reference minimum (within ``tol``).
    ``frac_below_min``
        Fraction of genes below it (impossible for measured cells).
    ``log_depth_below_min``
        ``log1p`` of the summed distance below the minima.
    ``frac_in_gap``
        Fraction of genes strictly between their minimum and the smallest value above it seen in the reference.
    ``log_pca_residual``
        Log of the mean squared residual after projection on the reference's first ``n_pcs`` components.
    ``log_knn_distance``
        Log of the mean distance to the ``n_neighbors`` nearest reference cells in that PCA space.

    Buffers are filled by :func:`fit_input_reference`.
    """

    def __init__(self, n_genes: int, n_pcs: int, n_reference: int, n_neighbors: int = 5, tol: float = 1e-4) -> None:
        super().__init__()
        self.tol, self.n_neighbors = float(tol), int(n_neighbors)
        self.register_buffer("min_value", torch.zeros(n_genes))
        self.register_buffer("gap", torch.full((n_genes,), _BIG))
        self.register_buffer("pca_mean", torch.zeros(n_genes))
        self.register_buffer("components", torch.zeros(n_pcs, n_genes))
        self.register_buffer("ref_pcs", torch.zeros(n_reference, n_pcs))
        self.register_buffer("ref_sqnorm", torch.zeros(n_reference))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The six input-consistency features of scaled input ``x`` (cells x genes)."""
        d = x - self.min_value
        tol = self.tol
        at_min = (d.abs() <= tol).float().mean(1)
        below = d < -tol
        frac_below = below.float().mean(1)
        depth = torch.log1p(torch.relu(-d).sum(1))
        in_gap = ((d > tol) & (d < self.gap)).float().mean(1)
        c = x - self.pca_mean
        p = c @ self.components.T
        resid = ((c * c).sum(1) - (p * p).sum(1)).clamp_min(0) / x.shape[1]
        d2 = (p * p).sum(1, keepdim=True) + self.ref_sqnorm - 2 * (p @ self.ref_pcs.T)
        k = min(self.n_neighbors, self.ref_pcs.shape[0])
        knn = d2.clamp_min(0).topk(k, dim=1, largest=False).values.sqrt().mean(1)
        return torch.stack([at_min, frac_below, depth, in_gap, torch.log(resid + 1e-8), torch.log(knn + 1e-6)], dim=1)


def fit_input_reference(
    X_ref: np.ndarray, *, n_pcs: int = 50, n_neighbors: int = 5, tol: float = 1e-4
) -> InputConsistency:
    """Fit :class:`InputConsistency` on clean reference cells (scaled values, cells x genes).

    Per-gene minimum and gap above it, a PCA basis (SVD of the centred reference) and the
    reference cells' coordinates for the kNN distance. ``n_pcs`` is capped at ``n_ref - 1``.
    """
    X_ref = np.asarray(X_ref, dtype=np.float32)
    n_ref, n_genes = X_ref.shape
    if n_ref < 2:
        msg = f"The input-consistency reference needs at least 2 clean cells, got {n_ref}."
        raise ValueError(msg)
    mins = X_ref.min(0)
    off = X_ref - mins
    gap = np.where(off > tol, off, np.inf).min(0)
    gap = np.where(np.isfinite(gap), gap, _BIG).astype(np.float32)
    mean = X_ref.mean(0, dtype=np.float64).astype(np.float32)
    C = (X_ref - mean).astype(np.float64)
    n_pcs = int(max(1, min(n_pcs, n_ref - 1, n_genes)))
    _, _, vt = np.linalg.svd(C, full_matrices=False)
    comps = vt[:n_pcs].astype(np.float32)
    ref = InputConsistency(n_genes, n_pcs, n_ref, n_neighbors, tol)
    with torch.no_grad():
        ref.min_value.copy_(torch.from_numpy(mins))
        ref.gap.copy_(torch.from_numpy(gap))
        ref.pca_mean.copy_(torch.from_numpy(mean))
        ref.components.copy_(torch.from_numpy(comps))
        pcs = torch.from_numpy(X_ref - mean) @ ref.components.T
        ref.ref_pcs.copy_(pcs)
        ref.ref_sqnorm.copy_((pcs * pcs).sum(1))
    return ref


def meta_feature_tensor(
    classifier: nn.Module, x: torch.Tensor, *, gradient: bool = True, input_ref: InputConsistency | None = None
) -> torch.Tensor:
    """Meta-features of scaled input ``x`` for a classifier with ``forward_with_embedding``.

    One forward pass gives the embedding and logits; with ``gradient=True`` one backward pass to
    the input only (no parameter gradients) gives the gradient statistics of the cross-entropy at
    the predicted class. The classifier should be in eval mode. Returns a detached tensor whose
    columns follow :func:`feature_names`.
    """
    if gradient:
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            emb, logits = classifier.forward_with_embedding(xg)
            pred = logits.detach().argmax(1)
            loss = F.cross_entropy(logits, pred, reduction="sum")  # sum: each row gets its own cell's gradient
            (g,) = torch.autograd.grad(loss, xg)
        emb, logits = emb.detach(), logits.detach()
        ga = g.abs()
        grad = torch.stack(
            [
                torch.log(ga.mean(1) + 1e-12),
                torch.log(ga.var(1, unbiased=False) + 1e-24),
                torch.log(g.norm(dim=1) + 1e-12),
            ],
            dim=1,
        )
    else:
        with torch.no_grad():
            emb, logits = classifier.forward_with_embedding(x)
    with torch.no_grad():
        logp = torch.log_softmax(logits, 1)
        proba = logp.exp()
        entropy = -(proba * logp).sum(1, keepdim=True)
        top2 = logits.topk(2, dim=1).values
        margin = top2[:, :1] - top2[:, 1:2]
        parts = [emb, logits, proba, margin, entropy]
        if gradient:
            parts.append(grad)
        if input_ref is not None:
            parts.append(input_ref(x))
        return torch.cat(parts, dim=1)


def compute_meta_features(
    classifier: nn.Module,
    X: np.ndarray,
    *,
    gradient: bool = True,
    input_ref: InputConsistency | None = None,
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Meta-features of a scaled matrix ``X`` (cells x genes), batched; float32 array."""
    dev = torch.device(device)
    was_training = classifier.training
    classifier.eval().to(dev)
    if input_ref is not None:
        input_ref.to(dev)
    out = []
    try:
        for start in range(0, X.shape[0], batch_size):
            xb = torch.as_tensor(np.ascontiguousarray(X[start : start + batch_size]), dtype=torch.float32, device=dev)
            out.append(meta_feature_tensor(classifier, xb, gradient=gradient, input_ref=input_ref).cpu().numpy())
    finally:
        classifier.train(was_training)
    if not out:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(out)
