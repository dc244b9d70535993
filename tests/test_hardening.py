"""Hardened classifier (issue 14): adversarial training and thinning augmentation, on real PBMC3k cells."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import scadversarial as sad
from scadversarial.attacks.threat import Projection
from scadversarial.models._adversarial import (
    AdversarialTraining,
    GaussianAugmentation,
    ThinningAugmentation,
    TrainingInputs,
    add_noise,
    hardened_loss,
    inner_attack,
    thin,
)
from scadversarial.models.training import TrainingConfig
from scadversarial.tl._shifts import library_counts
from scadversarial.tl._space import target_sum

LABELS = "seurat_cell_type"
#: a small classifier trained for a few epochs: what the comparisons need, in seconds
SMALL = TrainingConfig(hidden=(64,), dropout=(0.2,), max_epochs=6, patience=6)


def _test_cells(a) -> np.ndarray:
    return (a.obs["sad_split"] == "test").to_numpy()


def _count_flips(a, eps: float) -> float:
    """Flip rate of a 10-step PGD on the test cells' counts (expressed genes, +-eps UMI, rounded to integers)."""
    rows = _test_cells(a)
    counts, other = library_counts(a)
    x0 = torch.as_tensor(counts[rows], dtype=torch.float32)
    ot = torch.as_tensor(other[rows], dtype=torch.float32)
    view = sad.get.model(a).for_space("counts", target_sum=target_sum(a))
    with torch.no_grad():
        y = view(x0, ot).argmax(1)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        xa = inner_attack(view, x0, ot, y, AdversarialTraining(eps=eps, steps=10))
    proj = Projection(eps=eps, lower=torch.zeros(x0.shape[1]), mask=(x0 > 0).float(), integer=True)
    xa = proj.round(x0, xa)
    assert torch.all(xa >= 0)
    assert torch.all((xa - x0).abs() <= eps)
    assert torch.all(xa[x0 == 0] == 0)
    with torch.no_grad():
        return float((view(xa, ot).argmax(1) != y).float().mean())


def _thinning_changes(a, amount: float = 0.5) -> float:
    ev = a[_test_cells(a)].copy()
    shifted = sad.tl.benign_shift(ev, "thinning", amount=amount, random_state=0)
    sad.tl.predict(shifted)
    return float((shifted.obs["sad_pred"].to_numpy() != ev.obs["sad_pred"].to_numpy()).mean())


@pytest.fixture(scope="module")
def standard3k(pipeline3k):
    a = pipeline3k.copy()
    sad.tl.train_classifier(a, LABELS, random_state=0, config=SMALL)
    return a


def test_adversarial_training_records_params(pipeline3k):
    a = pipeline3k.copy()
    adv = AdversarialTraining("trades", space="log", eps=0.25, steps=2)
    out = sad.tl.train_classifier(
        a, LABELS, max_epochs=1, config=TrainingConfig(hidden=(16,), dropout=(0.1,)), adversarial=adv, copy=True
    )
    assert "adversarial" not in a.uns["sad"]["classifier"]["params"]  # copy=True leaves adata as it was
    params = sad.get.record(out, "classifier")["params"]
    assert params["adversarial"] == {"method": "trades", "space": "log", "eps": 0.25, "steps": 2, "beta": 6.0}
    assert "augment" not in params  # not given: not recorded
    assert params["max_epochs"] == 1
    assert list(params["hidden"]) == [16]
    assert sad.get.model(out).config["hidden"] == [16]
    b = pipeline3k.copy()
    assert sad.tl.train_classifier(b, LABELS, max_epochs=1, config=SMALL, augment=ThinningAugmentation()) is None
    aug = sad.get.record(b, "classifier")["params"]["augment"]
    assert list(aug["fraction"]) == [0.25, 1.0]
    assert aug["probability"] == 0.5


def test_hardened_classifier_flips_fewer_cells(pipeline3k, standard3k):
    hard = pipeline3k.copy()
    sad.tl.train_classifier(
        hard, LABELS, random_state=0, config=SMALL, adversarial=AdversarialTraining("pgd", eps=2.0, steps=2)
    )
    acc = {
        name: sad.get.record(x, "classifier")["metrics"]["accuracy"]["test"]
        for name, x in (("standard", standard3k), ("hardened", hard))
    }
    # a short run of a small model: adversarial training costs it accuracy (0.90 -> 0.78 measured)
    assert acc["hardened"] > 0.6, acc
    flips_std, flips_hard = _count_flips(standard3k, 1.0), _count_flips(hard, 1.0)
    # measured 0.93 vs 0.41 with this seed: a margin that holds
    assert flips_hard < flips_std - 0.3, (flips_std, flips_hard)


def test_thinning_augmentation_reduces_changes(pipeline3k, standard3k):
    aug = pipeline3k.copy()
    sad.tl.train_classifier(aug, LABELS, random_state=0, config=SMALL, augment=ThinningAugmentation())
    changed_std, changed_aug = _thinning_changes(standard3k, 0.25), _thinning_changes(aug, 0.25)
    # standard: 0.41 measured with this seed
    assert changed_aug < changed_std - 0.08, (changed_std, changed_aug)


def test_gaussian_augmentation_widens_certified_radii(pipeline3k, standard3k):
    """Trained under the noise it is certified with, the classifier certifies more test cells (Cohen et al. 2019)."""
    noisy = pipeline3k.copy()
    sad.tl.train_classifier(noisy, LABELS, random_state=0, config=SMALL, augment=GaussianAugmentation(sigma=0.25))
    assert sad.get.record(noisy, "classifier")["params"]["augment"] == {
        "kind": "GaussianAugmentation",
        "sigma": 0.25,
        "probability": 1.0,
    }
    rows = np.flatnonzero(_test_cells(noisy))[:150]
    certified = {}
    for name, a in (("standard", standard3k), ("noisy", noisy)):
        c = a[rows].copy()
        sad.tl.certify(c, sigma=0.25, n_samples=200, options=sad.tl.CertifyOptions(split=None))
        right = (c.obs["sad_certified_pred"].astype(str) == c.obs[LABELS].astype(str)).to_numpy()
        certified[name] = float((right & (c.obs["sad_certified_radius"].to_numpy() >= 0.25)).mean())
    # measured 0.48 (standard) vs 0.67 (noise-trained) on these 150 cells; clean accuracy 0.90 for both
    assert certified["noisy"] > certified["standard"] + 0.1, certified


def test_gaussian_noise_reaches_the_chosen_cells():
    torch.manual_seed(0)
    x = torch.zeros(2000, 40)
    noisy = add_noise(x, GaussianAugmentation(sigma=0.5))
    assert abs(float(noisy.std()) - 0.5) < 0.01
    assert torch.equal(add_noise(x, GaussianAugmentation(probability=0.0)), x)
    half = add_noise(x, GaussianAugmentation(probability=0.5))
    assert 0.4 < float((half != 0).all(1).float().mean()) < 0.6


def test_gaussian_augmentation_trains_alone():
    with pytest.raises(ValueError, match="not both"):
        hardened_loss(
            torch.zeros(3, dtype=torch.long),
            TrainingInputs(lognorm=np.zeros((3, 4), np.float32)),
            adversarial=AdversarialTraining(space="log", eps=0.25),
            augment=GaussianAugmentation(),
        )


def test_thinning_keeps_integers_and_depth_range():
    torch.manual_seed(0)
    c = torch.poisson(torch.full((400, 50), 3.0))
    o = torch.full((400,), 1000.0)
    c2, o2 = thin(c, o, ThinningAugmentation(fraction=(0.25, 0.5), probability=1.0))
    assert torch.equal(c2, c2.round())
    assert torch.all(c2 <= c)
    assert torch.all(c2 >= 0)
    kept = o2 / o
    assert kept.min() > 0.2
    assert kept.max() < 0.55
    c3, o3 = thin(c, o, ThinningAugmentation(probability=0.0))
    assert torch.equal(c3, c)
    assert torch.equal(o3, o)


def test_inner_attack_stays_in_the_expressed_threat(pipeline3k):
    counts, other = library_counts(pipeline3k[:64])
    x0 = torch.as_tensor(counts, dtype=torch.float32)
    view = sad.get.model(pipeline3k).for_space("counts", target_sum=target_sum(pipeline3k))
    y = torch.zeros(len(x0), dtype=torch.long)
    xa = inner_attack(view, x0, torch.as_tensor(other, dtype=torch.float32), y, AdversarialTraining(eps=1.5, steps=3))
    assert torch.all(xa >= 0)
    assert torch.all((xa - x0).abs() <= 1.5 + 1e-5)
    assert torch.all(xa[x0 == 0] == 0)
    assert not view.training


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: AdversarialTraining("fgsm"), "method"),
        (lambda: AdversarialTraining(space="scaled"), "space"),
        (lambda: AdversarialTraining(eps=0), "eps > 0"),
        (lambda: ThinningAugmentation(fraction=(0.5, 0.25)), "fraction"),
        (lambda: ThinningAugmentation(probability=2), "probability"),
        (lambda: GaussianAugmentation(sigma=0), "sigma"),
        (lambda: GaussianAugmentation(probability=-1), "probability"),
        (lambda: TrainingConfig(hidden=(8, 8), dropout=(0.1,)), "same length"),
        (lambda: TrainingConfig(batch_size=0), "batch_size"),
    ],
)
def test_options_are_checked(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_hardening_needs_counts_and_x(pipeline68k, pipeline3k):
    a = pipeline68k.copy()  # preprocessed from log-normalized values: no counts
    with pytest.raises(KeyError, match="space='log'"):
        sad.tl.train_classifier(a, max_epochs=1, augment=ThinningAugmentation())
    with pytest.raises(ValueError, match="layer=None"):
        sad.tl.train_classifier(pipeline3k.copy(), LABELS, layer="sad_lognorm", augment=ThinningAugmentation())
    with pytest.raises(ValueError, match="adversarial"):
        hardened_loss(torch.zeros(3, dtype=torch.long), TrainingInputs(), adversarial=None, augment=None)
