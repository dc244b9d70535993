from __future__ import annotations

import numpy as np
import pandas as pd
import torch

import scadversarial as sad
from scadversarial.models import CellClassifier


def test_architecture():
    m = CellClassifier([f"g{i}" for i in range(2000)], list("abcdefghij"))
    shapes = [tuple(p.shape) for n, p in m.named_parameters() if n.endswith("weight")]
    assert shapes == [(256, 2000), (128, 256), (64, 128), (10, 64)]
    drops = [mod.p for mod in m.modules() if isinstance(mod, torch.nn.Dropout)]
    assert drops == [0.4, 0.4, 0.3]


def test_train_classifier_writes_contract(pipeline3k):
    a = pipeline3k
    classes = list(a.obs["seurat_cell_type"].cat.categories)
    assert a.obsm["sad_proba"].shape == (a.n_obs, len(classes))
    np.testing.assert_allclose(a.obsm["sad_proba"].sum(1), 1, atol=1e-5)
    assert a.obsm["X_sad_embedding"].shape == (a.n_obs, 64)
    assert isinstance(a.obs["sad_pred"].dtype, pd.CategoricalDtype)
    np.testing.assert_allclose(a.obs["sad_confidence"], a.obsm["sad_proba"].max(1), rtol=1e-6)
    m = a.uns["sad"]["classifier"]["metrics"]
    # Seurat labels on PBMC3k: a real classifier, well above chance
    assert m["accuracy"]["test"] > 0.8
    conf = m["test"]["confusion"]
    assert conf.shape == (len(classes), len(classes))
    assert conf.sum() == (a.obs["sad_split"] == "test").sum()
    assert np.isclose(np.trace(conf) / conf.sum(), m["accuracy"]["test"])
    assert set(m["test"]["per_class_accuracy"]) <= set(classes)
    ref = a.uns["sad"]["classifier"]["model"]
    assert {"id", "class", "path", "config", "var_names_sha256"} <= set(ref)


def test_eval_is_deterministic(pipeline3k):
    a = pipeline3k.copy()
    before = a.obsm["sad_proba"].copy()
    sad.tl.predict(a)
    sad.tl.predict(a)
    np.testing.assert_array_equal(a.obsm["sad_proba"], before)


def test_training_is_seeded_and_leaves_global_rng(pipeline68k):
    a = pipeline68k.copy()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    m1 = sad.tl.train_classifier(a, max_epochs=3, random_state=5)
    after = torch.rand(3)
    assert torch.equal(expected, after), "training must not consume or reseed torch's global RNG"
    m2 = sad.tl.train_classifier(a, max_epochs=3, random_state=5)
    for p1, p2 in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(p1, p2)


def test_predict_on_new_anndata(pbmc3k_raw, pipeline3k):
    model = sad.tl.get_model(pipeline3k)
    new = pbmc3k_raw[:300].copy()
    sad.pp.preprocess(new, reference=pipeline3k)
    sad.tl.predict(new, model)
    # the same cells, scaled with the training statistics, get the same predictions
    same = pipeline3k.obs["sad_pred"].iloc[:300].to_numpy()
    assert (new.obs["sad_pred"].to_numpy() == same).mean() > 0.99


def test_lognorm_input_through_transform(pipeline3k):
    model = sad.tl.get_model(pipeline3k)
    x_log = torch.as_tensor(pipeline3k.layers["sad_lognorm"][:50])
    x_scaled = torch.as_tensor(pipeline3k.X[:50])
    with torch.no_grad():
        torch.testing.assert_close(model.forward_lognorm(x_log), model(x_scaled), atol=1e-4, rtol=1e-4)
