"""The hardened classifier as a reference inside the detector: flag cells it disagrees with (issue 14).

Per label set (Seurat cell types, KMeans-10 pseudo-labels) and seed, the default pipeline as in
``threats.py``: ``prepare`` (preprocess, split 60/20/20), ``train_classifier``, PGD at eps
0.05/0.1/0.15, ``train_detector``, all with the seed; plus the hardened classifier
(``hardening.HARDENED``, same split and seed). The standard classifier keeps making the calls; the
hardened one (``h``) only scores them:

- ``s1 = 1 - p_h(call)``, ``s2 = max_c log p_h(c) - log p_h(call)`` (the hardened one's log-odds
  against the standard's call), ``js``: Jensen-Shannon divergence of the two probability vectors (symmetric);
- each threshold: the smallest value at most 1 % of the clean validation cells exceed (a cell is flagged
  when its score is above it); its false-alarm rate on the 50 %-thinned validation cells is reported too.

On the test cells only (nothing fitted on them): false alarms of each check alone and of ``either``
(the check or the default detector, ``sad.tl.detect``) on clean cells and the benign shifts of
``threats.py`` (seeds ``seed + j``); per threat against the standard classifier, its flip rate, the
share flagged by the default detector, by the check, by either, and evasion (standard call flipped,
flagged by neither). Threats: ``InsideCountChecks(det, 1/2)``, count PGD +-1/+-2 UMI, ``GeneAtClip(det)``,
expressed log PGD 0.25; and the attacker who knows the reference: ``InsideCountChecks(det, e).against(joint)``
where ``joint`` is the standard classifier whose logits are ``log_softmax(std(x)) + log_softmax(hard(x))``
(PGD on the cross-entropy of the product of both classifiers' probabilities, pushed away from the
joint's clean call; the standard and hardened scaled inputs are the same transform, checked).

Usage::

    python benchmarks/hardened_reference.py --labels seurat --save s.pkl --threads 1 &
    python benchmarks/hardened_reference.py --labels kmeans --save k.pkl --threads 1
    python benchmarks/hardened_reference.py --load s.pkl k.pkl
"""

from __future__ import annotations

import copy
import sys

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from hardening import HARDENED
from threats import (
    benign_cells,
    default_pipeline,
    mean_sd,
    run_seeds,
    split_cells,
)

import scadversarial as sad
from scadversarial.models.classifier import CellClassifier

FPR = 0.01  # each check's budget of clean validation false alarms
THIN_CALIB = 0.5
HARD_KEY = "classifier_hardened"
SCORES = ("s1", "s2", "js")


class JointClassifier(CellClassifier):
    """The standard classifier whose logits are the sum of both classifiers' log-probabilities."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.head(self.body(x)), 1) + F.log_softmax(self.hard(x), 1)


def joint_of(std: CellClassifier, hard: CellClassifier) -> JointClassifier:
    """A copy of ``std`` that also runs ``hard`` on the same scaled input (the transforms must match)."""
    for b in ("mean", "std"):
        assert torch.allclose(getattr(std.transform, b), getattr(hard.transform, b)), b
    assert std.transform.clip == hard.transform.clip
    assert list(std.classes) == list(hard.classes)
    j = copy.deepcopy(std)
    j.__class__ = JointClassifier
    j.hard = copy.deepcopy(hard)  # a submodule: eval()/train() reach it
    return j.eval()


def _probs(clf, Z: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(clf.predict_arrays(np.asarray(Z, dtype=np.float32))[0]).double(), 1).numpy()


def scores(ps: np.ndarray, ph: np.ndarray) -> dict[str, np.ndarray]:
    """The disagreement scores of the hardened probabilities ``ph`` with the standard ones ``ps``."""
    call = ps.argmax(1)
    r = np.arange(len(call))
    lh = np.log(np.clip(ph, 1e-300, None))
    m = 0.5 * (ps + ph)

    def kl(p, q):
        return (p * (np.log(np.clip(p, 1e-300, None)) - np.log(np.clip(q, 1e-300, None)))).sum(1)

    return {"s1": 1 - ph[r, call], "s2": lh.max(1) - lh[r, call], "js": 0.5 * kl(ps, m) + 0.5 * kl(ph, m)}


def threshold(s: np.ndarray) -> float:
    """The smallest value at most FPR of ``s`` exceed."""
    e = np.sort(s)[::-1]
    return float(e[int(np.floor(FPR * len(e)))])


def run_one(raw, labels: str, seed: int) -> tuple[pd.DataFrame, dict]:
    a, key = default_pipeline(raw, labels, seed)
    sad.tl.train_classifier(a, key, random_state=seed, key_added=HARD_KEY, **HARDENED)
    std, hard = sad.get.model(a, "classifier").eval(), sad.get.model(a, HARD_KEY).eval()
    det = sad.get.model(a, "detector")
    val, test = split_cells(a, ("val", "test"))

    def sc(c, layer=None):
        return scores(
            _probs(std, sad.tl.scaled_matrix(c, std, layer)), _probs(hard, sad.tl.scaled_matrix(c, hard, layer))
        )

    thin = sad.tl.benign_shift(val, "thinning", amount=THIN_CALIB, random_state=seed)
    sv, st = sc(val), sc(thin)
    thr = {k: threshold(sv[k]) for k in SCORES}
    y_test = test.obs[key].astype(str).to_numpy()
    ph_test = _probs(hard, sad.tl.scaled_matrix(test, hard))
    info = {
        "labels": labels,
        "seed": seed,
        "hard_acc": float((np.asarray(hard.classes)[ph_test.argmax(1)] == y_test).mean()),
    }
    info["std_acc"] = float((test.obs["sad_pred"].astype(str).to_numpy() == y_test).mean())
    # clean validation cells whose two calls differ: what the 1 % budget has to leave alone
    info["val_disagree"] = float(
        (
            _probs(std, sad.tl.scaled_matrix(val, std)).argmax(1)
            != _probs(hard, sad.tl.scaled_matrix(val, hard)).argmax(1)
        ).mean()
    )
    for k in SCORES:
        info |= {
            f"thr_{k}": thr[k],
            f"val_{k}": float((sv[k] > thr[k]).mean()),
            f"thin_{k}": float((st[k] > thr[k]).mean()),
        }
    rows = []

    def row(kind, name, d, s, flip=None):
        r = {"kind": kind, "threat": name, "default": d.mean()}
        if flip is not None:
            r["flip_rate"] = flip.mean()
            r["evasion_default"] = (flip & ~d).mean()
        for k in SCORES:
            f = s[k] > thr[k]
            r[f"check_{k}"], r[f"either_{k}"] = f.mean(), (d | f).mean()
            if flip is not None:
                r[f"evasion_{k}"] = (flip & ~d & ~f).mean()
        rows.append(r)

    for name, c in benign_cells(test, seed).items():
        sad.tl.detect(c)
        row("benign", name, c.obs["sad_adversarial"].to_numpy(bool), sc(c))
    clean_pred = std.predict_arrays(np.asarray(test.X, dtype=np.float32))[0].argmax(1)
    layers: dict[str, str] = {}
    for e in (1.0, 2.0):
        (lay,) = sad.tl.InsideCountChecks(det, eps=e, key_added=f"bench_inside_eps{e:g}", random_state=seed)(test)
        layers[f"inside the checks eps={e:g}"] = lay
    sad.tl.attack(
        test,
        "pgd",
        eps=(1.0, 2.0),
        space="counts",
        constraint="counts",
        mask="counts",
        random_state=seed,
        key_added="bench_counts",
    )
    for e, lay in zip((1, 2), sad.get.attack_record(test, "bench_counts")["layers"], strict=True):
        layers[f"counts eps={e}"] = lay
    (lay,) = sad.tl.GeneAtClip(det, key_added="bench_gene_at_reachable_clip")(test)
    layers["one gene at a reachable clip"] = lay
    sad.tl.attack(test, "pgd", eps=0.25, space="log", constraint="expressed", random_state=seed, key_added="bench_log")
    (lay,) = sad.get.attack_record(test, "bench_log")["layers"]
    layers["expressed log eps=0.25"] = lay
    joint = joint_of(std, hard)
    for e in (1.0, 2.0):
        att = sad.tl.InsideCountChecks(det, eps=e, key_added=f"bench_joint_eps{e:g}", random_state=seed).against(joint)
        (lay,) = att(test)
        layers[f"knows the reference: inside eps={e:g}"] = lay
    sad.tl.detect(test, list(layers.values()))
    for name, lay in layers.items():
        flip = std.predict_arrays(sad.tl.scaled_matrix(test, std, lay))[0].argmax(1) != clean_pred
        row("attack", name, test.obs[f"sad_adversarial_{lay}"].to_numpy(bool), sc(test, lay), flip)
        # the hardened call changed by the attack, and the attacked cells on which both calls agree
        ph = _probs(hard, sad.tl.scaled_matrix(test, hard, lay)).argmax(1)
        ps = std.predict_arrays(sad.tl.scaled_matrix(test, std, lay))[0].argmax(1)
        rows[-1]["hard_flip"] = float((ph != ph_test.argmax(1)).mean())
        rows[-1]["both_flip_same"] = float((flip & (ph == ps)).mean())
    return pd.DataFrame(rows).assign(labels=labels, seed=seed), info


def summary(tab: pd.DataFrame, infos: pd.DataFrame) -> None:
    print("calibration (clean validation cells; thin: their 50 %-thinned copy) and test accuracy of both classifiers")
    print(infos.to_string(index=False, float_format="{:.4f}".format))
    ben = ["default", *[f"{p}_{k}" for k in SCORES for p in ("check", "either")]]
    att = ["flip_rate", "default", "evasion_default"]
    att += [f"{p}_{k}" for k in SCORES for p in ("check", "either", "evasion")] + ["hard_flip", "both_flip_same"]
    for labels in [*dict.fromkeys(tab["labels"]), "pooled"]:
        part = tab if labels == "pooled" else tab[tab["labels"] == labels]
        print(f"\n=== labels: {labels} (mean ± sd over {'label sets and ' if labels == 'pooled' else ''}seeds) ===")
        for kind, names in (("benign", ben), ("attack", att)):
            sub = part[part["kind"] == kind]
            cols = [c for c in names if c in sub and sub[c].notna().any()]
            print(sub.groupby("threat", sort=False)[cols].agg(mean_sd).T.to_string())
            print()
    print("=== worst run (max over label sets x seeds) ===")
    cols = [c for c in tab.columns if c.startswith(("evasion", "check", "either", "flip", "default", "hard"))]
    print(tab.groupby(["kind", "threat"], sort=False)[cols].max().T.to_string(float_format="{:.3f}".format))
    print("\nper run, evasion by score:")
    print(
        tab[tab["kind"] == "attack"][
            ["labels", "seed", "threat", "flip_rate", "evasion_default", *[f"evasion_{k}" for k in SCORES]]
        ].to_string(index=False, float_format="{:.3f}".format)
    )


def main(argv=None) -> int:
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 40)
    runs = run_seeds(argv, __doc__, run_one, ("table", "infos"))
    if runs is None:
        return 1
    summary(runs["table"], runs["infos"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
