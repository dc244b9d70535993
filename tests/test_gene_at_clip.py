"""One gene per cell at the clip (``sad.tl.GeneAtClip``) on real PBMC3k cells, and the rules' ceiling against it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.test_detection import build_rules3k

import scadversarial as sad
from scadversarial.detection import RULES
from scadversarial.tl import GeneAtClip, GeneInCounts


@pytest.fixture(scope="module")
def rules3k(pipeline3k):
    """PBMC3k, 600 training/validation and 200 test cells, the default detector (see ``build_rules3k``)."""
    return build_rules3k(pipeline3k)


def _moved(test, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows and genes where ``layer`` differs from ``X``."""
    return np.nonzero(np.asarray(test.layers[layer]) != np.asarray(test.X))


def steepest_genes(clf, X) -> np.ndarray:
    """Per cell of scaled ``X``, the gene whose increase raises the loss of ``clf``'s own call fastest."""
    X = torch.tensor(np.asarray(X, dtype=np.float32), requires_grad=True)
    clf.eval()
    y = torch.as_tensor(clf.predict_arrays(X.detach().numpy())[0].argmax(1))
    (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(clf(X), y, reduction="sum"), X)
    return g.numpy().argmax(1)


def _at_clip_log(det) -> np.ndarray:
    t = det.classifier.transform
    return (t.mean.double() + float(t.clip) * t.std.double()).numpy()


def test_the_steepest_gene_goes_to_the_clip_and_the_ceiling_flags_most(rules3k):
    a, test = rules3k
    b = test.copy()
    det = sad.get.model(a, "detector")
    assert GeneAtClip()(b) == {"sad_gene_at_clip": "scaled"}
    rows, genes = _moved(b, "sad_gene_at_clip")
    assert (np.bincount(rows, minlength=b.n_obs) <= 1).all()  # one gene per cell (at most: it may be at the clip)
    assert (np.asarray(b.layers["sad_gene_at_clip"])[rows, genes] == 10.0).all()
    x = torch.as_tensor(np.asarray(b.layers["sad_gene_at_clip"], dtype=np.float32))
    counts = det.rule_counts(x).numpy()
    above = counts[:, RULES.index("above_ceiling")] > 0
    beyond = np.zeros(b.n_obs, dtype=bool)
    beyond[rows] = _at_clip_log(det)[genes] > det.rule_fit.log_max
    np.testing.assert_array_equal(above, beyond)  # the ceiling flags exactly the unreachable clips
    assert (counts[:, RULES.index("out_of_range")] == 0).all()  # at the clip, not beyond it
    assert beyond.mean() > 0.5


def test_the_attacker_who_knows_the_rules_stays_below_the_ceiling(rules3k):
    a, test = rules3k
    b = test.copy()
    det = sad.get.model(a, "detector")
    clf = sad.get.model(a, "classifier")
    (layer,) = GeneAtClip(det, candidates=5, key_added="knows")(b)
    rows, genes = _moved(b, layer)
    assert len(rows) > 0.9 * b.n_obs
    assert (_at_clip_log(det)[genes] <= det.rule_fit.log_max).all()
    x = torch.as_tensor(np.asarray(b.layers[layer], dtype=np.float32))
    assert (det.rule_counts(x).numpy()[:, : RULES.index("negative_expression")] == 0).all()  # none above the ceiling
    flipped = clf.predict_arrays(np.asarray(b.layers[layer]))[0].argmax(1) != clf.predict_arrays(np.asarray(b.X))[
        0
    ].argmax(1)
    assert flipped.mean() > 0.05  # a real threat: one gene at a clip real cells can show


def test_against_attacks_another_classifier_under_its_own_key(rules3k, pipeline3k):
    a, test = rules3k
    b = test.copy()
    other = pipeline3k.copy()
    sad.tl.train_classifier(other, "seurat_cell_type", max_epochs=2, random_state=3, key_added="other")
    clf = sad.get.model(other, "other")
    threat = GeneAtClip(key_added="k").against(clf)
    assert threat.classifier is clf
    (layer,) = threat(b)
    assert layer == "k_against"
    rows, genes = _moved(b, layer)
    np.testing.assert_array_equal(genes, steepest_genes(clf, b.X)[rows])  # that classifier's steepest gene


@pytest.mark.parametrize("threat", [GeneAtClip, GeneInCounts])
def test_bad_options_are_refused(rules3k, threat):
    """The one-gene attackers share their options and refuse the same bad ones."""
    a, _ = rules3k
    with pytest.raises(ValueError, match="candidates >= 1"):
        threat(candidates=0)
    with pytest.raises(TypeError, match="rules=True"):
        threat(detector=sad.get.model(a, "classifier"))
    with pytest.raises(TypeError, match="CellClassifier"):
        threat(classifier=lambda x: x)


@pytest.mark.parametrize("attacker", [GeneAtClip(), GeneInCounts(candidates=3)], ids=["clip", "counts"])
def test_cells_with_genes_in_another_order(rules3k, attacker):
    # the layer is written by gene name: cells whose genes are permuted (or extra) get the same attack
    a, test = rules3k
    b = test[:40].copy()
    ((layer, _),) = attacker(b).items()
    order = np.random.default_rng(0).permutation(b.n_vars)
    p = b[:, order].copy()
    attacker(p)
    np.testing.assert_array_equal(np.asarray(p.layers[layer]), np.asarray(b.layers[layer])[:, order])
