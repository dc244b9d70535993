"""Reliability: shipped test data, inputs that used to give silent or confusing answers, model files.

Each test here failed before the fix it guards (issue 15).
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import subprocess
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import scadversarial as sad
from scadversarial._settings import logger
from scadversarial._validate import check_choice, get_matrix
from scadversarial.models import load_model, save_model
from scadversarial.models.classifier import CellClassifier

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
LR_FILES = (
    "README.md",
    "X_lognorm_hvg.csv.gz",
    "cells.txt",
    "cgd_gene_order.txt",
    "genes_hvg_order.txt",
    "labels.tsv",
    "lr_classes.txt",
    "lr_coef.csv.gz",
    "lr_intercept.csv",
)


# --- 1. the test data ship with the repository --------------------------------------------------


def test_test_data_are_shipped_and_tracked():
    """PBMC3k, its provenance note and the lr_oracle workload sit in tests/data and git does not ignore them."""
    expected = ["pbmc3k.h5ad", "README.md"] + [f"lr_oracle/{f}" for f in LR_FILES]
    for name in expected:
        assert (DATA / name).is_file(), f"tests/data/{name} is missing"
    ignored = subprocess.run(
        ["git", "check-ignore", *(f"tests/data/{n}" for n in expected)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,  # check-ignore exits 1 when no path is ignored, the expected outcome
    )
    assert ignored.stdout == "", f"git ignores shipped test data: {ignored.stdout}"
    assert "Provenance" in (DATA / "README.md").read_text()


def test_nothing_reads_data_beside_the_repository():
    """No test or tutorial reads the sibling ``shared`` folder: a fresh clone has everything it needs."""
    sibling = re.compile(r"""(\.\./)+shared/|parent\S*\s*/\s*["']shared["']|["']shared["']\s*/\s*["']data["']""")
    files = [*REPO.glob("tests/*.py"), *REPO.glob("tutorials/*.ipynb"), *REPO.glob("tutorials/*.py")]
    offenders = [str(f.relative_to(REPO)) for f in files if f != Path(__file__) and sibling.search(f.read_text())]
    assert offenders == []


def test_data_fixtures_read_the_shipped_copy(pbmc3k_path, lr_workload):
    assert pbmc3k_path.resolve() == (DATA / "pbmc3k.h5ad").resolve()
    assert lr_workload["X"].shape == (2638, 2000)
    assert len(lr_workload["classes"]) == 9


# --- 2. duplicate var_names ----------------------------------------------------------------------


@pytest.fixture
def counts(pbmc3k_raw):
    """200 PBMC3k cells x 400 genes, raw counts (a private copy)."""
    return pbmc3k_raw[:200, :400].copy()


def test_duplicate_var_names_clear_error_before_writing(counts):
    names = counts.var_names.tolist()
    names[7] = names[3]
    counts.var_names = names
    before = (counts.shape, sorted(counts.layers), list(counts.var.columns), dict(counts.uns))
    with pytest.raises(ValueError, match=r"duplicate.*var_names_make_unique") as err:
        sad.pp.preprocess(counts)
    assert repr(names[3]) in str(err.value)
    assert counts.raw is None
    assert (counts.shape, sorted(counts.layers), list(counts.var.columns), dict(counts.uns)) == before
    with pytest.raises(ValueError, match="var_names_make_unique"):
        sad.pp.split(counts, "seurat_cell_type")
    assert "sad_split" not in counts.obs


# --- 3. backed AnnData ---------------------------------------------------------------------------


def test_backed_anndata_clear_error(counts, tmp_path):
    path = tmp_path / "counts.h5ad"
    counts.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    with pytest.raises(ValueError, match=r"backed.*copy=True.*read_elem_lazy"):
        sad.pp.preprocess(backed)
    assert backed.raw is None
    assert "sad" not in backed.uns
    # the shared matrix reader reads a backed matrix instead of failing on a 0-d array
    got = get_matrix(backed)
    np.testing.assert_array_equal(got, counts.X.toarray().astype(np.float32))
    assert sp.issparse(get_matrix(backed, dense=False))
    assert sad.pp.preprocess(backed, copy=True).n_obs == counts.n_obs  # the supported path named in the message


# --- 4. string options are validated -------------------------------------------------------------


def test_predict_unknown_missing_policy(pipeline68k):
    a = pipeline68k.copy()
    pred = a.obs["sad_pred"].copy()
    with pytest.raises(ValueError, match=r"missing='zero'.*'raise', 'fill'"):
        sad.tl.predict(a, missing="zero")
    assert a.obs["sad_pred"].equals(pred)


def test_check_choice():
    from typing import Literal

    assert check_choice("space", "log", ("scaled", "log")) == "log"
    assert check_choice("space", "log", Literal["scaled", "log"]) == "log"
    with pytest.raises(ValueError, match=r"space='logs' is not one of 'scaled', 'log'.*did you mean 'log'"):
        check_choice("space", "logs", Literal["scaled", "log"])
    with pytest.raises(ValueError, match="not one of"):
        check_choice("space", ["log"], ("scaled", "log"))  # unhashable values are refused, not a TypeError


# --- 5. split honours its own minimum class size -------------------------------------------------


@pytest.mark.parametrize("n_small", [3, 4, 5])
def test_split_small_classes(pbmc68k, n_small):
    """A class with as few cells as split's check allows (one per part) is split, one cell or more per part."""
    a = pbmc68k.copy()
    labels = a.obs["bulk_labels"].astype(str).to_numpy().copy()
    labels[:n_small] = "tiny"
    labels[n_small:][labels[n_small:] == "tiny"] = "other"
    a.obs["lab"] = labels
    sad.pp.split(a, "lab")
    tab = a.obs.groupby(["lab", "sad_split"], observed=False).size().unstack()
    assert (tab.loc["tiny"] >= 1).all(), tab.loc["tiny"]
    assert tab.loc["tiny"].sum() == n_small
    frac = a.obs["sad_split"].value_counts(normalize=True)
    assert abs(frac["train"] - 0.6) < 0.02
    assert abs(frac["val"] - 0.2) < 0.02
    b = pbmc68k.copy()
    b.obs["lab"] = labels
    sad.pp.split(b, "lab")
    assert a.obs["sad_split"].equals(b.obs["sad_split"])  # reproducible


# --- 6. a typo in a label column -----------------------------------------------------------------


def test_label_key_typo_lists_close_matches(pbmc68k):
    a = pbmc68k.copy()
    with pytest.raises(KeyError, match=r"bulk_label.*missing.*[Dd]id you mean.*'bulk_labels'") as err:
        sad.pp.split(a, "bulk_label")
    assert "pseudo_labels" not in str(err.value)
    with pytest.raises(KeyError, match=r"[Dd]id you mean.*'bulk_labels'") as err:
        sad.pp.split(a, "bulk_Labels")  # case slips too
    assert "pseudo_labels" not in str(err.value)
    with pytest.raises(KeyError, match=r"'sad_label'.*sad\.pp\.pseudo_labels"):
        sad.pp.split(a)  # the default key: say which function writes it
    assert "sad_split" not in a.obs


# --- 7. sad.settings.verbosity reaches the logger ------------------------------------------------


@pytest.fixture
def verbosity():
    """Restores the verbosity after the test."""
    before = sad.settings.verbosity
    yield
    sad.settings.verbosity = before


@pytest.mark.parametrize(
    ("value", "level"),
    [
        (0, logging.ERROR),
        (1, logging.WARNING),
        (2, logging.INFO),
        (3, logging.DEBUG),
        ("info", logging.INFO),
        ("DEBUG", logging.DEBUG),
        ("error", logging.ERROR),
    ],
)
def test_verbosity_sets_the_logger_level(verbosity, value, level):
    sad.settings.verbosity = value
    assert logger.getEffectiveLevel() == level
    assert int(sad.settings.verbosity) == [logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG].index(level)


def test_verbosity_rejects_unknown_values(verbosity):
    for bad in (4, -1, "loud", True, 2.0):
        with pytest.raises(ValueError, match=r"verbosity.*0.*error.*3.*debug"):
            sad.settings.verbosity = bad


def test_verbosity_info_messages_reach_the_user():
    """With no logging configured by the application, info messages are printed at verbosity 2 and not at 1."""
    import sys

    code = (
        "import scadversarial as sad\n"
        "a = sad.datasets.pbmc68k_reduced()\n"
        "sad.settings.verbosity = {v}\n"
        "sad.pp.preprocess(a, n_top_genes=200)\n"
    )
    quiet = subprocess.run([sys.executable, "-c", code.format(v=1)], capture_output=True, text=True, check=True)
    loud = subprocess.run([sys.executable, "-c", code.format(v=2)], capture_output=True, text=True, check=True)
    assert "preprocess: 700 cells x 200 genes" not in quiet.stderr
    assert "preprocess: 700 cells x 200 genes" in loud.stderr


# --- 8. model files ------------------------------------------------------------------------------


def small_classifier(seed: int) -> CellClassifier:
    """An untrained classifier with seeded weights (saving does not need a trained one)."""
    torch.manual_seed(seed)
    return CellClassifier([f"g{i}" for i in range(40)], ["a", "b", "c"], hidden=(16, 8), dropout=(0.1, 0.1))


def test_model_files_have_the_same_mode(tmp_path):
    d = save_model(small_classifier(0), tmp_path / "clf")
    umask = os.umask(0)
    os.umask(umask)
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in d.iterdir()}
    assert set(modes) == {"model.safetensors", "config.json", "genes.txt"}
    assert set(modes.values()) == {0o666 & ~umask}, modes
    assert stat.S_IMODE(d.stat().st_mode) == 0o777 & ~umask


def test_interrupted_save_keeps_the_previous_bundle(tmp_path):
    d = save_model(small_classifier(0), tmp_path / "clf")
    before = {f.name: f.read_bytes() for f in d.iterdir()}
    broken = small_classifier(1)
    broken.config["note"] = object()  # not JSON: the save fails after the weights are written
    with pytest.raises(TypeError):
        save_model(broken, d)
    assert {f.name: f.read_bytes() for f in d.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clf"]  # no temporary folder left behind
    again = small_classifier(2)
    save_model(again, d)  # a later save replaces the bundle
    torch.testing.assert_close(load_model(d).head.weight, again.head.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clf"]


def test_save_refuses_a_folder_of_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"notes\.txt.*new or empty"):
        save_model(small_classifier(0), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_weights_name_the_file(tmp_path, damage):
    d = save_model(small_classifier(0), tmp_path / "clf")
    weights = d / "model.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[-5] ^= 0xFF  # a weight changes; the file still parses
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"(?is)truncated or corrupt.*re-save") as err:
        load_model(d)
    assert str(weights) in str(err.value)
    if damage == "truncate":  # a bundle saved without the checksum: safetensors' own check, same message
        meta = json.loads((d / "config.json").read_text())
        del meta["weights_sha256"]
        (d / "config.json").write_text(json.dumps(meta))
        with pytest.raises(ValueError, match=r"(?is)truncated or corrupt.*SafetensorError.*re-save") as err:
            load_model(d)
        assert str(weights) in str(err.value)


def test_format_version(tmp_path):
    d = save_model(small_classifier(0), tmp_path / "clf")
    meta = json.loads((d / "config.json").read_text())
    assert meta["format_version"] == 1
    meta["format_version"] = 99
    (d / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"format_version 99.*newer.*pip install -U scadversarial") as err:
        load_model(d)
    assert str(d / "config.json") in str(err.value)
    del meta["format_version"]  # bundles written before the version was recorded still load
    meta.pop("weights_sha256", None)
    (d / "config.json").write_text(json.dumps(meta))
    torch.testing.assert_close(load_model(d).head.weight, small_classifier(0).head.weight)
