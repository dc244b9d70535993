"""Plot tests: each asserts on what is drawn (bars, images, lines, labels, legends), not only that it runs."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display in tests

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

import scadversarial as sad

LAYERS = ["sad_pgd_eps0.1", "sad_pgd_eps0.5"]


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def fake_scores(pipeline68k):
    """The shared pipeline with synthetic detector outputs (known scores and threshold)."""
    a = pipeline68k.copy()
    rng = np.random.default_rng(0)
    n = a.n_obs
    a.obs["sad_score"] = rng.beta(2, 8, n)
    a.obsm["X_sad_triplet"] = rng.normal(size=(n, 8)).astype(np.float32)
    for i, layer in enumerate(LAYERS):
        a.obs[f"sad_score_{layer}"] = rng.beta(6 + 4 * i, 3, n)
        a.obsm[f"X_sad_triplet_{layer}"] = rng.normal(loc=3.0, size=(n, 8)).astype(np.float32)
    thr = 0.42
    for key in ["sad_score"] + [f"sad_score_{x}" for x in LAYERS]:
        a.obs[key.replace("sad_score", "sad_adversarial")] = a.obs[key] >= thr
    a.uns["sad"]["detector"] = {"params": {}, "metrics": {"threshold": thr}}
    return a


def _test_mask(a):
    return (a.obs["sad_split"] == "test").to_numpy()


# ---------------------------------------------------------------- confusion


def test_confusion_draws_normalized_matrices(pipeline68k):
    a = pipeline68k
    axs = sad.pl.confusion(a, show=False)
    assert len(axs) == 2
    m = _test_mask(a)
    classes = list(a.obs["sad_pred"].cat.categories)
    for ax, key in zip(axs, ["sad_pred", "sad_pgd_eps0.5_pred"], strict=True):
        tab = pd.crosstab(a.obs["sad_label"][m].astype(str), a.obs[key][m].astype(str))
        tab = tab.reindex(index=classes, columns=classes, fill_value=0).to_numpy()
        expected = tab / tab.sum(1, keepdims=True)
        np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), expected)
        assert [t.get_text() for t in ax.get_xticklabels()] == classes
        assert ax.get_xlabel() == "predicted"
        assert ax.get_ylabel() == "true (sad_label)"
    acc = (a.obs["sad_pred"][m].astype(str) == a.obs["sad_label"][m].astype(str)).mean()
    assert axs[0].get_title() == f"clean: accuracy {acc:.2f}"
    assert axs[1].get_title().startswith("pgd ε=0.5: accuracy")


def test_confusion_counts_and_explicit_layer(pipeline68k):
    fig, axs = plt.subplots(1, 2)
    out = sad.pl.confusion(pipeline68k, "sad_pgd_eps0.1", normalize=False, split=None, ax=axs, show=False)
    img = np.asarray(out[1].images[0].get_array())
    assert img.sum() == pipeline68k.n_obs
    assert "ε=0.1" in out[1].get_title()
    with pytest.raises(ValueError, match="pass 2 Axes"):
        sad.pl.confusion(pipeline68k, ax=axs[0], show=False)


def test_confusion_missing_keys_name_producer(pbmc68k, pipeline68k):
    with pytest.raises(KeyError, match="sad.tl.train_classifier"):
        sad.pl.confusion(pbmc68k, show=False)
    with pytest.raises(KeyError, match="sad.tl.attack"):
        sad.pl.confusion(pipeline68k, "sad_fgsm_eps0.3", show=False)


# ---------------------------------------------------------------- class_accuracy / flip_rate / robustness


def test_class_accuracy_bars_heights_colors(pipeline68k):
    a = pipeline68k.copy()
    cats = list(a.obs["sad_label"].cat.categories)
    custom = ["#000000", "#ff0000", "#00ff00", "#0000ff", "#ffff00", "#00ffff"][: len(cats)]
    a.uns["sad_label_colors"] = custom
    ax = sad.pl.class_accuracy(a, show=False)
    m = _test_mask(a)
    truth, pred = a.obs["sad_label"][m].astype(str), a.obs["sad_pred"][m].astype(str)
    expected = [(pred[truth == c] == c).mean() for c in cats]
    assert len(ax.patches) == len(cats)
    np.testing.assert_allclose([p.get_height() for p in ax.patches], expected)
    assert [p.get_facecolor() for p in ax.patches] == [to_rgba(c) for c in custom]
    assert [t.get_text() for t in ax.get_xticklabels()] == cats
    assert ax.get_ylabel() == "accuracy"


def test_class_accuracy_with_attack_layer(pipeline68k):
    ax = sad.pl.class_accuracy(pipeline68k, "sad_pgd_eps0.5", show=False)
    n = len(pipeline68k.obs["sad_label"].cat.categories)
    assert len(ax.patches) == 2 * n
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["clean", "pgd ε=0.5"]


def test_flip_rate_matches_record(pipeline68k):
    a = pipeline68k
    ax = sad.pl.flip_rate(a, show=False)
    rec = a.uns["sad"]["attacks"]["sad_pgd"]["metrics"]
    classes = list(rec["per_class"]["classes"])
    per = np.asarray(rec["per_class"]["flip_rate"])  # layers x classes
    present = [i for i, c in enumerate(classes) if (a.obs["sad_pred"].astype(str) == c).any()]
    heights = np.array([p.get_height() for p in ax.patches]).reshape(len(LAYERS), len(present))
    np.testing.assert_allclose(heights, per[:, present])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == [f"ε={e:g} (all: {rec['flip_rate'][x]:.2f})" for e, x in zip([0.1, 0.5], LAYERS, strict=True)]
    assert ax.get_ylabel() == "flip rate"


def test_robustness_lines(pipeline68k):
    a = pipeline68k
    ax = sad.pl.robustness(a, show=False)
    (line,) = ax.get_lines()
    np.testing.assert_allclose(line.get_xdata(), [0, 0.1, 0.5])
    m = _test_mask(a)
    truth = a.obs["sad_label"][m].astype(str)
    ys = [(a.obs[k][m].astype(str) == truth).mean() for k in ["sad_pred"] + [f"{x}_pred" for x in LAYERS]]
    np.testing.assert_allclose(line.get_ydata(), ys)
    assert ax.get_xlabel() == "epsilon"
    assert ax.get_ylabel() == "accuracy"
    ax = sad.pl.robustness(a, per_class=True, show=False)
    assert len(ax.get_lines()) == len(a.obs["sad_label"].cat.categories)


def test_flip_rate_without_attack_names_producer(pbmc68k):
    a = pbmc68k.copy()
    a.uns["sad"] = {}
    with pytest.raises(KeyError, match=r"sad\.tl\.attack"):
        sad.pl.flip_rate(a, show=False)


# ---------------------------------------------------------------- perturbation


def test_perturbation_before_after_change(pipeline68k):
    a = pipeline68k
    group = str(a.obs["sad_label"].value_counts().idxmax())
    axs = sad.pl.perturbation(
        a, "sad_pgd_eps0.5", groupby="sad_label", group=group, n_genes=7, max_cells=20, show=False
    )
    assert len(axs) == 3
    B, A, D = (np.asarray(ax.images[0].get_array()) for ax in axs)
    assert B.shape == A.shape == D.shape == (7, 20)
    np.testing.assert_allclose(A - B, D, atol=1e-5)
    genes = [t.get_text() for t in axs[0].get_yticklabels()]
    assert len(genes) == 7
    assert set(genes) <= set(a.var_names)
    idx = a.var_names.get_indexer(genes)
    cells = np.flatnonzero(a.obs["sad_label"].astype(str) == group)
    delta = np.asarray(a.layers["sad_pgd_eps0.5"])[cells][:, idx] - np.asarray(a.X)[cells][:, idx]
    # every shown change is a real change of the attack on these genes, within eps
    assert np.abs(D).max() <= 0.5 + 1e-5
    assert set(np.round(D.ravel(), 4)) <= set(np.round(delta.ravel(), 4))


# ---------------------------------------------------------------- detector plots (synthetic scores)


def test_score_distribution_threshold_and_legend(fake_scores):
    a = fake_scores
    ax = sad.pl.score_distribution(a, show=False)
    thr_lines = [ln for ln in ax.get_lines() if ln.get_label().startswith("threshold")]
    assert len(thr_lines) == 1
    np.testing.assert_allclose(thr_lines[0].get_xdata(), [0.42, 0.42])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    n = int(_test_mask(a).sum())
    assert legend[0].startswith(f"clean (n={n};")
    assert legend[1].startswith(f"pgd ε=0.1 (n={n};")
    assert legend[2].startswith(f"pgd ε=0.5 (n={n};")
    assert legend[3] == "threshold 0.42"
    assert ax.get_xscale() == "linear"  # spread-out scores
    # each histogram is a distribution of cells: bar heights sum to 1
    clean_bars = ax.patches[:40]  # 40 bins of the filled clean histogram; the attacked ones are step outlines
    assert abs(sum(p.get_height() for p in clean_bars) - 1) < 1e-6


def test_score_distribution_logit_axis_for_saturated_scores(fake_scores):
    a = fake_scores.copy()
    a.obs["sad_score"] = np.clip(a.obs["sad_score"] ** 8, 0, 1)
    a.uns["sad"]["detector"]["metrics"]["threshold"] = 0.99995
    ax = sad.pl.score_distribution(a, layers="sad_pgd_eps0.5", show=False)
    assert ax.get_xscale() == "logit"
    assert len(ax.get_legend().get_texts()) == 3


@pytest.mark.parametrize("xscale", ["linear", "logit"])
def test_score_distribution_counts_rule_flagged_cells_in_the_last_bin(fake_scores, xscale):
    """Rule-flagged cells score above 1; clipped to the plotted range, they fill the last bin instead of vanishing."""
    a = fake_scores.copy()
    layer = "sad_pgd_eps0.5"
    a.obs[f"sad_score_{layer}"] = 1 + np.random.default_rng(1).uniform(0, 3, a.n_obs)
    ax = sad.pl.score_distribution(a, layers=layer, xscale=xscale, show=False)
    assert ax.get_xscale() == xscale
    (step,) = ax.patches[40:]  # the attacked histogram: one step outline after the 40 clean bars
    xy = step.get_xy()
    assert xy[:, 1].max() == pytest.approx(1.0)  # every attacked cell is counted, all in the last bin
    assert xy[xy[:, 1] > 0.5, 0].min() > 0.95  # at the top of the axis


def test_roc_operating_point_at_threshold(fake_scores):
    a = fake_scores
    axs = sad.pl.roc(a, "sad_pgd_eps0.1", show=False)
    assert len(axs) == 2
    m = _test_mask(a)
    clean = a.obs["sad_score"].to_numpy()[m]
    adv = a.obs["sad_score_sad_pgd_eps0.1"].to_numpy()[m]
    points = [ln for ln in axs[0].get_lines() if ln.get_marker() == "o" and len(ln.get_xdata())]
    assert len(points) == 1
    np.testing.assert_allclose(points[0].get_xdata(), [np.mean(clean >= 0.42)])
    np.testing.assert_allclose(points[0].get_ydata(), [np.mean(adv >= 0.42)])
    from sklearn.metrics import roc_auc_score

    auroc = roc_auc_score(np.r_[np.zeros(len(clean)), np.ones(len(adv))], np.r_[clean, adv])
    assert axs[0].get_legend().get_texts()[0].get_text() == f"pgd ε=0.1 (AUROC {auroc:.3f})"
    assert axs[1].get_xlabel() == "recall"
    assert axs[1].get_ylabel() == "precision"
    (ax,) = sad.pl.roc(a, curve="roc", show=False)
    assert len([t for t in ax.get_legend().get_texts() if "AUROC" in t.get_text()]) == 2


def test_detector_plots_need_detect(pipeline68k):
    with pytest.raises(KeyError, match=r"sad\.tl\.detect"):
        sad.pl.score_distribution(pipeline68k, show=False)
    with pytest.raises(KeyError, match=r"sad\.tl\.detect"):
        sad.pl.roc(pipeline68k, show=False)


# ---------------------------------------------------------------- embedding and cell


def test_embedding_triplet_state_colors(fake_scores):
    a = fake_scores
    before = set(a.obsm)
    ax = sad.pl.embedding(a, "sad_pgd_eps0.1", show=False)
    assert set(a.obsm) == before  # the plot does not write to adata
    n = int(_test_mask(a).sum())
    offsets = np.concatenate([c.get_offsets() for c in ax.collections])
    assert len(offsets) == 2 * n
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"clean", "adversarial"}
    assert ax.get_xlabel() == "UMAP1"
    emb = sad.pl.embedding_adata(a, "sad_pgd_eps0.1")
    assert emb.obs["state"].value_counts().to_dict() == {"clean": n, "adversarial": n}
    assert emb.obsm["X_umap"].shape == (2 * n, 2)


def test_embedding_classifier_basis_label_colors(pipeline68k):
    axs = sad.pl.embedding(pipeline68k, basis="classifier", color=["label", "prediction"], show=False)
    assert len(axs) == 2
    labels = {t.get_text() for t in axs[0].get_legend().get_texts()} if axs[0].get_legend() else set()
    texts = {t.get_text() for t in axs[0].texts}
    assert (labels | texts) >= set(map(str, pipeline68k.obs["sad_label"].cat.categories))
    with pytest.raises(KeyError, match=r"sad\.tl\.detect"):
        sad.pl.embedding(pipeline68k, basis="triplet", show=False)


def test_cell_bars_and_verdicts(fake_scores):
    a = fake_scores
    i = int(np.flatnonzero(a.obs["sad_pgd_eps0.5_pred"].astype(str) != a.obs["sad_pred"].astype(str))[0])
    ax = sad.pl.cell(a, a.obs_names[i], "sad_pgd_eps0.5", show=False)
    classes = list(a.obs["sad_pred"].cat.categories)
    assert len(ax.patches) == 2 * len(classes)
    clean = [p.get_height() for p in ax.patches[: len(classes)]]
    adv = [p.get_height() for p in ax.patches[len(classes) :]]
    np.testing.assert_allclose(clean, a.obsm["sad_proba"][i], atol=1e-6)
    assert abs(sum(adv) - 1) < 1e-4
    assert classes[int(np.argmax(adv))] == a.obs["sad_pgd_eps0.5_pred"].iloc[i]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    s = a.obs["sad_score_sad_pgd_eps0.5"].iloc[i]
    verdict = "flagged adversarial" if s >= 0.42 else "passes as clean"
    assert legend[1].startswith(f"pgd ε=0.5: {a.obs['sad_pgd_eps0.5_pred'].iloc[i]}")
    assert legend[1].endswith(f"score {s:.2f} → {verdict}")


# ---------------------------------------------------------------- conventions


def test_return_fig_show_and_given_ax(pipeline68k):
    fig = sad.pl.robustness(pipeline68k, return_fig=True)
    assert isinstance(fig, Figure)
    assert sad.pl.robustness(pipeline68k, show=True) is None
    fig, ax = plt.subplots()
    assert sad.pl.flip_rate(pipeline68k, ax=ax) is ax  # a given ax is not shown by default


def test_default_palette_matches_scanpy(pipeline68k):
    import scanpy as sc

    from scadversarial.pl._utils import category_colors

    a = pipeline68k.copy()
    a.uns.pop("sad_label_colors", None)
    ours = category_colors(a, "sad_label")
    sc.pl.embedding(a, basis="X_umap", color="sad_label", show=False)  # writes scanpy's default colors
    assert list(ours.values()) == [c.lower() for c in a.uns["sad_label_colors"]]


# ---------------------------------------------------------------- on the real detector's outputs


@pytest.fixture(scope="module")
def detected68k(pipeline68k):
    a = pipeline68k.copy()
    sad.tl.train_detector(a, config=sad.detection.DetectorConfig(triplet_epochs=2, epochs=3), random_state=0)
    sad.tl.detect(a, [None, *LAYERS])
    return a


def test_plots_on_real_detector_outputs(detected68k):
    a = detected68k
    thr = float(a.uns["sad"]["detector"]["metrics"]["threshold"])
    ax = sad.pl.score_distribution(a, show=False)
    (line,) = [ln for ln in ax.get_lines() if ln.get_label().startswith("threshold")]
    np.testing.assert_allclose(line.get_xdata(), [thr, thr], rtol=1e-6)
    m = _test_mask(a)
    flagged = a.obs["sad_adversarial"].to_numpy()[m].mean()
    assert ax.get_legend().get_texts()[0].get_text().endswith(f"{flagged:.0%} flagged)")
    roc_ax, _ = sad.pl.roc(a, show=False)
    ops = [ln for ln in roc_ax.get_lines() if ln.get_marker() == "o" and len(ln.get_xdata())]
    assert len(ops) == len(LAYERS)
    for op in ops:
        np.testing.assert_allclose(op.get_xdata(), [flagged])  # FPR of the operating point = clean cells flagged
    ax = sad.pl.embedding(a, color="flagged", show=False)
    assert {t.get_text() for t in ax.get_legend().get_texts()} <= {"flagged", "not flagged"}
    ax = sad.pl.cell(a, 0, "sad_pgd_eps0.5", show=False)
    verdict = "flagged adversarial" if a.obs["sad_adversarial_sad_pgd_eps0.5"].iloc[0] else "passes as clean"
    assert ax.get_legend().get_texts()[1].get_text().endswith(verdict)


# ---------------------------------------------------------------- black-box attacks


@pytest.fixture(scope="module")
def blackbox68k(pipeline68k):
    from sklearn.linear_model import LogisticRegression

    a = pipeline68k.copy()
    clf = LogisticRegression(max_iter=300).fit(a.layers["sad_lognorm"], a.obs["sad_label"].astype(str))
    sad.tl.attack_overview(
        a, groupby="sad_label", classifier=clf, layer="sad_lognorm", modifications=("perc99", "positive_aberrant")
    )
    target = str(a.obs["sad_label"].value_counts().idxmax())
    genes = list(a.var_names[:25])
    sad.tl.cgd_attack(a, groupby="sad_label", target=target, classifier=clf, layer="sad_lognorm", genes=genes)
    return a, target, genes


def test_attack_overview_heatmaps_match_table(blackbox68k):
    a, _, _ = blackbox68k
    axs = sad.pl.attack_overview(a, show=False)
    assert len(axs) == 2
    rec = a.uns["sad"]["attacks"]["overview"]
    table = pd.DataFrame({k: np.asarray(v) for k, v in rec["table"].items()})
    clusters = list(np.atleast_1d(rec["params"]["clusters"]))
    mods = ["perc99", "positive_aberrant"]
    for ax, col in zip(axs, ["single_gene_n_found", "max_change_n_kept"], strict=True):
        expected = table.pivot(index="cluster", columns="modification", values=col).reindex(
            index=clusters, columns=mods
        )
        np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), expected.to_numpy(float))
        assert [t.get_text() for t in ax.get_xticklabels()] == mods
    labels = [t.get_text() for t in axs[0].get_yticklabels()]  # shared rows: labelled on the first panel
    assert [lab.split(" (n=")[0] for lab in labels] == clusters
    assert axs[0].get_title().startswith("single-gene")
    assert axs[1].get_title().startswith("max-change")
    (ax,) = sad.pl.attack_overview(a, modes="max_change", show=False)
    assert ax.get_title().startswith("max-change")


def test_attack_overview_missing_names_producer(pipeline68k):
    with pytest.raises(KeyError, match=r"sad\.tl\.attack_overview"):
        sad.pl.attack_overview(pipeline68k, show=False)


def test_perturbation_of_a_cgd_layer_defaults_to_the_attacked_cluster(blackbox68k):
    a, target, genes = blackbox68k
    layer = f"sad_cgd_{target}"
    axs = sad.pl.perturbation(a, layer, n_genes=5, show=False)
    assert f"sad_label = {target}" in axs[0].figure.get_suptitle()
    shown = [t.get_text() for t in axs[0].get_yticklabels()]
    changed = set(np.atleast_1d(a.uns["sad"]["attacks"][layer]["modified_genes"]))
    D = np.asarray(axs[2].images[0].get_array())
    for g, row in zip(shown, D, strict=True):  # genes with a change are genes the attack modified
        if np.abs(row).max() > 0:
            assert g in changed
            assert g in genes


def test_perturbation_into_given_axes(pipeline68k):
    fig, axs = plt.subplots(1, 3)
    out = sad.pl.perturbation(pipeline68k, "sad_pgd_eps0.1", n_genes=4, ax=axs, show=False)
    assert list(out) == list(axs)
    assert len([t for t in axs[0].get_yticklabels() if t.get_text()]) == 4
    assert "genes changed most consistently" in axs[0].get_title()
    with pytest.raises(ValueError, match="3 Axes"):
        sad.pl.perturbation(pipeline68k, "sad_pgd_eps0.1", ax=axs[:2], show=False)
    with pytest.raises(ValueError, match=r"pass 3 Axes \(got 1\)"):  # a single Axes is one panel, not three
        sad.pl.perturbation(pipeline68k, "sad_pgd_eps0.1", ax=axs[0], show=False)
