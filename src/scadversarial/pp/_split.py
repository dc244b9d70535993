"""``sad.pp.split``: a stratified, reproducible train/val/test split."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _keys
from .._docs import doc_copy, doc_params, doc_returns_copy
from .._validate import check_adata, check_labels, check_obs_key, set_record
from ._labels import check_seed


@doc_params(doc_copy=doc_copy, doc_returns_copy=doc_returns_copy)
def split(
    adata: AnnData,
    labels_key: str = _keys.OBS_LABEL,
    *,
    train_size: float = 0.6,
    val_size: float = 0.2,
    random_state: int = 0,
    key_added: str = _keys.OBS_SPLIT,
    copy: bool = False,
) -> AnnData | None:
    """Stratified train/validation/test split of the cells.

    Parameters
    ----------
    adata
        AnnData with labels.
    labels_key
        ``.obs`` column to stratify by.
    train_size, val_size
        Fractions of cells for training and validation; the test split gets the rest.
    random_state
        Seed (an integer, recorded); the same seed and data give the same split.
    key_added
        ``.obs`` key of the split.
    {doc_copy}

    Each class is split on its own (its cells shuffled with ``random_state``, then cut by the
    largest-remainder rounding of the fractions), so every class with at least one cell per split
    (3 with a validation split, else 2) has cells in every split.

    Returns
    -------
    {doc_returns_copy} Sets ``.obs[key_added]`` (categorical
    ``'train'``/``'val'``/``'test'``) and ``.uns['sad']['split']``.

    Examples
    --------
    >>> import scadversarial as sad
    >>> adata = sad.datasets.pbmc68k_reduced()
    >>> sad.pp.split(adata, "bulk_labels", train_size=0.4, val_size=0.1)
    >>> adata.obs["sad_split"].value_counts().to_dict()
    {{'test': 350, 'train': 280, 'val': 70}}

    """
    check_adata(adata, min_obs=3, allow_backed=True)  # reads and writes .obs/.uns only
    if copy and adata.isbacked:
        msg = "split(copy=True) needs an in-memory AnnData: load it with `adata.to_memory()`, or pass copy=False."
        raise ValueError(msg)
    random_state = check_seed(random_state)
    labels = check_obs_key(adata, labels_key, producer="sad.pp.pseudo_labels")
    if not (0 < train_size < 1 and 0 <= val_size < 1 and train_size + val_size < 1):
        msg = f"train_size={train_size} and val_size={val_size} must be fractions in (0, 1) summing below 1 (the test split gets the rest)."
        raise ValueError(msg)
    fractions = (train_size, val_size, 1 - train_size - val_size) if val_size > 0 else (train_size, 1 - train_size)
    cat = check_labels(labels, key=labels_key, min_per_class=len(fractions))
    rng = np.random.default_rng(random_state)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for code in range(len(cat.categories)):
        cells = rng.permutation(np.flatnonzero(cat.codes == code))
        bounds = np.cumsum(_allocate(len(cells), fractions))[:-1]
        for part, chunk in zip(parts, np.split(cells, bounds), strict=True):
            part.append(chunk)
    train, *rest = (np.sort(np.concatenate(p)) for p in parts)
    val, test = rest if val_size > 0 else (np.arange(0), rest[0])
    out = np.empty(adata.n_obs, dtype=object)
    out[train], out[val], out[test] = "train", "val", "test"
    if copy:
        adata = adata.copy()
    adata.obs[key_added] = pd.Categorical(out, categories=list(_keys.SPLITS))
    params = {
        "labels_key": labels_key,
        "train_size": train_size,
        "val_size": val_size,
        "random_state": random_state,
        "key_added": key_added,
    }
    set_record(
        adata, _keys.STEP_SPLIT, params=params, metrics={"n_train": len(train), "n_val": len(val), "n_test": len(test)}
    )
    return adata if copy else None


def _allocate(n: int, fractions: tuple[float, ...]) -> np.ndarray:
    """Cells of an ``n``-cell class per part: the largest-remainder rounding of ``n * fractions``.

    Every part gets at least one cell when ``n >= len(fractions)`` (what :func:`split`'s class-size check
    asks for): a part rounded to zero takes a cell from the part that holds the most.
    """
    quota = n * np.asarray(fractions, dtype=float)
    counts = np.floor(quota).astype(int)
    order = np.argsort(-(quota - counts), kind="stable")  # ties go to the earlier part (train, then val)
    counts[order[: n - counts.sum()]] += 1
    for empty in np.flatnonzero(counts == 0):
        if n >= len(fractions):
            counts[np.argmax(counts)] -= 1
            counts[empty] += 1
    return counts
