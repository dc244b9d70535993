"""Black-box attacks on real PBMC3k with the sad MLP, a random forest and a logistic regression.

Every mode runs with every kind of classifier, and the fast searches agree with the plain ones.
The study's qualitative findings are checked on a gene subset (the full numbers are in
``benchmarks/blackbox.py --pbmc3k``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import scadversarial as sad
from scadversarial.tl._blackbox import CGDOptions, GridOptions, MaxChangeOptions, RandomWalkOptions, SingleGeneOptions

table = sad.get.attack_table

pytestmark = [
    pytest.mark.slow,
    # The random forest and the MLP saturate to tied probabilities on the most extreme modifications;
    # the warning is the documented behaviour there (tested in test_adapters.py), not a failure here.
    pytest.mark.filterwarnings("ignore::scadversarial.attacks._protocol.TiedScoresWarning"),
]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Torch's threads spin badly on a busy shared machine; the results do not depend on it."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def models3k(pipeline3k):
    """The trained sad MLP, and a random forest and a logistic regression trained on the same split of X."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    a = pipeline3k
    X = np.asarray(a.X, dtype=np.float32)
    y = a.obs["seurat_cell_type"].astype(str).to_numpy()
    train = (a.obs["sad_split"] == "train").to_numpy()
    rf = RandomForestClassifier(n_estimators=30, random_state=0, n_jobs=1).fit(X[train], y[train])
    lr = LogisticRegression(C=0.05, max_iter=100).fit(X[train], y[train])
    return {"mlp": None, "rf": rf, "lr": lr}


@pytest.mark.parametrize("name", ["mlp", "rf", "lr"])
def test_every_mode_runs_and_fast_equals_plain(pipeline3k, models3k, name):
    a = pipeline3k.copy()
    clf = models3k[name]
    genes = list(a.var_names[:80])
    kw = {"groupby": "seurat_cell_type", "classifier": clf}
    calls = {}
    for method in ("plain", "fast"):
        sad.tl.single_gene_attack(
            a,
            target="NK",
            modification="positive_aberrant",
            genes=genes,
            options=SingleGeneOptions(method=method),
            key_added=f"sg_{method}",
            **kw,
        )
        sad.tl.max_change_attack(
            a,
            target="NK",
            modification="perc99",
            genes=genes,
            options=MaxChangeOptions(method=method),
            key_added=f"mc_{method}",
            **kw,
        )
        sad.tl.cgd_attack(
            a,
            target="NK",
            genes=genes[:25],
            options=CGDOptions(alpha=1.0, epsilon=1.0, method=method),
            key_added=f"cgd_{method}",
            **kw,
        )
        sad.tl.random_walk_attack(
            a,
            target="NK",
            genes=genes[:20],
            options=RandomWalkOptions(walk_length=15, first_batch=20, method=method),
            key_added=f"rw_{method}",
            **kw,
        )
        sad.tl.grid_attack(
            a,
            target="NK",
            genes=genes[:3],
            modifications=["perc1", "positive_aberrant"],
            options=GridOptions(method=method),
            key_added=f"gr_{method}",
            **kw,
        )
        keys = {"single_gene": "sg", "max_change": "mc", "cgd": "cgd", "random_walk": "rw", "grid": "gr"}
        out = {mode: table(a, f"{k}_{method}") for mode, k in keys.items()}
        calls[method] = {
            mode: sad.get.attack_record(a, f"{keys[mode]}_{method}")["metrics"]["n_calls"]
            for mode in ("single_gene", "max_change")
        }
        calls[method + "_out"] = out
    for mode, df in calls["fast_out"].items():
        pd.testing.assert_frame_equal(df, calls["plain_out"][mode], obj=f"{name} {mode}")
    np.testing.assert_array_equal(a.layers["cgd_fast"], a.layers["cgd_plain"])
    assert calls["fast"]["single_gene"] < calls["plain"]["single_gene"]
    sad.tl.attack_overview(a, clusters=["NK", "B"], modifications=["perc99"], **kw)
    ov = table(a, "overview")
    assert len(ov) == 2
    assert ov["orig_call"].notna().all()
    sg = table(sad.tl.sign_genes(a[:, genes].copy(), groupby="seurat_cell_type", copy=True), "sign_genes")
    assert len(sg) == len(genes)


def test_qualitative_findings(pipeline3k, models3k):
    """Random forests resist single-gene attacks better than the MLP; aberrant values fool far more than perc1/99."""
    a = pipeline3k.copy()
    genes = list(a.var_names[:400])
    n = {}
    for name in ("mlp", "rf", "lr"):
        for mod in ("perc1", "perc99", "positive_aberrant"):
            sad.tl.single_gene_attack(
                a,
                groupby="seurat_cell_type",
                target="DC",
                classifier=models3k[name],
                modification=mod,
                genes=genes,
                key_added="sg",
            )
            n[name, mod] = len(table(a, "sg"))
    assert n["rf", "positive_aberrant"] < n["mlp", "positive_aberrant"]
    for name in ("mlp", "lr"):
        assert n[name, "positive_aberrant"] > max(n[name, "perc1"], n[name, "perc99"])
