"""Reliability: shipped test data, inputs that used to give silent or confusing answers, model files.

Each test here failed before the fix it guards (issue 15).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

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
        ["git", "check-ignore", *(f"tests/data/{n}" for n in expected)], cwd=REPO, capture_output=True, text=True
    )
    assert ignored.stdout == "", f"git ignores shipped test data: {ignored.stdout}"
    assert "Provenance" in (DATA / "README.md").read_text()


def test_nothing_reads_data_beside_the_repository():
    """No test, tutorial or benchmark reads ``../shared``: a fresh clone has everything it needs."""
    sibling = re.compile(r"""(\.\./)+shared/|parent\S*\s*/\s*["']shared["']|["']shared["']\s*/\s*["']data["']""")
    files = [*REPO.glob("tests/*.py"), *REPO.glob("tutorials/*.ipynb"), *REPO.glob("tutorials/*.py")]
    files += [*REPO.glob("benchmarks/*.py")]
    offenders = [str(f.relative_to(REPO)) for f in files if f != Path(__file__) and sibling.search(f.read_text())]
    assert offenders == []


def test_data_fixtures_read_the_shipped_copy(pbmc3k_path, lr_workload):
    assert pbmc3k_path.resolve() == (DATA / "pbmc3k.h5ad").resolve()
    assert lr_workload["X"].shape == (2638, 2000)
    assert len(lr_workload["classes"]) == 9
