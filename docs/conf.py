"""Sphinx configuration of the scadversarial documentation.

The API pages are generated at build time from each public module's ``__all__``, so every
public function (and the AnnData fields its docstring lists) is documented without a hand-kept
list. The tutorials are copied from ``../tutorials`` and rendered by myst-nb without being
executed (the test suite executes them).
"""

from __future__ import annotations

import importlib
import inspect
import shutil
import sys
from datetime import date
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

import scadversarial  # noqa: E402

project = "scadversarial"
author = "scadversarial developers"
copyright = f"{date.today().year}, {author}"
version = release = scadversarial.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx_autodoc_typehints",
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints", "jupyter_execute"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
master_doc = "index"

# numpydoc docstrings through napoleon; types come from the signatures
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False  # "Returns: <text>" rather than a "Return type" field for prose returns
napoleon_use_param = True
napoleon_custom_sections = [("Params", "Parameters")]
typehints_defaults = "braces"
always_document_param_types = False
autosummary_generate = True
autodoc_member_order = "bysource"
autodoc_default_options = {"members": False}
autodoc_mock_imports = ["streamlit"]

# notebooks are rendered from their stored outputs; `pytest --nbmake tutorials/` executes them
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

# no intersphinx: the docs build offline (and -W would fail on an unreachable inventory)

html_theme = "sphinx_book_theme"
html_title = "scadversarial"
html_theme_options = {
    "repository_url": "https://github.com/scadversarial/scadversarial",
    "use_repository_button": False,
}
html_static_path: list[str] = []

# ----------------------------------------------------------------------------- generated pages

API_MODULES = {
    "scadversarial": "Top level",
    "scadversarial.datasets": "Datasets",
    "scadversarial.pp": "Preprocessing",
    "scadversarial.tl": "Tools",
    "scadversarial.pl": "Plotting",
    "scadversarial.get": "Getters",
    "scadversarial.models": "Models",
}


def _public_names(modname: str) -> tuple[list[str], list[str]]:
    """(functions, classes) that ``modname`` exports, from ``__all__`` (else its public callables)."""
    mod = importlib.import_module(modname)
    names = getattr(mod, "__all__", None) or [n for n in dir(mod) if not n.startswith("_")]
    funcs, classes = [], []
    for n in names:
        obj = getattr(mod, n, None)
        if inspect.ismodule(obj) or obj is None:
            continue
        if inspect.isclass(obj):
            classes.append(n)
        elif callable(obj):
            funcs.append(n)
    return funcs, classes


def _write_api_pages() -> None:
    out = HERE / "api"
    out.mkdir(exist_ok=True)
    for modname, title in API_MODULES.items():
        funcs, classes = _public_names(modname)
        short = "sad" + modname.removeprefix("scadversarial")
        lines = [f"{title}: ``{short}``", "=" * (len(title) + len(short) + 6), "", f".. automodule:: {modname}", ""]
        if modname == "scadversarial":
            lines += [".. autodata:: scadversarial.settings", "   :no-value:", ""]
        lines += [f".. currentmodule:: {modname}", ""]
        if funcs:
            lines += [
                "Functions",
                "---------",
                "",
                ".. autosummary::",
                "   :toctree: ../generated",
                "   :nosignatures:",
                "",
            ]
            lines += [f"   {n}" for n in funcs] + [""]
        if classes:
            lines += [
                "Classes",
                "-------",
                "",
                ".. autosummary::",
                "   :toctree: ../generated",
                "   :nosignatures:",
                "",
            ]
            lines += [f"   {n}" for n in classes] + [""]
        text = "\n".join(lines)
        path = out / f"{modname}.rst"
        if not path.exists() or path.read_text() != text:
            path.write_text(text)


def _copy_tutorials() -> None:
    src, dst = ROOT / "tutorials", HERE / "tutorials"
    dst.mkdir(exist_ok=True)
    for nb in sorted(src.glob("*.ipynb")):
        target = dst / nb.name
        if not target.exists() or target.read_bytes() != nb.read_bytes():
            shutil.copyfile(nb, target)
    for stale in dst.glob("*.ipynb"):
        if not (src / stale.name).exists():
            stale.unlink()


_write_api_pages()
_copy_tutorials()
