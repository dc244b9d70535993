"""Plain-Python logic of the demo app: load a pipeline, attack one cell, score it, evaluate in batches.

Nothing here imports :mod:`streamlit`: the page (``streamlit_app.py``) only lays out what these
functions return, so every number the app shows can be tested without a browser. The code lives
in one module per concern:

- ``_state``: the loaded :class:`Pipeline`, one :class:`CellResult`, :class:`AppError`;
- ``_load``: :func:`load_pipeline` (the AnnData, its models, labels, split and map);
- ``_cache``: the demo pipeline built once and cached on disk (:func:`open_pipeline`);
- ``_cell``: one cell on demand (:func:`clean_cell`, :func:`attack_cell`, :func:`score`);
- ``_figures``: the gene table, the cells' map and the chart specs;
- ``_metrics``: the global evaluation, computed by :func:`scadversarial.tl.evaluate`.

Every expected problem with the user's files (missing, corrupt, no models, genes that do not
match) raises :class:`AppError` with a message meant for the page.
"""

from __future__ import annotations

from ._cache import (
    CACHE_FORMAT,
    CACHE_STAMP,
    DEFAULT_DATA,
    build_default_pipeline,
    cached_pipeline_ok,
    default_cache_dir,
    open_pipeline,
)
from ._cell import attack_cell, auto_alpha, clean_cell, clean_scores, quiet, score, softmax
from ._figures import gene_table, proba_chart, umap_frame, umap_spec
from ._load import load_pipeline
from ._metrics import SHOWN, EvalResult, evaluate, evaluate_iter, stored_evaluation
from ._state import DEVICE, AppError, AttackDefaults, CellResult, Pipeline

__all__ = [
    "CACHE_FORMAT",
    "CACHE_STAMP",
    "DEFAULT_DATA",
    "DEVICE",
    "SHOWN",
    "AppError",
    "AttackDefaults",
    "CellResult",
    "EvalResult",
    "Pipeline",
    "attack_cell",
    "auto_alpha",
    "build_default_pipeline",
    "cached_pipeline_ok",
    "clean_cell",
    "clean_scores",
    "default_cache_dir",
    "evaluate",
    "evaluate_iter",
    "gene_table",
    "load_pipeline",
    "open_pipeline",
    "proba_chart",
    "quiet",
    "score",
    "softmax",
    "stored_evaluation",
    "umap_frame",
    "umap_spec",
]
