"""Two candidate checks against single-gene attackers: a library-share ceiling and occlusion (issue 14).

Per label set (Seurat cell types, KMeans-10 pseudo-labels) and seed, the default pipeline as in
``single_gene_clip.run_one`` (``prepare``, ``train_classifier``, PGD at ``PGD_EPS``,
``train_detector``, all with the seed). The checks are fitted on clean training cells; their
false-alarm rate is read on validation cells (clean and 50 %-thinned); test cells only measure.

(A) library-share ceiling. A gene's share of its cell's library as the rules can read it from the
classifier's scaled input: ``expm1(mean_g + std_g * z) / target_sum`` (an entry at the clip gives a
lower bound). ``s_max``: the largest share over genes and clean training cells. A cell is flagged
when some gene's share > ``m * s_max``, m in {1.5, 2, 3} (columns ``A1.5``, ``A2``, ``A3``). The
calibration table also gives ``s_max_counts``, the same maximum from the counts layer
(``count_g / N``, ``N`` the cell's whole library).

(B) single-gene dependence (occlusion), computed from the scaled input alone. Per cell, its call
``c1`` and runner-up ``c2``; attribution ``a_g = d(logit_c1 - logit_c2)/dz_g * (z_g - z0_g)`` with
``z0_g = clip((0 - mean_g) / std_g)``, the gene's zero-count image in scaled space (no renormalization
of the other genes, which would need the counts). The top-k genes by ``a_g`` are each set alone to
``z0_g`` and the cell re-predicted; flagged when any of the k occlusions changes the call
(k in {1, 2, 3}: ``B1``, ``B2``, ``B3``).

Threats on the test cells (flip rate, flagged by the default detector ``sad.tl.detect``, by the
check, evasion = flipped and flagged by neither):

- ``GeneAtClip()`` / ``GeneAtClip(det)``: one gene at the clip / at a clip the rules' ceiling allows;
- ``one gene +m UMI`` (m = 10, 30, 100): ``single_gene_clip._count_layers`` (steepest gene, count space);
- ``one gene, most UMI``: count space, each of the 20 steepest genes raised to the smallest count that
  puts it at the clip, or, where its clip lies above the ceiling ``log1p(target_sum)``, to 99 % of the
  new library (the ceiling itself is never reached by counts); the best of the 20 by the loss;
- ``knows A m``: the same, each gene's count capped so its share of the new library <= ``m * s_max``;
- ``knows B k``: two genes, scaled space: among the 5 steepest genes (loss gradient), each of the 10 pairs
  set to their reachable clips (``min(clip, z at the rules' log_max)``, never lowered); the attacker
  runs check B with k itself and keeps, per cell, the pair that flips and is not flagged by B k, else
  one that flips, ties by the loss. It does not consult the default detector.

Usage::

    python benchmarks/single_gene_dependence.py --labels seurat --save s.pkl --threads 1 &
    python benchmarks/single_gene_dependence.py --labels kmeans --save k.pkl --threads 1
    python benchmarks/single_gene_dependence.py --load s.pkl k.pkl
"""

from __future__ import annotations

import itertools
import sys
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import torch
from single_gene_clip import _count_layers, _dense, _grad, _labels, _loss, count_cells
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
from scadversarial.tl._space import other_counts, to_scaled

MARGINS = (1.5, 2.0, 3.0)
KS = (1, 2, 3)
PAIR_TOP = 5  # the two-gene attacker's pairs come from this many steepest genes
CAP_SHARE = 0.99  # a gene whose clip lies above the ceiling is raised to this share of the library
THIN_CALIB = 0.5
CELLTYPE = "seurat_cell_type"


class ShareCheck:
    """(A): flagged when some gene's library share, read from the scaled input, exceeds m * s_max."""

    def __init__(self, clf, ts: float, Z_train: np.ndarray) -> None:
        t = clf.transform
        self.mean, self.std, self.ts = t.mean.double().numpy(), t.std.double().numpy(), ts
        self.s_max = float(self.share(Z_train).max())

    def share(self, Z: np.ndarray) -> np.ndarray:
        """Per cell, the largest share of its library one gene holds, as the scaled input shows it."""
        return (np.expm1(self.mean + self.std * np.asarray(Z, dtype=np.float64)) / self.ts).max(1)

    def flags(self, Z: np.ndarray) -> dict[str, np.ndarray]:
        s = self.share(Z)
        return {f"A{m:g}": s > m * self.s_max for m in MARGINS}


class Occlusion:
    """(B): flagged when setting one of the top-k attributed genes to its zero-count image changes the call."""

    def __init__(self, clf) -> None:
        t = clf.transform
        clip = float(t.clip)
        self.clf = clf
        self.z0 = np.clip(-t.mean.double().numpy() / t.std.double().numpy(), -clip, clip).astype(np.float32)

    def _pred(self, Z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.clf(torch.as_tensor(Z, dtype=torch.float32)).argmax(1).numpy()

    def changes(self, Z: np.ndarray, kmax: int = max(KS)) -> np.ndarray:
        """(cells, kmax): column k-1 true when one of the top-k occlusions changes the call."""
        Z = np.asarray(Z, dtype=np.float32)
        x = torch.as_tensor(Z).requires_grad_(requires_grad=True)
        logits = self.clf(x)
        top2 = logits.topk(2, dim=1).values
        (g,) = torch.autograd.grad((top2[:, 0] - top2[:, 1]).sum(), x)
        pred = logits.argmax(1).detach().numpy()
        attr = g.numpy() * (Z - self.z0)
        order = np.argsort(-attr, axis=1)[:, :kmax]
        rows = np.arange(len(Z))
        ch = np.zeros((len(Z), kmax), bool)
        for i in range(kmax):
            O = Z.copy()
            O[rows, order[:, i]] = self.z0[order[:, i]]
            ch[:, i] = self._pred(O) != pred
        return np.logical_or.accumulate(ch, axis=1)

    def flags(self, Z: np.ndarray) -> dict[str, np.ndarray]:
        ch = self.changes(Z)
        return {f"B{k}": ch[:, k - 1] for k in KS}


def _most_umi(c, clf, ts: float, share_cap: float) -> tuple[np.ndarray, np.ndarray]:
    """Count space: the best of the 20 steepest genes raised to its most UMI (share of new library <= share_cap).

    "Most" is the smallest count putting the gene at the clip (more is invisible to the classifier), or
    CAP_SHARE of the new library where the clip is above the ceiling. Returns the scaled layer and the
    added UMI's share of each cell's new library.
    """
    t = clf.transform
    mean, std, clip = t.mean.double().numpy(), t.std.double().numpy(), float(t.clip)
    X, y, grad, rows, counts, other, view = count_cells(c, clf)
    N = counts.sum(1) + other
    # log1p(k ts / (N - c_g + k)) >= l  <=>  k >= e (N - c_g) / (ts - e), e = expm1(l)
    e = np.minimum(np.expm1(mean + clip * std), CAP_SHARE * ts)
    best, best_loss = counts.copy(), np.full(len(X), -np.inf)
    for g in np.argsort(-grad, axis=1)[:, :CLIP_CANDIDATES].T:
        cg, rest = counts[rows, g], N - counts[rows, g]
        k = np.ceil(e[g] * rest / (ts - e[g]))
        if share_cap < 1:  # k / (rest + k) <= s  <=>  k <= s rest / (1 - s)
            k = np.minimum(k, np.floor(share_cap * rest / (1 - share_cap)))
        C = counts.copy()
        C[rows, g] = np.maximum(k, cg)  # the attacker only adds counts
        loss = _loss(clf, to_scaled(view, C, other), y)
        better = loss > best_loss
        best[better] = C[better]
        best_loss = np.where(better, loss, best_loss)
    added = (best - counts).sum(1)
    return to_scaled(view, best, other), added / (N + added)


def _two_genes(c, clf, occ: Occlusion, log_max: float, k: int) -> np.ndarray:
    """Two of the 5 steepest genes at their reachable clips, the pair chosen to flip and pass occlusion B k."""
    t = clf.transform
    mean, std, clip = t.mean.double().numpy(), t.std.double().numpy(), float(t.clip)
    reach = np.minimum(clip, (log_max - mean) / std).astype(np.float32)
    X = np.asarray(c.X, dtype=np.float32)
    y = _labels(c, clf)
    grad = _grad(clf, X, y)
    top = np.argsort(-grad, axis=1)[:, :PAIR_TOP]
    rows = np.arange(len(X))
    best = X.copy()
    best_key, best_loss = np.full(len(X), -1), np.full(len(X), -np.inf)
    for a, b in itertools.combinations(range(PAIR_TOP), 2):
        Z = X.copy()
        for g in (top[:, a], top[:, b]):
            Z[rows, g] = np.maximum(Z[rows, g], reach[g])
        loss = _loss(clf, Z, y)
        flip = occ._pred(Z) != y.numpy()
        key = 2 * (flip & ~occ.changes(Z, k)[:, k - 1]) + flip  # 3: flips, passes B k; 1: flips only
        better = (key > best_key) | ((key == best_key) & (loss > best_loss))
        best[better] = Z[better]
        best_key, best_loss = np.where(better, key, best_key), np.where(better, loss, best_loss)
    return best


def _celltypes(c) -> np.ndarray:
    return c.obs[CELLTYPE].astype(str).to_numpy() if CELLTYPE in c.obs else np.full(c.n_obs, "NA")


def run_one(raw, labels: str, seed: int) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    a, _ = default_pipeline(raw, labels, seed)
    clf = sad.get.model(a, "classifier").eval()
    det = sad.get.model(a, "detector")
    ts = float(sad.get.record(a, "preprocess")["params"]["target_sum"])
    train, val, test = split_cells(a)
    Ztr = sad.tl.scaled_matrix(train, clf)
    share = ShareCheck(clf, ts, Ztr)
    occ = Occlusion(clf)
    C = _dense(train.layers["counts"])
    Ntr = C.sum(1) + other_counts(train, clf.var_names)
    cs = C / Ntr[:, None]
    i, g = np.unravel_index(cs.argmax(), cs.shape)
    info = {
        "labels": labels,
        "seed": seed,
        "s_max": share.s_max,
        "s_max_counts": float(cs.max()),
        "s_max_gene": str(clf.var_names[g]),
        "s_max_celltype": str(_celltypes(train)[i]),
    }

    def checks(Z):
        return share.flags(Z) | occ.flags(Z)

    rows, fa = [], []
    thin = sad.tl.benign_shift(val, "thinning", amount=THIN_CALIB, random_state=seed)
    benign = {"val clean": val, "val thinning 50%": thin} | benign_cells(test, seed)
    for name, c in benign.items():
        sad.tl.detect(c)
        d = c.obs["sad_adversarial"].to_numpy(bool)
        ct = _celltypes(c)
        row = {"kind": "benign", "threat": name, "default": d.mean()}
        Z = sad.tl.scaled_matrix(c, clf)
        # the largest share relative to s_max: the smallest margin m this set would not trip
        info[f"ratio {name}"] = float(share.share(Z).max() / share.s_max)
        for chk, f in checks(Z).items():
            row[chk], row[f"either {chk}"] = f.mean(), (d | f).mean()
            if not name.startswith("val"):
                fa.append(
                    pd.DataFrame({"check": chk, "celltype": ct, "flag": f})
                    .groupby(["check", "celltype"])
                    .flag.agg(["sum", "size"])
                )
        rows.append(row)
    clean_pred = clf.predict_arrays(np.asarray(test.X, dtype=np.float32))[0].argmax(1)
    layers: dict[str, str] = {}
    for attacker, name in ((GeneAtClip(), "GeneAtClip()"), (GeneAtClip(det), "GeneAtClip(det)")):
        (lay,) = replace(attacker, key_added=f"bench_{name.replace('(', '_').replace(')', '')}")(test)
        layers[name] = lay
    dummy = type("NoCheck", (), {"q": np.full(len(clf.var_names), np.inf), "delta": 0.0})()
    made = {n: Z for n, Z in _count_layers(test, clf, dummy, float(np.log1p(ts)), ts)[0].items() if "+" in n}
    made["one gene, most UMI"], sh_free = _most_umi(test, clf, ts, 1.0)
    info["added_share_q50"] = float(np.median(sh_free))
    for m in MARGINS:
        made[f"knows A{m:g}"], sh = _most_umi(test, clf, ts, m * share.s_max)
        info[f"added_share_q50_A{m:g}"] = float(np.median(sh))
    log_max = float(det.rule_fit.log_max)
    for k in KS:
        made[f"knows B{k}"] = _two_genes(test, clf, occ, log_max, k)
    for i, (name, Z) in enumerate(made.items()):
        test.layers[f"bench_sgd_{i}"] = Z
        layers[name] = f"bench_sgd_{i}"
    sad.tl.detect(test, list(layers.values()))
    for name, lay in layers.items():
        Z = np.asarray(test.layers[lay], dtype=np.float32)
        flip = clf.predict_arrays(Z)[0].argmax(1) != clean_pred
        d = test.obs[f"sad_adversarial_{lay}"].to_numpy(bool)
        row = {
            "kind": "attack",
            "threat": name,
            "flip_rate": flip.mean(),
            "default": d.mean(),
            "evasion_default": (flip & ~d).mean(),
        }
        for chk, f in checks(Z).items():
            row[chk], row[f"evasion {chk}"] = f.mean(), (flip & ~d & ~f).mean()
        rows.append(row)
    fa_tab = pd.concat(fa).groupby(level=[0, 1]).sum().reset_index().assign(labels=labels, seed=seed)
    return pd.DataFrame(rows).assign(labels=labels, seed=seed), info, fa_tab


def summary(tab: pd.DataFrame, infos: pd.DataFrame, fa: pd.DataFrame) -> None:
    chks = [f"A{m:g}" for m in MARGINS] + [f"B{k}" for k in KS]
    print("s_max per run (share from the scaled input as the check reads it; _counts: from the counts layer),")
    print("and the median share of the new library the count attackers added to their one gene")
    print(infos[[c for c in infos if not c.startswith("ratio")]].to_string(index=False, float_format="{:.4f}".format))
    print("the largest gene share per benign set divided by s_max (m below it would flag some cell of the set)")
    print(
        infos[["labels", "seed", *[c for c in infos if c.startswith("ratio")]]].to_string(
            index=False, float_format="{:.3f}".format
        )
    )
    ben, att = tab[tab.kind == "benign"], tab[tab.kind == "attack"]
    for labels in [*dict.fromkeys(tab["labels"]), "pooled"]:
        sel = (lambda t: t) if labels == "pooled" else (lambda t, lab=labels: t[t["labels"] == lab])
        print(f"\n=== labels: {labels} (mean ± sd over {'label sets and ' if labels == 'pooled' else ''}seeds) ===")
        print("false alarms (share flagged), the check alone:")
        print(sel(ben).groupby("threat", sort=False)[["default", *chks]].agg(mean_sd).to_string())
        print("false alarms, default detector or the check:")
        print(sel(ben).groupby("threat", sort=False)[[f"either {c}" for c in chks]].agg(mean_sd).to_string())
        print("threats: flip rate, flagged by the default detector, evasion of the default detector alone:")
        print(
            sel(att).groupby("threat", sort=False)[["flip_rate", "default", "evasion_default"]].agg(mean_sd).to_string()
        )
        print("threats: flagged by the check:")
        print(sel(att).groupby("threat", sort=False)[chks].agg(mean_sd).to_string())
        print("threats: evasion (flipped, flagged by neither the default detector nor the check):")
        print(sel(att).groupby("threat", sort=False)[[f"evasion {c}" for c in chks]].agg(mean_sd).to_string())
    print("\nworst case over label sets x seeds (max): threats' evasion")
    cols = ["flip_rate", "evasion_default", *[f"evasion {c}" for c in chks]]
    print(att.groupby("threat", sort=False)[cols].max().to_string(float_format="{:.3f}".format))
    print("\nworst case (max) false alarms, default or the check:")
    cols = ["default", *[f"either {c}" for c in chks]]
    print(ben.groupby("threat", sort=False)[cols].max().to_string(float_format="{:.3f}".format))
    print("\nthe check's false alarms by Seurat cell type (test cells, clean + 4 shifts, all runs): flagged / cells")
    g = fa.groupby(["check", "celltype"])[["sum", "size"]].sum()
    g["rate"] = g["sum"] / g["size"]
    out = g["sum"].astype(int).astype(str) + "/" + g["size"].astype(int).astype(str)
    out = out + " (" + g["rate"].map("{:.3f}".format) + ")"
    print(out.unstack(0).to_string())


def main(argv=None) -> int:
    pd.set_option("display.width", 250)
    t0 = time.perf_counter()
    runs = run_seeds(argv, __doc__, run_one, ("table", "info", "fa"))
    if runs is None:
        return 1
    print(f"held-out PBMC3k test cells (val rows: validation cells); total {time.perf_counter() - t0:.0f} s")
    print("A m: some gene's share > m * s_max; B k: one of the top-k occlusions changes the call\n")
    summary(runs["table"], runs["info"], runs["fa"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
