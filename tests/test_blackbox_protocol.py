"""The classifier protocol of the black-box attacks: torch modules, estimators and callables."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from scadversarial.attacks._protocol import ClassifierAdapter, as_proba_fn
from scadversarial.models.classifier import CellClassifier


def _data(n=60, g=12, k=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, g)).astype(np.float32)
    y = rng.integers(0, k, n)
    X[np.arange(n), y] += 3
    return X, y


def test_torch_module_softmax_eval_nograd_batched():
    X, _ = _data()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(16, 3))
    net.classes = ["a", "b", "c"]
    net.train()
    fn, classes = as_proba_fn(net, batch_size=7)
    P = fn(X)
    assert classes == ["a", "b", "c"]
    assert P.shape == (60, 3)
    np.testing.assert_allclose(P.sum(1), 1, rtol=1e-5)
    with torch.no_grad():
        net.eval()
        ref = torch.softmax(net(torch.from_numpy(X)), 1).numpy()
        net.train()
    np.testing.assert_allclose(P, ref, rtol=1e-5, atol=1e-6)  # eval mode: dropout off
    np.testing.assert_array_equal(fn(X), P)  # deterministic
    assert net.training  # mode restored
    assert fn.n_calls == 2
    assert fn.n_rows == 120


def test_torch_rows_do_not_depend_on_stacking():
    """Fixed-size forward blocks: a cell's probabilities are bit-identical alone or stacked."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(700, 300)).astype(np.float32)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(300, 64), torch.nn.ReLU(), torch.nn.Linear(64, 5))
    fn = ClassifierAdapter(net, list("abcde"))
    full = fn(X)
    np.testing.assert_array_equal(fn(X[:37]), full[:37])
    np.testing.assert_array_equal(fn(X[300:613]), full[300:613])
    np.testing.assert_array_equal(fn(np.concatenate([X[5:9], X[:3]])), np.concatenate([full[5:9], full[:3]]))


def test_sad_cell_classifier_goes_through_torch_path():
    X, _ = _data()
    clf = CellClassifier([f"g{i}" for i in range(12)], ["B", "T", "NK"])
    fn = ClassifierAdapter(clf)
    assert fn.kind == "torch"
    assert fn.classes == ["B", "T", "NK"]
    assert fn.n_features == 12
    P = fn(X)
    assert P.shape == (60, 3)
    np.testing.assert_allclose(P.sum(1), 1, rtol=1e-5)


def test_sklearn_estimator():
    X, y = _data()
    lr = LogisticRegression(max_iter=500).fit(X, np.array(["x", "y", "z"])[y])
    fn, classes = as_proba_fn(lr)
    assert classes == ["x", "y", "z"]
    assert fn.kind == "sklearn"
    assert fn.n_features == 12
    np.testing.assert_allclose(fn(X), lr.predict_proba(X))


def test_callable_with_and_without_classes():
    X, _ = _data()

    def f(Z):
        e = np.exp(Z[:, :3])
        return e / e.sum(1, keepdims=True)

    fn, classes = as_proba_fn(f, ["p", "q", "r"])
    assert classes == ["p", "q", "r"]
    assert fn.kind == "callable"
    assert fn(X).shape == (60, 3)
    fn2, classes2 = as_proba_fn(f)
    assert classes2 is None
    fn2(X)
    assert fn2.classes == ["0", "1", "2"]


def test_protocol_errors():
    X, _ = _data()
    with pytest.raises(TypeError, match="Unsupported classifier"):
        ClassifierAdapter(42)
    with pytest.raises(ValueError, match="probability columns"):
        ClassifierAdapter(lambda Z: np.ones((len(Z), 2)) / 2, ["a", "b", "c"])(X)
    with pytest.raises(ValueError, match="one row per cell"):
        ClassifierAdapter(lambda Z: np.ones((3, 2)), ["a", "b"])(X)
    with pytest.raises(ValueError, match="unique"):
        ClassifierAdapter(lambda Z: Z, ["a", "a"])
    with pytest.raises(ValueError, match="2-D"):
        ClassifierAdapter(lambda Z: Z, ["a"])(X[0])
    with pytest.raises(ValueError, match="classes are unknown"):
        _ = ClassifierAdapter(lambda Z: Z).classes


@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")  # (torch, on the read-only input)
def test_torch_input_read_in_place_or_converted_alike():
    """A C-contiguous array of the module's dtype is read in place; other inputs give the same probabilities."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 40)).astype(np.float32)
    torch.manual_seed(0)
    net = torch.nn.Linear(40, 4)
    fn = ClassifierAdapter(net, list("abcd"), batch_size=64)
    P = fn(X)
    assert P.shape == (300, 4)
    assert P.dtype == np.float32
    read_only = X.copy()
    read_only.flags.writeable = False
    for Z in (np.asfortranarray(X), read_only, X.astype(np.float64), X.tolist()):
        np.testing.assert_array_equal(fn(Z), P)
    np.testing.assert_array_equal(fn(X[:128]), P[:128])  # whole blocks
    np.testing.assert_array_equal(fn(X[:1]), P[:1])  # one padded block
    assert fn(X[:0]).shape == (0, 4)
    X[0] = 100.0  # the input itself is read, not a copy made at the first call
    assert not np.array_equal(fn(X)[0], P[0])


def test_torch_module_outputs_tuples_or_odd_shapes():
    X, _ = _data(n=20, g=12)
    torch.manual_seed(0)
    lin = torch.nn.Linear(12, 3)

    class Pair(torch.nn.Module):
        def forward(self, x):
            return lin(x), x

    class FirstRow(torch.nn.Module):
        def forward(self, x):
            return lin(x)[:1]

    ref = ClassifierAdapter(lin, list("abc"), batch_size=8)(X)
    np.testing.assert_array_equal(ClassifierAdapter(Pair(), list("abc"), batch_size=8)(X), ref)
    with pytest.raises(ValueError, match="returned an array of shape"):
        ClassifierAdapter(FirstRow(), list("abc"), batch_size=8)(X)
