from __future__ import annotations

import json
import subprocess
import sys

import anndata as ad
import numpy as np

import scadversarial as sad
from scadversarial.cli import main


def test_cli_run_end_to_end(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "scadversarial.cli", "run", "--data", "pbmc68k_reduced", "--out", str(out)]
    rc = subprocess.run([*cmd, "--epochs", "10", "--no-progress"], capture_output=True, text=True, check=False)
    assert rc.returncode == 0, rc.stderr
    assert "classifier accuracy" in rc.stdout
    assert "PGD flip rate" in rc.stdout
    assert "detector on held-out test cells" in rc.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["classifier"]["accuracy"]["test"] > 0.6
    a = ad.read_h5ad(out / "adata.h5ad")
    assert "sad_pgd_eps0.1" in a.layers
    assert (out / "models" / "classifier" / "model.safetensors").is_file()
    assert (out / "models" / "detector" / "model.safetensors").is_file()
    pooled = [r for r in report["detection"] if r["cells"] == "pooled"][0]
    assert pooled["auroc"] > 0.9
    # the seed threat's row beside the threats the detector was not trained on, and what is missing here
    threats = [r["threat"] for r in report["threats"]["rows"]]
    assert threats == [
        "clean",
        "seed PGD eps=0.1",
        "observed PGD eps=0.15",
        "expressed log 0.5",
        "one gene at the clip (knows the rules)",
        "detector-aware log 0.5",
    ]
    assert "counts: not available for this data" in rc.stdout  # pbmc68k_reduced has no counts
    assert "trained on the seed threat" in rc.stdout
    assert "what they miss" in rc.stdout
    assert "just inside them" in rc.stdout  # the count attacker the rows leave out is named
    assert sad.get.benchmark_table(a)["threat"].tolist() == threats  # the full table is in out/adata.h5ad


def test_cli_bad_data_is_a_clear_error(capsys, tmp_path):
    rc = main(["run", "--data", str(tmp_path / "missing.h5ad"), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "neither" in capsys.readouterr().err


def test_cli_audit_refuses_pickles_and_bad_specs(capsys, tmp_path):
    data = tmp_path / "a.h5ad"
    ad.AnnData(np.ones((3, 2), dtype=np.float32)).write_h5ad(data)
    rc = main(["audit", "--data", str(data), "--classifier", "model.pkl", "--groupby", "g", "--out", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "pickles are refused" in err
    assert "module:function" in err
    rc = main(["audit", "--data", str(data), "--classifier", "nothing", "--groupby", "g", "--out", str(tmp_path)])
    assert rc == 2
    assert "neither a sad model directory nor an import path" in capsys.readouterr().err


def test_cli_run_baselines_flag_reaches_the_pipeline():
    from scadversarial.cli import build_parser

    args = build_parser().parse_args(["run", "--baselines"])
    assert args.baselines is True
    assert build_parser().parse_args(["run"]).baselines is False
