"""The ``scadversarial`` command: run the whole pipeline, audit a classifier, or launch the interactive app."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from ._pipeline import MAX_EPOCHS

#: What ``scadversarial app --help`` (and ``python -m scadversarial.app --help``) says first.
APP_DESCRIPTION = (
    "Clean vs. adversarial predictions of single cells in the browser (also: python -m scadversarial.app)."
)


def _run(args: argparse.Namespace) -> int:
    from ._pipeline import format_report, load_data, run_pipeline
    from ._settings import settings

    settings.progress = not args.no_progress
    t0 = time.perf_counter()
    adata, labels = load_data(args.data, labels=args.labels)
    report = run_pipeline(
        adata, labels_key=labels, out=args.out, random_state=args.seed, max_epochs=args.epochs, baselines=args.baselines
    )
    print(format_report(report))
    print(
        f"wrote {args.out}/adata.h5ad, {args.out}/models/, {args.out}/report.json in {time.perf_counter() - t0:.1f} s"
    )
    return 0


def _audit(args: argparse.Namespace) -> int:
    import anndata as ad

    from ._settings import settings
    from .tl._audit import AuditOptions, audit, load_classifier

    settings.progress = not args.no_progress
    t0 = time.perf_counter()
    adata = ad.read_h5ad(args.data)
    classifier = load_classifier(args.classifier)
    options = AuditOptions(
        modifications=tuple(args.modifications.split(",")),
        max_genes=AuditOptions.max_genes if args.max_genes is None else args.max_genes,
        clusters=None if args.clusters is None else tuple(args.clusters.split(",")),
        random_state=args.seed,
    )
    report = audit(
        adata,
        groupby=args.groupby,
        out=args.out,
        classifier=classifier,
        layer=args.layer,
        output=args.output,
        options=options,
    )
    s = report.summary
    kind = s["classifier"]["kind"].removesuffix(" classifier")
    print(
        f"audited the {kind} classifier on {s['n_cells']} cells, {len(s['clusters'])} clusters, "
        f"{s['n_genes_searched']} genes"
    )
    print(f"wrote {report.html}, {report.json} and {len(report.figures)} figures in {time.perf_counter() - t0:.1f} s")
    return 0


def _app(args: argparse.Namespace) -> int:
    from .app import launch

    demo = {"cache_dir": args.cache_dir, "max_epochs": args.epochs}
    return launch(args.adata, args.models, args.port, address=args.address, headless=args.headless, **demo)


def add_app_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``scadversarial app`` (and of ``python -m scadversarial.app``, which runs it)."""
    parser.add_argument(
        "--adata", default=None, help="FILE.h5ad written by `scadversarial run` (default: build a demo)"
    )
    parser.add_argument("--models", default=None, help="models directory (default: models/ next to the .h5ad)")
    parser.add_argument("--port", type=int, default=None, help="port to serve on (default 8501)")
    parser.add_argument(
        "--address", default="127.0.0.1", help="address to bind (default loopback only; 0.0.0.0 to share)"
    )
    parser.add_argument("--headless", action="store_true", help="do not open a browser window")
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="folder of the cached demo pipeline (default: app-pbmc68k_reduced in $SCADVERSARIAL_CACHE_DIR, "
        "else in ~/.cache/scadversarial)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"maximum classifier epochs of the demo pipeline (default {MAX_EPOCHS})",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``scadversarial`` command."""
    parser = argparse.ArgumentParser(
        prog="scadversarial", description="Attack single-cell classifiers and detect attacked cells."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="preprocess -> labels -> classifier -> PGD -> detector -> evaluate")
    run.add_argument(
        "--data", default="pbmc68k_reduced", help="pbmc68k_reduced (offline default), pbmc3k (download) or FILE.h5ad"
    )
    run.add_argument("--labels", default=None, help=".obs column with cell types (default: KMeans pseudo-labels)")
    run.add_argument("--out", default="out", help="output directory (default: out)")
    run.add_argument("--seed", type=int, default=0, help="random seed of every step")
    run.add_argument("--epochs", type=int, default=MAX_EPOCHS, help=f"maximum classifier epochs (default {MAX_EPOCHS})")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    run.add_argument(
        "--baselines", action="store_true", help="also score the threat rows with every baseline detector (slower)"
    )
    run.set_defaults(func=_run)
    aud = sub.add_parser(
        "audit",
        help="robustness report of your own classifier (HTML + JSON)",
        description="Black-box overviews (single-gene, max-change) per cluster, signature genes, white-box flip "
        "rates where gradients exist, figures: OUT/report.html and OUT/summary.json.",
    )
    aud.add_argument("--data", required=True, help="FILE.h5ad with the cells, in the classifier's input space")
    aud.add_argument(
        "--classifier",
        required=True,
        help="a sad model directory (e.g. out/models/classifier), or module:object / module:function (your Python "
        "code returning a torch module, estimator, CellTypist model or callable); pickles are refused",
    )
    aud.add_argument("--groupby", required=True, help=".obs column with the clusters")
    aud.add_argument("--out", default="audit", help="output directory (default: audit)")
    aud.add_argument("--layer", default=None, help="layer the classifier reads (default: X)")
    aud.add_argument(
        "--output",
        default="proba",
        choices=["proba", "logits", "log_proba"],
        help="scores to read: logits (decision values) cannot tie when probabilities underflow",
    )
    aud.add_argument(
        "--max-genes", type=int, default=None, help="gene budget: highly variable genes searched (default 500; 0: all)"
    )
    aud.add_argument("--modifications", default="perc1,perc99", help="comma-separated modifications")
    aud.add_argument("--clusters", default=None, help="comma-separated clusters (default: all)")
    aud.add_argument("--seed", type=int, default=0, help="random seed of the searches")
    aud.add_argument("--no-progress", action="store_true", help="hide progress bars")
    aud.set_defaults(func=_audit)
    app = sub.add_parser("app", help="start the interactive Streamlit app", description=APP_DESCRIPTION)
    add_app_arguments(app)
    app.set_defaults(func=_app)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``scadversarial`` command."""
    args = build_parser().parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        logging.getLogger("scadversarial").setLevel(logging.INFO)
    try:
        return args.func(args)
    except (KeyError, ValueError, FileNotFoundError, OSError, ImportError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"scadversarial: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
