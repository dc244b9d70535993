"""The linear update of the black-box searches: same results as classifying every modified matrix.

For a linear classifier the fast searches compute a candidate's logits from the unmodified logits
plus the change of the modified genes, and hand cells too close to call (within a bound on the
classifier's own rounding error) to the classifier. Every result must equal the plain search's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from scadversarial.attacks._oracle import ClusterOracle
from scadversarial.attacks._protocol import ClassifierAdapter
from scadversarial.attacks.max_change import max_change_search
from scadversarial.attacks.modifications import modified_values
from scadversarial.attacks.random_walk import random_walk_search
from scadversarial.attacks.single_gene import single_gene_search


def _linear(W: np.ndarray, b: np.ndarray, dtype=torch.float32) -> torch.nn.Linear:
    lin = torch.nn.Linear(W.shape[0], W.shape[1]).to(dtype)
    with torch.no_grad():
        lin.weight.copy_(torch.as_tensor(W.T))
        lin.bias.copy_(torch.as_tensor(b))
    return lin


def _oracles(clf, classes, X, rows, mods, **kw):
    """(linear oracle, stacked oracle, plain oracle), each with its own call counter."""
    Vs = [modified_values(X, rows, m, rng=0) for m in mods]
    out = []
    for linear in (True, False, False):
        fn = ClassifierAdapter(clf, classes)
        out.append(ClusterOracle(fn, X[rows], Vs, linear=linear, **kw))
    return out


def _records(res):
    return [(tuple(g), c, s) for g, c, s in zip(res.genes, res.calls, res.scores, strict=True)]


def test_linear_head_only_for_linear_classifiers(lr_workload):
    W, b, X = lr_workload["W"], lr_workload["b"], lr_workload["X"][:200]
    lin = _linear(W, b)
    head = ClassifierAdapter(lin).linear_head()
    assert head is not None
    assert head.unit_roundoff == 2.0**-24
    np.testing.assert_allclose(head.weight, W.T.astype(np.float32), rtol=0, atol=0)
    assert ClassifierAdapter(torch.nn.Sequential(lin)).linear_head() is not None
    # float32 products allowed in TF32 / bfloat16: the rounding bound widens with them
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        assert ClassifierAdapter(lin).linear_head().unit_roundoff == 2.0**-11
    finally:
        torch.set_float32_matmul_precision(before)
    assert ClassifierAdapter(_linear(W, b, torch.float64)).linear_head().unit_roundoff == 2.0**-53
    mlp = torch.nn.Sequential(lin, torch.nn.ReLU(), torch.nn.Linear(W.shape[1], 3))
    assert ClassifierAdapter(mlp).linear_head() is None
    y = lr_workload["labels"][:200]
    assert ClassifierAdapter(RandomForestClassifier(n_estimators=3).fit(X, y)).linear_head() is None
    assert ClassifierAdapter(lambda Z: np.ones((len(Z), 2)) / 2, ["a", "b"]).linear_head() is None
    # the head's argmax is the classifier's per-cell type
    for clf in (
        LogisticRegression(max_iter=200).fit(X, y),
        LogisticRegression(max_iter=200).fit(X, y == y[0]),  # binary: one coefficient row
    ):
        fn = ClassifierAdapter(clf)
        head = fn.linear_head()
        assert head is not None
        assert head.weight.shape[0] == len(clf.classes_)
        logits = X.astype(np.float64) @ head.weight.T + head.bias
        np.testing.assert_array_equal(logits.argmax(1), fn(X).argmax(1))


@pytest.mark.parametrize(("target", "mod"), [("NK", "positive_aberrant"), ("B", "perc99"), ("DC", "perc1")])
def test_single_gene_linear_equals_plain(lr_workload, target, mod):
    lr = lr_workload
    rows = np.flatnonzero(lr["labels"] == target)
    lin_o, stacked_o, plain_o = _oracles(_linear(lr["W"], lr["b"]), lr["classes"], lr["X"], rows, [mod])
    assert lin_o.is_linear
    assert not stacked_o.is_linear
    plain = single_gene_search(plain_o, method="plain")
    fast = single_gene_search(lin_o, method="fast")
    assert _records(fast) == _records(plain)
    assert _records(single_gene_search(stacked_o, method="fast")) == _records(plain)
    assert lin_o.proba_fn.n_calls < 20 < plain_o.proba_fn.n_calls


def test_max_change_and_random_walk_linear_equal_plain(lr_workload):
    lr = lr_workload
    rows = np.flatnonzero(lr["labels"] == "CD14+ Mono")
    genes = np.arange(0, 2000, 5)
    lin_o, _, plain_o = _oracles(_linear(lr["W"], lr["b"]), lr["classes"], lr["X"], rows, ["perc99"])
    fast = max_change_search(lin_o, genes, random_state=3, method="fast")
    plain = max_change_search(plain_o, genes, random_state=3, method="plain")
    np.testing.assert_array_equal(fast.kept, plain.kept)
    assert (fast.call, fast.score) == (plain.call, plain.score)
    assert lin_o._incremental is not None  # answered by the incremental update
    rows = np.flatnonzero(lr["labels"] == "B")
    mods = ["perc1", "perc99", "positive_aberrant"]
    lin_o, _, plain_o = _oracles(_linear(lr["W"], lr["b"]), lr["classes"], lr["X"], rows, mods)
    kw = {"first_batch": 30, "walk_length": 30, "random_state": 3}
    fast = random_walk_search(lin_o, np.arange(40, 80), method="fast", **kw)
    plain = random_walk_search(plain_o, np.arange(40, 80), method="plain", **kw)
    assert plain.best is not None
    np.testing.assert_array_equal(fast.best, plain.best)
    assert fast.history == plain.history


def test_cells_too_close_to_call_go_to_the_classifier(lr_workload):
    """Two classes with identical weights tie on every cell: the classifier's own answer is used."""
    lr = lr_workload
    W = np.concatenate([lr["W"][:, :1], lr["W"]], axis=1)  # class 'twin' duplicates class 0
    b = np.concatenate([lr["b"][:1], lr["b"]])
    classes = ["twin", *lr["classes"]]
    rows = np.flatnonzero(lr["labels"] == lr["classes"][0])
    lin_o, _, plain_o = _oracles(_linear(W, b), classes, lr["X"], rows, ["positive_aberrant"])
    fast = single_gene_search(lin_o, np.arange(0, 2000, 7), method="fast")
    plain = single_gene_search(plain_o, np.arange(0, 2000, 7), method="plain")
    assert _records(fast) == _records(plain)
    assert lin_o.n_exact_rows > 0


def test_max_change_close_cells_go_to_the_classifier(lr_workload):
    """Incremental update: with a class that duplicates another every cell ties, the classifier decides."""
    lr = lr_workload
    W = np.concatenate([lr["W"][:, 2:3], lr["W"]], axis=1)  # class 'twin' duplicates class 2
    b = np.concatenate([lr["b"][2:3], lr["b"]])
    classes = ["twin", *lr["classes"]]
    rows = np.flatnonzero(lr["labels"] == lr["classes"][2])
    genes = np.arange(0, 2000, 3)
    lin_o, _, plain_o = _oracles(_linear(W, b), classes, lr["X"], rows, ["perc99"])
    fast = max_change_search(lin_o, genes, random_state=5, method="fast")
    plain = max_change_search(plain_o, genes, random_state=5, method="plain")
    np.testing.assert_array_equal(fast.kept, plain.kept)
    assert (fast.call, fast.score, fast.n_questions) == (plain.call, plain.score, plain.n_questions)
    assert lin_o.n_exact_rows > 0


def test_decided_matches_every_completion():
    """The call is settled by the known counts exactly when every type of the unknown cells gives the same answer."""
    from itertools import combinations_with_replacement

    from scadversarial.attacks._oracle import cluster_call, decided

    rng = np.random.default_rng(0)
    for _ in range(300):
        k = int(rng.integers(2, 5))
        counts = rng.integers(0, 6, size=k)
        rest = int(rng.integers(0, 4))
        orig = int(rng.integers(0, k))
        if counts.sum() + rest == 0:
            continue
        answers = set()
        for extra in combinations_with_replacement(range(k), rest):
            types = np.concatenate([np.repeat(np.arange(k), counts), np.array(extra, dtype=int)])
            answers.add(bool(cluster_call(types, k)[0] != orig))
        got = decided(counts.tolist(), rest, orig)
        if len(answers) == 1:
            assert got in (None, next(iter(answers)))  # None only where it cannot tell cheaply
            if rest == 0:
                assert got == next(iter(answers))
        else:
            assert got is None


@pytest.mark.parametrize("binary", [False, True])
def test_sklearn_logistic_regression_linear_equals_plain(lr_workload, binary):
    lr = lr_workload
    X, y = lr["X"][:, :300], lr["labels"]
    if binary:
        y = np.where(y == "B", "B", "other")
    clf = LogisticRegression(C=0.05, max_iter=300).fit(X, y)
    rows = np.flatnonzero(lr["labels"] == "B")
    lin_o, _, plain_o = _oracles(clf, None, X, rows, ["positive_aberrant"])
    assert lin_o.is_linear
    assert _records(single_gene_search(lin_o, method="fast")) == _records(single_gene_search(plain_o, method="plain"))


def test_no_rounding_bound_for_coarse_products(lr_workload):
    """bfloat16 products on 2,000 genes admit no rounding bound (n u >= 1): the classifier classifies every cell."""
    lr = lr_workload
    rows = np.flatnonzero(lr["labels"] == "NK")
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        lin_o, _, plain_o = _oracles(_linear(lr["W"], lr["b"]), lr["classes"], lr["X"], rows, ["perc99"])
        assert lin_o.linear.bounds.gamma == np.inf
        genes = np.arange(0, 2000, 9)
        fast = max_change_search(lin_o, genes, random_state=1, method="fast")
        plain = max_change_search(plain_o, genes, random_state=1, method="plain")
    finally:
        torch.set_float32_matmul_precision(before)
    np.testing.assert_array_equal(fast.kept, plain.kept)
    assert lin_o.n_exact_rows > 0


def test_with_values_reuses_the_unmodified_call(lr_workload):
    """An oracle for another modification of the same cells answers as a new one, without the unmodified call."""
    lr = lr_workload
    rows = np.flatnonzero(lr["labels"] == "NK")
    V1, V2 = (modified_values(lr["X"], rows, m) for m in ("perc1", "positive_aberrant"))
    fn = ClassifierAdapter(_linear(lr["W"], lr["b"]), lr["classes"])
    first = ClusterOracle(fn, lr["X"][rows], V1)
    single_gene_search(first, np.arange(0, 2000, 11))  # builds the shared unmodified logits
    calls = fn.n_calls
    second = first.with_values(V2)
    assert fn.n_calls == calls
    assert second.linear.unmod is first.linear.unmod
    assert second.n_evaluated == 0
    fresh = ClusterOracle(ClassifierAdapter(_linear(lr["W"], lr["b"]), lr["classes"]), lr["X"][rows], V2)
    genes = np.arange(0, 2000, 11)
    assert _records(single_gene_search(second, genes)) == _records(single_gene_search(fresh, genes))
    np.testing.assert_array_equal(second.V, V2)
    np.testing.assert_array_equal(first.V, V1)


def test_max_change_layout_reads_every_half_as_a_slice(lr_workload):
    """Every list of the interleaved halving is a block of the layout; its change matches the modified logits."""
    lr = lr_workload
    rows = np.flatnonzero(lr["labels"] == "NK")
    genes = np.random.default_rng(0).permutation(2000)[:777]  # not a power of two, not in gene order
    lin_o, _, _ = _oracles(_linear(lr["W"], lr["b"]), lr["classes"], lr["X"], rows, ["perc99"])
    lin_o.incremental.lay_out(genes)
    slot = lin_o.incremental.layout.slot
    np.testing.assert_array_equal(np.sort(slot), np.arange(2000))
    lists, todo = [], [genes]
    while todo:
        lst = todo.pop()
        for half in (lst[0::2], lst[1::2]):
            if len(half):
                lists.append(half)
                if len(half) > 1:
                    todo.append(half)
    K = len(lr["classes"])
    H0 = lin_o.incremental.start()[:K]
    for half in lists:
        s = slot[half]
        assert s.max() - s.min() + 1 == len(half)  # consecutive slots
    for half in lists[:: max(len(lists) // 40, 1)]:
        H = lin_o.modified(half).astype(np.float64) @ lin_o.linear.head.weight.T + lin_o.linear.head.bias
        # (the changes v - x are rounded to the matrix's float32 once: within ~1e-7 of the exact logits)
        np.testing.assert_allclose(H0 + lin_o.incremental.delta(half)[:K], H.T, rtol=1e-6, atol=1e-6)
    # a second half taken as its list's change less the first half's: the same within float64 rounding
    lst = genes[1::2]
    d = lin_o.incremental.delta(lst) - lin_o.incremental.delta(lst[0::2])
    np.testing.assert_allclose(d, lin_o.incremental.delta(lst[1::2]), rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="repeated"):
        max_change_search(lin_o, np.array([1, 2, 2, 3]))
    with pytest.raises(IndexError, match="0 <= g < 2000"):
        max_change_search(lin_o, np.array([0, -2000]))  # (an alias of gene 0)


@pytest.mark.parametrize(("k", "seed"), [(2, 5), (0, 1)])
def test_max_change_wrong_guesses_are_taken_back(lr_workload, k, seed):
    """A class within float32 rounding of another: the guesses from float64 logits are sometimes wrong, and the
    search goes back to each wrongly guessed question, asking exactly the plain search's questions."""
    lr = lr_workload
    rng = np.random.default_rng(seed)
    near = lr["W"][:, k : k + 1] * (1 + rng.choice([-1, 1], size=(lr["W"].shape[0], 1)) * 2.0**-23)
    W = np.concatenate([near, lr["W"]], axis=1).astype(np.float32)
    b = np.concatenate([lr["b"][k : k + 1], lr["b"]])
    classes = ["near", *lr["classes"]]
    rows = np.flatnonzero(lr["labels"] == lr["classes"][k])
    genes = np.arange(0, 2000, 3)
    lin_o, _, plain_o = _oracles(_linear(W, b), classes, lr["X"], rows, ["perc99"])
    rng_fast, rng_plain = np.random.default_rng(seed), np.random.default_rng(seed)
    fast = max_change_search(lin_o, genes, random_state=rng_fast, method="fast")
    plain = max_change_search(plain_o, genes, random_state=rng_plain, method="plain")
    np.testing.assert_array_equal(fast.kept, plain.kept)
    assert (fast.call, fast.score, fast.n_questions) == (plain.call, plain.score, plain.n_questions)
    assert fast.n_rewound > 0
    assert lin_o.n_exact_rows > 0
    # draws made on wrong guesses are given back: a shared generator goes on as after the plain search
    assert rng_fast.bit_generator.state == rng_plain.bit_generator.state


def _huge_term_oracles(n_genes: int):
    """One cell, a gene whose modified value is 2**37 (its float64 terms round by ~1e-5) next to a gene whose
    small weight decides the call: an update that adds that gene's terms and takes them out again is not exact."""
    W = np.zeros((n_genes, 2))
    W[0, 1], W[2, 1] = 1.0, 1.4e-5
    b = np.array([1.2e-5, 0.0])
    X = np.zeros((1, n_genes))
    V = np.zeros((1, n_genes))
    V[0, 0], V[0, 2] = 2.0**37, 1.0
    out = []
    for linear in (True, False):
        fn = ClassifierAdapter(_linear(W, b, torch.float64), ["a", "b"])
        out.append(ClusterOracle(fn, X, V, linear=linear))
    return out


def test_huge_terms_of_other_genes_do_not_decide():
    """Terms of genes outside the candidate (a max-change half's sibling, the fully modified logits, a recent set)
    are not in the candidate's bound: they must not make the linear update answer differently from the classifier."""
    for seed in range(6):
        lin_o, plain_o = _huge_term_oracles(4)
        fast = max_change_search(lin_o, np.arange(4), random_state=seed, method="fast")
        plain = max_change_search(plain_o, np.arange(4), random_state=seed, method="plain")
        assert (fast.kept.tolist(), fast.call, fast.n_questions) == (plain.kept.tolist(), plain.call, plain.n_questions)
    lin_o, plain_o = _huge_term_oracles(130)
    # large sets: from the fully modified logits less gene 0, then from that set less one more gene (a recent set)
    for cand in (np.arange(1, 130), np.arange(1, 129), np.arange(0, 128)):
        call, score, flipped = lin_o.evaluate_many([cand])
        assert (int(call[0]), float(score[0])) == plain_o.evaluate_one(cand)
        assert bool(flipped[0]) == (plain_o.evaluate_one(cand)[0] != plain_o.orig_call)


def test_every_engine_types_rows_as_the_reference(lr_workload):
    """The engine interface: what an engine types plus the classifier's types of the rows it leaves is the reference.

    A class within float32 rounding of another makes cells too close to call; the candidates cover small and large
    gene sets, several modifications, a fully modified cluster and a subset of the rows.
    """
    lr = lr_workload
    rng = np.random.default_rng(4)
    near = lr["W"][:, 1:2] * (1 + rng.choice([-1, 1], size=(lr["W"].shape[0], 1)) * 2.0**-23)
    W = np.concatenate([near, lr["W"]], axis=1).astype(np.float32)
    b = np.concatenate([lr["b"][1:2], lr["b"]])
    rows = np.flatnonzero(lr["labels"] == lr["classes"][1])
    lin_o, _, _ = _oracles(_linear(W, b), ["near", *lr["classes"]], lr["X"], rows, ["perc99", "positive_aberrant"])
    perm = rng.permutation(2000)
    cands = [
        [(perm[:5], 0)],
        [(perm[:40], 1)],
        [(perm[:300], 0)],
        [(perm[:1500], 0)],
        [(np.arange(2000), 0)],
        [(perm[:30], 0), (perm[30:90], 1)],
    ]
    n, K = lin_o.n_cells, lin_o.n_classes
    some = np.arange(0, n, 3)
    jobs = [(c, lin_o.cells.all_rows) for c in cands] + [(c, some) for c in cands[:3]]
    ref = [lin_o.reference.types(pairs) for pairs, _ in jobs]
    left_any = 0
    for engine in (lin_o.reference, lin_o.stacked, lin_o.linear, lin_o.incremental):
        typed = engine.type_rows(jobs)
        for j, (_, r) in enumerate(jobs):
            left = typed.left[j]
            assert np.isin(left, r).all()
            got = typed.counts[j] + np.bincount(ref[j][left], minlength=K)
            np.testing.assert_array_equal(got, np.bincount(ref[j][r], minlength=K))
            left_any += len(left)
    assert left_any > 0  # (the near class leaves some cells to the classifier)
