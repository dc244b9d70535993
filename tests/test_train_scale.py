"""Training and prediction at scale (issue 16) on PBMC3k: minibatches read in place, capped epochs, chunked predict.

What stays exact: the default path gives the weights of the former whole-matrix path; training on
sparse log-normalized ``X`` (``sad.pp.preprocess(output='lognorm')``) or on its backed / dask copy gives
the weights of training on the scaled ``X`` when the two agree bit for bit; ``predict`` on backed and
dask ``X`` equals the in-memory path bit for bit (chunks aligned to the forward batches).
"""

from __future__ import annotations

from dataclasses import replace

import anndata as ad
import numpy as np
import pytest
import torch

import scadversarial as sad
from scadversarial.models import CellClassifier
from scadversarial.models.training import (
    Monitor,
    TrainingConfig,
    fit,
    fit_classifier,
    stratified_quota,
    stratified_sample,
)
from scadversarial.tl import _chunks
from scadversarial.tl._input import classifier_input

LABELS = "seurat_cell_type"
#: a small network and two epochs: the tests check what is read and how, not how well it learns
SMALL = TrainingConfig(hidden=(32,), dropout=(0.1,), max_epochs=2, patience=2)


@pytest.fixture(scope="module")
def scaled3k(pbmc3k_raw):
    """PBMC3k preprocessed to scaled X (the default) and split."""
    a = pbmc3k_raw.copy()
    sad.pp.preprocess(a)
    sad.pp.split(a, LABELS)
    return a


@pytest.fixture(scope="module")
def lognorm3k(pbmc3k_raw, scaled3k):
    """PBMC3k preprocessed to sparse log-normalized X, with the split of ``scaled3k``."""
    a = pbmc3k_raw.copy()
    sad.pp.preprocess(a, output="lognorm")
    a.obs["sad_split"] = scaled3k.obs["sad_split"]
    return a


@pytest.fixture(scope="module")
def trained3k(scaled3k):
    """``scaled3k`` with a small classifier trained (module-scoped: copy before writing)."""
    a = scaled3k.copy()
    sad.tl.train_classifier(a, LABELS, config=SMALL, random_state=3)
    return a


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.state_dict().values()]


def _assert_same_weights(m1: torch.nn.Module, m2: torch.nn.Module) -> None:
    for p1, p2 in zip(_weights(m1), _weights(m2), strict=True):
        assert torch.equal(p1, p2)


def test_default_path_gives_the_whole_matrix_weights(scaled3k, trained3k):
    """The former path: the whole training matrix dense as one tensor (``fit_classifier`` on arrays)."""
    a = scaled3k
    split = a.obs["sad_split"].to_numpy()
    y = a.obs[LABELS].cat.codes.to_numpy().astype(np.int64)
    classes = [str(c) for c in a.obs[LABELS].cat.categories]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = CellClassifier(a.var_names, classes, hidden=SMALL.hidden, dropout=SMALL.dropout)
    model.transform.set(a.var["sad_mean"].to_numpy(), a.var["sad_std"].to_numpy())
    X = np.asarray(a.X, dtype=np.float32)
    train, val = split == "train", split == "val"
    fit_classifier(model, (X[train], y[train]), (X[val], y[val]), config=SMALL, random_state=3)
    _assert_same_weights(sad.get.model(trained3k), model)
    params = trained3k.uns["sad"]["classifier"]["params"]
    assert params.get("max_cells_per_epoch") is None  # None values are left out of records
    assert params["max_val_cells"] == sad.models.training.MAX_VAL_CELLS
    cells = trained3k.uns["sad"]["classifier"]["metrics"]["cells"]
    assert cells["per_epoch"] == cells["train"] == train.sum()
    assert cells["val"] == cells["val_of"] == val.sum()


def test_lognorm_x_trains_the_model_of_scaled_x(scaled3k, lognorm3k, trained3k):
    """Sparse log-normalized X, scaled on the fly by the model's transform, against the scaled X.

    Checked: the transform of the log values equals preprocess's scaled X bit for bit, hence the same
    mini-batches, the same weights and the same predictions; the probabilities to 1e-6.
    """
    model = sad.get.model(trained3k)
    with torch.no_grad():
        Z = model.transform(torch.as_tensor(lognorm3k.X.toarray())).numpy()
    np.testing.assert_array_equal(Z, scaled3k.X)
    b = lognorm3k.copy()
    X = b.X
    sad.tl.train_classifier(b, LABELS, config=SMALL, random_state=3)
    assert b.X is X  # X left as it was: sparse, not densified
    _assert_same_weights(sad.get.model(b), model)
    np.testing.assert_array_equal(b.obs["sad_pred"].to_numpy(), trained3k.obs["sad_pred"].to_numpy())
    np.testing.assert_allclose(b.obsm["sad_proba"], trained3k.obsm["sad_proba"], atol=1e-6)


def test_hardening_on_lognorm_x_equals_scaled_x(scaled3k, lognorm3k):
    """Log-space adversarial training reads the same log values either way; only validation reads X."""
    config = replace(SMALL, max_epochs=1)
    adversarial = sad.tl.AdversarialTraining("pgd", space="log", eps=0.5, steps=1)
    models = []
    for a in (scaled3k, lognorm3k):
        b = a.copy()
        sad.tl.train_classifier(b, LABELS, config=config, adversarial=adversarial, random_state=3)
        models.append(sad.get.model(b))
    _assert_same_weights(*models)


@pytest.mark.parametrize("store", ["backed", "dask"])
def test_training_on_backed_and_dask_x_equals_in_memory(lognorm3k, trained3k, tmp_path, store):
    b = _stored(lognorm3k, store, tmp_path)
    sad.tl.train_classifier(b, LABELS, config=SMALL, random_state=3)
    _assert_same_weights(sad.get.model(b), sad.get.model(trained3k))
    np.testing.assert_array_equal(b.obs["sad_pred"].to_numpy(), trained3k.obs["sad_pred"].to_numpy())
    with pytest.raises(ValueError, match="in-memory AnnData"):
        sad.tl.train_classifier(b, LABELS, config=SMALL, augment=sad.tl.ThinningAugmentation())
    if b.isbacked:
        for step in (sad.tl.train_classifier, sad.tl.predict):
            with pytest.raises(ValueError, match=r"to_memory\(\)"):
                step(b, LABELS if step is sad.tl.train_classifier else sad.get.model(trained3k), copy=True)
    # with a cap, each epoch's sample is read from the store before the epoch: the in-memory model again
    capped = replace(SMALL, max_cells_per_epoch=300)
    mem = lognorm3k.copy()
    sad.tl.train_classifier(mem, LABELS, config=capped, random_state=3)
    sad.tl.train_classifier(b, LABELS, config=capped, random_state=3)
    _assert_same_weights(sad.get.model(b), sad.get.model(mem))


def test_max_cells_per_epoch_trains_on_a_stratified_sample(scaled3k, trained3k):
    a = scaled3k.copy()
    n_train = int((a.obs["sad_split"] == "train").sum())
    # a cap at or above the training split is no cap: the default's weights
    sad.tl.train_classifier(a, LABELS, config=replace(SMALL, max_cells_per_epoch=n_train), random_state=3)
    assert a.uns["sad"]["classifier"]["params"]["max_cells_per_epoch"] == n_train
    _assert_same_weights(sad.get.model(a), sad.get.model(trained3k))
    cap = 300
    config = replace(SMALL, max_cells_per_epoch=cap)
    sad.tl.train_classifier(a, LABELS, config=config, random_state=3)
    rec = a.uns["sad"]["classifier"]
    assert rec["params"]["max_cells_per_epoch"] == cap
    cells = rec["metrics"]["cells"]
    assert cells["per_epoch"] == cap
    assert cells["train"] == n_train
    train_y = a.obs[LABELS][a.obs["sad_split"] == "train"].value_counts()
    per_class = cells["per_epoch_per_class"]
    assert sum(per_class.values()) == cap
    for c, n_c in train_y.items():
        assert per_class[c] >= 1
        assert abs(per_class[c] - n_c * cap / n_train) <= 1 + 1e-9  # proportional, rounded
    assert len(rec["metrics"]["history"]["loss"]) >= 1


def test_fit_trains_each_epoch_on_the_rows_it_is_given():
    """``fit(epoch_rows=...)``: every batch of an epoch comes from that epoch's rows, each row once."""
    draws = {0: np.array([1, 4, 5, 9]), 1: np.array([0, 2, 3, 7, 8])}
    seen: list[list[int]] = []
    net = torch.nn.Linear(2, 1)

    def batch_loss(m, bi):
        seen[-1].extend(bi.tolist())
        return m(torch.ones(len(bi), 2)).sum()

    def epoch_rows(epoch):
        seen.append([])
        return draws[epoch]

    config = TrainingConfig(batch_size=2, max_epochs=2, patience=5)
    fit(net, batch_loss, 10, lambda _: 0.0, config=config, monitor=Monitor(), epoch_rows=epoch_rows)
    assert [sorted(s) for s in seen] == [draws[0].tolist(), draws[1].tolist()]


def test_stratified_sample_keeps_class_shares():
    y = np.repeat(np.arange(4), [500, 120, 30, 2])
    rng = np.random.default_rng(0)
    for n in (4, 50, 333, 652, 1000):
        idx = stratified_sample(y, n, rng)
        assert len(idx) == min(n, len(y))
        assert len(np.unique(idx)) == len(idx)
        np.testing.assert_array_equal(np.bincount(y[idx], minlength=4), stratified_quota(np.bincount(y), n))
    assert stratified_quota(np.array([500, 120, 30, 2]), 4).tolist() == [1, 1, 1, 1]
    first, again = (
        stratified_sample(y, 50, np.random.default_rng(1)),
        stratified_sample(y, 50, np.random.default_rng(1)),
    )
    np.testing.assert_array_equal(first, again)


def test_validation_sample_is_bounded_stratified_and_recorded(scaled3k):
    a = scaled3k.copy()
    config = replace(SMALL, max_epochs=1, max_val_cells=100)
    sad.tl.train_classifier(a, LABELS, config=config, random_state=3)
    cells = a.uns["sad"]["classifier"]["metrics"]["cells"]
    n_val = int((a.obs["sad_split"] == "val").sum())
    assert (cells["val"], cells["val_of"]) == (100, n_val)
    val_y = a.obs[LABELS][a.obs["sad_split"] == "val"].value_counts()
    expected = stratified_quota(val_y.reindex(a.obs[LABELS].cat.categories).to_numpy(), 100)
    assert list(cells["val_per_class"].values()) == expected.tolist()
    assert a.uns["sad"]["classifier"]["params"]["max_val_cells"] == 100


def _stored(a: ad.AnnData, store: str, tmp_path) -> ad.AnnData:
    """``a`` with X backed (written to an .h5ad and read with ``backed='r'``) or a dask array of 512-cell blocks."""
    if store == "backed":
        path = tmp_path / "a.h5ad"
        a.write_h5ad(path)
        return ad.read_h5ad(path, backed="r")
    da = pytest.importorskip("dask.array")
    b = a.copy()
    b.X = da.from_array(a.X, chunks=(512, -1))
    if "sad_lognorm" in b.layers and a.layers["sad_lognorm"] is a.X:
        b.layers["sad_lognorm"] = b.X
    return b


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 512 cells, forward batches of 256: PBMC3k's 2,638 cells read in six chunks."""
    monkeypatch.setattr(sad.settings, "batch_size", 256)
    monkeypatch.setattr(_chunks, "CHUNK_CELLS", 512)


@pytest.mark.parametrize("store", ["backed", "dask"])
@pytest.mark.parametrize("fixture", ["scaled3k", "lognorm3k"])
def test_predict_on_backed_and_dask_equals_in_memory(request, trained3k, tmp_path, small_chunks, store, fixture):
    a = request.getfixturevalue(fixture)
    model = sad.get.model(trained3k)
    logits, emb = model.predict_arrays(classifier_input(a, model))  # the whole-matrix path
    b = _stored(a, store, tmp_path)
    assert _chunks.is_chunked(b)
    sad.tl.predict(b, classifier=model)
    proba = torch.softmax(torch.from_numpy(logits), 1).numpy()
    np.testing.assert_array_equal(b.obsm["sad_proba"], proba)
    np.testing.assert_array_equal(b.obsm["X_sad_embedding"], emb)
    np.testing.assert_array_equal(b.obs["sad_pred"].to_numpy(), trained3k.obs["sad_pred"].to_numpy())


def test_chunked_predict_falls_back_to_lognorm_as_in_memory(trained3k, small_chunks, caplog):
    """X scaled with other statistics: the chunked path reads .layers['sad_lognorm'] as the whole-matrix path does."""
    model = sad.get.model(trained3k)
    a = trained3k.copy()
    a.X = a.X * 3 + 1
    logits, _ = model.predict_arrays(classifier_input(a, model))  # in memory: warns and reads sad_lognorm
    assert _chunks.is_chunked(a)
    caplog.clear()
    sad.tl.predict(a, classifier=model)
    assert sum("through the classifier's own transform" in r.getMessage() for r in caplog.records) == 1
    np.testing.assert_array_equal(a.obsm["sad_proba"], torch.softmax(torch.from_numpy(logits), 1).numpy())
