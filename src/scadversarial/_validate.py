"""Input checks and ``.uns`` record helpers shared by every public function.

Every check raises before anything is written, so a failing call leaves the AnnData unchanged.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Hashable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Literal, TypeVar, get_args, get_origin

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from . import _keys

N_SHOWN = 10  # names listed in an error message before '...': enough to recognise a pattern, short enough to read
CLOSE_MATCH_CUTOFF = 0.6  # difflib's default similarity: catches one-letter typos and case slips, not unrelated names

MissingPolicy = Literal["raise", "fill"]  # what to do with genes a model needs and the AnnData lacks
#: set while a caller that already warned about filled genes reads them again (chunk by chunk): one warning per call
_QUIET_FILL: ContextVar[bool] = ContextVar("sad_quiet_fill", default=False)

T = TypeVar("T")


def check_choice(name: str, value: T, allowed: Collection | Any) -> T:
    """Return ``value`` when it is one of ``allowed``, else raise a :class:`ValueError` listing the choices.

    The one place where string options (``Literal`` types) are checked.

    Parameters
    ----------
    name
        The parameter's name, as the user typed it.
    value
        The value passed.
    allowed
        The accepted values, or a ``Literal[...]`` type whose arguments are those values.

    Examples
    --------
    >>> check_choice("missing", "fill", Literal["raise", "fill"])
    'fill'

    """
    choices = tuple(get_args(allowed)) if get_origin(allowed) is Literal else tuple(allowed)
    if isinstance(value, Hashable) and any(_same(value, c) for c in choices):
        return value
    close = close_matches(str(value), [str(c) for c in choices], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    msg = f"{name}={value!r} is not one of {', '.join(map(repr, choices))}{hint}. Pass one of these values."
    raise ValueError(msg)


def close_matches(word: str, candidates: Collection[str], *, n: int = 3) -> list[str]:
    """Up to ``n`` of ``candidates`` close to ``word`` (case-insensitive :func:`difflib.get_close_matches`)."""
    lower = {}
    for c in candidates:
        lower.setdefault(str(c).lower(), str(c))
    found = difflib.get_close_matches(word.lower(), list(lower), n=n, cutoff=CLOSE_MATCH_CUTOFF)
    return [lower[f] for f in found]


def _same(value: Any, choice: Any) -> bool:
    """``value == choice`` of the same kind (a numpy string counts as a string; ``True`` is not ``1``)."""
    if isinstance(choice, str):
        return isinstance(value, str) and value == choice
    return type(value) is type(choice) and value == choice


def check_adata(adata: Any, *, min_obs: int = 1, allow_backed: bool = False) -> AnnData:
    """Check that ``adata`` is a non-empty, in-memory :class:`~anndata.AnnData` with unique ``var_names``.

    Parameters
    ----------
    min_obs
        Fewest cells accepted.
    allow_backed
        Accept a backed AnnData (``backed='r'``): for callers that only read matrices through
        :func:`get_matrix` (which reads a backed matrix into memory) and write nothing to ``X``.

    """
    if not isinstance(adata, AnnData):
        msg = f"Expected an AnnData object, got {type(adata).__name__}. Load your data with `anndata.read_h5ad` or `sc.read_10x_h5`."
        raise TypeError(msg)
    if adata.n_obs < min_obs or adata.n_vars == 0:
        msg = (
            f"The AnnData is empty or too small ({adata.n_obs} cells x {adata.n_vars} genes; at least {min_obs} "
            "cells and 1 gene needed). Check the filtering that emptied it (e.g. the thresholds of "
            "`sc.pp.filter_cells` / `sc.pp.filter_genes`), or pass a larger AnnData."
        )
        raise ValueError(msg)
    if not isinstance(adata.var_names, pd.RangeIndex) and adata.var_names.inferred_type not in ("string", "empty"):
        # genes are matched by name, and anndata subsets gene axes by name only for string names
        msg = (
            f"adata.var_names must be strings (got {adata.var_names.inferred_type} names such as "
            f"{shown_names(adata.var_names[:3])}, e.g. Entrez ids). Convert them first: "
            "`adata.var_names = adata.var_names.astype(str)`."
        )
        raise TypeError(msg)
    if not adata.var_names.is_unique:  # genes are aligned by name: a repeated name is ambiguous
        dup = adata.var_names[adata.var_names.duplicated()].unique()
        msg = (
            f"adata.var_names has {len(dup)} duplicate gene names: {shown_names(dup)}. Genes are matched by name; "
            "make the names unique first with `adata.var_names_make_unique()`."
        )
        raise ValueError(msg)
    if adata.isbacked and not allow_backed:
        msg = (
            f"adata is backed (opened with backed='r' from {str(adata.filename)!r}); this function writes to the "
            "AnnData and needs it in memory. Load it with `adata = adata.to_memory()`."
        )
        raise ValueError(msg)
    return adata


def check_copy(adata: AnnData, *, copy: bool, name: str) -> None:
    """Refuse ``copy=True`` on a backed AnnData (a copy would load or duplicate the file), naming what works."""
    if copy and adata.isbacked:
        msg = (
            f"{name}(copy=True) cannot copy a backed AnnData (opened with backed='r' from "
            f"{str(adata.filename)!r}): it would load the whole matrix. Call `{name}(adata)` without copy: the "
            "cells are read from the file chunk by chunk and the results (.obs, .obsm, .layers, .uns) are written "
            "in memory (the file is not changed); or load it first with `adata = adata.to_memory()`."
        )
        raise ValueError(msg)


def shown_names(names) -> str:
    """The first :data:`N_SHOWN` of ``names`` as ``'a', 'b', ...`` for an error message."""
    names = list(names)
    return ", ".join(repr(str(n)) for n in names[:N_SHOWN]) + (", ..." if len(names) > N_SHOWN else "")


def is_dask(X) -> bool:
    """Whether ``X`` is a dask array (without importing dask when it is not installed)."""
    return type(X).__module__.split(".")[0] == "dask"


def is_backed(X) -> bool:
    """Whether ``X`` is read from a file: an h5py / zarr dataset or anndata's backed sparse dataset."""
    if X is None or isinstance(X, np.ndarray) or sp.issparse(X) or is_dask(X):
        return False
    return hasattr(X, "to_memory") or type(X).__module__.split(".")[0] in ("h5py", "zarr")


def _read_backed(X, *, dense: bool):
    """An in-memory copy of a backed matrix (h5py dataset, anndata's backed sparse dataset), else ``X``.

    With ``dense``, a dask array is computed as a whole (``np.asarray`` of one with sparse blocks would be a 0-d
    object array); otherwise it is returned lazy (``sad.pp.preprocess`` reads it block by block). Functions that
    read big matrices read them in chunks instead (``tl/_chunks.py``).
    """
    if dense and is_dask(X):
        X = X.compute()
    if hasattr(X, "to_memory"):  # anndata's backed CSR/CSC dataset
        return X.to_memory()
    if type(X).__module__.startswith("h5py"):  # a dense backed X
        return X[()]
    return X


def get_matrix(
    adata: AnnData,
    layer: str | None = None,
    *,
    dense: bool = True,
    dtype=np.float32,
    copy: bool = False,
    check: bool = True,
) -> np.ndarray:
    """Return ``X`` or ``layers[layer]`` as a (dense) array, checked to be finite.

    With ``copy=True`` the array never shares memory with ``adata`` (the caller may write into it); it is
    copied only when the conversion did not already make a new array. ``check=False`` skips the finiteness
    check, for callers that check the part they read themselves.
    """
    if layer is None:
        X = adata.X
    else:
        if layer not in adata.layers:
            msg = (
                f"Layer {layer!r} not found in adata.layers (available: {list(adata.layers)}). "
                "Pass an existing layer, or layer=None for adata.X; attack layers are written by `sad.tl.attack`."
            )
            raise KeyError(msg)
        X = adata.layers[layer]
    X = _read_backed(X, dense=dense)
    if X is None:
        msg = "adata.X is None. Set adata.X or pass layer=..."
        raise ValueError(msg)
    fresh = adata.isbacked and layer is None  # read from the file: never shares memory with adata
    if dense:
        if sp.issparse(X):  # toarray() and dtype conversions return new arrays
            X, fresh = X.toarray(), True
        X = np.asarray(X)
        if X.dtype != dtype:
            X, fresh = X.astype(dtype), True
    if copy and not fresh:
        X = X.copy()
    if check:
        check_finite(X, matrix_name(layer))
    return X


def matrix_name(layer: str | None) -> str:
    """How messages name ``X`` or ``layers[layer]``: ``'adata.X'`` or ``"adata.layers['name']"``."""
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"


def check_finite(X, where: str = "the matrix") -> None:
    """Raise a :class:`ValueError` when ``X`` holds NaN or infinite values."""
    data = X.data if sp.issparse(X) else np.asarray(X)
    if data.dtype.kind in "fc" and not _all_finite(data):
        n_bad = int((~np.isfinite(data)).sum())
        msg = (
            f"{where} contains {n_bad} NaN or infinite values. Remove or impute them first "
            "(e.g. `adata = adata[:, ~np.isnan(adata.X).any(0)]` or `np.nan_to_num`)."
        )
        raise ValueError(msg)


def _all_finite(data: np.ndarray) -> bool:
    """Whether a float array holds no NaN or infinite value.

    NaN and inf propagate to the sum, so a finite sum (one SIMD pass, no temporary) proves the array finite;
    only a non-finite sum (NaN / inf, or an overflow of huge finite values) needs the element-wise test.
    """
    return bool(np.isfinite(np.einsum(data, list(range(data.ndim)), []))) or bool(np.isfinite(data).all())


def negative_min(X) -> float | None:
    """The smallest value of ``X`` (dense or sparse) when it is negative, else ``None``."""
    data = X.data if sp.issparse(X) else np.asarray(X)
    low = float(data.min()) if data.size else 0.0
    return low if low < 0 else None


def check_nonnegative(X, where: str = "the matrix") -> None:
    """Raise a :class:`ValueError` when ``X`` (expected counts) has negative values."""
    low = negative_min(X)
    if low is not None:
        msg = (
            f"{where} has negative values (min {low:g}) but raw counts were expected. "
            "Pass counts, or set `already_log=True` if the data are log-normalized (and `layer=` to the right matrix)."
        )
        raise ValueError(msg)


def check_obs_key(adata: AnnData, key: str, *, producer: str | None = None) -> pd.Series:
    """Return ``adata.obs[key]``, or raise a :class:`KeyError` naming close matches and, for a key of ``sad``'s, its producer.

    ``producer`` (the function that writes the default key) is named only when ``key`` is one of the
    keys ``sad`` writes (``'sad_...'``): a user's own column with a typo is not ``sad``'s to produce.
    """
    if key not in adata.obs:
        close = close_matches(str(key), [str(c) for c in adata.obs.columns])
        hints = [f" Did you mean {' or '.join(map(repr, close))}?"] if close else []
        if producer and str(key).startswith(f"{_keys.UNS}_"):
            hints.append(f" It is written by `{producer}`; run it first.")
        msg = (
            f"Column {key!r} is missing from adata.obs (columns: {shown_names(adata.obs.columns)}).{''.join(hints)} "
            "Pass the name of an existing column."
        )
        raise KeyError(msg)
    return adata.obs[key]


def check_labels(labels: pd.Series | np.ndarray, *, key: str = "labels", min_per_class: int = 1) -> pd.Categorical:
    """Check a label vector: no missing values, at least two classes, each with ``min_per_class`` cells."""
    labels = pd.Series(labels)
    if labels.isna().any():
        msg = f"{labels.isna().sum()} cells have no label in {key!r}. Drop them first: `adata = adata[adata.obs[{key!r}].notna()].copy()`."
        raise ValueError(msg)
    cat = pd.Categorical(labels.astype(str))
    counts = pd.Series(cat).value_counts()
    if len(counts) < 2:
        msg = f"{key!r} has a single class ({counts.index[0]!r}); a classifier needs at least two. Use other labels or `sad.pp.pseudo_labels`."
        raise ValueError(msg)
    small = counts[counts < min_per_class]
    if len(small):
        sizes = {str(c): int(n) for c, n in small.items()}
        msg = (
            f"Classes too small in {key!r}: {sizes} (need at least {min_per_class} cells each to stratify). "
            f"Merge or drop those classes, e.g. `adata = adata[~adata.obs[{key!r}].isin({list(sizes)})].copy()`."
        )
        raise ValueError(msg)
    return cat


def labelled_cells(
    adata: AnnData, labels_key: str, cells: np.ndarray, *, caller: str, measured: str, keeps: str, fix: str
) -> np.ndarray:
    """Per cell, whether it has a label in ``labels_key``: a missing one (NaN) is left out of accuracies.

    Compared as strings, NaN would become ``'nan'``, a wrong call of every unlabelled cell. Raises a
    :class:`ValueError` (``fix``: what to do) when none of ``cells`` (a boolean mask) has a label, and
    warns how many of them are left out of ``measured`` while ``keeps`` keep them.
    """
    known = adata.obs[labels_key].notna().to_numpy()
    missing = int((cells & ~known).sum())
    if cells.any() and missing == int(cells.sum()):
        msg = f"{caller}: no cell has a label in adata.obs[{labels_key!r}] (all NaN), so {measured} has no cell. {fix}"
        raise ValueError(msg)
    if missing:
        from ._settings import logger

        logger.warning(
            "%s: %d of %d cells have no label in adata.obs[%r] (NaN): %s leaves them out; %s keep them.",
            caller,
            missing,
            int(cells.sum()),
            labels_key,
            measured,
            keeps,
        )
    return known


def uns_root(adata: AnnData) -> dict:
    """``adata.uns['sad']``, created when missing."""
    if _keys.UNS not in adata.uns:
        adata.uns[_keys.UNS] = {}
    return adata.uns[_keys.UNS]


def get_record(adata: AnnData, step: str, *, producer: str) -> dict:
    """Return the run record ``adata.uns['sad'][step]`` or raise a :class:`KeyError` naming its producer."""
    rec = adata.uns.get(_keys.UNS, {}).get(step)
    if rec is None:
        msg = f"No {step!r} record in adata.uns['sad']. Run `{producer}` first."
        raise KeyError(msg)
    return rec


def set_record(
    adata: AnnData,
    step: str,
    *,
    params: Mapping | None = None,
    metrics: Mapping | None = None,
    model: Mapping | None = None,
    **extra,
) -> dict:
    """Write an h5ad-writable run record to ``adata.uns['sad'][step]``."""
    rec = {"params": h5ad_safe(params or {}), "metrics": h5ad_safe(metrics or {})}
    if model is not None:
        rec["model"] = h5ad_safe(model)
    for k, v in extra.items():
        rec[k] = h5ad_safe(v)
    uns_root(adata)[step] = rec
    return rec


def h5ad_safe(obj: Any) -> Any:
    """Convert ``obj`` to types that :func:`anndata.AnnData.write_h5ad` stores (no None, no objects)."""
    if isinstance(obj, Mapping):
        return {str(k): h5ad_safe(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, pd.DataFrame):
        return {str(c): h5ad_safe(obj[c].to_numpy()) for c in obj.columns}
    if isinstance(obj, pd.Series | pd.Index | pd.Categorical):
        return h5ad_safe(np.asarray(obj))
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind == "O":
            return obj.astype(str)
        return obj
    if isinstance(obj, list | tuple):
        if len(obj) == 0:
            return np.array([], dtype=float)
        if all(isinstance(v, str) for v in obj):
            return np.array(obj, dtype=str)
        if all(isinstance(v, bool | int | float | np.number | np.bool_) for v in obj):
            return np.asarray(obj)
        return {str(i): h5ad_safe(v) for i, v in enumerate(obj)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, bool | int | float | str):
        return obj
    if obj is None:
        return ""
    return str(obj)


@contextmanager
def quiet_fill() -> Iterator[None]:
    """Within the block, genes filled by ``missing='fill'`` are not logged (the caller logged them once).

    A context variable, so it holds in the thread (or dask task) that enters the block: a chunked
    reader enters it in each chunk's function.
    """
    token = _QUIET_FILL.set(True)
    try:
        yield
    finally:
        _QUIET_FILL.reset(token)


def absent_genes(adata: AnnData, var_names) -> np.ndarray:
    """Per gene of ``var_names`` (a model's genes): ``True`` when ``adata.var_names`` lacks it."""
    return adata.var_names.get_indexer(pd.Index([str(v) for v in var_names])) < 0


def warn_filled(adata: AnnData, var_names, how: str) -> None:
    """Log once that the genes of ``var_names`` missing from ``adata`` were filled, and with what (``how``)."""
    from ._settings import logger

    absent = absent_genes(adata, var_names)
    if absent.any() and not _QUIET_FILL.get():
        names = [str(v) for v in np.asarray(var_names)[absent][:N_SHOWN]]
        logger.warning("Filled %d missing genes %s: %s", int(absent.sum()), how, names)


def matrix_for_genes(
    adata: AnnData,
    var_names,
    layer: str | None = None,
    *,
    missing: MissingPolicy = "raise",
    fill_value: float = 0.0,
    check: bool = True,
) -> np.ndarray:
    """Dense matrix of ``adata`` with columns in the order of ``var_names`` (a model's genes).

    Parameters
    ----------
    missing
        ``'raise'``: a :class:`KeyError` naming the missing genes; ``'fill'``: fill them with
        ``fill_value`` (0 is the training mean in scaled space) and log a warning (not inside
        :func:`quiet_fill`).
    check
        Check that the matrix is finite (as :func:`get_matrix`).

    """
    check_choice("missing", missing, MissingPolicy)
    var_names = pd.Index([str(v) for v in var_names])
    if adata.var_names.equals(var_names):
        return get_matrix(adata, layer, check=check)
    idx = adata.var_names.get_indexer(var_names)
    absent = var_names[idx < 0]
    if len(absent) and missing != "fill":
        shown = ", ".join(map(str, absent[:N_SHOWN])) + (", ..." if len(absent) > N_SHOWN else "")
        msg = (
            f"The model needs {len(var_names)} genes; {len(absent)} are missing from adata.var_names: {shown}. "
            "Preprocess the new data with the same genes (`sad.pp.preprocess(new, reference=adata)`), "
            "or pass `missing='fill'` to fill them with the training mean."
        )
        raise KeyError(msg)
    X = get_matrix(adata, layer, dense=False, check=check)
    out = np.full((adata.n_obs, len(var_names)), fill_value, dtype=np.float32)
    ok = idx >= 0
    cols = X[:, idx[ok]]  # the model's genes only, before densifying: a chunk of all genes would be large
    if is_dask(cols):
        cols = cols.compute()
    out[:, ok] = cols.toarray() if sp.issparse(cols) else np.asarray(cols)
    warn_filled(adata, var_names, f"with {fill_value:g}")
    return out
