"""Torch modules of the adversarial-cell detector.

:class:`AdversarialDetector` is one self-contained model: the plausibility rules' bound (fitted on
clean training cells), a frozen copy of the classifier it watches, the input-consistency reference
(fitted on clean training cells), the feature standardization, the optional triplet network, the
residual meta-detector and the decision threshold. Saving it (safetensors + ``config.json``) and
loading it reproduces its scores exactly; a detector saved before the rules existed loads without them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import nn

from .._settings import settings
from ..detection._features import (
    SURROGATE_WIDTH,
    InputConsistency,
    differentiable_meta_features,
    feature_names,
    gradient_basis,
    meta_feature_tensor,
)
from ..detection._fit import FeatureSpec
from ..detection._rule_layer import (
    CHECKS,
    RULE_LOGIT,
    CountChecks,
    RuleFit,
    TwoCountFit,
    check_layer,
    combine,
    rule_score,
)
from ..detection._rules import RULES
from ._base import SadModel, register_model_class
from .classifier import CellClassifier

#: ``singleton_min`` of a detector whose singleton check is off (a fraction is never negative; NaN
#: would make two equal detectors' buffers compare unequal).
SINGLETONS_OFF = -1.0
#: ``two_count_rate`` of a detector whose two-count check is off (a share is never negative).
TWO_COUNTS_OFF = -1.0


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


@dataclass(frozen=True)
class DetectorArchitecture:
    """Sizes of the detector's networks.

    Parameters
    ----------
    use_triplet
        Put the triplet network between the standardized features and the residual detector.
    triplet_hidden, triplet_dim
        Hidden width and output size of the triplet network.
    hidden, n_blocks, dropout
        Width, residual blocks and dropout of the residual detector.
    """

    use_triplet: bool = True
    triplet_hidden: int = 256
    triplet_dim: int = 64
    hidden: int = 128
    n_blocks: int = 2
    dropout: float = 0.1


@dataclass(frozen=True)
class DetectorReport:
    """What the detector makes of a batch of cells (:meth:`AdversarialDetector.explain_arrays`).

    Attributes
    ----------
    meta
        Raw meta-features (cells x features, float32).
    embedding
        Triplet embedding, or the standardized meta-features without a triplet network (float32).
    score
        The detector's score (float32): the learned score, or ``1 + log1p(violations) + log1p(excess)`` for
        a cell that breaks a plausibility rule (above every learned score).
    learned
        The learned detector's score, a probability (float32).
    rule_counts
        Cells x :data:`~scadversarial.detection.CHECKS`: violating entries per rule, then the
        singleton and two-count deficits (int64; zeros for a detector without rules or without that check).
    excess
        How far each cell lies outside the range counts can produce, in log units summed over its
        entries (:func:`~scadversarial.detection.rule_excess`; float64, 0 without rules).
    """

    meta: np.ndarray
    embedding: np.ndarray
    score: np.ndarray
    learned: np.ndarray
    rule_counts: np.ndarray
    excess: np.ndarray


@register_model_class
class AdversarialDetector(SadModel):
    """Composite detector: plausibility rules, then classifier copy -> meta-features -> (triplet net) -> residual detector.

    The rules (with ``rules=True``, the default detector of :func:`~scadversarial.tl.train_detector`)
    are a hard first layer: a cell whose scaled input no preprocessing of integer counts can
    produce (:func:`~scadversarial.detection.rule_counts`) scores ``1 + log1p(violations) + log1p(excess)``
    (``excess``: how far, in log units, its entries lie outside the range counts can produce,
    :func:`~scadversarial.detection.rule_excess`), above every learned score (a probability), and
    is always flagged. With ``singletons=True`` the same
    holds for a cell on the count lattice with too few genes at one count (its violations: the
    genes missing at one count, see :func:`~scadversarial.detection.check_counts`), and with
    ``two_counts=True`` for one with too few genes at two counts. Other cells get the learned score.

    Parameters
    ----------
    var_names
        Genes of the classifier input, in column order.
    classes
        Classes of the classifier.
    classifier
        Config of the watched :class:`~scadversarial.models.CellClassifier` (``hidden``, ``dropout``, ``clip``).
    features
        Meta-feature groups and the shape of the input-consistency reference
        (:class:`~scadversarial.detection.FeatureSpec`; default: every group).
    architecture
        Sizes of the triplet network and of the residual detector (:class:`DetectorArchitecture`).
    n_reference
        Number of reference cells of the input-consistency features.
    rules
        Put the plausibility rules in front (their bound is set by :meth:`set_rules`).
    singletons
        Add the singleton check to the rules (its threshold is set by :meth:`set_count_checks`).
    two_counts
        Add the two-count check to the rules (set by :meth:`set_count_checks`).
    classifier_id
        Id of the classifier the detector was trained against (for the record).

    """

    kind = "detector"

    def __init__(
        self,
        var_names: Sequence[str],
        classes: Sequence[str],
        classifier: dict,
        *,
        features: FeatureSpec | None = None,
        architecture: DetectorArchitecture | None = None,
        n_reference: int = 0,
        rules: bool = False,
        singletons: bool = False,
        two_counts: bool = False,
        classifier_id: str = "",
    ) -> None:
        var_names, classes = [str(v) for v in var_names], [str(c) for c in classes]
        spec, arch = features or FeatureSpec(), architecture or DetectorArchitecture()
        groups = spec.groups
        clf_cfg = {k: classifier[k] for k in ("hidden", "dropout", "clip", "filter_threshold") if k in classifier}
        super().__init__(
            {
                "var_names": var_names,
                "classes": classes,
                "classifier": clf_cfg,
                "groups": groups,
                "n_pcs": int(spec.n_pcs),
                "n_reference": int(n_reference),
                "n_neighbors": int(spec.n_neighbors),
                "tol": float(spec.tol),
                "grad_genes": int(spec.grad_genes),
                **{f.name: getattr(arch, f.name) for f in fields(arch)},
                "rules": bool(rules),
                "singletons": bool(singletons),
                "two_counts": bool(two_counts),
                "classifier_id": str(classifier_id),
            }
        )
        self.var_names, self.classes = var_names, classes
        self.classifier = CellClassifier(var_names, classes, **clf_cfg)
        for p in self.classifier.parameters():
            p.requires_grad_(requires_grad=False)
        n_emb = self.classifier.config["hidden"][-1]
        self.feature_names = feature_names(groups, n_emb, classes)
        n_feat = len(self.feature_names)
        self.input_ref = (
            InputConsistency(len(var_names), spec.n_pcs, n_reference, spec.n_neighbors, spec.tol)
            if spec.input
            else None
        )
        self.register_buffer("feat_mean", torch.zeros(n_feat))
        self.register_buffer("feat_std", torch.ones(n_feat))
        self.register_buffer("threshold", torch.tensor(0.5))
        if rules:  # a detector saved before the rules existed has neither buffer
            self.register_buffer("rule_zero_bound", torch.tensor(0.0, dtype=torch.float64))
            self.register_buffer("rule_lattice", torch.tensor(data=False))
            # inf: no ceiling below the clip (a detector saved before it loads so, see _load_from_state_dict)
            self.register_buffer("rule_log_max", torch.tensor(float("inf"), dtype=torch.float64))
        if singletons:  # a negative fraction: the check is off (set_singletons found no count lattice)
            self.register_buffer("singleton_min", torch.tensor(SINGLETONS_OFF, dtype=torch.float64))
        if two_counts:  # a detector saved before the two-count check has neither buffer
            self.register_buffer("two_count_rate", torch.tensor(TWO_COUNTS_OFF, dtype=torch.float64))
            self.register_buffer("two_count_z_min", torch.tensor(0.0, dtype=torch.float64))
        # a weak-input filter is the classifier's first module: no first-layer shortcut, the exact gradient instead
        sub = spec.gradient and spec.grad_genes > 0 and "filter_threshold" not in clf_cfg
        n_sub = min(int(spec.grad_genes), len(var_names)) if sub else 0
        h1 = self.classifier.config["hidden"][0]
        self.register_buffer("grad_index", torch.arange(n_sub, dtype=torch.long))
        self.register_buffer("grad_basis", torch.zeros((h1, h1 + n_sub) if n_sub else (0, 0)))
        n_z = arch.triplet_dim if arch.use_triplet else n_feat
        self.triplet = TripletNet(n_feat, arch.triplet_hidden, arch.triplet_dim) if arch.use_triplet else None
        self.detector = ResidualDetector(n_z, arch.hidden, arch.n_blocks, arch.dropout)

    @classmethod
    def from_config(cls, config: dict) -> AdversarialDetector:
        """Rebuild from the flat config a saved detector stores (older ones lack ``'rules'``, ``'singletons'`` or ``'two_counts'``: those off)."""
        c = dict(config)
        groups = c.get("groups", ["internal", "gradient", "input"])
        unknown = sorted(set(groups) - {"internal", "gradient", "input"})
        if unknown or "internal" not in groups:
            msg = (
                f"Feature groups must include 'internal' and be among ('internal', 'gradient', 'input'); got {groups}."
            )
            raise ValueError(msg)
        spec = FeatureSpec(
            gradient="gradient" in groups,
            input="input" in groups,
            **{k: c[k] for k in ("n_pcs", "n_neighbors", "grad_genes", "tol") if k in c},
        )
        arch = DetectorArchitecture(**{f.name: c[f.name] for f in fields(DetectorArchitecture) if f.name in c})
        return cls(
            c["var_names"],
            c["classes"],
            c["classifier"],
            features=spec,
            architecture=arch,
            n_reference=int(c.get("n_reference", 0)),
            rules=bool(c.get("rules", False)),
            singletons=bool(c.get("singletons", False)),
            two_counts=bool(c.get("two_counts", False)),
            classifier_id=str(c.get("classifier_id", "")),
        )

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

    @property
    def has_rules(self) -> bool:
        """Whether the plausibility rules are the detector's first layer."""
        return bool(self.config.get("rules", False))

    def set_rules(self, fit: RuleFit) -> None:
        """Set the rules' bound and lattice switch (:func:`~scadversarial.detection.fit_rules` on clean training cells)."""
        if not self.has_rules:
            msg = "This detector was built without rules (rules=False); build it with rules=True."
            raise ValueError(msg)
        self.rule_zero_bound.fill_(float(fit.zero_bound))
        self.rule_lattice.fill_(bool(fit.lattice))
        self.rule_log_max.fill_(float(fit.log_max))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """A detector saved before the log ceiling existed loads with it off (``inf``): its flags stay as they were."""
        if self.has_rules and prefix + "rule_zero_bound" in state_dict and prefix + "rule_log_max" not in state_dict:
            state_dict[prefix + "rule_log_max"] = torch.tensor(float("inf"), dtype=torch.float64)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def rule_fit(self) -> RuleFit:
        """What the rules learned (:meth:`set_rules`); a detector without rules raises."""
        if not self.has_rules:
            msg = "This detector was built without rules (rules=False); build it with rules=True."
            raise ValueError(msg)
        return RuleFit(float(self.rule_zero_bound), bool(self.rule_lattice), float(self.rule_log_max))

    def set_singletons(self, min_fraction: float | None) -> None:
        """Set the singleton threshold (:func:`~scadversarial.detection.fit_singleton_min`; ``None``: the check off)."""
        if not self.config.get("singletons", False):
            msg = (
                "This detector was built without the singleton check (singletons=False); build it with singletons=True."
            )
            raise ValueError(msg)
        self.singleton_min.fill_(SINGLETONS_OFF if min_fraction is None else float(min_fraction))

    def set_count_checks(self, checks: CountChecks) -> None:
        """Set the count-profile checks' thresholds (:func:`~scadversarial.detection.fit_count_checks`; ``None``: off)."""
        if checks.two_counts is not None and not self.config.get("two_counts", False):
            msg = (
                "This detector was built without the two-count check (two_counts=False); build it with two_counts=True."
            )
            raise ValueError(msg)
        if checks.singleton_min is not None or self.config.get("singletons", False):
            self.set_singletons(checks.singleton_min)  # raises, changing nothing, without the singleton check
        if self.config.get("two_counts", False):
            two = checks.two_counts
            self.two_count_rate.fill_(TWO_COUNTS_OFF if two is None else float(two.rate))
            self.two_count_z_min.fill_(0.0 if two is None else float(two.z_min))

    @property
    def singleton_threshold(self) -> float | None:
        """The singleton check's threshold (fraction of expressed genes at one count), ``None`` when off."""
        value = float(self.singleton_min) if self.config.get("singletons", False) else SINGLETONS_OFF
        return None if value < 0 else value

    @property
    def count_checks(self) -> CountChecks:
        """The thresholds of the count-profile checks (``None`` for a check that is off)."""
        two = None
        if self.config.get("two_counts", False) and float(self.two_count_rate) >= 0:
            two = TwoCountFit(float(self.two_count_rate), float(self.two_count_z_min))
        return CountChecks(self.singleton_threshold, two)

    def rule_counts(self, x: torch.Tensor) -> torch.Tensor:
        """Violating entries per cell and rule of scaled input ``x`` (cells x RULES, int64; not differentiable)."""
        return self.check_counts(x)[:, : len(RULES)]

    def check_counts(self, x: torch.Tensor) -> torch.Tensor:
        """Per cell, the violations of each rule and the count-check deficits of scaled input ``x`` (cells x CHECKS, int64).

        See :func:`~scadversarial.detection.check_counts`; zeros for a detector without rules. Not differentiable.
        """
        return self.check_layer(x)[0]

    def check_layer(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(check counts, excess)`` of scaled input ``x`` in one pass (:func:`~scadversarial.detection.check_layer`).

        Zeros for a detector without rules. Not differentiable.
        """
        if not self.has_rules:
            n = x.shape[0]
            return (
                torch.zeros((n, len(CHECKS)), dtype=torch.long, device=x.device),
                torch.zeros(n, dtype=torch.float64, device=x.device),
            )
        t = self.classifier.transform
        clip = None if t.clip is None else float(t.clip)
        return check_layer(x, t.mean, t.std, clip, self.rule_fit, self.count_checks)

    def _parts(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(meta_features, embedding, learned score, check counts, excess)`` of scaled input ``x``."""
        f = self.meta_features(x)
        with torch.no_grad():
            z = self.embed(f)
            learned = torch.sigmoid(self.detector(z))
        return f, z, learned, *self.check_layer(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(meta_features, embedding, score)`` of scaled input ``x``.

        ``score`` is the learned probability, or ``1 + log1p(violations) + log1p(excess)`` for a cell that
        breaks a rule.
        """
        f, z, learned, counts, excess = self._parts(x)
        n = counts.sum(1).double()
        hard = rule_score(n, excess).to(learned.dtype)
        return f, z, torch.where(n > 0, hard, learned)

    def score_logit(self, x: torch.Tensor, *, width: float = SURROGATE_WIDTH) -> torch.Tensor:
        """Detector logit of scaled input ``x`` (cells x genes), differentiable with respect to ``x``.

        For a cell no plausibility rule objects to, ``sigmoid(score_logit(x))`` equals the score of
        the fast path (:meth:`forward`, :meth:`score_arrays`, :func:`~scadversarial.tl.detect`) up to
        float rounding (1e-5), and ``score_logit(x) >= logit(threshold)`` is the detector's flag.
        Unlike the fast path, the meta-features keep their graph
        (:func:`~scadversarial.detection.differentiable_meta_features`): the gradient features by
        double backpropagation, the step-function input features (``frac_at_min``,
        ``frac_below_min``) with smooth stand-ins of width ``width`` (scaled units) in the backward
        pass only. This is the path for a detector-aware (adaptive) attacker, e.g. PGD on
        ``loss - weight * det.score_logit(x)``. It runs in evaluation mode (dropout off,
        deterministic) whatever the module's mode, and costs about 2-3x the fast path.

        **The rules are not differentiable.** They count entries that no preprocessing can
        produce, a step function of ``x``. A cell that breaks one gets the value
        ``1e4 + log1p(violations) + log1p(excess)`` (far above any learned logit, so it is always flagged
        and an attacker choosing among its iterates sees it), but the gradient stays the learned
        detector's: the rules give an attacker no direction to follow, only a verdict. The
        probability ``sigmoid`` of that value is 1, while :meth:`forward` scores the cell
        ``1 + log1p(violations) + log1p(excess)``.

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
            logit = self.detector(self.embed(f))
            if not self.has_rules:
                return logit
            counts, excess = self.check_layer(x)
            n = counts.sum(1).double()
            hard = rule_score(n, excess, RULE_LOGIT).to(logit.dtype)
            # the value of the rules, the gradient of the learned detector (straight through)
            return torch.where(n > 0, logit + (hard - logit).detach(), logit)
        finally:
            self.train(was_training)

    def score_differentiable(self, x: torch.Tensor, *, width: float = SURROGATE_WIDTH) -> torch.Tensor:
        """Detector score (probability) of scaled input ``x``: ``sigmoid(score_logit(x))``, differentiable.

        The rules enter as a value, not a gradient (see :meth:`score_logit`): a rule-breaking cell scores 1.

        Examples
        --------
        >>> s = det.score_differentiable(torch.as_tensor(X_scaled[:8]))  # doctest: +SKIP
        >>> flagged = s >= det.threshold  # doctest: +SKIP
        """
        return torch.sigmoid(self.score_logit(x, width=width))

    def explain_arrays(
        self, X: np.ndarray, *, batch_size: int | None = None, device=None, progress_bar: bool = True
    ) -> DetectorReport:
        """Meta-features, embedding, scores and rule counts of a scaled matrix, in evaluation mode and batches.

        Returns
        -------
        A :class:`DetectorReport`.
        """
        from .._settings import progress

        was_training = self.training
        self.eval()
        dev = settings.torch_device(device)
        self.to(dev)
        bs = int(batch_size or settings.batch_size)
        parts: list[list[np.ndarray]] = [[], [], [], [], []]
        try:
            starts = range(0, X.shape[0], bs)
            for start in progress(
                starts, desc="detect", unit="batch", disable=not (progress_bar and settings.progress)
            ):
                xb = torch.as_tensor(np.ascontiguousarray(X[start : start + bs]), dtype=torch.float32, device=dev)
                for out, t in zip(parts, self._parts(xb), strict=True):
                    out.append(t.cpu().numpy())
        finally:
            self.train(was_training)
        if not parts[0]:
            n_z = self.config["triplet_dim"] if self.triplet is not None else len(self.feature_names)
            parts = [
                [np.zeros((0, len(self.feature_names)), np.float32)],
                [np.zeros((0, n_z), np.float32)],
                [np.zeros(0, np.float32)],
                [np.zeros((0, len(CHECKS)), np.int64)],
                [np.zeros(0, np.float64)],
            ]
        f, z, learned, counts, excess = (np.concatenate(p) for p in parts)
        score = combine(learned, counts.sum(1), excess).astype(np.float32)
        return DetectorReport(f, z, score, learned, counts, excess)

    def score_arrays(
        self, X: np.ndarray, *, batch_size: int | None = None, device=None, progress_bar: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(meta_features, embedding, score)`` of a scaled matrix as float32 arrays (:meth:`explain_arrays`)."""
        rep = self.explain_arrays(X, batch_size=batch_size, device=device, progress_bar=progress_bar)
        return rep.meta, rep.embedding, rep.score


__all__ = [
    "AdversarialDetector",
    "DetectorArchitecture",
    "DetectorReport",
    "ResBlock",
    "ResidualDetector",
    "TripletNet",
]
