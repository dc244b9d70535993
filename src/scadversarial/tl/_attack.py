"""``sad.tl.attack``: white-box adversarial attacks written to layers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _keys
from .._settings import settings
from .._validate import check_adata, check_obs_key, h5ad_safe, matrix_for_genes, uns_root
from ..attacks.whitebox import METHODS, attack_arrays
from ..models.classifier import CellClassifier
from ._classifier import _write_predictions
from ._models import get_model


def _resolve_bounds(bounds, X: np.ndarray):
    if bounds is None:
        return None, None
    if isinstance(bounds, str):
        if bounds != "observed":
            msg = f"Unknown bounds {bounds!r}; use None, 'observed' or a (lower, upper) pair."
            raise ValueError(msg)
        return X.min(0), X.max(0)
    if not (isinstance(bounds, Sequence | tuple) and len(bounds) == 2):
        msg = "bounds must be None, 'observed' or a (lower, upper) pair of scalars or per-gene arrays."
        raise ValueError(msg)
    lower, upper = bounds
    for b in (lower, upper):
        if b is not None and np.ndim(b) == 1 and len(b) != X.shape[1]:
            msg = f"Per-gene bounds need {X.shape[1]} values (one per gene), got {len(b)}."
            raise ValueError(msg)
    return lower, upper


def _resolve_mask(adata: AnnData, mask, n_genes: int):
    if mask is None:
        return None
    if isinstance(mask, str):
        if mask not in adata.var:
            msg = f"Mask column {mask!r} not found in adata.var (columns: {list(adata.var.columns)})."
            raise KeyError(msg)
        mask = adata.var[mask].to_numpy()
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape != (n_genes,):
        msg = f"mask must be a boolean array with one value per gene ({n_genes}), or a boolean .var column name."
        raise ValueError(msg)
    if not mask.any():
        msg = "mask allows no gene to change; pass None or a mask with at least one True."
        raise ValueError(msg)
    return mask


def flip_table(target: np.ndarray, preds: dict[str, np.ndarray], classes: list[str]) -> dict:
    """Flip rates (prediction differs from the attacked class) per layer, any layer, and per class."""
    flips = {k: p != target for k, p in preds.items()}
    any_flip = np.logical_or.reduce(list(flips.values()))
    per_class = np.full((len(flips), len(classes)), np.nan)
    for i, f in enumerate(flips.values()):
        for c in range(len(classes)):
            sel = target == c
            if sel.any():
                per_class[i, c] = f[sel].mean()
    any_class = np.array([any_flip[target == c].mean() if (target == c).any() else np.nan for c in range(len(classes))])
    return {
        "flip_rate": {k: float(f.mean()) for k, f in flips.items()},
        "flip_rate_any": float(any_flip.mean()),
        "per_class": {
            "classes": list(classes),
            "layers": list(flips),
            "flip_rate": per_class,
            "flip_rate_any": any_class,
        },
    }


def attack(
    adata: AnnData,
    method: str = "pgd",
    *,
    eps: float | Sequence[float] = (0.05, 0.1, 0.15),
    alpha: float = 0.02,
    steps: int = 10,
    labels_key: str | None = None,
    layer: str | None = None,
    bounds: str | tuple | None = None,
    mask: np.ndarray | str | None = None,
    model: CellClassifier | None = None,
    batch_size: int | None = None,
    random_state: int = 0,
    device: str | None = None,
    key_added: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """White-box adversarial attack on the classifier, one layer per epsilon.

    Untargeted: each cell is pushed away from its predicted class (or its label in
    ``labels_key``) by maximizing the cross-entropy within an epsilon-ball of the scaled input.

    Parameters
    ----------
    adata
        AnnData with a trained classifier (:func:`train_classifier`).
    method
        ``'pgd'`` (L-inf projected gradient descent), ``'pgd_rs'`` (PGD from a random start),
        ``'pgd_l2'`` (L2 PGD; eps is an L2 radius) or ``'fgsm'`` (one signed-gradient step of size eps).
    eps
        One or several budgets; each gets its own layer.
    alpha, steps
        PGD step size and number of steps.
    labels_key
        Attack these labels instead of the predicted class (``None``: predicted, as at inference).
    layer
        Matrix to attack (default the scaled ``X``).
    bounds
        ``None``; ``'observed'`` keeps each gene within its observed min/max over all cells (e.g. a
        gene with no expression cannot go below its zero value); or ``(lower, upper)`` scalars or per-gene arrays.
    mask
        Genes allowed to change: a boolean array over genes or the name of a boolean ``.var`` column.
    model
        Classifier to attack (default: the one in ``adata.uns['sad']['classifier']``).
    batch_size
        Cells per batch (default ``sad.settings.batch_size``).
    random_state
        Seed of the random start.
    device
        Torch device (default ``sad.settings.device``).
    key_added
        Prefix of the layers and name of the run record (default ``'sad_<method>'``).
    copy
        Return a new AnnData instead of modifying ``adata``.

    Returns
    -------
    ``None``, or the new AnnData when ``copy=True``. Sets, for each epsilon:

    ``.layers['<key_added>_eps<eps>']``
        The perturbed matrix, e.g. ``.layers['sad_pgd_eps0.1']``.
    ``.obs['<key_added>_eps<eps>_pred']``
        The classifier's prediction on it.

    ``.uns['sad']['attacks'][key_added]``
        ``params``, ``layers``, ``eps`` and ``metrics`` (flip rate per epsilon, for any epsilon, and per attacked class).

    """
    check_adata(adata)
    if method not in METHODS:
        msg = f"Unknown attack method {method!r}; choose one of {METHODS}."
        raise ValueError(msg)
    eps_list = [float(e) for e in np.atleast_1d(eps)]
    if not eps_list or any(e <= 0 for e in eps_list):
        msg = f"eps must be positive, got {eps}."
        raise ValueError(msg)
    if model is None:
        model = get_model(adata, _keys.STEP_CLASSIFIER)
    X = matrix_for_genes(adata, model.var_names, layer)
    if labels_key is None:
        logits, _ = model.predict_arrays(X, device=device)
        target = logits.argmax(1)
    else:
        labels = check_obs_key(adata, labels_key).astype(str)
        unknown = sorted(set(labels) - set(model.classes))
        if unknown:
            msg = f"Labels {unknown[:5]} in {labels_key!r} are not classes of the model ({model.classes}). Use the key the model was trained on."
            raise ValueError(msg)
        target = pd.Categorical(labels, categories=model.classes).codes.astype(np.int64)
    lower, upper = _resolve_bounds(bounds, X)
    mask_arr = _resolve_mask(adata, mask, X.shape[1])
    prefix = key_added or f"sad_{method}"
    advs = attack_arrays(
        model, X, target, method=method, eps=eps_list, alpha=alpha, steps=steps, lower=lower, upper=upper, mask=mask_arr,
        batch_size=batch_size or settings.batch_size, device=settings.torch_device(device), random_state=random_state,
    )  # fmt: skip
    if copy:
        adata = adata.copy()
    layers, preds = [], {}
    for e, Xa in advs.items():
        name = f"{prefix}_eps{e:g}"
        if adata.var_names.equals(pd.Index(model.var_names)):
            adata.layers[name] = Xa
        else:  # attacked genes are the model's; other genes keep their values
            full = np.asarray(adata.X if layer is None else adata.layers[layer], dtype=np.float32).copy()
            full[:, adata.var_names.get_indexer(model.var_names)] = Xa
            adata.layers[name] = full
        preds[name] = _write_predictions(adata, model, Xa, layer=name)
        layers.append(name)
    metrics = flip_table(target, preds, list(model.classes))
    metrics["flip_rate_per_eps"] = np.array([metrics["flip_rate"][n] for n in layers])
    root = uns_root(adata)
    root.setdefault(_keys.STEP_ATTACKS, {})
    root[_keys.STEP_ATTACKS][prefix] = h5ad_safe({
        "params": {
            "method": method, "eps": eps_list, "alpha": alpha, "steps": steps, "labels_key": labels_key or "predicted",
            "layer": layer or "X", "bounds": bounds if isinstance(bounds, str) else ("custom" if bounds is not None else "none"),
            "mask": "custom" if mask is not None else "none", "random_state": int(random_state),
        },
        "layers": layers, "eps": eps_list, "metrics": metrics, "kind": "whitebox",
    })  # fmt: skip
    return adata if copy else None
