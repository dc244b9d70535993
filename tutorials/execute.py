"""Re-execute the tutorials in place, so that they are committed with fresh outputs.

Usage (from the repository root)::

    python tutorials/execute.py                      # every notebook, full settings
    python tutorials/execute.py tutorials/02_pbmc3k.ipynb

The test suite runs the same notebooks with ``SAD_TUTORIAL_FAST=1`` (small settings) without
writing them back (``tests/test_tutorials.py``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def main(paths: list[str]) -> int:
    """Execute each notebook with its own folder as working directory and write it back."""
    notebooks = [Path(p).resolve() for p in paths] or sorted(HERE.glob("*.ipynb"))
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        t0 = time.perf_counter()
        NotebookClient(
            nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
        ).execute()
        nbformat.write(nb, path)
        print(f"{path.name}: {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
