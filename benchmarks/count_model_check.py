"""A candidate check against the count attacker who keeps the count checks silent: the count model (issue 14).

The issue's suggested signal "the likelihood of a cell's counts under its predicted cluster's count
model (negative binomial per gene and cluster, fitted on training cells)" is
``sad.detection.CountModelDetector``: ``detector_signals.py`` measured it before the attackers who
know the default detector's rules existed. Per label set (Seurat cell types, KMeans-10 pseudo-labels)
and seed, the default pipeline as in ``threats.py`` (``prepare``, ``train_classifier``, PGD at
``PGD_EPS``, ``train_detector``, all with the seed). Then two checks, fitted on the clean
**training** cells with their labels:

- ``deviance``: the NB deviance per expressed gene under the predicted class, depth trend removed,
  standardized per class;
- ``relative``: ``max_c loglik(c) - loglik(predicted class)``;

each with the smallest threshold that at most ``FPR`` of the clean **validation** cells and at most
``FPR`` of each benign shift of them (``threats.benign_cells``, seeds ``VAL_SHIFT_SEED + j``, not the
test cells' seeds) exceed.

On the held-out test cells only: false alarms on clean cells and on the benign shifts (seeds
``seed + j``) of each check and of ``either`` (the check or the default detector, ``sad.tl.detect``);
per threat, its flip rate, the share flagged by the default detector, by the check, by either, and
evasion (flipped and flagged by neither):

- PGD on integer counts of expressed genes, +-1 / +-2 UMI;
- ``InsideCountChecks(det, eps)``: the count attacker who keeps the count checks silent;
- ``GeneInCounts(det)`` and ``GeneAtClip(det)``: one gene raised as far as the rules' ceiling allows.

Usage::

    python benchmarks/count_model_check.py --labels seurat --save s.pkl --threads 1 &
    python benchmarks/count_model_check.py --labels kmeans --save k.pkl --threads 1
    python benchmarks/count_model_check.py --load s.pkl k.pkl
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
from threats import (
    benign_cells,
    count_pgd_layer,
    default_flags,
    default_pipeline,
    one_gene_layers,
    print_runs,
    run_seeds,
    split_cells,
)

import scadversarial as sad
from scadversarial.detection import CountModelDetector

FPR = 0.01  # false alarms allowed on clean validation cells and on each benign shift of them
VAL_SHIFT_SEED = 1000  # seeds of the validation cells' shifts: apart from the test cells' (seed + j)
UMI = (1.0, 2.0)
STATISTICS = ("deviance", "relative")


def fit_checks(clf, train, val, key: str, seed: int) -> tuple[dict[str, CountModelDetector], dict]:
    """Both count-model checks, fitted on ``train`` (with labels ``key``) and thresholded on ``val`` and its shifts."""
    X_train = sad.tl.scaled_matrix(train, clf)
    y = train.obs[key].astype(str).to_numpy()
    val_sets = {name: sad.tl.scaled_matrix(c, clf) for name, c in benign_cells(val, VAL_SHIFT_SEED + seed).items()}
    checks, info = {}, {}
    for stat in STATISTICS:
        check = CountModelDetector(statistic=stat).fit(clf, X_train, y=y, rng=seed)
        cuts = {name: float(np.quantile(check.score(Z), 1 - FPR)) for name, Z in val_sets.items()}
        check.threshold = max(cuts.values())
        checks[stat] = check
        info |= {f"{stat} cut": check.threshold} | {f"{stat} cut {name}": v for name, v in cuts.items()}
    return checks, info


def run_one(raw, labels: str, seed: int) -> tuple[pd.DataFrame, dict]:
    a, key = default_pipeline(raw, labels, seed)
    clf = sad.get.model(a, "classifier").eval()
    det = sad.get.model(a, "detector")
    train, val, test = split_cells(a)
    checks, info = fit_checks(clf, train, val, key, seed)
    info |= {"labels": labels, "seed": seed}

    def flags(Z: np.ndarray) -> dict[str, np.ndarray]:
        return {stat: check.score(Z) > check.threshold for stat, check in checks.items()}

    rows = []
    for name, c in benign_cells(test, seed).items():
        sad.tl.detect(c)
        d = c.obs["sad_adversarial"].to_numpy(bool)
        row = {"kind": "benign", "threat": name, "default": d.mean()}
        for stat, f in flags(sad.tl.scaled_matrix(c, clf)).items():
            row |= {stat: f.mean(), f"either {stat}": (d | f).mean()}
        rows.append(row)
    clean_pred = clf.predict_arrays(np.asarray(test.X, dtype=np.float32))[0].argmax(1)
    layers: dict[str, np.ndarray] = {}
    for e in UMI:
        layers[f"counts eps={e:g}"] = count_pgd_layer(test, clf, e, seed)
        threat = sad.tl.InsideCountChecks(det, eps=e, key_added=f"i{e:g}", random_state=seed)
        ((lay, _),) = threat(test).items()
        layers[f"inside the checks eps={e:g}"] = sad.tl.scaled_matrix(test, clf, lay)
    layers |= one_gene_layers(test, det)
    for (name, Z), d in zip(layers.items(), default_flags(test, layers).values(), strict=True):
        flip = clf.predict_arrays(Z)[0].argmax(1) != clean_pred
        row = {"kind": "attack", "threat": name, "flip_rate": flip.mean(), "default": d.mean()}
        row["evasion_default"] = (flip & ~d).mean()
        for stat, f in flags(Z).items():
            row |= {stat: f.mean(), f"either {stat}": (d | f).mean(), f"evasion {stat}": (flip & ~(d | f)).mean()}
        rows.append(row)
    return pd.DataFrame(rows).assign(labels=labels, seed=seed), info


def main(argv=None) -> int:
    got = run_seeds(argv, __doc__, run_one, ("table", "info"))
    if got is None:
        return 1
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 30)
    tab, info = got["table"], got["info"]
    print("held-out PBMC3k test cells; deviance / relative: the count-model check above its cut (at most 1 % of")
    print("clean validation cells and of each benign shift of them above it); default: sad.tl.detect; either: the")
    print("check or the default; evasion: flipped and flagged by neither (evasion_default: by the default)")
    print(info.to_string(index=False, float_format="{:.3f}".format))
    cols = ["flip_rate", "default", "evasion_default"]
    cols += [f"{p}{s}" for s in STATISTICS for p in ("", "either ", "evasion ")]
    print_runs(tab, cols, [c for c in tab if c.startswith(("either ", "evasion"))])
    return 0


if __name__ == "__main__":
    sys.exit(main())
