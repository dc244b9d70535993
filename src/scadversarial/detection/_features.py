"""Meta-features of a cell seen by a classifier: internal signals, input gradient and input consistency.

Three named groups:

``'internal'``
    The classifier's 64-d embedding, logits, softmax probabilities, top-1 minus top-2 logit
    margin and the entropy of the probabilities.
``'gradient'``
    Mean, variance and L2 norm of ``|d loss / d x|`` where the loss is the cross-entropy at the
    **predicted** class (the true label is unknown at inference; using it leaks the answer).
    Stored as natural logarithms (they span orders of magnitude). The trained detector takes the
    L2 norm exactly and estimates the mean and variance on a fixed random subset of genes
    (``grad_genes``), see :func:`meta_feature_tensor`.
``'input'``
    Input-consistency features: does the profile look like a measured cell? Fitted on clean
    training cells only (see :class:`InputConsistency`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FEATURE_GROUPS = ("internal", "gradient", "input")
GRADIENT_FEATURES = ("grad_log_mean_abs", "grad_log_var_abs", "grad_log_l2")
INPUT_FEATURES = ("frac_at_min", "frac_below_min", "log_pca_residual", "log_knn_distance")
_BIG = 1e30
# floors inside the logarithms of the input features: far below a measured cell's residual
# (mean squared, ~0.1-1) and nearest-cell distance (~10), they only keep log(0) finite
_RESIDUAL_FLOOR = 1e-8
_KNN_FLOOR = 1e-6
#: Width, in scaled input units, of the smooth stand-ins behind ``frac_at_min`` / ``frac_below_min``
#: in the differentiable path: half the seed PGD's middle budget (eps 0.1), so that a gene one
#: attack step away from its minimum still feels the pull of the feature.
SURROGATE_WIDTH = 0.05


#: Below this value the square roots of the differentiable path pass no gradient: the slope of
#: sqrt is infinite at 0 (a cell meeting itself in the kNN reference, a gradient that underflows
#: to 0), and a norm under 1e-12 no longer moves the log(norm + 1e-12) features anyway.
_SQRT_FLOOR = 1e-24


def _sqrt_st(s: torch.Tensor) -> torch.Tensor:
    """``sqrt(max(s, 0))`` exactly in the forward pass, with a finite slope (zero below :data:`_SQRT_FLOOR`)."""
    return straight_through(s.clamp_min(0).sqrt(), s.clamp_min(_SQRT_FLOOR).sqrt())


def straight_through(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """``value`` in the forward pass, the gradient of ``surrogate`` in the backward pass.

    ``value.detach() + (surrogate - surrogate.detach())``: the added term is exactly zero for a
    finite surrogate, so the forward value is bit-identical to ``value``.
    """
    return value.detach() + (surrogate - surrogate.detach())


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


#: attribute holding :class:`InputConsistency`'s scratch tensors, one set per thread (never pickled)
_SCRATCH = "_scratch"
#: where earlier versions kept them (plain attributes, pickled with the model)
_OLD_SCRATCH = frozenset({"_ws", "_ws_knn", "_ws_grad"})


class InputConsistency(nn.Module):
    """Input-consistency features of a scaled expression profile, from a reference of clean cells.

    Why these features: in scaled space every gene with zero counts sits exactly at one value (its
    minimum, ``-mean/std`` after scaling), and most genes of a cell are unexpressed. An L-inf attack
    in scaled space moves nearly all genes by up to eps, so unexpressed genes leave their minimum or
    go below it (negative counts), and the cell drifts off the low-dimensional manifold of real
    cells. The four features cost one clamped pass over the genes and two small matrix products
    per cell (measured by ``benchmarks/detect_throughput.py``):

    ``frac_at_min``
        Fraction of genes at their reference minimum (within ``tol``).
    ``frac_below_min``
        Fraction of genes below it (impossible for measured cells).
    ``log_pca_residual``
        Log of the mean squared residual after projection on the reference's first ``n_pcs`` components.
    ``log_knn_distance``
        Log of the mean distance to the ``n_neighbors`` nearest reference cells in that PCA space
        (default 1: the distance to the nearest clean training cell).

    The per-gene ``gap`` (smallest value above the minimum seen in the reference) is kept as a
    buffer for diagnostics. Buffers are filled by :func:`fit_input_reference`.
    """

    def __init__(self, n_genes: int, n_pcs: int, n_reference: int, n_neighbors: int = 1, tol: float = 1e-4) -> None:
        super().__init__()
        self.tol, self.n_neighbors = float(tol), int(n_neighbors)
        self.self_tol = 1e-5  # relative squared distance under which a reference cell matches itself
        self.register_buffer("min_value", torch.zeros(n_genes))
        self.register_buffer("gap", torch.full((n_genes,), _BIG))
        self.register_buffer("pca_mean", torch.zeros(n_genes))
        self.register_buffer("components", torch.zeros(n_pcs, n_genes))
        self.register_buffer("ref_pcs", torch.zeros(n_reference, n_pcs))
        self.register_buffer("ref_sqnorm", torch.zeros(n_reference))

    def _workspace(self, x: torch.Tensor, name: str = "_ws", shape: tuple | None = None) -> torch.Tensor:
        # scratch tensors (cells x genes, cells x reference cells) reused across batches: a fresh
        # allocation of that size (page faults) costs more than the arithmetic done in it (measured: the
        # kNN product runs 3x slower into fresh memory). One set per thread: threads (a dask worker's, the
        # threaded scheduler's) may score with one model at once.
        scratch = self.__dict__.get(_SCRATCH)
        if scratch is None:
            scratch = self.__dict__.setdefault(_SCRATCH, threading.local())  # atomic: one object for all threads
        shape = tuple(x.shape) if shape is None else shape
        ws = getattr(scratch, name, None)
        if ws is None or tuple(ws.shape) != shape or ws.dtype != x.dtype or ws.device != x.device:
            ws = torch.empty(shape, dtype=x.dtype, device=x.device)
            setattr(scratch, name, ws)
        return ws

    def __getstate__(self) -> dict:
        """The module's state without its scratch tensors (MBs that a pickle or deep copy need not carry)."""
        state = super().__getstate__()
        state.pop(_SCRATCH, None)
        return state

    def __setstate__(self, state: dict) -> None:
        # models pickled before the scratch tensors were per thread hold them as attributes: not state
        super().__setstate__({k: v for k, v in state.items() if k not in _OLD_SCRATCH})

    def projection_weight(self) -> torch.Tensor:
        """``[components; mean]``: ``x @ W.T`` gives the PCA scores (uncentred) and ``x . mean``."""
        return torch.cat([self.components, self.pca_mean[None]])

    def forward(self, x: torch.Tensor, proj: torch.Tensor | None = None) -> torch.Tensor:
        """The four input-consistency features of scaled input ``x`` (cells x genes).

        ``proj`` is ``x @ projection_weight().T`` when the caller has it already (computed in the
        same matrix product as the classifier's first layer).
        """
        # kept cheap (float ops only, no bool->int copies, one pass for both counts):
        # v = clamp(min + tol - x, 0, 2 tol) / tol is 1 for a gene at its minimum, 2 for a gene more
        # than tol below it and 0 above; sum(v) = at + 2 below and sum(v^2) = at + 4 below.
        n_genes = x.shape[1]
        v = torch.sub(self.min_value + self.tol, x, out=self._workspace(x)).clamp_(0, 2 * self.tol)
        s1 = v.sum(1) / self.tol
        s2 = torch.linalg.vector_norm(v, dim=1).div(self.tol).square()
        below = (s2 - s1) / 2
        at_min = s1 - 2 * below
        if proj is None:
            proj = F.linear(x, self.projection_weight())
        p = proj[:, :-1] - self.components @ self.pca_mean
        c_sq = torch.linalg.vector_norm(x, dim=1).square() - 2 * proj[:, -1] + self.pca_mean.square().sum()
        p_sq = p.square().sum(1)
        resid = (c_sq - p_sq).clamp_min(0) / n_genes
        # squared distances to the reference cells, less the per-cell constant |p|^2
        d2 = torch.mm(p, self.ref_pcs.T, out=self._workspace(p, "_ws_knn", (p.shape[0], self.ref_pcs.shape[0])))
        d2 = d2.mul_(-2).add_(self.ref_sqnorm)
        k = min(self.n_neighbors, self.ref_pcs.shape[0] - 1)
        if k == 1:  # a min-reduction is several times cheaper than topk
            knn = (d2.amin(1) + p_sq).clamp_min(0).sqrt()
        else:
            knn = (d2.topk(k, dim=1, largest=False).values + p_sq[:, None]).clamp_min(0).sqrt().mean(1)
        # A reference cell's nearest reference cell is itself: its distance is rounding noise, far
        # below any distance between two measured cells. Leave the cell itself out (rare at
        # inference; the rows are redone with one more neighbour).
        self_match = knn.square() <= self.self_tol * (p_sq + 1.0)
        if bool(self_match.any()):
            d2s = d2[self_match].topk(k + 1, dim=1, largest=False).values[:, 1:] + p_sq[self_match, None]
            knn = knn.masked_scatter(self_match, d2s.clamp_min(0).sqrt().mean(1))
        return torch.stack(
            [
                at_min / n_genes,
                below / n_genes,
                torch.log(resid + _RESIDUAL_FLOOR),
                torch.log(knn + _KNN_FLOOR),
            ],
            dim=1,
        )

    def differentiable(
        self, x: torch.Tensor, proj: torch.Tensor | None = None, *, width: float = SURROGATE_WIDTH
    ) -> torch.Tensor:
        """The four features of :meth:`forward`, differentiable with respect to ``x`` (no in-place buffers).

        The forward values equal :meth:`forward`'s (same operations, out of place). The two counts
        are step functions of ``x`` (their gradient is zero except within ``tol`` of the minimum):
        their backward pass is that of smooth stand-ins of width ``width`` (scaled units), a Gaussian
        bump ``exp(-((x - min) / width)^2 / 2)`` for ``frac_at_min`` and a logistic
        ``sigmoid((min - tol - x) / width)`` for ``frac_below_min`` (straight-through estimators).
        The clamps before the square roots pass gradients straight through; the kNN distance takes
        the gradient of its nearest reference cell.
        """
        n_genes = x.shape[1]
        with torch.no_grad():  # exact step-function counts (forward values only)
            v = (self.min_value + self.tol - x).clamp(0, 2 * self.tol)
            s1 = v.sum(1) / self.tol
            s2 = torch.linalg.vector_norm(v, dim=1).div(self.tol).square()
            below = (s2 - s1) / 2
            at_min = s1 - 2 * below
        off = (x - self.min_value) / width
        at_soft = torch.exp(-0.5 * off.square()).mean(1)
        below_soft = torch.sigmoid(-off - self.tol / width).mean(1)
        at_min = straight_through(at_min / n_genes, at_soft)
        below = straight_through(below / n_genes, below_soft)
        if proj is None:
            proj = F.linear(x, self.projection_weight())
        p = proj[:, :-1] - self.components @ self.pca_mean
        c_sq = torch.linalg.vector_norm(x, dim=1).square() - 2 * proj[:, -1] + self.pca_mean.square().sum()
        p_sq = p.square().sum(1)
        resid = straight_through((c_sq - p_sq).clamp_min(0), c_sq - p_sq) / n_genes
        d2 = torch.mm(p, self.ref_pcs.T) * -2 + self.ref_sqnorm
        k = min(self.n_neighbors, self.ref_pcs.shape[0] - 1)
        if k == 1:
            knn = _sqrt_st(d2.amin(1) + p_sq)
        else:
            knn = _sqrt_st(d2.topk(k, dim=1, largest=False).values + p_sq[:, None]).mean(1)
        self_match = (knn.square() <= self.self_tol * (p_sq + 1.0)).detach()
        if bool(self_match.any()):  # as in forward: a reference cell is not its own neighbour
            s = d2.topk(k + 1, dim=1, largest=False).values[:, 1:] + p_sq[:, None]
            knn = torch.where(self_match, _sqrt_st(s).mean(1), knn)
        return torch.stack([at_min, below, torch.log(resid + _RESIDUAL_FLOOR), torch.log(knn + _KNN_FLOOR)], dim=1)


def fit_input_reference(
    X_ref: np.ndarray, *, n_pcs: int = 30, n_neighbors: int = 1, tol: float = 1e-4
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


def first_linear(classifier: nn.Module) -> nn.Linear | None:
    """The classifier's first layer when it is ``body[0]`` of a :class:`~scadversarial.models.CellClassifier`-like MLP."""
    body = getattr(classifier, "body", None)
    if isinstance(body, nn.Sequential) and len(body) and isinstance(body[0], nn.Linear):
        return body[0]
    return None


def gradient_basis(classifier: nn.Module, grad_index: torch.Tensor) -> torch.Tensor:
    """``[W1 W1^T | W1[:, grad_index]]`` of the first layer ``W1`` (hidden x (hidden + len(grad_index))).

    For the gradient ``d1`` of the loss at the first layer's output, ``|grad_x|^2 = d1 W1 W1^T d1^T``
    and ``grad_x[:, grad_index] = d1 W1[:, grad_index]``: one small matrix product gives both.
    """
    w = first_linear(classifier).weight.detach()
    return torch.cat([w @ w.T, w[:, grad_index]], dim=1)


def _softmax_parts(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(probabilities, log-probabilities, softmax - one-hot(prediction), prediction)`` of ``logits``.

    The third is the gradient, with respect to the logits, of the cross-entropy at the predicted
    class. By hand: on a few classes, ``torch.log_softmax`` and ``F.cross_entropy``'s backward cost
    several times the arithmetic (measured ~90 us per op on 1,024 cells).
    """
    with torch.no_grad():
        z = logits - logits.amax(1, keepdim=True)
        e = z.exp()
        s = e.sum(1, keepdim=True)
        proba = e / s
        logp = z - s.log()
        pred = logits.argmax(1)
        # at the predicted class p - 1 = -(sum of the other probabilities): without the cancellation of p - 1,
        # which leaves only rounding noise for confident cells (autograd's cross-entropy backward has it)
        d_logits = proba.scatter(1, pred[:, None], 0.0)
        d_logits.scatter_(1, pred[:, None], -d_logits.sum(1, keepdim=True))
    return proba, logp, d_logits, pred


def _grad_stats(mean_abs, var_abs, l2):
    return torch.stack([torch.log(mean_abs + 1e-12), torch.log(var_abs + 1e-24), torch.log(l2 + 1e-12)], dim=1)


def _first_layer(
    x: torch.Tensor,
    lin1: nn.Linear,
    input_ref: InputConsistency | None,
    fused: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first layer's output and, with ``fused``, the PCA projection from the same matrix product."""
    if fused is None or input_ref is None:
        return lin1(x), None
    hp = F.linear(x, *fused)
    n_h, n_p = lin1.out_features, input_ref.components.shape[0] + 1
    return hp[:, :n_h].contiguous(), hp[:, n_h : n_h + n_p]


def _assemble(
    emb: torch.Tensor,
    logits: torch.Tensor,
    soft: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    grad: torch.Tensor | None,
    inputs: torch.Tensor | None,
) -> torch.Tensor:
    """The meta-feature columns in :func:`feature_names`' order: internal signals, then the optional groups."""
    proba, logp, _, pred = soft
    entropy = -(proba * logp).sum(1, keepdim=True)
    top1 = logits.gather(1, pred[:, None])
    margin = top1 - logits.scatter(1, pred[:, None], float("-inf")).amax(1, keepdim=True)
    parts = [emb, logits, proba, margin, entropy]
    parts += [p for p in (grad, inputs) if p is not None]
    return torch.cat(parts, dim=1)


def meta_feature_tensor(
    classifier: nn.Module,
    x: torch.Tensor,
    *,
    gradient: bool = True,
    input_ref: InputConsistency | None = None,
    grad_basis: torch.Tensor | None = None,
    fused: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Meta-features of scaled input ``x`` for a classifier with ``forward_with_embedding``.

    One forward pass gives the embedding and logits; with ``gradient=True`` one backward pass
    (no parameter gradients) gives the statistics of the input gradient of the cross-entropy at
    the predicted class. The classifier should be in eval mode. Returns a detached tensor whose
    columns follow :func:`feature_names`.

    Without ``grad_basis`` the full input gradient is formed (exact statistics). With
    ``grad_basis`` (:func:`gradient_basis` of a gene subset) and a classifier whose first layer is
    linear, the backward pass stops at the first layer's output ``d1``: the L2 norm is exact
    (``d1 W1 W1^T d1^T``) and the mean and variance of ``|grad|`` are estimated on the gene subset
    (``d1 W1[:, subset]``), which avoids the cells x genes gradient product. ``fused`` (weight,
    bias) stacks the first layer and ``input_ref.projection_weight()`` so that both come from one
    matrix product.
    """
    lin1 = first_linear(classifier) if grad_basis is not None else None
    proj = None
    if gradient and lin1 is not None:
        with torch.no_grad():
            h, proj = _first_layer(x, lin1, input_ref, fused)
        with torch.enable_grad():
            hg = h.requires_grad_(requires_grad=True)
            emb = classifier.body[1:](hg)
            logits = classifier.head(emb)
        soft = _softmax_parts(logits.detach())
        # the cross-entropy at the predicted class, summed (each row gets its own cell's gradient): its
        # gradient with respect to the logits is softmax - one-hot, formed here instead of by autograd
        (d1,) = torch.autograd.grad(logits, hg, grad_outputs=soft[2])
        emb, logits = emb.detach(), logits.detach()
        with torch.no_grad():
            h1 = d1.shape[1]
            q = (
                d1 @ grad_basis
                if input_ref is None
                else torch.mm(
                    d1, grad_basis, out=input_ref._workspace(d1, "_ws_grad", (d1.shape[0], grad_basis.shape[1]))
                )
            )
            l2 = (q[:, :h1] * d1).sum(1).clamp_min(0).sqrt()
            gs = q[:, h1:].abs_()
            mean_abs = gs.mean(1)
            var_abs = (gs.square().mean(1) - mean_abs.square()).clamp_min(0)
            grad = _grad_stats(mean_abs, var_abs, l2)
    elif gradient:
        with torch.enable_grad():
            xg = x.detach().requires_grad_(requires_grad=True)
            emb, logits = classifier.forward_with_embedding(xg)
        soft = _softmax_parts(logits.detach())
        (g,) = torch.autograd.grad(logits, xg, grad_outputs=soft[2])
        emb, logits = emb.detach(), logits.detach()
        n = g.shape[1]
        l2 = torch.linalg.vector_norm(g, dim=1)
        # in place: g is ours, and a fresh cells x genes allocation costs more than the abs itself
        # (vector_norm with ord=1 is several times slower on CPU)
        mean_abs = g.abs_().sum(1) / n
        var_abs = (l2.square() / n - mean_abs.square()).clamp_min(0)  # E|g|^2 - (E|g|)^2
        grad = _grad_stats(mean_abs, var_abs, l2)
    else:
        with torch.no_grad():
            emb, logits = classifier.forward_with_embedding(x)
        soft = _softmax_parts(logits)
    with torch.no_grad():
        inputs = input_ref(x, proj) if input_ref is not None else None
        return _assemble(emb, logits, soft, grad if gradient else None, inputs)


def _softmax_parts_differentiable(
    logits: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_softmax_parts` out of place and differentiable (same operations, same forward values).

    The prediction (an argmax) is a constant of the backward pass: the cross-entropy is taken at
    the predicted class, and the margin and the one-hot term are continuous where it changes.
    """
    z = logits - logits.detach().amax(1, keepdim=True)  # softmax is shift-invariant: the shift needs no gradient
    e = z.exp()
    s = e.sum(1, keepdim=True)
    proba = e / s
    logp = z - s.log()
    pred = logits.detach().argmax(1)
    onehot = torch.zeros_like(proba).scatter(1, pred[:, None], 1.0)
    others = proba * (1 - onehot)
    # p - 1 at the predicted class as minus the other probabilities (no cancellation; see _softmax_parts)
    d_logits = others - onehot * others.sum(1, keepdim=True)
    return proba, logp, d_logits, pred


def differentiable_meta_features(
    classifier: nn.Module,
    x: torch.Tensor,
    *,
    width: float = SURROGATE_WIDTH,
    gradient: bool = True,
    input_ref: InputConsistency | None = None,
    grad_basis: torch.Tensor | None = None,
    fused: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Meta-features of :func:`meta_feature_tensor`, differentiable with respect to the scaled input ``x``.

    Same arguments, columns and forward values as :func:`meta_feature_tensor` (the same operations,
    out of place, with no reused buffers), but the result keeps its graph: the gradient features
    are built with ``torch.autograd.grad(..., create_graph=True)`` so that their own gradient with
    respect to ``x`` exists (double backpropagation), and the step-function input features take
    smooth stand-ins in the backward pass (:meth:`InputConsistency.differentiable`, ``width``).
    The clamps at zero of the variance and the L2 norm pass gradients straight through.

    Slower than :func:`meta_feature_tensor` (a graph is kept for a second backward pass): use it
    for attacks on the detector, and the fast path for scoring.

    Examples
    --------
    >>> import torch
    >>> from scadversarial.models import CellClassifier
    >>> clf = CellClassifier([f"g{i}" for i in range(20)], ["a", "b"]).eval()
    >>> x = torch.randn(4, 20, requires_grad=True)
    >>> f = differentiable_meta_features(clf, x)
    >>> (g,) = torch.autograd.grad(f[:, -1].sum(), x)  # gradient of log |grad_x loss|
    >>> g.shape
    torch.Size([4, 20])
    """
    if not torch.is_grad_enabled():  # e.g. under torch.no_grad(): the gradient features still need autograd
        with torch.enable_grad():
            # no graph is wanted: the input gradient's own graph (double backprop) is not kept either
            args = (classifier, x.detach(), gradient, input_ref, grad_basis, fused, width)
            return _differentiable_meta_features(*args, create_graph=False).detach()
    args = (classifier, x, gradient, input_ref, grad_basis, fused, width)
    return _differentiable_meta_features(*args, create_graph=True)


def _differentiable_meta_features(
    classifier, x, gradient, input_ref, grad_basis, fused, width, *, create_graph: bool
) -> torch.Tensor:
    lin1 = first_linear(classifier) if grad_basis is not None else None
    proj = None
    if gradient and lin1 is not None:
        h, proj = _first_layer(x, lin1, input_ref, fused)
        if not h.requires_grad:  # a constant input: the gradient features still need a graph to h
            h = h.detach().requires_grad_(requires_grad=True)
        emb = classifier.body[1:](h)
        logits = classifier.head(emb)
        soft = _softmax_parts_differentiable(logits)
        (d1,) = torch.autograd.grad(logits, h, grad_outputs=soft[2], create_graph=create_graph)
        h1 = d1.shape[1]
        q = d1 @ grad_basis
        l2 = _sqrt_st((q[:, :h1] * d1).sum(1))
        gs = q[:, h1:].abs()
        mean_abs = gs.mean(1)
        var = gs.square().mean(1) - mean_abs.square()
        grad = _grad_stats(mean_abs, straight_through(var.clamp_min(0), var), l2)
    elif gradient:
        xg = x if x.requires_grad else x.detach().requires_grad_(requires_grad=True)
        emb, logits = classifier.forward_with_embedding(xg)
        soft = _softmax_parts_differentiable(logits)
        (g,) = torch.autograd.grad(logits, xg, grad_outputs=soft[2], create_graph=create_graph)
        n = g.shape[1]
        l2 = torch.linalg.vector_norm(g, dim=1)
        mean_abs = g.abs().sum(1) / n
        var = l2.square() / n - mean_abs.square()
        grad = _grad_stats(mean_abs, straight_through(var.clamp_min(0), var), l2)
    else:
        emb, logits = classifier.forward_with_embedding(x)
        soft = _softmax_parts_differentiable(logits)
    inputs = input_ref.differentiable(x, proj, width=width) if input_ref is not None else None
    return _assemble(emb, logits, soft, grad if gradient else None, inputs)


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
