"""Gene modifications of the adverSCarial attack modes (array functions)."""

from __future__ import annotations

import numpy as np
import pytest

from scadversarial.attacks.modifications import MODIFICATIONS, apply_modification, check_modification, modified_values


@pytest.fixture
def X():
    rng = np.random.default_rng(0)
    X = rng.poisson(1.0, size=(53, 7)).astype(np.float32) * rng.random((53, 7), dtype=np.float32)
    X[:, 3] = np.round(X[:, 3])  # many ties
    return X


def _decile_ref(x, rows, n_dec):
    """adverSCarial's .advDecil, literally (R's 1-based indexing)."""
    ordered = np.sort(x)
    out = []
    for val in x[rows]:
        rank = int((ordered < val).sum())
        k = rank + int(np.round(n_dec * len(x) / 10))
        if n_dec > 0:
            out.append(x.max() if k > len(x) else ordered[k - 1])
        else:
            out.append(x.min() if k < 1 else ordered[k - 1])
    return np.array(out)


@pytest.mark.parametrize("q", ["perc1", "perc99"])
def test_percentiles(X, q):
    rows = np.arange(10, 30)
    V = modified_values(X, rows, q)
    expect = np.quantile(X, 0.01 if q == "perc1" else 0.99, axis=0)
    np.testing.assert_allclose(V, np.broadcast_to(expect, V.shape), rtol=1e-6)
    out = apply_modification(X, [1, 3], rows, q)
    np.testing.assert_array_equal(np.delete(out, rows, axis=0), np.delete(X, rows, axis=0))  # other cells unchanged
    np.testing.assert_array_equal(out[np.ix_(rows, [0, 2, 4])], X[np.ix_(rows, [0, 2, 4])])  # other genes unchanged
    np.testing.assert_allclose(out[rows][:, [1, 3]], np.broadcast_to(expect[[1, 3]], (20, 2)), rtol=1e-6)


@pytest.mark.parametrize("n", list(range(1, 11)))
@pytest.mark.parametrize("sign", ["+", "-"])
def test_deciles_match_reference(X, n, sign):
    rows = np.arange(0, 53, 3)
    V = modified_values(X, rows, f"decile{sign}{n}")
    for g in range(X.shape[1]):
        np.testing.assert_array_equal(V[:, g], _decile_ref(X[:, g], rows, n if sign == "+" else -n))


def test_deciles_move_up_and_down(X):
    rows = np.arange(53)
    up, down = modified_values(X, rows, "decile+3"), modified_values(X, rows, "decile-3")
    assert (up >= X).all()
    assert (down <= X).all()
    np.testing.assert_array_equal(modified_values(X, rows, "decile+10"), np.broadcast_to(X.max(0), X.shape))
    np.testing.assert_array_equal(modified_values(X, rows, "decile-10"), np.broadcast_to(X.min(0), X.shape))


def test_random_seeded_and_in_range(X):
    rows = np.arange(20)
    a = modified_values(X, rows, "random", rng=3)
    b = modified_values(X, rows, "random", rng=np.random.default_rng(3))
    c = modified_values(X, rows, "random", rng=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert (a >= X.min(0)).all()
    assert (a <= X.max(0)).all()


def test_aberrant_fixed_and_callable(X):
    rows = np.array([1, 5, 7])
    np.testing.assert_allclose(modified_values(X, rows, "positive_aberrant")[0], 1e4 * X.max(0))
    np.testing.assert_allclose(modified_values(X, rows, "negative_aberrant")[2], -1e4 * X.max(0))
    np.testing.assert_allclose(modified_values(X, rows, "positive_aberrant", aberrant_factor=5)[1], 5 * X.max(0))
    np.testing.assert_array_equal(modified_values(X, rows, "fixed", fixed_value=-2.5), np.full((3, 7), -2.5))

    def double_mean(x_target, x_all):
        return np.broadcast_to(2 * x_all.mean(0), x_target.shape)

    np.testing.assert_allclose(modified_values(X, rows, double_mean)[0], 2 * X.mean(0), rtol=1e-6)
    with pytest.raises(ValueError, match="returned shape"):
        modified_values(X, rows, lambda xt, xa: xt[:, :2])


def test_modification_names():
    assert len(MODIFICATIONS) == 26
    for m in ("perc1", "decile+10", "decile-1", "random"):
        assert check_modification(m) == m
    for bad in ("perc50", "decile+11", "decile+0", "decile3", 3):
        with pytest.raises(ValueError, match="Unknown modification"):
            check_modification(bad)
