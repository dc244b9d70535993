"""The bad-input matrix: every public pp/tl step against the same list of bad inputs.

A bad input must give a clear error (a ``ValueError``/``KeyError``/``TypeError`` whose message names
the problem and a fix) and leave the AnnData unchanged; a valid variant (another dtype, a dense or
sparse matrix, unused categories) must simply work.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData

import scadversarial as sad

LABELS = "seurat_cell_type"
CELLS_PER_CLASS = 25  # 4 classes x 25 cells: every class splits 60/20/20, and training takes a second
N_GENES = 300
FIX = re.compile(r"`[^`]+`|\b(pass|use|run|drop|merge|load|remove|set|choose|preprocess|upgrade|restore)\b", re.I)


def small_counts(pbmc3k_raw: AnnData) -> AnnData:
    """100 PBMC3k cells (the 4 largest Seurat classes) x the 300 most expressed genes, raw counts."""
    obs = pbmc3k_raw.obs
    top = obs[LABELS].value_counts().index[:4]
    cells = obs[obs[LABELS].isin(top)].groupby(LABELS, observed=True).head(CELLS_PER_CLASS).index
    a = pbmc3k_raw[cells].copy()
    genes = np.argsort(-np.asarray(a.X.sum(0)).ravel(), kind="stable")[:N_GENES]
    a = a[:, np.sort(genes)].copy()
    a.obs[LABELS] = a.obs[LABELS].astype(str).astype("category")
    return a


@pytest.fixture(scope="module")
def counts_base(pbmc3k_raw) -> AnnData:
    return small_counts(pbmc3k_raw)


@pytest.fixture(scope="module")
def prepped_base(counts_base) -> AnnData:
    """Preprocessed, split, with a small trained classifier, an FGSM layer and a detector."""
    a = counts_base.copy()
    sad.pp.preprocess(a)
    sad.pp.split(a, LABELS)
    sad.tl.train_classifier(
        a, LABELS, max_epochs=2, config=sad.models.training.TrainingConfig(hidden=(16,), dropout=(0.1,))
    )
    sad.tl.attack(a, "fgsm", eps=0.1)
    sad.tl.train_detector(a, ATTACK, config=sad.detection.DetectorConfig(triplet_epochs=1, epochs=2))
    return a


# --- damages: each returns the AnnData to call (a modified copy, or a backed file) --------------


def _set_entry(value: float) -> Callable[[AnnData, Path], AnnData]:
    def damage(a: AnnData, _: Path) -> AnnData:
        X = a.X.toarray() if sp.issparse(a.X) else np.array(a.X)
        X = X.astype(np.float32)
        X[1, 2] = value
        a.X = X
        return a

    return damage


def _empty(a: AnnData, _: Path) -> AnnData:
    return a[:0].copy()


def _duplicate_names(a: AnnData, _: Path) -> AnnData:
    names = a.var_names.tolist()
    names[4] = names[2]
    a.var_names = names
    return a


def _backed(a: AnnData, tmp: Path) -> AnnData:
    a.write_h5ad(tmp / "backed.h5ad")
    return ad.read_h5ad(tmp / "backed.h5ad", backed="r")


def _nan_in_layer(a: AnnData, _: Path) -> AnnData:
    layer = np.array(a.layers[ATTACK_LAYER], dtype=np.float32)
    layer[1, 2] = np.nan
    a.layers[ATTACK_LAYER] = layer
    return a


def _one_cell_class(a: AnnData, _: Path) -> AnnData:
    """A class of one cell; after a split, that cell is outside the training split (a class never trained on)."""
    labels = a.obs[LABELS].astype(str).to_numpy().copy()
    outside = np.flatnonzero(a.obs["sad_split"].astype(str).to_numpy() != "train") if "sad_split" in a.obs else [0]
    labels[outside[0]] = "lonely"
    a.obs[LABELS] = pd.Categorical(labels)
    return a


def _drop_gene(a: AnnData, _: Path) -> AnnData:
    return a[:, 1:].copy()


def _float64(a: AnnData, _: Path) -> AnnData:
    a.X = (a.X.toarray() if sp.issparse(a.X) else np.asarray(a.X)).astype(np.float64)
    return a


def _int32_dense(a: AnnData, _: Path) -> AnnData:
    a.X = a.X.toarray().astype(np.int32)
    return a


def _csc(a: AnnData, _: Path) -> AnnData:
    a.X = sp.csc_matrix(a.X)
    return a


def _unused_categories(a: AnnData, _: Path) -> AnnData:
    a.obs[LABELS] = a.obs[LABELS].cat.add_categories(["never seen"])
    return a


def _keep(a: AnnData, _: Path) -> AnnData:
    return a


# --- the steps under test -----------------------------------------------------------------------

ATTACK = "sad_fgsm"
ATTACK_LAYER = "sad_fgsm_eps0.1"


def _first_label(a: AnnData, key: str) -> str:
    """A target cluster for the black-box attacks (any name when the key is missing: the key is checked first)."""
    return str(a.obs[key].iloc[0]) if key in a.obs and a.n_obs else "none"


STEPS: dict[str, Callable[..., object]] = {
    "preprocess": sad.pp.preprocess,
    "pseudo_labels": lambda a, **kw: sad.pp.pseudo_labels(a, n_clusters=3, **kw),
    "split": lambda a, labels_key=LABELS: sad.pp.split(a, labels_key),
    "train_classifier": lambda a, labels_key=LABELS: sad.tl.train_classifier(
        a, labels_key, max_epochs=1, config=sad.models.training.TrainingConfig(hidden=(8,), dropout=(0.1,))
    ),
    "predict": sad.tl.predict,
    "attack": lambda a, **kw: sad.tl.attack(a, "fgsm", eps=0.1, **kw),
    "single_gene_attack": lambda a, labels_key=LABELS: sad.tl.single_gene_attack(
        a, groupby=labels_key, target=_first_label(a, labels_key)
    ),
    "max_change_attack": lambda a, labels_key=LABELS: sad.tl.max_change_attack(
        a, groupby=labels_key, target=_first_label(a, labels_key)
    ),
    "train_detector": lambda a: sad.tl.train_detector(
        a, ATTACK, config=sad.detection.DetectorConfig(triplet_epochs=1, epochs=2)
    ),
    "detect": lambda a, layer=ATTACK_LAYER: sad.tl.detect(a, layer),
    "evaluate": lambda a, labels_key=LABELS: sad.tl.evaluate(a, ATTACK, labels_key=labels_key, detector_key=None),
}
ON_COUNTS = ("preprocess",)
BLACK_BOX = ("single_gene_attack", "max_change_attack")
READS_X = ON_COUNTS + ("pseudo_labels", "train_classifier", "predict", "attack", *BLACK_BOX, "train_detector")
ON_PREPPED = (*READS_X[1:], "detect", "split", "evaluate")  # detect reads its layer, split and evaluate .obs
TAKES_LABELS = ("split", "train_classifier", *BLACK_BOX, "evaluate")
READ_BACKED = (
    "split",
    "train_classifier",
    "predict",
    "attack",
    "train_detector",
    "detect",
)  # steps that read a backed X in chunks (issue 16)


@dataclass(frozen=True)
class Case:
    """One bad (or valid) input: how to make it, which steps take it, what the error must say."""

    name: str
    damage: Callable[[AnnData, Path], AnnData]
    steps: tuple[str, ...]
    problem: str | None  # regex the message must match; None: a valid input, the step must work
    kwargs: dict = field(default_factory=dict)


CASES = [
    Case("nan", _set_entry(np.nan), READS_X, r"NaN or infinite"),
    Case("inf", _set_entry(np.inf), READS_X, r"NaN or infinite"),
    Case("nan in a layer", _nan_in_layer, ("predict", "detect"), r"NaN or infinite", {"layer": ATTACK_LAYER}),
    Case("negative counts", _set_entry(-3.0), ON_COUNTS, r"negative"),
    Case("empty", _empty, ON_COUNTS + ON_PREPPED, r"empty"),
    Case("duplicate var_names", _duplicate_names, ON_COUNTS + ON_PREPPED, r"duplicate"),
    Case("backed", _backed, tuple(s for s in ON_COUNTS + ON_PREPPED if s not in READ_BACKED), r"backed"),
    Case("backed", _backed, READ_BACKED, None),
    Case("missing layer", _keep, ("preprocess",), r"'nope'", {"layer": "nope"}),
    Case("missing layer", _keep, ("predict", "detect"), r"'nope'", {"layer": "nope"}),
    Case("missing labels key", _keep, TAKES_LABELS, r"'nope'", {"labels_key": "nope"}),
    Case("missing gene", _drop_gene, ("predict", "attack", "detect"), r"missing"),
    Case("1-cell class", _one_cell_class, ("split", "train_classifier"), r"lonely"),
    Case("float64", _float64, (*READS_X, "detect"), None),
    Case("int32 dense counts", _int32_dense, ON_COUNTS, None),
    Case("csc counts", _csc, ON_COUNTS, None),
    Case("unused categories", _unused_categories, TAKES_LABELS, None),
]
# Known gaps in modules this test's author does not own; strict, so a fix shows up as XPASS(strict).
KNOWN_GAPS: dict[tuple[str, str], str] = {}
PARAMS = [
    pytest.param(
        c,
        s,
        id=f"{c.name}-{s}",
        marks=[pytest.mark.xfail(strict=True, reason=KNOWN_GAPS[c.name, s])] if (c.name, s) in KNOWN_GAPS else [],
    )
    for c in CASES
    for s in c.steps
]


def snapshot(a: AnnData) -> tuple:
    """Everything a step could write, in comparable form."""
    X = a.X if not a.isbacked else None
    X = X.toarray() if sp.issparse(X) else (None if X is None else np.array(X, copy=True))
    return (
        a.shape,
        X,
        a.obs.copy(),
        list(a.var.columns),
        sorted(a.layers),
        sorted(a.obsm),
        a.raw is None,
        repr(sorted(a.uns.get("sad", {}))),
    )


def assert_unchanged(a: AnnData, snap: tuple) -> None:
    now = snapshot(a)
    assert now[0] == snap[0]
    np.testing.assert_array_equal(now[1], snap[1])
    pd.testing.assert_frame_equal(now[2], snap[2])
    assert now[3:] == snap[3:]


@pytest.mark.parametrize(("case", "step"), PARAMS)
def test_bad_input(case: Case, step: str, counts_base, prepped_base, tmp_path):
    base = counts_base if step in ON_COUNTS else prepped_base
    a = case.damage(base.copy(), tmp_path)
    if case.problem is None:
        STEPS[step](a, **case.kwargs)
        return
    snap = snapshot(a)
    with pytest.raises((ValueError, KeyError, TypeError)) as err:
        STEPS[step](a, **case.kwargs)
    msg = err.value.args[0] if err.value.args else ""
    assert re.search(case.problem, msg), f"the message does not name the problem: {msg}"
    assert FIX.search(msg), f"the message names no fix: {msg}"
    assert_unchanged(a, snap)
