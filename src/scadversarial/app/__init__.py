"""The interactive demo app (Streamlit): clean vs. adversarial predictions of single cells.

Start it with ``scadversarial app [--adata FILE.h5ad] [--models DIR]`` (``python -m
scadversarial.app`` takes the same options) or :func:`launch`. The page is ``streamlit_app.py``; all of its
computations live in :mod:`scadversarial.app.logic`, which needs no Streamlit.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

#: The Streamlit script of the app.
SCRIPT = Path(__file__).with_name("streamlit_app.py")
#: What to install when Streamlit is missing.
INSTALL_HINT = "pip install 'scadversarial[app]'"


def streamlit_available() -> bool:
    """Whether :mod:`streamlit` can be imported."""
    return importlib.util.find_spec("streamlit") is not None


def command(
    adata: str | Path | None = None,
    models: str | Path | None = None,
    port: int | None = None,
    *,
    address: str | None = None,
    headless: bool = False,
    cache_dir: str | Path | None = None,
    max_epochs: int | None = None,
    streamlit_args: Sequence[str] = (),
) -> list[str]:
    """The ``streamlit run`` command line that :func:`launch` runs (see there for the parameters)."""
    cmd = [sys.executable, "-m", "streamlit", "run", str(SCRIPT), "--browser.gatherUsageStats", "false"]
    cmd += ["--client.showErrorDetails", "none", "--client.toolbarMode", "minimal"]
    if port is not None:
        cmd += ["--server.port", str(int(port))]
    if address is not None:
        cmd += ["--server.address", str(address)]
    if headless:
        cmd += ["--server.headless", "true"]
    cmd += list(streamlit_args)
    script_args = []
    if adata is not None:
        script_args += ["--adata", str(Path(adata).expanduser().absolute())]
    if models is not None:
        script_args += ["--models", str(Path(models).expanduser().absolute())]
    if cache_dir is not None:
        script_args += ["--cache-dir", str(Path(cache_dir).expanduser().absolute())]
    if max_epochs is not None:
        script_args += ["--max-epochs", str(int(max_epochs))]
    if script_args:
        cmd += ["--", *script_args]
    return cmd


def launch(
    adata: str | Path | None = None,
    models: str | Path | None = None,
    port: int | None = None,
    *,
    address: str | None = "127.0.0.1",
    headless: bool = False,
    cache_dir: str | Path | None = None,
    max_epochs: int | None = None,
    streamlit_args: Sequence[str] = (),
    wait: bool = True,
    popen_kwargs: dict | None = None,
) -> int | subprocess.Popen:
    """Start the demo app: ``streamlit run`` on the app's script, in a subprocess.

    Parameters
    ----------
    adata
        The ``adata.h5ad`` written by ``scadversarial run --out DIR`` (or that folder). ``None``
        builds a demo pipeline on the embedded ``pbmc68k_reduced`` data, cached on disk (see
        :func:`scadversarial.app.logic.default_cache_dir`).
    models
        Its models folder (default: ``models/`` next to the ``.h5ad``).
    port
        Port to serve on (Streamlit's default 8501 when ``None``).
    address
        Address to bind: loopback only by default (the page reads local files); ``'0.0.0.0'``
        to serve other machines, ``None`` for Streamlit's own default.
    headless
        Do not open a browser window.
    cache_dir
        Folder of the cached demo pipeline.
    max_epochs
        Classifier epochs cap when the demo pipeline is built (default: ``scadversarial run``'s, 60).
    streamlit_args
        More ``streamlit run`` options, e.g. ``['--theme.base', 'dark']``.
    wait
        Wait for the server to stop (Ctrl-C) and return its exit code; ``False`` returns the
        running :class:`subprocess.Popen` instead.
    popen_kwargs
        Passed to :class:`subprocess.Popen` (e.g. ``stdout=``, ``stderr=``, ``env=``).

    Returns
    -------
    The exit code (``wait=True``), or the process. When Streamlit is not installed, prints what
    to install (``pip install 'scadversarial[app]'``) and returns 1.

    """
    if not streamlit_available():
        print(
            f"scadversarial app needs Streamlit, which is not installed. Install it with:\n    {INSTALL_HINT}",
            file=sys.stderr,
        )
        return 1
    cmd = command(
        adata,
        models,
        port,
        address=address,
        headless=headless,
        cache_dir=cache_dir,
        max_epochs=max_epochs,
        streamlit_args=streamlit_args,
    )
    proc = subprocess.Popen(cmd, **(popen_kwargs or {}))
    if not wait:
        return proc
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m scadversarial.app [OPTIONS]``: the same command as ``scadversarial app [OPTIONS]``.

    Parameters
    ----------
    argv
        The options (default ``sys.argv[1:]``); see ``scadversarial app --help``.

    Returns
    -------
    The exit code.

    """
    from ..cli import main as cli_main

    return cli_main(["app", *(sys.argv[1:] if argv is None else argv)])


__all__ = ["launch", "command", "main", "streamlit_available", "SCRIPT", "INSTALL_HINT"]
