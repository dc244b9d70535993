"""Classifier protocol: turn any supported classifier into ``proba_fn(X) -> probabilities`` plus its classes.

Black-box attacks only need per-cell class scores whose first argmax is the cell's type. Four kinds of
classifiers are accepted:

- a :class:`torch.nn.Module` whose ``forward(x)`` returns logits (softmaxed here; run in eval mode,
  without gradients, in batches); its ``classes`` attribute, when present, names the classes;
- a CellTypist ``Model`` (``celltypist.models.Model``): its scaler, the clip at 10 and its classifier's
  decision values, exactly as ``celltypist.annotate`` computes them from log1p-normalized (1e4) values;
- a scikit-learn style estimator with ``predict_proba`` (classes from ``classes_``), a ``Pipeline`` included;
- a plain callable ``X -> probabilities`` (cells x classes), with an optional ``classes`` list.

``output`` says which scores a search reads: ``'proba'`` (probabilities, the default), ``'logits'``
(decision values: a torch module's logits, an estimator's ``decision_function``, CellTypist's decision
matrix) or ``'log_proba'``. Probabilities can underflow to 0 or saturate at 1 for several classes at once
(CellTypist's one-vs-rest probabilities, an ``SGDClassifier`` far from its training data): every such tie
goes to the class listed first. The adapter counts the rows whose top score is tied
(:attr:`ClassifierAdapter.n_tied`, :meth:`ClassifierAdapter.tie_message`); decision values do not tie
from underflow.

A classifier may declare its genes (``genes=``, or a ``var_names`` / ``features`` /
``feature_names_in_`` attribute): the AnnData-facing tools then give it exactly those columns, by name.

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

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ._linear_head import LinearHead, linear_head

__all__ = ["ClassifierAdapter", "ClassifierSpec", "LinearHead", "TiedScoresWarning", "as_proba_fn", "check_output"]

Output = Literal["proba", "logits", "log_proba"]
_OUTPUTS = ("proba", "logits", "log_proba")
# CellTypist clips scaled values above this (celltypist.classifier.Classifier.celltype: `indata[indata > 10] = 10`)
_CELLTYPIST_CLIP = 10.0


class TiedScoresWarning(UserWarning):
    """Cells whose top class scores were tied (first class taken): the answer depends on the tie, not the model."""


def check_output(output: str) -> str:
    """Check an ``output`` option (the one place that validates it)."""
    if output not in _OUTPUTS:
        msg = (
            f"output must be 'proba' (probabilities), 'logits' (decision values) or 'log_proba', got {output!r}. "
            "Use 'logits' for a classifier whose probabilities underflow or saturate."
        )
        raise ValueError(msg)
    return output


@dataclass(frozen=True)
class ClassifierSpec:
    """A classifier and how to read it: pass it as ``classifier=`` to any black-box tool.

    Attributes
    ----------
    model
        A torch module returning logits, a CellTypist ``Model``, an estimator with ``predict_proba``
        (a scikit-learn ``Pipeline`` included) or a callable ``X -> scores``.
    classes
        Names of the output columns, in order (default: the model's ``classes`` / ``classes_`` /
        ``cell_types``).
    genes
        The genes the model reads, in order (default: its ``var_names`` / ``features`` /
        ``feature_names_in_`` attribute; none: every column of the matrix, in order). The AnnData's
        genes are aligned to them by name; a missing gene is an error naming it.
    output
        Scores the searches read: ``'proba'``, ``'logits'`` (decision values; no ties from underflow)
        or ``'log_proba'``. For a callable, what it returns.
    batch_size
        Rows per forward pass of a torch module (default 128, see :class:`ClassifierAdapter`).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from scadversarial.attacks._protocol import ClassifierAdapter, ClassifierSpec
    >>> X = np.random.default_rng(0).normal(size=(40, 3))
    >>> y = (X[:, 0] > 0).astype(int)
    >>> spec = ClassifierSpec(LogisticRegression().fit(X, y), genes=["a", "b", "c"], output="logits")
    >>> ClassifierAdapter(spec)(X[:2]).shape
    (2, 2)

    """

    model: Any
    classes: Sequence[str] | None = None
    genes: Sequence[str] | None = None
    output: Output = "proba"
    batch_size: int | None = None

    def __post_init__(self) -> None:
        check_output(self.output)


def _is_celltypist(obj: Any) -> bool:
    """A CellTypist ``Model`` (duck-typed: a classifier, a fitted scaler and ``predict_labels_and_prob``)."""
    return (
        hasattr(obj, "predict_labels_and_prob")
        and hasattr(obj, "scaler")
        and hasattr(getattr(obj, "classifier", None), "decision_function")
    )


def _gene_list(value: Any) -> list[str] | None:
    """``value`` as a list of gene names when it is a sequence of strings (not a module, method or number)."""
    if value is None or callable(value) or isinstance(value, str | bytes):
        return None
    try:
        names = list(value)
    except TypeError:
        return None
    if not names or not all(isinstance(g, str | np.str_) for g in names):
        return None
    return [str(g) for g in names]


def declared_genes(classifier: Any) -> list[str] | None:
    """The genes a classifier says it reads: ``var_names``, ``features`` or ``feature_names_in_`` (else None)."""
    for attr in ("var_names", "features", "feature_names_in_"):
        try:
            value = getattr(classifier, attr, None)
        except Exception:  # noqa: BLE001 (a property of a half-fitted estimator may raise anything)
            value = None
        genes = _gene_list(value)
        if genes is not None:
            return genes
    return None


def _is_torch_module(obj: Any) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, torch.nn.Module)


class ClassifierAdapter:
    """A classifier seen as ``proba_fn(X) -> (n_cells, n_classes)`` class scores (probabilities by default).

    Parameters
    ----------
    classifier
        A torch module returning logits, a CellTypist ``Model``, an estimator with ``predict_proba``, a
        callable ``X -> probabilities``, or a :class:`ClassifierSpec` (its ``classes``, ``genes``,
        ``output`` and ``batch_size`` are used unless given here). An existing :class:`ClassifierAdapter`
        is wrapped again (sharing the same classifier, with its own call counter).
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
    output
        ``'proba'``, ``'logits'`` or ``'log_proba'`` (see the module docstring; default: the spec's, else
        ``'proba'``). An estimator gives ``'logits'`` from ``decision_function`` (else ``predict_log_proba``)
        and ``'log_proba'`` from ``predict_log_proba``; a callable returns what ``output`` names.
    genes
        Genes the classifier reads, in order (default: the spec's, else :func:`declared_genes`).

    Attributes
    ----------
    classes
        List of class names (str).
    genes
        The declared genes (list of str), or None (the classifier reads the matrix as given).
    output
        The scores returned.
    n_calls
        Number of calls made to the underlying classifier so far (an evaluation of stacked candidates by
        the linear update of a linear classifier counts as one call).
    n_rows
        Number of cells (rows) classified so far.
    n_tied
        Rows whose top score was tied between classes, or NaN, so far (padding rows excluded).
    kind
        ``'torch'``, ``'celltypist'``, ``'sklearn'`` or ``'callable'``.

    """

    def __init__(
        self,
        classifier: Any,
        classes: Sequence | None = None,
        *,
        batch_size: int | None = None,
        device: Any = None,
        output: Output | None = None,
        genes: Sequence[str] | None = None,
    ) -> None:
        if isinstance(classifier, ClassifierAdapter):
            classes = classifier._classes if classes is None else classes
            batch_size = classifier.batch_size if batch_size is None else batch_size
            device = classifier.device if device is None else device
            output = classifier.output if output is None else output
            genes = classifier.genes if genes is None else genes
            classifier = classifier.classifier
        if isinstance(classifier, ClassifierSpec):
            classes = classifier.classes if classes is None else classes
            genes = classifier.genes if genes is None else genes
            output = classifier.output if output is None else output
            batch_size = classifier.batch_size if batch_size is None else batch_size
            classifier = classifier.model
        self.output = check_output("proba" if output is None else output)
        self.classifier = classifier
        self.batch_size = batch_size
        self.device = device
        self.n_calls = 0
        self.n_rows = 0
        self.n_tied = 0
        self._tied_class: int | None = None  # the class a tie went to (first seen), for the message
        self._pad = None
        self._linear: LinearHead | None | bool = False  # False: not looked up yet
        if _is_torch_module(classifier):
            self.kind = "torch"
            found = getattr(classifier, "classes", None)
        elif _is_celltypist(classifier):
            self.kind = "celltypist"
            found = classifier.classifier.classes_
        elif hasattr(classifier, "predict_proba") and callable(classifier.predict_proba):
            self.kind = "sklearn"
            found = getattr(classifier, "classes_", None)
        elif callable(classifier):
            self.kind = "callable"
            found = getattr(classifier, "classes", None)
        else:
            msg = (
                f"Unsupported classifier of type {type(classifier).__name__}. Pass a torch nn.Module returning "
                "logits, a CellTypist Model, an estimator with `predict_proba`, or a callable `X -> probabilities` "
                "(cells x classes)."
            )
            raise TypeError(msg)
        if self.kind == "sklearn" and self.output != "proba":
            need = ("decision_function", "predict_log_proba") if self.output == "logits" else ("predict_log_proba",)
            if not any(callable(getattr(classifier, a, None)) for a in need):
                msg = (
                    f"output={self.output!r} needs the estimator's {' or '.join(f'`{a}`' for a in need)}, which "
                    f"{type(classifier).__name__} does not have. Use output='proba'."
                )
                raise ValueError(msg)
        if classes is None:
            classes = found
        self._classes = None if classes is None else [str(c) for c in classes]
        if self._classes is not None and len(set(self._classes)) != len(self._classes):
            msg = f"Class names must be unique, got {self._classes}."
            raise ValueError(msg)
        if genes is not None:
            given = _gene_list([genes] if isinstance(genes, str) else genes)
            if given is None:
                msg = f"genes must be a list of gene names (str), got {genes!r}."
                raise TypeError(msg)
            genes = given
        else:
            genes = declared_genes(classifier)
        if genes is not None and len(set(genes)) != len(genes):
            dup = sorted({g for g in genes if genes.count(g) > 1})[:10]
            msg = f"The classifier's genes must be unique; repeated: {dup}. Pass genes= with each gene once."
            raise ValueError(msg)
        self.genes: list[str] | None = genes
        # an estimator fitted on a DataFrame warns at every call on an array: the columns are aligned by name
        # before (see `genes`), so the warning says nothing here
        self._quiet_names = self.kind in ("sklearn", "celltypist") and (
            getattr(classifier if self.kind == "sklearn" else classifier.classifier, "feature_names_in_", None)
            is not None
        )
        if self.kind == "celltypist":
            scaler = classifier.scaler
            self._ct_mean = np.asarray(scaler.mean_, dtype=np.float64) if scaler.with_mean else 0.0
            self._ct_scale = np.asarray(scaler.scale_, dtype=np.float64)

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
        if self.genes is not None:
            return len(self.genes)
        clf = self.classifier
        for attr in ("n_features_in_", "n_features", "n_genes"):
            n = getattr(clf, attr, None)
            if isinstance(n, int | np.integer):
                return int(n)
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
            # (log-probabilities round their own way: no certified shortcut for them)
            self._linear = None if self.output == "log_proba" else linear_head(self.classifier, self.kind)
        return self._linear

    def count(self, n_rows: int) -> None:
        """Count one evaluation of ``n_rows`` cells done from :meth:`linear_head` instead of a call."""
        self.n_calls += 1
        self.n_rows += int(n_rows)

    def reset_counter(self) -> None:
        """Set :attr:`n_calls`, :attr:`n_rows` and :attr:`n_tied` to 0."""
        self.n_calls = 0
        self.n_rows = 0
        self.n_tied = 0
        self._tied_class = None

    def _count_ties(self, P: np.ndarray) -> None:
        """Add the rows of ``P`` whose top score is attained twice (or is NaN) to :attr:`n_tied`."""
        if P.size == 0:
            return
        top = P.max(axis=1)
        hits = top[:, None] == P
        # one count for the usual case (each row's top attained once, no NaN)
        if np.count_nonzero(hits) == P.shape[0] and not np.isnan(top).any():
            return
        tied = (np.count_nonzero(hits, axis=1) > 1) | np.isnan(top)
        n = int(np.count_nonzero(tied))
        if n:
            self.n_tied += n
            if self._tied_class is None:
                self._tied_class = int(P[np.flatnonzero(tied)[0]].argmax())

    def tie_message(self, where: str) -> str | None:
        """A warning naming the tied rows seen so far and the fix, or None when there were none.

        Parameters
        ----------
        where
            What was running (e.g. ``"single_gene_attack on 'NK'"``).

        """
        if not self.n_tied:
            return None
        first = ""
        if self._tied_class is not None and self._classes is not None and self._tied_class < len(self._classes):
            first = f" ({self._classes[self._tied_class]!r} where it was among the tied classes)"
        head = (
            f"{where}: {self.n_tied:,} of the {self.n_rows:,} cell rows classified had tied top "
            f"{'probabilities' if self.output == 'proba' else 'scores'} (or NaN); each went to the first tied "
            f"class{first}, so calls, flips and signature genes that hang on them are artifacts of the tie."
        )
        if self.output == "logits":
            return head + " The decision values themselves tie: check the classifier's input (genes, layer, scale)."
        alt = " (or output='log_proba')" if self.output == "proba" else ""
        return head + (
            " Probabilities underflow to 0 or saturate at 1 far from the training data; read the decision values "
            f"instead: classifier=ClassifierSpec(model, output='logits'){alt}."
        )

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
                    # (a strided block, e.g. of a Fortran-ordered matrix, would take other kernels: made contiguous)
                    xb = (
                        torch.from_numpy(xb)
                        if in_place
                        else torch.as_tensor(xb, dtype=mod_dtype, device=device).contiguous()
                    )
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
                    if self.output == "logits":
                        e = logits if whole else logits.clone()  # (a module may return a view of its input)
                    elif self.output == "log_proba":
                        shifted = logits.sub(logits.amax(dim=1, keepdim=True))
                        e = shifted.sub_(shifted.exp().sum(dim=1, keepdim=True).log_())
                    else:
                        e = logits.sub(logits.amax(dim=1, keepdim=True)).exp_()
                        e = e.div_(e.sum(dim=1, keepdim=True)) if not whole else e
                    if whole:
                        if self.output == "proba":
                            torch.div(e, e.sum(dim=1, keepdim=True), out=out[k * bs : (k + 1) * bs])
                        else:
                            out[k * bs : (k + 1) * bs] = e
                    else:
                        n = min(bs, X.shape[0] - k * bs)
                        parts.append((e[:n] if n < bs else e).numpy(force=True))
        finally:
            if was_training:
                module.train()
        if whole:
            return out[: X.shape[0]].numpy(force=True)
        if not parts:
            return np.zeros((0, len(self._classes or [])), dtype=np.float32)
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)

    def _celltypist_scores(self, X: np.ndarray) -> np.ndarray:
        """CellTypist's decision values of log1p-normalized rows: its scaler, the clip at 10, its classifier."""
        Z = (np.asarray(X, dtype=np.float64) - self._ct_mean) / self._ct_scale
        np.minimum(Z, _CELLTYPIST_CLIP, out=Z)
        S = np.asarray(self.classifier.classifier.decision_function(Z))
        return np.column_stack([-S, S]) if S.ndim == 1 else S  # (CellTypist's own two-class layout)

    def _sklearn_scores(self, X: np.ndarray) -> np.ndarray:
        clf = self.classifier
        if self.output == "proba":
            return clf.predict_proba(X)
        if self.output == "logits" and callable(getattr(clf, "decision_function", None)):
            S = np.asarray(clf.decision_function(X))
            return np.column_stack([np.zeros_like(S), S]) if S.ndim == 1 else S  # p(class 1) = expit(S)
        return clf.predict_log_proba(X)

    def _scores(self, X: np.ndarray) -> np.ndarray:
        if self.kind == "torch":
            return self._torch_proba(X)
        if self.kind == "callable":
            return self.classifier(X)
        if self.kind == "celltypist":
            S = self._celltypist_scores(X)
            if self.output == "proba":  # CellTypist's probability matrix: one-vs-rest expit of the scores
                from scipy.special import expit

                return expit(S)
            return S if self.output == "logits" else -np.logaddexp(0.0, -S)
        return self._sklearn_scores(X)

    def __call__(self, X: np.ndarray, *, n_valid: int | None = None) -> np.ndarray:
        """Class scores of the rows of ``X`` (one call to the classifier).

        ``n_valid``: rows past it are padding (not counted in :attr:`n_tied`).
        """
        X = np.asarray(X)
        if X.ndim != 2:
            msg = f"Expected a 2-D matrix (cells x genes), got shape {X.shape}."
            raise ValueError(msg)
        self.n_calls += 1
        self.n_rows += X.shape[0]
        if self._quiet_names:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="X does not have valid feature names")
                P = self._scores(X)
        else:
            P = self._scores(X)
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
        self._count_ties(P if n_valid is None else P[:n_valid])
        return P

    def __repr__(self) -> str:
        return (
            f"ClassifierAdapter(kind={self.kind!r}, output={self.output!r}, n_classes={len(self._classes or [])}, "
            f"n_calls={self.n_calls})"
        )


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
        Passed to :class:`ClassifierAdapter` (``batch_size``, ``device``, ``output``, ``genes``).

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
