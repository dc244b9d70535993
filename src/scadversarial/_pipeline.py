"""The whole ``sad`` chain on one AnnData, as run by ``scadversarial run``."""

from __future__ import annotations

import json
import time
from pathlib import Path

from anndata import AnnData

from . import _keys, datasets, pp, tl
from ._settings import logger


def load_data(data: str, *, labels: str | None = None) -> tuple[AnnData, str | None]:
    """Load ``'pbmc68k_reduced'``, ``'pbmc3k'`` or an ``.h5ad`` path; return it and its default labels key."""
    if data == "pbmc68k_reduced":
        return datasets.pbmc68k_reduced(), labels
    if data == "pbmc3k":
        return datasets.pbmc3k(), labels
    path = Path(data)
    if not path.is_file():
        msg = f"--data {data!r} is neither 'pbmc68k_reduced', 'pbmc3k' nor an existing .h5ad file."
        raise FileNotFoundError(msg)
    import anndata as ad

    return ad.read_h5ad(path), labels


def run_pipeline(
    adata: AnnData,
    *,
    labels_key: str | None = None,
    out: str | Path | None = None,
    eps: tuple[float, ...] = (0.05, 0.1, 0.15),
    random_state: int = 0,
    max_epochs: int = 60,
) -> dict:
    """Preprocess, label, split, train the classifier, attack it with PGD, train the detector and evaluate.

    Parameters
    ----------
    adata
        Raw counts or log-normalized values.
    labels_key
        ``.obs`` column with cell types; ``None`` makes KMeans pseudo-labels.
    out
        Output directory for ``adata.h5ad``, ``models/`` and ``report.json`` (nothing written if ``None``).
    eps
        PGD budgets.
    random_state
        Seed of every step.
    max_epochs
        Classifier epochs cap.

    Returns
    -------
    The report (also ``out/report.json``).
    """
    timings: dict[str, float] = {}

    def step(name, fn, *args, **kwargs):
        t0 = time.perf_counter()
        logger.info("step: %s", name)
        res = fn(*args, **kwargs)
        timings[name] = round(time.perf_counter() - t0, 3)
        return res

    step("preprocess", pp.preprocess, adata)
    if labels_key is None:
        step("pseudo_labels", pp.pseudo_labels, adata, random_state=random_state)
        labels_key = _keys.OBS_LABEL
    step("split", pp.split, adata, labels_key, random_state=random_state)
    step("train_classifier", tl.train_classifier, adata, labels_key, random_state=random_state, max_epochs=max_epochs)
    step("attack", tl.attack, adata, "pgd", eps=eps, random_state=random_state)
    step("train_detector", tl.train_detector, adata, random_state=random_state)
    table = step("evaluate", tl.evaluate, adata)

    root = adata.uns[_keys.UNS]
    clf = root[_keys.STEP_CLASSIFIER]["metrics"]
    atk = root[_keys.STEP_ATTACKS]["sad_pgd"]["metrics"]
    report = {
        "data": {"n_cells": adata.n_obs, "n_genes": adata.n_vars, "labels_key": labels_key},
        "classifier": {
            "accuracy": dict(clf["accuracy"]),
            "test_per_class_accuracy": dict(clf["test"]["per_class_accuracy"]),
        },
        "attack": {
            "method": "pgd",
            "eps": list(eps),
            "flip_rate": dict(atk["flip_rate"]),
            "flip_rate_any": atk["flip_rate_any"],
        },
        "detection": _detection_rows(table),
        "timings_s": timings,
    }
    report = _to_builtin(report)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        tl.save_models(adata, out / "models")
        adata.write_h5ad(out / "adata.h5ad")
        (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def _detection_rows(table) -> list[dict]:
    """Detector metrics on held-out test cells, one row per attack layer and one pooled."""
    det = table[table["section"] == "detector"]
    wide = det.pivot_table(index="group", columns="metric", values="value", sort=False)
    return [{"cells": str(g), **{k: float(v) for k, v in row.items()}} for g, row in wide.iterrows()]


def _to_builtin(obj):
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _to_builtin(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | np.ndarray):
        return [_to_builtin(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def format_report(report: dict) -> str:
    """A short human-readable summary of a pipeline report."""
    lines = [
        f"cells x genes: {report['data']['n_cells']} x {report['data']['n_genes']}  (labels: {report['data']['labels_key']})"
    ]
    acc = report["classifier"]["accuracy"]
    lines.append("classifier accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()))
    fr = report["attack"]["flip_rate"]
    lines.append(
        "PGD flip rate: "
        + ", ".join(f"{k.rsplit('_', 1)[-1]} {v:.3f}" for k, v in fr.items())
        + f", any eps {report['attack']['flip_rate_any']:.3f}"
    )
    cols = ["auroc", "average_precision", "tpr_at_5fpr", "clean_accuracy", "adversarial_accuracy", "accuracy"]
    lines.append("detector on held-out test cells:")
    lines.append(f"  {'cells':18s}" + "".join(f"{c:>21s}" for c in cols))
    for row in report["detection"]:
        lines.append(f"  {row['cells']:18s}" + "".join(f"{row.get(c, float('nan')):21.3f}" for c in cols))
    lines.append("time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in report["timings_s"].items()))
    return "\n".join(lines)
