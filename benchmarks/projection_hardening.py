"""Does a classifier restricted to the training cells' principal components harden better? (issue 14, validation cells)

``gradient_alignment.py`` found that the count attacker's change off the first 50 principal components
of the training cells lines up with the classifier's input gradient: the attack uses directions real
cells do not vary along. A classifier that cannot see them (a frozen projection onto the first ``k``
components as its first layer) might then need less adversarial training and keep more of its clean
accuracy. Per label set and seed, the pipeline of ``hardening.py`` (``prepare``: 2,000 HVGs, 60/20/20
split), then per variant one classifier, evaluated by ``hardening.evaluate`` (accuracy, +-1/2 UMI
count flips, the 30-step +-1 UMI attack, expressed log 0.25 flips, predictions changed by thinning):

- ``standard`` and ``hardened`` as in ``hardening.py``;
- ``standard-pcaK`` and ``hardened-pcaK``: the same training, with ``x -> mu + (x - mu) V_k^T V_k`` in
  front of the network (``mu``, ``V_k``: the mean and the first ``k`` right singular vectors of the
  training cells' scaled matrix, frozen). Every attack is white-box through the projection.

The package has no such option: the script prepends the projection to every ``CellClassifier`` built
while a variant trains (:func:`projected_classifiers`), then removes the patch.

Usage::

    python benchmarks/projection_hardening.py --labels seurat --seeds 0 1 2 --split val --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch
from hardening import COLUMNS, DATA, VARIANTS, _ms, evaluate, start  # benchmarks/ is on sys.path when this script runs
from threats import LABEL_SETS, prepare
from torch import nn

import scadversarial as sad
from scadversarial.models.classifier import CellClassifier


class Projection(nn.Module):
    """``x -> mu + (x - mu) V^T V``: the orthogonal projection onto the rows of ``V`` (frozen buffers)."""

    def __init__(self, mu: np.ndarray, V: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("mu", torch.as_tensor(mu, dtype=torch.float32))
        self.register_buffer("V", torch.as_tensor(V, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mu) @ self.V.T @ self.V + self.mu


@contextmanager
def projected_classifiers(mu: np.ndarray, V: np.ndarray):
    """Every :class:`CellClassifier` built inside the block starts its body with :class:`Projection`."""
    init = CellClassifier.__init__

    def patched(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.body = nn.Sequential(Projection(mu, V), *self.body)

    CellClassifier.__init__ = patched
    try:
        yield
    finally:
        CellClassifier.__init__ = init


def run_one(raw, labels: str, seed: int, variants: list[str], split: str) -> pd.DataFrame:
    """Train each variant on one label set and seed's split; every figure on the ``split`` cells."""
    a, key = prepare(raw, labels, seed)
    X = a.X.toarray() if hasattr(a.X, "toarray") else np.asarray(a.X)
    train = (a.obs["sad_split"] == "train").to_numpy()
    mu = X[train].mean(0)
    _, _, Vt = np.linalg.svd(X[train] - mu, full_matrices=False)
    rows = []
    for name in variants:
        base, _, k = name.partition("-pca")
        b = a.copy()
        t0 = time.perf_counter()
        if k:
            with projected_classifiers(mu, Vt[: int(k)]):
                sad.tl.train_classifier(b, key, random_state=seed, **VARIANTS[base])
        else:
            sad.tl.train_classifier(b, key, random_state=seed, **VARIANTS[base])
        train_s = time.perf_counter() - t0
        row = evaluate(b, key, split, seed)
        rows.append({"labels": labels, "seed": seed, "variant": name, **row, "train s": train_s})
        print(f"  [{labels} seed {seed} {name}: {train_s:.0f} s] " + ", ".join(f"{c} {v:.3f}" for c, v in row.items()))
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--labels", nargs="+", default=list(LABEL_SETS), choices=list(LABEL_SETS))
    p.add_argument(
        "--variants", nargs="+", default=["standard", "standard-pca50", "hardened", "hardened-pca50", "hardened-pca20"]
    )
    p.add_argument("--split", default="val", choices=["test", "val"], help="cells evaluated (val: for choices)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    for name in args.variants:
        base, _, k = name.partition("-pca")
        if base not in VARIANTS or (k and not k.isdigit()):
            p.error(f"unknown variant {name!r}: a hardening.py variant, optionally with -pcaK (K components)")
    raw = start(args.data, args.threads, max_columns=20)
    t_all = time.perf_counter()
    tab = pd.concat(
        [run_one(raw, lab, s, args.variants, args.split) for lab in args.labels for s in args.seeds], ignore_index=True
    )
    print(
        f"\nPBMC3k {args.split} cells; seeds {args.seeds}; mean ± sd over seeds; total {time.perf_counter() - t_all:.0f} s"
    )
    for labels in args.labels:
        sub = tab[tab["labels"] == labels]
        print(f"=== labels: {labels} ({LABEL_SETS[labels]}) ===")
        print(sub.groupby("variant", sort=False)[list(COLUMNS)].agg(_ms).T.to_string())
        print()
    print("=== per run ===")
    print(tab.round(3).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
