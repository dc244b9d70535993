"""Classifier protocol: turn any supported classifier into ``proba_fn(X) -> probabilities`` plus its classes.

Black-box attacks only need per-cell class probabilities. Three kinds of classifiers are accepted:

- a :class:`torch.nn.Module` whose ``forward(x)`` returns logits (softmaxed here; run in eval mode,
  without gradients, in batches); its ``classes`` attribute, when present, names the classes;
- a scikit-learn style estimator with ``predict_proba`` (classes from ``classes_``);
- a plain callable ``X -> probabilities`` (cells x classes), with an optional ``classes`` list.

The adapter also counts the calls made to the user's classifier, which is the unit of cost of
every black-box search.

Linear classifiers (a :class:`torch.nn.Linear` module, or a scikit-learn ``LogisticRegression``
whose probabilities are a softmax of its decision function) also expose :meth:`ClassifierAdapter.linear_head`:
their weights, bias and the unit roundoff of their own arithmetic. A search may then compute the
per-cell types of a modified matrix from the unmodified logits plus the change of the modified genes
alone, and check with a rounding-error bound that the classifier's own computation could not give
another type (:class:`~scadversarial.attacks._oracle.ClusterOracle` does; cells too close to call
are classified by the classifier itself).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ClassifierAdapter", "LinearHead", "as_proba_fn"]


@dataclass(frozen=True)
class LinearHead:
    """A classifier whose per-cell type is the first argmax of ``X @ weight.T + bias``.

    Attributes
    ----------
    weight
        ``(n_classes, n_genes)`` float64 weights.
    bias
        ``(n_classes,)`` float64 bias.
    unit_roundoff
        Unit roundoff of the arithmetic the classifier itself uses (``2**-24`` for float32).

    """

    weight: np.ndarray
    bias: np.ndarray
    unit_roundoff: float


def _linear_head(classifier: Any, kind: str) -> LinearHead | None:
    """The :class:`LinearHead` of a linear classifier whose probabilities keep the order of its logits, or None."""
    if kind == "torch":
        import torch

        lin = classifier
        if isinstance(lin, torch.nn.Sequential) and len(lin) == 1:
            lin = lin[0]
        if type(lin) is not torch.nn.Linear or not lin.weight.dtype.is_floating_point:
            return None
        w = lin.weight.detach().cpu().double().numpy()
        b = lin.bias.detach().cpu().double().numpy() if lin.bias is not None else np.zeros(w.shape[0])
        u = float(torch.finfo(lin.weight.dtype).eps) / 2
        if lin.weight.dtype == torch.float32:  # float32 products may run in TF32 (10 bits) or bfloat16 (7 bits)
            precision = torch.get_float32_matmul_precision()
            if precision != "highest" or (lin.weight.is_cuda and torch.backends.cuda.matmul.allow_tf32):
                u = max(u, 2.0**-8 if precision == "medium" else 2.0**-11)
        return LinearHead(w, b, u)
    if kind == "sklearn":
        from sklearn.linear_model import LogisticRegression

        if type(classifier) is not LogisticRegression or not hasattr(classifier, "coef_"):
            return None
        coef = np.asarray(classifier.coef_, dtype=np.float64)
        inter = np.broadcast_to(np.asarray(classifier.intercept_, dtype=np.float64), (coef.shape[0],))
        n_classes = len(classifier.classes_)
        eps = float(np.finfo(np.result_type(classifier.coef_.dtype, np.float32)).eps) / 2
        if n_classes == 2 and coef.shape[0] == 1:  # p(class 1) = expit(d): logits (0, d) keep the order
            return LinearHead(np.vstack([np.zeros_like(coef), coef]), np.array([0.0, inter[0]]), eps)
        # one-vs-rest probabilities (older scikit-learn, liblinear) saturate and can tie: not linear here
        if getattr(classifier, "multi_class", "auto") == "ovr" or getattr(classifier, "solver", "") == "liblinear":
            return None
        if coef.shape[0] != n_classes:
            return None
        return LinearHead(coef, np.array(inter), eps)
    return None


def _is_torch_module(obj: Any) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, torch.nn.Module)


class ClassifierAdapter:
    """A classifier seen as ``proba_fn(X) -> (n_cells, n_classes)`` probabilities.

    Parameters
    ----------
    classifier
        A torch module returning logits, an estimator with ``predict_proba``, or a callable
        ``X -> probabilities``. An existing :class:`ClassifierAdapter` is wrapped again
        (sharing the same classifier, with its own call counter).
    classes
        Class names, in the order of the probability columns. Required for a callable or a torch
        module without a ``classes`` attribute unless integer class names ``0..K-1`` are fine.
    batch_size
        Rows per forward pass for torch modules (default 128: little padding is wasted on a cluster of a
        few hundred cells). Every forward pass gets exactly this many rows (the last block is padded,
        its padding discarded): torch kernels depend on the
        number of rows, so fixed-size blocks make each cell's probabilities independent of how the
        cells are stacked, and stacked (fast) and one-by-one (plain) searches agree bit for bit.
        Estimators and callables receive the whole matrix of one call.
    device
        Torch device for torch modules (``None``: the module's own device).

    Attributes
    ----------
    classes
        List of class names (str).
    n_calls
        Number of calls made to the underlying classifier so far (an evaluation of stacked candidates by
        the linear update of a linear classifier counts as one call).
    n_rows
        Number of cells (rows) classified so far.
    kind
        ``'torch'``, ``'sklearn'`` or ``'callable'``.

    """

    def __init__(
        self,
        classifier: Any,
        classes: Sequence | None = None,
        *,
        batch_size: int | None = None,
        device: Any = None,
    ) -> None:
        if isinstance(classifier, ClassifierAdapter):
            classes = classifier.classes if classes is None else classes
            batch_size = classifier.batch_size if batch_size is None else batch_size
            device = classifier.device if device is None else device
            classifier = classifier.classifier
        self.classifier = classifier
        self.batch_size = batch_size
        self.device = device
        self.n_calls = 0
        self.n_rows = 0
        self._pad = None
        self._linear: LinearHead | None | bool = False  # False: not looked up yet
        if _is_torch_module(classifier):
            self.kind = "torch"
            found = getattr(classifier, "classes", None)
        elif hasattr(classifier, "predict_proba") and callable(classifier.predict_proba):
            self.kind = "sklearn"
            found = getattr(classifier, "classes_", None)
        elif callable(classifier):
            self.kind = "callable"
            found = getattr(classifier, "classes", None)
        else:
            msg = (
                f"Unsupported classifier of type {type(classifier).__name__}. Pass a torch nn.Module returning "
                "logits, an estimator with `predict_proba`, or a callable `X -> probabilities` (cells x classes)."
            )
            raise TypeError(msg)
        if classes is None:
            classes = found
        self._classes = None if classes is None else [str(c) for c in classes]
        if self._classes is not None and len(set(self._classes)) != len(self._classes):
            msg = f"Class names must be unique, got {self._classes}."
            raise ValueError(msg)

    # ------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        """Class names in the order of the probability columns."""
        if self._classes is None:
            msg = (
                "The classifier's classes are unknown: pass `classes=[...]` (the names of the probability "
                "columns in order), or give the model a `classes` / `classes_` attribute."
            )
            raise ValueError(msg)
        return self._classes

    @property
    def n_features(self) -> int | None:
        """Number of input genes the classifier expects, when it says so."""
        clf = self.classifier
        for attr in ("n_features_in_", "n_features", "n_genes"):
            n = getattr(clf, attr, None)
            if isinstance(n, int | np.integer):
                return int(n)
        var_names = getattr(clf, "var_names", None)
        if var_names is not None and not callable(var_names):
            return len(var_names)
        return None

    @property
    def block_rows(self) -> int:
        """Rows per forward pass of a torch module (1 for other classifiers): stacked calls of whole blocks avoid padding."""
        return max(int(self.batch_size or 128), 1) if self.kind == "torch" else 1

    def linear_head(self) -> LinearHead | None:
        """Weights of a linear classifier (``torch.nn.Linear``, multinomial or binary ``LogisticRegression``), else None.

        Looked up once: the classifier must not be retrained while a search runs.
        """
        if self._linear is False:
            self._linear = _linear_head(self.classifier, self.kind)
        return self._linear

    def count(self, n_rows: int) -> None:
        """Count one evaluation of ``n_rows`` cells done from :meth:`linear_head` instead of a call."""
        self.n_calls += 1
        self.n_rows += int(n_rows)

    def reset_counter(self) -> None:
        """Set :attr:`n_calls` and :attr:`n_rows` to 0."""
        self.n_calls = 0
        self.n_rows = 0

    # ------------------------------------------------------------------
    def _torch_proba(self, X: np.ndarray) -> np.ndarray:
        import torch

        module = self.classifier
        try:
            param = next(module.parameters())
            mod_device, mod_dtype = param.device, param.dtype
        except StopIteration:
            mod_device, mod_dtype = torch.device("cpu"), torch.float32
        device = mod_device
        if self.device is not None:
            from .._settings import settings

            device = settings.torch_device(self.device)
            if device != mod_device:
                module = module.to(device)
        bs = self.block_rows
        # a C-contiguous numpy array of the module's dtype, for a CPU module, is read in place: torch.from_numpy
        # (~1 us a block) shares its memory as torch.as_tensor (~15 us) would, so the blocks hold the same values
        np_dtype = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}.get(mod_dtype)
        in_place = (
            device.type == "cpu"
            and np_dtype is not None
            and isinstance(X, np.ndarray)
            and X.dtype == np_dtype
            and X.flags.c_contiguous
            and X.flags.writeable
        )
        was_training = module.training
        if was_training:
            module.eval()
        logits_blocks = []
        try:
            with torch.no_grad():
                for start in range(0, X.shape[0], bs):
                    xb = X[start : start + bs]
                    xb = torch.from_numpy(xb) if in_place else torch.as_tensor(xb, dtype=mod_dtype, device=device)
                    n = xb.shape[0]
                    if n < bs:  # pad to a full block: same kernels for every block
                        pad = self._pad
                        if (
                            pad is None
                            or pad.shape != (bs, xb.shape[1])
                            or pad.dtype != xb.dtype
                            or pad.device != xb.device
                        ):
                            pad = self._pad = xb.new_zeros((bs, xb.shape[1]))
                        pad[:n] = xb  # rows past n hold earlier (finite) rows: their outputs are dropped
                        xb = pad
                    logits = module(xb)
                    if isinstance(logits, tuple | list):
                        logits = logits[0]
                    logits_blocks.append(logits)
                # each block's softmax, once all forward passes are done (the same arithmetic as right after each
                # pass, with fewer cache misses); by hand: torch.softmax costs ~40 us per block on a few classes.
                # Blocks of (block rows, classes) logits divide straight into one tensor of whole blocks.
                first = logits_blocks[0] if logits_blocks else None
                whole = first is not None and all(
                    lg.dim() == 2 and lg.shape == (bs, first.shape[1]) for lg in logits_blocks
                )
                out = first.new_empty((len(logits_blocks) * bs, first.shape[1])) if whole else None
                parts = []
                for k, logits in enumerate(logits_blocks):
                    e = logits.sub(logits.amax(dim=1, keepdim=True)).exp_()
                    if whole:
                        torch.div(e, e.sum(dim=1, keepdim=True), out=out[k * bs : (k + 1) * bs])
                    else:
                        n = min(bs, X.shape[0] - k * bs)
                        e = e.div_(e.sum(dim=1, keepdim=True))
                        parts.append((e[:n] if n < bs else e).numpy(force=True))
        finally:
            if was_training:
                module.train()
        if whole:
            return out[: X.shape[0]].numpy(force=True)
        if not parts:
            return np.zeros((0, len(self._classes or [])), dtype=np.float32)
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)

    def __call__(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities of the rows of ``X`` (one call to the classifier)."""
        X = np.asarray(X)
        if X.ndim != 2:
            msg = f"Expected a 2-D matrix (cells x genes), got shape {X.shape}."
            raise ValueError(msg)
        self.n_calls += 1
        self.n_rows += X.shape[0]
        if self.kind == "torch":
            P = self._torch_proba(X)
        elif self.kind == "sklearn":
            P = self.classifier.predict_proba(X)
        else:
            P = self.classifier(X)
        if hasattr(P, "detach"):
            P = P.detach().cpu().numpy()
        P = np.asarray(P)
        if P.ndim != 2 or P.shape[0] != X.shape[0]:
            msg = (
                f"The classifier returned an array of shape {P.shape} for {X.shape[0]} cells; expected "
                f"(n_cells, n_classes). A callable must return class probabilities, one row per cell."
            )
            raise ValueError(msg)
        if self._classes is not None and P.shape[1] != len(self._classes):
            msg = (
                f"The classifier returned {P.shape[1]} probability columns but {len(self._classes)} classes are "
                f"named ({self._classes}). Pass `classes=` matching the classifier's output columns."
            )
            raise ValueError(msg)
        if self._classes is None:
            self._classes = [str(i) for i in range(P.shape[1])]
        return P

    def __repr__(self) -> str:
        return f"ClassifierAdapter(kind={self.kind!r}, n_classes={len(self._classes or [])}, n_calls={self.n_calls})"


def as_proba_fn(
    classifier: Any, classes: Sequence | None = None, **kwargs
) -> tuple[Callable[[np.ndarray], np.ndarray], list[str]]:
    """Turn ``classifier`` into ``(proba_fn, classes)``.

    Parameters
    ----------
    classifier
        A torch module returning logits, an estimator with ``predict_proba``, or a callable
        ``X -> probabilities``.
    classes
        Class names in probability-column order (defaults to the model's ``classes`` / ``classes_``).
    **kwargs
        Passed to :class:`ClassifierAdapter` (``batch_size``, ``device``).

    Returns
    -------
    proba_fn
        A :class:`ClassifierAdapter`: ``proba_fn(X)`` returns an ``(n_cells, n_classes)`` array and
        counts its calls in ``proba_fn.n_calls``.
    classes
        The class names (str), or None when the classifier does not name them (they become ``'0'..'K-1'``
        at the first call).

    """
    adapter = ClassifierAdapter(classifier, classes, **kwargs)
    return adapter, adapter._classes
