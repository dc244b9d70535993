"""Can the hardened classifier also resist one gene raised a lot? Static one-gene augmentation (issue 14).

Per label set (Seurat cell types, KMeans-10 pseudo-labels) and seed, the default pipeline as in
``threats.py``: ``prepare`` (preprocess, split 60/20/20), ``train_classifier`` (the standard
classifier), PGD at eps 0.05/0.1/0.15, ``train_detector`` (``det``, the default detector), all with
the seed. Then two augmented copies of the clean, preprocessed data (no change to the package): every
TRAINING cell is duplicated once, the copy keeps its true label and the 'train' split, and one of its
genes is raised in its integer counts (the other genes' counts and the cell's counts outside the kept
genes unchanged, so the library grows by the added UMI):

- ``gic``: the copy is ``sad.tl.GeneInCounts().attacked_counts`` of the cell against the standard
  classifier (static: made once, before training; the best of the 20 steepest genes raised to its clip,
  99 % of the new library where the clip needs more);
- ``rnd``: a random gene among the 20 steepest (the standard classifier's input gradient of the loss
  of its clean call) raised to a random share of the cell's new library, uniform between 1 % and the
  share at which the gene reaches the classifier's clip (capped at GeneInCounts' 99 %; counts are only raised).

The copies are re-preprocessed exactly as ``sad.tl.benign_shift`` re-preprocesses shifted cells:
``sad.pp.preprocess(copies, reference=clean)`` on their kept genes' counts plus one column carrying
their other genes' total, so ``X`` (scaled with the clean data's mean and std), ``counts`` and
``sad_lognorm`` are what a real cell with those counts would have (checked: the copies' ``X`` through
the classifier's transform equals the attacker's scaled input).

Variants, each trained with the seed on the same split (early stopping on the clean validation cells):
``standard``, ``hardened`` (``hardening.HARDENED``), ``standard+gic``, ``hardened+gic``,
``standard+rnd``, ``hardened+rnd``. Each is measured on the VALIDATION cells (choices are made there)
and on the TEST cells (labelled test; nothing fitted on them), every attack white-box against the
classifier measured:

- ``acc``: clean accuracy;
- ``counts1``: flip rate of count PGD +-1 UMI on expressed genes (``hardening.py``'s ``flip counts 1``);
- ``gic``, ``gic_det``: flip rate of ``GeneInCounts()`` and ``GeneInCounts(det)`` ``.against(clf)``;
- ``clip``: flip rate of ``GeneAtClip().against(clf)``;
- ``gic_std``: flip rate of ``GeneInCounts().against(standard)``, the static attacker the ``gic`` copies were
  made with, transferred to the classifier measured (on the standard classifier it is ``gic``): did the
  augmentation learn what it was shown, on cells it was not trained on?
- ``thin50``: predictions changed by thinning the counts to 50 % (seed: the run's seed).

Usage::

    nice python benchmarks/one_gene_hardening.py --labels seurat --save s.pkl --threads 1 &
    nice python benchmarks/one_gene_hardening.py --labels kmeans --save k.pkl --threads 1
    python benchmarks/one_gene_hardening.py --load s.pkl k.pkl
"""

from __future__ import annotations

import sys
import time
from copy import deepcopy

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from hardening import HARDENED
from threats import PGD_EPS, mean_sd, prepare, run_seeds

import scadversarial as sad
from scadversarial.tl._gene_at_clip import CLIP_CANDIDATES, clean_gradient, evaluating
from scadversarial.tl._gene_in_counts import CAP_SHARE
from scadversarial.tl._shifts import OTHER_GENES
from scadversarial.tl._space import other_counts, space_model, to_scaled

MIN_SHARE = 0.01  # the random-gene copies' smallest share of the new library
THIN = 0.5
AUGMENTS = ("gic", "rnd")
METRICS = ("acc", "counts1", "gic", "gic_det", "clip", "gic_std", "thin50")


def _dense(M) -> np.ndarray:
    return np.asarray(M.toarray() if sp.issparse(M) else M, dtype=np.float64)


def random_gene_counts(cells, clf, rng: np.random.Generator) -> np.ndarray:
    """Counts with one random gene of the 20 steepest raised to a random share of the new library."""
    counts = _dense(cells.layers["counts"])
    other = other_counts(cells, clf.var_names)
    rows = np.arange(len(counts))
    ts = float(sad.get.record(cells, "preprocess")["params"]["target_sum"])
    t = clf.transform
    mean, std = t.mean.double().numpy(), t.std.double().numpy()
    # the share s of the library at which a gene reaches the clip: log1p(s ts) = mean + clip std
    top = np.minimum(np.expm1(mean + float(t.clip) * std), CAP_SHARE * ts) / ts
    X = np.asarray(sad.tl.scaled_matrix(cells, clf), dtype=np.float32)
    with evaluating(clf):
        _, grad = clean_gradient(clf, X)
    steep = np.argsort(-grad, axis=1)[:, :CLIP_CANDIDATES]
    g = steep[rows, rng.integers(0, CLIP_CANDIDATES, len(rows))]
    hi = np.maximum(top[g], MIN_SHARE)
    s = np.minimum(rng.uniform(MIN_SHARE, hi), top[g])  # a gene whose clip needs < 1 %: to its clip
    c = counts[rows, g]
    rest = counts.sum(1) + other - c
    C = counts.copy()
    C[rows, g] = np.maximum(np.ceil(s * rest / (1 - s)), c)  # k / (rest + k) = s; only raised
    return C


def preprocessed_copies(clean, cells, counts: np.ndarray, suffix: str):
    """``cells`` with these kept-gene counts, re-preprocessed like ``clean`` (as ``benign_shift`` does)."""
    other = other_counts(cells, cells.var_names)
    var = pd.DataFrame(index=pd.Index([*map(str, cells.var_names), OTHER_GENES]))
    obs = cells.obs.copy()
    obs.index = obs.index.astype(str) + suffix
    new = ad.AnnData(np.column_stack([counts, other]).astype(np.float32), obs=obs, var=var)
    params = sad.get.record(clean, "preprocess")["params"]
    sad.pp.preprocess(
        new,
        reference=clean,
        already_log=False,
        subset=False,
        target_sum=float(params["target_sum"]),
        output=params.get("output", "scaled"),
    )
    return new


def augmented(clean, new):
    """The clean data plus the copies (their true labels and 'train' split kept), with the clean data's records."""
    parts = []
    for p in (clean, new):
        q = ad.AnnData(
            np.asarray(_dense(p.X), dtype=np.float32),
            obs=p.obs.copy(),
            var=pd.DataFrame(index=clean.var_names),
            layers={k: _dense(p.layers[k]).astype(np.float32) for k in ("counts", "sad_lognorm")},
        )
        parts.append(q)
    out = ad.concat(parts, axis=0, join="inner")
    for col in clean.obs.columns:  # categorical columns keep their categories
        if isinstance(clean.obs[col].dtype, pd.CategoricalDtype):
            out.obs[col] = pd.Categorical(out.obs[col].astype(str), categories=clean.obs[col].cat.categories)
    out.var = clean.var.copy()
    out.uns = deepcopy(dict(clean.uns))
    return out


def evaluate(b, key: str, split: str, det, std, seed: int) -> dict:
    """Every figure of ``b``'s classifier on its ``split`` cells (white-box attacks against it; ``gic_std``: made against ``std``)."""
    clf = sad.get.model(b, "classifier").eval()
    for n in ("mean", "std"):  # the standard classifier's scaled input is this one's: the transfer row is fair
        assert np.allclose(getattr(clf.transform, n).numpy(), getattr(std.transform, n).numpy()), n
    ev = b[(b.obs["sad_split"].astype(str) == split).to_numpy()].copy()
    sad.tl.predict(ev)
    pred = ev.obs["sad_pred"].astype(str).to_numpy()
    row = {"acc": float((pred == ev.obs[key].astype(str).to_numpy()).mean())}
    counts = sad.tl.ThreatModel(space="counts", constraint="counts", mask="counts")
    sad.tl.attack(ev, "pgd", eps=1.0, threat=counts, key_added="og_counts1")
    rec = sad.get.attack_record(ev, "og_counts1")
    (lay,) = rec["layers"]
    row["counts1"] = float(rec["metrics"]["flip_rate"][lay])
    del ev.layers[lay]
    clean = clf.predict_arrays(sad.tl.scaled_matrix(ev, clf))[0].argmax(1)
    for name, att in (
        ("gic", sad.tl.GeneInCounts()),
        ("gic_det", sad.tl.GeneInCounts(det)),
        ("clip", sad.tl.GeneAtClip()),
        ("gic_std", None),
    ):
        # gic_std: the static attacker the augmentation was made with (against the standard classifier)
        (lay,) = (sad.tl.GeneInCounts().against(std) if att is None else att.against(clf))(ev)
        row[name] = float((clf.predict_arrays(sad.tl.scaled_matrix(ev, clf, lay))[0].argmax(1) != clean).mean())
        del ev.layers[lay]
    thin = sad.tl.benign_shift(ev, "thinning", amount=THIN, random_state=seed)
    sad.tl.predict(thin)
    row["thin50"] = float((thin.obs["sad_pred"].astype(str).to_numpy() != pred).mean())
    return row


def run_one(raw, labels: str, seed: int) -> tuple[pd.DataFrame, dict]:
    a, key = prepare(raw, labels, seed)
    base = a.copy()  # the clean, preprocessed, split data every variant trains on
    sad.tl.train_classifier(a, key, random_state=seed)
    sad.tl.attack(a, "pgd", eps=PGD_EPS, random_state=seed)
    sad.tl.train_detector(a, random_state=seed)
    det = sad.get.model(a, "detector")
    std = sad.get.model(a, "classifier").eval()
    assert list(map(str, std.var_names)) == list(map(str, a.var_names))
    train = a[(a.obs["sad_split"].astype(str) == "train").to_numpy()].copy()
    counts0 = _dense(train.layers["counts"])
    made = {
        "gic": sad.tl.GeneInCounts().attacked_counts(train),
        "rnd": random_gene_counts(train, std, np.random.default_rng(seed)),
    }
    info = {"labels": labels, "seed": seed, "n_train": len(train)}
    data = {"": base}
    view = space_model(train, std, "counts")
    other = other_counts(train, std.var_names)
    for name, C in made.items():
        new = preprocessed_copies(base, train, C, f"-{name}")
        # the copies' X through the classifier's transform is the attacker's scaled input (clip included)
        Zx = sad.tl.scaled_matrix(new, std)
        info[f"{name}_check"] = float(np.abs(Zx - to_scaled(view, C, other)).max())
        added = (C - counts0).sum(1)
        share = added / (C.sum(1) + other)
        info[f"{name}_raised"] = float((added > 0).mean())
        info[f"{name}_share_med"] = float(np.median(share[added > 0]))
        # copies the standard classifier itself now calls wrongly
        info[f"{name}_std_flip"] = float(
            (
                std.predict_arrays(Zx)[0].argmax(1) != std.predict_arrays(sad.tl.scaled_matrix(train, std))[0].argmax(1)
            ).mean()
        )
        data[name] = augmented(base, new)
    rows = []
    for variant, aug, kw in (
        ("standard", "", None),
        ("hardened", "", HARDENED),
        *((f"standard+{n}", n, {}) for n in AUGMENTS),
        *((f"hardened+{n}", n, HARDENED) for n in AUGMENTS),
    ):
        t0 = time.perf_counter()
        if kw is None:
            b = a  # the standard classifier of the pipeline
        else:
            b = data[aug].copy()
            sad.tl.train_classifier(b, key, random_state=seed, **kw)
        train_s = time.perf_counter() - t0
        epochs = int(sad.get.record(b, "classifier")["metrics"]["epochs_run"])
        for split in ("val", "test"):
            r = evaluate(b, key, split, det, std, seed)
            rows.append({"labels": labels, "seed": seed, "variant": variant, "split": split, **r, "epochs": epochs})
            figs = ", ".join(f"{k} {v:.3f}" for k, v in r.items())
            print(f"  [{labels} {seed} {variant} {split}: {epochs} ep, {train_s:.0f} s] {figs}", flush=True)
    return pd.DataFrame(rows), info


def summary(tab: pd.DataFrame, infos: pd.DataFrame) -> None:
    print("augmentation copies (training cells): share raised, median share of the new library added,")
    print("standard classifier's calls the copies flip, max |copy X through the transform - attacker's input|")
    print(infos.to_string(index=False, float_format="{:.4f}".format))
    order = list(dict.fromkeys(tab["variant"]))
    for split in ("val", "test"):
        part = tab[tab["split"] == split]
        tag = "VALIDATION" if split == "val" else "TEST (measurement only)"
        for labels in [*dict.fromkeys(part["labels"]), "pooled"]:
            sub = part if labels == "pooled" else part[part["labels"] == labels]
            n = sub[["labels", "seed"]].drop_duplicates().shape[0]
            print(f"\n=== {tag} cells, labels: {labels} (mean ± sd over {n} runs) ===")
            print(sub.groupby("variant", sort=False)[[*METRICS, "epochs"]].agg(mean_sd).loc[order].to_string())
        print(f"\n=== {tag} cells, worst run (max over label sets x seeds; acc: min) ===")
        w = part.groupby("variant", sort=False)[list(METRICS)].max()
        w["acc"] = part.groupby("variant", sort=False)["acc"].min()
        print(w.loc[order].to_string(float_format="{:.3f}".format))
    print("\n=== per run ===")
    print(tab.to_string(index=False, float_format="{:.3f}".format))


def main(argv=None) -> int:
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 40)
    runs = run_seeds(argv, __doc__, run_one, ("table", "infos"), seeds=(0,))
    if runs is None:
        return 1
    summary(runs["table"], runs["infos"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
