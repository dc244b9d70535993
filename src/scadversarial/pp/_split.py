"""``sad.pp.split``: a stratified, reproducible train/val/test split."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _keys
from .._validate import check_adata, check_labels, check_obs_key, set_record


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
        Seed; the same seed and data give the same split.
    key_added
        ``.obs`` key of the split.
    copy
        Return a new AnnData instead of modifying ``adata``.

    Returns
    -------
    ``None``, or the new AnnData when ``copy=True``. Sets ``.obs[key_added]`` (categorical
    ``'train'``/``'val'``/``'test'``) and ``.uns['sad']['split']``.

    """
    check_adata(adata, min_obs=3)
    labels = check_obs_key(adata, labels_key, producer="sad.pp.pseudo_labels")
    if not (0 < train_size < 1 and 0 <= val_size < 1 and train_size + val_size < 1):
        msg = f"train_size={train_size} and val_size={val_size} must be fractions in (0, 1) summing below 1 (the test split gets the rest)."
        raise ValueError(msg)
    n_parts = 3 if val_size > 0 else 2
    cat = check_labels(labels, key=labels_key, min_per_class=n_parts)
    from sklearn.model_selection import train_test_split

    idx = np.arange(adata.n_obs)
    codes = cat.codes
    try:
        train, rest = train_test_split(idx, train_size=train_size, stratify=codes, random_state=random_state)
        if val_size > 0:
            val, test = train_test_split(
                rest, train_size=val_size / (1 - train_size), stratify=codes[rest], random_state=random_state
            )
        else:
            val, test = idx[:0], rest
    except ValueError as e:
        msg = f"Cannot stratify {labels_key!r} with these fractions ({e}). Use larger fractions, or merge or drop small classes."
        raise ValueError(msg) from e
    out = np.empty(adata.n_obs, dtype=object)
    out[train], out[val], out[test] = "train", "val", "test"
    if copy:
        adata = adata.copy()
    adata.obs[key_added] = pd.Categorical(out, categories=list(_keys.SPLITS))
    set_record(
        adata, _keys.STEP_SPLIT,
        params={"labels_key": labels_key, "train_size": train_size, "val_size": val_size, "random_state": int(random_state), "key_added": key_added},
        metrics={"n_train": len(train), "n_val": len(val), "n_test": len(test)},
    )  # fmt: skip
    return adata if copy else None
