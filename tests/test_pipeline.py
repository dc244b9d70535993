"""``scadversarial run``'s threat benchmark: the seed threat's row beside the threats the detector was not trained on."""

from __future__ import annotations

import json

import numpy as np
import pytest

import scadversarial as sad
from scadversarial._pipeline import HONEST_NOTE, format_report, threat_benchmark

N_CELLS = 600  # every Seurat type in each split, small enough for seconds
N_GENES = 300
LABELS = "seurat_cell_type"


@pytest.fixture(scope="module")
def small3k(pbmc3k_raw):
    """A PBMC3k subset with counts through the default pipeline (short training), and its threat benchmark."""
    rng = np.random.default_rng(0)
    a = pbmc3k_raw[np.sort(rng.choice(pbmc3k_raw.n_obs, N_CELLS, replace=False))].copy()
    sad.pp.preprocess(a, n_top_genes=N_GENES)
    sad.pp.split(a, LABELS)
    sad.tl.train_classifier(a, LABELS, max_epochs=10)
    sad.tl.attack(a, eps=(0.1,))
    sad.tl.train_detector(a, config=sad.detection.DetectorConfig(triplet_epochs=2, epochs=4))
    return a, threat_benchmark(a, seed_eps=0.1)


def test_threat_benchmark_with_counts(small3k):
    a, rep = small3k
    rows = rep["rows"]
    assert [r["threat"] for r in rows] == [
        "clean",
        "seed PGD eps=0.1",
        "observed PGD eps=0.15",
        "expressed log 0.5",
        "counts +-1 UMI",
        "counts +-1 UMI inside the checks",
        "one gene at the clip (knows the rules)",
        "one gene in counts (knows the rules)",
        "detector-aware log 0.5",
        "thinning 50%",
    ]
    assert rep["not_available"] == {}
    assert rep["note"] == HONEST_NOTE
    assert {r["detector"] for r in rows} == {"sad"}
    assert {(r["space"], r["constraint"]) for r in rows if r["kind"] == "attack"} >= {
        ("scaled", "none"),
        ("scaled", "observed"),
        ("log", "expressed"),
        ("counts", "counts"),
    }
    json.dumps(rep, allow_nan=False)  # metrics that do not apply are None, so report.json is strict JSON
    n_test = int((a.obs["sad_split"] == "test").sum())
    for r in rows:
        assert r["n_cells"] == n_test
        if r["kind"] == "attack":
            assert 0 <= r["evasion"] <= r["flip_rate"] <= 1
            assert r["evasion"] >= r["flip_rate"] - r["flagged"] - 1e-12  # flipped and not flagged
            assert 0 <= r["auroc"] <= 1
            assert r["pred_changed"] is None
    benign = rows[-1]
    assert benign["kind"] == "benign"
    assert 0 <= benign["pred_changed"] <= 1
    assert benign["evasion"] is None
    assert len(sad.get.benchmark_table(a)) == len(rows)  # the full table stays on the AnnData (and in out/adata.h5ad)


def test_report_prints_threat_rows_beside_the_seed_auroc(small3k):
    a, rep = small3k
    report = {
        "data": {"n_cells": a.n_obs, "n_genes": a.n_vars, "labels_key": LABELS},
        "classifier": {"accuracy": {"test": 0.9}},
        "attack": {"flip_rate": {"sad_pgd_eps0.1": 0.5}, "flip_rate_any": 0.5},
        "detection": [{"cells": "pooled", "auroc": 1.0}],
        "threats": rep,
        "timings_s": {"threats": 1.0},
    }
    text = format_report(report)
    lines = text.splitlines()
    seed = next(i for i, x in enumerate(lines) if x.strip().startswith("seed PGD eps=0.1"))
    for name in (
        "observed PGD eps=0.15",
        "expressed log 0.5",
        "counts +-1 UMI",
        "counts +-1 UMI inside the checks",
        "one gene at the clip (knows the rules)",
        "one gene in counts (knows the rules)",
        "detector-aware log 0.5",
        "thinning 50%",
    ):
        assert any(x.strip().startswith(name) for x in lines[seed + 1 :]), name
        # the threat column fits the longest name: its detector column stays apart
        assert any(x.strip().startswith(name + "  ") and " sad " in x for x in lines[seed + 1 :]), name
    assert HONEST_NOTE in text
    assert "not available" not in text
