"""Baselines that score a cell against a reference of clean training cells: LID and kernel density + BU.

Array level (no AnnData inside); registered by name in :data:`scadversarial.detection.BASELINES`
(see :mod:`scadversarial.detection.baselines` for the table of every baseline).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .._docs import doc_params
from ._calibrated import RngLike, _as_float32, _Baseline, _batches, _class_codes, _eval_mode, _rng

#: Neighbours for LID estimates (Ma et al. 2018 use 10-20 on minibatches of 100).
LID_NEIGHBORS = 20
#: Reference cells of LID: 5x Ma et al.'s minibatch of 100, a stable estimate at k=20 that keeps
#: the cells x reference distance products small.
LID_REFERENCE = 500
#: Reference cells of the kernel density: enough for every class of a PBMC-sized training split.
KD_REFERENCE = 2000
#: A distance this small relative to the k-th one is a cell meeting itself in the reference.
SELF_MATCH = 1e-6
#: k of the bandwidth rule of the kernel density: the median distance of a reference cell to its
#: k-th nearest other reference cell, the scale on which the density varies.
BANDWIDTH_NEIGHBORS = 10
#: Forward passes with dropout on for the Bayesian-uncertainty (MC-dropout) estimate.
MC_SAMPLES = 30
#: Floor of scores before a logarithm (distances and L1 distances of probabilities can be 0).
LOG_FLOOR = 1e-12
#: At most this fraction of the clean training cells goes to a reference (LID, kernel density):
#: the rest are scored against it to fit the score's scale or the logistic regression.
REFERENCE_FRACTION = 0.5


def _activations(classifier: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Outputs of every ReLU of ``classifier.body`` (the last is the embedding) and the logits, in eval mode."""
    out, h = [], x
    for m in classifier.body:
        h = m(h)
        if isinstance(m, nn.ReLU):
            out.append(h)
    return [*out, classifier.head(h)]


def _mc_dropout_proba(classifier: nn.Module, x: torch.Tensor, n_samples: int, gen: torch.Generator) -> torch.Tensor:
    """Softmax of ``n_samples`` passes with dropout masks drawn from ``gen`` (``samples x cells x classes``).

    The masks come from a local generator, so the estimate is reproducible and global RNG state
    is left alone (``nn.Dropout`` in training mode would draw from it).
    """
    body = list(classifier.body)
    first = next((i for i, m in enumerate(body) if isinstance(m, nn.Dropout) and m.p > 0), len(body))
    h0 = x
    for m in body[:first]:  # everything before the first dropout is the same in every pass: once
        h0 = m(h0)
    probs = []
    for _ in range(n_samples):
        h = h0
        for m in body[first:]:
            if isinstance(m, nn.Dropout) and m.p > 0:
                keep = torch.rand(h.shape, generator=gen, device=h.device, dtype=h.dtype) >= m.p
                h = h * keep / (1 - m.p)
            else:
                h = m(h)
        probs.append(torch.softmax(classifier.head(h), 1))
    return torch.stack(probs)


#: Docstring fragment of the detectors that keep a reference of clean training cells.
_DOC_REFERENCE = """\
n_reference
    Largest number of reference cells.
batch_size, device
    Scoring batches and torch device."""


@dataclass(frozen=True)
class ReferenceSplit:
    """Rows of the training cells: a clean reference, and the clean and adversarial rows scored against it."""

    reference: np.ndarray
    clean: np.ndarray
    adversarial: np.ndarray


def reference_split(
    n_clean: int, n_adv: int, n_reference: int, rng: np.random.Generator | int | None = None
) -> ReferenceSplit:
    """Divide training cells into a reference and the rows scored against it (for LID and the kernel density).

    At most :data:`REFERENCE_FRACTION` of the ``n_clean`` clean cells (and at most
    ``n_reference``) form the reference; the other clean cells are scored against it. When
    ``n_adv`` is a multiple of ``n_clean``, adversarial row ``i`` is taken as an attacked copy of
    clean row ``i % n_clean`` (attack layers of the same cells stacked), and the copies of
    reference cells are left out: at test time no attacked cell has its clean source in the
    reference either. Otherwise all adversarial rows are kept.

    Examples
    --------
    >>> s = reference_split(10, 20, 100, rng=0)
    >>> len(s.reference), len(s.clean), len(s.adversarial)
    (5, 5, 10)
    """
    if n_clean < 2:
        msg = f"A reference needs at least 2 clean training cells, got {n_clean}; pass more cells in X_clean."
        raise ValueError(msg)
    n_ref = int(min(n_reference, max(1, int(REFERENCE_FRACTION * n_clean))))
    perm = _rng(rng).permutation(n_clean)
    ref, rest = np.sort(perm[:n_ref]), np.sort(perm[n_ref:])
    adv = np.arange(n_adv)
    if n_adv and n_adv % n_clean == 0:
        adv = adv[~np.isin(adv % n_clean, ref)]
    return ReferenceSplit(ref, rest, adv)


def _lid(d: torch.Tensor, k: int) -> torch.Tensor:
    """Maximum-likelihood LID from distances ``d`` (cells x reference cells), leaving out a self-match."""
    r = d.topk(min(k + 1, d.shape[1]), dim=1, largest=False).values
    self_match = r[:, :1] <= SELF_MATCH * r[:, -1:]
    r = torch.where(self_match, r[:, 1:], r[:, :-1]) if r.shape[1] > k else r
    r = r.clamp_min(LOG_FLOOR)
    mean_log = torch.log(r / r[:, -1:]).mean(1)
    return -1 / mean_log.clamp_max(-LOG_FLOOR)


class _FeatureBaseline(_Baseline):
    """A detector scoring a few features per cell against a clean reference (LID, KD + BU).

    Subclasses implement ``_features``; :meth:`_fit_combination` turns them into one score.
    """

    n_reference: int

    def _features(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _split(
        self, X_clean: np.ndarray, X_adv: np.ndarray | None, rng: RngLike
    ) -> tuple[np.ndarray, np.ndarray | None, ReferenceSplit]:
        """Training cells as float32 and their :func:`reference_split`."""
        X_clean = _as_float32(X_clean)
        X_adv = None if X_adv is None else _as_float32(X_adv)
        return X_clean, X_adv, reference_split(len(X_clean), 0 if X_adv is None else len(X_adv), self.n_reference, rng)

    def _fit_combination(self, X_clean: np.ndarray, X_adv: np.ndarray | None, split: ReferenceSplit) -> None:
        """The logistic regression on the scored rows' features (with ``X_adv``) and the clean features' scale."""
        F_clean = self._features(X_clean[split.clean])
        self.model_ = _fit_logistic(F_clean, None if X_adv is None else self._features(X_adv[split.adversarial]))
        self.center_, self.scale_ = _zscore_stats(F_clean)

    def score(self, X: np.ndarray) -> np.ndarray:
        """Scores of scaled cells ``X`` (float64; higher is more suspicious): their combined features."""
        return _combine(self._features(self._check_input(X)), self.model_, self.center_, self.scale_)


@doc_params(doc_reference=_DOC_REFERENCE)
class LIDDetector(_FeatureBaseline):
    """Local intrinsic dimensionality (Ma et al. 2018) of the classifier's layers.

    The LID of a cell in each hidden layer (after its ReLU; the last is the embedding) and in the
    logits, estimated from its ``k`` nearest cells in a reference of clean training cells
    (maximum likelihood: ``-1 / mean_i log(r_i / r_k)``). With adversarial training cells, a
    logistic regression on the standardized LIDs gives the score (its log-odds); without, the
    mean z-score of the LIDs (adversarial regions have a higher LID). Reference and scored rows
    are divided by :func:`reference_split`.

    Parameters
    ----------
    k
        Nearest neighbours of the LID estimate.
    {doc_reference}

    Examples
    --------
    >>> det = LIDDetector(k=20).fit(clf, X_train, X_adv=X_train_pgd, rng=0)  # doctest: +SKIP
    """

    name = "lid"

    def __init__(
        self,
        *,
        k: int = LID_NEIGHBORS,
        n_reference: int = LID_REFERENCE,
        batch_size: int | None = None,
        device: str | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, device=device)
        if k < 2:
            msg = f"LID needs k >= 2 neighbours, got k={k}."
            raise ValueError(msg)
        self.k, self.n_reference = int(k), int(n_reference)

    @torch.no_grad()
    def _features(self, X: np.ndarray) -> np.ndarray:
        with _eval_mode(self.classifier, self.device) as dev:
            refs = [r.to(dev) for r in self.reference_]
            out = []
            for b in _batches(len(X), self.batch_size):
                acts = _activations(self.classifier, torch.as_tensor(X[b], device=dev))
                out.append(torch.stack([_lid(torch.cdist(a, r), self.k) for a, r in zip(acts, refs, strict=True)], 1))
        return torch.cat(out).double().cpu().numpy() if out else np.zeros((0, len(self.reference_)))

    def _fit(self, X_clean: np.ndarray, X_adv: np.ndarray | None, y: np.ndarray | None, rng: RngLike) -> None:
        """Reference activations, then the logistic regression (with ``X_adv``) or the clean LIDs' scale."""
        X_clean, X_adv, split = self._split(X_clean, X_adv, rng)
        if len(split.reference) <= self.k:
            msg = f"LID with k={self.k} needs more than {self.k} reference cells; pass more clean cells or lower k."
            raise ValueError(msg)
        with torch.no_grad(), _eval_mode(self.classifier, self.device) as dev:
            acts = _activations(self.classifier, torch.as_tensor(X_clean[split.reference], device=dev))
        self.reference_ = [a.cpu() for a in acts]
        self._fit_combination(X_clean, X_adv, split)


def _zscore_stats(F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    std = F.std(0)
    return F.mean(0), np.where(std > 0, std, 1.0)


def _fit_logistic(F_clean: np.ndarray, F_adv: np.ndarray | None):
    """Standardize + logistic regression (balanced classes) on clean (0) and adversarial (1) features; None without."""
    if F_adv is None or not len(F_adv):
        return None
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = np.nan_to_num(np.r_[F_clean, F_adv])
    y = np.r_[np.zeros(len(F_clean)), np.ones(len(F_adv))]
    return make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=1000)).fit(X, y)


def _combine(F: np.ndarray, model, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    if model is not None:
        return model.decision_function(np.nan_to_num(F)).astype(np.float64)
    return ((F - center) / scale).mean(1)


# ----------------------------------------------------------------------------- KD + BU
@doc_params(doc_reference=_DOC_REFERENCE)
class KernelDensityDetector(_FeatureBaseline):
    """Kernel density and Bayesian uncertainty (Feinman et al. 2017).

    Two features per cell: the negative log Gaussian kernel density of its 64-d embedding among
    clean reference cells of its **predicted** class (all reference cells when that class has
    none), and the MC-dropout uncertainty ``mean_t |p_t|^2 - |mean_t p_t|^2`` over ``n_samples``
    passes with dropout on (masks from a local generator seeded at fit: scores are reproducible
    and global RNG state is untouched). With adversarial training cells, a logistic regression on
    the standardized pair gives the score (log-odds); without, their mean z-score. Reference and
    scored rows are divided by :func:`reference_split`.

    Parameters
    ----------
    bandwidth
        Kernel width in embedding units; ``None``: the median distance of a reference cell to its
        :data:`BANDWIDTH_NEIGHBORS`-th nearest other reference cell.
    n_samples
        MC-dropout passes.
    {doc_reference}

    Examples
    --------
    >>> det = KernelDensityDetector().fit(clf, X_train, X_adv=X_train_pgd, rng=0)  # doctest: +SKIP
    """

    name = "kd_bu"

    def __init__(
        self,
        *,
        bandwidth: float | None = None,
        n_samples: int = MC_SAMPLES,
        n_reference: int = KD_REFERENCE,
        batch_size: int | None = None,
        device: str | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, device=device)
        if bandwidth is not None and not bandwidth > 0:
            msg = f"bandwidth must be positive (or None for the nearest-neighbour rule), got {bandwidth}."
            raise ValueError(msg)
        if n_samples < 2:
            msg = f"MC-dropout needs n_samples >= 2 passes, got {n_samples}."
            raise ValueError(msg)
        self.bandwidth, self.n_samples, self.n_reference = bandwidth, int(n_samples), int(n_reference)

    @torch.no_grad()
    def _features(self, X: np.ndarray) -> np.ndarray:
        clf = self.classifier
        with _eval_mode(clf, self.device) as dev:
            gen = torch.Generator(device=dev).manual_seed(self.seed_)
            ref = self.ref_emb_.to(dev)
            ref_cls = self.ref_cls_.to(dev)
            out = []
            for b in _batches(len(X), self.batch_size):
                x = torch.as_tensor(X[b], device=dev)
                emb, logits = clf.forward_with_embedding(x)
                pred = logits.argmax(1)
                logk = -torch.cdist(emb.double(), ref).square() / (2 * self.bandwidth_**2)
                same = ref_cls[None, :] == pred[:, None]
                has = same.any(1, keepdim=True)
                mask = torch.where(has, same, torch.ones_like(same))
                logk = logk.masked_fill(~mask, float("-inf"))
                log_kd = logk.logsumexp(1) - mask.sum(1).double().log()
                p = _mc_dropout_proba(clf, x, self.n_samples, gen).double()
                bu = p.square().sum(2).mean(0) - p.mean(0).square().sum(1)
                out.append(torch.stack([-log_kd, bu], 1))
        return torch.cat(out).cpu().numpy() if out else np.zeros((0, 2))

    def _fit(self, X_clean: np.ndarray, X_adv: np.ndarray | None, y: np.ndarray | None, rng: RngLike) -> None:
        """Reference embeddings and classes, bandwidth, then the logistic regression or the clean features' scale."""
        gen = _rng(rng)
        if y is not None and len(y) != len(X_clean):
            msg = f"`y` has {len(y)} labels for {len(X_clean)} cells; pass one label per row of X_clean."
            raise ValueError(msg)
        X_clean, X_adv, split = self._split(X_clean, X_adv, gen)
        clf = self.classifier
        logits, emb = clf.predict_arrays(X_clean[split.reference], batch_size=self.batch_size, device=self.device)
        codes = _class_codes(clf, None if y is None else np.asarray(y)[split.reference], logits)
        self.ref_emb_ = torch.as_tensor(emb, dtype=torch.float64)
        self.ref_cls_ = torch.as_tensor(codes)
        if self.bandwidth is None:
            d = torch.cdist(self.ref_emb_, self.ref_emb_)
            k = min(BANDWIDTH_NEIGHBORS, len(d) - 1)
            kth = d.topk(k + 1, dim=1, largest=False).values[:, k]  # column 0 is the cell itself
            self.bandwidth_ = float(kth.median().clamp_min(LOG_FLOOR))
        else:
            self.bandwidth_ = float(self.bandwidth)
        self.seed_ = int(gen.integers(2**63 - 1))
        self._fit_combination(X_clean, X_adv, split)


__all__ = ["KernelDensityDetector", "LIDDetector", "ReferenceSplit", "reference_split"]
