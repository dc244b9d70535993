"""Shared fixtures: real data (pbmc68k_reduced, PBMC3k) and a trained pipeline built once per session."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import matplotlib
import numpy as np
import pytest

import scadversarial as sad

matplotlib.use("Agg")
sad.settings.progress = False

TEST_DATA = Path(__file__).resolve().parent / "data"  # shipped with the repository (see its README)


def shipped(name: str) -> Path:
    """Path of a file or folder in ``tests/data``; fails the test (never skips) when it is missing."""
    path = TEST_DATA / name
    if not path.exists():
        pytest.fail(
            f"Test data {path} is missing: it ships with the repository; restore it with `git checkout tests/data`."
        )
    return path


@pytest.fixture(scope="session")
def pbmc3k_path() -> Path:
    """Path of the real PBMC3k counts with Seurat labels (``tests/data/pbmc3k.h5ad``)."""
    return shipped("pbmc3k.h5ad")


@pytest.fixture(scope="session")
def pbmc3k_raw(pbmc3k_path) -> ad.AnnData:
    """PBMC3k counts (2,638 cells); copy before modifying."""
    return sad.datasets.pbmc3k(pbmc3k_path)


@pytest.fixture(scope="session")
def pbmc68k() -> ad.AnnData:
    """pbmc68k_reduced, log-normalized; copy before modifying."""
    return sad.datasets.pbmc68k_reduced()


@pytest.fixture(scope="session")
def pipeline68k(pbmc68k) -> ad.AnnData:
    """pbmc68k_reduced preprocessed, pseudo-labelled, split, classifier trained and PGD-attacked.

    Session-scoped: tests must ``.copy()`` it before writing to it.
    """
    a = pbmc68k.copy()
    sad.pp.preprocess(a)
    sad.pp.pseudo_labels(a, n_clusters=6)
    sad.pp.split(a)
    sad.tl.train_classifier(a, max_epochs=30)
    # the seed step 0.02 at both budgets: ten steps move a value at most 0.2, so the eps 0.5 layer holds cells
    # near the boundary, where confidence-based baselines still see them (a full eps 0.5 attack leaves them
    # confidently wrong)
    sad.tl.attack(a, eps=(0.1, 0.5), alpha=0.02)
    return a


@pytest.fixture(scope="session")
def pipeline3k(pbmc3k_raw) -> ad.AnnData:
    """PBMC3k with Seurat labels, preprocessed (2,000 HVGs), split and classifier trained.

    Session-scoped: tests must ``.copy()`` it before writing to it.
    """
    a = pbmc3k_raw.copy()
    sad.pp.preprocess(a)
    sad.pp.split(a, "seurat_cell_type")
    sad.tl.train_classifier(a, "seurat_cell_type", max_epochs=20)
    return a


@pytest.fixture(scope="session")
def lr_workload():
    """The adverSCarial benchmark workload: PBMC3k log-normalized HVGs and a fixed logistic regression.

    Returns a dict with ``X`` (cells x genes, float32), ``genes``, ``labels`` (Seurat cell types),
    ``cells``, ``classes``, ``W`` (genes x classes) and ``b`` (the classifier ``softmax(X @ W + b)``),
    ``proba`` (that classifier as an opaque float64 callable, which black-box searches cannot look
    into) and ``cgd_order`` (gene indices of the CGD runs).
    """
    import pandas as pd

    lr_dir = shipped("lr_oracle")
    X = pd.read_csv(lr_dir / "X_lognorm_hvg.csv.gz", index_col=0, float_precision="round_trip")
    coef = pd.read_csv(lr_dir / "lr_coef.csv.gz", index_col=0)
    inter = pd.read_csv(lr_dir / "lr_intercept.csv", index_col=0)["intercept"]
    classes = [c for c in (lr_dir / "lr_classes.txt").read_text().split("\n") if c]
    labels = pd.read_csv(lr_dir / "labels.tsv", sep="\t", index_col=0).loc[X.index, "seurat_cell_type"].astype(str)
    order = (lr_dir / "cgd_gene_order.txt").read_text().split()
    W = np.ascontiguousarray(coef.loc[classes, X.columns].to_numpy().T)
    b = inter.loc[classes].to_numpy()

    def lr_proba(Z):
        z = np.asarray(Z, dtype=np.float64) @ W + b
        z -= z.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)

    return {
        "X": X.to_numpy(np.float32),
        "genes": X.columns.to_numpy(str),
        "cells": X.index.to_numpy(str),
        "labels": labels.to_numpy(),
        "classes": classes,
        "W": W,
        "b": b,
        "proba": lr_proba,
        "cgd_order": X.columns.get_indexer(order),
    }
