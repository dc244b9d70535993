"""Plain-Python logic of the demo app: load a pipeline, attack one cell, score it, evaluate in batches.

Nothing here imports :mod:`streamlit`: the page (``streamlit_app.py``) only lays out what these
functions return, so every number the app shows can be tested without a browser.

Every expected problem with the user's files (missing, corrupt, no models, genes that do not
match) raises :class:`AppError` with a message meant for the page.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _keys
from .._settings import logger

#: Name of the stamp file written next to a cached default pipeline.
CACHE_STAMP = "app_cache.json"
#: Bump to invalidate cached default pipelines built by older versions of the app.
CACHE_FORMAT = 1
DEFAULT_DATA = "pbmc68k_reduced"
#: The app computes on the CPU: one cell at a time is faster there than a round trip to a GPU.
DEVICE = "cpu"


class AppError(Exception):
    """A problem the app shows as a message in the page (missing or mismatched artifacts)."""


# ----------------------------------------------------------------------------------------------
# the loaded pipeline
@dataclass
class Pipeline:
    """Everything the app needs, loaded once and reused for every cell.

    Attributes
    ----------
    adata
        The AnnData of the pipeline run.
    classifier
        The trained :class:`~scadversarial.models.CellClassifier`.
    detector
        The trained detector, or ``None`` when the pipeline has none (or it could not be loaded).
    X
        Dense float32 matrix in the classifier's gene order (scaled values), cells x genes.
    genes
        The classifier's genes (columns of ``X``).
    classes
        The classifier's classes (columns of the probabilities).
    labels
        True label of each cell (str), or ``None`` when the pipeline records no labels key.
    labels_key
        The ``.obs`` column of ``labels``.
    split
        Train/val/test split of each cell (str), or ``None``.
    roles
        Role of each cell in training the detector (``.obs['sad_detector_role']``: ``'meta_train'``,
        ``'calibration'``, ``'reference'`` or ``'unused'``), or ``None``.
    proba
        Clean class probabilities of every cell (computed at load time).
    umap
        2-d coordinates of every cell.
    umap_key
        Where ``umap`` came from (e.g. ``'X_umap'``).
    threshold
        The stored detection threshold, or ``None`` without detector.
    attack_defaults
        ``method``, ``eps``, ``alpha``, ``steps`` of the pipeline's recorded attack (or the package defaults).
    lower, upper
        Per-gene bounds of the recorded attack (``bounds='observed'``), else ``None``.
    source
        Human-readable description of where the pipeline was loaded from.
    warnings
        Non-fatal problems to show in the page (e.g. no detector).

    """

    adata: AnnData
    classifier: object
    detector: object | None
    X: np.ndarray
    genes: list[str]
    classes: list[str]
    labels: np.ndarray | None
    labels_key: str | None
    split: np.ndarray | None
    proba: np.ndarray
    umap: np.ndarray
    umap_key: str
    threshold: float | None
    attack_defaults: dict
    lower: np.ndarray | None = None
    upper: np.ndarray | None = None
    source: str = ""
    warnings: list[str] = field(default_factory=list)
    roles: np.ndarray | None = None
    _clean_scores: np.ndarray | None = None
    _umap_base: pd.DataFrame | None = None

    @property
    def n_cells(self) -> int:
        """Number of cells."""
        return self.X.shape[0]

    @property
    def obs_names(self) -> list[str]:
        """Cell names."""
        return list(map(str, self.adata.obs_names))

    @property
    def pred(self) -> np.ndarray:
        """Clean predicted class index of every cell."""
        return self.proba.argmax(1)

    def cells_with_label(self, label: str) -> np.ndarray:
        """Indices of the cells whose true label is ``label`` (all cells without labels)."""
        if self.labels is None:
            return np.arange(self.n_cells)
        return np.flatnonzero(self.labels == str(label))


@dataclass
class CellResult:
    """Prediction (and detector verdict) of one cell, clean or attacked.

    Attributes
    ----------
    index
        Row of the cell in the AnnData.
    name
        Its ``obs_name``.
    true_label
        Its label (or ``None``).
    proba
        Class probabilities.
    predicted
        Predicted class name.
    confidence
        Probability of the predicted class.
    score
        Detector score (probability of being adversarial), or ``None`` without detector.
    attacked
        Whether this is the attacked version of the cell.
    clean_predicted
        For an attacked cell, the clean prediction it was pushed away from.
    x
        The cell's gene vector (classifier genes, scaled values).
    method, eps
        The attack (attacked cells only).
    split, role
        The cell's split and its role in training the detector (``None`` when unknown).

    """

    index: int
    name: str
    true_label: str | None
    proba: np.ndarray
    predicted: str
    confidence: float
    score: float | None = None
    attacked: bool = False
    clean_predicted: str | None = None
    x: np.ndarray | None = None
    method: str | None = None
    eps: float | None = None
    split: str | None = None
    role: str | None = None

    @property
    def success(self) -> bool | None:
        """For an attacked cell: whether the prediction changed (``None`` for a clean cell)."""
        if not self.attacked:
            return None
        return self.predicted != self.clean_predicted

    def flagged(self, threshold: float | None) -> bool | None:
        """Whether the detector flags the cell at ``threshold`` (``None`` without score or threshold)."""
        if self.score is None or threshold is None:
            return None
        return bool(self.score >= threshold)

    def verdict(self, threshold: float | None) -> str:
        """``'adversarial'``, ``'clean'``, or ``'no detector'``."""
        flag = self.flagged(threshold)
        if flag is None:
            return "no detector"
        return "adversarial" if flag else "clean"

    def proba_frame(self, classes: list[str]) -> pd.DataFrame:
        """Long table ``class, probability`` for a bar chart."""
        return pd.DataFrame({"class": list(classes), "probability": np.asarray(self.proba, dtype=float)})


# ----------------------------------------------------------------------------------------------
# loading
def _read_h5ad(path: Path) -> AnnData:
    import anndata as ad

    if not path.exists():
        msg = f"No file at {str(path)!r}. Pass the adata.h5ad written by `scadversarial run --out DIR`."
        raise AppError(msg)
    if path.is_dir():
        msg = f"{str(path)!r} is a folder; pass the .h5ad file inside it (e.g. {str(path / 'adata.h5ad')!r})."
        raise AppError(msg)
    try:
        return ad.read_h5ad(path)
    except Exception as e:
        msg = f"Could not read {str(path)!r} as an .h5ad file ({type(e).__name__}: {e}). The file is corrupt or not an AnnData."
        raise AppError(msg) from e


def _load_models(adata: AnnData, models: Path | None, warnings: list[str]):
    """Bring the classifier (required) and the detector (optional) of ``adata`` into this process."""
    from .. import tl
    from ..models._io import load_model
    from ..tl._models import _model_refs

    root = adata.uns.get(_keys.UNS)
    if not isinstance(root, dict) or _keys.STEP_CLASSIFIER not in root:
        msg = (
            "This AnnData has no trained classifier (no adata.uns['sad']['classifier'] record). "
            "Open the adata.h5ad written by `scadversarial run --out DIR`, or a file saved after `sad.tl.train_classifier`."
        )
        raise AppError(msg)
    refs = _model_refs(adata)
    if _keys.STEP_CLASSIFIER not in refs:
        msg = "adata.uns['sad']['classifier'] holds no model reference. Re-run `scadversarial run` to save the models."
        raise AppError(msg)
    if models is not None:
        if not models.is_dir():
            msg = (
                f"Models folder {str(models)!r} not found. Pass --models DIR (the models/ folder written by "
                "`scadversarial run`, or the directory given to `sad.save_models`)."
            )
            raise AppError(msg)
        for key in (_keys.STEP_CLASSIFIER, _keys.STEP_DETECTOR):
            if key not in refs:
                continue
            try:
                load_model(models / key, expected_id=str(refs[key]["id"]))
            except (FileNotFoundError, ValueError, KeyError, OSError) as e:
                if key == _keys.STEP_CLASSIFIER:
                    msg = f"Could not load the classifier from {str(models / key)!r}: {e}"
                    raise AppError(msg) from e
                warnings.append(f"The detector could not be loaded, so no detector scores are shown: {e}")
                return _get(adata, _keys.STEP_CLASSIFIER, tl, warnings, required=True), None
    clf = _get(adata, _keys.STEP_CLASSIFIER, tl, warnings, required=True)
    det = _get(adata, _keys.STEP_DETECTOR, tl, warnings, required=False) if _keys.STEP_DETECTOR in refs else None
    return clf, det


def _get(adata, key, tl, warnings, *, required):
    try:
        return tl.get_model(adata, key)
    except (KeyError, FileNotFoundError, ValueError, OSError) as e:
        text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        if required:
            msg = f"Could not load the {key}: {text}"
            raise AppError(msg) from e
        warnings.append(f"The {key} could not be loaded, so no detector scores are shown: {text}")
        return None


def _attack_defaults(adata: AnnData) -> dict:
    out = {"method": "pgd", "eps": 0.1, "alpha": 0.02, "steps": 10, "bounds": "none"}
    attacks = adata.uns.get(_keys.UNS, {}).get(_keys.STEP_ATTACKS, {})
    for rec in attacks.values() if isinstance(attacks, dict) else []:
        params = rec.get("params", {}) if isinstance(rec, dict) else {}
        if rec.get("kind", "whitebox") != "whitebox" or "method" not in params:
            continue
        eps = np.atleast_1d(np.asarray(params.get("eps", [0.1]), dtype=float))
        mid = len(eps) // 2
        # records give one step size per budget (older records: one for all)
        alpha = np.atleast_1d(np.asarray(params.get("alpha", 0.02), dtype=float))
        out.update(
            method=str(params["method"]),
            eps=float(eps[mid]) if eps.size else 0.1,
            alpha=float(alpha[min(mid, len(alpha) - 1)]) if alpha.size else 0.02,
            steps=int(params.get("steps", 10)),
            bounds=str(params.get("bounds", "none")),
        )
        break
    return out


def _threshold(adata: AnnData, detector) -> float | None:
    """The calibrated threshold: the detector's own (what ``sad.tl.detect`` uses), else its run record's."""
    if detector is None:
        return None
    thr = getattr(detector, "threshold", None)
    if thr is not None:
        try:
            return float(np.asarray(thr.detach().cpu() if hasattr(thr, "detach") else thr).ravel()[0])
        except (TypeError, ValueError, IndexError):
            pass
    rec = adata.uns.get(_keys.UNS, {}).get(_keys.STEP_DETECTOR, {})
    metrics = rec.get("metrics", {}) if isinstance(rec, dict) else {}
    if isinstance(metrics, dict) and "threshold" in metrics:
        return float(np.asarray(metrics["threshold"]).ravel()[0])
    return 0.5


def _embedding_2d(adata: AnnData, warnings: list[str]) -> tuple[np.ndarray, str]:
    for key in ("X_umap", "X_sad_umap"):
        if key in adata.obsm and np.asarray(adata.obsm[key]).shape[1] >= 2:
            return np.asarray(adata.obsm[key])[:, :2].astype(np.float32), key
    base = _keys.OBSM_EMBEDDING if _keys.OBSM_EMBEDDING in adata.obsm else ("X_pca" if "X_pca" in adata.obsm else None)
    try:
        import scanpy as sc

        tmp = AnnData(np.zeros((adata.n_obs, 1), np.float32))
        tmp.obsm["rep"] = np.asarray(adata.obsm[base]) if base else _dense(adata.X)
        sc.pp.neighbors(tmp, use_rep="rep", random_state=0)
        sc.tl.umap(tmp, random_state=0)
        return tmp.obsm["X_umap"].astype(np.float32), f"UMAP of {base or 'X'} (computed by the app)"
    except Exception as e:  # noqa: BLE001 - a plot fallback, never fatal
        warnings.append(f"No UMAP in the AnnData and computing one failed ({e}); showing the first two PCs instead.")
        from sklearn.decomposition import PCA

        return PCA(2, random_state=0).fit_transform(_dense(adata.X)).astype(np.float32), "PCA (fallback)"


def _dense(X) -> np.ndarray:
    import scipy.sparse as sp

    return np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float32)


def load_pipeline(adata: str | Path | AnnData, models: str | Path | None = None) -> Pipeline:
    """Load a saved pipeline (the output folder of ``scadversarial run``) for the app.

    Parameters
    ----------
    adata
        Path of the ``adata.h5ad`` (or the output folder holding it), or an in-memory AnnData whose
        models are live in this process.
    models
        The models folder (default: ``models/`` next to the ``.h5ad`` when it exists, else the
        paths stored in the references).

    Returns
    -------
    The :class:`Pipeline`, with clean probabilities of every cell computed.

    Raises
    ------
    AppError
        The file is missing or corrupt, it has no trained classifier, the models cannot be
        loaded, or the models' genes are missing from the data.

    """
    from .._validate import matrix_for_genes

    warnings: list[str] = []
    if isinstance(adata, AnnData):
        source = "in-memory AnnData"
        models_dir = Path(models) if models is not None else None
    else:
        path = Path(adata).expanduser()
        if path.is_dir() and (path / "adata.h5ad").is_file():
            path = path / "adata.h5ad"
        adata = _read_h5ad(path)
        if models is not None:
            models_dir = Path(models).expanduser()
        elif (path.parent / "models").is_dir():
            models_dir = path.parent / "models"
        else:
            models_dir = None
        source = str(path)
    clf, det = _load_models(adata, models_dir, warnings)
    genes = [str(g) for g in clf.var_names]
    try:
        X = matrix_for_genes(adata, genes)
    except (KeyError, ValueError) as e:
        text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        msg = f"The classifier does not fit this data: {text}"
        raise AppError(msg) from e
    if det is not None and list(map(str, getattr(det, "var_names", genes))) != genes:
        warnings.append("The detector was trained on other genes than the classifier; it is ignored.")
        det = None
    if det is None and _keys.STEP_DETECTOR not in adata.uns.get(_keys.UNS, {}):
        warnings.append("This pipeline has no trained detector: detector scores and verdicts are not available.")
    params = adata.uns[_keys.UNS][_keys.STEP_CLASSIFIER].get("params", {})
    labels_key = str(params.get("labels_key", _keys.OBS_LABEL))
    labels = adata.obs[labels_key].astype(str).to_numpy() if labels_key in adata.obs else None
    if labels is None:
        labels_key = None
        warnings.append("The labels the classifier was trained on are not in .obs: true labels are not shown.")
    split_key = str(params.get("split_key", _keys.OBS_SPLIT))
    split = adata.obs[split_key].astype(str).to_numpy() if split_key in adata.obs else None
    role_key = _keys.OBS_DETECTOR_ROLE
    roles = adata.obs[role_key].astype(str).to_numpy() if det is not None and role_key in adata.obs else None
    logits, _ = clf.predict_arrays(X, device=DEVICE)
    proba = _softmax(logits)
    umap, umap_key = _embedding_2d(adata, warnings)
    defaults = _attack_defaults(adata)
    lower = upper = None
    if defaults["bounds"] == "observed":
        lower, upper = X.min(0), X.max(0)
    pipe = Pipeline(
        adata=adata, classifier=clf, detector=det, X=X, genes=genes, classes=[str(c) for c in clf.classes],
        labels=labels, labels_key=labels_key, split=split, proba=proba, umap=umap, umap_key=umap_key, roles=roles,
        threshold=_threshold(adata, det), attack_defaults=defaults, lower=lower, upper=upper,
        source=source, warnings=warnings,
    )  # fmt: skip
    clean_scores(pipe)
    return pipe


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# the default pipeline, cached on disk
def default_cache_dir() -> Path:
    """Folder of the cached default pipeline.

    ``$SCADVERSARIAL_CACHE_DIR/app-pbmc68k_reduced`` when that variable is set, else
    ``$XDG_CACHE_HOME/scadversarial/app-pbmc68k_reduced`` (``~/.cache`` by default).
    """
    root = os.environ.get("SCADVERSARIAL_CACHE_DIR")
    if root:
        return Path(root).expanduser() / f"app-{DEFAULT_DATA}"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "scadversarial" / f"app-{DEFAULT_DATA}"


def _code_sha256() -> str:
    """SHA-256 of the package's Python sources: a cached pipeline is only reused by the code that built it."""
    import hashlib

    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _stamp(max_epochs: int, random_state: int) -> dict:
    from .. import __version__, tl

    return {
        "format": CACHE_FORMAT,
        "version": __version__,
        "code_sha256": _code_sha256(),
        "data": DEFAULT_DATA,
        "max_epochs": int(max_epochs),
        "random_state": int(random_state),
        "detector_api": hasattr(tl, "train_detector"),
    }


def cached_pipeline_ok(folder: str | Path, *, max_epochs: int = 60, random_state: int = 0) -> bool:
    """Whether ``folder`` holds a default pipeline built with these settings by this version."""
    folder = Path(folder)
    try:
        stamp = json.loads((folder / CACHE_STAMP).read_text())
    except (OSError, ValueError):
        return False
    return (
        (folder / "adata.h5ad").is_file() and (folder / "models").is_dir() and stamp == _stamp(max_epochs, random_state)
    )


def build_default_pipeline(
    cache_dir: str | Path | None = None, *, max_epochs: int = 60, random_state: int = 0, force: bool = False
) -> Path:
    """Build (or reuse) the demo pipeline on the embedded ``pbmc68k_reduced`` data.

    Runs the same chain as ``scadversarial run --data pbmc68k_reduced`` and writes the same
    layout: ``adata.h5ad``, ``models/`` and ``report.json``, plus a stamp file. A folder built
    earlier with the same settings by the same code (version and a hash of the package's
    sources) is reused as is; otherwise it is rebuilt. The folder is written
    to a temporary sibling first and renamed, so concurrent builds never see half a pipeline.

    Parameters
    ----------
    cache_dir
        Target folder (default :func:`default_cache_dir`).
    max_epochs
        Classifier epochs cap (fewer is faster, e.g. for tests).
    random_state
        Seed of every step.
    force
        Rebuild even when a valid cache exists.

    Returns
    -------
    The folder.

    """
    from .. import datasets

    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if not force and cached_pipeline_ok(folder, max_epochs=max_epochs, random_state=random_state):
        logger.info("app: reusing the cached pipeline in %s", folder)
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        adata = datasets.pbmc68k_reduced()
        _run_chain(adata, tmp, max_epochs=max_epochs, random_state=random_state)
        # the references in adata.h5ad point at tmp/models: the app loads from the folder's own models/
        (tmp / CACHE_STAMP).write_text(json.dumps(_stamp(max_epochs, random_state), indent=1))
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        try:
            tmp.rename(folder)
        except OSError:  # another process won the race: use its folder
            if not cached_pipeline_ok(folder, max_epochs=max_epochs, random_state=random_state):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _run_chain(adata: AnnData, out: Path, *, max_epochs: int, random_state: int) -> None:
    """The ``scadversarial run`` chain writing ``out/adata.h5ad``, ``out/models``, ``out/report.json``."""
    from .._pipeline import run_pipeline
    from .._settings import settings

    progress, settings.progress = settings.progress, False
    try:
        run_pipeline(adata, out=out, random_state=random_state, max_epochs=max_epochs)
    finally:
        settings.progress = progress


def open_pipeline(
    adata: str | Path | None = None,
    models: str | Path | None = None,
    *,
    cache_dir: str | Path | None = None,
    max_epochs: int = 60,
) -> Pipeline:
    """What the app opens: the given pipeline, or the cached default one (built when needed).

    Parameters
    ----------
    adata
        ``adata.h5ad`` of a ``scadversarial run`` output (or that folder); ``None`` for the default.
    models
        Its models folder (default: ``models/`` next to the ``.h5ad``).
    cache_dir
        Folder of the default pipeline (default :func:`default_cache_dir`).
    max_epochs
        Classifier epochs cap when the default pipeline is built.

    """
    if adata is None:
        if models is not None:
            msg = "--models was given without --adata: pass the adata.h5ad the models belong to."
            raise AppError(msg)
        try:
            folder = build_default_pipeline(cache_dir, max_epochs=max_epochs)
        except AppError:
            raise
        except Exception as e:
            msg = f"Building the demo pipeline on {DEFAULT_DATA} failed ({type(e).__name__}: {e})."
            raise AppError(msg) from e
        pipe = load_pipeline(folder / "adata.h5ad", folder / "models")
        pipe.source = f"demo pipeline on {DEFAULT_DATA} (cached in {folder})"
        return pipe
    return load_pipeline(adata, models)


# ----------------------------------------------------------------------------------------------
# one cell
@contextmanager
def quiet(*, single_thread: bool = False):
    """No progress bars (and, with ``single_thread``, one torch thread) inside the block.

    A one-cell forward/backward pass is a few small matrix products: one thread does it in
    milliseconds, while several threads on a busy CPU can wait on each other for a second.
    """
    import torch

    from .._settings import settings

    progress, settings.progress = settings.progress, False
    n_threads = torch.get_num_threads()
    if single_thread:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        settings.progress = progress
        if single_thread:
            torch.set_num_threads(n_threads)


def _check_index(pipe: Pipeline, index: int) -> int:
    index = int(index)
    if not 0 <= index < pipe.n_cells:
        msg = f"Cell index {index} is out of range (0 to {pipe.n_cells - 1})."
        raise AppError(msg)
    return index


def _where(pipe: Pipeline, i: int) -> dict:
    return {
        "split": None if pipe.split is None else str(pipe.split[i]),
        "role": None if pipe.roles is None else str(pipe.roles[i]),
    }


def score(pipe: Pipeline, X: np.ndarray) -> np.ndarray | None:
    """Detector scores (probability of being adversarial) of the rows of ``X``; ``None`` without detector."""
    if pipe.detector is None:
        return None
    X = np.atleast_2d(np.asarray(X, dtype=np.float32))
    with quiet(single_thread=X.shape[0] <= 8):
        out = pipe.detector.score_arrays(X, progress_bar=False, device=DEVICE)
    scores = out[-1] if isinstance(out, tuple) else out
    return np.asarray(scores, dtype=float).ravel()


def clean_scores(pipe: Pipeline) -> np.ndarray | None:
    """Detector scores of every clean cell, computed in batches once (at load time) and kept.

    These are the scores :func:`scadversarial.tl.detect` writes to ``.obs['sad_score']``. Scoring
    the whole matrix once also keeps a clean cell's score independent of how it is batched: the
    input-consistency features of the detector's own reference cells (distance 0 to themselves)
    are sensitive to float rounding, which differs between a batch of one and a full batch.
    """
    if pipe.detector is None:
        return None
    if pipe._clean_scores is None:
        pipe._clean_scores = score(pipe, pipe.X)
    return pipe._clean_scores


def clean_cell(pipe: Pipeline, index: int, *, with_score: bool = True) -> CellResult:
    """The clean cell ``index``: its label, prediction, probabilities and detector score."""
    i = _check_index(pipe, index)
    p = pipe.proba[i]
    k = int(p.argmax())
    s = None
    if with_score and pipe.detector is not None:
        s = float(clean_scores(pipe)[i])
    return CellResult(
        index=i, name=str(pipe.adata.obs_names[i]), true_label=None if pipe.labels is None else str(pipe.labels[i]),
        proba=p, predicted=pipe.classes[k], confidence=float(p[k]), score=s, x=pipe.X[i], **_where(pipe, i),
    )  # fmt: skip


def auto_alpha(eps: float, steps: int) -> float:
    """PGD step size that lets ``steps`` steps cross the ``eps``-ball: ``2.5 * eps / steps`` (Madry et al.)."""
    return 2.5 * float(eps) / max(int(steps), 1)


def attack_cell(
    pipe: Pipeline,
    index: int,
    *,
    method: str = "pgd",
    eps: float = 0.1,
    alpha: float | None = None,
    steps: int | None = None,
    random_state: int = 0,
    with_score: bool = True,
) -> CellResult:
    """Attack cell ``index`` on demand and classify (and score) the result.

    Untargeted white-box attack pushing the cell away from its clean *predicted* class (as at
    inference, where the true label is unknown), with the same array-level code as
    :func:`~scadversarial.tl.attack`.

    Parameters
    ----------
    pipe
        The loaded pipeline.
    index
        Row of the cell.
    method
        ``'pgd'``, ``'pgd_rs'``, ``'pgd_l2'`` or ``'fgsm'``.
    eps, alpha, steps
        Budget, PGD step size and number of steps. ``steps`` defaults to the pipeline's recorded
        attack; ``alpha`` ``None`` (or 0) is :func:`auto_alpha`.
    random_state
        Seed of the random start (``'pgd_rs'``).
    with_score
        Also compute the detector score.

    Returns
    -------
    The attacked cell's :class:`CellResult` (``attacked=True``, ``success`` tells if the prediction flipped).

    """
    from ..attacks.whitebox import METHODS, attack_arrays

    i = _check_index(pipe, index)
    if method not in METHODS:
        msg = f"Unknown attack method {method!r}; choose one of {METHODS}."
        raise AppError(msg)
    if not eps or eps <= 0:
        msg = f"Epsilon must be positive, got {eps}."
        raise AppError(msg)
    steps = int(pipe.attack_defaults["steps"] if steps is None else steps)
    alpha = auto_alpha(eps, steps) if not alpha else float(alpha)
    clean_k = int(pipe.proba[i].argmax())
    with quiet(single_thread=True):
        x_adv = attack_arrays(
            pipe.classifier, pipe.X[i : i + 1], np.array([clean_k]), method=method, eps=float(eps), alpha=alpha,
            steps=steps, lower=pipe.lower, upper=pipe.upper, batch_size=1, device=DEVICE, random_state=random_state,
        )[float(eps)]  # fmt: skip
        logits, _ = pipe.classifier.predict_arrays(x_adv, device=DEVICE)
    p = _softmax(logits)[0]
    k = int(p.argmax())
    s = float(score(pipe, x_adv)[0]) if with_score and pipe.detector is not None else None
    return CellResult(
        index=i, name=str(pipe.adata.obs_names[i]), true_label=None if pipe.labels is None else str(pipe.labels[i]),
        proba=p, predicted=pipe.classes[k], confidence=float(p[k]), score=s, attacked=True,
        clean_predicted=pipe.classes[clean_k], x=x_adv[0], method=method, eps=float(eps), **_where(pipe, i),
    )  # fmt: skip


def gene_table(
    pipe: Pipeline, clean: CellResult, attacked: CellResult | None = None, *, top: int | None = None
) -> pd.DataFrame:
    """The cell's gene vector: clean values, attacked values and their change, largest change first."""
    df = pd.DataFrame({"gene": pipe.genes, "clean": np.asarray(clean.x, dtype=float)})
    if attacked is not None:
        df["attacked"] = np.asarray(attacked.x, dtype=float)
        df["change"] = df["attacked"] - df["clean"]
        df = df.reindex(df["change"].abs().sort_values(ascending=False, kind="stable").index)
    else:
        df = df.reindex(df["clean"].abs().sort_values(ascending=False, kind="stable").index)
    df = df.reset_index(drop=True)
    return df.head(top) if top else df


def umap_frame(pipe: Pipeline, selected: int | None = None) -> pd.DataFrame:
    """Coordinates of every cell with its label, prediction and whether it is the selected cell."""
    if pipe._umap_base is None:
        pipe._umap_base = pd.DataFrame(
            {
                "x": pipe.umap[:, 0].astype(float),
                "y": pipe.umap[:, 1].astype(float),
                "cell": pipe.obs_names,
                "index": np.arange(pipe.n_cells),
                "label": pipe.labels if pipe.labels is not None else np.array(pipe.classes)[pipe.pred],
                "predicted": np.array(pipe.classes)[pipe.pred],
            }
        )
    df = pipe._umap_base.copy()
    df["selected"] = df["index"].to_numpy() == (-1 if selected is None else int(selected))
    return df


# ----------------------------------------------------------------------------------------------
# global evaluation
@dataclass
class EvalResult:
    """Evaluation of the classifier, the attack and the detector on a set of cells."""

    n_cells: int
    method: str
    eps: float
    threshold: float | None
    metrics: dict[str, float]
    split: str

    def table(self) -> pd.DataFrame:
        """One row per metric: ``metric, value``."""
        return pd.DataFrame({"metric": list(self.metrics), "value": [float(v) for v in self.metrics.values()]})


def evaluate_iter(
    pipe: Pipeline,
    *,
    method: str = "pgd",
    eps: float = 0.1,
    threshold: float | None = None,
    alpha: float | None = None,
    steps: int | None = None,
    split: str = "test",
    batch_size: int = 256,
    max_cells: int | None = None,
    random_state: int = 0,
) -> Iterator[tuple[float, EvalResult | None]]:
    """Evaluate in batches, yielding ``(fraction_done, None)`` after each batch and ``(1.0, result)`` at the end.

    On the cells of ``split`` (all cells when the pipeline has no split or no such cell): attack
    each against its clean prediction, then report the classifier's accuracy (clean, against the
    true labels), the flip rate (attacked prediction differs from the clean one), the detector's
    accuracy on clean cells (score below ``threshold``) and on attacked cells (score at or above
    it), and the AUROC of clean vs. attacked scores.

    Parameters
    ----------
    pipe
        The loaded pipeline.
    method, eps, alpha, steps
        The attack, as in :func:`attack_cell`.
    threshold
        Detection threshold (default the stored one).
    split
        Which cells: ``'test'``, ``'val'``, ``'train'`` or ``'all'``.
    batch_size
        Cells per batch.
    max_cells
        Evaluate at most this many cells (the first ones of the split).
    random_state
        Seed of the random start.

    """
    from sklearn.metrics import roc_auc_score

    from ..attacks.whitebox import attack_arrays

    if pipe.split is not None and split != "all" and (pipe.split == split).any():
        idx = np.flatnonzero(pipe.split == split)
        used = split
    else:
        idx, used = np.arange(pipe.n_cells), "all"
    if max_cells is not None:
        idx = idx[: int(max_cells)]
    threshold = pipe.threshold if threshold is None else float(threshold)
    steps = int(pipe.attack_defaults["steps"] if steps is None else steps)
    alpha = auto_alpha(eps, steps) if not alpha else float(alpha)
    clean_pred = pipe.pred[idx]
    adv_pred = np.empty_like(clean_pred)
    has_det = pipe.detector is not None
    s_clean = np.empty(len(idx)) if has_det else None
    s_adv = np.empty(len(idx)) if has_det else None
    starts = list(range(0, len(idx), batch_size))
    for b, start in enumerate(starts):
        sel = idx[start : start + batch_size]
        Xb = pipe.X[sel]
        with quiet():
            Xa = attack_arrays(
                pipe.classifier, Xb, clean_pred[start : start + len(sel)], method=method, eps=float(eps), alpha=alpha,
                steps=steps, lower=pipe.lower, upper=pipe.upper, batch_size=batch_size, device=DEVICE,
                random_state=random_state + b,
            )[float(eps)]  # fmt: skip
        logits, _ = pipe.classifier.predict_arrays(Xa, device=DEVICE)
        adv_pred[start : start + len(sel)] = logits.argmax(1)
        if has_det:
            s_clean[start : start + len(sel)] = score(pipe, Xb)
            s_adv[start : start + len(sel)] = score(pipe, Xa)
        yield (b + 1) / (len(starts) + 1), None
    metrics: dict[str, float] = {"cells evaluated": float(len(idx))}
    if pipe.labels is not None:
        truth = pd.Categorical(pipe.labels[idx], categories=pipe.classes).codes
        metrics["classifier accuracy (clean)"] = float((clean_pred == truth).mean())
        metrics["classifier accuracy (attacked)"] = float((adv_pred == truth).mean())
    metrics["flip rate"] = float((adv_pred != clean_pred).mean())
    if has_det and threshold is not None:
        metrics["detection accuracy, clean cells"] = float((s_clean < threshold).mean())
        metrics["detection accuracy, attacked cells"] = float((s_adv >= threshold).mean())
        flipped = adv_pred != clean_pred
        if flipped.any():
            metrics["detection accuracy, successful attacks"] = float((s_adv[flipped] >= threshold).mean())
        y = np.r_[np.zeros(len(idx)), np.ones(len(idx))]
        metrics["AUROC (clean vs. attacked)"] = (
            float(roc_auc_score(y, np.r_[s_clean, s_adv])) if len(idx) else float("nan")
        )
    yield (
        1.0,
        EvalResult(n_cells=len(idx), method=method, eps=float(eps), threshold=threshold, metrics=metrics, split=used),
    )


def evaluate(pipe: Pipeline, *, progress: Callable[[float], None] | None = None, **kwargs) -> EvalResult:
    """Run :func:`evaluate_iter` to the end (calling ``progress(fraction)`` after each batch)."""
    result = None
    for frac, res in evaluate_iter(pipe, **kwargs):
        if progress is not None:
            progress(frac)
        result = res if res is not None else result
    return result


def stored_evaluation(pipe: Pipeline) -> pd.DataFrame | None:
    """The evaluation table recorded by the pipeline run (``.uns['sad']['evaluate']['table']``), if any.

    Returns the overall rows of :func:`scadversarial.tl.evaluate`'s long table (``section``,
    ``metric``, ``group``, ``value``, ``n_cells``), without the per-class rows.
    """
    rec = pipe.adata.uns.get(_keys.UNS, {}).get(_keys.STEP_EVALUATE)
    table = rec.get("table") if isinstance(rec, dict) else None
    if not isinstance(table, dict) or not {"section", "metric", "group", "value"} <= set(table):
        return None
    try:
        df = pd.DataFrame({k: np.asarray(v) for k, v in table.items()})
    except ValueError:
        return None
    df = df[[c for c in ("section", "metric", "group", "value", "n_cells") if c in df] + [c for c in df if c not in (
        "section", "metric", "group", "value", "n_cells")]]  # fmt: skip
    df = df[~df["group"].astype(str).str.contains("|", regex=False)]
    df = df[~((df["section"] == "classifier") & (df["group"] != "overall"))]
    return df.reset_index(drop=True)
