"""Hypothesis strategies of the differential tests of the black-box searches (``tests/test_differential.py``).

A drawn case is a :class:`Case`: a frozen record of plain numbers and names whose ``repr`` is valid Python, so
a failing example can be kept as ``@example(case=Case(...), ...)``. :func:`build` turns it, deterministically,
into the expression of all cells, the target cells, a classifier and its modified values.

What the cases cover:

- classifiers: a ``torch.nn.Linear`` (the searches' linear update engines, or the stacked engine with
  ``engine='stacked'``) and a small torch MLP, in the other precision than the float32 or float64 expression
  (see ``ROW_STABLE_BATCH``), and a numpy callable with a non-linear link in either precision;
- near-ties: a twin of the class most target cells take, equal to it, one ulp (in the classifier's precision)
  away on some weights or on the bias, or within ``1e-7`` relative;
- values: log counts from real PBMC3k expression or synthetic counts (zeros and repeated values), normal
  values, small integers, and entries scaled up to ``2**37`` (the magnitude of the review that found an
  exactness hole); weights dense, sparse or spanning many orders of magnitude.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from hypothesis import strategies as st

from scadversarial.attacks._oracle import ClusterOracle
from scadversarial.attacks._protocol import ClassifierAdapter
from scadversarial.attacks.modifications import modified_values

# The largest magnitude drawn: 2**37 is the value of the review's case (its float64 terms round by ~1e-5,
# more than the small weights that decide the call).
HUGE_EXP = 37
# A relative change within float32 rounding of the weights' products: "a class made within 1e-7 of another".
CLOSE_REL = 1e-7
# Batch sizes in bytes of the stacked calls: one candidate per call, a few, and the searches' default.
BATCH_BYTES = (1, 2_048, 16 * 2**20)
# Rows per forward pass of the torch classifiers drawn, and their precision: torch's CPU kernels (MKL) round a row
# differently with its position in a block of several rows and with its address (the adapter reads a matrix of
# the module's dtype in place), at widths whose rows are not 64-byte multiples; see the regression tests at the
# end, a known bug of ClassifierAdapter. The searches' contract is for per-cell classifiers, so a drawn torch
# classifier runs one row per pass in the other precision than the expression: each row is then copied into a
# fresh, aligned tensor, and classified the same wherever it sits. The regression tests keep the default blocks.
ROW_STABLE_BATCH = 1
DEFAULT_TORCH_BATCH = 128
OTHER_PRECISION = {"float32": "float64", "float64": "float32"}


@dataclass(frozen=True)
class Case:
    """A classifier, expression and target cells, as plain values (see the module docstring).

    ``n_cells`` target cells are the first rows of the ``n_cells + n_other`` cells (the others only shape the
    modified values' per-gene distribution).
    """

    seed: int
    n_cells: int
    n_other: int
    n_genes: int
    n_classes: int
    x_dtype: str  # 'float32' | 'float64'
    values: str  # 'pbmc3k' | 'counts' | 'normal' | 'integers' | 'huge'
    classifier: str  # 'linear' | 'mlp' | 'callable'
    model_dtype: str  # 'float32' | 'float64'
    engine: str  # 'linear' | 'stacked' (fast path of a linear classifier)
    weights: str  # 'dense' | 'sparse' | 'scales'
    tie: str  # 'none' | 'equal' | 'ulp' | 'bias_ulp' | 'close'
    batch_bytes: int
    torch_batch: int = 1  # the adapter's rows per forward pass of a torch module (see ROW_STABLE_BATCH)


@st.composite
def cases(draw: st.DrawFn, *, max_genes: int = 60, large: bool = True) -> Case:
    """A :class:`Case` of 3-40 target cells, 5-``max_genes`` genes (sometimes more than 64 with ``large``), 2-6 classes."""
    classifier = draw(st.sampled_from(["linear", "linear", "linear", "mlp", "callable"]))
    x_dtype = draw(st.sampled_from(["float32", "float64"]))
    model_dtype = draw(st.sampled_from(["float32", "float64"]))
    if classifier != "callable":  # (see ROW_STABLE_BATCH)
        model_dtype = OTHER_PRECISION[x_dtype]
    n_genes = draw(st.integers(5, max_genes))
    if large and draw(st.integers(0, 5)) == 0:
        # more than the oracle's 64-gene limit of a candidate updated from the unmodified logits
        n_genes = draw(st.integers(65, 140))
    return Case(
        seed=draw(st.integers(0, 2**32 - 1)),
        n_cells=draw(st.integers(3, 40)),
        n_other=draw(st.integers(0, 20)),
        n_genes=n_genes,
        n_classes=draw(st.integers(2, 6)),
        x_dtype=x_dtype,
        values=draw(st.sampled_from(["pbmc3k", "counts", "normal", "integers", "huge"])),
        classifier=classifier,
        model_dtype=model_dtype,
        engine=draw(st.sampled_from(["linear", "linear", "stacked"])) if classifier == "linear" else "stacked",
        weights=draw(st.sampled_from(["dense", "sparse", "scales"])),
        tie=draw(st.sampled_from(["none", "equal", "ulp", "bias_ulp", "close"])),
        batch_bytes=draw(st.sampled_from(BATCH_BYTES)),
        torch_batch=ROW_STABLE_BATCH,
    )


# ---------------------------------------------------------------------------------------------------------------
# building a case


@dataclass(frozen=True)
class Built:
    """A built :class:`Case`: all cells ``X``, the target rows, and the classifier with its class names."""

    case: Case
    X: np.ndarray
    rows: np.ndarray
    model: Any
    classes: list[str]

    def adapter(self) -> ClassifierAdapter:
        """A fresh adapter (its own call counter) of the case's classifier."""
        return ClassifierAdapter(self.model, self.classes, batch_size=self.case.torch_batch)

    def oracle(self, Vs: list[np.ndarray], *, fast: bool) -> ClusterOracle:
        """The target cluster's oracle as ``tl`` builds it; a fast one of a linear classifier may use either engine."""
        linear = not fast or self.case.engine == "linear"
        return ClusterOracle(self.adapter(), self.X[self.rows], Vs, batch_bytes=self.case.batch_bytes, linear=linear)


def _values(case: Case, rng: np.random.Generator, real: np.ndarray) -> np.ndarray:
    n, g = case.n_cells + case.n_other, case.n_genes
    if case.values == "pbmc3k":  # real log-normalized expression: many zeros, repeated values
        r = rng.choice(real.shape[0], size=n, replace=n > real.shape[0])
        c = rng.choice(real.shape[1], size=g, replace=g > real.shape[1])
        X = real[np.ix_(r, c)].astype(np.float64)
    elif case.values == "counts":
        X = np.log1p(rng.poisson(rng.gamma(0.5, 2.0, size=g), size=(n, g)))
    elif case.values == "normal":
        X = rng.normal(size=(n, g))
    elif case.values == "integers":
        X = rng.integers(-2, 3, size=(n, g)).astype(np.float64)
    else:  # some entries scaled by powers of two up to 2**37
        X = rng.normal(size=(n, g))
        big = rng.random((n, g)) < 0.15
        X[big] *= 2.0 ** rng.integers(10, HUGE_EXP + 1, size=int(big.sum()))
    return X.astype(case.x_dtype)


def _weights(case: Case, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    W = rng.normal(size=shape)
    if case.weights == "sparse":  # zero weights, and tiny ones beside them (as the review's case)
        W[rng.random(shape) < 0.5] = 0.0
        W[rng.random(shape) < 0.2] *= 1e-5
    elif case.weights == "scales":
        W *= 10.0 ** rng.uniform(-6, 1, size=shape)
    return W


def _twin(case: Case, rng: np.random.Generator, W: np.ndarray, b: np.ndarray, i: int, j: int) -> None:
    """Make class ``j`` a near-tie of class ``i`` in place (``W``: inputs x classes, in the model's precision)."""
    if case.tie == "none":
        return
    dt = np.dtype(case.model_dtype)
    W[:, j], b[j] = W[:, i], b[i]
    if case.tie == "ulp":  # one ulp away on some weights, in the classifier's own precision
        some = rng.random(W.shape[0]) < 0.5
        away = np.where(rng.random(W.shape[0]) < 0.5, np.inf, -np.inf)
        W[some, j] = np.nextafter(W[some, i].astype(dt), away[some].astype(dt)).astype(np.float64)
    elif case.tie == "bias_ulp":
        b[j] = float(np.nextafter(dt.type(b[i]), dt.type(np.inf if rng.random() < 0.5 else -np.inf)))
    elif case.tie == "close":
        W[:, j] = (W[:, i] * (1 + CLOSE_REL * rng.choice([-1.0, 1.0], size=W.shape[0]))).astype(dt)


def _in_precision(case: Case, *arrays: np.ndarray) -> list[np.ndarray]:
    """The arrays rounded to the model's precision (held in float64: exact copies)."""
    return [a.astype(case.model_dtype).astype(np.float64) for a in arrays]


def _top_class(logits: np.ndarray) -> int:
    return int(np.bincount(logits.argmax(axis=1), minlength=logits.shape[1]).argmax())


def torch_linear(W: np.ndarray, b: np.ndarray, dtype: torch.dtype) -> torch.nn.Linear:
    lin = torch.nn.Linear(W.shape[0], W.shape[1], dtype=dtype)
    with torch.no_grad():
        lin.weight.copy_(torch.as_tensor(W.T))
        lin.bias.copy_(torch.as_tensor(b))
    return lin


class _NonLinear:
    """A per-cell callable ``softmax(z + 0.5 sin(z))`` of ``z = x W + b`` in the model's precision.

    Its sums run gene by gene in a fixed order, so a cell's scores never depend on the other rows of the call
    (a BLAS product may take other kernels for other numbers of rows).
    """

    def __init__(self, W: np.ndarray, b: np.ndarray, dtype: str) -> None:
        self.W, self.b, self.dtype = W.astype(dtype), b.astype(dtype), np.dtype(dtype)

    def __call__(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=self.dtype)
        z = np.broadcast_to(self.b, (X.shape[0], len(self.b))).copy()
        for g in range(X.shape[1]):
            z += X[:, g : g + 1] * self.W[g]
        z += 0.5 * np.sin(z)
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


def build(case: Case, real: np.ndarray) -> Built:
    """Arrays and classifier of ``case`` (``real``: PBMC3k log-normalized expression, for ``values='pbmc3k'``)."""
    rng = np.random.default_rng(case.seed)
    X = _values(case, rng, real)
    K, G = case.n_classes, case.n_genes
    target = X[: case.n_cells].astype(np.float64)
    tdt = torch.float32 if case.model_dtype == "float32" else torch.float64
    # a scale that keeps the logits of typical cells in a range where the classes compete
    nonzero = np.abs(target)[target != 0]
    scale = 1.0 / max(float(np.sqrt(G) * (np.median(nonzero) if len(nonzero) else 1.0)), 1e-3)
    if case.classifier == "mlp":
        hidden = 8
        W1, b1 = _in_precision(case, _weights(case, rng, (G, hidden)) * scale, rng.normal(size=hidden) * 0.1)
        W2, b2 = _in_precision(case, _weights(case, rng, (hidden, K)), rng.normal(size=K) * 0.1)
        h = np.tanh(target @ W1 + b1)
        i = _top_class(h @ W2 + b2)
        _twin(case, rng, W2, b2, i, (i + 1 + int(rng.integers(0, K - 1))) % K)
        model = torch.nn.Sequential(torch_linear(W1, b1, tdt), torch.nn.Tanh(), torch_linear(W2, b2, tdt))
    else:
        W, b = _in_precision(case, _weights(case, rng, (G, K)) * scale, rng.normal(size=K) * 0.1)
        i = _top_class(target @ W + b)
        _twin(case, rng, W, b, i, (i + 1 + int(rng.integers(0, K - 1))) % K)
        model = torch_linear(W, b, tdt) if case.classifier == "linear" else _NonLinear(W, b, case.model_dtype)
    return Built(case, X, np.arange(case.n_cells), model, [f"c{k}" for k in range(K)])


# ---------------------------------------------------------------------------------------------------------------
# modified values


@dataclass(frozen=True)
class Modification:
    """One modification as :func:`~scadversarial.attacks.modifications.modified_values` takes it, or ``'huge'``.

    ``'huge'`` is not a named modification: per-cell values, some of them up to ``2**37`` in magnitude, some equal
    to the cell's own value (its row does not change).
    """

    name: str  # 'perc1' | 'perc99' | 'positive_aberrant' | 'negative_aberrant' | 'fixed' | 'huge'
    value: float = 0.0  # fixed_value or aberrant_factor


PERCENTILES = st.builds(Modification, st.sampled_from(["perc1", "perc99"]))
ABERRANT = st.builds(
    Modification,
    st.sampled_from(["positive_aberrant", "negative_aberrant"]),
    st.sampled_from([1e4, 1.0, 2.0**-20, 2.0**HUGE_EXP]),
)
FIXED = st.builds(
    Modification,
    st.just("fixed"),
    st.sampled_from([0.0, 1.0, 3.0, -1.0, 0.5, 2.0**HUGE_EXP, -(2.0**HUGE_EXP), 1e-7]),
)
HUGE = st.builds(Modification, st.just("huge"))
ANY_MODIFICATION = st.one_of(PERCENTILES, ABERRANT, FIXED, HUGE)


def values_of(built: Built, mod: Modification, seed: int) -> np.ndarray:
    """The target cells' modified values (target cells x genes, the expression's dtype)."""
    X, rows = built.X, built.rows
    if mod.name != "huge":
        value = {"fixed_value": mod.value} if mod.name == "fixed" else {}
        if mod.name.endswith("aberrant"):
            value = {"aberrant_factor": mod.value}
        return modified_values(X, rows, mod.name, **value)
    rng = np.random.default_rng(seed)
    V = rng.normal(size=(len(rows), X.shape[1]))
    big = rng.random(V.shape) < 0.3
    V[big] = rng.choice([-1.0, 1.0], size=int(big.sum())) * 2.0 ** rng.integers(0, HUGE_EXP + 1, size=int(big.sum()))
    same = rng.random(V.shape) < 0.3
    V[same] = X[rows][same]
    return V.astype(X.dtype)
