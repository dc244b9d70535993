"""Property-based differential tests: every fast black-box search returns exactly ``method='plain'``'s result.

The fast searches (single-gene, max-change, random walk, CGD) answer their questions from stacked calls, the
linear update of a linear classifier, speculation and replays; ``method='plain'`` asks the classifier one
question per call. Hypothesis draws classifiers, expression, near-ties, modifications and search options, and
each test checks that both methods return the same genes, calls, scores and per-cell types, and leave a shared
random generator in the same state. Fixed workloads did not catch the three exactness holes a review found
(see ``docs/contributing.md``); these tests draw many small ones.

The cases are drawn by ``tests/_strategies.py``. Examples are bounded (``max_examples``) and derandomized, so
every run draws the same cases.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st
from tests._strategies import (
    ABERRANT,
    ANY_MODIFICATION,
    DEFAULT_TORCH_BATCH,
    FIXED,
    HUGE,
    HUGE_EXP,
    PERCENTILES,
    ROW_STABLE_BATCH,
    Case,
    Modification,
    build,
    cases,
    torch_linear,
    values_of,
)

from scadversarial.attacks._oracle import ClusterOracle
from scadversarial.attacks._protocol import ClassifierAdapter
from scadversarial.attacks.cgd import cgd_search
from scadversarial.attacks.max_change import max_change_search
from scadversarial.attacks.random_walk import random_walk_search
from scadversarial.attacks.single_gene import single_gene_search

# ---------------------------------------------------------------------------------------------------------------
# the tests


def bounded(n: int):
    """Hypothesis settings of one differential test: ``n`` examples, the same ones at every run, no deadline.

    ``too_slow`` is not checked: drawing a case is cheap, but a loaded machine can make it look slow.
    """
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )


@pytest.fixture(scope="module")
def real(lr_workload) -> np.ndarray:
    """PBMC3k log-normalized expression (cells x genes, float32) to draw ``values='pbmc3k'`` cases from."""
    return lr_workload["X"]


def _gene_order(n_genes: int, order: str, seed: int) -> np.ndarray:
    """All genes in order, a permutation of them, or a random subset in random order."""
    rng = np.random.default_rng(seed)
    if order == "all":
        return np.arange(n_genes)
    genes = rng.permutation(n_genes)
    return genes if order == "permuted" else genes[: int(rng.integers(1, n_genes + 1))]


GENE_ORDERS = st.sampled_from(["all", "permuted", "subset"])


def _note(oracle: ClusterOracle) -> None:
    """Tell hypothesis's statistics (``--hypothesis-show-statistics``) which engine answered and whether it sent cells
    too close to call to the classifier."""
    event("engine: " + ("linear update" if oracle.is_linear else "stacked calls"))
    event("cells too close to call: " + ("some" if oracle.n_exact_rows else "none"))


def _records(res) -> list:
    return [(tuple(g.tolist()), int(c), float(s)) for g, c, s in zip(res.genes, res.calls, res.scores, strict=True)]


@dataclass(frozen=True)
class SingleGeneOptions:
    """The single-gene search's options (``na`` are class indices, those of the case's classes are used)."""

    order: str
    first_dichot: int
    max_split_size: int
    return_first_found: bool
    na: tuple[int, ...]


SINGLE_GENE_OPTIONS = st.builds(
    SingleGeneOptions,
    GENE_ORDERS,
    st.integers(1, 8),
    st.integers(1, 4),
    st.booleans(),
    st.lists(st.integers(0, 5), max_size=2).map(tuple),
)


def _single_gene(real, case: Case, mod: Modification, opts: SingleGeneOptions) -> None:
    built = build(case, real)
    V = values_of(built, mod, case.seed + 1)
    na = [k for k in opts.na if k < case.n_classes]
    kw = {
        "first_dichot": opts.first_dichot,
        "max_split_size": opts.max_split_size,
        "return_first_found": opts.return_first_found,
        "change_type": "not_na" if na else "any",
        "na_classes": na,
    }
    genes = _gene_order(case.n_genes, opts.order, case.seed + 2)
    plain = single_gene_search(built.oracle([V], fast=False), genes, method="plain", **kw)
    fast_oracle = built.oracle([V], fast=True)
    fast = single_gene_search(fast_oracle, genes, method="fast", **kw)
    _note(fast_oracle)
    assert _records(fast) == _records(plain)
    # one search, answered a question at a time or a level at a time: fast asks every question plain asks (with
    # return_first_found, those up to the first record, and maybe some after it that its level held)
    if opts.return_first_found:
        assert fast.n_tested >= plain.n_tested
    else:
        assert fast.n_tested == plain.n_tested


@bounded(25)
@given(case=cases(), mod=PERCENTILES, opts=SINGLE_GENE_OPTIONS)
def test_single_gene_percentiles(real, case, mod, opts):
    """Percentile modifications: same records (genes, call, score, depth-first order)."""
    _single_gene(real, case, mod, opts)


@bounded(25)
@given(case=cases(), mod=ABERRANT, opts=SINGLE_GENE_OPTIONS)
def test_single_gene_aberrant(real, case, mod, opts):
    """Aberrant values (factors from 2**-20 to 2**37 times the gene's max): same records."""
    _single_gene(real, case, mod, opts)


@bounded(25)
@given(case=cases(), mod=FIXED, opts=SINGLE_GENE_OPTIONS)
def test_single_gene_fixed(real, case, mod, opts):
    """Fixed values (0, values the cells already have, +-2**37): same records."""
    _single_gene(real, case, mod, opts)


@bounded(25)
@given(case=cases(), mod=HUGE, opts=SINGLE_GENE_OPTIONS)
def test_single_gene_huge_per_cell_values(real, case, mod, opts):
    """Per-cell values up to 2**37, some equal to the cell's own: same records."""
    _single_gene(real, case, mod, opts)


@dataclass(frozen=True)
class MaxChangeOptions:
    """The max-change search's options; ``warm``: a single-gene search ran first on the fast oracle (as the overview)."""

    order: str
    max_split_size: int
    lookahead: int
    warm: bool


MAX_CHANGE_OPTIONS = st.builds(
    MaxChangeOptions, GENE_ORDERS, st.integers(1, 4), st.sampled_from([1, 3, 256]), st.booleans()
)


def _max_change(real, case: Case, mod: Modification, opts: MaxChangeOptions) -> None:
    built = build(case, real)
    V = values_of(built, mod, case.seed + 1)
    genes = _gene_order(case.n_genes, opts.order, case.seed + 2)
    fast_oracle = built.oracle([V], fast=True)
    if opts.warm:
        single_gene_search(fast_oracle, genes, first_dichot=2, method="fast")
    rngs = [np.random.default_rng(case.seed + 3) for _ in range(2)]
    kw = {"max_split_size": opts.max_split_size}
    plain = max_change_search(built.oracle([V], fast=False), genes, random_state=rngs[0], method="plain", **kw)
    fast = max_change_search(fast_oracle, genes, random_state=rngs[1], method="fast", lookahead=opts.lookahead, **kw)
    _note(fast_oracle)
    assert fast.kept.tolist() == plain.kept.tolist()
    assert (fast.call, fast.score, fast.n_questions) == (plain.call, plain.score, plain.n_questions)
    assert rngs[1].bit_generator.state == rngs[0].bit_generator.state


@bounded(50)
@given(case=cases(), mod=ANY_MODIFICATION, opts=MAX_CHANGE_OPTIONS)
def test_max_change_fast_equals_plain(real, case, mod, opts):
    """Same kept genes, call, score and questions; a shared generator is left in the same state."""
    _max_change(real, case, mod, opts)


@dataclass(frozen=True)
class RandomWalkOptions:
    """The random walk's options (``na`` as in :class:`SingleGeneOptions`)."""

    order: str
    first_batch: int
    walk_length: int
    step_change_ratio: float
    max_tries: int
    na: tuple[int, ...]


RANDOM_WALK_OPTIONS = st.builds(
    RandomWalkOptions,
    GENE_ORDERS,
    st.integers(1, 20),
    st.integers(0, 30),
    st.sampled_from([0.2, 0.5, 1.0]),
    st.sampled_from([1, 10, 1000]),
    st.lists(st.integers(0, 5), max_size=2).map(tuple),
)


@bounded(50)
@given(case=cases(), mods=st.lists(ANY_MODIFICATION, min_size=1, max_size=3), opts=RANDOM_WALK_OPTIONS)
def test_random_walk_fast_equals_plain(real, case, mods, opts):
    """Same best assignment, call, score and history; a shared generator is left in the same state."""
    built = build(case, real)
    Vs = [values_of(built, m, case.seed + 1 + k) for k, m in enumerate(mods)]
    genes = _gene_order(case.n_genes, opts.order, case.seed + 2)
    na = [k for k in opts.na if k < case.n_classes]
    kw = {
        "first_batch": opts.first_batch,
        "walk_length": opts.walk_length,
        "step_change_ratio": opts.step_change_ratio,
        "max_tries": opts.max_tries,
        "change_type": "not_na" if na else "any",
        "na_classes": na,
    }
    rngs = [np.random.default_rng(case.seed + 3) for _ in range(2)]
    plain = random_walk_search(built.oracle(Vs, fast=False), genes, random_state=rngs[0], method="plain", **kw)
    fast_oracle = built.oracle(Vs, fast=True)
    fast = random_walk_search(fast_oracle, genes, random_state=rngs[1], method="fast", **kw)
    _note(fast_oracle)
    assert (plain.best is None) == (fast.best is None)
    if plain.best is not None:
        assert fast.best.tolist() == plain.best.tolist()
    np.testing.assert_equal((fast.best_call, fast.best_score), (plain.best_call, plain.best_score))
    assert fast.history == plain.history
    assert rngs[1].bit_generator.state == rngs[0].bit_generator.state


@dataclass(frozen=True)
class CGDOptions:
    """CGD's options; ``new_target``/``exclude`` are class indices (those of the case's classes are used)."""

    repeat_genes: bool
    alpha: float
    epsilon: float
    new_target: int | None
    exclude: tuple[int, ...]
    stop_at_switch: bool
    rows: bool  # pass the cluster as rows of the matrix of all cells


CGD_OPTIONS = st.builds(
    CGDOptions,
    st.booleans(),
    st.sampled_from([0.1, 0.5, 1.0, 3.0]),
    st.sampled_from([0.0, 0.1, 1.0, 2.0**HUGE_EXP]),
    st.none() | st.integers(0, 5),
    st.lists(st.integers(0, 5), max_size=2).map(tuple),
    st.booleans(),
    st.booleans(),
)


@bounded(30)
@given(case=cases(large=False), opts=CGD_OPTIONS)
def test_cgd_fast_equals_plain(real, case, opts):
    """Same modified matrix, genes, summary, new target and per-cell types, bit for bit."""
    built = build(case, real)
    genes = _gene_order(case.n_genes, "permuted", case.seed + 2)
    if opts.repeat_genes:
        genes = np.concatenate([genes, genes[::-1]])
    new = opts.new_target if opts.new_target is not None and opts.new_target < case.n_classes else None
    kw = {
        "alpha": opts.alpha,
        "epsilon": opts.epsilon,
        "new_target": new,
        "exclude_new_targets": [k for k in opts.exclude if k < case.n_classes],
        "stop_at_switch": opts.stop_at_switch,
    }
    X, rows = (built.X, built.rows) if opts.rows else (built.X[built.rows], None)
    adapters = {method: built.adapter() for method in ("plain", "fast")}
    out = {method: cgd_search(fn, X, genes, method=method, rows=rows, **kw) for method, fn in adapters.items()}
    plain, fast = out["plain"], out["fast"]
    # plain asks one call per question: the start, each visited gene's trial, each commit, and the final cluster
    # unless it stopped at the switch (the R package's calls); fast at most as many
    stopped = opts.stop_at_switch and plain.switched
    questions = 1 + plain.n_genes_visited + len(plain.modified_genes) + (not stopped)
    assert adapters["plain"].n_calls == questions
    assert adapters["fast"].n_calls <= questions
    np.testing.assert_array_equal(fast.X, plain.X)
    assert fast.X.dtype == plain.X.dtype
    assert fast.modified_genes == plain.modified_genes
    np.testing.assert_equal(fast.summary, plain.summary)
    assert (fast.orig_call, fast.new_target, fast.switched, fast.n_genes_visited) == (
        plain.orig_call,
        plain.new_target,
        plain.switched,
        plain.n_genes_visited,
    )
    np.testing.assert_array_equal(fast.orig_types, plain.orig_types)
    np.testing.assert_array_equal(fast.types, plain.types)


# ---------------------------------------------------------------------------------------------------------------
# regression: torch rows classified differently with their place in a call


_TORCH_ROWS = (
    "ClassifierAdapter (attacks/_protocol.py): torch's CPU kernels round a row differently with its position in a "
    "block of several rows and with its address (matrices of the module's dtype are read in place), so a cell "
    "within rounding of a tie gets another type stacked (fast) than in the whole cluster (plain)"
)


# Not strict: whether these examples differ depends on the CPU's BLAS kernels (they do on this project's
# CI machines); where the kernels round alike, fast equals plain and the example passes.


def explicit_only():
    """Hypothesis settings of a regression test: its ``@example`` cases only."""
    return settings(deadline=None, database=None, phases=[Phase.explicit])


@pytest.mark.parametrize(("width", "dtype"), [(5, torch.float32), (38, torch.float32), (17, torch.float64)])
def test_torch_rows_agree_to_rounding_wherever_they_sit(width, dtype):
    """What the adapter can promise for BLAS-backed models: a row's scores agree to rounding wherever it sits.

    Bit-for-bit equality does not hold at some widths (the kernels' tail handling); that is why fast can differ
    from plain on cells within a few ulps of a tie (the regression examples below, and docs/contributing.md).
    """
    rng = np.random.default_rng(0)
    lin = torch_linear(rng.normal(size=(width, 8)), rng.normal(size=8), dtype)
    X = rng.normal(size=(DEFAULT_TORCH_BATCH, width)).astype(np.float32 if dtype == torch.float32 else np.float64)
    fn = ClassifierAdapter(lin)
    P = fn(X)
    rounding = 64 * np.finfo(P.dtype).eps  # a dot product of `width` terms rounds by at most ~width ulps
    for r in range(len(X)):
        np.testing.assert_allclose(fn(X[r : r + 1])[0], P[r], rtol=rounding, atol=rounding)


@pytest.mark.xfail(strict=False, raises=AssertionError, reason=_TORCH_ROWS)
@explicit_only()
@example(
    case=Case(
        seed=0,
        n_cells=36,
        n_other=0,
        n_genes=38,
        n_classes=2,
        x_dtype="float32",
        values="counts",
        classifier="mlp",
        model_dtype="float32",
        engine="stacked",
        weights="dense",
        tie="ulp",
        batch_bytes=1,
        torch_batch=DEFAULT_TORCH_BATCH,
    ),
    mod=Modification("fixed", 0.0),
    opts=SingleGeneOptions("all", 1, 1, return_first_found=False, na=()),
)
@given(case=cases(), mod=FIXED, opts=SINGLE_GENE_OPTIONS)
def test_single_gene_torch_blocks_regression(real, case, mod, opts):
    """Found by ``test_single_gene_fixed`` with the default blocks: plain records gene 37 (call 0, score 0.5: an
    18-18 tie goes to class 0), fast does not (call 1, 19 of 36 cells): three cells whose two logits are within
    an ulp change type with their place in the block."""
    _single_gene(real, case, mod, opts)


@pytest.mark.xfail(strict=False, raises=AssertionError, reason=_TORCH_ROWS)
@explicit_only()
@example(
    case=Case(
        seed=0,
        n_cells=3,
        n_other=0,
        n_genes=10,
        n_classes=3,
        x_dtype="float32",
        values="normal",
        classifier="linear",
        model_dtype="float32",
        engine="linear",
        weights="dense",
        tie="ulp",
        batch_bytes=1,
        torch_batch=ROW_STABLE_BATCH,
    ),
    mod=Modification("perc1"),
    opts=MaxChangeOptions("permuted", 1, 1, warm=False),
)
@given(case=cases(), mod=ANY_MODIFICATION, opts=MAX_CHANGE_OPTIONS)
def test_max_change_torch_in_place_rows_regression(real, case, mod, opts):
    """Found by ``test_max_change_fast_equals_plain`` with one row per pass in the expression's own precision:
    plain keeps [0, 6, 5, 4, 1, 2, 3] (score 1/3), fast (linear engine) [0, 5, 1, 6, 2, 7, 3] (score 2/3). Its
    first question, genes [0, 6, 5, 4, 1] alone, keeps the call in the whole cluster (types [1, 0, 2]) but not
    when the two cells too close to call are classified from the stacked buffer (types [2, 2]): cell 1, its
    logits -0.28456324 / -0.2845633 for classes 0 / 2 (an ulp twin), is read at another address."""
    _max_change(real, case, mod, opts)
