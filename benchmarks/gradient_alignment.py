"""A candidate check: is the cell's off-manifold residual aligned with its call's gradient? (issue 14)

The issue's suggested signal "reconstruction residuals aligned with the classifier's input
gradient". Per label set (Seurat cell types, KMeans-10 pseudo-labels) and seed, the default
pipeline as in ``threats.py`` (``prepare``, ``train_classifier``, PGD at ``PGD_EPS``,
``train_detector``, all with the seed). Then:

- the residual ``r = x - P x`` of a cell's scaled input off the first ``N_PCS`` principal components
  of the clean **training** cells;
- ``g``, the input gradient of its call's margin (top logit minus the runner-up);
- the check's statistic ``cos(r, g)``: an attack that moves a cell along its new call's gradient
  leaves that direction in the residual; a clean cell's residual is noise, nearly orthogonal to it;
- its threshold: the smallest value at most ``FPR`` of the clean **validation** cells and at most
  ``FPR`` of the same cells thinned to half depth exceed.

On the held-out test cells only (nothing fitted on them): false alarms on clean cells and on the
benign shifts of ``threats.py`` (seeds ``seed + j``), of the check and of ``either`` (the check or the
default detector, ``sad.tl.detect``); per threat, its flip rate, the share flagged by the default
detector, by the check, by either, and evasion (flipped and flagged by neither):

- PGD on integer counts of expressed genes, +-1 / +-2 UMI;
- ``InsideCountChecks(det, eps)``: the count attacker who keeps the count checks silent;
- the same attacker who also knows the check (``evade=`` the check as a differentiable detector:
  ``score_logit = SCALE * (cos - threshold)``, through the classifier's double backward), one run
  per weight of ``WEIGHTS`` (each keeps, per cell, the flipped rounded iterate the check scores
  lowest), and the worst case per cell over those runs and the plain one: a cell evades when any
  of them flipped it unflagged (as ``threats.py``'s lambda sweep);
- ``GeneInCounts(det)`` and ``GeneAtClip(det)``: one gene raised as far as the rules' ceiling allows.

Usage::

    python benchmarks/gradient_alignment.py --labels seurat --save s.pkl --threads 1 &
    python benchmarks/gradient_alignment.py --labels kmeans --save k.pkl --threads 1
    python benchmarks/gradient_alignment.py --load s.pkl k.pkl
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import torch
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

N_PCS = 50  # principal components of the clean training cells (the detector's own reference keeps 50 too)
FPR = 0.01  # false alarms allowed on clean validation cells and on their half-depth thinning
SCALE = 50.0  # logit per unit of cosine for the evading attacker: steep, so its objective sees the threshold
WEIGHTS = (1.0, 10.0, 100.0)  # weights of the check's logit for the attacker who knows it
UMI = (1.0, 2.0)


class AlignmentCheck(torch.nn.Module):
    """``cos(x - P x, grad margin)`` against a threshold; a detector ``sad.tl.attack`` can differentiate through."""

    def __init__(self, clf, X_train: np.ndarray) -> None:
        super().__init__()
        X = np.asarray(X_train, dtype=np.float64)
        mean = X.mean(0)
        _, _, vt = np.linalg.svd(X - mean, full_matrices=False)
        self.clf = clf.eval()
        self.var_names = clf.var_names
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("components", torch.as_tensor(vt[:N_PCS], dtype=torch.float32))
        self.cut = float("inf")
        self.threshold = 0.5  # sigmoid(score_logit) >= 0.5 exactly when cos >= cut
        # evaluation mode for good: an attack restores the mode it found, and dropout would make the check random
        self.eval()

    def cosine(self, x: torch.Tensor, *, graph: bool = False) -> torch.Tensor:
        with torch.enable_grad():  # the gradient is the statistic, also where the caller scores without one
            x = x if x.requires_grad else x.detach().requires_grad_(requires_grad=True)
            top2 = self.clf(x).topk(2, dim=1).values
            (g,) = torch.autograd.grad((top2[:, 0] - top2[:, 1]).sum(), x, create_graph=graph)
            if not graph:
                g, x = g.detach(), x.detach()
        c = x - self.mean
        r = c - (c @ self.components.T) @ self.components
        return (r * g).sum(1) / (r.norm(dim=1) * g.norm(dim=1)).clamp_min(1e-12)

    def score_logit(self, x: torch.Tensor) -> torch.Tensor:
        return SCALE * (self.cosine(x, graph=True) - self.cut)

    def values(self, Z: np.ndarray) -> np.ndarray:
        return self.cosine(torch.as_tensor(np.asarray(Z, dtype=np.float32))).numpy().astype(np.float64)

    def flags(self, Z: np.ndarray) -> np.ndarray:
        return self.values(Z) > self.cut


def run_one(raw, labels: str, seed: int) -> tuple[pd.DataFrame, dict]:
    a, _ = default_pipeline(raw, labels, seed)
    clf = sad.get.model(a, "classifier").eval()
    det = sad.get.model(a, "detector")
    train, val, test = split_cells(a)
    check = AlignmentCheck(clf, sad.tl.scaled_matrix(train, clf))
    thin = sad.tl.benign_shift(val, "thinning", amount=0.5, random_state=seed)
    cuts = [np.quantile(check.values(sad.tl.scaled_matrix(c, clf)), 1 - FPR) for c in (val, thin)]
    check.cut = float(max(cuts))
    info = {"labels": labels, "seed": seed, "cut": check.cut, "cut val": cuts[0], "cut val thin": cuts[1]}
    rows = []
    for name, c in benign_cells(test, seed).items():
        sad.tl.detect(c)
        d = c.obs["sad_adversarial"].to_numpy(bool)
        f = check.flags(sad.tl.scaled_matrix(c, clf))
        rows.append(
            {"kind": "benign", "threat": name, "default": d.mean(), "check": f.mean(), "either": (d | f).mean()}
        )
    clean_pred = clf.predict_arrays(np.asarray(test.X, dtype=np.float32))[0].argmax(1)
    layers: dict[str, np.ndarray] = {}
    sweeps: dict[str, list[str]] = {}  # worst case per cell over these layers
    for e in UMI:
        layers[f"counts eps={e:g}"] = count_pgd_layer(test, clf, e, seed)
        plain = f"inside the checks eps={e:g}"
        sweeps[f"inside the checks, knows the check eps={e:g}"] = [plain]
        for w in (0.0, *WEIGHTS):
            kw = {"evade": check, "evade_weights": (w,)} if w else {}
            threat = sad.tl.InsideCountChecks(det, eps=e, key_added=f"i{e:g}w{w:g}", random_state=seed, **kw)
            ((lay, _),) = threat(test).items()
            name = plain if not w else f"inside the checks, knows the check, weight {w:g} eps={e:g}"
            layers[name] = sad.tl.scaled_matrix(test, clf, lay)
            if w:
                sweeps[f"inside the checks, knows the check eps={e:g}"].append(name)
    layers |= one_gene_layers(test, det)
    seen = {
        name: (clf.predict_arrays(Z)[0].argmax(1) != clean_pred, d, check.flags(Z))
        for (name, Z), d in zip(layers.items(), default_flags(test, layers).values(), strict=True)
    }
    for name, runs in sweeps.items():  # per cell, the run best for the attacker: flipped unflagged, else flipped
        flips, ds, fs = (np.stack([seen[r][k] for r in runs]) for k in range(3))
        key = 2 * (flips & ~(ds | fs)) + flips
        pick = key.argmax(0)
        cols = np.arange(flips.shape[1])
        seen[name] = (flips[pick, cols], ds[pick, cols], fs[pick, cols])
    for name, (flip, d, f) in seen.items():
        rows.append(
            {
                "kind": "attack",
                "threat": name,
                "flip_rate": flip.mean(),
                "default": d.mean(),
                "check": f.mean(),
                "either": (d | f).mean(),
                "evasion_default": (flip & ~d).mean(),
                "evasion": (flip & ~(d | f)).mean(),
            }
        )
    return pd.DataFrame(rows).assign(labels=labels, seed=seed), info


def main(argv=None) -> int:
    got = run_seeds(argv, __doc__, run_one, ("table", "info"))
    if got is None:
        return 1
    pd.set_option("display.width", 250)
    tab, info = got["table"], got["info"]
    print("held-out PBMC3k test cells; check: cos(residual off 50 training PCs, margin gradient) > its cut (at most")
    print("1 % of clean validation cells and of their half-depth thinning above it); default: sad.tl.detect;")
    print("either: flagged by one of them; evasion: flipped and flagged by neither (evasion_default: by the default)")
    print(info.to_string(index=False, float_format="{:.4f}".format))
    print_runs(tab, ["flip_rate", "default", "check", "either", "evasion_default", "evasion"], ["either", "evasion"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
