"""PGD throughput of ``sad`` against a bare torch loop doing the same forward+backward passes.

Both run in this process, on the same trained classifier, cells and batch size, interleaved
(alternating which goes first) over several repeats. The figure is the ratio of the best
times (cells x steps per second), the usual estimate on a machine shared with other work;
the ratio of medians is printed beside it. Two rows: the seed threat (scaled space, ``X``) and
PGD in log space (``.layers['sad_lognorm']``), where both loops reach the classifier through
its own transform (per-gene scaling and clip).

    python benchmarks/pgd_throughput.py --data tests/data/pbmc3k.h5ad
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

import scadversarial as sad
from scadversarial.attacks.whitebox import IterConfig, ThreatArrays, attack_arrays, run_attack


def bare_pgd(model, X, y, *, eps, alpha, steps, batch_size, transform=None):
    """The minimal L-inf PGD loop: forward (through ``transform`` first, if given), input gradient, signed step, projection."""
    for p in model.parameters():
        p.requires_grad_(requires_grad=False)
    out = []
    for start in range(0, len(X), batch_size):
        x0 = torch.from_numpy(X[start : start + batch_size])
        yb = torch.from_numpy(y[start : start + batch_size])
        x = x0.clone()
        for _ in range(steps):
            x.requires_grad_(requires_grad=True)
            loss = F.cross_entropy(model(x if transform is None else transform(x)), yb, reduction="sum")
            (g,) = torch.autograd.grad(loss, x)
            x = torch.min(torch.max(x.detach() + alpha * g.sign(), x0 - eps), x0 + eps)
        out.append(x.numpy())
    for p in model.parameters():
        p.requires_grad_(requires_grad=True)
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="tests/data/pbmc3k.h5ad")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sad.settings.progress = False

    adata = sad.datasets.pbmc3k(args.data)
    sad.pp.preprocess(adata)
    sad.pp.split(adata, "seurat_cell_type")
    sad.tl.train_classifier(adata, "seurat_cell_type", max_epochs=5)
    model = sad.get.model(adata)
    model.eval()
    X = np.ascontiguousarray(adata.X, dtype=np.float32)
    L = np.ascontiguousarray(adata.layers["sad_lognorm"], dtype=np.float32)
    y = model.predict_arrays(X)[0].argmax(1).astype(np.int64)
    n = len(X)
    kw = {"eps": 0.1, "alpha": 0.02, "steps": args.steps}
    log_view = model.for_space("log")
    log_cfg = IterConfig(alpha=kw["alpha"], steps=args.steps, batch_size=args.batch_size)

    def sad_log():
        return run_attack(log_view, L, y, eps=kw["eps"], threat=ThreatArrays(space="log"), config=log_cfg).adversarial[
            kw["eps"]
        ]

    rows = {
        "scaled": (
            lambda: attack_arrays(model, X, y, batch_size=args.batch_size, **kw)[0.1],
            lambda: bare_pgd(model, X, y, batch_size=args.batch_size, **kw),
        ),
        "log": (sad_log, lambda: bare_pgd(model, L, y, batch_size=args.batch_size, transform=model.transform, **kw)),
    }
    print(
        f"cells={n} genes={X.shape[1]} steps={args.steps} batch={args.batch_size} torch_threads={torch.get_num_threads()}"
    )
    for space, (ours_fn, bare_fn) in rows.items():
        # same result: sad's PGD and the bare loop take identical steps
        max_diff = float(np.abs(ours_fn() - bare_fn()).max())
        times: dict[str, list[float]] = {"sad": [], "bare": []}
        runs = {"sad": ours_fn, "bare": bare_fn}
        for r in range(args.repeats):
            for name in ("sad", "bare") if r % 2 == 0 else ("bare", "sad"):
                t0 = time.perf_counter()
                runs[name]()
                times[name].append(time.perf_counter() - t0)
        t_sad, t_bare = times["sad"], times["bare"]
        rate_sad = n * args.steps / min(t_sad)
        rate_bare = n * args.steps / min(t_bare)
        print(f"[{space} space] max |sad - bare| = {max_diff:.2e}")
        print(
            f"  sad PGD : {rate_sad:10.0f} cells*steps/s  (best of {args.repeats}: {min(t_sad):.3f} s, median {statistics.median(t_sad):.3f} s)"
        )
        print(
            f"  bare    : {rate_bare:10.0f} cells*steps/s  (best of {args.repeats}: {min(t_bare):.3f} s, median {statistics.median(t_bare):.3f} s)"
        )
        print(
            f"  ratio sad/bare = {rate_sad / rate_bare:.3f} (best times; target >= 0.9), {statistics.median(t_bare) / statistics.median(t_sad):.3f} (medians)"
        )


if __name__ == "__main__":
    main()
