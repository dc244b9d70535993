"""The demo app: its Streamlit-free logic, the page under Streamlit's AppTest, and ``launch``.

The pipeline folder is built once per session (pbmc68k_reduced, few epochs) in the session's
temporary directory; ``tests/test_app_browser.py`` reuses the same folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

import scadversarial as sad
from scadversarial import app as sad_app
from scadversarial import cli
from scadversarial.app import _cache, logic

SCRIPT = str(sad_app.SCRIPT)
EPOCHS = 15


@pytest.fixture(scope="session")
def app_pipeline_dir(tmp_path_factory) -> Path:
    """A ``scadversarial run``-style folder (adata.h5ad, models/, report.json) on pbmc68k_reduced."""
    return logic.build_default_pipeline(tmp_path_factory.getbasetemp() / "app_pipeline", max_epochs=EPOCHS)


@pytest.fixture(scope="session")
def pipe(app_pipeline_dir) -> logic.Pipeline:
    return logic.load_pipeline(app_pipeline_dir / "adata.h5ad")


@pytest.fixture
def app_env(monkeypatch, app_pipeline_dir):
    """Point the page at the test pipeline (the script reads these when AppTest runs it)."""

    def set_env(adata=app_pipeline_dir / "adata.h5ad", models=None):
        for name, value in (("SCADVERSARIAL_APP_ADATA", adata), ("SCADVERSARIAL_APP_MODELS", models)):
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, str(value))

    set_env()
    return set_env


def _apptest():
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(SCRIPT, default_timeout=120)


def _charts(at) -> list:
    # the element's proto name changed over Streamlit versions
    return list(at.get("vega_lite_chart")) + list(at.get("arrow_vega_lite_chart"))


def _texts(at, kind: str) -> list[str]:
    return [e.value for e in getattr(at, kind)]


def _identity(folder: Path) -> list[tuple[int, int]]:
    """Inode and modification time of the pipeline's files: unchanged unless the folder was rebuilt."""
    return [
        ((folder / name).stat().st_ino, (folder / name).stat().st_mtime_ns)
        for name in ("adata.h5ad", logic.CACHE_STAMP)
    ]


@pytest.fixture
def builds(monkeypatch) -> list[Path]:
    """The folders the demo pipeline is built in from now on (reusing the cache builds none)."""
    calls: list[Path] = []
    run_chain = _cache._run_chain

    def counted(adata, out, **kwargs):
        calls.append(out)
        return run_chain(adata, out, **kwargs)

    monkeypatch.setattr(_cache, "_run_chain", counted)
    return calls


# ----------------------------------------------------------------------------------------------
# logic
def test_build_reuses_cache(app_pipeline_dir, builds):
    assert {"adata.h5ad", "models", "report.json", logic.CACHE_STAMP} <= {p.name for p in app_pipeline_dir.iterdir()}
    assert logic.cached_pipeline_ok(app_pipeline_dir, max_epochs=EPOCHS)
    assert not logic.cached_pipeline_ok(app_pipeline_dir, max_epochs=EPOCHS + 1)
    before = _identity(app_pipeline_dir)
    assert logic.build_default_pipeline(app_pipeline_dir, max_epochs=EPOCHS) == app_pipeline_dir
    assert builds == []  # reused, not rebuilt
    assert _identity(app_pipeline_dir) == before


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SCADVERSARIAL_CACHE_DIR", str(tmp_path))
    assert logic.default_cache_dir() == tmp_path / "app-pbmc68k_reduced"
    monkeypatch.delenv("SCADVERSARIAL_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert logic.default_cache_dir() == tmp_path / "xdg" / "scadversarial" / "app-pbmc68k_reduced"


def test_load_pipeline(pipe, app_pipeline_dir):
    a = pipe.adata
    assert pipe.n_cells == a.n_obs == 700
    assert pipe.X.shape == (700, len(pipe.genes))
    assert pipe.X.dtype == np.float32
    assert pipe.classes == list(sad.tl.get_model(a, "classifier").classes)
    # clean predictions recomputed at load time agree with the ones the pipeline wrote
    np.testing.assert_array_equal(np.array(pipe.classes)[pipe.pred], a.obs["sad_pred"].astype(str).to_numpy())
    assert pipe.labels_key == "sad_label"
    assert pipe.labels is not None
    assert pipe.umap.shape == (700, 2)
    assert pipe.umap_key == "X_umap"
    assert pipe.detector is not None, pipe.warnings
    assert pipe.threshold == pytest.approx(float(sad.get.record(a, "detector")["metrics"]["threshold"]), rel=1e-6)
    assert pipe.warnings == []
    # the folder itself works as the path too
    assert logic.load_pipeline(app_pipeline_dir).n_cells == 700


def test_clean_and_attacked_cell(pipe):
    c = logic.clean_cell(pipe, 3)
    assert c.true_label == pipe.labels[3]
    assert c.predicted == pipe.classes[int(pipe.proba[3].argmax())]
    assert c.proba.sum() == pytest.approx(1, abs=1e-5)
    assert not c.attacked
    assert c.success is None
    assert 0 <= c.score <= 1
    # the detector score of one cell equals what sad.tl.detect writes for the whole AnnData
    b = pipe.adata.copy()
    sad.tl.detect(b)
    assert c.score == pytest.approx(float(b.obs["sad_score"].iloc[3]), abs=1e-5)
    assert c.verdict(pipe.threshold) == ("adversarial" if bool(b.obs["sad_adversarial"].iloc[3]) else "clean")
    np.testing.assert_allclose(logic.clean_scores(pipe), b.obs["sad_score"].to_numpy(), atol=1e-5)
    # one held-out cell scored alone gets the same score as in the batch
    j = int(np.flatnonzero(b.obs["sad_split"].astype(str).to_numpy() == "test")[0])
    assert logic.score(pipe, pipe.X[j])[0] == pytest.approx(float(b.obs["sad_score"].iloc[j]), abs=1e-5)

    assert c.split == str(b.obs["sad_split"].iloc[3])
    assert c.role == str(b.obs["sad_detector_role"].iloc[3])

    a = logic.attack_cell(pipe, 3, method="pgd", eps=0.5)
    assert a.attacked
    assert a.clean_predicted == c.predicted
    assert a.success == (a.predicted != c.predicted)
    assert np.abs(a.x - c.x).max() <= 0.5 + 1e-5
    # same perturbation as the array-level attack
    from scadversarial.attacks.whitebox import attack_arrays

    ref = attack_arrays(
        pipe.classifier, pipe.X[3:4], pipe.pred[3:4], eps=0.5, alpha=logic.auto_alpha(0.5, 10), steps=10
    )[0.5]
    np.testing.assert_allclose(a.x, ref[0], atol=1e-6)
    assert c.verdict(None) == "no detector"
    assert a.flagged(0.0) is True


def test_attack_flips_and_verdicts(pipe):
    """PGD flips many cells; verdicts follow the threshold; attacked cells score higher than clean ones."""
    attacked = [logic.attack_cell(pipe, i, eps=0.15) for i in range(20)]
    clean = [logic.clean_cell(pipe, i) for i in range(20)]
    assert np.mean([r.success for r in attacked]) > 0.3
    for r in attacked + clean:
        assert r.flagged(pipe.threshold) == (r.score >= pipe.threshold)
        assert r.verdict(pipe.threshold) == ("adversarial" if r.score >= pipe.threshold else "clean")
    assert np.mean([r.score for r in attacked]) > np.mean([r.score for r in clean])
    fgsm = logic.attack_cell(pipe, 0, method="fgsm", eps=0.2)
    assert np.abs(fgsm.x - pipe.X[0]).max() == pytest.approx(0.2, abs=1e-5)


def test_logic_errors(pipe):
    with pytest.raises(logic.AppError, match="out of range"):
        logic.clean_cell(pipe, pipe.n_cells)
    with pytest.raises(logic.AppError, match="Unknown attack method"):
        logic.attack_cell(pipe, 0, method="no_such_attack")
    with pytest.raises(logic.AppError, match="positive"):
        logic.attack_cell(pipe, 0, eps=0)
    with pytest.raises(logic.AppError, match="--models was given without --adata"):
        logic.open_pipeline(None, "models")


def test_gene_table_and_umap_frame(pipe):
    c, a = logic.clean_cell(pipe, 1), logic.attack_cell(pipe, 1, eps=0.3)
    t = logic.gene_table(pipe, c, a)
    assert list(t.columns) == ["gene", "clean", "attacked", "change"]
    assert len(t) == len(pipe.genes)
    assert (t["change"].abs().diff().dropna() <= 1e-9).all()  # largest change first
    assert list(logic.gene_table(pipe, c, top=5).columns) == ["gene", "clean"]
    df = logic.umap_frame(pipe, 1)
    assert df["selected"].sum() == 1
    assert df.loc[df["selected"], "index"].item() == 1


def test_evaluate_in_batches(pipe):
    fractions = []
    res = logic.evaluate(pipe, method="pgd", eps=0.1, batch_size=50, progress=fractions.append)
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0
    assert len(fractions) == 4
    m = res.metrics
    assert res.split == "test"
    assert res.n_cells == int((pipe.split == "test").sum()) == m["cells evaluated"]
    truth = pipe.labels[pipe.split == "test"]
    pred = np.array(pipe.classes)[pipe.pred[pipe.split == "test"]]
    assert m["classifier accuracy (clean)"] == pytest.approx((truth == pred).mean())
    for key in ("flip rate", "detection accuracy, clean cells", "detection accuracy, attacked cells"):
        assert 0 <= m[key] <= 1
    assert m["AUROC (clean vs. attacked)"] > 0.9
    assert list(res.table().columns) == ["metric", "value"]
    # a threshold of 0 flags everything: no clean cell is called clean
    assert logic.evaluate(pipe, eps=0.1, threshold=0.0, max_cells=20).metrics["detection accuracy, clean cells"] == 0
    # clean cells count as detected clean below the threshold (scores from one batch or another agree to 1e-5)
    test = pipe.split == "test"
    expected = np.mean(logic.clean_scores(pipe)[test] < pipe.threshold)
    assert m["detection accuracy, clean cells"] == pytest.approx(expected, abs=1.5 / res.n_cells)
    with pytest.raises(logic.AppError, match="No cells to evaluate"):
        logic.evaluate(pipe, max_cells=0)
    stored = logic.stored_evaluation(pipe)
    assert stored is not None
    assert {"classifier", "attack", "detector"} <= set(stored["section"])
    # the page's names map rows that sad.tl.evaluate writes
    assert set(logic.SHOWN) <= set(zip(stored["section"], stored["metric"], strict=True))


@pytest.fixture(scope="session")
def broken(tmp_path_factory, app_pipeline_dir) -> dict[str, tuple[Path, Path | None, str]]:
    """Broken artifacts: ``name -> (adata path, models dir, expected message)``."""
    root = tmp_path_factory.mktemp("broken")
    good = app_pipeline_dir
    corrupt = root / "corrupt.h5ad"
    corrupt.write_bytes(b"this is not an HDF5 file\n" * 10)
    raw = root / "raw.h5ad"
    sad.datasets.pbmc68k_reduced().write_h5ad(raw)
    wrong = ad.read_h5ad(good / "adata.h5ad")
    wrong.var_names = [f"NOTAGENE{i}" if i < 7 else g for i, g in enumerate(wrong.var_names)]
    wrong_path = root / "wrong_genes" / "adata.h5ad"
    wrong_path.parent.mkdir()
    wrong.write_h5ad(wrong_path)
    bad_models = root / "bad_models"
    shutil.copytree(good / "models", bad_models)
    (bad_models / "classifier" / "model.safetensors").write_bytes(b"\x00garbage" * 50)
    empty_models = root / "empty_models"
    empty_models.mkdir()
    # a reference recording other genes than the saved classifier's (models of another run)
    other = ad.read_h5ad(good / "adata.h5ad")
    other.uns["sad"]["classifier"]["model"]["var_names_sha256"] = "0" * 64
    other_path = root / "other_genes" / "adata.h5ad"
    other_path.parent.mkdir()
    other.write_h5ad(other_path)
    return {
        "missing file": (root / "nope.h5ad", None, "No file at"),
        "corrupt file": (corrupt, None, "Could not read"),
        "no classifier": (raw, None, "no trained classifier"),
        "models folder missing": (good / "adata.h5ad", root / "no_such_dir", "Models folder"),
        "models missing": (good / "adata.h5ad", empty_models, "Could not load the classifier"),
        "corrupt weights": (good / "adata.h5ad", bad_models, "corrupt"),
        "wrong genes": (wrong_path, good / "models", "7 are missing"),
        "models of other genes": (other_path, good / "models", "trained on other genes"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing file",
        "corrupt file",
        "no classifier",
        "models folder missing",
        "models missing",
        "corrupt weights",
        "wrong genes",
        "models of other genes",
    ],
)
def test_load_errors_are_clear(broken, case):
    path, models, message = broken[case]
    with pytest.raises(logic.AppError, match=message):
        logic.load_pipeline(path, models)


def test_load_refuses_a_model_of_other_genes_before_registering(broken, pipe):
    """A classifier whose genes differ from the reference is refused and never replaces the live model."""
    from scadversarial.models._io import lookup

    path, models, _ = broken["models of other genes"]
    model_id = pipe.adata.uns["sad"]["classifier"]["model"]["id"]
    live = lookup(model_id)
    with pytest.raises(logic.AppError, match="other genes"):
        logic.load_pipeline(path, models)
    assert lookup(model_id) is live
    # an in-memory AnnData whose live model is not the one its reference records: refused too
    a = pipe.adata.copy()
    a.uns["sad"]["classifier"]["model"]["var_names_sha256"] = "0" * 64
    with pytest.raises(logic.AppError, match="other genes"):
        logic.load_pipeline(a)


@pytest.mark.parametrize("output", ["scaled", "lognorm"])
def test_app_probabilities_are_the_packages(pbmc68k, output):
    """The app reads X as the classifier's scaled input, as ``sad.tl.predict`` does, whatever X holds.

    With ``output='lognorm'`` X holds log-normalized values: fed to the classifier as they are, the
    app showed other probabilities than ``sad.tl.predict`` for a third of the cells.
    """
    a = pbmc68k.copy()
    sad.pp.preprocess(a, output=output)
    sad.pp.split(a, "bulk_labels")
    sad.tl.train_classifier(a, "bulk_labels", max_epochs=3)
    sad.tl.predict(a)
    p = logic.load_pipeline(a)
    np.testing.assert_allclose(p.proba, a.obsm["sad_proba"], atol=1e-5)
    clf = sad.get.model(a)
    np.testing.assert_allclose(p.X, sad.tl.classifier_input(a, clf), atol=1e-6)
    if output == "lognorm":
        X = a[:, clf.var_names].X
        X = X.toarray() if hasattr(X, "toarray") else np.asarray(X)
        assert np.abs(p.X - X).max() > 0.1  # the transform was applied
    # the attacked cell starts from, and is bounded around, the classifier's input
    r = logic.attack_cell(p, 0, eps=0.5)
    assert np.abs(r.x - p.X[0]).max() <= 0.5 + 1e-5


def test_load_without_labels_or_umap(pipe, monkeypatch):
    """No true labels and no UMAP in the AnnData: a warning, predicted labels, and a computed 2-d map."""
    import scanpy as sc

    a = pipe.adata.copy()
    del a.obs["sad_label"], a.obsm["X_umap"]

    def no_umap(*args, **kwargs):
        raise RuntimeError("no UMAP here")

    monkeypatch.setattr(sc.tl, "umap", no_umap)  # the PCA fallback (a real UMAP costs seconds of JIT)
    p = logic.load_pipeline(a)
    assert p.labels is None
    assert p.labels_key is None
    assert any("true labels are not shown" in w for w in p.warnings)
    assert p.umap.shape == (a.n_obs, 2)
    assert p.umap_key == "PCA (fallback)"
    assert logic.clean_cell(p, 0).true_label is None
    assert "classifier accuracy (clean)" not in logic.evaluate(p, max_cells=10).metrics
    assert set(logic.umap_frame(p)["label"]) <= set(p.classes)


def test_broken_detector_degrades_to_a_warning(app_pipeline_dir, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(app_pipeline_dir / "models", models)
    (models / "detector" / "model.safetensors").write_bytes(b"\x00garbage" * 50)
    p = logic.load_pipeline(app_pipeline_dir / "adata.h5ad", models)
    assert p.detector is None
    assert p.threshold is None
    assert len(p.warnings) == 1
    assert "detector could not be loaded" in p.warnings[0]
    c = logic.clean_cell(p, 0)
    assert c.score is None
    assert c.verdict(p.threshold) == "no detector"
    assert logic.attack_cell(p, 0).score is None
    assert "AUROC (clean vs. attacked)" not in logic.evaluate(p, max_cells=10).metrics


# ----------------------------------------------------------------------------------------------
# the page (Streamlit AppTest)
def test_page_cell_and_attack(app_env, pipe):
    pytest.importorskip("streamlit")
    at = _apptest().run()
    assert not at.exception
    assert not _texts(at, "error")
    c0 = logic.clean_cell(pipe, 0)
    md = _texts(at, "markdown")
    assert f"Predicted label: **{c0.predicted}** (probability {c0.confidence:.2f})" in md
    assert f"True label: **{c0.true_label}**" in md
    assert any("Turn on **Attack this cell**" in t for t in _texts(at, "info"))
    assert len(_charts(at)) == 2  # clean probabilities + UMAP

    at.number_input(key="cell_index").set_value(5).run()
    at.slider(key="eps").set_value(0.5).run()
    at.toggle(key="attack_on").set_value(True).run()
    assert not at.exception
    c, a = logic.clean_cell(pipe, 5), logic.attack_cell(pipe, 5, eps=0.5)
    md = _texts(at, "markdown")
    assert f"Cell **5** (`{c.name}`)" in md
    assert f"Predicted label: **{c.predicted}** (probability {c.confidence:.2f})" in md
    assert f"Predicted label: **{a.predicted}** (probability {a.confidence:.2f})" in md
    outcome = _texts(at, "warning") if a.success else _texts(at, "info")
    assert any(t.startswith("Attack succeeded" if a.success else "Attack failed") for t in outcome)
    verdicts = [t for t in _texts(at, "success") + _texts(at, "error") if t.startswith("Detector verdict")]
    assert sorted(verdicts) == sorted(
        [f"Detector verdict: {c.verdict(pipe.threshold)}", f"Detector verdict: {a.verdict(pipe.threshold)}"]
    )
    assert len(_charts(at)) == 3
    assert any("Cell 5" in t and "computed in" in t for t in _texts(at, "caption"))

    # a threshold of 0 flags every cell, the clean one included
    at.slider(key="threshold").set_value(0.0).run()
    assert _texts(at, "error").count("Detector verdict: adversarial") == 2

    # the gene vector
    at.toggle(key="show_genes").set_value(True).run()
    table = at.dataframe[0].value
    assert list(table.columns) == ["gene", "clean", "attacked", "change"]
    assert len(table) == len(pipe.genes)


def test_page_pick_by_label_and_evaluate(app_env, pipe):
    pytest.importorskip("streamlit")
    at = _apptest().run()
    label = pipe.labels[10]
    at.radio(key="pick_mode").set_value("label").run()
    at.selectbox(key="cell_label").set_value(label).run()
    at.selectbox(key=f"cell_of_{label}").set_value(10).run()
    assert not at.exception
    assert f"Cell **10** (`{pipe.obs_names[10]}`)" in _texts(at, "markdown")
    assert f"True label: **{label}**" in _texts(at, "markdown")
    assert f"Split: {pipe.split[10]}; detector role: {pipe.roles[10]}" in _texts(at, "caption")
    # held-out cells only: every offered cell is a test-split cell
    at.checkbox(key="only_test").check().run()
    offered = at.selectbox(key=f"cell_of_{label}").options
    assert offered
    assert all(pipe.split[int(o.split(":")[0])] == "test" for o in offered)

    at.button(key="run_eval").click().run()
    assert not at.exception
    assert not _texts(at, "error")
    tables = [df.value for df in at.dataframe]
    evals = [t for t in tables if "metric" in t and "flip rate" in set(t["metric"])]
    assert evals, tables
    metrics = dict(zip(evals[0]["metric"], evals[0]["value"], strict=True))
    assert set(logic.SHOWN.values()) <= set(metrics)


def test_page_without_arguments_uses_the_cached_demo(monkeypatch, app_env, app_pipeline_dir, builds):
    """No --adata: the page opens the demo pipeline from the cache folder (reused, not rebuilt)."""
    pytest.importorskip("streamlit")
    app_env(None, None)
    monkeypatch.setenv("SCADVERSARIAL_APP_CACHE_DIR", str(app_pipeline_dir))
    monkeypatch.setenv("SCADVERSARIAL_APP_EPOCHS", str(EPOCHS))
    before = _identity(app_pipeline_dir)
    at = _apptest().run()
    assert builds == []
    assert _identity(app_pipeline_dir) == before
    assert not at.exception
    assert not _texts(at, "error")
    assert any("demo pipeline on pbmc68k_reduced" in t for t in _texts(at, "caption"))


@pytest.mark.parametrize("case", ["missing file", "corrupt file", "no classifier", "models missing", "wrong genes"])
def test_page_shows_errors_not_tracebacks(app_env, broken, case):
    pytest.importorskip("streamlit")
    path, models, message = broken[case]
    app_env(path, models)
    at = _apptest().run()
    assert not at.exception  # no traceback element
    errors = _texts(at, "error")
    assert len(errors) == 1
    assert errors[0].startswith("Could not open the pipeline")
    assert message in errors[0]


# ----------------------------------------------------------------------------------------------
# launch
def test_command_line():
    cmd = sad_app.command("x/adata.h5ad", "x/models", 8765, address="127.0.0.1", headless=True)
    assert cmd[1:4] == ["-m", "streamlit", "run"]
    assert cmd[4] == SCRIPT
    assert cmd[cmd.index("--server.port") + 1] == "8765"
    assert "--server.headless" in cmd
    tail = cmd[cmd.index("--") + 1 :]
    assert tail[0] == "--adata"
    assert Path(tail[1]).is_absolute()
    assert tail[1].endswith("x/adata.h5ad")
    assert tail[2] == "--models"
    assert tail[3].endswith("x/models")
    assert "--" not in sad_app.command()


def test_launch_without_streamlit(monkeypatch, capsys):
    monkeypatch.setattr(sad_app, "streamlit_available", lambda: False)
    assert sad_app.launch() == 1
    assert "pip install 'scadversarial[app]'" in capsys.readouterr().err


APP_ARGS = [
    [],
    ["--adata", "a.h5ad", "--port", "9000", "--headless"],
    ["--adata", "a.h5ad", "--models", "m", "--address", "0.0.0.0", "--cache-dir", "c", "--epochs", "5"],
]


@pytest.mark.parametrize("argv", APP_ARGS)
def test_both_entry_points_launch_the_same(monkeypatch, argv):
    """``python -m scadversarial.app ARGS`` and ``scadversarial app ARGS`` start the same app."""
    seen = []
    monkeypatch.setattr(sad_app, "launch", lambda *a, **k: seen.append((a, k)) or 0)
    assert sad_app.main(argv) == 0
    assert cli.main(["app", *argv]) == 0
    assert seen[0] == seen[1]


def test_module_main_passes_every_option(monkeypatch):
    seen = {}
    monkeypatch.setattr(sad_app, "launch", lambda *a, **k: seen.update(args=a, kwargs=k) or 0)
    assert sad_app.main(APP_ARGS[2]) == 0
    assert seen["args"] == ("a.h5ad", "m", None)
    assert seen["kwargs"] == {
        "address": "0.0.0.0",
        "headless": False,
        "cache_dir": "c",
        "max_epochs": 5,
    }


def test_both_entry_points_share_one_help(capsys):
    helps = []
    for run in (lambda: sad_app.main(["--help"]), lambda: cli.main(["app", "--help"])):
        with pytest.raises(SystemExit) as exit_info:
            run()
        assert exit_info.value.code == 0
        helps.append(capsys.readouterr().out)
    assert helps[0] == helps[1]
    for option in ("--adata", "--models", "--port", "--address", "--headless", "--cache-dir", "--epochs"):
        assert option in helps[0]
    with pytest.raises(SystemExit):
        sad_app.main(["--no-such-option"])
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err
