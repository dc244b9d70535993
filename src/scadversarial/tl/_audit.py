"""A robustness report for a user's own classifier: black-box overviews, signatures, white-box flip rates, figures.

:func:`audit` runs :func:`~scadversarial.tl.attack_overview` (single-gene and max-change, per cluster and
modification) on a gene budget, adds the white-box flip rates where the classifier has gradients (a sad
classifier), and writes an HTML page (figures embedded as PNG, also saved beside it) and a JSON summary.
The ``scadversarial audit`` command calls it.

Classifier specs for the command (:func:`load_classifier`) are safe to open: a sad model directory (JSON and
safetensors, no code), or a ``module:object`` import path of the user's own Python code (their code, run as
``python -c`` would). Pickled models (``.pkl``, ``.joblib``) are refused: unpickling a file runs code from it.
A CellTypist model is audited from Python (``sad.tl.audit(adata, classifier=model, ...)``), or through a
``module:function`` that builds it.
"""

from __future__ import annotations

import base64
import html
import importlib
import inspect
import io
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _keys
from .._settings import logger
from .._validate import check_adata, check_obs_key, get_matrix, h5ad_safe, uns_root
from ..attacks._protocol import ClassifierAdapter, ClassifierSpec, Output, check_output

__all__ = ["AuditOptions", "AuditReport", "audit", "load_classifier"]

# genes searched by default: the overview's cost grows with genes x cells; 500 highly variable genes keep a PBMC3k
# audit under a minute on 2 cores while covering the genes that separate the clusters
_GENE_BUDGET = 500
# budgets of the white-box check (scaled units, L-inf): the pipeline's own defaults (`scadversarial run`)
_WHITEBOX_EPS = (0.1, 0.5)
# suffixes of pickled files, refused (unpickling runs code)
_PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".pt", ".pth")
# figure resolution: sharp in a browser, a few hundred kB per figure
_DPI = 110
# records the audit writes in .uns['sad']['attacks'] (and the prefix of its PGD layers)
_OVERVIEW_KEY = "audit_overview"
_PGD_KEY = "audit_pgd"


@dataclass(frozen=True)
class AuditOptions:
    """What :func:`audit` attacks, and how hard.

    Attributes
    ----------
    modifications
        Gene modifications of the overview (adverSCarial's modes).
    max_genes
        Gene budget of the searches: the classifier's highly variable genes (``.var['highly_variable']``), else
        its most variable genes, at most this many. ``0``: every gene (slow on a whole transcriptome).
    clusters
        Clusters to attack (default all).
    max_split_size
        ``max_split_size`` of the overview's searches (coarser and faster when larger).
    whitebox_eps
        PGD budgets of the white-box check (only for a sad classifier, which has gradients).
    random_state
        Seed of every search.

    """

    modifications: tuple[str, ...] = ("perc1", "perc99")
    max_genes: int = _GENE_BUDGET
    clusters: tuple[str, ...] | None = None
    max_split_size: int = 100
    whitebox_eps: tuple[float, ...] = _WHITEBOX_EPS
    random_state: int = 0


@dataclass
class AuditReport:
    """Where :func:`audit` wrote its report, and its summary.

    Attributes
    ----------
    html
        The HTML page.
    json
        The JSON summary.
    figures
        The PNG figures (also embedded in the page).
    summary
        The JSON summary as a dict.
    seconds
        Wall time of the audit.

    """

    html: Path
    json: Path
    figures: list[Path] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    seconds: float = 0.0


# ----------------------------------------------------------------------------------------------
# classifier specs (command line)
# ----------------------------------------------------------------------------------------------
def load_classifier(spec: str) -> Any:
    """The classifier a command-line ``SPEC`` names.

    Parameters
    ----------
    spec
        A sad model directory (``config.json`` + ``model.safetensors``, e.g. ``out/models/classifier``), or
        ``module:object`` / ``module:function`` (an import path; the current directory is importable). A
        function without required parameters is called and its result used (a factory, e.g. one that
        builds a CellTypist model); any other object is the classifier itself (a torch module, an estimator,
        a CellTypist model, a callable ``X -> probabilities`` or a
        :class:`~scadversarial.attacks._protocol.ClassifierSpec`).

    Returns
    -------
    The classifier.

    Examples
    --------
    >>> from scadversarial.tl._audit import load_classifier
    >>> load_classifier("numpy:ones")  # doctest: +SKIP

    """
    path = Path(spec)
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        msg = (
            f"{spec!r} looks like a pickled model: pickles are refused, since opening one runs code from the file. "
            "Save a sad model directory, or load the model in your own Python code and pass `module:function` "
            "(a function that returns it), e.g. `mymodels:celltypist_model`."
        )
        raise ValueError(msg)
    if path.is_dir():
        if not (path / "config.json").is_file():
            msg = (
                f"{spec!r} is a directory without config.json: pass a sad model directory (e.g. out/models/classifier)."
            )
            raise FileNotFoundError(msg)
        from ..models._io import load_model

        # the audited model is the user's file, not a model of this session's AnnData: registering it would
        # replace a live model saved under the same id
        return load_model(path, register=False)
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        msg = (
            f"Classifier {spec!r} is neither a sad model directory nor an import path. Pass a directory written by "
            "`sad.save_models` / `scadversarial run` (e.g. out/models/classifier) or `module:object`."
        )
        raise ValueError(msg)
    if os.getcwd() not in sys.path:  # the user's own modules, as `python -m` finds them
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        msg = f"Cannot import module {module_name!r} of classifier {spec!r} ({err}). Run from its folder or install it."
        raise ImportError(msg) from err
    for part in attr.split("."):
        if not hasattr(obj, part):
            msg = f"Module {module_name!r} has no {attr!r} (classifier {spec!r})."
            raise ValueError(msg)
        obj = getattr(obj, part)
    if inspect.isfunction(obj) and _is_factory(obj):
        obj = obj()
    return obj


def _is_factory(fn) -> bool:
    """A function that can be called without arguments."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in sig.parameters.values())


# ----------------------------------------------------------------------------------------------
# the audit
# ----------------------------------------------------------------------------------------------
def _budget_genes(adata: AnnData, genes: list[str], layer: str | None, max_genes: int) -> list[str]:
    """The searched genes: highly variable ones among ``genes`` (else the most variable), at most ``max_genes``."""
    if max_genes <= 0 or len(genes) <= max_genes:
        return list(genes)
    if "highly_variable" in adata.var:
        hv = adata.var["highly_variable"].reindex(genes).fillna(value=False).to_numpy(dtype=bool)
        if hv.sum() >= min(max_genes, len(genes)) // 2:  # enough marked genes to stand for the data's variation
            pool = np.asarray(genes)[hv]
            if len(pool) <= max_genes:
                return list(pool)
            genes = list(pool)
    X = get_matrix(adata, layer, dense=False, check=False)[:, adata.var_names.get_indexer(genes)]
    mean = np.asarray(X.mean(axis=0)).ravel()
    sq = X.multiply(X).mean(axis=0) if hasattr(X, "multiply") else np.square(X).mean(axis=0)
    var = np.asarray(sq).ravel() - mean**2
    top = np.sort(np.argsort(-var, kind="stable")[:max_genes])  # (kept in the classifier's order)
    return [genes[i] for i in top]


def _figure_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _whitebox(adata: AnnData, model: Any, eps: Sequence[float], groupby: str) -> tuple[dict | None, str]:
    """White-box PGD flip rates of a sad classifier (None and the reason otherwise)."""
    from ..models.classifier import CellClassifier

    if not isinstance(model, CellClassifier):
        return None, "the classifier has no gradients sad can use (not a sad classifier): black-box only"
    from ..get import attack_record
    from ._attack import attack

    try:
        attack(adata, "pgd", eps=tuple(eps), classifier=model, key_added=_PGD_KEY)
    except (KeyError, ValueError, RuntimeError) as err:
        return None, f"white-box attack skipped: {err}"
    rec = attack_record(adata, _PGD_KEY)
    # flip rate per budget, from the record's per-layer rates (layer '<key>_eps<eps>')
    layers = [str(x) for x in np.atleast_1d(rec.get("layers", []))]
    rates = dict(rec.get("metrics", {}).get("flip_rate", {}))
    per_eps = {f"eps={e:g}": float(rates[lay]) for e, lay in zip(eps, layers, strict=False) if lay in rates}
    return {"method": "pgd", "eps": [float(e) for e in eps], "flip_rate": per_eps, "groupby": groupby}, ""


def audit(
    adata: AnnData,
    *,
    groupby: str,
    out: str | Path,
    classifier: Any = None,
    layer: str | None = None,
    output: Output = "proba",
    options: AuditOptions | None = None,
) -> AuditReport:
    """Audit a classifier's robustness: black-box overviews and signatures per cluster, white-box flip rates.

    Runs :func:`~scadversarial.tl.attack_overview` (single-gene and max-change searches for every cluster and
    modification) on a gene budget (:class:`AuditOptions`), the white-box PGD check where the classifier has
    gradients (a sad classifier), draws the figures, and writes ``out/report.html`` (figures embedded),
    ``out/figures/*.png`` and ``out/summary.json``.

    Parameters
    ----------
    adata
        The cells, in the classifier's input space (e.g. log1p-normalized for CellTypist, ``layer=``).
    groupby
        ``.obs`` column with the clusters to attack.
    out
        Output directory (created).
    classifier
        The classifier to audit (``None``: the sad classifier of ``adata``): a CellTypist ``Model``,
        a scikit-learn estimator with ``predict_proba``, a torch module, a callable returning
        probabilities, or a :class:`~scadversarial.tl.ClassifierSpec` (classes, genes, output kind).
    layer
        Matrix the classifier reads (default ``X``).
    output
        Scores the searches read (``'proba'``, ``'logits'``, ``'log_proba'``); ignored for a
        :class:`~scadversarial.attacks._protocol.ClassifierSpec`, which names its own.
    options
        Gene budget, modifications, clusters, white-box budgets (:class:`AuditOptions`).

    Returns
    -------
    :class:`AuditReport`. Writes ``.uns['sad']['attacks']['audit_overview']`` (the overview's record: ``params``,
    ``metrics``, ``table``, see :func:`~scadversarial.tl.attack_overview`), ``.uns['sad']['audit']`` (the JSON
    summary) and, for a sad classifier, the PGD layers ``.layers['audit_pgd_eps<eps>']``, predictions
    ``.obs['audit_pgd_eps<eps>_pred']`` and record ``.uns['sad']['attacks']['audit_pgd']``.

    Examples
    --------
    >>> import scadversarial as sad
    >>> adata = sad.datasets.pbmc68k_reduced()  # doctest: +SKIP
    >>> rep = sad.tl.audit(adata, groupby="bulk_labels", classifier=model, out="audit")  # doctest: +SKIP
    >>> rep.html  # doctest: +SKIP
    PosixPath('audit/report.html')

    """
    from .. import pl
    from ..get import attack_record, attack_table
    from ._blackbox import OverviewOptions, attack_overview

    t0 = time.perf_counter()
    options = AuditOptions() if options is None else options
    check_adata(adata)
    check_output(output)
    check_obs_key(adata, groupby, producer="your annotation or `sad.pp.pseudo_labels`")
    if classifier is None:
        from ._models import get_model

        classifier = get_model(adata, _keys.STEP_CLASSIFIER)
    model = classifier.model if isinstance(classifier, ClassifierSpec) else classifier
    spec = classifier if isinstance(classifier, ClassifierSpec) else ClassifierSpec(classifier, output=output)
    adapter = ClassifierAdapter(spec)
    genes = adapter.genes if adapter.genes is not None else [str(g) for g in adata.var_names]
    searched = _budget_genes(adata, genes, layer, int(options.max_genes))
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)

    attack_overview(
        adata,
        groupby=groupby,
        classifier=spec,
        layer=layer,
        clusters=None if options.clusters is None else list(options.clusters),
        genes=searched,
        modifications=list(options.modifications),
        options=OverviewOptions(max_split_size=options.max_split_size, random_state=options.random_state),
        key_added=_OVERVIEW_KEY,
    )
    table = attack_table(adata, _OVERVIEW_KEY)
    rec = attack_record(adata, _OVERVIEW_KEY)
    whitebox, why = _whitebox(adata, model, options.whitebox_eps, groupby)
    if whitebox is None:
        logger.info("audit: %s", why)

    figures: list[tuple[str, str, bytes]] = []  # (file name, caption, png)
    fig = pl.attack_overview(adata, _OVERVIEW_KEY, return_fig=True)
    figures.append(
        (
            "overview.png",
            "Black-box overview: single-gene flips (left; more = more fragile) and genes modifiable together "
            "without changing the call (right; more = more robust), per cluster and modification.",
            _figure_png(fig),
        )
    )
    caption = "Signature size per cluster: searched genes that max-change could not modify without a flip."
    figures.append(("signature.png", caption, _signature_png(table, len(searched))))
    if whitebox is not None:
        fig = pl.flip_rate(adata, _PGD_KEY, return_fig=True)
        figures.append(("whitebox_flip_rate.png", "White-box PGD flip rate per class and budget.", _figure_png(fig)))
    paths = []
    for name, _, png in figures:
        (out / "figures" / name).write_bytes(png)
        paths.append(out / "figures" / name)

    clusters = _cluster_summary(table)
    summary = {
        "groupby": groupby,
        "layer": layer or "X",
        "n_cells": int(adata.n_obs),
        "classifier": {
            "kind": rec["params"]["classifier"],
            "output": adapter.output,
            "n_genes": len(genes),
            "classes": list(adapter.classes),
        },
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(options).items()},
        "n_genes_searched": len(searched),
        "clusters": clusters,
        "n_tied_rows": int(rec["metrics"]["n_tied_rows"]),
        "whitebox": whitebox if whitebox is not None else {"skipped": why},
        "figures": [f"figures/{name}" for name, _, _ in figures],
        "seconds": round(time.perf_counter() - t0, 2),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "report.html").write_text(_html(summary, figures), encoding="utf-8")
    uns_root(adata)["audit"] = h5ad_safe(json.loads(json.dumps(summary)))
    return AuditReport(
        html=out / "report.html", json=out / "summary.json", figures=paths, summary=summary, seconds=summary["seconds"]
    )


def _signature_png(table: pd.DataFrame, n_searched: int) -> bytes:
    import matplotlib.pyplot as plt

    grid = table.pivot_table(index="cluster", columns="modification", values="max_change_n_kept", aggfunc="first")
    sig = n_searched - grid
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(sig) + 2), 3.2), layout="constrained")
    sig.plot.bar(ax=ax)
    ax.set_ylabel(f"signature genes (of {n_searched})")
    ax.set_xlabel("cluster")
    ax.set_title("max-change signature size", fontsize=10)
    return _figure_png(fig)


def _split(value: Any) -> list[str]:
    return [g for g in str(value).split(";") if g] if isinstance(value, str) else []


def _cluster_summary(table: pd.DataFrame) -> list[dict]:
    rows = []
    for cl, sub in table.groupby("cluster", sort=False, observed=True):
        first = sub.iloc[0]
        mods = {}
        for _, r in sub.iterrows():
            mods[str(r["modification"])] = {
                "single_gene_n_found": int(r.get("single_gene_n_found", 0)),
                "single_gene_genes": _split(r.get("single_gene_genes", "")),
                "max_change_n_kept": int(r.get("max_change_n_kept", 0)),
                "max_change_score": float(r.get("max_change_score", np.nan)),
                "signature": _split(r.get("max_change_signature", "")),
            }
        rows.append(
            {
                "cluster": str(cl),
                "n_cells": int(first["n_cells"]),
                "orig_call": str(first["orig_call"]),
                "orig_score": float(first["orig_score"]),
                "modifications": mods,
            }
        )
    return rows


def _html(summary: dict, figures: list[tuple[str, str, bytes]]) -> str:
    """The report page: the summary tables and the figures as embedded PNGs."""
    e = html.escape
    clf = summary["classifier"]
    rows = []
    for c in summary["clusters"]:
        for mod, m in c["modifications"].items():
            sig = ", ".join(m["signature"][:15]) + (" ..." if len(m["signature"]) > 15 else "")
            rows.append(
                f"<tr><td>{e(c['cluster'])}</td><td>{c['n_cells']}</td><td>{e(c['orig_call'])}</td>"
                f"<td>{c['orig_score']:.2f}</td><td>{e(mod)}</td><td>{m['single_gene_n_found']}</td>"
                f"<td>{m['max_change_n_kept']}</td><td>{len(m['signature'])}</td><td class='genes'>{e(sig)}</td></tr>"
            )
    wb = summary["whitebox"]
    if "skipped" in wb:
        wb_html = f"<p>{e(wb['skipped'])}.</p>"
    else:
        wb_html = "<table><tr><th>budget</th><th>flip rate</th></tr>" + "".join(
            f"<tr><td>{e(k)}</td><td>{v:.3f}</td></tr>" for k, v in wb["flip_rate"].items()
        )
        wb_html += "</table>"
    ties = (
        f"<p class='warn'>{summary['n_tied_rows']:,} classified cell rows had tied top scores: rerun with "
        "output='logits' (decision values).</p>"
        if summary["n_tied_rows"]
        else ""
    )
    figs = "".join(
        f"<figure><img alt='{e(name)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
        f"<figcaption>{e(caption)} (<a href='figures/{e(name)}'>{e(name)}</a>)</figcaption></figure>"
        for name, caption, png in figures
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>scadversarial robustness audit</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1100px; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 3px 8px; }}
td.genes {{ font-size: 0.85em; }} figure img {{ max-width: 100%; }} .warn {{ color: #a00; }}
</style></head><body>
<h1>Robustness audit</h1>
<p>Classifier: <b>{e(str(clf["kind"]))}</b> ({len(clf["classes"])} classes, {clf["n_genes"]} genes, scores read:
{e(str(clf["output"]))}). Cells: {summary["n_cells"]}, clusters from <code>{e(summary["groupby"])}</code>,
matrix <code>{e(summary["layer"])}</code>; {summary["n_genes_searched"]} genes searched. Audit took
{summary["seconds"]:.1f} s.</p>
{ties}
<h2>Black-box attacks per cluster</h2>
<p>single-gene: gene lists whose modification alone flips the cluster's call; kept: genes modified together
without changing it (max-change); signature: the searched genes that could not be modified.</p>
<table id="clusters"><tr><th>cluster</th><th>cells</th><th>call</th><th>score</th><th>modification</th>
<th>single-gene flips</th><th>kept</th><th>signature</th><th>signature genes</th></tr>
{"".join(rows)}</table>
<h2>White-box attacks</h2>
{wb_html}
<h2>Figures</h2>
{figs}
</body></html>
"""
