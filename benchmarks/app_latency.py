"""Latency of one cell change in the app's logic on PBMC3k (2,638 cells x 2,000 genes), on CPU.

A cell change computes the clean cell's prediction and detector score and attacks the cell
(PGD, 10 steps) and scores the attacked profile, as the Streamlit page does. The browser
round trip is measured by ``python tests/test_app_browser.py --adata OUT/adata.h5ad``.

With ``--demo-cache DIR``, also the start of the app without arguments: reusing the demo pipeline
cached in ``DIR`` (built there first when missing) and opening it. The tests check that the cache
is reused, not rebuilt; how long that takes is measured here.

    python benchmarks/app_latency.py --data tests/data/pbmc3k.h5ad [--demo-cache DIR --demo-epochs 15]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import scadversarial as sad
from scadversarial.app import logic


def demo_start(cache_dir: str, epochs: int | None) -> None:
    """Time the app's start without arguments: reuse the cached demo pipeline, then open it."""
    kwargs = {} if epochs is None else {"max_epochs": epochs}
    t0 = time.perf_counter()
    logic.build_default_pipeline(cache_dir, **kwargs)
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    logic.build_default_pipeline(cache_dir, **kwargs)
    t_reuse = time.perf_counter() - t0
    t0 = time.perf_counter()
    p = logic.open_pipeline(None, cache_dir=cache_dir, **kwargs)
    t_open = time.perf_counter() - t0
    print(
        f"demo pipeline ({p.n_cells} cells): first call {t_first:.2f} s (builds when not cached), "
        f"reuse {t_reuse:.2f} s, open {t_open:.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="tests/data/pbmc3k.h5ad")
    parser.add_argument("--cells", type=int, default=50)
    parser.add_argument("--demo-cache", default=None, help="also time reusing the demo pipeline cached here")
    parser.add_argument("--demo-epochs", type=int, default=None, help="classifier epochs of that demo pipeline")
    args = parser.parse_args()
    sad.settings.progress = False
    if args.demo_cache is not None:
        demo_start(args.demo_cache, args.demo_epochs)
    a = sad.datasets.pbmc3k(args.data)
    sad.pp.preprocess(a)
    sad.pp.split(a, "seurat_cell_type")
    sad.tl.train_classifier(a, "seurat_cell_type", max_epochs=10)
    sad.tl.attack(a, eps=(0.1,))
    sad.tl.train_detector(a, config=sad.detection.DetectorConfig(triplet_epochs=5, epochs=10))
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
        f"cell change (clean + PGD attack + 2 detector scores) over {len(t)} cells: median {np.median(t):.1f} ms, "
        f"p95 {np.percentile(t, 95):.1f} ms, max {t.max():.1f} ms (target < 1000 ms)"
    )


if __name__ == "__main__":
    main()
