"""Real classifiers as black-box targets: CellTypist, scikit-learn pipelines, torch modules with their own transform.

Also: classifiers that declare their genes (aligned by name), and tied probabilities (underflow) detected, with
decision values (``output='logits'``) as the fix.
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import torch

import scadversarial as sad
from scadversarial.attacks._protocol import ClassifierAdapter, ClassifierSpec, TiedScoresWarning

table = sad.get.attack_table

celltypist = pytest.importorskip("celltypist", reason="celltypist is not installed: pip install 'scadversarial[test]'")

N_HVG = 300  # model genes: enough for a 9-class PBMC model (~93% agreement with the Seurat labels), quick to fit
N_EXTRA = 200  # genes the model does not read, kept in the AnnData (and shuffled in) to prove alignment by name


@pytest.fixture(scope="module")
def lognorm3k(pbmc3k_raw):
    """PBMC3k log1p-normalized to 1e4 (CellTypist's input convention), model genes and extra genes, shuffled."""
    a = pbmc3k_raw.copy()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    sc.pp.highly_variable_genes(a, n_top_genes=N_HVG)
    hv = list(a.var_names[a.var["highly_variable"]])
    extra = [g for g in a.var_names if g not in set(hv)][:N_EXTRA]
    order = np.random.default_rng(0).permutation(hv + extra)
    b = a[:, order].copy()
    b.X = b.X.toarray() if hasattr(b.X, "toarray") else b.X
    b.obs["cluster"] = b.obs["seurat_cell_type"].astype(str).astype("category")
    return b, hv


@pytest.fixture(scope="module")
def ct_model(lognorm3k):
    """A small CellTypist model around a fitted scikit-learn SGD classifier (CellTypist's own recipe, no download)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import SGDClassifier
    from sklearn.preprocessing import StandardScaler

    b, hv = lognorm3k
    X = b[:, hv].X
    scaler = StandardScaler().fit(X)
    Z = np.minimum(scaler.transform(X), 10)  # CellTypist clips scaled values at 10
    sgd = SGDClassifier(loss="log_loss", alpha=1e-4, random_state=0, max_iter=50)
    with warnings.catch_warnings():  # (50 epochs are plenty for this test; it stops short of sklearn's tolerance)
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = sgd.fit(Z, b.obs["cluster"].astype(str))
    clf.features = np.asarray(hv, dtype=object)
    desc = {"date": "", "details": "test model", "source": "", "version": "", "number_celltypes": len(clf.classes_)}
    return celltypist.models.Model(clf, scaler, desc)


def test_celltypist_adapter_reproduces_celltypist(lognorm3k, ct_model):
    b, hv = lognorm3k
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = celltypist.annotate(b, model=ct_model)
    fn = ClassifierAdapter(ClassifierSpec(ct_model, output="logits"))
    assert fn.kind == "celltypist"
    assert fn.genes == hv
    assert fn.classes == list(ct_model.cell_types)
    S = fn(b[:, hv].X)
    np.testing.assert_allclose(S, res.decision_matrix.to_numpy(), rtol=1e-6, atol=1e-6)
    pred = np.asarray(fn.classes)[S.argmax(1)]
    np.testing.assert_array_equal(pred, res.predicted_labels["predicted_labels"].astype(str).to_numpy())
    P = ClassifierAdapter(ct_model)(b[:, hv].X)  # default output: CellTypist's probability matrix
    np.testing.assert_allclose(P, res.probability_matrix.to_numpy(), rtol=1e-6, atol=1e-12)


def test_celltypist_single_gene_attack(lognorm3k, ct_model):
    """The adapter attacks a CellTypist model: genes aligned by name from an AnnData with more (shuffled) genes."""
    b, hv = lognorm3k
    a = b.copy()
    sad.tl.single_gene_attack(
        a, groupby="cluster", target="NK", classifier=ClassifierSpec(ct_model, output="logits"), modification="perc99"
    )
    df = table(a, "single_gene_NK_perc99")
    rec = a.uns["sad"]["attacks"]["single_gene_NK_perc99"]
    assert rec["params"]["classifier"] == "celltypist"
    assert rec["params"]["output"] == "logits"
    assert rec["metrics"]["orig_call"] == "NK"
    assert rec["metrics"]["n_tied_rows"] == 0
    assert len(df) > 0
    assert set(df["gene"]) <= set(hv)
    assert rec["params"]["n_genes_searched"] == N_HVG
    # the same search on the model's genes in the model's order gives the same records
    c = b[:, hv].copy()
    sad.tl.single_gene_attack(
        c, groupby="cluster", target="NK", classifier=ClassifierSpec(ct_model, output="logits"), modification="perc99"
    )
    pd.testing.assert_frame_equal(df, table(c, "single_gene_NK_perc99"))


def test_tied_probabilities_warn_and_logits_fix_them(lognorm3k, ct_model):
    """CellTypist's one-vs-rest probabilities saturate under negative_aberrant: every tie went to the first class.

    Fails before the fix: no warning, and the tied search reports a different (spurious) signature.
    """
    b, _ = lognorm3k
    a = b.copy()
    kw = {"groupby": "cluster", "target": "DC", "modification": "negative_aberrant"}
    with pytest.warns(TiedScoresWarning, match=r"cell rows classified had tied top probabilities.*output='logits'"):
        sad.tl.max_change_attack(a, classifier=ct_model, key_added="tied", **kw)
    tied = table(a, "tied")
    assert a.uns["sad"]["attacks"]["tied"]["metrics"]["n_tied_rows"] > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", TiedScoresWarning)
        sad.tl.max_change_attack(a, classifier=ClassifierSpec(ct_model, output="logits"), **kw)
    fixed = table(a, "max_change_DC_negative_aberrant")
    assert a.uns["sad"]["attacks"]["max_change_DC_negative_aberrant"]["metrics"]["n_tied_rows"] == 0
    assert tied["signature"].sum() != fixed["signature"].sum()
    # one-vs-rest log-probabilities saturate at 0 too: only decision values are safe
    with pytest.warns(TiedScoresWarning, match=r"tied top scores.*output='logits'\)\.$"):
        sad.tl.max_change_attack(a, classifier=ClassifierSpec(ct_model, output="log_proba"), key_added="lp", **kw)


def test_sgd_uniform_rows_are_ties(ct_model):
    """scikit-learn's SGD classifier returns uniform rows when every one-vs-rest probability underflows."""
    clf = ct_model.classifier
    # far from the training data, where the decision values are -1e4 - k (9 equations, 300 unknowns: solved
    # exactly): every probability underflows, yet the logits differ by whole units (equal targets would tie
    # them, or not, by the solver's rounding)
    target = -1e4 - np.arange(len(clf.classes_), dtype=np.float64)
    z = np.linalg.lstsq(clf.coef_, target - clf.intercept_, rcond=None)[0]
    Z = np.tile(z, (4, 1))
    fn = ClassifierAdapter(clf)
    P = fn(Z)
    assert np.allclose(P, 1 / P.shape[1])
    assert fn.n_tied == 4
    assert "ClassifierSpec(model, output='logits')" in fn.tie_message("test")
    fl = ClassifierAdapter(clf, output="logits")
    S = fl(Z)
    np.testing.assert_array_equal(S, clf.decision_function(Z))
    assert fl.n_tied == 0
    assert fl.tie_message("test") is None


def test_sklearn_pipeline_with_feature_names(lognorm3k):
    """A Pipeline fitted on a DataFrame declares its genes (feature_names_in_): adata's columns aligned by name."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    b, hv = lognorm3k
    genes = hv[:60]
    df = pd.DataFrame(b[:, genes].X, columns=genes)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)).fit(df, b.obs["cluster"].astype(str))
    fn = ClassifierAdapter(pipe)
    assert fn.kind == "sklearn"
    assert fn.genes == genes
    a = b.copy()  # 500 shuffled genes; the pipeline reads 60 of them
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "X does not have valid feature names" at every call
        sad.tl.single_gene_attack(
            a, groupby="cluster", target="B", classifier=pipe, modification="perc1", key_added="k"
        )
    ref = sad.tl.single_gene_attack(
        b[:, genes].copy(),
        groupby="cluster",
        target="B",
        classifier=pipe,
        modification="perc1",
        key_added="k",
        copy=True,
    )
    pd.testing.assert_frame_equal(table(a, "k"), table(ref, "k"))
    # decision values of a pipeline
    S = ClassifierAdapter(pipe, output="logits")(df.to_numpy()[:5])
    np.testing.assert_allclose(S, pipe.decision_function(df.iloc[:5]))
    # a missing gene is a clear error naming it; nothing written
    c = b[:, [g for g in b.var_names if g != genes[3]]].copy()
    with pytest.raises(KeyError, match=rf"1 are missing from adata.var_names: {genes[3]}.*ClassifierSpec"):
        sad.tl.single_gene_attack(c, groupby="cluster", target="B", classifier=pipe)
    assert "sad" not in c.uns


class _CountsNet(torch.nn.Module):
    """A classifier on raw counts: its own transform (normalize to 1e4, log1p, scale) before a linear layer."""

    def __init__(self, genes, classes, mean, std, weight):
        super().__init__()
        self.var_names = list(genes)
        self.classes = list(classes)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.lin = torch.nn.Linear(len(genes), len(classes))
        with torch.no_grad():
            self.lin.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
            self.lin.bias.zero_()

    def forward(self, counts):
        x = torch.log1p(counts / counts.sum(1, keepdim=True).clamp_min(1) * 1e4)
        return self.lin((x - self.mean) / self.std)


def test_torch_module_with_its_own_transform(pbmc3k_raw):
    """A torch module that declares var_names and transforms counts itself; the callable variant gets its genes."""
    a = pbmc3k_raw[:, :400].copy()
    a.obs["cluster"] = a.obs["seurat_cell_type"].astype(str).astype("category")
    genes = list(a.var_names[50:250])
    Xc = a[:, genes].X.toarray()
    logx = np.log1p(Xc / np.maximum(Xc.sum(1, keepdims=True), 1) * 1e4)
    mean, std = logx.mean(0), logx.std(0) + 1e-3
    y = a.obs["cluster"].cat.codes.to_numpy()
    classes = list(a.obs["cluster"].cat.categories)
    Z = (logx - mean) / std
    weight = np.stack([Z[y == k].mean(0) for k in range(len(classes))])  # nearest-centroid weights
    net = _CountsNet(genes, classes, mean, std, weight)
    sad.tl.single_gene_attack(a, groupby="cluster", target="B", classifier=net, modification="perc99")
    df = table(a, "single_gene_B_perc99")
    rec = a.uns["sad"]["attacks"]["single_gene_B_perc99"]
    assert rec["params"]["classifier"] == "torch"
    assert rec["params"]["n_genes_searched"] == len(genes)
    assert set(df["gene"]) <= set(genes)
    # a plain callable that declares its genes through the spec sees exactly those columns
    seen = []

    def fn(X):
        seen.append(X.shape[1])
        with torch.no_grad():
            return torch.softmax(net(torch.as_tensor(X, dtype=torch.float32)), 1).numpy()

    sad.tl.single_gene_attack(
        a,
        groupby="cluster",
        target="B",
        classifier=ClassifierSpec(fn, classes=classes, genes=genes),
        modification="perc99",
        key_added="callable",
    )
    assert set(seen) == {len(genes)}
    np.testing.assert_array_equal(table(a, "callable")["gene"].to_numpy(), df["gene"].to_numpy())


def test_output_option_and_spec_errors():
    X = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 3)
    with torch.no_grad():
        ref = lin(torch.from_numpy(X))
    np.testing.assert_allclose(ClassifierAdapter(lin, output="logits")(X), ref.numpy(), rtol=1e-6)
    np.testing.assert_allclose(
        ClassifierAdapter(lin, output="log_proba")(X), torch.log_softmax(ref, 1).numpy(), rtol=1e-5, atol=1e-6
    )
    with pytest.raises(ValueError, match="output must be 'proba'.*'logits'"):
        ClassifierSpec(lin, output="logit")
    with pytest.raises(ValueError, match="output must be"):
        ClassifierAdapter(lin, output="scores")
    from sklearn.naive_bayes import GaussianNB

    nb = GaussianNB().fit(X, [0, 1] * 5)
    np.testing.assert_allclose(ClassifierAdapter(nb, output="logits")(X), nb.predict_log_proba(X))  # no decision fn
    with pytest.raises(ValueError, match="repeated"):
        ClassifierAdapter(lin, genes=["a", "b", "a", "c"])
    a = ad.AnnData(X, obs=pd.DataFrame({"c": pd.Categorical(list("xy") * 5)}, index=[str(i) for i in range(10)]))
    with pytest.raises(KeyError, match="missing from adata.var_names: zz"):
        sad.tl.single_gene_attack(
            a, groupby="c", target="x", classifier=ClassifierSpec(lin, genes=["0", "1", "2", "zz"])
        )
