"""Reading cells in chunks (``tl/_chunks.py``): in memory, backed ``.h5ad``, dask and a dask cluster.

Chunk boundaries are multiples of the forward batch size, so every chunked result equals the
whole-matrix one bit for bit; ``CHUNK_CELLS`` is lowered here (``monkeypatch``) so the 700 cells of
pbmc68k_reduced span several chunks.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import scadversarial as sad
from scadversarial import _keys
from scadversarial.detection import DetectorConfig
from scadversarial.tl import _chunks
from scadversarial.tl._chunks import chunk_cells, is_chunked, iter_chunks, map_chunks
from scadversarial.tl._input import read_input, x_source

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

LAYER = "sad_pgd_eps0.1"
LAYERS = [None, LAYER]
BATCH = 128  # forward batch of these tests: chunks of 256 cells (see `small_chunks`) hold two batches
#: lognorm X through the model's transform vs X scaled by ``sad.pp.preprocess``: the same float32
#: ``(l - mean) / std`` and clip in torch and numpy; values up to the clip of 10 may differ by a few ulp
#: (~1e-6) if either side changes its arithmetic. Measured now: equal bit for bit (pbmc68k, PBMC3k).
INPUT_ATOL = 1e-5
#: detector scores of inputs that differ by float rounding: the relative tolerance of the detection tests
SCORE_RTOL, SCORE_ATOL = 1e-4, 1e-5


def _dense(M) -> np.ndarray:
    return M.toarray() if sp.issparse(M) else np.asarray(M)


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 256 cells (two forward batches of ``BATCH``), so 700 cells make three chunks."""
    monkeypatch.setattr(_chunks, "CHUNK_CELLS", 2 * BATCH)


@pytest.fixture(scope="module")
def scored(pipeline68k):
    """pipeline68k with a detector (few epochs), scored in memory on X and one attack layer. Copy before writing."""
    a = pipeline68k.copy()
    sad.tl.train_detector(a, random_state=0, config=DetectorConfig(triplet_epochs=4, epochs=12))
    sad.tl.detect(a, LAYERS, batch_size=BATCH)
    return a


OBS = [_keys.score_key(v) for v in LAYERS] + [_keys.flag_key(v) for v in LAYERS] + ["sad_reason", f"sad_reason_{LAYER}"]
OBSM = [k for v in LAYERS for k in (_keys.meta_key(v), _keys.triplet_key(v))]


def assert_same_detection(got: ad.AnnData, ref: ad.AnnData) -> None:
    """Scores, flags, reasons, meta-features and embeddings equal bit for bit."""
    for k in OBS:
        np.testing.assert_array_equal(got.obs[k].to_numpy(), ref.obs[k].to_numpy(), err_msg=k)
    for k in OBSM:
        np.testing.assert_array_equal(got.obsm[k], ref.obsm[k], err_msg=k)


def test_chunks_are_multiples_of_the_batch_size(pbmc68k, small_chunks):
    assert chunk_cells(BATCH) == 2 * BATCH
    assert chunk_cells(100) == 200  # rounded down to whole batches
    assert chunk_cells(1000) == 1000  # at least one batch
    assert [(sl, c.n_obs) for sl, c in iter_chunks(pbmc68k, batch_size=BATCH)] == [
        (slice(0, 256), 256),
        (slice(256, 512), 256),
        (slice(512, 700), 188),
    ]
    lazy = pbmc68k.copy()
    lazy.X = da.from_array(_dense(pbmc68k.X), chunks=(BATCH, 300))  # aligned blocks: one task per block
    assert map_chunks(lazy, lambda c: c.n_obs, batch_size=BATCH) == [128] * 5 + [60]
    lazy.X = da.from_array(_dense(pbmc68k.X), chunks=(100, -1))  # unaligned: re-chunked to whole batches
    assert map_chunks(lazy, lambda c: c.n_obs, batch_size=BATCH) == [256, 256, 188]
    # X in memory, a dask layer, chosen rows in reverse: both read for the same cells, in the order asked
    mixed = pbmc68k.copy()
    mixed.layers["twice"] = da.from_array(2 * _dense(pbmc68k.X), chunks=(BATCH, -1))
    rows = np.arange(pbmc68k.n_obs)[::-2]
    parts = map_chunks(
        mixed,
        lambda c: (c.obs_names, _dense(c.layers["twice"]) - 2 * _dense(c.X)),
        layers=["twice"],
        rows=rows,
        batch_size=BATCH,
    )
    assert [len(names) for names, _ in parts] == [256, 94]
    assert list(np.concatenate([names for names, _ in parts])) == list(pbmc68k.obs_names[rows])
    assert all(not diff.any() for _, diff in parts)
    with pytest.raises(ValueError, match="positive"):
        chunk_cells(-1)


def test_iter_chunks_reads_the_same_cells_in_memory_backed_and_dask(pbmc3k_raw, tmp_path, small_chunks):
    mem = pbmc3k_raw
    dense = mem.copy()
    dense.X = _dense(mem.X)
    lazy = mem.copy()
    lazy.X = da.from_array(mem.X, chunks=(500, -1)).map_blocks(sp.csr_matrix)
    mem.write_h5ad(tmp_path / "sparse.h5ad")
    dense.write_h5ad(tmp_path / "dense.h5ad")
    backed = [ad.read_h5ad(tmp_path / f, backed="r") for f in ("sparse.h5ad", "dense.h5ad")]
    rng = np.random.default_rng(0)
    picks = [None, rng.choice(mem.n_obs, 300, replace=False), mem.obs["seurat_cell_type"].eq("B").to_numpy()]
    X = _dense(mem.X)
    for a in (mem, dense, lazy, *backed):
        assert is_chunked(a)  # more cells than CHUNK_CELLS here; see test_is_chunked for the other reasons
        for rows in picks:
            cells = np.arange(mem.n_obs) if rows is None else np.arange(mem.n_obs)[rows]
            seen = []
            for sl, chunk in iter_chunks(a, rows=rows, batch_size=BATCH):
                assert chunk.n_obs <= 2 * BATCH
                assert chunk.uns is a.uns
                assert not is_chunked(chunk)  # in memory
                np.testing.assert_array_equal(_dense(chunk.X), X[cells[sl]])
                assert list(chunk.obs_names) == list(mem.obs_names[cells[sl]])
                seen.append(sl)
            assert [s.start for s in seen] == list(range(0, len(cells), 2 * BATCH))
    with pytest.raises(KeyError, match="not found in adata.layers"):
        next(iter_chunks(mem, layers=["nope"]))


def test_is_chunked(pbmc68k, tmp_path):
    assert not is_chunked(pbmc68k)  # 700 cells in memory: read whole
    lazy = pbmc68k.copy()
    lazy.layers["lazy"] = da.from_array(_dense(pbmc68k.X), chunks=(BATCH, -1))
    assert not is_chunked(lazy)
    assert is_chunked(lazy, layers=["lazy"])
    pbmc68k.write_h5ad(tmp_path / "a.h5ad")
    assert is_chunked(ad.read_h5ad(tmp_path / "a.h5ad", backed="r"))


def test_chunked_predict_style_scoring_equals_whole(scored, small_chunks):
    """Logits of the classifier chunk by chunk equal those of the whole matrix, bit for bit."""
    clf = sad.tl.get_model(scored, "classifier")
    whole = clf.predict_arrays(sad.tl.classifier_input(scored, clf), batch_size=BATCH)[0]
    source = x_source(scored, clf)
    parts = map_chunks(
        scored, lambda c: clf.predict_arrays(read_input(c, clf, source=source), batch_size=BATCH)[0], batch_size=BATCH
    )
    assert len(parts) == 3
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_detect_on_backed_equals_in_memory(scored, tmp_path, small_chunks):
    path = tmp_path / "scored.h5ad"
    scored.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    model = sad.tl.get_model(scored, "detector")
    sad.tl.detect(backed, LAYERS, model=model, batch_size=BATCH)
    assert backed.isbacked
    assert_same_detection(backed, scored)
    sad.tl.meta_features(backed, LAYER, model=model, batch_size=BATCH)
    np.testing.assert_array_equal(backed.obsm[_keys.meta_key(LAYER)], scored.obsm[_keys.meta_key(LAYER)])
    with pytest.raises(ValueError, match=r"without copy.*to_memory"):
        sad.tl.detect(backed, model=model, copy=True)


def test_detect_and_meta_features_on_dask_equal_in_memory(scored, small_chunks):
    model = sad.tl.get_model(scored, "detector")
    clf = sad.tl.get_model(scored, "classifier")
    lazy = scored.copy()
    lazy.X = da.from_array(scored.X, chunks=(100, -1))  # not whole batches: re-chunked
    lazy.layers[LAYER] = da.from_array(scored.layers[LAYER], chunks=(BATCH, 200))
    for k in OBS + OBSM:
        del (lazy.obsm if k in OBSM else lazy.obs)[k]
    sad.tl.detect(lazy, LAYERS, model=model, batch_size=BATCH)
    assert_same_detection(lazy, scored)
    # the classifier's meta-features: the input reference is fitted on the training cells, read in chunks
    mem = scored.copy()
    sad.tl.meta_features(mem, LAYERS, model=clf, batch_size=BATCH)
    sad.tl.meta_features(lazy, LAYERS, model=clf, batch_size=BATCH)
    for v in LAYERS:
        np.testing.assert_array_equal(lazy.obsm[_keys.meta_key(v)], mem.obsm[_keys.meta_key(v)])


def test_detect_on_a_local_cluster_equals_in_memory(scored):
    """Two worker processes, one thread each: the dask blocks are scored there, bit for bit as here."""
    distributed = pytest.importorskip("distributed")
    lazy = scored.copy()
    lazy.X = da.from_array(scored.X, chunks=(4 * BATCH, -1))
    lazy.layers[LAYER] = da.from_array(scored.layers[LAYER], chunks=(4 * BATCH, -1))
    model = sad.tl.get_model(scored, "detector")
    # forked workers start in a second, where spawned ones re-import torch and scanpy for half a minute; torch
    # then runs on one thread per worker, as a one-core worker of a real cluster would
    with (
        dask.config.set({"distributed.worker.multiprocessing-method": "fork"}),
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.run(torch.set_num_threads, 1)
        with distributed.get_task_stream(client) as stream:
            sad.tl.detect(lazy, LAYERS, model=model, batch_size=BATCH, device="cpu")
    chunks = [t for t in stream.data if str(t["key"]).startswith("_run_chunk")]
    assert len(chunks) == 2  # one task per block of 512 cells, run on the workers
    assert_same_detection(lazy, scored)


def test_lognorm_x_equals_scaled_x_up_to_rounding(scored, pbmc68k, small_chunks):
    """X kept sparse log-normalized goes through the classifier's transform: the scaled X up to float rounding."""
    lognorm = pbmc68k.copy()
    sad.pp.preprocess(lognorm, output="lognorm")
    assert sp.issparse(lognorm.X)
    assert sad.tl.layer_space(lognorm, None) == "log"
    assert sad.tl.layer_space(scored, None) == "scaled"
    assert is_chunked(lognorm)
    for k in (LAYER, "sad_split"):  # the pipeline's attack layer and split, to score the same cells
        (lognorm.layers if k == LAYER else lognorm.obs)[k] = (scored.layers if k == LAYER else scored.obs)[k]
    lognorm.uns["sad"]["attacks"] = scored.uns["sad"]["attacks"]
    clf, model = sad.tl.get_model(scored, "classifier"), sad.tl.get_model(scored, "detector")
    np.testing.assert_allclose(sad.tl.classifier_input(lognorm, clf), scored.X, rtol=0, atol=INPUT_ATOL)
    sad.tl.detect(lognorm, LAYERS, model=model, batch_size=BATCH)
    got, ref = lognorm.obs[_keys.score_key(None)], scored.obs[_keys.score_key(None)]
    np.testing.assert_allclose(got, ref, rtol=SCORE_RTOL, atol=SCORE_ATOL)
    # the attack layer is read as before: equal
    np.testing.assert_array_equal(lognorm.obs[_keys.score_key(LAYER)], scored.obs[_keys.score_key(LAYER)])
    np.testing.assert_array_equal(lognorm.obsm[_keys.meta_key(LAYER)], scored.obsm[_keys.meta_key(LAYER)])
    # the same lognorm X, lazily (CSR blocks): chunked results equal the in-memory lognorm ones bit for bit
    lazy = lognorm.copy()
    lazy.X = da.from_array(lognorm.X, chunks=(BATCH, -1)).map_blocks(sp.csr_matrix)
    lazy.layers[_keys.LAYER_LOGNORM] = lazy.X
    sad.tl.detect(lazy, LAYERS, model=model, batch_size=BATCH)
    assert_same_detection(lazy, lognorm)


def test_train_detector_on_backed_and_dask_equals_in_memory(scored, tmp_path, small_chunks):
    """The detector trained on the cells read chunk by chunk is the one trained in memory, weight for weight."""
    config = DetectorConfig(triplet_epochs=1, epochs=2)
    backed_path = tmp_path / "scored.h5ad"
    scored.write_h5ad(backed_path)
    lazy = scored.copy()
    lazy.X = da.from_array(scored.X, chunks=(100, -1))
    lazy.layers[LAYER] = da.from_array(scored.layers[LAYER], chunks=(BATCH, -1))
    detectors, roles = [], []
    for a in (scored.copy(), ad.read_h5ad(backed_path, backed="r"), lazy):
        sad.tl.train_detector(a, layers=[LAYER], random_state=0, config=config, key_added="small")
        detectors.append(sad.get.model(a, "small"))
        roles.append(a.obs["sad_detector_role"])
    for role in roles[1:]:
        pd.testing.assert_series_equal(role, roles[0])
    ref = detectors[0].state_dict()
    for det in detectors[1:]:
        assert det.threshold == detectors[0].threshold
        for k, v in det.state_dict().items():
            torch.testing.assert_close(v, ref[k], rtol=0, atol=0, msg=k)


def test_attack_on_backed_looks_up_the_classifier(pipeline68k, tmp_path):
    """A backed AnnData's record names its classifier: no ``classifier=`` is needed (``get_model`` reads ``.uns``)."""
    path = tmp_path / "attack.h5ad"
    pipeline68k.write_h5ad(path)
    backed, mem = ad.read_h5ad(path, backed="r"), pipeline68k.copy()
    for a in (backed, mem):
        sad.tl.attack(a, "fgsm", eps=0.1, key_added="quick", batch_size=BATCH)
    layer = "quick_eps0.1"
    np.testing.assert_array_equal(_dense(backed.layers[layer]), _dense(mem.layers[layer]))
    pd.testing.assert_series_equal(backed.obs[f"{layer}_pred"], mem.obs[f"{layer}_pred"])
