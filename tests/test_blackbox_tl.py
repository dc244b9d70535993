"""AnnData-facing black-box attacks: tables, records, layers, errors."""

from __future__ import annotations

import os

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import scadversarial as sad
from scadversarial.tl._blackbox import (
    CGDOptions,
    GridOptions,
    MaxChangeOptions,
    Modification,
    OverviewOptions,
    RandomWalkOptions,
    SingleGeneOptions,
)

table = sad.get.attack_table


@pytest.fixture(scope="session")
def lr_adata(lr_workload):
    """PBMC3k log-normalized HVGs as AnnData (obs 'cluster') and the fixed LR classifier as a callable."""
    lr = lr_workload
    a = ad.AnnData(
        lr["X"].copy(),
        obs=pd.DataFrame({"cluster": pd.Categorical(lr["labels"])}, index=pd.Index(lr["cells"])),
    )
    a.var_names = lr["genes"]
    lr_proba, classes = lr["proba"], lr["classes"]
    a.layers["lognorm"] = a.X.copy()
    return a, lr_proba, classes


@pytest.fixture(scope="session")
def small_lr(lr_adata):
    """A scikit-learn classifier (Gaussian naive Bayes, quick to fit) on the first 300 genes."""
    from sklearn.naive_bayes import GaussianNB

    a, _, _ = lr_adata
    return GaussianNB().fit(a.X[:, :300], a.obs["cluster"].astype(str).to_numpy())


@pytest.fixture
def small(lr_adata, small_lr):
    """Every cell, the first 300 genes, and a classifier on them (with its classes)."""
    a, _, _ = lr_adata
    return a[:, :300].copy(), small_lr, list(small_lr.classes_)


def _state(a):
    return (sorted(a.layers), sorted(a.uns.get("sad", {}).get("attacks", {})), a.X.sum())


def test_single_gene_attack_table_record_h5ad(small, tmp_path):
    a, proba, classes = small
    clf = sad.tl.ClassifierSpec(proba, classes=classes)
    sad.tl.single_gene_attack(a, groupby="cluster", target="NK", classifier=clf, modification="positive_aberrant")
    df = table(a, "single_gene_NK_positive_aberrant")
    assert list(df.columns) == ["gene", "n_genes", "new_call", "score", "cluster", "modification", "orig_call"]
    assert len(df) > 10
    assert (df["new_call"] != "NK").all()
    assert df["orig_call"].eq("NK").all()
    assert df["gene"].isin(a.var_names).all()
    assert ((df["score"] > 0) & (df["score"] <= 1)).all()
    rec = a.uns["sad"]["attacks"]["single_gene_NK_positive_aberrant"]
    assert rec["kind"] == "blackbox"
    assert rec["mode"] == "single_gene"
    assert rec["metrics"]["n_found"] == len(df)
    assert rec["metrics"]["n_calls"] >= 2
    np.testing.assert_array_equal(rec["table"]["gene"], df["gene"].to_numpy())
    sad.tl.single_gene_attack(
        a,
        groupby="cluster",
        target="NK",
        classifier=clf,
        modification="positive_aberrant",
        options=SingleGeneOptions(method="plain"),
        key_added="p",
    )
    pd.testing.assert_frame_equal(table(a, "p"), df)
    assert a.uns["sad"]["attacks"]["p"]["metrics"]["n_calls"] > rec["metrics"]["n_calls"]
    path = tmp_path / "a.h5ad"
    a.write_h5ad(path)
    back = ad.read_h5ad(path)
    np.testing.assert_array_equal(back.uns["sad"]["attacks"]["p"]["table"]["gene"], df["gene"].to_numpy())


def test_single_gene_genes_and_first_found(small):
    a, proba, classes = small
    genes = list(a.var_names[50:120])
    kw = {
        "groupby": "cluster",
        "target": "B",
        "classifier": sad.tl.ClassifierSpec(proba, classes=classes),
        "modification": "positive_aberrant",
        "genes": genes,
    }
    sad.tl.single_gene_attack(a, key_added="all", **kw)
    df = table(a, "all")
    assert set(df["gene"]) <= set(genes)
    assert len(df) > 0
    sad.tl.single_gene_attack(a, options=SingleGeneOptions(return_first_found=True), key_added="first", **kw)
    first = table(a, "first")
    assert len(first) == 1
    assert first["gene"].iloc[0] == df["gene"].iloc[0]
    sad.tl.single_gene_attack(a, options=SingleGeneOptions(exclude_genes=df["gene"][:3]), key_added="excl", **kw)
    excl = table(a, "excl")
    assert not set(df["gene"][:3]) & set(excl["gene"])


def test_max_change_cgd_walk_grid_overview_sign(small, tmp_path):
    a, proba, classes = small
    kw = {"groupby": "cluster", "classifier": sad.tl.ClassifierSpec(proba, classes=classes)}
    sad.tl.max_change_attack(
        a, target="CD14+ Mono", modification="perc99", options=MaxChangeOptions(random_state=1), **kw
    )
    mc = table(a, "max_change_CD14+ Mono_perc99")
    assert len(mc) == a.n_vars
    assert mc["kept"].sum() > 0
    assert (mc["kept"] == ~mc["signature"]).all()
    m = a.uns["sad"]["attacks"]["max_change_CD14+ Mono_perc99"]["metrics"]
    assert m["call"] == m["orig_call"]  # the kept genes modified together keep the call
    plain = MaxChangeOptions(random_state=1, method="plain")
    sad.tl.max_change_attack(a, target="CD14+ Mono", modification="perc99", options=plain, key_added="mcp", **kw)
    pd.testing.assert_frame_equal(mc, table(a, "mcp"))

    before = a.X.copy()
    sad.tl.cgd_attack(a, target="CD8 T", options=CGDOptions(alpha=10, epsilon=10), **kw)
    cg = table(a, "sad_cgd_CD8 T")
    assert cg["order"].iloc[0] == 0
    assert len(cg) > 1
    layer = a.layers["sad_cgd_CD8 T"]
    rows = (a.obs["cluster"] == "CD8 T").to_numpy()
    np.testing.assert_array_equal(layer[~rows], before[~rows])
    assert (layer[rows] != before[rows]).any()
    np.testing.assert_array_equal(a.X, before)
    rec = a.uns["sad"]["attacks"]["sad_cgd_CD8 T"]
    assert list(rec["layers"]) == ["sad_cgd_CD8 T"]
    assert rec["metrics"]["orig_call"] in classes
    assert len(rec["modified_genes"]) == rec["metrics"]["n_modified_genes"]

    sad.tl.random_walk_attack(
        a,
        target="B",
        genes=list(a.var_names[:30]),
        modifications=["perc1", "positive_aberrant"],
        options=RandomWalkOptions(walk_length=20),
        **kw,
    )
    rw = table(a, "random_walk_B")
    assert set(rw.columns) >= {"gene", "modification", "new_call", "score", "cluster"}
    assert len(rw) > 0
    assert (rw["new_call"] != "B").all()

    sad.tl.grid_attack(a, target="NK", genes=list(a.var_names[:3]), modifications=["perc1", "positive_aberrant"], **kw)
    gr = table(a, "grid_NK")
    assert len(gr) == 3**3 - 1
    assert list(gr.columns[:3]) == list(a.var_names[:3])
    assert set(gr.iloc[:, 0]) == {"none", "perc1", "positive_aberrant"}

    sad.tl.attack_overview(a, clusters=["B", "NK"], modifications=["perc1", "positive_aberrant"], **kw)
    ov = table(a, "overview")
    assert len(ov) == 4
    assert {"single_gene_n_found", "max_change_n_kept"} <= set(ov.columns)
    assert (ov.loc[ov["modification"] == "positive_aberrant", "single_gene_n_found"] > 0).all()

    sad.tl.sign_genes(a, groupby="cluster")
    sg = table(a, "sign_genes")
    assert sg["gene"].is_unique
    assert len(sg) == a.n_vars
    assert sg["rank"].iloc[0] == 1
    a.write_h5ad(tmp_path / "b.h5ad")
    back = ad.read_h5ad(tmp_path / "b.h5ad")
    assert "sad_cgd_CD8 T" in back.layers
    assert "overview" in back.uns["sad"]["attacks"]


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"layer": "nope"}, KeyError, "nope"),
        ({"groupby": "nope"}, KeyError, "nope"),
        ({"target": "Martian"}, ValueError, "Martian"),
        ({"modification": "perc50"}, ValueError, "Unknown modification"),
        ({"genes": ["NOT_A_GENE"]}, KeyError, "NOT_A_GENE"),
        ({"classes": ["a", "b"]}, ValueError, "probability columns"),
        ({"classifier": "wrong_shape"}, ValueError, "300-gene matrix"),
    ],
)
def test_bad_input_leaves_adata_unchanged(small, kwargs, err, match):
    a, proba, classes = small
    kw = {"groupby": "cluster", "target": "NK", "classifier": proba, "classes": classes, **kwargs}
    if kw["classifier"] == "wrong_shape":
        W = np.ones((500, 3))
        kw["classifier"], kw["classes"] = (lambda Z: np.asarray(Z) @ W), ["a", "b", "c"]
    kw["classifier"] = sad.tl.ClassifierSpec(kw["classifier"], classes=kw.pop("classes"))
    before = _state(a)
    with pytest.raises(err, match=match):
        sad.tl.single_gene_attack(a, **kw)
    assert _state(a) == before


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: SingleGeneOptions(method="slow"), "method='slow' is not one of 'fast', 'plain'"),
        (lambda: SingleGeneOptions(change_type="na"), "change_type"),
        (lambda: CGDOptions(sign_method="anova"), "sign_method"),
        (lambda: OverviewOptions(modes=("single_gene", "grid")), "modes='grid'"),
        (lambda: OverviewOptions(modes=()), "at least one"),
        (lambda: Modification("perc99", 2.0), "takes no value"),
        (lambda: Modification("perc50"), "Unknown modification"),
    ],
)
def test_bad_options_fail_when_made(make, match):
    """String options are checked once, when their options object is made: before anything is read."""
    with pytest.raises(ValueError, match=match):
        make()


def test_another_modes_options_are_refused(small):
    """Options of another mode would be recorded without being used: refused, naming the right class."""
    a, proba, classes = small
    clf = sad.tl.ClassifierSpec(proba, classes=classes)
    before = _state(a)
    with pytest.raises(TypeError, match=r"options must be a MaxChangeOptions.*got a SingleGeneOptions"):
        sad.tl.max_change_attack(a, groupby="cluster", target="NK", classifier=clf, options=SingleGeneOptions())
    assert _state(a) == before


@pytest.mark.filterwarnings("ignore::scadversarial.attacks._protocol.TiedScoresWarning")  # (GaussianNB at 5)
def test_options_record_every_argument_and_copy(small):
    """params come from the call's own arguments (max_tries included); copy=True returns the written copy."""
    a, proba, classes = small
    clf = sad.tl.ClassifierSpec(proba, classes=classes)
    opts = RandomWalkOptions(max_tries=77, walk_length=5, first_batch=10)
    out = sad.tl.random_walk_attack(
        a,
        groupby="cluster",
        target="B",
        classifier=clf,
        genes=list(a.var_names[:20]),
        modifications=[Modification("fixed", 5.0), "positive_aberrant"],
        options=opts,
        copy=True,
    )
    assert "sad" not in a.uns
    params = sad.get.attack_record(out, "random_walk_B")["params"]
    assert params["max_tries"] == 77
    assert params["walk_length"] == 5
    assert list(params["modifications"]) == ["fixed", "positive_aberrant"]
    assert list(params["modification_values"]) == [5.0, 1e4]
    assert params["classifier"] == "sklearn"
    assert params["layer"] == "X"
    assert sad.tl.sign_genes(a, groupby="cluster") is None
    # a Modification's value reaches the modified values: fixed at 5 is the same search as a callable setting 5
    kw = {"groupby": "cluster", "target": "NK", "classifier": clf, "genes": list(a.var_names[:60])}
    sad.tl.single_gene_attack(a, modification=Modification("fixed", 5.0), key_added="f", **kw)

    def five(x_target, x_all):
        return np.full_like(x_target, 5.0)

    sad.tl.single_gene_attack(a, modification=five, key_added="c", **kw)
    f, c = table(a, "f"), table(a, "c")
    np.testing.assert_array_equal(f["gene"], c["gene"])
    assert sad.get.attack_record(a, "f")["params"]["modification_value"] == 5.0


def test_nan_and_cgd_errors(small):
    a, proba, classes = small
    b = a.copy()
    b.X[3, 4] = np.nan
    clf = sad.tl.ClassifierSpec(proba, classes=classes)
    with pytest.raises(ValueError, match="NaN"):
        sad.tl.max_change_attack(b, groupby="cluster", target="NK", classifier=clf)
    before = _state(a)
    with pytest.raises(ValueError, match="new_target"):
        sad.tl.cgd_attack(a, groupby="cluster", target="NK", classifier=clf, options=CGDOptions(new_target="Martian"))
    with pytest.raises(ValueError, match="max_combinations"):
        sad.tl.grid_attack(
            a,
            groupby="cluster",
            target="NK",
            classifier=clf,
            genes=list(a.var_names[:12]),
            options=GridOptions(max_combinations=1000),
        )
    assert _state(a) == before


@pytest.fixture
def one_torch_thread():
    """Torch's threads spin badly on a busy shared machine; the results do not depend on it."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_sad_classifier_by_default(pipeline68k, one_torch_thread):
    """classifier=None: the trained sad MLP (torch path), genes aligned by var_names."""
    a = pipeline68k.copy()
    clf = sad.tl.get_model(a, "classifier")
    target = a.obs["sad_label"].astype(str).value_counts().index[-1]
    kw = {
        "groupby": "sad_label",
        "target": target,
        "modification": "positive_aberrant",
        "genes": list(clf.var_names[:150]),
    }
    sad.tl.single_gene_attack(a, key_added="fast", **kw)
    sad.tl.single_gene_attack(a, options=SingleGeneOptions(method="plain"), key_added="plain", **kw)
    fast = table(a, "fast")
    pd.testing.assert_frame_equal(fast, table(a, "plain"))
    assert set(fast["gene"]) <= set(clf.var_names)
    # a torch module passed explicitly gives the same table
    sad.tl.single_gene_attack(a, classifier=clf, key_added="explicit", **kw)
    pd.testing.assert_frame_equal(table(a, "explicit"), fast)
    assert a.uns["sad"]["attacks"]["plain"]["params"]["classifier"] == "sad classifier"
    # genes aligned by name: a shuffled AnnData gives the same attack
    b = a[:, a.var_names[::-1]].copy()
    sad.tl.single_gene_attack(b, key_added="fast", **kw)
    pd.testing.assert_frame_equal(table(b, "fast"), fast)


def test_finite_check_and_private_matrix():
    """The sum fast path of the finite check gives the exact element-wise answer; copy=True never aliases adata."""
    import scipy.sparse as sp

    from scadversarial._validate import check_finite, get_matrix

    big = np.full((4, 3), np.finfo(np.float32).max, dtype=np.float32)  # finite, but its sum overflows
    check_finite(big)
    check_finite(np.zeros((0, 3), dtype=np.float32))
    check_finite(np.array([1e4, 2.0], dtype=np.float16))  # float16 sum overflows: exact test
    for bad in (np.nan, np.inf, -np.inf):
        for dtype in (np.float16, np.float32, np.float64, np.complex64):
            X = np.ones((5, 4), dtype=dtype)
            X[2, 1] = bad
            with pytest.raises(ValueError, match="1 NaN or infinite"):
                check_finite(X)
        with pytest.raises(ValueError, match="1 NaN or infinite"):
            check_finite(sp.csr_matrix(np.where(np.eye(3) > 0, bad, 0.0)[:, :1]))
    X = big.copy()
    X[0, 0], X[1, 1] = np.inf, -np.inf  # inf + -inf: NaN sum
    with pytest.raises(ValueError, match="2 NaN or infinite"):
        check_finite(X)

    rng = np.random.default_rng(0)
    for X in (
        rng.random((6, 4), dtype=np.float32),
        rng.random((6, 4)),
        sp.csr_matrix(rng.random((6, 4), dtype=np.float32)),
    ):
        a = ad.AnnData(X)
        a.layers["l"] = X.copy()
        for layer in (None, "l"):
            src = a.X if layer is None else a.layers[layer]
            M = get_matrix(a, layer, copy=True)
            assert M.dtype == np.float32
            assert not np.shares_memory(M, np.asarray(src) if not sp.issparse(src) else src.data)
            np.testing.assert_array_equal(M, get_matrix(a, layer))
    view = ad.AnnData(rng.random((6, 4), dtype=np.float32))[1:4]
    assert not np.shares_memory(get_matrix(view, copy=True), view.X)
    bad = ad.AnnData(np.ones((3, 2), dtype=np.float32))
    bad.X[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        get_matrix(bad, copy=True)


def test_cgd_layer_is_a_private_copy(small):
    """The attacked layer never aliases the input matrix, whatever its type; a NaN anywhere still fails."""
    import scipy.sparse as sp

    a, proba, classes = small
    kw = {
        "groupby": "cluster",
        "classifier": sad.tl.ClassifierSpec(proba, classes=classes),
        "target": "CD8 T",
        "options": CGDOptions(alpha=10, epsilon=10),
    }
    ref = table(sad.tl.cgd_attack(a, genes=list(a.var_names[:40]), key_added="k", copy=True, **kw), "k")
    for X in (a.X, a.X.astype(np.float64), sp.csr_matrix(a.X)):
        b = a.copy()
        b.X = X.copy()
        before = b.X.copy()
        sad.tl.cgd_attack(b, genes=list(a.var_names[:40]), key_added="k", **kw)
        pd.testing.assert_frame_equal(table(b, "k"), ref)
        layer = b.layers["k"]
        assert isinstance(layer, np.ndarray)
        assert layer.dtype == np.float32
        assert not np.shares_memory(layer, b.X.data if sp.issparse(b.X) else b.X)
        layer[:] = -1.0  # writing the layer leaves X alone
        Xb = b.X.toarray() if sp.issparse(b.X) else b.X
        np.testing.assert_array_equal(Xb, before.toarray() if sp.issparse(before) else before)
    b = a.copy()
    other = np.flatnonzero((b.obs["cluster"] != "CD8 T").to_numpy())[0]
    b.X[other, 0] = np.nan  # not a target cell: still bad input
    with pytest.raises(ValueError, match="NaN"):
        sad.tl.cgd_attack(b, genes=list(a.var_names[:40]), **kw)
    assert "sad_cgd_CD8 T" not in b.layers


@pytest.mark.parametrize("kind", ["callable", "torch"])
def test_cgd_whole_matrix_fast_equals_plain(lr_adata, lr_workload, kind, one_torch_thread):
    """The whole workload matrix (copied on a second thread while the search runs): fast equals plain, the
    layer is a private copy that differs from X only on the cluster's cells."""
    import torch

    a, proba, classes = lr_adata
    clf = proba
    if kind == "torch":
        clf = torch.nn.Linear(*lr_workload["W"].shape)
        with torch.no_grad():
            clf.weight.copy_(torch.as_tensor(lr_workload["W"].T))
            clf.bias.copy_(torch.as_tensor(lr_workload["b"]))
    genes = list(a.var_names[lr_workload["cgd_order"][:60]])
    rows = np.flatnonzero((a.obs["cluster"] == "CD8 T").to_numpy())
    out = {}
    for method in ("fast", "plain"):
        b = a.copy()
        before = b.X.copy()
        sad.tl.cgd_attack(
            b,
            groupby="cluster",
            target="CD8 T",
            classifier=sad.tl.ClassifierSpec(clf, classes=classes),
            genes=genes,
            options=CGDOptions(alpha=10, epsilon=10, method=method),
            key_added="k",
        )
        df = table(b, "k")
        layer = b.layers["k"]
        assert layer.dtype == np.float32
        assert not np.shares_memory(layer, b.X)
        np.testing.assert_array_equal(b.X, before)
        np.testing.assert_array_equal(np.delete(layer, rows, axis=0), np.delete(before, rows, axis=0))
        assert df["n_modified_cells"].iloc[1:].gt(0).any()
        out[method] = (df, layer)
    pd.testing.assert_frame_equal(out["fast"][0], out["plain"][0])
    np.testing.assert_array_equal(out["fast"][1], out["plain"][1])
    b = a.copy()  # bad input: the error, nothing written
    kw = {
        "groupby": "cluster",
        "classifier": sad.tl.ClassifierSpec(clf, classes=classes),
        "genes": genes,
        "key_added": "k",
    }
    with pytest.raises(ValueError, match="not found"):
        sad.tl.cgd_attack(b, target="Martian", **kw)
    with pytest.raises(ValueError, match="new_target"):
        sad.tl.cgd_attack(b, target="CD8 T", options=CGDOptions(new_target="Martian"), **kw)
    assert "k" not in b.layers
    assert "sad" not in b.uns
    # a NaN: in the cluster, refused before the search; elsewhere, by the copy's check, before anything is written
    # (with one CPU there is no copy thread: the whole matrix is checked first)
    copy_thread = len(os.sched_getaffinity(0)) > 1 if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1) > 1
    in_cluster = "target cluster's expression contains 1 NaN" if copy_thread else "adata.X contains 1 NaN"
    for row, match in (
        (rows[0], in_cluster),  # (the cell the classifier is probed on)
        (rows[3], in_cluster),
        (0 if rows[0] else 1, "adata.X contains 1 NaN"),
    ):
        b = a.copy()
        b.X[row, 7] = np.nan
        with pytest.raises(ValueError, match=match):
            sad.tl.cgd_attack(b, target="CD8 T", **kw)
        assert "k" not in b.layers
        assert "sad" not in b.uns


def test_string_categories_and_gene_names_looked_up_alike(small):
    """Cluster labels taken by category code, genes looked up in adata.var_names: as the generic paths."""
    from scadversarial.tl._blackbox._setup import gene_indices as _gene_indices
    from scadversarial.tl._blackbox._setup import setup as _setup

    a, proba, classes = small
    kw = {"groupby": "cluster", "target": "NK", "classifier": sad.tl.ClassifierSpec(proba, classes=classes)}
    b = a.copy()
    b.obs["cluster"] = b.obs["cluster"].cat.add_categories(["unused"])
    by_code = _setup(b, layer=None, **kw)
    b.obs["cluster"] = b.obs["cluster"].astype(object)
    generic = _setup(b, layer=None, **kw)
    assert by_code.labels.dtype == generic.labels.dtype == object
    np.testing.assert_array_equal(by_code.labels, generic.labels)
    with pytest.raises(ValueError, match="clusters: \\['B', "):  # the clusters present, not the unused category
        _setup(b.copy(), layer=None, **{**kw, "target": "unused"})
    b.obs["cluster"] = pd.Categorical(b.obs["cluster"]).remove_categories(["B"])
    with pytest.raises(ValueError, match=f"{int((a.obs['cluster'] == 'B').sum())} cells have no cluster"):
        _setup(b, layer=None, **kw)
    names = list(a.var_names[[5, 2, 5, 9]]) + [a.var_names[0]]
    np.testing.assert_array_equal(_gene_indices(generic, names, None, index=a.var_names), [5, 2, 9, 0])
    np.testing.assert_array_equal(_gene_indices(generic, names, None), [5, 2, 9, 0])
    for index in (None, a.var_names):
        with pytest.raises(KeyError, match="not among the classifier's genes: \\['nope'\\]"):
            _gene_indices(generic, [*names, "nope"], None, index=index)


@pytest.mark.filterwarnings("ignore::scadversarial.attacks._protocol.TiedScoresWarning")  # (GaussianNB, far out)
def test_progress_bars_follow_the_setting(small, capsys):
    """Searches show a tqdm bar with an ETA (genes settled) when sad.settings.progress is on, nothing when off."""
    a, clf, classes = small
    kw = {
        "groupby": "cluster",
        "target": "NK",
        "classifier": sad.tl.ClassifierSpec(clf, classes=classes),
        "modification": "perc99",
    }
    sad.settings.progress = True
    try:
        sad.tl.single_gene_attack(a, **kw)
        sad.tl.max_change_attack(a, **kw)
    finally:
        sad.settings.progress = False
    err = capsys.readouterr().err
    assert "single-gene" in err
    assert "max-change" in err
    assert "/300 [" in err
    assert "gene/s" in err
    sad.tl.max_change_attack(a, **kw)
    assert "max-change" not in capsys.readouterr().err


def test_max_change_over_many_genes_warns_with_an_estimate(pbmc3k_raw, caplog):
    """More than ~5,000 genes: a warning with the expected time and the highly-variable-genes remedy."""
    import logging

    import torch

    a = pbmc3k_raw[pbmc3k_raw.obs["seurat_cell_type"].isin(["Platelet", "DC"])].copy()  # 46 cells, 13,714 genes
    a.X = a.X.toarray()
    torch.manual_seed(0)
    lin = torch.nn.Linear(a.n_vars, 2)
    lin.classes = ["Platelet", "DC"]
    with caplog.at_level(logging.WARNING, logger="scadversarial"):
        sad.tl.max_change_attack(
            a,
            groupby="seurat_cell_type",
            target="Platelet",
            classifier=lin,
            modification="perc99",
            options=MaxChangeOptions(max_split_size=500),
        )
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "searches 13714 genes on 14 cells: expect roughly" in msg
    assert "highly_variable" in msg
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="scadversarial"):
        sad.tl.max_change_attack(
            a, groupby="seurat_cell_type", target="Platelet", classifier=lin, genes=list(a.var_names[:4000])
        )
    assert "expect roughly" not in " ".join(r.getMessage() for r in caplog.records)


def test_docstrings_explain_every_shared_parameter():
    """help() of every black-box attack writes out the classifier, layer and key_added: no "as in"."""
    for fn in (
        sad.tl.single_gene_attack,
        sad.tl.max_change_attack,
        sad.tl.cgd_attack,
        sad.tl.random_walk_attack,
        sad.tl.grid_attack,
        sad.tl.attack_overview,
    ):
        doc = fn.__doc__
        assert "{doc_" not in doc
        assert "As in" not in doc
        assert "a CellTypist ``Model``" in doc  # the classifier fragment
        assert "    classifier\n        The classifier to attack" in doc  # at the docstring's indentation
    for cls in (SingleGeneOptions, GridOptions, RandomWalkOptions):
        assert "    method\n        ``'fast'``" in cls.__doc__
