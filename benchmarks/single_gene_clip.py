"""Would a per-gene "aberrant gene" check catch the one-gene-at-the-clip attacker, and the one who knows it? (issue 14)

Per label set (Seurat cell types, KMeans-10 pseudo-labels) and seed, the default pipeline as in
``threats.py``: ``prepare`` (preprocess, split 60/20/20), ``train_classifier``, PGD at eps
0.05/0.1/0.15, ``train_detector``, all with the seed. Then a candidate check, fitted on clean
training cells and calibrated on validation cells only:

- per gene g, ``q_g``: the largest log-normalized value of g over the training cells, read from the
  classifier's scaled input as ``mean_g + std_g * z`` (an entry at the clip gives its clip log value
  ``mean_g + 10 std_g``, a lower bound of the true value);
- a cell's excess: ``max_g (lv_g - q_g)`` (entries at the clip count with their clip log value);
- the threshold ``delta``: the smallest value that at most 0.5 % of the validation cells and at
  most 0.5 % of their 50 %-thinned version exceed; a cell is flagged when its excess > delta.

On the test cells only: the check's and the default detector's (``sad.tl.detect``) share flagged on
clean cells and on the benign shifts of ``threats.py`` (thinning 50 %/25 %, ambient 10 %, noise 0.2;
seeds ``seed + j`` as ``benchmark_detectors``); and, per threat, the flip rate, the share flagged by
the default detector, by the check, by either, and evasion (flipped and flagged by neither):

- ``one gene at the clip`` and ``one gene at a reachable clip``: ``sad.tl.GeneAtClip()`` and ``sad.tl.GeneAtClip(det)``;
- ``one gene at a clip inside the check``: the attacker who knows the ceiling rule and the check:
  the best, by the loss, of the 20 steepest genes whose clip log value is reachable
  (<= ``log1p(target_sum)``) and <= ``q_g + delta`` (so that gene does not make the check fire);
- ``one gene +m UMI`` (m = 10, 30, 100): the steepest gene raised by m UMI in count space
  (``score_growth._single_gene_layers``), the cell stays on its count lattice;
- ``one gene, most UMI inside the check``: the attacker who knows the check, in count space: for
  each of the 20 steepest genes, its count raised to the largest integer whose log-normalized
  value (with the cell's new library) stays <= ``min(q_g + delta, log1p(target_sum))``; the best by
  the loss.

The two attackers who know the check are also run against the strictest check, ``delta = 0`` (no
gene above its training maximum; columns ``check_d0``, ``evasion_d0``, rows ``(delta 0)``), to see
whether any threshold closes the hole and at what false-alarm cost. The calibration table also gives
the genes the check leaves open (clip reachable and inside the check; training maximum already at
the clip) and the 10/50/90th percentile of the share of the cell's library the count attacker
inside the check added to its one gene (``lib_share_q*``).

Usage::

    python benchmarks/single_gene_clip.py --threads 1                     # both label sets, seeds 0 1 2
    python benchmarks/single_gene_clip.py --labels seurat --save s.pkl --threads 1 &
    python benchmarks/single_gene_clip.py --labels kmeans --save k.pkl --threads 1
    python benchmarks/single_gene_clip.py --load s.pkl k.pkl              # the summary of both
"""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import torch
from threats import (
    benign_cells,
    default_pipeline,
    mean_sd,
    run_seeds,
    split_cells,
)

import scadversarial as sad
from scadversarial.tl import GeneAtClip
from scadversarial.tl._gene_at_clip import CLIP_CANDIDATES
from scadversarial.tl._space import other_counts, space_model, to_scaled

CHECK_FPR = 0.005  # the check may flag at most this share of validation cells, clean and thinned
THIN_CALIB = 0.5  # depth kept by the thinned validation copy the threshold also holds on
GENE_UMI = (10, 30, 100)  # UMI added to the steepest gene (score_growth's single-gene count threat)


def _dense(M) -> np.ndarray:
    return np.asarray(M.toarray() if hasattr(M, "toarray") else M, dtype=np.float64)


class GeneMaxCheck:
    """Per-gene maximum on clean training cells; a cell is flagged when some gene exceeds it by > delta."""

    def __init__(self, clf, X_train: np.ndarray) -> None:
        t = clf.transform
        self.mean = t.mean.double().numpy()
        self.std = t.std.double().numpy()
        self.q = self.log(X_train).max(0)
        self.delta = np.nan

    def log(self, Z: np.ndarray) -> np.ndarray:
        """Log-normalized values of a scaled matrix (an entry at the clip: its clip log value)."""
        return self.mean + self.std * np.asarray(Z, dtype=np.float64)

    def excess(self, Z: np.ndarray) -> np.ndarray:
        return (self.log(Z) - self.q).max(1)

    def calibrate(self, *sets: np.ndarray) -> None:
        """The smallest delta that at most CHECK_FPR of each set's cells exceed."""
        ds = []
        for Z in sets:
            e = np.sort(self.excess(Z))[::-1]
            ds.append(e[int(np.floor(CHECK_FPR * len(e)))])  # the (k+1)-th largest: k cells lie above it
        self.delta = float(max(ds))

    def flags(self, Z: np.ndarray) -> np.ndarray:
        return self.excess(Z) > self.delta


def _loss(clf, Z: np.ndarray, y: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.nn.functional.cross_entropy(
            clf(torch.as_tensor(Z, dtype=torch.float32)), y, reduction="none"
        ).numpy()


def _grad(clf, X: np.ndarray, y: torch.Tensor) -> np.ndarray:
    x = torch.as_tensor(X, dtype=torch.float32).requires_grad_(requires_grad=True)
    (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(clf(x), y, reduction="sum"), x)
    return g.numpy()


def _clip_inside_check(c, clf, check: GeneMaxCheck, ceiling: float) -> tuple[str, np.ndarray]:
    """The best of the 20 steepest genes whose clip is reachable and inside the check, set to the clip."""
    clip = float(clf.transform.clip)
    X = np.asarray(c.X, dtype=np.float32)
    y = _labels(c, clf)
    grad = _grad(clf, X, y)
    top = check.mean + clip * check.std
    grad[:, (top > ceiling) | (top > check.q + check.delta)] = -np.inf
    rows = np.arange(len(X))
    best, best_loss = grad.argmax(1), np.full(len(X), -np.inf)
    for g in np.argsort(-grad, axis=1)[:, :CLIP_CANDIDATES].T:
        Z = X.copy()
        Z[rows, g] = clip
        loss = _loss(clf, Z, y)
        better = (loss > best_loss) & np.isfinite(grad[rows, g])
        best, best_loss = np.where(better, g, best), np.where(better, loss, best_loss)
    Z = X.copy()
    ok = np.isfinite(grad[rows, best])  # a cell with no admissible gene stays clean
    Z[rows[ok], best[ok]] = clip
    return "bench_clip_inside_check", Z


def _labels(c, clf) -> torch.Tensor:
    codes = pd.Categorical(c.obs["sad_pred"].astype(str), categories=clf.classes).codes
    return torch.as_tensor(np.asarray(codes, dtype=np.int64))


def count_cells(c, clf) -> tuple:
    """What a count-space one-gene attacker reads of cells ``c``: scaled input, clean calls, loss gradient,
    row indices, dense counts, counts outside the classifier's genes and the count-space view."""
    X = np.asarray(c.X, dtype=np.float32)
    y = _labels(c, clf)
    return (
        X,
        y,
        _grad(clf, X, y),
        np.arange(len(X)),
        _dense(c.layers["counts"]),
        other_counts(c, clf.var_names),
        space_model(c, clf, "counts"),
    )


def _count_layers(c, clf, check: GeneMaxCheck, ceiling: float, ts: float) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """+m UMI on the steepest gene, and the count attacker who stays inside the check (scaled layers).

    Also, per cell, the share of its new library that the count attacker inside the check added.
    """
    X, y, grad, rows, counts, other, view = count_cells(c, clf)
    out = {}
    steep = grad.argmax(1)
    for m in GENE_UMI:
        C = counts.copy()
        C[rows, steep] += m
        out[f"one gene +{m} UMI"] = to_scaled(view, C, other)
    # the largest count k of gene g with log1p(k ts / (N - c_g + k)) <= bound: k <= e (N - c_g) / (ts - e)
    N = counts.sum(1) + other
    bound = np.minimum(check.q + check.delta, ceiling)
    e = np.expm1(bound)
    best, best_loss = counts.copy(), np.full(len(X), -np.inf)
    for g in np.argsort(-grad, axis=1)[:, :CLIP_CANDIDATES].T:
        cg = counts[rows, g]
        k = np.floor(e[g] * (N - cg) / np.maximum(ts - e[g], 1e-9))
        k = np.where(e[g] < ts, k, cg)  # e >= ts cannot happen below the ceiling; kept safe
        C = counts.copy()
        C[rows, g] = np.maximum(k, cg)  # the attacker only adds counts
        loss = _loss(clf, to_scaled(view, C, other), y)
        better = loss > best_loss
        best[better] = C[better]
        best_loss = np.where(better, loss, best_loss)
    out["one gene, most UMI inside the check"] = to_scaled(view, best, other)
    added = (best - counts).sum(1)  # UMI the count attacker inside the check added to its one gene
    return out, added / (N + added)


def run_one(raw, labels: str, seed: int) -> tuple[pd.DataFrame, dict]:
    a, _ = default_pipeline(raw, labels, seed)
    clf = sad.get.model(a, "classifier").eval()
    ts = float(sad.get.record(a, "preprocess")["params"]["target_sum"])
    ceiling = float(np.log1p(ts))
    train, val, test = split_cells(a)
    check = GeneMaxCheck(clf, sad.tl.scaled_matrix(train, clf))
    thin = sad.tl.benign_shift(val, "thinning", amount=THIN_CALIB, random_state=seed)
    Zval, Zthin = sad.tl.scaled_matrix(val, clf), sad.tl.scaled_matrix(thin, clf)
    check.calibrate(Zval, Zthin)
    top = check.mean + float(clf.transform.clip) * check.std
    info = {
        "labels": labels,
        "seed": seed,
        "delta": check.delta,
        "val_fpr": float(check.flags(Zval).mean()),
        "val_thin_fpr": float(check.flags(Zthin).mean()),
        "val_fpr_d0": float((check.excess(Zval) > 0).mean()),
        "val_thin_fpr_d0": float((check.excess(Zthin) > 0).mean()),
        "genes_clip_reachable": int((top <= ceiling).sum()),
        "genes_clip_inside_check": int(((top <= ceiling) & (top <= check.q + check.delta)).sum()),
        "genes_train_max_at_clip": int(np.isclose(check.q, top).sum()),
    }
    strict = copy.copy(check)
    strict.delta = 0.0  # the strictest check: no gene above its training maximum
    rows = []
    # benign: clean test cells and the shifts (seeds seed + j as benchmark_detectors)
    for name, c in benign_cells(test, seed).items():
        sad.tl.detect(c)
        d = c.obs["sad_adversarial"].to_numpy(bool)
        Z = sad.tl.scaled_matrix(c, clf)
        k, k0 = check.flags(Z), strict.flags(Z)
        rows.append(
            {
                "kind": "benign",
                "threat": name,
                "default": d.mean(),
                "check": k.mean(),
                "either": (d | k).mean(),
                "check_d0": k0.mean(),
                "either_d0": (d | k0).mean(),
            }
        )
    # threats on the test cells (nothing fitted on them)
    clean_pred = clf.predict_arrays(np.asarray(test.X, dtype=np.float32))[0].argmax(1)
    assert (np.asarray(clf.classes)[clean_pred] == test.obs["sad_pred"].astype(str).to_numpy()).all()
    layers: dict[str, str] = {}
    det = sad.get.model(a, "detector")
    for attacker, name in ((GeneAtClip(), "one gene at the clip"), (GeneAtClip(det), "one gene at a reachable clip")):
        (lay,) = replace(attacker, key_added=f"bench_{name.replace(' ', '_')}")(test)
        layers[name] = lay
    for chk, sfx in ((check, ""), (strict, " (delta 0)")):
        made = {"one gene at a clip inside the check": _clip_inside_check(test, clf, chk, ceiling)[1]}
        count_layers, share = _count_layers(test, clf, chk, ceiling, ts)
        made |= count_layers
        # how much of the attacked cell's library the added UMI are: the check bounds gene g, not the library
        for q in (10, 50, 90):
            info[f"lib_share_q{q}{sfx.replace(' (delta 0)', '_d0')}"] = float(np.percentile(share, q))
        for name, Z in made.items():
            if sfx and "inside" not in name:
                continue
            lay = "bench_" + (name + sfx).replace(" ", "_").replace(",", "").replace("+", "p").replace("(", "").replace(
                ")", ""
            )
            test.layers[lay] = Z
            layers[name + sfx] = lay
    sad.tl.detect(test, list(layers.values()))
    for name, lay in layers.items():
        Z = np.asarray(test.layers[lay], dtype=np.float32)
        flip = clf.predict_arrays(Z)[0].argmax(1) != clean_pred
        d = test.obs[f"sad_adversarial_{lay}"].to_numpy(bool)
        k, k0 = check.flags(Z), strict.flags(Z)
        rows.append(
            {
                "kind": "attack",
                "threat": name,
                "flip_rate": flip.mean(),
                "default": d.mean(),
                "check": k.mean(),
                "either": (d | k).mean(),
                "evasion_default": (flip & ~d).mean(),
                "evasion": (flip & ~d & ~k).mean(),
                "check_d0": k0.mean(),
                "evasion_d0": (flip & ~d & ~k0).mean(),
            }
        )
    return pd.DataFrame(rows).assign(labels=labels, seed=seed), info


def summary(tab: pd.DataFrame, infos: pd.DataFrame) -> None:
    cols = {
        "benign": ["default", "check", "either", "check_d0", "either_d0"],
        "attack": ["flip_rate", "default", "check", "either", "evasion_default", "evasion", "check_d0", "evasion_d0"],
    }
    print("the check's calibration (validation cells; thin: their 50 %-thinned copy) and the genes it leaves open")
    print(infos.to_string(index=False, float_format="{:.4f}".format))
    for labels in [*dict.fromkeys(tab["labels"]), "pooled"]:
        part = tab if labels == "pooled" else tab[tab["labels"] == labels]
        print(f"\n=== labels: {labels} (mean ± sd over {'label sets and ' if labels == 'pooled' else ''}seeds) ===")
        for kind, names in cols.items():
            sub = part[part["kind"] == kind]
            g = sub.groupby("threat", sort=False)[names].agg(mean_sd)
            print(g.to_string())
            print()


def main(argv=None) -> int:
    pd.set_option("display.width", 250)
    t0 = time.perf_counter()
    runs = run_seeds(argv, __doc__, run_one, ("table", "info"))
    if runs is None:
        return 1
    print(f"held-out PBMC3k test cells; total {time.perf_counter() - t0:.0f} s")
    print("default: flagged by sad.tl.detect; check: excess > delta; evasion: flipped and flagged by neither;")
    print("evasion_default: flipped and not flagged by the default detector; benign rows: share flagged (FPR)\n")
    summary(runs["table"], runs["info"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
