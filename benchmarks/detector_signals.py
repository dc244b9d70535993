"""Candidate detection signals of issue 14 against every threat model, on held-out PBMC3k test cells.

Per seed, the default pipeline of ``benchmarks/threats.py`` with the Seurat labels (``preprocess``,
``split`` 60/20/20, ``train_classifier``, PGD at eps 0.05/0.1/0.15, ``train_detector``). Then every
signal is fitted on the training cells (with their Seurat labels) and calibrated at 5 % FPR on the
validation cells (nothing is fitted or calibrated on test cells), and ``sad.tl.benchmark_detectors``
measures them beside ``sad``'s detector and the baselines on the test cells:

- ``rules``: plausibility rules (out of range, negative, off zero, off the count lattice);
- ``count_model``: NB deviance under the predicted class, depth-corrected (``statistic='deviance'``);
- ``count_relative``: NB log-likelihood of the best class minus the predicted one;
- ``thinning``: probability taken from the prediction by 50 % binomial thinning (4 draws);
- ``knn``: disagreement with the 15 nearest training cells' labels (50 PCs);
- ``ensemble``: rules + count_model, smallest conformal p-value, one threshold at 5 % FPR overall;
- ``ensemble_all``: rules + all four other signals, the same way.

Threats: seed PGD (scaled, all genes), observed-range PGD 0.15, expressed log-space PGD 0.25/0.5,
counts +-1/+-2 UMI on expressed genes, CW and DeepFool (L2 5), single-gene aberrant (the
threats.py callable), the detector-aware attacker against ``sad``'s detector (expressed log space
0.5, lambda 0/0.1/1/10, worst case per cell), and the default benign shifts.

Usage::

    python benchmarks/detector_signals.py                 # seed 0
    python benchmarks/detector_signals.py --seeds 0 1 2
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

import scadversarial as sad
from scadversarial.detection import (
    BASELINES,
    CountModelDetector,
    KNNConsistency,
    PlausibilityRules,
    ThinningStability,
    fit_ensemble,
)
from scadversarial.tl._benchmark import benchmark_detectors

sys.path.insert(0, str(Path(__file__).resolve().parent))
import threats as T

LABELS = "seurat_cell_type"
TARGET_FPR = 0.05  # the rate at which the benchmark reports TPR
COLUMNS = ["flip_rate", "auroc", "tpr_at_5fpr", "flagged", "evasion", "fpr", "pred_changed"]
MINE = ("rules", "count_model", "count_relative", "thinning", "knn", "ensemble", "ensemble_all")


def _members(target_sum: float, *, everything: bool) -> dict:
    out = {"rules": PlausibilityRules(), "count_model": CountModelDetector(statistic="deviance")}
    if everything:
        out |= {
            "count_relative": CountModelDetector(),
            "thinning": ThinningStability(target_sum=target_sum),
            "knn": KNNConsistency(),
        }
    return out


def signals(a, seed: int) -> tuple[dict, dict[str, float]]:
    """Every candidate signal, fitted on training cells and calibrated on validation cells; fit+calibrate seconds."""
    clf = sad.get.model(a, "classifier")
    split = a.obs["sad_split"].astype(str).to_numpy()
    X = np.asarray(a.X, dtype=np.float32)
    y = a.obs[LABELS].astype(str).to_numpy()
    ts = float(sad.get.record(a, "preprocess")["params"]["target_sum"])
    out, secs = {}, {}
    train, val = split == "train", split == "val"
    for name, det in _members(ts, everything=True).items():
        t0 = time.perf_counter()
        det.fit(clf, X[train], y=y[train], rng=seed)
        det.calibrate(X[val], target_fpr=TARGET_FPR)
        out[name], secs[name] = det, time.perf_counter() - t0
    for name, every in (("ensemble", False), ("ensemble_all", True)):
        t0 = time.perf_counter()
        out[name] = fit_ensemble(clf, X, split, _members(ts, everything=every), y=y, target_fpr=TARGET_FPR, rng=seed)
        secs[name] = time.perf_counter() - t0
    return out, secs


def threats(det) -> dict:
    """The threats of this benchmark (see the module docstring)."""
    log = {"method": "pgd", "space": "log", "constraint": "expressed"}
    base = {**log, "eps": T.ADAPTIVE_EPS, "detector": det}
    return {
        "seed PGD": {"method": "pgd", "eps": T.PGD_EPS},
        "observed PGD": {"method": "pgd", "eps": 0.15, "constraint": "observed"},
        "expressed log": {**log, "eps": (0.25, 0.5)},
        "counts": {"method": "pgd", "eps": T.UMI_EPS, "space": "counts", "constraint": "counts", "mask": "counts"},
        "CW": {"method": "cw", "eps": T.L2_EPS},
        "DeepFool": {"method": "deepfool", "eps": T.L2_EPS},
        "single-gene aberrant": T._cluster_layer(T._single_gene, "bench_single_gene", None),
        "detector-aware (λ sweep)": [{**base, "detector_weight": w} for w in T.LAMBDAS],
    }


def run_one(raw, seed: int) -> tuple[pd.DataFrame, dict[str, float]]:
    a = raw[raw.obs[LABELS].notna().to_numpy()].copy()
    sad.pp.preprocess(a)
    counts = a.obs[LABELS].value_counts()
    keep = a.obs[LABELS].isin(counts.index[counts >= T.MIN_CELLS]).to_numpy()
    if not keep.all():
        a = a[keep].copy()
        a.obs[LABELS] = a.obs[LABELS].astype(str).astype("category")
    sad.pp.split(a, LABELS, random_state=seed)
    sad.tl.train_classifier(a, LABELS, random_state=seed)
    sad.tl.attack(a, "pgd", eps=T.PGD_EPS, random_state=seed)
    sad.tl.train_detector(a, random_state=seed)
    det = sad.get.model(a, "detector")
    mine, secs = signals(a, seed)
    dets = {"sad": "sad", **{b: b for b in BASELINES}, **mine}
    benchmark_detectors(a, attacks=threats(det), detectors=dets, options=sad.tl.BenchmarkOptions(random_state=seed))
    return sad.get.benchmark_table(a).assign(seed=seed), secs


def _ms(v: pd.Series) -> str:
    v = v.dropna().astype(float)
    if v.empty:
        return "-"
    return f"{v.mean():.3f}" if len(v) == 1 else f"{v.mean():.3f} ± {v.std(ddof=1):.3f}"


def main(argv=None) -> int:
    args = T.benchmark_parser(__doc__, [0]).parse_args(argv)
    T.quiet(args.threads)
    raw = T.read_pbmc3k(args.data)
    if raw is None:
        return 1
    pd.set_option("display.width", 250)
    pd.set_option("display.max_rows", 1000)
    t_all = time.perf_counter()
    tables, fit_secs = [], []
    for seed in args.seeds:
        t0 = time.perf_counter()
        tab, secs = run_one(raw, seed)
        tables.append(tab)
        fit_secs.append(secs)
        print(f"[seed {seed}: {time.perf_counter() - t0:.0f} s]", flush=True)
    tab = pd.concat(tables, ignore_index=True)
    print(f"\nheld-out PBMC3k test cells, Seurat labels; seeds {args.seeds}; total {time.perf_counter() - t_all:.0f} s")
    print("signals fitted on training cells, calibrated at 5 % FPR on validation cells; mean (± sd over seeds)")
    print(
        "evasion: flipped and not flagged; fpr: clean test cells (attack rows) or shifted cells (benign rows) flagged\n"
    )
    secs = pd.DataFrame(fit_secs).mean()
    print("fit + calibrate seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in secs.items()) + "\n")
    order = list(dict.fromkeys(tab["threat"]))
    dets = list(dict.fromkeys(tab["detector"]))
    g = tab.groupby(["threat", "detector"], sort=False)
    full = g[COLUMNS].agg(_ms)
    full.insert(0, "kind", g["kind"].first())
    idx = pd.MultiIndex.from_product([order, dets], names=["threat", "detector"])
    print(full.reindex([i for i in idx if i in full.index]).to_string())
    for metric in ("auroc", "tpr_at_5fpr", "evasion", "fpr"):
        kind = ["benign", "clean"] if metric == "fpr" else ["attack"]
        sub = tab[tab["kind"].isin(kind)]
        piv = sub.groupby(["threat", "detector"], sort=False)[metric].mean().unstack("detector")
        piv = piv.reindex(index=[t for t in order if t in piv.index], columns=dets)
        print(f"\n=== {metric} (threat x detector) ===")
        print(piv.to_string(float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
