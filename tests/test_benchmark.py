"""``benchmark_detectors``, ``benign_shift`` and ``sad.pl.benchmark`` on a PBMC3k subset."""

from __future__ import annotations

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scadversarial as sad
from scadversarial import detection
from scadversarial.tl._benchmark import (
    COLUMNS,
    BenchmarkOptions,
    _Outcome,
    _worst_case,
    benchmark_detectors,
)
from scadversarial.tl._benchmark_defences import CertifiedRows
from scadversarial.tl._shifts import BenignShift, benign_shift, library_counts

N_CELLS = 700  # enough cells for every Seurat type in each split, small enough for seconds per test
N_GENES = 400
LABELS = "seurat_cell_type"
TABLE_DETECTORS = ("sad", "mahalanobis")  # one baseline keeps the shape test fast; all of them: the leak test
TWO_SHIFTS = {"thinning 50%": BenignShift("thinning", 0.5), "noise 0.2": BenignShift("noise", 0.2)}


def _baselines() -> tuple[str, ...]:
    return tuple(getattr(detection, "BASELINES", ()))


@pytest.fixture(scope="module")
def bench3k(pbmc3k_raw) -> ad.AnnData:
    """A PBMC3k subset: preprocessed from counts, split, classifier, PGD layers and the default detector."""
    rng = np.random.default_rng(0)
    a = pbmc3k_raw[np.sort(rng.choice(pbmc3k_raw.n_obs, N_CELLS, replace=False))].copy()
    sad.pp.preprocess(a, n_top_genes=N_GENES)
    sad.pp.split(a, LABELS)
    sad.tl.train_classifier(a, LABELS, max_epochs=10)
    sad.tl.attack(a, eps=(0.1,))
    sad.tl.train_detector(a, config=sad.detection.DetectorConfig(triplet_epochs=2, epochs=4))
    return a


@pytest.fixture(scope="module")
def table3k(bench3k) -> tuple[ad.AnnData, object]:
    a = bench3k.copy()
    attacks = {
        "pgd": {"method": "pgd", "eps": (0.05, 0.15)},
        "sweep": [{"method": "pgd", "eps": 0.05}, {"method": "fgsm", "eps": 0.1}],
    }
    tab = _table(a, attacks=attacks, detectors=TABLE_DETECTORS, benign=TWO_SHIFTS)
    return a, tab


def _table(adata, **kwargs) -> pd.DataFrame:
    """Run the benchmark on ``adata`` and read its table back."""
    benchmark_detectors(adata, **kwargs)
    return sad.get.benchmark_table(adata, kwargs.get("key_added", "benchmark"))


def test_thinning_at_one_reproduces_x(bench3k):
    same = benign_shift(bench3k, "thinning", amount=1.0)
    np.testing.assert_array_equal(same.X, bench3k.X)
    np.testing.assert_array_equal(same.layers["sad_lognorm"], bench3k.layers["sad_lognorm"])
    counts = bench3k.layers["counts"]
    np.testing.assert_array_equal(same.layers["counts"], counts.toarray() if sp.issparse(counts) else counts)


def test_library_counts_recover_the_total(pbmc3k_raw):
    sub = pbmc3k_raw[:200].copy()
    total = np.asarray(sub.X.sum(1)).ravel()
    sad.pp.preprocess(sub, n_top_genes=N_GENES)
    counts, other = library_counts(sub)
    np.testing.assert_array_equal(counts.sum(1) + other, total)


def test_shifts_are_seeded_and_change_depth(bench3k):
    depth = np.asarray(bench3k.layers["counts"].sum(1)).ravel()
    half = benign_shift(bench3k, "thinning", amount=0.5, random_state=1)
    again = benign_shift(bench3k, "thinning", amount=0.5, random_state=1)
    np.testing.assert_array_equal(half.X, again.X)
    assert 0.45 < half.layers["counts"].sum() / depth.sum() < 0.55
    noisy = benign_shift(bench3k, "noise", amount=0.2)
    zero = (
        bench3k.layers["counts"].toarray() if sp.issparse(bench3k.layers["counts"]) else bench3k.layers["counts"]
    ) == 0
    assert (np.asarray(noisy.layers["counts"])[zero] == 0).all()  # unexpressed genes stay unexpressed
    amb = benign_shift(bench3k, "ambient", amount=0.1)
    assert 0.95 < amb.layers["counts"].sum() / depth.sum() < 1.05  # contamination replaces counts, depth stays
    assert "sad_pred" not in amb.obs
    assert "sad_split" in amb.obs
    sad.tl.predict(amb)  # the model record travels, the shifted cells can be classified
    assert amb.obs["sad_pred"].notna().all()


def test_shift_errors_name_the_fix(pipeline68k):
    with pytest.raises(KeyError, match="counts"):
        benign_shift(pipeline68k, "thinning", amount=0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        BenignShift("thinning", 1.5)
    with pytest.raises(ValueError, match="kind='dropout'"):
        BenignShift("dropout", 0.5)


def test_table_shape_columns_and_record(table3k, tmp_path):
    a, tab = table3k
    dets = list(TABLE_DETECTORS)
    threats = ["clean", "pgd eps=0.05", "pgd eps=0.15", "sweep", *TWO_SHIFTS]
    assert list(tab.columns) == list(COLUMNS)
    assert len(tab) == len(threats) * len(dets)
    assert list(dict.fromkeys(tab["threat"])) == threats
    assert set(tab["detector"]) == set(dets)
    n_test = int((a.obs["sad_split"] == "test").sum())
    assert (tab["n_cells"] == n_test).all()
    att = tab[tab["kind"] == "attack"]
    assert (att["evasion"] <= att["flip_rate"] + 1e-12).all()
    assert (att["evasion"] <= 1 - att["flagged"] + 1e-12).all()
    assert att[["flip_rate", "auroc", "tpr_at_5fpr", "flagged"]].notna().all().all()
    # a stronger PGD flips at least as many cells as a weaker one
    fr = att.groupby("threat")["flip_rate"].first()
    assert fr["pgd eps=0.15"] >= fr["pgd eps=0.05"]
    ben = tab[tab["kind"] == "benign"]
    assert ben["fpr"].between(0, 1).all()
    assert ben["pred_changed"].between(0, 1).all()
    assert ben["flip_rate"].isna().all()
    assert ben["evasion"].isna().all()
    # the record round-trips through h5ad and gives the same table back
    path = tmp_path / "bench.h5ad"
    a.write_h5ad(path)
    back = sad.get.benchmark_table(ad.read_h5ad(path))
    np.testing.assert_allclose(back["auroc"].to_numpy(float), tab["auroc"].to_numpy(float), equal_nan=True)
    assert list(back["threat"]) == list(tab["threat"])


def test_worst_case_takes_the_flipped_lowest_score():
    clean = np.array([0, 0, 1])
    a = _Outcome(np.array([1, 0, 1]), {"d": np.array([0.9, 0.1, 0.5])})
    b = _Outcome(np.array([1, 0, 1]), {"d": np.array([0.2, 0.3, 0.4])})
    c = _Outcome(np.array([0, 0, 0]), {"d": np.array([0.05, 0.2, 0.7])})
    flipped, score = _worst_case(clean, [a, b, c], "d")
    # cell 0: flipped in a and b, lowest of those 0.2 (the unflipped 0.05 does not count); cell 1: never flipped,
    # lowest score; cell 2: only c flips
    np.testing.assert_array_equal(flipped, [True, False, True])
    np.testing.assert_allclose(score, [0.2, 0.1, 0.7])


def test_sweep_row_is_worst_case_of_its_layers(bench3k):
    a = bench3k.copy()
    attacks = {
        "weak": {"method": "pgd", "eps": 0.05},
        "fgsm": {"method": "fgsm", "eps": 0.1},
        "both": [{"method": "pgd", "eps": 0.05}, {"method": "fgsm", "eps": 0.1}],
    }
    tab = _table(a, attacks=attacks, detectors=("sad",), benign={}).set_index("threat")
    assert tab.loc["both", "flip_rate"] >= max(tab.loc["weak", "flip_rate"], tab.loc["fgsm", "flip_rate"])
    assert tab.loc["both", "evasion"] >= max(tab.loc["weak", "evasion"], tab.loc["fgsm", "evasion"])


def test_no_test_cell_is_used_to_fit_or_calibrate(bench3k):
    """Test cells' values in the training layers are NaN and their clean X is scrambled: the fits must not notice."""
    dets = ("sad", *_baselines())
    attacks = {"pgd": {"method": "pgd", "eps": 0.1}}
    ref = _table(bench3k.copy(), attacks=attacks, detectors=dets, benign={})
    poisoned = bench3k.copy()
    test = (poisoned.obs["sad_split"] == "test").to_numpy()
    poisoned.layers["sad_pgd_eps0.1"][test] = np.nan  # a fit reading these rows would fail
    # every test cell gets another test cell's profile: fits and thresholds see the same training/validation cells
    rows = np.flatnonzero(test)
    poisoned.X[rows] = poisoned.X[np.roll(rows, 1)]
    out = _table(poisoned, attacks=attacks, detectors=dets, benign={})
    np.testing.assert_array_equal(out["threshold"].to_numpy(), ref["threshold"].to_numpy())
    rec = poisoned.uns["sad"]["benchmark"]["metrics"]
    assert rec["n_cells"] == test.sum()
    assert rec["n_fit"] + rec["n_calibration"] + test.sum() == poisoned.n_obs


def test_callable_threat_reads_its_own_layer(bench3k):
    a = bench3k.copy()

    def one_gene_aberrant(cells: ad.AnnData) -> list[str]:
        M = np.asarray(cells.X, dtype=np.float32).copy()
        M[:, 0] = 1e4 * np.abs(M[:, 0]).max()  # one gene at an absurd value, as positive_aberrant
        cells.layers["one_gene"] = M
        return ["one_gene"]

    tab = _table(a, attacks={"aberrant": one_gene_aberrant}, detectors=("sad",), benign={})
    row = tab[tab["threat"] == "aberrant"].iloc[0]
    assert row["space"] == "scaled"
    assert 0 <= row["evasion"] <= row["flip_rate"]


def test_benchmark_errors_name_the_fix(bench3k):
    a = bench3k.copy()
    with pytest.raises(ValueError, match="subset"):
        benchmark_detectors(a, attacks={"p": {"eps": 0.1}}, detectors=("sad",), subset="all")
    with pytest.raises(ValueError, match="at least one threat"):
        benchmark_detectors(a, attacks={}, detectors=("sad",))
    with pytest.raises(ValueError, match="key_added"):
        benchmark_detectors(a, attacks={"p": {"eps": 0.1, "key_added": "x"}}, detectors=("sad",), benign={})
    with pytest.raises(ValueError, match="Unknown detector"):
        benchmark_detectors(a, attacks={"p": {"eps": 0.1}}, detectors=("nope",), benign={})
    with pytest.raises(ValueError, match="target_fpr"):
        benchmark_detectors(a, attacks={"p": {"eps": 0.1}}, options=BenchmarkOptions(target_fpr=0))


def test_heatmap_draws_both_panels(table3k):
    a, tab = table3k
    fig = sad.pl.benchmark(tab, return_fig=True)
    attack_ax, benign_ax = fig.axes[:2]
    n_det = tab["detector"].nunique()
    assert len(attack_ax.texts) == 3 * n_det  # pgd x 2 eps and the sweep
    assert len(benign_ax.texts) == len(TWO_SHIFTS) * n_det
    first = tab[(tab["threat"] == "pgd eps=0.05") & (tab["detector"] == "sad")].iloc[0]
    assert attack_ax.texts[0].get_text() == f"{first['evasion']:.2f}"
    assert "flip" in attack_ax.get_yticklabels()[0].get_text()
    plt.close(fig)
    axs = sad.pl.benchmark(a, metric="auroc", show=False)  # from the AnnData's record
    assert len(axs) == 2
    assert "AUROC" in axs[0].get_title()
    plt.close("all")
    with pytest.raises(ValueError, match="metric"):
        sad.pl.benchmark(tab, metric="accuracy")


def test_observed_range_is_taken_over_all_cells(bench3k):
    # the benchmark attacks a copy of the test cells; 'observed' must still mean each gene's range over all cells
    from scadversarial.tl._benchmark import _observed_over_all_cells

    a = bench3k.copy()
    clf = sad.get.model(a)
    spec, changed = _observed_over_all_cells(a, {"method": "pgd", "eps": 0.15, "constraint": "observed"}, clf)
    assert changed
    assert "constraint" not in spec
    np.testing.assert_array_equal(spec["bounds"][0], a.X.min(0))
    np.testing.assert_array_equal(spec["bounds"][1], a.X.max(0))
    test = a.obs["sad_split"].astype(str).to_numpy() == "test"
    assert (a.X[test].max(0) < a.X.max(0)).any()  # the test cells alone give a tighter box
    tab = _table(
        a, attacks={"observed": {"method": "pgd", "eps": 0.15, "constraint": "observed"}}, detectors=("sad",), benign={}
    )
    row = tab[tab["threat"] == "observed"].iloc[0]
    assert row["constraint"] == "observed"
    assert row["flip_rate"] > 0


def test_observed_range_keeps_custom_bounds_and_reads_the_classifier_input(bench3k):
    from scadversarial.tl._benchmark import _observed_over_all_cells

    a = bench3k.copy()
    clf = sad.get.model(a)
    spec = {"method": "pgd", "eps": 1.0, "constraint": "observed", "bounds": (-0.5, 0.5)}
    lower, upper = _observed_over_all_cells(a, spec, clf)[0]["bounds"]
    np.testing.assert_array_equal(lower, np.maximum(a.X.min(0), -0.5))
    np.testing.assert_array_equal(upper, np.minimum(a.X.max(0), 0.5))
    # X holding log values (output='lognorm'): the scaled attack's range is still its scaled input's
    b = a.copy()
    b.X = b.layers["sad_lognorm"].copy()
    b.uns["sad"]["preprocess"]["params"]["output"] = "lognorm"
    got = _observed_over_all_cells(b, {"method": "pgd", "eps": 0.1, "constraint": "observed"}, clf)[0]["bounds"]
    np.testing.assert_allclose(got[0], a.X.min(0), atol=1e-5)
    np.testing.assert_allclose(got[1], a.X.max(0), atol=1e-5)
    # layer='X' names X, as in attack(); an integer-counts constraint is not traded for the observed box
    got = _observed_over_all_cells(a, {"method": "pgd", "eps": 0.1, "layer": "X", "constraint": "observed"}, clf)
    np.testing.assert_array_equal(got[0]["bounds"][0], a.X.min(0))
    spec = {"method": "pgd", "eps": 2.0, "space": "counts", "constraint": "counts", "bounds": "observed"}
    with pytest.raises(ValueError, match="bounds='observed' is the 'observed' constraint"):
        _observed_over_all_cells(a, spec, clf)


def test_accuracy_column_matches_the_classifier_record(table3k):
    a, tab = table3k
    clean = tab[tab["kind"] == "clean"]
    np.testing.assert_allclose(clean["accuracy"], a.uns["sad"]["classifier"]["metrics"]["accuracy"]["test"])
    att = tab[tab["kind"] == "attack"].groupby("threat", sort=False)["accuracy"].first()
    assert att["sweep"] <= min(att["pgd eps=0.05"], clean["accuracy"].iloc[0])  # worst case over the sweep


def test_defence_rows_certified_and_hardened(bench3k):
    a = bench3k.copy()
    # any second classifier will do for the mechanics; benchmarks/threats.py passes the adversarially trained one
    sad.tl.train_classifier(a, LABELS, max_epochs=5, random_state=1, key_added="hardened")
    spec = CertifiedRows(sigmas=(0.25,), radii=(0.0, 0.1), n_samples=100)
    opts = BenchmarkOptions(certified=spec, hardened_key="hardened")
    pgd = {"method": "pgd", "eps": 0.1}
    tab = _table(a, attacks={"pgd": pgd}, detectors=("sad",), benign=TWO_SHIFTS, options=opts)
    n_test = int((a.obs["sad_split"] == "test").sum())
    cert = tab[tab["kind"] == "certified"].set_index("threat")
    assert list(cert.index) == ["certified σ=0.25 r=0", "certified σ=0.25 r=0.1"]
    assert (cert["detector"] == "none").all()
    assert (cert["n_cells"] == n_test).all()
    assert cert["accuracy"].iloc[1] <= cert["accuracy"].iloc[0] <= 1
    assert cert["flagged"].between(0, 1).all()
    assert cert[["auroc", "evasion", "fpr", "flip_rate"]].isna().all().all()
    hard = tab[tab["kind"] == "hardened"].set_index("threat")
    assert list(hard.index) == ["clean", "pgd", *TWO_SHIFTS]
    np.testing.assert_allclose(hard.loc["clean", "accuracy"], a.uns["sad"]["hardened"]["metrics"]["accuracy"]["test"])
    # the hardened row's attack is made against the hardened classifier: the same attack, run directly, agrees
    test = a[(a.obs["sad_split"] == "test").to_numpy()].copy()
    model = sad.get.model(a, "hardened")
    sad.tl.attack(test, "pgd", eps=0.1, classifier=model, key_added="direct")
    clean = model.predict_arrays(np.asarray(test.X))[0].argmax(1)
    adv = model.predict_arrays(np.asarray(test.layers["direct_eps0.1"]))[0].argmax(1)
    np.testing.assert_allclose(hard.loc["pgd", "flip_rate"], (adv != clean).mean())
    assert hard.loc[list(TWO_SHIFTS), "pred_changed"].between(0, 1).all()
    # the standard rows are those of a run without the defences
    plain = _table(a, attacks={"pgd": pgd}, detectors=("sad",), benign=TWO_SHIFTS)
    pd.testing.assert_frame_equal(tab[tab["kind"].isin(["clean", "attack", "benign"])], plain)


def test_hardened_rows_rerun_the_count_attacker_inside_the_checks(bench3k):
    """``InsideCountChecks`` is rerun against the hardened classifier (its ``against``); other callables are skipped."""
    a = bench3k.copy()
    sad.tl.train_classifier(a, LABELS, max_epochs=5, random_state=1, key_added="hardened")
    sad.tl.predict(
        a
    )  # the standard classifier's calls in .obs['sad_pred'], which the standard attacker pushes away from
    inside = sad.tl.InsideCountChecks(sad.get.model(a, "detector"), eps=1.0, rounds=2)

    def one_gene_aberrant(cells: ad.AnnData) -> list[str]:
        cells.layers["one_gene"] = np.asarray(cells.X, dtype=np.float32) * 2
        return ["one_gene"]

    attacks = {"inside": inside, "aberrant": one_gene_aberrant}
    opts = BenchmarkOptions(hardened_key="hardened")
    tab = _table(a, attacks=attacks, detectors=("sad",), benign={}, options=opts)
    hard = tab[tab["kind"] == "hardened"].set_index("threat")
    assert list(hard.index) == ["clean", "inside"]  # the plain callable is not rerun
    assert (hard.loc["inside", "space"], hard.loc["inside", "detector"]) == ("counts", "none")
    # the same attacker aimed directly at the hardened classifier on the test cells gives the row's flip rate
    model = sad.get.model(a, "hardened")
    test = a[(a.obs["sad_split"] == "test").to_numpy()].copy()
    ((layer, _),) = inside.against(model)(test).items()
    assert layer.startswith("sad_inside_checks_against")
    clean = model.predict_arrays(np.asarray(test.X))[0].argmax(1)
    adv = model.predict_arrays(sad.tl.scaled_matrix(test, model, layer))[0].argmax(1)
    np.testing.assert_allclose(hard.loc["inside", "flip_rate"], (adv != clean).mean())
    assert hard.loc["inside", "flip_rate"] > 0
    # ... and not the standard classifier's attack: its layer flips another share of the hardened calls
    std = a[(a.obs["sad_split"] == "test").to_numpy()].copy()
    ((std_layer, _),) = inside(std).items()
    assert not np.array_equal(counts_layer(std, std_layer), counts_layer(test, layer))
    # the standard rows are those of a run without the hardened classifier
    plain = _table(a, attacks=attacks, detectors=("sad",), benign={})
    pd.testing.assert_frame_equal(tab[tab["kind"] != "hardened"], plain)


def counts_layer(b: ad.AnnData, layer: str) -> np.ndarray:
    m = b.layers[layer]
    return np.asarray(m.toarray() if sp.issparse(m) else m)
