"""Weak-input filtering (Rademaker et al. 2019) as a defence and as a detector, on held-out PBMC3k cells (issue 14).

Per label set (Seurat cell types, KMeans-10 pseudo-labels) and seed, the pipeline of
``benchmarks/threats.py`` up to the classifier (``prepare``: 2,000 HVGs, a 60/20/20 stratified
split), then:

**Defence.** One ``train_classifier`` per variant, same split and seed: ``standard`` (no filter)
and ``filter <t>`` for each threshold ``t`` in UMI at the training cells' median depth
(``sad.tl.WeakInputFilter(threshold=t)`` on ``TrainingConfig.input_filter``: the network is trained
on filtered input). Every variant is measured with ``hardening.evaluate`` (the figures of
``benchmarks/hardening.py``: clean accuracy, flip rates of white-box PGD under the +-1/+-2 UMI count
threat, the stronger 30-step +-1 UMI attack and the 0.25 log-unit expressed threat, predictions
changed by thinning to 50 %/25 % depth) on the **validation** cells and on the **test** cells. The
attacks are white-box through the filter: its backward pass is the identity (straight-through),
so the attacker gets the unfiltered network's gradient, not the hard threshold's zero. The
threshold is *chosen on validation cells* (:func:`choose`: the lowest validation flip rate under
the +-1 UMI attack among the variants, the standard one included, whose validation accuracy is
within :data:`MAX_ACCURACY_LOSS` of the standard classifier's); test figures of every threshold
are printed beside the choice.

**Detector.** The ``'filter'`` squeezer of ``SqueezeDetector`` (the L1 distance between the
probabilities of a cell and of its filtered copy) on the *standard* classifier, at each threshold
(in log units, as the layer uses it), fitted on the training cells and calibrated on clean
validation cells for a 5 % false-positive rate: AUROC of attacked vs clean test cells (all
attacked cells, and the flipped ones only), TPR at the calibrated threshold, and the share of
test cells flagged after thinning to 50 %/25 % (false positives). The attacks are the count
threats (+-1, +-2 UMI) and the expressed log threat (0.25) against the standard classifier, not
detector-aware.

Usage::

    nice python benchmarks/input_filter.py --threads 1                      # seed 0, both label sets
    nice python benchmarks/input_filter.py --threads 1 --seeds 0 1 2 --labels seurat
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import pandas as pd
from hardening import (
    COLUMNS,
    DATA,
    LOG_EPS,
    THIN,
    UMI_EPS,
    evaluate,
    start,
)  # benchmarks/ is on sys.path when this script runs
from sklearn.metrics import roc_auc_score
from threats import LABEL_SETS, _ms, prepare

import scadversarial as sad
from scadversarial.detection import SqueezeDetector

#: candidate thresholds, UMI at the median training depth: 0.5 filters only 1-UMI values of deep cells
#: (~5 % of the training cells' expressed values on PBMC3k), 1.5 every 1-UMI value but in the shallowest
#: cells (~68 %), 2.5 most 2-UMI values too (~80 %); 1.0 between, 4.0 beyond the count threat's 2 UMI
THRESHOLDS = (0.5, 1.0, 1.5, 2.5, 4.0)
#: the issue's bound on the clean accuracy a hardened classifier may lose (3 points)
MAX_ACCURACY_LOSS = 0.03
TARGET_FPR = 0.05  # the detectors' calibration target on clean validation cells
COUNTS = sad.tl.ThreatModel(space="counts", constraint="counts", mask="counts")
LOG = sad.tl.ThreatModel(space="log", constraint="expressed")


def _variant(t: float | None) -> str:
    return "standard" if t is None else f"filter {t:g}"


def _train(a, key: str, seed: int, t: float | None):
    b = a.copy()
    config = None if t is None else sad.tl.TrainingConfig(input_filter=sad.tl.WeakInputFilter(threshold=t))
    t0 = time.perf_counter()
    sad.tl.train_classifier(b, key, random_state=seed, config=config)
    return b, time.perf_counter() - t0


def defence(a, key: str, labels: str, seed: int, thresholds) -> tuple[pd.DataFrame, object]:
    """Validation and test figures of the standard and each filtered classifier; also the standard AnnData."""
    rows, standard = [], None
    for t in (None, *thresholds):
        b, train_s = _train(a, key, seed, t)
        if t is None:
            standard = b
        rec = b.uns["sad"]["classifier"]
        t_log = rec["params"].get("input_filter", {}).get("threshold_log", np.nan) if t is not None else np.nan
        for split in ("val", "test"):
            row = evaluate(b, key, split, seed)
            rows.append(
                {
                    "labels": labels,
                    "seed": seed,
                    "variant": _variant(t),
                    "umi": np.nan if t is None else t,
                    "log": float(t_log),
                    "split": split,
                    **row,
                    "train s": train_s,
                    "epochs": int(rec["metrics"]["epochs_run"]),
                }
            )
            figures = ", ".join(f"{k} {v:.3f}" for k, v in row.items())
            print(f"  [{labels} seed {seed} {_variant(t)} {split}] {figures}", flush=True)
    return pd.DataFrame(rows), standard


def choose(val: pd.DataFrame) -> str:
    """The variant chosen on validation cells: the lowest +-1 UMI flip rate among the variants (the standard one
    included) whose accuracy is within :data:`MAX_ACCURACY_LOSS` of the standard classifier's; means over the seeds
    of ``val``.
    """
    mean = val.groupby("variant", sort=False)[["accuracy", "flip counts 1"]].mean()
    ok = mean[mean["accuracy"] >= mean.loc["standard", "accuracy"] - MAX_ACCURACY_LOSS]
    return str(ok["flip counts 1"].idxmin())


def _attacked(ev, model, name: str, eps: float, threat) -> tuple[np.ndarray, np.ndarray]:
    """Scaled attacked matrix of the ``ev`` cells and which of them flipped."""
    sad.tl.attack(ev, "pgd", eps=eps, threat=threat, key_added=name)
    (layer,) = ev.uns["sad"]["attacks"][name]["layers"]
    X = sad.tl.scaled_matrix(ev, model, layer)
    flipped = ev.obs[f"{layer}_pred"].astype(str).to_numpy() != ev.obs["sad_pred"].astype(str).to_numpy()
    del ev.layers[layer]
    return X, flipped


def detector(b, labels: str, seed: int, thresholds, log_thresholds: dict) -> pd.DataFrame:
    """The filter squeezer on the standard classifier ``b`` at each threshold: attacked and thinned test cells."""
    model = sad.get.model(b)
    split = b.obs["sad_split"].astype(str).to_numpy()
    ev = b[split == "test"].copy()
    threats = {f"counts eps={e:g}": (e, COUNTS) for e in UMI_EPS} | {
        f"expressed log eps={e:g}": (e, LOG) for e in LOG_EPS
    }
    attacked = {name: _attacked(ev, model, f"d{i}", e, tm) for i, (name, (e, tm)) in enumerate(threats.items())}
    thinned = {}
    for f in THIN:
        shifted = sad.tl.benign_shift(ev, "thinning", amount=f, random_state=seed)
        thinned[f"thinning {int(f * 100)}%"] = sad.tl.scaled_matrix(shifted, model)
    X_clean = np.asarray(ev.X, np.float32)
    rows = []
    for t in thresholds:
        det = SqueezeDetector(squeezers=("filter",), threshold=log_thresholds[t])
        det.fit(model, np.asarray(b.X[split == "train"], np.float32))
        det.calibrate(np.asarray(b.X[split == "val"], np.float32), target_fpr=TARGET_FPR)
        clean = det.score(X_clean)
        base = {"labels": labels, "seed": seed, "umi": t, "log": log_thresholds[t]}
        rows.append({**base, "cells": "clean", "flagged": float((clean >= det.threshold).mean())})
        for name, (X, flipped) in attacked.items():
            s = det.score(X)
            y = np.r_[np.zeros(len(clean)), np.ones(len(s))]
            row = {**base, "cells": name, "flip_rate": float(flipped.mean())}
            row["auroc"] = float(roc_auc_score(y, np.r_[clean, s]))
            if flipped.any():
                yf = np.r_[np.zeros(len(clean)), np.ones(int(flipped.sum()))]
                row["auroc_flipped"] = float(roc_auc_score(yf, np.r_[clean, s[flipped]]))
            row["flagged"] = float((s >= det.threshold).mean())
            row["evasion"] = float((flipped & (s < det.threshold)).mean())
            rows.append(row)
        for name, X in thinned.items():
            rows.append({**base, "cells": name, "flagged": float((det.score(X) >= det.threshold).mean())})
    return pd.DataFrame(rows)


DEFENCE_COLUMNS = tuple(c for c in COLUMNS if c != "train s")  # hardening.py's figures, training time apart
DETECTOR_COLUMNS = ("flip_rate", "auroc", "auroc_flipped", "flagged", "evasion")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--labels", nargs="+", default=list(LABEL_SETS), choices=list(LABEL_SETS))
    p.add_argument("--thresholds", type=float, nargs="+", default=list(THRESHOLDS), help="UMI at the median depth")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    raw = start(args.data, args.threads, max_columns=30)
    t_all = time.perf_counter()
    defences, detectors = [], []
    for labels in args.labels:
        for seed in args.seeds:
            a, key = prepare(raw, labels, seed)
            tab, standard = defence(a, key, labels, seed, args.thresholds)
            defences.append(tab)
            logs = dict(tab.dropna(subset=["umi"]).drop_duplicates("umi")[["umi", "log"]].itertuples(index=False))
            det = detector(standard, labels, seed, args.thresholds, logs)
            detectors.append(det)
            print(det.round(3).to_string(index=False), flush=True)
    tab, det = pd.concat(defences, ignore_index=True), pd.concat(detectors, ignore_index=True)
    print(f"\nPBMC3k; seeds {args.seeds}; mean ± sd over seeds; total {time.perf_counter() - t_all:.0f} s")
    print("threshold: UMI at the training cells' median depth (log: the log units the layer applies, mean over seeds)")
    for labels in args.labels:
        sub = tab[tab["labels"] == labels]
        print(f"\n=== defence, labels: {labels} ({LABEL_SETS[labels]}) ===")
        for split in ("val", "test"):
            part = sub[sub["split"] == split]
            summary = part.groupby("variant", sort=False)[[*DEFENCE_COLUMNS, "log", "train s"]].agg(_ms)
            print(f"--- {split} cells ---")
            print(summary.T.to_string())
        val = sub[sub["split"] == "val"]
        by_seed = ", ".join(f"seed {s}: {choose(val[val['seed'] == s])}" for s in args.seeds)
        print(f"chosen on validation cells: {choose(val)} (mean over seeds; {by_seed})")
        dsub = det[det["labels"] == labels]
        print(f"\n=== detector (filter squeezer on the standard classifier), labels: {labels} ===")
        summary = dsub.groupby(["umi", "cells"], sort=False)[list(DETECTOR_COLUMNS)].agg(_ms)
        print(summary.to_string())
    print("\n=== per run ===")
    print(tab.round(3).to_string(index=False))
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())
