"""Loading a saved pipeline for the app: the AnnData, its models and what the page shows of them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from anndata import AnnData

from .. import _keys, get
from ._cell import clean_scores, softmax
from ._state import DEVICE, AppError, AttackDefaults, Pipeline


def _message(e: Exception) -> str:
    """The text of an error: a :class:`KeyError`'s message without the quotes ``str`` adds."""
    return e.args[0] if isinstance(e, KeyError) and e.args else str(e)


def _record(adata: AnnData, step: str) -> dict | None:
    """The run record ``step`` (:func:`scadversarial.get.record`), or ``None`` when there is none."""
    try:
        rec = get.record(adata, step)
    except KeyError:
        return None
    return rec if isinstance(rec, dict) else None


def _model_ref(adata: AnnData, step: str) -> dict | None:
    """The model reference of the record ``step`` (it has an ``id``), or ``None`` when it references none."""
    ref = (_record(adata, step) or {}).get("model")
    return ref if isinstance(ref, dict) and "id" in ref else None


def _model_id(adata: AnnData, step: str) -> str | None:
    """The id of the model referenced by the record ``step``, or ``None`` when it references none."""
    ref = _model_ref(adata, step)
    return None if ref is None else str(ref["id"])


def _genes_sha256(adata: AnnData, step: str) -> str | None:
    """The SHA-256 of the genes the record ``step``'s model was trained on, as its reference records it."""
    sha = (_model_ref(adata, step) or {}).get("var_names_sha256")
    return str(sha) if sha else None


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
        msg = (
            f"Could not read {str(path)!r} as an .h5ad file ({type(e).__name__}: {e}). "
            "The file is corrupt or not an AnnData."
        )
        raise AppError(msg) from e


def _load_models(adata: AnnData, models: Path | None, warnings: list[str]):
    """Bring the classifier (required) and the detector (optional) of ``adata`` into this process."""
    from ..models._io import load_model

    if _record(adata, _keys.STEP_CLASSIFIER) is None:
        msg = (
            "This AnnData has no trained classifier (no adata.uns['sad']['classifier'] record). Open the "
            "adata.h5ad written by `scadversarial run --out DIR`, or a file saved after `sad.tl.train_classifier`."
        )
        raise AppError(msg)
    ids = {key: _model_id(adata, key) for key in (_keys.STEP_CLASSIFIER, _keys.STEP_DETECTOR)}
    if ids[_keys.STEP_CLASSIFIER] is None:
        msg = "adata.uns['sad']['classifier'] holds no model reference. Re-run `scadversarial run` to save the models."
        raise AppError(msg)
    if models is not None:
        if not models.is_dir():
            msg = (
                f"Models folder {str(models)!r} not found. Pass --models DIR (the models/ folder written by "
                "`scadversarial run`, or the directory given to `sad.save_models`)."
            )
            raise AppError(msg)
        for key, model_id in ids.items():
            if model_id is None:
                continue
            try:
                # the genes checked before the model is registered, as `sad.load_models` checks them
                load_model(models / key, expected_id=model_id, expected_genes_sha256=_genes_sha256(adata, key))
            except (FileNotFoundError, ValueError, KeyError, OSError) as e:
                if key == _keys.STEP_CLASSIFIER:
                    msg = f"Could not load the classifier from {str(models / key)!r}: {e}"
                    raise AppError(msg) from e
                warnings.append(f"The detector could not be loaded, so no detector scores are shown: {e}")
                return _model(adata, _keys.STEP_CLASSIFIER, warnings, required=True), None
    clf = _model(adata, _keys.STEP_CLASSIFIER, warnings, required=True)
    det = None
    if ids[_keys.STEP_DETECTOR] is not None:
        det = _model(adata, _keys.STEP_DETECTOR, warnings, required=False)
    return clf, det


def _model(adata: AnnData, key: str, warnings: list[str], *, required: bool):
    """The model of the record ``key``, its genes checked against the reference (an error, or a warning when optional)."""
    from ..models._io import genes_sha256

    try:
        model = get.model(adata, key)
        expected = _genes_sha256(adata, key)
        if expected and genes_sha256(getattr(model, "var_names", None) or []) != expected:
            msg = f"the {key} model was trained on other genes than adata.uns['sad'][{key!r}] records. Re-save the pipeline."
            raise ValueError(msg)
        return model
    except (KeyError, FileNotFoundError, ValueError, OSError) as e:
        if required:
            msg = f"Could not load the {key}: {_message(e)}"
            raise AppError(msg) from e
        warnings.append(f"The {key} could not be loaded, so no detector scores are shown: {_message(e)}")
        return None


def _attack_defaults(adata: AnnData) -> AttackDefaults:
    """The first recorded white-box attack's settings, at its middle budget."""
    default = AttackDefaults()
    for rec in (_record(adata, _keys.STEP_ATTACKS) or {}).values():
        params = rec.get("params", {}) if isinstance(rec, dict) else {}
        if rec.get("kind", "whitebox") != "whitebox" or "method" not in params:
            continue
        eps = np.atleast_1d(np.asarray(params.get("eps", [default.eps]), dtype=float))
        mid = len(eps) // 2
        # records give one step size per budget (older records: one for all)
        alpha = np.atleast_1d(np.asarray(params.get("alpha", default.alpha), dtype=float))
        return AttackDefaults(
            method=str(params["method"]),
            eps=float(eps[mid]) if eps.size else default.eps,
            alpha=float(alpha[min(mid, len(alpha) - 1)]) if alpha.size else default.alpha,
            steps=int(params.get("steps", default.steps)),
            bounds=str(params.get("bounds", default.bounds)),
        )
    return default


#: Threshold of a detector that carries none and has no recorded one: a probability's midpoint.
FALLBACK_THRESHOLD = 0.5


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
    metrics = (_record(adata, _keys.STEP_DETECTOR) or {}).get("metrics", {})
    if isinstance(metrics, dict) and "threshold" in metrics:
        return float(np.asarray(metrics["threshold"]).ravel()[0])
    return FALLBACK_THRESHOLD


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


def _open(adata: str | Path | AnnData, models: str | Path | None) -> tuple[AnnData, Path | None, str]:
    """The AnnData, its models folder and a description of where it came from."""
    if isinstance(adata, AnnData):
        return adata, Path(models) if models is not None else None, "in-memory AnnData"
    path = Path(adata).expanduser()
    if path.is_dir() and (path / "adata.h5ad").is_file():
        path = path / "adata.h5ad"
    data = _read_h5ad(path)
    if models is not None:
        models_dir = Path(models).expanduser()
    elif (path.parent / "models").is_dir():
        models_dir = path.parent / "models"
    else:
        models_dir = None
    return data, models_dir, str(path)


def _obs_strings(adata: AnnData, key: str | None) -> np.ndarray | None:
    """``adata.obs[key]`` as strings, or ``None`` when there is no such column."""
    return adata.obs[key].astype(str).to_numpy() if key is not None and key in adata.obs else None


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
    from ..tl._input import classifier_input

    warnings: list[str] = []
    adata, models_dir, source = _open(adata, models)
    clf, det = _load_models(adata, models_dir, warnings)
    genes = [str(g) for g in clf.var_names]
    try:
        # the classifier's scaled input, as `sad.tl.predict` reads it: X left log-normalized
        # (`sad.pp.preprocess(output='lognorm')`) goes through the model's transform
        X = np.ascontiguousarray(classifier_input(adata, clf), dtype=np.float32)
    except (KeyError, ValueError) as e:
        msg = f"The classifier does not fit this data: {_message(e)}"
        raise AppError(msg) from e
    if det is not None and list(map(str, getattr(det, "var_names", genes))) != genes:
        warnings.append("The detector was trained on other genes than the classifier; it is ignored.")
        det = None
    if det is None and _record(adata, _keys.STEP_DETECTOR) is None:
        warnings.append("This pipeline has no trained detector: detector scores and verdicts are not available.")
    params = get.record(adata, _keys.STEP_CLASSIFIER).get("params", {})
    labels_key = str(params.get("labels_key", _keys.OBS_LABEL))
    labels = _obs_strings(adata, labels_key)
    if labels is None:
        labels_key = None
        warnings.append("The labels the classifier was trained on are not in .obs: true labels are not shown.")
    logits, _ = clf.predict_arrays(X, device=DEVICE)
    umap, umap_key = _embedding_2d(adata, warnings)
    defaults = _attack_defaults(adata)
    observed = defaults.bounds == "observed"
    pipe = Pipeline(
        adata=adata,
        classifier=clf,
        detector=det,
        X=X,
        genes=genes,
        classes=[str(c) for c in clf.classes],
        labels=labels,
        labels_key=labels_key,
        split=_obs_strings(adata, str(params.get("split_key", _keys.OBS_SPLIT))),
        proba=softmax(logits),
        umap=umap,
        umap_key=umap_key,
        roles=_obs_strings(adata, _keys.OBS_DETECTOR_ROLE) if det is not None else None,
        threshold=_threshold(adata, det),
        attack_defaults=defaults,
        lower=X.min(0) if observed else None,
        upper=X.max(0) if observed else None,
        source=source,
        warnings=warnings,
    )
    clean_scores(pipe)
    return pipe
