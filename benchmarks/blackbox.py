"""Black-box (adverSCarial-style) attacks on the ``lr_oracle`` workload: sad vs the R package.

Runs every workload of ``tests/data/lr_oracle/README.md`` through ``sad.tl`` with the fast search
and with the plain reference search (one classifier call per candidate), checks that both return
the same result, and prints wall time, classifier calls and the speed-ups against the R package's
time (README) and against the plain search in this process: for the whole ``sad.tl`` call, and for
the search alone (without the modified values and the unmodified call, which both do alike).

With the default ``torch32`` classifier (the workload's logistic regression as a ``torch.nn.Linear``)
the fast searches use the linear update (see ``sad.tl.single_gene_attack``); ``--classifier numpy``
gives the same regression as an opaque callable, which the fast searches can only classify in
stacked calls.

Usage (from the repository root)::

    python benchmarks/blackbox.py [--repeat 3] [--classifier torch32|torch64|numpy] [--threads 1]
    python benchmarks/blackbox.py --pbmc3k    # the study's qualitative findings on real PBMC3k

``--pbmc3k`` trains the sad MLP, a random forest and a logistic regression on PBMC3k (Seurat labels,
2,000 HVGs, scaled) and counts the single-gene attacks per classifier and modification on a few
clusters: random forests resist far better than the MLP; aberrant values fool far more than perc1/99.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

import scadversarial as sad
from scadversarial.tl._blackbox import CGDOptions, MaxChangeOptions, OverviewOptions, SingleGeneOptions

SHARED = Path(__file__).resolve().parents[1] / "tests" / "data"  # shipped with the repository
DATA = SHARED / "lr_oracle"

# the R package on this workload (README): wall seconds and classifier calls
R = {
    "single-gene B perc99": (11.1, 201),
    "single-gene B positive_aberrant": (192.5, 3495),
    "single-gene NK perc99": (11.4, 201),
    "single-gene NK positive_aberrant": (179.4, 3217),
    "max-change CD14+ Mono perc99": (359.8, 2689),
    "CGD CD8 T alpha=eps=1": (12.2, 197),
    "CGD CD8 T alpha=eps=10": (1.6, 25),
    "overview 9 clusters x {perc1, perc99}": (225.3, 3618),
}


def load(kind: str):
    X = pd.read_csv(DATA / "X_lognorm_hvg.csv.gz", index_col=0, float_precision="round_trip")
    coef = pd.read_csv(DATA / "lr_coef.csv.gz", index_col=0)
    inter = pd.read_csv(DATA / "lr_intercept.csv", index_col=0)["intercept"]
    classes = [c for c in (DATA / "lr_classes.txt").read_text().split("\n") if c]
    labels = pd.read_csv(DATA / "labels.tsv", sep="\t", index_col=0).loc[X.index, "seurat_cell_type"].astype(str)
    a = ad.AnnData(X.to_numpy(np.float32), obs=pd.DataFrame({"cluster": pd.Categorical(labels)}, index=X.index))
    a.var_names = X.columns
    W = coef.loc[classes, X.columns].to_numpy()
    b = inter.loc[classes].to_numpy()
    if kind.startswith("torch"):
        dtype = torch.float64 if kind == "torch64" else torch.float32
        clf = torch.nn.Linear(W.shape[1], W.shape[0]).to(dtype)
        with torch.no_grad():
            clf.weight.copy_(torch.as_tensor(W, dtype=dtype))
            clf.bias.copy_(torch.as_tensor(b, dtype=dtype))
        clf.classes = classes  # p = softmax(X @ coef.T + intercept), softmaxed by the protocol
        clf.eval()  # a fixed, trained classifier
    else:
        Wt = np.ascontiguousarray(W.T)

        def clf(Z):
            z = np.asarray(Z, dtype=np.float64) @ Wt + b
            z -= z.max(1, keepdims=True)
            e = np.exp(z)
            return e / e.sum(1, keepdims=True)

    order = (DATA / "cgd_gene_order.txt").read_text().split()
    return a, clf, classes, order


def runs(order):
    """Per workload: the attack, its arguments, and its options object given the search method."""
    sg, mc, cgd = sad.tl.single_gene_attack, sad.tl.max_change_attack, sad.tl.cgd_attack
    sg_opts = lambda m: SingleGeneOptions(method=m)
    return {
        "single-gene B perc99": (sg, {"target": "B", "modification": "perc99"}, sg_opts),
        "single-gene B positive_aberrant": (sg, {"target": "B", "modification": "positive_aberrant"}, sg_opts),
        "single-gene NK perc99": (sg, {"target": "NK", "modification": "perc99"}, sg_opts),
        "single-gene NK positive_aberrant": (sg, {"target": "NK", "modification": "positive_aberrant"}, sg_opts),
        "max-change CD14+ Mono perc99": (
            mc,
            {"target": "CD14+ Mono", "modification": "perc99"},
            lambda m: MaxChangeOptions(method=m),
        ),
        "CGD CD8 T alpha=eps=1": (
            cgd,
            {"target": "CD8 T", "genes": order},
            lambda m: CGDOptions(alpha=1.0, epsilon=1.0, method=m),
        ),
        "CGD CD8 T alpha=eps=10": (
            cgd,
            {"target": "CD8 T", "genes": order},
            lambda m: CGDOptions(alpha=10.0, epsilon=10.0, method=m),
        ),
        "overview 9 clusters x {perc1, perc99}": (
            sad.tl.attack_overview,
            {"modifications": ["perc1", "perc99"]},
            lambda m: OverviewOptions(modes=("single_gene",), max_split_size=100, method=m),
        ),
    }


def timed(fn, a, clf, classes, kw, method):
    a = a.copy()
    kw, options = kw
    spec = sad.tl.ClassifierSpec(clf, classes=classes)
    t = time.perf_counter()
    fn(a, groupby="cluster", classifier=spec, options=options(method), key_added="bench", **kw)
    wall = time.perf_counter() - t
    df = sad.get.attack_table(a, "bench")
    rec = a.uns["sad"]["attacks"]["bench"]
    extra = {k: v for k, v in rec.items() if k == "modified_genes"}
    if "sad_cgd" in "".join(a.layers.keys()) or "bench" in a.layers:
        extra["layer"] = a.layers["bench"]
    extra["search_s"] = float(rec["metrics"]["seconds"])
    extra["setup_s"] = float(rec["metrics"].get("setup_seconds", 0.0))
    return wall, int(rec["metrics"]["n_calls"]), int(rec["metrics"]["n_rows"]), df, extra


def same(r1, r2) -> bool:
    if not r1[3].equals(r2[3]):
        return False
    return "layer" not in r1[4] or np.array_equal(r1[4]["layer"], r2[4]["layer"])


def pbmc3k_findings(clusters: list[str], json_path: str | None) -> None:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    t = time.perf_counter()
    a = sad.datasets.pbmc3k(SHARED / "pbmc3k.h5ad")
    sad.pp.preprocess(a)
    sad.pp.split(a, "seurat_cell_type")
    sad.tl.train_classifier(a, "seurat_cell_type", max_epochs=20)
    X = np.asarray(a.X, dtype=np.float32)
    y = a.obs["seurat_cell_type"].astype(str).to_numpy()
    train = (a.obs["sad_split"] == "train").to_numpy()
    test = (a.obs["sad_split"] == "test").to_numpy()
    rf = RandomForestClassifier(n_estimators=100, random_state=0, n_jobs=1).fit(X[train], y[train])
    lr = LogisticRegression(C=0.05, max_iter=300).fit(X[train], y[train])
    mlp = sad.tl.get_model(a, "classifier")
    acc = {
        "mlp": float((np.array(mlp.classes)[np.argmax(mlp.predict_arrays(X[test])[0], 1)] == y[test]).mean()),
        "rf": float((rf.predict(X[test]) == y[test]).mean()),
        "lr": float((lr.predict(X[test]) == y[test]).mean()),
    }
    print(f"trained in {time.perf_counter() - t:.0f}s; test accuracy {acc}", flush=True)
    rows = []
    for name, clf in (("mlp", None), ("rf", rf), ("lr", lr)):
        for mod in ("perc1", "perc99", "positive_aberrant", "negative_aberrant"):
            for cl in clusters:
                b = a.copy()
                t = time.perf_counter()
                sad.tl.single_gene_attack(
                    b, groupby="seurat_cell_type", target=cl, classifier=clf, modification=mod, key_added="k"
                )
                df = sad.get.attack_table(b, "k")
                m = b.uns["sad"]["attacks"]["k"]["metrics"]
                rows.append(
                    {
                        "classifier": name,
                        "modification": mod,
                        "cluster": cl,
                        "orig_call": m["orig_call"],
                        "n_genes_flipping": len(df),
                        "calls": int(m["n_calls"]),
                        "seconds": time.perf_counter() - t,
                    }
                )
                print(rows[-1], flush=True)
    # fast vs plain, per classifier (same results, wall time)
    speed = []
    for name, clf in (("mlp", None), ("rf", rf), ("lr", lr)):
        res = {}
        for method in ("fast", "plain"):
            b = a.copy()
            t = time.perf_counter()
            sad.tl.single_gene_attack(
                b,
                groupby="seurat_cell_type",
                target="B",
                classifier=clf,
                modification="perc99",
                options=SingleGeneOptions(method=method),
                key_added="k",
            )
            df = sad.get.attack_table(b, "k")
            res[method] = (time.perf_counter() - t, int(b.uns["sad"]["attacks"]["k"]["metrics"]["n_calls"]), df)
        speed.append(
            {
                "classifier": name,
                "fast_s": res["fast"][0],
                "fast_calls": res["fast"][1],
                "plain_s": res["plain"][0],
                "plain_calls": res["plain"][1],
                "speedup_vs_plain": res["plain"][0] / res["fast"][0],
                "same": res["fast"][2].equals(res["plain"][2]),
            }
        )
        print(speed[-1], flush=True)
    df = pd.DataFrame(rows)
    piv = df.pivot_table(index=["classifier", "cluster"], columns="modification", values="n_genes_flipping")
    print(piv.to_string())
    print(df.groupby(["classifier", "modification"])["n_genes_flipping"].sum().unstack().to_string())
    if json_path:
        Path(json_path).write_text(json.dumps({"accuracy": acc, "rows": rows, "fast_vs_plain": speed}, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeat", type=int, default=3, help="fast runs per workload (best time kept)")
    p.add_argument("--plain-repeat", type=int, default=1, help="plain runs per workload (best time kept)")
    p.add_argument("--classifier", default="torch32", choices=["torch32", "torch64", "numpy"])
    p.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1: robust on a shared 2-core machine)"
    )
    p.add_argument("--only", default=None, help="substring of the workloads to run")
    p.add_argument("--json", default=None, help="write the table as JSON here")
    p.add_argument("--pbmc3k", action="store_true", help="the qualitative findings on real PBMC3k instead")
    p.add_argument("--clusters", default="DC,NK,FCGR3A+ Mono,B", help="clusters of --pbmc3k")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    sad.settings.progress = False
    if args.pbmc3k:
        pbmc3k_findings(args.clusters.split(","), args.json)
        return
    a, clf, classes, order = load(args.classifier)
    rows = []
    for name, (fn, *kw) in runs(order).items():
        if args.only and args.only not in name:
            continue
        fast = min((timed(fn, a, clf, classes, kw, "fast") for _ in range(args.repeat)), key=lambda r: r[0])
        plain = min((timed(fn, a, clf, classes, kw, "plain") for _ in range(args.plain_repeat)), key=lambda r: r[0])
        r_s, r_calls = R[name]
        row = {
            "run": name,
            "fast_s": fast[0],
            "fast_attack_s": fast[4]["search_s"],
            "fast_calls": fast[1],
            "fast_rows": fast[2],
            "plain_s": plain[0],
            "plain_calls": plain[1],
            "R_s": r_s,
            "R_calls": r_calls,
            "speedup_vs_R": r_s / fast[0],
            "speedup_vs_plain": plain[0] / fast[0],
            # the searches alone: without the modified values and the unmodified call, which both share
            "speedup_vs_plain_search": (plain[4]["search_s"] - plain[4]["setup_s"])
            / (fast[4]["search_s"] - fast[4]["setup_s"]),
            "fast_equals_plain": same(fast, plain),
        }
        rows.append(row)
        print(
            f"{name:40s} fast {fast[0]:8.3f}s {fast[1]:5d} calls | plain {plain[0]:8.3f}s {plain[1]:5d} calls | "
            f"R {r_s:6.1f}s {r_calls:5d} calls | x{row['speedup_vs_R']:7.1f} vs R, x{row['speedup_vs_plain']:5.1f} vs plain "
            f"(search alone x{row['speedup_vs_plain_search']:5.1f}) | "
            f"same: {row['fast_equals_plain']}",
            flush=True,
        )
    df = pd.DataFrame(rows)
    print()
    print(f"classifier: {args.classifier}; torch threads: {args.threads}; {platform.processor() or platform.machine()}")
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.3f}".format):
        print(df.to_string(index=False))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
