"""Score-based black-box attacks (Square Attack, NES) on real classifiers: the package's MLP and a random forest."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sklearn.ensemble import RandomForestClassifier

import scadversarial as sad
from scadversarial.attacks._protocol import ClassifierAdapter
from scadversarial.attacks.score_based import ScoreAttackResult, ScoreConfig, score_attack

N_CELLS = 60  # test-split cells attacked: enough for a flip rate, seconds per attack


def _dense(m) -> np.ndarray:
    return np.asarray(m.toarray() if hasattr(m, "toarray") else m, dtype=np.float32)


@pytest.fixture(scope="module")
def mlp_case(pipeline68k):
    """The package's MLP (pbmc68k_reduced, scaled space) on test cells, pushed away from its clean calls."""
    a = pipeline68k
    cells = np.flatnonzero(a.obs["sad_split"].to_numpy() == "test")[:N_CELLS]
    clf = sad.tl.get_model(a, "classifier")
    fn = ClassifierAdapter(clf, batch_size=N_CELLS)  # one forward block per query: no padding rows
    X = _dense(a.X)[cells]
    return fn, X, fn(X).argmax(1)


@pytest.fixture(scope="module")
def rf_case(pipeline68k):
    """A random forest on log-normalized pbmc68k_reduced, its test cells and clean calls."""
    a = pipeline68k
    L = _dense(a.layers["sad_lognorm"])
    split = a.obs["sad_split"].to_numpy()
    labels = a.obs["sad_label"].cat.codes.to_numpy()
    rf = RandomForestClassifier(n_estimators=50, random_state=0, n_jobs=1).fit(
        L[split == "train"], labels[split == "train"]
    )
    fn = ClassifierAdapter(rf)
    X = L[np.flatnonzero(split == "test")[:N_CELLS]]
    return fn, X, fn(X).argmax(1)


class _Counter:
    """A proba_fn recording the rows of every call."""

    def __init__(self, fn) -> None:
        self.fn = fn
        self.calls: list[np.ndarray] = []

    def __call__(self, Z: np.ndarray) -> np.ndarray:
        self.calls.append(np.array(Z, copy=True))
        return self.fn(Z)


def _check_result(res: ScoreAttackResult, fn, X, y, *, eps, mask=None, lower=-np.inf, upper=np.inf, targeted=False):
    """Budget, bounds and mask hold exactly; success and pred agree with the classifier at X_adv."""
    assert res.X_adv.dtype == np.float32
    assert res.X_adv.shape == X.shape
    d = res.X_adv.astype(np.float64) - X.astype(np.float32).astype(np.float64)
    assert np.abs(d).max() <= eps
    assert (res.X_adv >= lower).all()
    assert (res.X_adv <= upper).all()
    if mask is not None:
        frozen = ~np.broadcast_to(mask, X.shape)
        np.testing.assert_array_equal(res.X_adv[frozen], X.astype(np.float32)[frozen])
    pred = np.asarray(fn(res.X_adv)).argmax(1)
    np.testing.assert_array_equal(res.pred, pred)
    np.testing.assert_array_equal(res.success, pred == y if targeted else pred != y)


def test_square_flips_mlp_within_budget(mlp_case):
    fn, X, y = mlp_case
    res = score_attack(fn, X, y, eps=1.0, config=ScoreConfig(max_queries=300))
    _check_result(res, fn, X, y, eps=1.0)
    assert res.success.mean() >= 0.45
    assert (res.n_queries <= 300).all()
    assert (res.n_queries[~res.success] == 300).all()  # failures spent the budget, successes stopped early
    assert np.median(res.n_queries[res.success]) < 300
    assert res.params.as_dict() == {
        "method": "square",
        "eps": 1.0,
        "max_queries": 300,
        "targeted": False,
        "p_init": 0.05,
        "batch_size": 256,
        "random_state": 0,
    }


def test_nes_flips_mlp_within_budget(mlp_case):
    fn, X, y = mlp_case
    res = score_attack(fn, X, y, method="nes", eps=1.0, config=ScoreConfig(max_queries=300))
    _check_result(res, fn, X, y, eps=1.0)
    assert res.success.mean() >= 0.7
    assert (res.n_queries <= 300).all()


@pytest.mark.parametrize("method", ["square", "nes"])
def test_random_forest_expressed_constraint(rf_case, method):
    """The 'expressed' threat model on a random forest: zeros stay zero, results >= 0, within eps log units."""
    fn, X, y = rf_case
    mask = X > 0
    res = score_attack(fn, X, y, method=method, eps=1.0, mask=mask, lower=0, config=ScoreConfig(max_queries=500))
    _check_result(res, fn, X, y, eps=1.0, mask=mask, lower=0)
    assert res.success.mean() >= 0.4


@pytest.mark.parametrize("method", ["square", "nes"])
def test_queries_counted_per_cell_and_batched(rf_case, method):
    """n_queries is exactly each cell's rows passed to proba_fn; calls stack at most batch_size cells' rows.

    Each cell carries its index in an extra column that the mask freezes and the forest does not see, so
    every row of every call can be traced back to its cell.
    """
    fn, X, y = rf_case
    n = len(X)
    tagged = np.hstack([X, np.arange(n, dtype=np.float32)[:, None]])
    mask = np.hstack([X > 0, np.zeros((n, 1), dtype=bool)])
    counter = _Counter(lambda Z: fn(Z[:, :-1]))
    res = score_attack(
        counter,
        tagged,
        y,
        method=method,
        eps=1.0,
        mask=mask,
        lower=0,
        config=ScoreConfig(max_queries=60, batch_size=25),
    )
    rows = np.concatenate([z[:, -1] for z in counter.calls]).astype(np.int64)
    np.testing.assert_array_equal(res.n_queries, np.bincount(rows, minlength=n))
    assert (res.n_queries <= 60).all()
    assert (res.n_queries[~res.success] == 60).all()
    np.testing.assert_array_equal(counter.calls[0], tagged[:25])  # a chunk starts with its clean cells
    per_call = [np.unique(z[:, -1]) for z in counter.calls]
    assert all(len(c) <= 25 and (c // 25 == c[0] // 25).all() for c in per_call)  # one chunk per call
    if method == "square":  # one row per unfinished cell per call
        assert all(len(c) == len(z) for c, z in zip(per_call, counter.calls, strict=True))


def test_already_flipped_cells_cost_one_query(rf_case):
    fn, X, y = rf_case
    wrong = (y + 1) % len(fn.classes)
    res = score_attack(fn, X, wrong, eps=1.0, config=ScoreConfig(max_queries=50))
    assert res.success.all()
    assert (res.n_queries == 1).all()
    np.testing.assert_array_equal(res.X_adv, X)


@pytest.mark.parametrize("method", ["square", "nes"])
def test_deterministic_for_a_seed(rf_case, method):
    fn, X, y = rf_case
    kw = {"method": method, "eps": 1.0, "mask": X > 0, "lower": 0}
    a = score_attack(fn, X, y, config=ScoreConfig(max_queries=100, random_state=3), **kw)
    b = score_attack(fn, X, y, config=ScoreConfig(max_queries=100, random_state=3), **kw)
    c = score_attack(fn, X, y, config=ScoreConfig(max_queries=100, random_state=4), **kw)
    np.testing.assert_array_equal(a.X_adv, b.X_adv)
    np.testing.assert_array_equal(a.n_queries, b.n_queries)
    np.testing.assert_array_equal(a.success, b.success)
    assert not np.array_equal(a.X_adv, c.X_adv)


def test_targeted_reaches_the_runner_up(mlp_case):
    """Targeted mode: cells pulled to their second most likely class reach it."""
    fn, X, _ = mlp_case
    target = np.argsort(fn(X), axis=1)[:, -2]
    res = score_attack(fn, X, target, eps=1.0, targeted=True, config=ScoreConfig(max_queries=150))
    _check_result(res, fn, X, target, eps=1.0, targeted=True)
    assert res.success.mean() >= 0.1
    np.testing.assert_array_equal(res.pred[res.success], target[res.success])


def test_per_entry_bounds_and_mask_on_real_cells(mlp_case):
    """Per-gene bounds (each gene's observed range) and a per-entry mask hold exactly."""
    fn, X, y = mlp_case
    lower, upper = X.min(0), X.max(0)
    mask = np.random.default_rng(0).random(X.shape) < 0.5
    res = score_attack(fn, X, y, eps=0.5, lower=lower, upper=upper, mask=mask, config=ScoreConfig(max_queries=50))
    _check_result(res, fn, X, y, eps=0.5, mask=mask, lower=lower, upper=upper)


def _linear_proba(W: np.ndarray):
    def proba(Z: np.ndarray) -> np.ndarray:
        z = Z.astype(np.float64) @ W
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    return proba


@hsettings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    n=st.integers(1, 12),
    g=st.integers(1, 10),
    eps=st.floats(1e-3, 3.0),
    method=st.sampled_from(["square", "nes"]),
    bound_kind=st.sampled_from(["none", "scalar", "gene", "entry"]),
    mask_kind=st.sampled_from(["none", "gene", "entry"]),
    max_queries=st.integers(1, 60),
    targeted=st.booleans(),
)
def test_constraints_hold_exactly(seed, n, g, eps, method, bound_kind, mask_kind, max_queries, targeted):
    """For any bounds, mask and budget: frozen entries kept, bounds and eps respected, queries within budget."""
    rng = np.random.default_rng(seed)
    X = (rng.normal(size=(n, g)) * rng.uniform(0.01, 5)).astype(np.float32)
    X[rng.random((n, g)) < 0.3] = 0  # exact zeros, as in expression data
    fn = _linear_proba(rng.normal(size=(g, 3)))
    y = rng.integers(0, 3, n)
    lower = upper = None
    if bound_kind == "scalar":
        lower, upper = float(X.min()), float(X.max())
    elif bound_kind == "gene":
        lower, upper = X.min(0) - rng.uniform(0, 1, g), X.max(0)
    elif bound_kind == "entry":
        lower, upper = np.minimum(X, 0), X + rng.uniform(0, 1, (n, g)).astype(np.float32)
    mask = {"none": None, "gene": rng.random(g) < 0.5, "entry": X != 0}[mask_kind]
    res = score_attack(
        fn,
        X,
        y,
        method=method,
        eps=eps,
        lower=lower,
        upper=upper,
        mask=mask,
        targeted=targeted,
        config=ScoreConfig(max_queries=max_queries, random_state=seed, batch_size=5),
    )
    _check_result(
        res,
        fn,
        X,
        y,
        eps=eps,
        mask=mask,
        lower=-np.inf if lower is None else lower,
        upper=np.inf if upper is None else upper,
        targeted=targeted,
    )
    assert ((res.n_queries >= 1) & (res.n_queries <= max_queries)).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "pgd"}, "method='pgd' is not one of"),
        ({"eps": 0.0}, "eps"),
        ({"config": ScoreConfig(max_queries=0)}, "max_queries"),
        ({"config": ScoreConfig(p_init=1.5)}, "p_init"),
        ({"mask": np.ones(3, dtype=bool)}, "mask"),
        ({"mask": np.ones(4)}, "boolean"),
        ({"lower": np.zeros(7)}, "lower"),
        ({"lower": 0.5}, "outside"),
        ({"y": np.array([0, 1, 5])}, "outside 0..2"),
        ({"y": np.array([0.0, 1.0, 1.0])}, "integer"),
    ],
)
def test_errors_name_the_problem(kwargs, match):
    X = np.zeros((3, 4), dtype=np.float32)
    args = {"y": np.array([0, 1, 2]), "eps": 0.1, **kwargs}
    y = args.pop("y")
    with pytest.raises(ValueError, match=match):
        score_attack(_linear_proba(np.ones((4, 3))), X, y, **args)


@pytest.fixture(scope="module")
def rf_adata(pipeline68k):
    """100 test cells of pbmc68k_reduced and a random forest trained on the other cells' log-normalized values."""
    a = pipeline68k
    split = a.obs["sad_split"].to_numpy()
    L = _dense(a.layers["sad_lognorm"])
    rf = RandomForestClassifier(n_estimators=50, random_state=0, n_jobs=1).fit(
        L[split == "train"], a.obs["sad_label"].to_numpy()[split == "train"]
    )
    return a[np.flatnonzero(split == "test")[:100]].copy(), rf


def test_tl_attack_square_on_a_random_forest(rf_adata):
    """sad.tl.attack with a foreign classifier: flips, zeros kept, predictions from the classifier, a full record."""
    a, rf = rf_adata
    sad.tl.attack(a, "square", eps=1.0, classifier=rf, layer="sad_lognorm", constraint="expressed", max_queries=200)
    name = "sad_square_eps1"
    L, adv = _dense(a.layers["sad_lognorm"]), _dense(a.layers[name])
    zero = L == 0
    np.testing.assert_array_equal(adv[zero], 0)  # unexpressed entries stay exactly zero
    assert (adv >= 0).all()
    assert np.abs(adv - L).max() <= 1.0
    np.testing.assert_array_equal(a.obs[f"{name}_pred"].astype(str).to_numpy(), rf.predict(adv).astype(str))
    flipped = a.obs[f"{name}_pred"].astype(str).to_numpy() != rf.predict(L).astype(str)
    assert flipped.any()
    rec = a.uns["sad"]["attacks"]["sad_square"]
    assert rec["kind"] == "score_based"
    p = rec["params"]
    assert (p["method"], p["space"], p["classifier"], p["output"], p["max_queries"]) == (
        "square",
        "classifier_input",
        "sklearn",
        "proba",
        200,
    )
    assert rec["metrics"]["flip_rate"][name] == pytest.approx(flipped.mean())
    assert 1 <= rec["metrics"]["queries"][name] <= 200


@pytest.mark.parametrize("method", ["pgd", "cw"])
def test_tl_attack_whitebox_on_a_random_forest_raises(rf_adata, method):
    a, rf = rf_adata
    with pytest.raises(ValueError, match="score-based method"):
        sad.tl.attack(a.copy(), method, eps=1.0, classifier=rf, layer="sad_lognorm")
