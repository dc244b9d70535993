"""Standard vs hardened classifier on held-out PBMC3k cells (issue 14, "Defences that harden the classifier").

Per label set (Seurat cell types, KMeans-10 pseudo-labels) and seed, the pipeline of
``benchmarks/threats.py`` up to the classifier: ``preprocess`` (2,000 HVGs), ``split``
(60/20/20, stratified), then one ``train_classifier`` per variant (same split, same seed):

- ``standard``: the default classifier;
- ``hardened``: adversarial training in count space (PGD-AT, 2 UMI, 5 inner steps) plus thinning augmentation
  (half of each batch thinned to 25-100 % depth), early stopping with a patience of 15 epochs (``HARDENED``);
- optional (``--variants``): ``thinning`` (the augmentation alone), ``trades`` (TRADES in count space, 5 inner
  steps), ``trades-log`` (TRADES on expressed log values, 0.25 log units), ``gaussian`` (Gaussian noise on the
  log values, sigma 0.25: the base classifier randomized smoothing wants), and the validation sweep's variants
  (``SWEEP``, ``SWEEP_CONFIG``; names in ``benchmarks/results/hardening_sweep.txt``).

``HARDENED`` was chosen on validation cells (``--split val``, seeds 0-2, both label sets) by a rule fixed
before any test cell was seen: the smallest shortfall from issue 14's four targets (accuracy within 3
points of the standard classifier, +-1 UMI flips <= 30 %, log-space flips at 0.25 halved, predictions
changed by 50 % thinning <= 5 %), summed in percentage points and averaged over the label sets.

Every figure is measured on the evaluation cells (``--split test``, default: the held-out test
cells; ``--split val`` for choosing a variant), and every attack is white-box against the classifier
it evaluates (an attacker who knows the hardened model), with the threat models of ``benchmarks/threats.py``:

- clean accuracy;
- count space: integer counts of expressed genes changed by at most 1 or 2 UMI (PGD, 10 steps as in
  ``threats.py``), and at 1 UMI a stronger 30-step PGD from a random start;
- expressed log space: log-normalized values of expressed genes, 0.25 log units;
- predictions changed by binomial thinning of the counts to 50 % and 25 % depth (``sad.tl.benign_shift``);
- with ``--certify``: randomized smoothing (``sad.tl.certify``, sigma 0.25 log units, 1,000 draws per cell):
  the smoothed classifier's accuracy, its abstentions, and the certified accuracy at L2 radii 0.1, 0.25
  and 0.5 log units.

Usage::

    nice python benchmarks/hardening.py                        # 1 seed, both label sets, test cells
    nice python benchmarks/hardening.py --labels kmeans        # one label set (run the two side by side)
    nice python benchmarks/hardening.py --seeds 0 1 2
    nice python benchmarks/hardening.py --split val --labels seurat --variants standard hardened
    nice python benchmarks/hardening.py --seeds 0 1 2 --certify --csv runs.csv   # + certified accuracy
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from threats import LABEL_SETS, prepare  # benchmarks/ is on sys.path when this script runs

import scadversarial as sad
from scadversarial.tl._certify import CERTIFIED_RADII

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "pbmc3k.h5ad"
UMI_EPS = (1.0, 2.0)  # the count threat of issue 14: +-1 UMI flips 92 % of the standard classifier's calls
LOG_EPS = (0.25,)  # the expressed log-space threat of issue 14's hardening target (0.25 log units)
THIN = (0.5, 0.25)  # depth kept by the benign thinning shifts
STRONG_STEPS = 30  # the stronger +-1 UMI attack: 3x threats.py's 10 PGD steps, from a random start
CERT_SIGMA = 0.25  # randomized smoothing's noise (log units): the sigma docs/threat_model.md reports first
CERT_SAMPLES = 1000  # estimation draws per cell, as threats.py's certified rows (radius up to 2.4 sigma)
#: a longer schedule (default: patience 5, 60 epochs): early stopping watches clean validation accuracy, which
#: adversarial training makes noisy from epoch to epoch
LONG = {"patience": 15, "max_epochs": 100}
#: the hardened variant, chosen on validation cells (``benchmarks/results/hardening_sweep.txt``): PGD-AT in
#: count space at the larger budget of the count threat (2 UMI), 5 inner steps, thinning augmentation, and the
#: longer schedule
HARDENED = {
    "adversarial": sad.tl.AdversarialTraining("pgd", space="counts", eps=2.0, steps=5),
    "augment": sad.tl.ThinningAugmentation(),
    "config": sad.tl.TrainingConfig(**LONG),
}
VARIANTS = {
    "standard": {},
    "thinning": {"augment": sad.tl.ThinningAugmentation()},
    "hardened": HARDENED,
    "trades": {
        "adversarial": sad.tl.AdversarialTraining("trades", space="counts", eps=2.0),
        "augment": sad.tl.ThinningAugmentation(),
    },
    "trades-log": {"adversarial": sad.tl.AdversarialTraining("trades", space="log", eps=0.25)},
    # Cohen et al.'s base classifier: trained under the noise it is certified with (sigma as CERT_SIGMA)
    "gaussian": {"augment": sad.tl.GaussianAugmentation(sigma=CERT_SIGMA)},
}


def _sweep_variant(method: str, eps: float, steps: int, beta: float, thin: float | None, **config) -> dict:
    """One point of the validation sweep: count-space adversarial training, thinning a share ``thin`` of each batch.

    ``config``: :class:`~scadversarial.tl.TrainingConfig` fields that differ from the defaults.
    """
    out = {"adversarial": sad.tl.AdversarialTraining(method, space="counts", eps=eps, steps=steps, beta=beta)}
    if thin:
        out["augment"] = sad.tl.ThinningAugmentation(probability=thin)
    if config:
        out["config"] = sad.tl.TrainingConfig(**config)
    return out


#: the validation sweep (``--variants`` names): method, UMI budget, inner steps, TRADES beta, thinned share
SWEEP = {
    "pgd-e2-s2-t.5": ("pgd", 2.0, 2, 6.0, 0.5),  # the previous hardened variant (called 'hardened' in rounds 1-3)
    "pgd-e1-s2-t.5": ("pgd", 1.0, 2, 6.0, 0.5),
    "pgd-e1-s5-t.5": ("pgd", 1.0, 5, 6.0, 0.5),
    "pgd-e2-s5-t.5": ("pgd", 2.0, 5, 6.0, 0.5),
    "pgd-e2-s2-t0": ("pgd", 2.0, 2, 6.0, None),
    "pgd-e2-s2-t1": ("pgd", 2.0, 2, 6.0, 1.0),
    "trades-e1-b1-t.5": ("trades", 1.0, 2, 1.0, 0.5),
    "trades-e1-b3-t.5": ("trades", 1.0, 2, 3.0, 0.5),
    "trades-e1-b6-t.5": ("trades", 1.0, 2, 6.0, 0.5),
    "trades-e2-b1-t.5": ("trades", 2.0, 2, 1.0, 0.5),
    "trades-e2-b3-t.5": ("trades", 2.0, 2, 3.0, 0.5),
    "trades-e2-b6-t.5": ("trades", 2.0, 2, 6.0, 0.5),
    "trades-e2-b3-t1": ("trades", 2.0, 2, 3.0, 1.0),
    "trades-e2-b3-s5-t.5": ("trades", 2.0, 5, 3.0, 0.5),
}
#: the second round: the training schedule (``LONG``) and the network (dropout on top of the attack may cost capacity)
WIDE = {"hidden": (512, 256, 64)}
LOW_DROPOUT = {"dropout": (0.1, 0.1, 0.1)}
SWEEP_CONFIG = {
    "pgd-e1-s2-t.5-long": (("pgd", 1.0, 2, 6.0, 0.5), LONG),
    "pgd-e2-s2-t.5-long": (("pgd", 2.0, 2, 6.0, 0.5), LONG),
    "pgd-e1-s2-t.5-long-drop.1": (("pgd", 1.0, 2, 6.0, 0.5), {**LONG, **LOW_DROPOUT}),
    "pgd-e2-s2-t.5-long-drop.1": (("pgd", 2.0, 2, 6.0, 0.5), {**LONG, **LOW_DROPOUT}),
    "pgd-e2-s2-t.5-long-wide": (("pgd", 2.0, 2, 6.0, 0.5), {**LONG, **WIDE}),
    "trades-e2-b6-s5-t.5-long": (("trades", 2.0, 5, 6.0, 0.5), LONG),
    "trades-e2-b3-t.5-long": (("trades", 2.0, 2, 3.0, 0.5), LONG),
    "pgd-e1-s5-t.5-long": (("pgd", 1.0, 5, 6.0, 0.5), LONG),
    "pgd-e1.5-s3-t.5-long": (("pgd", 1.5, 3, 6.0, 0.5), LONG),
    "pgd-e2-s5-t.5-long": (("pgd", 2.0, 5, 6.0, 0.5), LONG),
}
VARIANTS.update({name: _sweep_variant(*spec) for name, spec in SWEEP.items()})
VARIANTS.update({name: _sweep_variant(*spec, **config) for name, (spec, config) in SWEEP_CONFIG.items()})
#: ``--certify``'s columns: the smoothed classifier's accuracy, its abstentions, certified accuracy per L2 radius
CERT_COLUMNS = ("smoothed acc", "abstain", *(f"certified {r:g}" for r in CERTIFIED_RADII))
COLUMNS = (
    "accuracy",
    "flip counts 1",
    "flip counts 2",
    "flip counts 1 strong",
    "flip log 0.25",
    "changed thin 50%",
    "changed thin 25%",
    "train s",
)


def _flip(ev, name: str, eps: float, threat, steps: int | None = None, *, random_start: bool = False) -> float:
    method = "pgd_rs" if random_start else "pgd"
    opts = sad.tl.AttackOptions(steps=steps) if steps else None
    sad.tl.attack(ev, method, eps=eps, threat=threat, options=opts, key_added=name)
    rec = sad.get.attack_record(ev, name)
    (layer,) = rec["layers"]
    flip = float(rec["metrics"]["flip_rate"][layer])
    del ev.layers[layer]
    return flip


def evaluate(a, key: str, split: str, seed: int) -> dict:
    """Every figure of one trained classifier on the ``split`` cells."""
    ev = a[(a.obs["sad_split"] == split).to_numpy()].copy()
    row = {"accuracy": float((ev.obs["sad_pred"].astype(str) == ev.obs[key].astype(str)).mean())}
    counts = sad.tl.ThreatModel(space="counts", constraint="counts", mask="counts")
    log = sad.tl.ThreatModel(space="log", constraint="expressed")
    for e in UMI_EPS:
        row[f"flip counts {e:g}"] = _flip(ev, f"h_counts{e:g}", e, counts)
    row["flip counts 1 strong"] = _flip(ev, "h_counts1s", 1.0, counts, STRONG_STEPS, random_start=True)
    for e in LOG_EPS:
        row[f"flip log {e:g}"] = _flip(ev, f"h_log{e:g}", e, log)
    for f in THIN:
        shifted = sad.tl.benign_shift(ev, "thinning", amount=f, random_state=seed)
        sad.tl.predict(shifted)
        changed = shifted.obs["sad_pred"].astype(str).to_numpy() != ev.obs["sad_pred"].astype(str).to_numpy()
        row[f"changed thin {int(f * 100)}%"] = float(changed.mean())
    return row


def certified(a, key: str, split: str, seed: int) -> dict:
    """Randomized smoothing (``sad.tl.certify``, sigma ``CERT_SIGMA``) of one trained classifier on the ``split`` cells."""
    ev = a[(a.obs["sad_split"] == split).to_numpy()].copy()
    opts = sad.tl.CertifyOptions(split=None, labels_key=key, random_state=seed)
    sad.tl.certify(ev, sigma=CERT_SIGMA, n_samples=CERT_SAMPLES, options=opts, key_added="h_cert")
    m = sad.get.record(ev, "h_cert")["metrics"]
    row = {"smoothed acc": float(m["smoothed_accuracy"]), "abstain": float(m["abstention"])}
    row.update({f"certified {r:g}": float(c) for r, c in zip(m["radii"], m["certified_accuracy"], strict=True)})
    return row


def run_one(raw, labels: str, seed: int, variants: list[str], split: str, *, certify: bool = False) -> pd.DataFrame:
    """Train each variant on one label set and seed's split; every figure on the ``split`` cells, one row each."""
    a, key = prepare(raw, labels, seed)
    rows = []
    for name in variants:
        b = a.copy()
        t0 = time.perf_counter()
        sad.tl.train_classifier(b, key, random_state=seed, **VARIANTS[name])
        train_s = time.perf_counter() - t0
        row = evaluate(b, key, split, seed)
        if certify:
            row.update(certified(b, key, split, seed))
        epochs = int(sad.get.record(b, "classifier")["metrics"]["epochs_run"])
        rows.append({"labels": labels, "seed": seed, "variant": name, **row, "train s": train_s, "epochs": epochs})
        figures = ", ".join(f"{k} {v:.3f}" for k, v in row.items())
        print(f"  [{labels} seed {seed} {name}: {epochs} epochs, trained in {train_s:.0f} s] {figures}", flush=True)
    return pd.DataFrame(rows)


def start(data: str, threads: int | None, *, max_columns: int):
    """A benchmark run's set-up: no progress bars, ``threads`` torch threads, wide tables; returns PBMC3k."""
    sad.settings.progress = False
    if threads:
        import torch

        torch.set_num_threads(threads)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", max_columns)
    return sad.datasets.pbmc3k(data)


def _ms(v: pd.Series) -> str:
    v = v.astype(float)
    sd = v.std(ddof=1) if len(v) > 1 else 0.0
    fmt = "{:.0f} ± {:.0f}" if v.name == "train s" else "{:.3f} ± {:.3f}"
    return fmt.format(v.mean(), sd)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--labels", nargs="+", default=list(LABEL_SETS), choices=list(LABEL_SETS))
    p.add_argument("--variants", nargs="+", default=["standard", "hardened"], choices=list(VARIANTS))
    p.add_argument("--split", default="test", choices=["test", "val"], help="cells evaluated (val: for choices)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--csv", default=None, help="also write the per-run table to this CSV file")
    p.add_argument("--certify", action="store_true", help=f"add randomized smoothing (sigma {CERT_SIGMA:g})")
    args = p.parse_args(argv)
    raw = start(args.data, args.threads, max_columns=20)
    t_all = time.perf_counter()
    tables = []
    for labels in args.labels:
        for seed in args.seeds:
            tables.append(run_one(raw, labels, seed, args.variants, args.split, certify=args.certify))
    tab = pd.concat(tables, ignore_index=True)
    if args.csv:
        tab.to_csv(args.csv, index=False)
    print(
        f"\nPBMC3k {args.split} cells; seeds {args.seeds}; mean ± sd over seeds; total {time.perf_counter() - t_all:.0f} s"
    )
    print("flip: predictions changed by a white-box attack on that same classifier (counts: UMI per expressed gene;")
    print(f"strong: {STRONG_STEPS} PGD steps from a random start; log: log units on expressed genes); changed thin:")
    print("predictions changed by binomial thinning of the counts to that depth; train s: training wall time\n")
    for labels in args.labels:
        sub = tab[tab["labels"] == labels]
        columns = [*COLUMNS, *CERT_COLUMNS] if args.certify else list(COLUMNS)
        summary = sub.groupby("variant", sort=False)[columns].agg(_ms)
        print(f"=== labels: {labels} ({LABEL_SETS[labels]}) ===")
        print(summary.T.to_string())
        print()
    print("=== per run ===")
    print(tab.round(3).to_string(index=False))
    print("\nvariants:")
    for name in args.variants:
        print(f"  {name}: {VARIANTS[name] or 'defaults'}")
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())
