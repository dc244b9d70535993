"""The default detector's count checks (genes at one and at two counts) on real PBMC3k cells."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from tests.test_detection import build_rules3k, counts_of

import scadversarial as sad
from scadversarial import _keys
from scadversarial.tl._space import scaled_matrix


def counts_of_layer(b, layer: str) -> np.ndarray:
    """A count-space layer of ``b`` as a dense float64 matrix."""
    m = b.layers[layer]
    return np.asarray(m.toarray() if hasattr(m, "toarray") else m, dtype=np.float64)


@pytest.fixture(scope="module")
def rules3k(pipeline3k):
    """PBMC3k, 600 training/validation and 200 test cells, the default detector (see ``build_rules3k``)."""
    return build_rules3k(pipeline3k)


def test_singleton_check_flags_the_count_attack_not_benign_shifts(rules3k):
    """+-2 UMI on every expressed gene stays on the count lattice but leaves too few single counts: flagged, with that reason.

    Clean, Poisson-resampled and thinned cells keep their single counts: at most a few percent are flagged by the check.
    """
    a, test = rules3k
    thr = a.uns["sad"]["detector"]["metrics"]["rules"]["singleton_min"]
    assert 0.2 < thr < 0.6
    b = test.copy()
    sad.tl.attack(b, "pgd", eps=2.0, space="counts", constraint="counts", mask="counts", key_added="umi")
    layer = str(np.atleast_1d(b.uns["sad"]["attacks"]["umi"]["layers"])[0])
    sad.tl.detect(b, [None, layer])
    reason = b.obs[f"sad_reason_{layer}"].astype(str)
    assert (reason == "few single counts").mean() >= 0.9
    assert b.obs[f"sad_adversarial_{layer}"][reason == "few single counts"].all()
    assert (b.obs["sad_reason"].astype(str) == "few single counts").mean() <= 0.02
    for kind, amount in (("noise", 0.0), ("thinning", 0.25)):
        shifted = sad.tl.benign_shift(test.copy(), kind, amount=amount, random_state=1)
        sad.tl.detect(shifted, model=sad.get.model(a, "detector"))
        assert (shifted.obs["sad_reason"].astype(str) == "few single counts").mean() <= 0.05, kind


def test_two_count_check_flags_the_attacker_sparing_single_counts(rules3k):
    """The count attacker who knows the singleton check leaves single counts alone: too few genes stay at two counts.

    Flagged with that reason; thinned and Poisson-resampled cells are judged by their own sampling noise
    (a binomial z-score) and stay unflagged.
    """
    a, test = rules3k
    rules = a.uns["sad"]["detector"]["metrics"]["rules"]
    assert 0.2 < rules["two_count_rate"] < 0.6
    assert rules["two_count_z_min"] < 0
    b = test.copy()
    b.layers["spare"] = counts_of(b) >= 2
    sad.tl.attack(b, "pgd", eps=2.0, space="counts", constraint="counts", mask="spare", key_added="sp")
    layer = str(np.atleast_1d(b.uns["sad"]["attacks"]["sp"]["layers"])[0])
    sad.tl.detect(b, [None, layer])
    reason = b.obs[f"sad_reason_{layer}"].astype(str)
    assert (reason == "few double counts").mean() >= 0.8
    assert b.obs[f"sad_adversarial_{layer}"][reason == "few double counts"].all()
    assert (b.obs["sad_reason"].astype(str) == "few double counts").mean() <= 0.02
    for kind, amount in (("noise", 0.0), ("thinning", 0.5), ("thinning", 0.25)):
        shifted = sad.tl.benign_shift(test.copy(), kind, amount=amount, random_state=1)
        sad.tl.detect(shifted, model=sad.get.model(a, "detector"))
        assert (shifted.obs["sad_reason"].astype(str) == "few double counts").mean() <= 0.05, (kind, amount)


@pytest.mark.parametrize(
    ("count", "moved_to", "reason"), [(1, 3.0, "few single counts"), (2, 4.0, "few double counts")], ids=["one", "two"]
)
def test_count_check_score_grows_with_the_genes_moved(rules3k, count, moved_to, reason):
    """Moving more genes away from one (or two) counts raises the score of a flagged cell (no saturation)."""
    a, test = rules3k
    c = counts_of(test)
    at = np.cumsum(c == count, axis=1)
    scores, reasons = {}, {}
    for share in (0.75, 1.0):
        b = test.copy()
        b.layers["counts"] = np.where((c == count) & (at <= share * at[:, -1:]), moved_to, c)
        sad.tl.detect(b, "counts")
        scores[share], reasons[share] = b.obs["sad_score_counts"].to_numpy(), b.obs["sad_reason_counts"].astype(str)
    flagged = (reasons[0.75] == reason).to_numpy()
    assert flagged.mean() > 0.5
    assert (scores[1.0][flagged] > scores[0.75][flagged]).all()


def test_count_checks_share_one_false_alarm_budget(rules3k):
    """Calibrated together, the two checks flag at most max_fpr of the calibration cells and of their resampling.

    Alone, the singleton check has a threshold at least as high (one check spends the whole budget).
    """
    from scadversarial.detection import MAX_FPR, fit_count_checks, fit_rules, fit_singleton_min, poisson_resample
    from scadversarial.detection._rule_layer import count_profile, two_count_z

    a, _ = rules3k
    clf = sad.get.model(a, "classifier")
    role = a.obs[_keys.OBS_DETECTOR_ROLE].astype(str).to_numpy()
    X = np.asarray(a.X, dtype=np.float32)
    fit = fit_rules(clf, X[np.isin(role, ["meta_train", "reference"])])
    cal = X[role == "calibration"]
    both = fit_count_checks(clf, cal, fit, max_fpr=MAX_FPR, rng=np.random.default_rng(0))
    alone = fit_singleton_min(clf, cal, fit, max_fpr=MAX_FPR, rng=np.random.default_rng(0))
    assert both.singleton_min <= alone
    resampled = poisson_resample(clf, cal, fit, np.random.default_rng(0))  # the same draws as the fit's
    t = clf.transform
    flagged, judged = [], []
    for M in (cal, resampled):
        p = count_profile(torch.as_tensor(M), t.mean, t.std, float(t.clip), fit)
        ones = p.ones.numpy() / np.maximum(p.checked.numpy(), 1)
        z = two_count_z(p, both.two_counts.rate).numpy()
        ok = p.checked.numpy() >= 20
        flagged.append(ok & ((ones < both.singleton_min) | (z < both.two_counts.z_min)))
        judged.append(ok)
    for f, j in zip(flagged, judged, strict=True):  # the budget holds for clean and for resampled cells
        assert f.sum() <= MAX_FPR * j.sum()
    assert np.concatenate(flagged).sum() >= 1


def test_detector_saved_before_the_two_count_check_loads(rules3k, tmp_path):
    """A detector whose config lacks ``two_counts`` (saved before the check) loads with the check off."""
    from scadversarial.models import AdversarialDetector

    a, test = rules3k
    det = sad.get.model(a, "detector")
    config = {k: v for k, v in det.config.items() if k != "two_counts"}
    old = AdversarialDetector.from_config(config)
    state = {k: v for k, v in det.state_dict().items() if not k.startswith("two_count")}
    old.load_state_dict(state)
    assert old.count_checks.two_counts is None
    assert old.count_checks.singleton_min == det.singleton_threshold
    x = torch.as_tensor(np.asarray(test.X, dtype=np.float32))
    np.testing.assert_array_equal(old.check_counts(x)[:, -1].numpy(), 0)
    np.testing.assert_array_equal(old.check_counts(x)[:, :-1].numpy(), det.check_counts(x)[:, :-1].numpy())


def test_fast_singleton_counts_equal_the_lattice_fit(rules3k):
    """The torch layer's count profile (genes at one and two counts, checked, off) is the NumPy lattice fit's."""
    from scadversarial.detection import RuleFit, Transform, fit_lattice
    from scadversarial.detection._rule_layer import count_profile

    a, _ = rules3k
    det = sad.get.model(a, "detector")
    t = Transform.of(det.classifier)
    X = np.asarray(a.X, dtype=np.float32)[:300]
    L, inv = t.to_log(X)
    checked = inv & (float(det.rule_zero_bound) <= L)
    lat = fit_lattice(L, checked)
    fit = RuleFit(float(det.rule_zero_bound), lattice=True)
    p = count_profile(torch.as_tensor(X), det.classifier.transform.mean, det.classifier.transform.std, 10.0, fit)
    np.testing.assert_array_equal(p.checked.numpy(), checked.sum(1))
    np.testing.assert_array_equal(p.ones.numpy(), ((lat.counts == 1) & checked & ~lat.off).sum(1))
    np.testing.assert_array_equal(p.twos.numpy(), ((lat.counts == 2) & checked & ~lat.off).sum(1))
    np.testing.assert_array_equal(p.off.numpy(), (checked & lat.off).sum(1))


def test_two_count_z_and_deficit_on_synthetic_profiles():
    """The deficit is positive exactly where the z-score is below its threshold, at least one gene, and unjudged cells get none."""
    from scadversarial.detection import TwoCountFit
    from scadversarial.detection._rule_layer import CountProfile, two_count_deficit, two_count_z

    rng = np.random.default_rng(0)
    n = 5000
    checked = torch.as_tensor(rng.integers(0, 300, n))
    ones = torch.as_tensor(rng.integers(0, 200, n)).minimum(checked)
    off = torch.zeros(n, dtype=torch.long)
    m = checked - ones
    twos = torch.as_tensor(rng.integers(0, 300, n)).minimum(m)
    p = CountProfile(ones, twos, checked, off)
    fit = TwoCountFit(rate=0.4, z_min=-2.5)
    z, deficit = two_count_z(p, fit.rate).numpy(), two_count_deficit(p, fit).numpy()
    unjudged = (checked.numpy() < 20) | (m.numpy() == 0)
    assert np.isnan(z[unjudged]).all()
    assert np.isfinite(z[~unjudged]).all()
    np.testing.assert_array_equal(deficit > 0, np.nan_to_num(z, nan=np.inf) < fit.z_min)
    assert deficit[deficit > 0].min() >= 1
    # the missing genes, put back at two counts, lift the z-score to the threshold
    low = deficit > 0
    back = CountProfile(ones, twos + torch.as_tensor(deficit), checked, off)
    assert (two_count_z(back, fit.rate).numpy()[low] >= fit.z_min - 1e-9).all()


def test_joint_quantile_holds_the_budget_in_each_family():
    """A statistic whose low tail is all in one family may not flag twice the budget of that family."""
    from scadversarial.detection._singletons import _joint_quantile

    rng = np.random.default_rng(0)
    clean = rng.normal(0.0, 1.0, 2000)
    resampled = rng.normal(3.0, 1.0, 2000)  # never in the pooled tail
    q = _joint_quantile([[clean, resampled]], 0.01)
    thr = np.quantile(np.r_[clean, resampled], q)
    assert (clean < thr).mean() <= 0.01
    assert (clean < thr).mean() > 0.009  # the largest such quantile, not a smaller one
    assert q < 0.006  # pooled, the 1 % quantile would flag 2 % of the clean cells


def test_count_check_options_and_the_old_signature(rules3k):
    """A detector without the two-count check refuses its threshold and keeps its state; a float still means the singleton threshold."""
    from scadversarial.detection import CountChecks, RuleFit, TwoCountFit, check_counts
    from scadversarial.models import AdversarialDetector

    a, test = rules3k
    det = sad.get.model(a, "detector")
    config = {**det.config, "two_counts": False}
    single = AdversarialDetector.from_config(config)
    single.load_state_dict({k: v for k, v in det.state_dict().items() if not k.startswith("two_count")})
    before = float(single.singleton_min)
    with pytest.raises(ValueError, match="two_counts=True"):
        single.set_count_checks(CountChecks(0.9, TwoCountFit(0.4, -2.0)))
    assert float(single.singleton_min) == before
    x = torch.as_tensor(np.asarray(test.X, dtype=np.float32))
    t = det.classifier.transform
    fit = RuleFit(float(det.rule_zero_bound), bool(det.rule_lattice))
    by_float = check_counts(x, t.mean, t.std, float(t.clip), fit, det.singleton_threshold)
    by_checks = check_counts(x, t.mean, t.std, float(t.clip), fit, CountChecks(det.singleton_threshold))
    assert torch.equal(by_float, by_checks)
    assert a.uns["sad"]["detector"]["params"]["two_counts"] is True


def test_inside_count_checks_passes_the_checks_and_flips(rules3k):
    """The count attacker who knows the checks: integer counts within the budget, few cells the checks flag, most flipped."""
    a, test = rules3k
    det = sad.get.model(a, "detector")
    b = test.copy()
    ((layer, space),) = sad.tl.InsideCountChecks(det, eps=1.0)(b).items()
    assert space == "counts"
    assert "_sad_inside_checks_mask" not in b.layers
    c, x = counts_of(b), counts_of_layer(b, layer)
    assert np.array_equal(x, np.round(x))
    assert (x >= 0).all()
    assert (np.abs(x - c) <= 1).all()
    assert (x[c == 0] == 0).all()
    sad.tl.detect(b, layer)
    counted = b.obs[f"sad_reason_{layer}"].astype(str).isin(["few single counts", "few double counts"]).mean()
    flipped = (b.obs[f"{layer}_pred"].astype(str) != b.obs["sad_pred"].astype(str)).mean()
    # measured on these 200 cells: 0 % flagged by the checks, 88 % flipped (the plain attack: 93 % flagged)
    assert counted <= 0.1, counted
    assert flipped >= 0.5, flipped


def test_inside_count_checks_can_evade_a_differentiable_detector(rules3k):
    """``evade``: PGD also descends the detector's logit and keeps, per cell, the flipped iterate it scores lowest.

    The iterate is judged rounded, as the attack returns it: judged before rounding, the kept
    iterate was the one that just flipped, and rounding undid it (6 % of these cells flipped,
    measured before the fix, against 36 % now and 88 % for the plain attacker).
    """
    a, test = rules3k
    det = sad.get.model(a, "detector")
    b = test[:120].copy()
    plain = sad.tl.InsideCountChecks(det, eps=1.0, rounds=1, key_added="plain")
    aware = sad.tl.InsideCountChecks(det, eps=1.0, rounds=1, key_added="aware", evade=det, evade_weights=(0.01,))
    ((p_layer, _),) = plain(b).items()
    ((a_layer, _),) = aware(b).items()
    assert list(np.atleast_1d(sad.get.attack_record(b, "aware")["params"]["detector_weight"])) == [0.01]
    c, x = counts_of(b), counts_of_layer(b, a_layer)
    assert np.array_equal(x, np.round(x))
    assert (np.abs(x - c) <= 1).all()
    assert (x[c == 0] == 0).all()

    def flipped_logits(layer):
        flipped = (b.obs[f"{layer}_pred"].astype(str) != b.obs["sad_pred"].astype(str)).to_numpy()
        with torch.no_grad():
            return flipped, det.score_logit(torch.as_tensor(scaled_matrix(b, det, layer))).numpy()[flipped]

    (p_flip, p_logit), (a_flip, a_logit) = flipped_logits(p_layer), flipped_logits(a_layer)
    assert p_flip.mean() > a_flip.mean()  # the price of looking clean
    assert a_flip.mean() > 0.2, a_flip.mean()
    # the plain attacker's flipped cells mostly break a check (rule logit 1e4); the aware one's look clean
    assert np.median(a_logit) < np.median(p_logit)
    assert np.median(a_logit) < 0


def test_inside_count_checks_options_are_checked(rules3k, pipeline68k):
    a, _ = rules3k
    det = sad.get.model(a, "detector")
    with pytest.raises(ValueError, match="eps > 0"):
        sad.tl.InsideCountChecks(det, eps=0)
    with pytest.raises(TypeError, match="AdversarialDetector"):
        sad.tl.InsideCountChecks(object())
    with pytest.raises(KeyError, match="counts"):
        sad.tl.InsideCountChecks(det)(pipeline68k.copy())
    with pytest.raises(TypeError, match="CellClassifier"):
        sad.tl.InsideCountChecks(det).against(object())
    with pytest.raises(ValueError, match="evade_weights"):
        sad.tl.InsideCountChecks(det, evade=det, evade_weights=(-1.0,))


def test_inside_count_checks_against_another_classifier(rules3k):
    """``against``: a new attacker on its own key, pushing each cell away from that classifier's own calls."""
    a, test = rules3k
    det = sad.get.model(a, "detector")
    std = sad.tl.InsideCountChecks(det, eps=1.0, rounds=1)
    clf = sad.get.model(a, "classifier")  # any classifier on the cells' genes; this one keeps the test fast
    aimed = std.against(clf)
    assert (aimed.classifier, aimed.key_added, std.classifier) == (clf, "sad_inside_checks_against", None)
    b = test.copy()
    # recorded calls that are not the classifier's: the standard attacker reads them, the aimed one does not
    b.obs[_keys.OBS_PRED] = np.roll(b.obs[_keys.OBS_PRED].astype(str).to_numpy(), 1)
    own = clf.predict_arrays(np.asarray(b.X))[0].argmax(1)
    recorded = pd.Categorical(b.obs[_keys.OBS_PRED], categories=clf.classes).codes
    assert (own != recorded).mean() > 0.3
    np.testing.assert_array_equal(aimed._labels(b, clf).numpy(), own)
    np.testing.assert_array_equal(std._labels(b, clf).numpy(), recorded)
    # both runs on the same cells: separate layers, the standard one untouched by the aimed one
    ((std_layer, _),) = std(b).items()
    before = counts_of_layer(b, std_layer).copy()
    ((layer, _),) = aimed(b).items()
    assert layer != std_layer
    assert layer in sad.get.attack_record(b, "sad_inside_checks_against")["layers"]
    np.testing.assert_array_equal(counts_of_layer(b, std_layer), before)
