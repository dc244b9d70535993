"""End to end on a 2-worker ``dask.distributed.LocalCluster``, PBMC3k's counts read lazily from its ``.h5ad``.

``preprocess(output='lognorm') -> predict -> meta_features -> detect`` on the lazy AnnData, its blocks run
by the cluster's two workers, gives every per-cell result of the in-memory path on the same counts bit for
bit (CPU). The workers are threads of this process (``processes=False``): spawned worker processes would
re-import torch and scanpy for half a minute each, and forked ones were aborted here ("fork() called from a
process already using GNU OpenMP"); the tasks are the ones a worker process runs (``tests/test_chunks.py``
runs ``detect`` on forked worker processes).
"""

from __future__ import annotations

import anndata as ad
import distributed
import h5py
import numpy as np
import pandas as pd
import pytest

import scadversarial as sad

#: Cells per lazily read block: not a multiple of the forward batch size, so the chunk driver's alignment
#: of blocks to forward batches is exercised; four blocks for two workers.
BLOCK_CELLS = 700
#: Cells the detector is trained on (its own attack and fit): enough for a calibrated threshold, quick.
DETECTOR_CELLS = 1000


@pytest.fixture(scope="module")
def models(pipeline3k):
    """PBMC3k's classifier, and a detector trained on the PGD cells of the first 1,000 cells."""
    a = pipeline3k[:DETECTOR_CELLS].copy()
    sad.tl.attack(a, "pgd", eps=0.1)
    sad.tl.train_detector(a, "sad_pgd")
    return sad.get.model(a), sad.get.model(a, "detector")


def _pipeline(adata: ad.AnnData, classifier, detector) -> np.ndarray:
    """The issue's chain on ``adata``; returns the meta-features ``meta_features`` wrote (``detect`` rewrites them)."""
    sad.pp.preprocess(adata, output="lognorm")
    sad.tl.predict(adata, classifier)
    sad.tl.meta_features(adata, model=detector)
    meta = adata.obsm["sad_meta"].copy()
    sad.tl.detect(adata, model=detector)
    return meta


def test_local_cluster_pipeline_equals_in_memory(pbmc3k_raw, pbmc3k_path, models):
    mem = pbmc3k_raw.copy()
    mem_meta = _pipeline(mem, *models)
    with (
        h5py.File(pbmc3k_path, "r") as f,
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
        distributed.get_task_stream(client) as tasks,
    ):
        lazy = pbmc3k_raw.copy()
        lazy.X = ad.experimental.read_elem_lazy(f["X"], chunks=(BLOCK_CELLS, -1))
        lazy_meta = _pipeline(lazy, *models)
    workers = {t["worker"] for t in tasks.data if str(t["key"]).startswith("_run_chunk")}
    assert workers, "no block was scored on the cluster"
    assert type(lazy.X).__module__.startswith("dask")  # still lazy: nothing computed the whole matrix
    assert lazy.uns["sad"]["preprocess"]["params"]["output"] == "lognorm"

    np.testing.assert_array_equal(lazy_meta, mem_meta)
    cols = [c for c in mem.obs if c.startswith("sad_")]
    assert {"sad_pred", "sad_score", "sad_adversarial", "sad_reason"} <= set(cols)
    pd.testing.assert_frame_equal(lazy.obs[cols], mem.obs[cols], check_exact=True)
    assert set(lazy.obsm) == set(mem.obsm)
    for key in mem.obsm:
        np.testing.assert_array_equal(np.asarray(lazy.obsm[key]), np.asarray(mem.obsm[key]), err_msg=key)
    for key in ("sad_mean", "sad_std"):
        np.testing.assert_array_equal(lazy.var[key].to_numpy(), mem.var[key].to_numpy(), err_msg=key)
