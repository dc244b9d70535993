"""Accessors for what :mod:`scadversarial.tl` writes into ``.uns['sad']``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .. import _keys
from .._validate import check_adata, close_matches

if TYPE_CHECKING:
    from anndata import AnnData

    from ..models._base import SadModel

#: Which public function writes each run record, for error messages that say what to run.
PRODUCERS: dict[str, str] = {
    _keys.STEP_PREPROCESS: "sad.pp.preprocess",
    _keys.STEP_LABELS: "sad.pp.pseudo_labels",
    _keys.STEP_SPLIT: "sad.pp.split",
    _keys.STEP_CLASSIFIER: "sad.tl.train_classifier",
    _keys.STEP_ATTACKS: "sad.tl.attack",
    _keys.STEP_DETECTOR: "sad.tl.train_detector",
    _keys.STEP_DETECT: "sad.tl.detect",
    _keys.STEP_META: "sad.tl.meta_features",
    _keys.STEP_EVALUATE: "sad.tl.evaluate",
    "benchmark": "sad.tl.benchmark_detectors",
    _keys.STEP_CERTIFY: "sad.tl.certify",
}


#: The benchmark table's text columns; every other column is a number (NaN where it does not apply).
TEXT_COLUMNS = ("threat", "kind", "detector", "space", "constraint")


def _root(adata: AnnData) -> dict:
    # The accessors read `.uns` only, which a backed AnnData holds in memory.
    check_adata(adata, allow_backed=True)
    return adata.uns.get(_keys.UNS, {})


def record(adata: AnnData, step: str) -> dict:
    """The run record ``adata.uns['sad'][step]``.

    Parameters
    ----------
    adata
        AnnData processed by :mod:`scadversarial`.
    step
        A step such as ``'preprocess'``, ``'classifier'``, ``'detector'``, ``'evaluate'``, or a
        ``key_added`` given to the function that wrote it.

    Returns
    -------
    The record: a dict with ``params``, ``metrics`` and, by step, ``model`` or ``table``.

    Examples
    --------
    >>> import scadversarial as sad
    >>> adata = sad.datasets.pbmc68k_reduced()
    >>> sad.pp.preprocess(adata)
    >>> sorted(sad.get.record(adata, "preprocess"))
    ['metrics', 'params']

    """
    root = _root(adata)
    if step not in root:
        producer = f"`{PRODUCERS[step]}`" if step in PRODUCERS else "the sad.tl function that writes it (its key_added)"
        msg = f"No {step!r} record in adata.uns['sad']{_did_you_mean(step, list(root))}. Run {producer} first."
        raise KeyError(msg)
    return root[step]


def attack_record(adata: AnnData, key: str) -> dict:
    """The record of one attack, ``adata.uns['sad']['attacks'][key]``.

    Parameters
    ----------
    adata
        AnnData attacked with :func:`~scadversarial.tl.attack` or a black-box attack.
    key
        The attack's ``key_added`` (e.g. ``'sad_pgd'``).

    Returns
    -------
    The record: ``kind`` (``'whitebox'``, ``'score_based'``, ``'blackbox'``, ...), ``params``,
    ``metrics`` and, for white-box attacks, ``layers`` and ``eps``; for black-box ones, ``table``.

    """
    attacks = _root(adata).get(_keys.STEP_ATTACKS, {})
    if key not in attacks:
        have = sorted(attacks)
        msg = (
            f"No attack {key!r} in adata.uns['sad']['attacks'] (have {have}){_did_you_mean(key, have)}. "
            "Run `sad.tl.attack` or a black-box attack with this key_added first."
        )
        raise KeyError(msg)
    return attacks[key]


def _did_you_mean(word: str, candidates: list[str]) -> str:
    near = close_matches(word, [str(c) for c in candidates])
    return f" (did you mean {', '.join(map(repr, near))}?)" if near else ""


def _frame(table: dict | pd.DataFrame) -> pd.DataFrame:
    if isinstance(table, pd.DataFrame):
        return table.copy()
    return pd.DataFrame({str(c): np.asarray(v) for c, v in table.items()})


def attack_table(adata: AnnData, key: str) -> pd.DataFrame:
    """One attack's results as a table.

    Parameters
    ----------
    adata
        AnnData attacked with :func:`~scadversarial.tl.attack` or a black-box attack.
    key
        The attack's ``key_added``.

    Returns
    -------
    For black-box attacks, the table they recorded (one row per gene set, cell or run, by mode).
    For white-box and score-based attacks, one row per budget: ``layer``, ``eps`` and ``flip_rate``
    (the fraction of cells whose prediction left the attacked class).

    Examples
    --------
    >>> import scadversarial as sad
    >>> adata = sad.datasets.pbmc68k_reduced()
    >>> sad.pp.preprocess(adata)
    >>> sad.pp.pseudo_labels(adata)
    >>> sad.pp.split(adata)
    >>> sad.tl.train_classifier(adata, max_epochs=2)
    >>> sad.tl.attack(adata, eps=[0.1, 0.5])
    >>> sad.get.attack_table(adata, "sad_pgd").columns.tolist()
    ['layer', 'eps', 'flip_rate']

    """
    rec = attack_record(adata, key)
    if "table" in rec:
        return _frame(rec["table"])
    layers = [str(v) for v in np.atleast_1d(rec["layers"])]
    rates = rec["metrics"]["flip_rate"]
    return pd.DataFrame(
        {
            "layer": layers,
            "eps": np.asarray(rec["eps"], dtype=float).reshape(-1)[: len(layers)],
            "flip_rate": [float(rates[name]) for name in layers],
        }
    )


def benchmark_table(adata: AnnData, key: str = "benchmark") -> pd.DataFrame:
    """The table :func:`~scadversarial.tl.benchmark_detectors` recorded in ``.uns['sad'][key]``."""
    from ..tl._benchmark import COLUMNS

    table = record(adata, key)["table"]
    frame = pd.DataFrame({c: np.asarray(table[c]) for c in COLUMNS if c in table})
    # An all-missing number column comes back from the record as the strings "None"/"nan".
    for c in frame.columns.difference(TEXT_COLUMNS):
        frame[c] = pd.to_numeric(frame[c], errors="coerce")
    return frame


def evaluation_table(adata: AnnData, key: str = _keys.STEP_EVALUATE) -> pd.DataFrame:
    """The long table :func:`~scadversarial.tl.evaluate` recorded in ``.uns['sad'][key]``.

    Columns ``section``, ``metric``, ``group``, ``value`` and ``n_cells``.
    """
    from ..tl._evaluate import COLUMNS

    table = record(adata, key)["table"]
    return pd.DataFrame({c: np.asarray(table[c]) for c in COLUMNS if c in table})


def model(adata: AnnData, key: str = _keys.STEP_CLASSIFIER) -> SadModel:
    """The live model referenced by ``adata.uns['sad'][key]['model']``.

    Loads it from its saved path when it is not in this process yet.

    Parameters
    ----------
    adata
        AnnData with a record written by :func:`~scadversarial.tl.train_classifier` or
        :func:`~scadversarial.tl.train_detector`.
    key
        ``'classifier'``, ``'detector'`` or the ``key_added`` used at training.

    Returns
    -------
    The model (a :class:`torch.nn.Module`).

    """
    from ..tl._models import get_model

    return get_model(adata, key)
