"""Detection scoring throughput against a bare torch forward+backward loop of the classifier.

Both run in this process on the same batch of scaled cells, interleaved, and we report medians:

- **bare**: ``logits = clf(x)``; cross-entropy at the predicted class; ``torch.autograd.grad`` to the
  input (the least work that yields an input gradient; no meta-features, no detector).
- **bare+params**: the same with ``loss.backward()`` (parameter gradients too, as a training step would).
- **detector**: :class:`~scadversarial.models.AdversarialDetector` forward: embedding, logits,
  probabilities, margin, entropy, input-gradient statistics (a backward pass), input-consistency
  features, standardization, triplet net and residual detector.

Throughput ratio = cells/s of the detector / cells/s of the bare loop (target >= 0.7).

Usage::

    python benchmarks/detect_throughput.py --data tests/data/pbmc3k.h5ad [--batch 1024 --repeats 30]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import scadversarial as sad


def _setup(path: str | None, seed: int):
    a = sad.datasets.pbmc3k(path) if path else sad.datasets.pbmc68k_reduced()
    sad.pp.preprocess(a)
    sad.pp.pseudo_labels(a, random_state=seed)
    counts = a.obs["sad_label"].value_counts()
    a = a[a.obs["sad_label"].isin(counts.index[counts >= 10]).to_numpy()].copy()
    a.obs["sad_label"] = a.obs["sad_label"].astype(str).astype("category")
    sad.pp.split(a, train_size=0.4, val_size=0.1, random_state=seed)
    sad.tl.train_classifier(a, random_state=seed)
    sad.tl.attack(a, random_state=seed)
    # training length does not change the cost of scoring: few epochs keep the benchmark short
    sad.tl.train_detector(a, config=sad.detection.DetectorConfig(triplet_epochs=3, epochs=5), random_state=seed)
    det = sad.get.model(a, "detector")
    return a, det


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=None, help="PBMC3k .h5ad with raw counts (default: the embedded pbmc68k_reduced)")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    sad.settings.progress = False
    if args.threads:
        torch.set_num_threads(args.threads)
    a, det = _setup(args.data, args.seed)
    dev = sad.settings.torch_device()
    det.eval().to(dev)
    clf = sad.get.model(a).eval().to(dev)
    n = args.batch
    X = np.concatenate([a.X, *(a.layers[k] for k in sad.get.attack_record(a, "sad_pgd")["layers"])])
    rows = np.random.default_rng(args.seed).choice(len(X), n, replace=len(X) < n)
    x = torch.as_tensor(X[rows], dtype=torch.float32, device=dev)

    frozen = det.classifier  # same weights as clf, parameters frozen: the cheapest input-gradient loop

    def bare():
        xg = x.detach().requires_grad_(requires_grad=True)
        logits = frozen(xg)
        loss = F.cross_entropy(logits, logits.detach().argmax(1), reduction="sum")
        (g,) = torch.autograd.grad(loss, xg)
        return g

    def bare_params():
        xg = x.detach().requires_grad_(requires_grad=True)
        logits = clf(xg)
        loss = F.cross_entropy(logits, logits.detach().argmax(1), reduction="sum")
        loss.backward()
        clf.zero_grad(set_to_none=True)
        return xg.grad

    def detector():
        return det(x)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    fns = {"bare": bare, "bare+params": bare_params, "detector": detector}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(3):  # warm-up
        for fn in fns.values():
            fn()
    for _ in range(args.repeats):
        for k, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    rate = {k: n / v for k, v in med.items()}
    # end to end through the AnnData API (numpy in, .obs/.obsm out)
    b = a[:n].copy() if a.n_obs >= n else a.copy()
    t0 = time.perf_counter()
    sad.tl.detect(b)
    t_api = time.perf_counter() - t0
    lines = [
        f"detect_throughput: {Path(args.data).name if args.data else 'pbmc68k_reduced'}, {a.n_vars} genes, "
        f"batch {n} cells, device {dev}, torch threads {torch.get_num_threads()}, {args.repeats} interleaved repeats (medians)",
        f"detector features: {len(det.feature_names)} ({', '.join(det.groups)}), triplet={det.triplet is not None}",
        f"{'path':14s} {'ms/batch':>10s} {'cells/s':>12s}",
        *(f"{k:14s} {med[k] * 1e3:10.2f} {rate[k]:12.0f}" for k in fns),
        f"load average (1/5/15 min) after the run: {' / '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} CPUs",
        f"throughput ratio detector / bare (input gradient only): {rate['detector'] / rate['bare']:.3f}  (target >= 0.7)",
        f"throughput ratio detector / bare+params (loss.backward): {rate['detector'] / rate['bare+params']:.3f}",
        f"sad.tl.detect end to end on {b.n_obs} cells (incl. numpy/AnnData I/O): {t_api * 1e3:.1f} ms",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
