"""Latency of one cell change in the app's logic on PBMC3k (2,638 cells x 2,000 genes), on CPU.

A cell change computes the clean cell's prediction and detector score and attacks the cell
(PGD, 10 steps) and scores the attacked profile, as the Streamlit page does. The browser
round trip is measured by ``python tests/test_app_browser.py --adata OUT/adata.h5ad``.

    python benchmarks/app_latency.py --data tests/data/pbmc3k.h5ad
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import scadversarial as sad
from scadversarial.app import logic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="tests/data/pbmc3k.h5ad")
    parser.add_argument("--cells", type=int, default=50)
    args = parser.parse_args()
    sad.settings.progress = False
    a = sad.datasets.pbmc3k(args.data)
    sad.pp.preprocess(a)
    sad.pp.split(a, "seurat_cell_type")
    sad.tl.train_classifier(a, "seurat_cell_type", max_epochs=10)
    sad.tl.attack(a, eps=(0.1,))
    sad.tl.train_detector(a, triplet_epochs=5, epochs=10)
    t0 = time.perf_counter()
    p = logic.load_pipeline(a)
    t_load = time.perf_counter() - t0
    logic.attack_cell(p, 0)  # warm-up
    times = []
    for i in range(1, args.cells + 1):
        t0 = time.perf_counter()
        logic.clean_cell(p, i)
        logic.attack_cell(p, i, eps=0.1)
        times.append(time.perf_counter() - t0)
    t = np.array(times) * 1000
    print(f"PBMC3k {p.n_cells} cells; pipeline load {t_load:.2f} s")
    print(
        f"cell change (clean + PGD attack + 2 detector scores) over {len(t)} cells: median {np.median(t):.1f} ms, p95 {np.percentile(t, 95):.1f} ms, max {t.max():.1f} ms (target < 1000 ms)"
    )


if __name__ == "__main__":
    main()
