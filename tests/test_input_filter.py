"""Weak-input filtering as the classifier's first layer (``sad.tl.WeakInputFilter``, Rademaker et al. 2019)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import scadversarial as sad
from scadversarial.models import CellClassifier, load_model, save_model
from scadversarial.models._filter import WeakInputLayer

UMI = 1.5  # the filter of the trained fixture, UMI at the median training depth


@pytest.fixture(scope="module")
def filtered3k(pbmc3k_raw):
    """PBMC3k (Seurat labels), preprocessed, split and a filtered classifier trained for a few epochs."""
    a = pbmc3k_raw.copy()
    sad.pp.preprocess(a)
    sad.pp.split(a, "seurat_cell_type")
    config = sad.tl.TrainingConfig(input_filter=sad.tl.WeakInputFilter(threshold=UMI))
    sad.tl.train_classifier(a, "seurat_cell_type", max_epochs=3, config=config)
    return a


def _layer(minimum, scale, threshold=0.5) -> WeakInputLayer:
    layer = WeakInputLayer(len(minimum), threshold)
    layer.set(np.asarray(minimum), np.asarray(scale))
    return layer


def test_filter_sets_weak_values_to_minimum_and_keeps_the_rest():
    # gene 0: minimum -1 (scaled), 2 log units per scaled unit; gene 1: minimum 0, 1 log unit per scaled unit
    layer = _layer([-1.0, 0.0], [2.0, 1.0])
    x = torch.tensor([[-0.8, 0.3], [-0.7, 0.7], [-1.5, -0.2], [3.0, 0.5]])
    out = layer(x)
    # gene 0: 0.2 * 2 = 0.4 log units above its minimum -> filtered; 0.3 * 2 = 0.6 kept; below the minimum -> minimum
    expected = torch.tensor([[-1.0, 0.0], [-0.7, 0.7], [-1.0, 0.0], [3.0, 0.5]])
    assert torch.equal(out, expected)  # kept values bit-identical, at the threshold itself kept (0.5 log units)


def test_straight_through_gradient_is_the_identity():
    layer = _layer([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    x = torch.tensor([[0.1, 0.6, 2.0], [0.4, 0.0, 0.9]], requires_grad=True)
    w = torch.tensor([[1.0, -2.0, 3.0], [0.5, 4.0, -1.0]])
    (layer(x) * w).sum().backward()
    assert torch.equal(x.grad, w)  # filtered entries included: the hard threshold's zero gradient is not used


def test_filtered_classifier_gradient_is_the_network_gradient_at_the_filtered_input():
    genes = [f"g{i}" for i in range(6)]
    torch.manual_seed(0)
    clf = CellClassifier(genes, ["a", "b", "c"], hidden=(8,), dropout=(0.0,), filter_threshold=0.5).eval()
    clf.input_filter.set(np.zeros(6), np.ones(6))
    plain = CellClassifier(genes, ["a", "b", "c"], hidden=(8,), dropout=(0.0,)).eval()
    plain.body[0].load_state_dict(clf.body[1].state_dict())
    plain.head.load_state_dict(clf.head.state_dict())
    x = torch.tensor([[0.2, 1.0, 0.0, 3.0, 0.4, 0.7]], requires_grad=True)
    clf(x)[0, 1].backward()
    xf = clf.input_filter(x.detach()).requires_grad_(requires_grad=True)
    plain(xf)[0, 1].backward()
    assert torch.equal(clf(x.detach()), plain(xf.detach()))
    assert torch.equal(x.grad, xf.grad)
    assert x.grad[0, 0] != 0  # a filtered gene still has its gradient


def test_unfitted_filter_refuses_to_run():
    clf = CellClassifier(["a", "b"], ["x", "y"], filter_threshold=1.0)
    with pytest.raises(RuntimeError, match="input_filter"):
        clf(torch.zeros(1, 2))


def test_default_classifier_has_no_filter():
    clf = CellClassifier(["a", "b"], ["x", "y"])
    assert clf.input_filter is None
    assert "filter_threshold" not in clf.config
    assert list(clf.state_dict())[:3] == ["transform.mean", "transform.std", "body.0.weight"]


def test_filtered_classifier_trains_and_records(filtered3k):
    a = filtered3k
    model = sad.get.model(a)
    rec = a.uns["sad"]["classifier"]["params"]["input_filter"]
    assert rec["threshold"] == UMI
    assert rec["unit"] == "umi"
    assert model.input_filter.threshold == pytest.approx(rec["threshold_log"])
    # UMI at the training cells' median depth: log1p(1.5 * 1e4 / N) for N of a few thousand UMI
    assert 1.0 < rec["threshold_log"] < 3.0
    train = (a.obs["sad_split"] == "train").to_numpy()
    np.testing.assert_array_equal(model.input_filter.minimum.numpy(), a.X[train].min(0))
    assert a.uns["sad"]["classifier"]["metrics"]["accuracy"]["test"] > 0.5
    # the predictions written are the filtered classifier's
    with torch.no_grad():
        logits = model(torch.as_tensor(a.X[:50]))
    np.testing.assert_array_equal(a.obsm["sad_proba"][:50].argmax(1), logits.argmax(1).numpy())


def test_filtered_classifier_saves_and_loads_bit_for_bit(filtered3k, tmp_path):
    a = filtered3k.copy()
    model = sad.get.model(a)
    loaded = load_model(save_model(model, tmp_path / "clf"))
    assert loaded.config == model.config
    assert loaded.input_filter is not None
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    x = torch.as_tensor(a.X[:100])
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    # through the AnnData: save_models, then load_models into a fresh copy, then predict
    sad.tl.save_models(a, tmp_path / "models")
    b = a.copy()
    sad.tl.load_models(b, tmp_path / "models")
    sad.tl.predict(b, sad.get.model(b))
    np.testing.assert_array_equal(b.obsm["sad_proba"], a.obsm["sad_proba"])


def test_whitebox_attack_runs_through_the_filter(filtered3k):
    a = filtered3k[(filtered3k.obs["sad_split"] == "test").to_numpy()][:60].copy()
    counts = sad.tl.ThreatModel(space="counts", constraint="counts", mask="counts")
    sad.tl.attack(a, "pgd", eps=2.0, threat=counts, key_added="umi")
    rec = a.uns["sad"]["attacks"]["umi"]
    (layer,) = rec["layers"]
    # the straight-through gradient reaches the network: the attack flips some of the filtered classifier's calls
    assert rec["metrics"]["flip_rate"][layer] > 0
    diff = a.layers[layer] - a.layers["counts"]
    assert np.abs(diff).max() <= 2.0
    assert np.array_equal(diff, np.round(diff))


def test_bad_options_raise_with_the_fix(pbmc68k):
    with pytest.raises(ValueError, match="positive"):
        sad.tl.WeakInputFilter(threshold=0)
    with pytest.raises(ValueError, match="unit"):
        sad.tl.WeakInputFilter(threshold=1.0, unit="counts")
    with pytest.raises(TypeError, match="number"):
        sad.tl.WeakInputFilter(threshold="1")
    with pytest.raises(TypeError, match="WeakInputFilter"):
        sad.tl.TrainingConfig(input_filter=1.5)
    with pytest.raises(TypeError, match="threshold"):
        sad.tl.WeakInputFilter()  # no default: the threshold trades accuracy for robustness
    with pytest.raises(ValueError, match="unit='log'"):
        sad.tl.WeakInputFilter(threshold=1.0).log_threshold()
    # log-normalized data without counts: UMI cannot be converted, the message names unit='log'
    a = pbmc68k.copy()
    sad.pp.preprocess(a)
    sad.pp.pseudo_labels(a, n_clusters=4)
    sad.pp.split(a)
    umi = sad.tl.TrainingConfig(input_filter=sad.tl.WeakInputFilter(threshold=1.0))
    with pytest.raises(KeyError, match="unit='log'"):
        sad.tl.train_classifier(a, max_epochs=1, config=umi)
    logs = sad.tl.TrainingConfig(input_filter=sad.tl.WeakInputFilter(threshold=0.5, unit="log"))
    sad.tl.train_classifier(a, max_epochs=1, config=logs)
    assert sad.get.model(a).input_filter.threshold == 0.5


def test_detector_watches_a_filtered_classifier(filtered3k):
    """The default detector trains on and scores a filtered classifier (its copy keeps the filter)."""
    a = filtered3k.copy()
    keep = np.sort(np.random.default_rng(0).choice(a.n_obs, 700, replace=False))
    a = a[keep].copy()
    sad.tl.attack(a, eps=(0.1,))
    config = sad.detection.DetectorConfig(epochs=2, triplet_epochs=1)
    sad.tl.train_detector(a, random_state=0, config=config)
    det = sad.get.model(a, "detector")
    assert det.classifier.config["filter_threshold"] == sad.get.model(a, "classifier").config["filter_threshold"]
    sad.tl.detect(a, [None, "sad_pgd_eps0.1"])
    assert a.obs["sad_adversarial_sad_pgd_eps0.1"].mean() > 0.9
