"""The one writer of the black-box run records, and the ``copy`` convention.

A record's ``params`` are built from the call's own arguments (the public function's ``locals()`` at entry, its
options objects flattened), so no argument can be left out of it; only what the set-up resolved (the classifier's
kind, the clusters attacked, the number of genes searched) is added by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ... import _keys
from ..._validate import check_adata, h5ad_safe, uns_root
from ._options import _Options, as_modification, as_modifications
from ._setup import Ctx, setup, warn_ties

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData

# arguments that say where the result goes, not how it was computed
_NOT_PARAMS = frozenset({"adata", "copy", "key_added"})


def begin(adata: AnnData, *, copy: bool) -> AnnData:
    """The AnnData to write into: ``adata`` itself, or its copy with ``copy=True``."""
    check_adata(adata)
    return adata.copy() if copy else adata


def finish(adata: AnnData, *, copy: bool) -> AnnData | None:
    """What a public function returns: ``None``, or the written copy with ``copy=True``."""
    return adata if copy else None


def record_key(key: str) -> str:
    """A key of ``.uns['sad']['attacks']`` (``'/'`` would make an HDF5 group)."""
    return str(key).replace("/", "_")


def call_params(call: dict[str, Any], ctx: Ctx | None, **resolved: Any) -> dict[str, Any]:
    """``params`` of a run record from the call's arguments; ``resolved`` replaces or adds entries by name."""
    params: dict[str, Any] = {}
    for name, value in {**call, **resolved}.items():
        if name in _NOT_PARAMS:
            continue
        if isinstance(value, _Options):
            params.update(value.as_params())
        elif name == "classifier" and ctx is not None:
            params["classifier"] = ctx.classifier_name
            params["output"] = ctx.adapter.output
        elif name == "layer":
            params["layer"] = value or "X"
        elif name == "modification":
            mod = as_modification(value)
            params["modification"] = mod.label
            params["modification_value"] = mod.value
        elif name == "modifications":
            mods = as_modifications(value)
            params["modifications"] = [m.label for m in mods]
            params["modification_values"] = [np.nan if m.value is None else m.value for m in mods]
        elif name == "genes" and value is not None:
            params["genes"] = [value] if isinstance(value, str) else [str(g) for g in value]
        else:
            params[name] = value
    return params


def classifier_metrics(ctx: Ctx, *, seconds: float, setup_seconds: float) -> dict[str, Any]:
    """The metrics every black-box record has: the classifier's calls, rows and tied rows, and the time."""
    return {
        "n_calls": ctx.adapter.n_calls,
        "n_tied_rows": ctx.adapter.n_tied,
        "n_rows": ctx.adapter.n_rows,
        "seconds": seconds,
        "setup_seconds": setup_seconds,
    }


def oracle_metrics(ctx: Ctx, oracle: Any, *, seconds: float) -> dict[str, Any]:
    """The cluster's unmodified call and score, and :func:`classifier_metrics` (the oracle's set-up time)."""
    return {
        "orig_call": ctx.adapter.classes[oracle.orig_call],
        "orig_score": oracle.orig_score,
        **classifier_metrics(ctx, seconds=seconds, setup_seconds=oracle.setup_seconds),
    }


def store(
    adata: AnnData,
    key: str,
    *,
    ctx: Ctx | None,
    mode: str,
    params: dict[str, Any],
    metrics: dict[str, Any],
    table: pd.DataFrame,
    **extra: Any,
) -> None:
    """Write the record ``.uns['sad']['attacks'][key]`` and warn about the classifier's tied rows.

    The record is h5ad-safe (``None`` entries are left out); ``kind`` is ``'blackbox'`` unless ``extra`` says
    otherwise. The tie warning names the public function (``<mode>_attack``, ``attack_overview``) and its target.
    """
    attacks = uns_root(adata).setdefault(_keys.STEP_ATTACKS, {})
    record = {"kind": "blackbox", "mode": mode, "params": params, "metrics": metrics, "table": table, **extra}
    attacks[record_key(key)] = h5ad_safe(record)
    if ctx is not None:
        where = "attack_overview" if mode == "overview" else f"{mode}_attack on {params['target']!r}"
        # (stacklevel 4: this function, the public function's body, the user's call)
        warn_ties(ctx, where, stacklevel=4)


@dataclass
class Run:
    """One call of a black-box attack: its arguments, the AnnData it writes into, its options and set-up.

    ``Run.begin(dict(locals()), OptionsClass)`` at the top of a public function keeps the call's own arguments
    (the record's ``params``), takes the copy of ``copy=True`` and the default options; :meth:`setup` checks the
    inputs; :meth:`write` writes the record and returns what the public function returns.
    """

    call: dict[str, Any]
    adata: AnnData
    options: Any
    ctx: Ctx | None = None

    @classmethod
    def begin(cls, call: dict[str, Any], default_options: type) -> Run:
        """Start a run from the public function's ``locals()`` at entry."""
        options = call.get("options")
        if options is not None and not isinstance(options, default_options):
            msg = (
                f"options must be a {default_options.__name__} for this attack, got a {type(options).__name__}. "
                f"Pass options=sad.tl.{default_options.__name__}(...)."
            )
            raise TypeError(msg)
        return cls(call, begin(call["adata"], copy=call["copy"]), default_options() if options is None else options)

    def setup(self, *, check_matrix: bool = True) -> Ctx:
        """Check the inputs and wrap the classifier; the targets are ``target`` (or ``clusters``)."""
        c = self.call
        self.ctx = setup(
            self.adata,
            groupby=c["groupby"],
            target=c["target"] if "target" in c else c.get("clusters"),
            classifier=c["classifier"],
            layer=c["layer"],
            check_matrix=check_matrix,
        )
        return self.ctx

    def write(
        self, key: str, *, mode: str, metrics: dict[str, Any], table: pd.DataFrame, resolved: dict[str, Any], **extra
    ) -> AnnData | None:
        """Write the record (``params`` from the call, with ``resolved`` entries) and return ``None`` or the copy."""
        params = call_params(self.call, self.ctx, options=self.options, **resolved)
        store(self.adata, key, ctx=self.ctx, mode=mode, params=params, metrics=metrics, table=table, **extra)
        return finish(self.adata, copy=self.call["copy"])
