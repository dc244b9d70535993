"""Black-box searches on the adverSCarial benchmark workload (PBMC3k, fixed logistic regression).

The plain searches (one classifier call per candidate) reproduce the R package's call counts of
``tests/data/lr_oracle/README.md`` (evidence of the same search order); the fast searches must
return exactly the plain searches' results with far fewer calls.
"""

from __future__ import annotations

import numpy as np
import pytest

from scadversarial.attacks._oracle import ClusterOracle, cluster_call
from scadversarial.attacks._protocol import ClassifierAdapter
from scadversarial.attacks.cgd import cgd_search
from scadversarial.attacks.grid import grid_combinations, grid_search
from scadversarial.attacks.max_change import max_change_search
from scadversarial.attacks.modifications import modified_values
from scadversarial.attacks.random_walk import random_walk_search
from scadversarial.attacks.sign_genes import sign_genes_order
from scadversarial.attacks.single_gene import single_gene_search


@pytest.fixture(scope="session")
def lr_oracle(lr_workload):
    """The workload, searched through its opaque callable (the stacked fast path)."""
    return lr_workload


def _oracle(lr, target, mod, **kw):
    rows = np.flatnonzero(lr["labels"] == target)
    fn = ClassifierAdapter(lr["proba"], lr["classes"])
    mods = mod if isinstance(mod, list) else [mod]
    Vs = [modified_values(lr["X"], rows, m, rng=0) for m in mods]
    return ClusterOracle(fn, lr["X"][rows], Vs, **kw), fn


def _records(res):
    return [(tuple(g), c, s) for g, c, s in zip(res.genes, res.calls, res.scores, strict=True)]


def test_cluster_call_ties_go_to_first_class():
    call, score, counts = cluster_call(np.array([[2, 2, 1, 1, 0], [0, 0, 0, 3, 3]]), 4)
    np.testing.assert_array_equal(call, [1, 0])
    np.testing.assert_allclose(score, [0.4, 0.6])
    np.testing.assert_array_equal(counts[0], [1, 2, 2, 0])


def test_percentiles_are_numpys(lr_oracle):
    rows = np.flatnonzero(lr_oracle["labels"] == "B")
    for q, name in ((0.01, "perc1"), (0.99, "perc99")):
        np.testing.assert_array_equal(
            modified_values(lr_oracle["X"], rows, name)[0], np.quantile(lr_oracle["X"], q, axis=0)
        )


def test_single_gene_perc99_matches_r_count(lr_oracle):
    o, fn = _oracle(lr_oracle, "B", "perc99")
    plain = single_gene_search(o, method="plain")
    assert fn.n_calls == 201  # the R package: 1 original + 2 per bin
    o2, fn2 = _oracle(lr_oracle, "B", "perc99")
    fast = single_gene_search(o2, method="fast")
    assert _records(fast) == _records(plain)
    assert fn2.n_calls < 20


def test_single_gene_aberrant_matches_r_count_and_fast(lr_oracle):
    o, fn = _oracle(lr_oracle, "NK", "positive_aberrant")
    plain = single_gene_search(o, method="plain")
    assert fn.n_calls == 3217  # as the R package
    o2, fn2 = _oracle(lr_oracle, "NK", "positive_aberrant")
    fast = single_gene_search(o2, method="fast")
    assert len(plain.genes) > 1000
    assert _records(fast) == _records(plain)  # same genes, calls, scores, depth-first order
    assert fn2.n_calls < 300  # far fewer, larger calls
    # every record flips the call alone (checked by one plain call each, on a sample)
    for g, c, s in _records(plain)[:: len(plain.genes) // 10]:
        assert o.evaluate_one(np.array(g)) == (c, s)


def test_single_gene_options_agree(lr_oracle):
    genes = np.arange(0, 2000, 7)  # a gene subset (the R package's genes= argument fails)
    for kw in ({"return_first_found": True}, {"max_split_size": 4, "first_dichot": 10}, {"first_dichot": 3}):
        o, fn = _oracle(lr_oracle, "B", "positive_aberrant")
        plain = single_gene_search(o, genes, method="plain", **kw)
        o2, _ = _oracle(lr_oracle, "B", "positive_aberrant")
        fast = single_gene_search(o2, genes, method="fast", **kw)
        assert _records(fast) == _records(plain), kw
        assert all(set(g) <= set(genes) for g in plain.genes)
    # first found = the first record of the full search, with fewer calls (plain stops at it: depth-first)
    o, fn_full = _oracle(lr_oracle, "B", "positive_aberrant")
    full = single_gene_search(o, genes, method="plain")
    o, fn = _oracle(lr_oracle, "B", "positive_aberrant")
    first = single_gene_search(o, genes, method="plain", return_first_found=True)
    assert _records(first) == _records(full)[:1]
    assert fn.n_calls == first.n_tested + 1 < fn_full.n_calls  # + 1: the unmodified cluster's call


def test_single_gene_not_na(lr_oracle):
    # declare 'Platelet' the abstention class: flips to it are not recorded with change_type='not_na'
    o, _ = _oracle(lr_oracle, "NK", "positive_aberrant")
    genes = np.arange(300)
    anyf = single_gene_search(o, genes, method="fast")
    na = lr_oracle["classes"].index("CD14+ Mono")
    assert na in anyf.calls
    for method in ("plain", "fast"):
        res = single_gene_search(o, genes, method=method, change_type="not_na", na_classes=[na])
        assert na not in res.calls
        assert _records(res) == [r for r in _records(anyf) if r[1] != na]


def test_max_change_fast_equals_plain(lr_oracle):
    genes = np.arange(0, 2000, 4)
    results = {}
    for method in ("plain", "fast"):
        o, fn = _oracle(lr_oracle, "CD14+ Mono", "perc99")
        rng = np.random.default_rng(7)  # a generator shared with later searches (as in an overview)
        res = max_change_search(o, genes, random_state=rng, method=method)
        results[method] = (res, fn.n_calls, rng.bit_generator.state)
    plain, fast = results["plain"][0], results["fast"][0]
    np.testing.assert_array_equal(fast.kept, plain.kept)
    assert fast.n_questions == plain.n_questions
    assert results["fast"][2] == results["plain"][2]  # speculation left the generator where plain leaves it
    assert results["fast"][1] < results["plain"][1]
    assert 0 < len(plain.kept) < len(genes)
    assert plain.call == o.orig_call  # the kept genes modified as a whole keep the call
    assert o.evaluate_one(plain.kept)[0] == o.orig_call
    # seeded: same seed, same result; the halves' order changes with the seed
    o, _ = _oracle(lr_oracle, "CD14+ Mono", "perc99")
    np.testing.assert_array_equal(max_change_search(o, genes, random_state=7).kept, plain.kept)


def test_cgd_matches_r_counts_and_fast(lr_oracle):
    rows = np.flatnonzero(lr_oracle["labels"] == "CD8 T")
    for ae, r_calls in ((1.0, 197), (10.0, 25)):
        out = {}
        for method in ("plain", "fast"):
            fn = ClassifierAdapter(lr_oracle["proba"], lr_oracle["classes"])
            res = cgd_search(fn, lr_oracle["X"][rows], lr_oracle["cgd_order"], alpha=ae, epsilon=ae, method=method)
            out[method] = (res, fn.n_calls)
        plain, fast = out["plain"][0], out["fast"][0]
        assert out["plain"][1] == r_calls  # the R package's count
        assert out["fast"][1] < r_calls
        assert plain.switched
        assert lr_oracle["classes"][plain.orig_call] == "CD8 T"
        assert fast.modified_genes == plain.modified_genes
        np.testing.assert_array_equal(fast.X, plain.X)
        np.testing.assert_array_equal(fast.types, plain.types)
        # same genes, cells and calls; a probability averaged over other blocks of rows may differ in its last bit
        assert len(fast.summary) == len(plain.summary)
        for f, p in zip(fast.summary, plain.summary, strict=True):
            assert f == pytest.approx(p, rel=1e-12, abs=1e-15)
        # only the visited genes changed
        changed = np.flatnonzero((lr_oracle["X"][rows] != plain.X).any(0))
        assert set(changed) <= set(plain.modified_genes)


def test_cgd_no_stop_runs_all_genes(lr_oracle):
    rows = np.flatnonzero(lr_oracle["labels"] == "CD8 T")
    genes = lr_oracle["cgd_order"][:30]
    out = {}
    for method in ("plain", "fast"):
        fn = ClassifierAdapter(lr_oracle["proba"], lr_oracle["classes"])
        out[method] = cgd_search(
            fn, lr_oracle["X"][rows], genes, alpha=10, epsilon=10, stop_at_switch=False, method=method
        )
    assert out["plain"].n_genes_visited == out["fast"].n_genes_visited
    np.testing.assert_array_equal(out["plain"].X, out["fast"].X)


def test_cgd_nothing_to_do_asks_no_trial(lr_oracle):
    """Every cell already called the new target: no gene is visited, and no trial is classified."""
    P = lr_oracle["proba"](lr_oracle["X"])
    rows = np.flatnonzero((lr_oracle["labels"] == "CD8 T") & (P.argmax(1) == lr_oracle["classes"].index("CD8 T")))
    X, genes = lr_oracle["X"][rows], lr_oracle["cgd_order"][:10]
    calls = {}
    for method in ("plain", "fast"):
        fn = ClassifierAdapter(lr_oracle["proba"], lr_oracle["classes"])
        res = cgd_search(fn, X, genes, new_target=lr_oracle["classes"].index("CD8 T"), method=method)
        assert (res.n_genes_visited, res.modified_genes, len(res.summary)) == (0, [], 1)
        np.testing.assert_array_equal(res.X, X)
        calls[method] = fn.n_calls
    assert calls == {"plain": 2, "fast": 1}  # plain: the start and the final cluster, as the R package


def test_random_walk_fast_equals_plain(lr_oracle):
    genes = np.arange(40, 80)
    out = {}
    for method in ("plain", "fast"):
        o, fn = _oracle(lr_oracle, "B", ["perc1", "perc99", "positive_aberrant"])
        res = random_walk_search(o, genes, first_batch=30, walk_length=30, random_state=3, method=method)
        out[method] = (res, fn.n_calls)
    plain, fast = out["plain"][0], out["fast"][0]
    assert plain.best is not None
    np.testing.assert_array_equal(fast.best, plain.best)
    assert fast.history == plain.history
    assert out["fast"][1] <= out["plain"][1]
    assert plain.history[-1]["n_genes"] <= plain.history[0]["n_genes"]
    assert (plain.best[np.setdiff1d(np.arange(2000), genes)] == -1).all()
    o, _ = _oracle(lr_oracle, "B", ["perc1", "perc99", "positive_aberrant"])
    assert o.evaluate_assignment(plain.best) == (plain.best_call, plain.best_score)


def test_grid_fast_equals_plain_and_first_found(lr_oracle):
    genes = np.array([3, 10, 50, 77])
    out = {}
    for method in ("plain", "fast"):
        o, fn = _oracle(lr_oracle, "NK", ["perc1", "positive_aberrant"])
        out[method] = grid_search(o, genes, method=method)
    for f in ("combos", "calls", "scores", "flipped"):
        np.testing.assert_array_equal(getattr(out["fast"], f), getattr(out["plain"], f))
    assert len(out["plain"].calls) == 3**4 - 1
    assert out["plain"].flipped.any()
    for method in ("plain", "fast"):
        o, _ = _oracle(lr_oracle, "NK", ["perc1", "positive_aberrant"])
        first = grid_search(o, genes, method=method, return_first_found=True)
        k = int(np.flatnonzero(out["plain"].flipped)[0])
        assert len(first.calls) == k + 1
        assert first.flipped[-1]
        assert not first.flipped[:-1].any()
    with pytest.raises(ValueError, match="combinatorial|max_combinations"):
        grid_combinations(20, 3)


def test_sign_genes_order_interleaves():
    rng = np.random.default_rng(0)
    pv = rng.random((4, 30))
    order, pval, pair = sign_genes_order(pv)
    ref, seen = [], set()
    ranked = np.argsort(pv, axis=1, kind="stable")
    for i in range(30):
        for p in range(4):
            g = ranked[p, i]
            if g not in seen:
                seen.add(g)
                ref.append((g, p))
    assert [int(g) for g in order] == [g for g, _ in ref]
    assert [int(p) for p in pair] == [p for _, p in ref]
    np.testing.assert_allclose(pval, pv[pair, order])


def test_cgd_rows_of_a_larger_matrix(lr_oracle):
    """``rows=``: the cluster's rows taken from the whole matrix (any layout or dtype) give the same search."""
    X, genes = lr_oracle["X"], lr_oracle["cgd_order"][:40]
    rows = np.flatnonzero(lr_oracle["labels"] == "CD8 T")
    before = X[rows].copy()
    for method in ("fast", "plain"):
        kw = {"alpha": 10, "epsilon": 10, "method": method}
        ref = cgd_search(ClassifierAdapter(lr_oracle["proba"], lr_oracle["classes"]), X[rows], genes, **kw)
        for Z in (X, np.asfortranarray(X)):
            fn = ClassifierAdapter(lr_oracle["proba"], lr_oracle["classes"])
            res = cgd_search(fn, Z, genes, rows=rows, **kw)
            assert res.summary == ref.summary
            assert res.modified_genes == ref.modified_genes
            np.testing.assert_array_equal(res.X, ref.X)
            np.testing.assert_array_equal(res.types, ref.types)
        np.testing.assert_array_equal(X[rows], before)  # the input is left alone
    fn = ClassifierAdapter(lr_oracle["proba"], lr_oracle["classes"])
    for bad in ([len(X)], [-1], [0.5]):
        with pytest.raises(IndexError, match="rows"):
            cgd_search(fn, X, genes, rows=bad)
