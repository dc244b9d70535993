"""Readers of an attack of a sample of cells (``sad.tl.attack(..., cells=...)``): evaluate and the plots.

Such an attack stores rows for the attacked cells only; the other rows of its layers are empty and their
predictions missing. Evaluating it must equal evaluating the same attack run on those cells alone.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display in tests

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

import scadversarial as sad
from scadversarial import _keys
from scadversarial.detection import DetectorConfig

KEY = "sample"
EPS = (0.1, 0.5)
SAMPLED = [f"{KEY}_eps{e:g}" for e in EPS]
#: the share of cells attacked: some of every split, most cells left out
FRACTION = 0.4
#: detector outputs of a sampled layer vs the same attack run on the sampled cells alone: the same rows
#: in the same forward batches (the chunks hold the attacked rows only), so the values may differ only
#: by float reordering of the sparse vs dense read. Measured: equal bit for bit (pbmc68k_reduced).
SCORE_RTOL, SCORE_ATOL = 1e-5, 1e-6
QUICK = DetectorConfig(triplet_epochs=2, epochs=3)


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def sampled(pipeline68k):
    """``(whole, alone, pick)``: a sample attacked in the whole AnnData, and the same cells attacked alone.

    Both are scored by one detector (trained before the sample was drawn), so every difference between
    their evaluations would come from the cells the readers count.
    """
    a = pipeline68k.copy()
    sad.tl.train_detector(a, config=QUICK, random_state=0)
    pick = np.random.default_rng(0).random(a.n_obs) < FRACTION
    alone = a[pick].copy()
    sad.tl.attack(a, eps=EPS, cells=pick, key_added=KEY)
    sad.tl.attack(alone, eps=EPS, key_added=KEY)
    for x in (a, alone):
        sad.tl.detect(x, SAMPLED)
    return a, alone, pick


def _test(a):
    return (a.obs["sad_split"] == "test").to_numpy()


def test_the_sample_is_stored_as_rows(sampled):
    a, alone, pick = sampled
    assert a.uns["sad"]["attacks"][KEY]["storage"] == "rows"
    for layer in SAMPLED:
        np.testing.assert_array_equal(a.layers[layer][pick].toarray(), alone.layers[layer])
        assert a.obs[f"{layer}_pred"].isna().to_numpy().tolist() == (~pick).tolist()


def test_detect_scores_the_attacked_cells_only(sampled):
    a, alone, pick = sampled
    for layer in SAMPLED:
        score = a.obs[_keys.score_key(layer)].to_numpy()
        assert np.isnan(score[~pick]).all()
        np.testing.assert_allclose(score[pick], alone.obs[_keys.score_key(layer)], rtol=SCORE_RTOL, atol=SCORE_ATOL)
        flag, reason = a.obs[_keys.flag_key(layer)].to_numpy(), a.obs[f"sad_reason_{layer}"].astype(str).to_numpy()
        assert not flag[~pick].any()
        assert (reason[~pick] == "").all()
        np.testing.assert_array_equal(flag[pick], alone.obs[_keys.flag_key(layer)].to_numpy())
        np.testing.assert_array_equal(reason[pick], alone.obs[f"sad_reason_{layer}"].astype(str).to_numpy())
        for key in (_keys.meta_key(layer), _keys.triplet_key(layer)):
            assert np.isnan(a.obsm[key][~pick]).all()
            np.testing.assert_allclose(a.obsm[key][pick], alone.obsm[key], rtol=SCORE_RTOL, atol=SCORE_ATOL)
        ours, theirs = (x.uns["sad"]["detect"]["metrics"][layer] for x in (a, alone))
        assert ours["n_cells"] == theirs["n_cells"] == pick.sum()
        assert ours["fraction_flagged"] == pytest.approx(theirs["fraction_flagged"])
    sad.tl.meta_features(a, [None, SAMPLED[0]])
    sad.tl.meta_features(alone, [None, SAMPLED[0]])
    meta = a.obsm[_keys.meta_key(SAMPLED[0])]
    assert np.isnan(meta[~pick]).all()
    np.testing.assert_allclose(meta[pick], alone.obsm[_keys.meta_key(SAMPLED[0])], rtol=SCORE_RTOL, atol=SCORE_ATOL)
    assert not np.isnan(a.obsm["sad_meta"]).any()


def test_train_detector_learns_from_attacked_cells_only(pipeline68k):
    """The roles of the whole attack, less the meta-training and calibration cells not attacked."""
    a = pipeline68k.copy()
    pick = np.random.default_rng(1).random(a.n_obs) < 0.6
    sad.tl.attack(a, eps=0.1, cells=pick, key_added=KEY)
    roles = {}
    for key, layer in (("whole", "sad_pgd_eps0.1"), ("sample", f"{KEY}_eps0.1")):
        sad.tl.train_detector(a, layers=[layer], config=QUICK, random_state=0, key_added=key)
        roles[key] = a.obs["sad_detector_role"].astype(str).to_numpy()
    whole, sample = roles["whole"], roles["sample"]
    for role in ("meta_train", "calibration"):
        np.testing.assert_array_equal(sample == role, (whole == role) & pick)
    np.testing.assert_array_equal(sample == "reference", whole == "reference")  # clean cells, attacked or not
    assert ((sample == "reference") & ~pick).any()
    metrics = a.uns["sad"]["sample"]["metrics"]
    assert metrics["n_meta_train"] == (sample == "meta_train").sum()
    assert metrics["n_calibration"] == (sample == "calibration").sum()
    sad.tl.detect(a, f"{KEY}_eps0.1", detector_key="sample")  # the detector scores the attacked cells
    assert a.uns["sad"]["detect"]["metrics"][f"{KEY}_eps0.1"]["n_cells"] == pick.sum()


def test_evaluate_equals_evaluate_on_the_attacked_cells(sampled):
    a, alone, pick = sampled
    tables = []
    for x in (a, alone):
        sad.tl.evaluate(x, KEY)
        tables.append(sad.get.evaluation_table(x).set_index(["section", "metric", "group"]))
    whole, only = tables
    for section in ("attack", "detector"):
        w, o = whole.loc[section], only.loc[section]
        assert list(w.index) == list(o.index)
        np.testing.assert_array_equal(w["n_cells"], o["n_cells"])
        if section == "attack":  # the same predictions of the same cells
            np.testing.assert_array_equal(w["value"], o["value"])
        else:  # the same detector on the same rows, scored in other batches
            np.testing.assert_allclose(w["value"], o["value"], rtol=1e-5, atol=1e-6)
    test = _test(a)
    assert whole.loc[("attack", "flip_rate", SAMPLED[0]), "n_cells"] == (test & pick).sum()
    # the classifier rows still cover every test cell, attacked or not
    assert whole.loc[("classifier", "accuracy", "overall"), "n_cells"] == test.sum()
    y, p = a.obs["sad_label"].astype(str)[test], a.obs["sad_pred"].astype(str)[test]
    assert whole.loc[("classifier", "accuracy", "overall"), "value"] == pytest.approx((y == p).mean())


def test_evaluate_of_a_sample_outside_the_subset(pipeline68k):
    a = pipeline68k.copy()
    train = (a.obs["sad_split"] == "train").to_numpy()
    sad.tl.attack(a, eps=0.1, cells=train, key_added=KEY)
    with pytest.raises(ValueError, match="attacked no cell"):
        sad.tl.evaluate(a, KEY, detector_key=None)
    sad.tl.evaluate(a, KEY, subset="train", detector_key=None)
    table = sad.get.evaluation_table(a)
    assert table.loc[table.section == "attack", "n_cells"].iloc[0] == train.sum()


# ---------------------------------------------------------------- plots


def test_flip_rate_and_robustness_count_the_attacked_cells(sampled):
    a, alone, pick = sampled
    ax = sad.pl.flip_rate(a, KEY, show=False)
    rec = a.uns["sad"]["attacks"][KEY]["metrics"]
    ours = sad.pl.flip_rate(alone, KEY, show=False)
    np.testing.assert_allclose([p.get_height() for p in ax.patches], [p.get_height() for p in ours.patches])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == [f"ε={e:g} (all: {rec['flip_rate'][x]:.2f})" for e, x in zip(EPS, SAMPLED, strict=True)]
    ax = sad.pl.robustness(a, KEY, show=False)
    (line,) = ax.get_lines()
    (other,) = sad.pl.robustness(alone, KEY, show=False).get_lines()
    np.testing.assert_allclose(line.get_ydata(), other.get_ydata())
    cells = _test(a) & pick
    truth = a.obs["sad_label"].astype(str)[cells]
    assert line.get_ydata()[0] == pytest.approx((a.obs["sad_pred"].astype(str)[cells] == truth).mean())


def test_perturbation_shows_attacked_cells_only(sampled):
    a, _, pick = sampled
    labels = a.obs["sad_label"].astype(str).to_numpy()
    group = str(pd.Series(labels[pick]).value_counts().idxmax())
    n = int((pick & (labels == group)).sum())
    axs = sad.pl.perturbation(a, SAMPLED[1], groupby="sad_label", group=group, max_cells=a.n_obs, show=False)
    B, A, D = (np.asarray(ax.images[0].get_array()) for ax in axs)
    assert B.shape[1] == n  # not the group's other, unattacked cells
    np.testing.assert_allclose(A - B, D, atol=1e-5)
    assert np.abs(D).max() <= EPS[1] + 1e-5
    assert sad.pl.perturbation(a, SAMPLED[1], show=False)  # the default group is found among attacked cells


def test_classifier_plots_on_the_attacked_cells(sampled):
    a, _, pick = sampled
    cells = _test(a) & pick
    axs = sad.pl.confusion(a, SAMPLED[1], normalize=False, show=False)
    for ax in axs:  # both panels: the attacked test cells
        assert np.asarray(ax.images[0].get_array()).sum() == cells.sum()
    ax = sad.pl.class_accuracy(a, SAMPLED, show=False)
    counts = [int(t.get_text().removeprefix("n=")) for t in ax.texts]
    assert sum(counts) == cells.sum()
    ax = sad.pl.class_accuracy(a, show=False)  # without an attack layer: every test cell
    assert sum(int(t.get_text().removeprefix("n=")) for t in ax.texts) == _test(a).sum()


def test_detector_plots_on_the_attacked_cells(sampled):
    a, _, pick = sampled
    cells = _test(a) & pick
    ax = sad.pl.score_distribution(a, SAMPLED, show=False)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0].startswith(f"clean (n={cells.sum()};")
    assert all(f"(n={cells.sum()};" in text for text in legend[1:3])
    roc_ax, _ = sad.pl.roc(a, SAMPLED, show=False)
    flagged = a.obs["sad_adversarial"].to_numpy()[cells].mean()
    ops = [ln for ln in roc_ax.get_lines() if ln.get_marker() == "o" and len(ln.get_xdata())]
    for op in ops:  # the operating point's FPR: the attacked cells' clean versions flagged
        np.testing.assert_allclose(op.get_xdata(), [flagged])
    emb = sad.pl.embedding_adata(a, SAMPLED[1])
    assert emb.obs["state"].value_counts().to_dict() == {"clean": _test(a).sum(), "adversarial": cells.sum()}
    attacked, skipped = np.flatnonzero(pick)[0], np.flatnonzero(~pick)[0]
    ax = sad.pl.cell(a, int(attacked), SAMPLED[1], show=False)
    assert (
        ax.get_legend().get_texts()[1].get_text().startswith(f"pgd ε=0.5: {a.obs[f'{SAMPLED[1]}_pred'].iloc[attacked]}")
    )
    with pytest.raises(ValueError, match="was not attacked"):
        sad.pl.cell(a, int(skipped), SAMPLED[1], show=False)


@pytest.mark.parametrize("tool", ["predict", "certify"])
def test_tools_reading_every_row_refuse_a_sampled_layer(sampled, tool):
    a, _, _ = sampled
    fn = {"predict": sad.tl.predict, "certify": sad.tl.certify}[tool]
    with pytest.raises(
        ValueError, match=rf"sad\.tl\.{tool}` on those cells: `sub = adata\[adata\.obs\['sample_attacked'\]\]"
    ):
        fn(a, layer=SAMPLED[0])
