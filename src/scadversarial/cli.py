"""The ``scadversarial`` command: run the whole pipeline, or launch the interactive app."""

from __future__ import annotations

import argparse
import logging
import sys
import time


def _run(args: argparse.Namespace) -> int:
    from ._pipeline import format_report, load_data, run_pipeline
    from ._settings import settings

    settings.progress = not args.no_progress
    t0 = time.perf_counter()
    adata, labels = load_data(args.data, labels=args.labels)
    report = run_pipeline(adata, labels_key=labels, out=args.out, random_state=args.seed, max_epochs=args.epochs)
    print(format_report(report))
    print(
        f"wrote {args.out}/adata.h5ad, {args.out}/models/, {args.out}/report.json in {time.perf_counter() - t0:.1f} s"
    )
    return 0


def _app(args: argparse.Namespace) -> int:
    from .app import launch

    return launch(adata=args.adata, models=args.models, port=args.port, address=args.address, headless=args.headless)


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
    run.add_argument("--epochs", type=int, default=60, help="maximum classifier epochs")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    run.set_defaults(func=_run)
    app = sub.add_parser("app", help="start the interactive Streamlit app")
    app.add_argument("--adata", default=None, help="FILE.h5ad written by `scadversarial run` (default: build a demo)")
    app.add_argument("--models", default=None, help="models directory (default: next to the .h5ad)")
    app.add_argument("--port", type=int, default=None, help="port to serve on (default 8501)")
    app.add_argument("--address", default="127.0.0.1", help="address to bind (default loopback only; 0.0.0.0 to share)")
    app.add_argument("--headless", action="store_true", help="do not open a browser window")
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
