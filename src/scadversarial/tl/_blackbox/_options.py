"""Option objects of the black-box attacks: the modification spec and one search-options class per mode.

Every string option is typed with a ``Literal`` and checked once, when its options object is made
(:func:`_check_literals`, through :func:`~scadversarial._validate.check_choice`), so a bad value fails before
anything is read or written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin, get_type_hints

from ..._validate import check_choice
from ...attacks.modifications import check_modification, modification_name
from ._fragments import fill_docs

Method = Literal["fast", "plain"]
ChangeType = Literal["any", "not_na"]
SignMethod = Literal["wilcoxon", "t-test", "ttest"]
OverviewMode = Literal["single_gene", "max_change"]

# the largest stacked classifier call, in bytes of input: a few stacked candidates of a cluster of
# thousands of cells over thousands of genes, small next to the matrix itself
BATCH_BYTES = 16 * 2**20
# adverSCarial's defaults: the value of 'fixed' and the factor of the gene's max of the aberrant modifications
FIXED_VALUE = 3.0
ABERRANT_FACTOR = 1e4
_VALUED = {"fixed": FIXED_VALUE, "positive_aberrant": ABERRANT_FACTOR, "negative_aberrant": ABERRANT_FACTOR}


def _check_literals(options: Any) -> None:
    """Check every ``Literal``-typed field (or sequence of them) of a dataclass: the one place this is done."""
    for field, hint in get_type_hints(type(options)).items():
        value = getattr(options, field)
        if get_origin(hint) is Literal:
            check_choice(field, value, hint)
            continue
        args = get_args(hint)
        if args and get_origin(args[0]) is Literal:  # tuple[Literal[...], ...]
            values = [value] if isinstance(value, str) else list(value)
            if not values:
                msg = f"{field} must name at least one of {', '.join(map(repr, get_args(args[0])))}."
                raise ValueError(msg)
            for v in values:
                check_choice(field, v, args[0])
            object.__setattr__(options, field, tuple(values))


@dataclass(frozen=True)
class Modification:
    """A gene modification and its value.

    Attributes
    ----------
    name
        ``'perc1'``, ``'perc99'``, ``'decile+N'`` / ``'decile-N'``, ``'random'``, ``'positive_aberrant'``,
        ``'negative_aberrant'``, ``'fixed'`` or a callable ``fn(x_target, x_all) -> new x_target``.
    value
        The value of ``'fixed'`` (default 3) or the factor of the gene's max of ``'positive_aberrant'`` /
        ``'negative_aberrant'`` (default 1e4); the other modifications take none.

    Examples
    --------
    >>> import scadversarial as sad
    >>> sad.tl.Modification("fixed", 5.0).value
    5.0

    """

    name: str | Callable
    value: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", check_modification(self.name))
        default = _VALUED.get(self.name) if isinstance(self.name, str) else None
        if self.value is None:
            object.__setattr__(self, "value", default)
        elif default is None:
            msg = f"Modification {self.label!r} takes no value (got {self.value!r}); only 'fixed' and the aberrant ones do."
            raise ValueError(msg)
        else:
            object.__setattr__(self, "value", float(self.value))

    @property
    def label(self) -> str:
        """The modification's name (a callable's ``__name__``)."""
        return modification_name(self.name)

    def values_kwargs(self) -> dict[str, float]:
        """Keyword arguments of :func:`~scadversarial.attacks.modifications.modified_values`."""
        if self.name == "fixed":
            return {"fixed_value": self.value}
        if self.value is not None:
            return {"aberrant_factor": self.value}
        return {}


def as_modification(value: str | Callable | Modification) -> Modification:
    """``value`` as a :class:`Modification` (a name or callable gets its default value)."""
    return value if isinstance(value, Modification) else Modification(value)


def as_modifications(values: str | Callable | Modification | Sequence) -> list[Modification]:
    """One or several modifications as a non-empty list of :class:`Modification`."""
    if isinstance(values, str | Modification) or callable(values):
        values = [values]
    mods = [as_modification(m) for m in values]
    if not mods:
        msg = "Pass at least one modification."
        raise ValueError(msg)
    return mods


@dataclass(frozen=True, kw_only=True)
class _Options:
    """Checks its ``Literal`` fields when made; gives its fields as record ``params``."""

    def __post_init__(self) -> None:
        _check_literals(self)

    def as_params(self) -> dict[str, Any]:
        """The options as ``params`` entries of the run record (sequences as lists)."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out


@dataclass(frozen=True, kw_only=True)
class _SearchOptions(_Options):
    """Options of the searches that ask a cluster oracle: method, memory cap, seed."""

    method: Method = "fast"
    batch_bytes: int = BATCH_BYTES
    random_state: int = 0


@dataclass(frozen=True, kw_only=True)
class _FlipOptions(_SearchOptions):
    """Options of the searches for flips: which changes of the call count."""

    change_type: ChangeType = "any"
    na_class: str | Sequence[str] | None = "NA"


@fill_docs
@dataclass(frozen=True, kw_only=True)
class SingleGeneOptions(_FlipOptions):
    """Search options of :func:`~scadversarial.tl.single_gene_attack`.

    Attributes
    ----------
    first_dichot
        Number of round-robin bins the genes are dealt into.
    max_split_size
        Flipping gene lists of at most this size are recorded (larger ones are split again).
    return_first_found
        Stop at the first record (depth-first order).
    {doc_change_type}
    {doc_exclude_genes}
    {doc_method}
    {doc_batch_bytes}
    random_state
        Seed of ``'random'`` modification values.

    """

    first_dichot: int = 100
    max_split_size: int = 1
    return_first_found: bool = False
    exclude_genes: Sequence[str] | None = None


@fill_docs
@dataclass(frozen=True, kw_only=True)
class MaxChangeOptions(_SearchOptions):
    """Search options of :func:`~scadversarial.tl.max_change_attack`.

    Attributes
    ----------
    max_split_size
        Gene lists of at most this size are not split further (1: the largest set).
    {doc_exclude_genes}
    {doc_method}
    {doc_batch_bytes}
    random_state
        Seed of the order of each split's halves (and of ``'random'`` modification values).

    """

    max_split_size: int = 1
    exclude_genes: Sequence[str] | None = None


@fill_docs
@dataclass(frozen=True, kw_only=True)
class RandomWalkOptions(_FlipOptions):
    """Search options of :func:`~scadversarial.tl.random_walk_attack`.

    Attributes
    ----------
    first_batch
        Random assignments tried to find a seed (an assignment that flips the call).
    walk_length
        Walk steps.
    step_change_ratio
        Probability of redrawing a modified gene at each step.
    max_tries
        Proposals drawn per step before the walk gives up.
    {doc_change_type}
    {doc_method}
    {doc_batch_bytes}
    random_state
        Seed of the walk (and of ``'random'`` modification values).

    """

    first_batch: int = 100
    walk_length: int = 100
    step_change_ratio: float = 0.2
    max_tries: int = 10000


@fill_docs
@dataclass(frozen=True, kw_only=True)
class GridOptions(_FlipOptions):
    """Search options of :func:`~scadversarial.tl.grid_attack`.

    Attributes
    ----------
    return_first_found
        Stop at the first flipping combination (combinations come smallest first).
    {doc_change_type}
    max_combinations
        Refuse grids larger than this (combinatorial explosion).
    {doc_method}
    {doc_batch_bytes}
    random_state
        Seed of ``'random'`` modification values.

    """

    return_first_found: bool = False
    max_combinations: int = 100_000


@fill_docs
@dataclass(frozen=True, kw_only=True)
class CGDOptions(_Options):
    """Search options of :func:`~scadversarial.tl.cgd_attack`.

    Attributes
    ----------
    alpha
        Multiplicative step size.
    epsilon
        Additive step size.
    new_target
        The first new target (default: chosen from the cluster's predictions).
    exclude_new_targets
        Classes never chosen as new target.
    stop_at_switch
        Stop when the new target outnumbers the original type.
    sign_method
        Test of the default gene ranking (:func:`~scadversarial.tl.sign_genes`): ``'wilcoxon'`` or ``'t-test'``.
    method
        ``'fast'`` (one call per gene on the rows that can change) or ``'plain'`` (two calls per gene on the
        whole cluster, as the R package); both return the same result.

    """

    alpha: float = 0.1
    epsilon: float = 0.0
    new_target: str | None = None
    exclude_new_targets: Sequence[str] = ()
    stop_at_switch: bool = True
    sign_method: SignMethod = "wilcoxon"
    method: Method = "fast"


@fill_docs
@dataclass(frozen=True, kw_only=True)
class OverviewOptions(_SearchOptions):
    """Search options of :func:`~scadversarial.tl.attack_overview`.

    Attributes
    ----------
    modes
        ``'single_gene'`` and/or ``'max_change'``.
    first_dichot
        Bins of the single-gene search.
    max_split_size
        ``max_split_size`` of both searches (100 by default, as the R package's overviews: faster, coarser; a
        single-gene record is then a small flipping gene group).
    {doc_method}
    {doc_batch_bytes}
    random_state
        Seed of the max-change searches (and of ``'random'`` modification values).

    """

    modes: tuple[OverviewMode, ...] = ("single_gene", "max_change")
    first_dichot: int = 100
    max_split_size: int = 100
