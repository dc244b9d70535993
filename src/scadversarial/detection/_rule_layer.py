"""The plausibility rules as the detector's hard first layer: a fast torch path with one reason per cell.

Array level (no AnnData inside). :class:`~scadversarial.detection.PlausibilityRules` is the
reference (NumPy, float64 on every entry); :func:`rule_counts` computes the same violation counts
on a torch batch, on any device, at a fraction of the cost: one pass over the batch finds
the entries that can break a rule (every value but the image of a zero count), and only those
(about a tenth of the entries of a PBMC3k cell) are checked in float64. The lattice fit
tries the divisors ``2..MAX_DIVISOR`` only for cells the first divisor leaves with violations
(a divisor with none is the best one) and that break no other rule (their verdict and reason are
settled), so flags and reasons equal the reference's. A cell whose entries a scaled-space attack
moved almost all off zero is checked in whole rows instead (gathering its entries would cost more).

What the rules assume (and where it comes from):

- the classifier's input transform (per-gene mean, std, clip): the detector's copy of it;
- the smallest positive log value a count can normalize to (the ``'off_zero'`` bound) and whether
  the training cells lie on the count lattice: fitted on clean **training** cells
  (:func:`fit_rules`);
- each cell's unit ``target_sum / N``: estimated from the cell's own values, so neither the target
  sum nor the library size ``N`` is needed, and nothing is read from another version of the cell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ._rules import (
    CLIP_RTOL,
    LOG_TOL,
    MAX_DIVISOR,
    RANGE_RULES,
    RULES,
    SHARE_MARGIN,
    PlausibilityRules,
    largest_share,
    log_ceiling,
)

if TYPE_CHECKING:
    from ..models.classifier import CellClassifier

#: Reason written for each rule of :data:`~scadversarial.detection.RULES` (``'off_zero'``, a value
#: below one count of any cell, is a point off the lattice too).
RULE_REASONS: dict[str, str] = {
    "out_of_range": "out of range",
    "above_ceiling": "dominant gene",
    "negative_expression": "negative",
    "off_zero": "off lattice",
    "off_lattice": "off lattice",
    "few_singletons": "few single counts",
    "few_two_counts": "few double counts",
}
#: The checks of the detector's first layer, one column each: the rules, then the count-profile checks
#: of a cell on the count lattice (too few genes at one count; too few at two counts among those at two
#: or more), see :mod:`~scadversarial.detection._singletons`.
CHECKS: tuple[str, ...] = (*RULES, "few_singletons", "few_two_counts")
#: A cell is judged by the count checks only with at least this many expressed, invertible genes:
#: below it the singleton fraction moves in steps of more than 5 %, too coarse for a 1 % threshold.
MIN_EXPRESSED = 20
#: A cell with more than this fraction of its entries off the image of a zero count (a scaled-space
#: attack moved its unexpressed genes) is checked in whole rows, without gathering its entries.
HEAVY_FRACTION = 0.5
#: Reason of a count-space layer whose counts are not integers (checked before the transform).
NON_INTEGER = "non-integer counts"
#: Reason of a cell flagged by the learned detector alone.
LEARNED = "learned"
#: Every reason ``.obs['sad_reason']`` can hold, the rules' in order of precedence.
REASONS: tuple[str, ...] = (
    "out of range",
    "dominant gene",
    "negative",
    NON_INTEGER,
    "off lattice",
    "few single counts",
    "few double counts",
    LEARNED,
    "",
)
#: The reasons of the first layer: a cell with one of them is flagged whatever its learned score.
FLAG_REASONS: tuple[str, ...] = REASONS[: REASONS.index(LEARNED)]
#: Column of the lattice rule in the rule counts (after the :data:`RANGE_RULES`, which exclude each other).
LATTICE = len(RANGE_RULES)
#: A rule-breaking cell scores ``RULE_SCORE + log1p(violations) + log1p(excess)``: above every learned score (a
#: probability, at most 1), and still growing with the number of violating entries and with how far
#: they lie outside the range counts can produce (:func:`rule_excess`).
RULE_SCORE = 1.0
#: The same offset on the logit scale of :meth:`~scadversarial.models.AdversarialDetector.score_logit`:
#: far above any logit a residual network with weight decay produces (|logit| < 100 on PBMC3k).
RULE_LOGIT = 1e4


@dataclass(frozen=True)
class RuleFit:
    """What the rules learn from clean training cells.

    Attributes
    ----------
    zero_bound
        Log values in ``(LOG_TOL, zero_bound)`` are off zero: no count normalizes to them.
    lattice
        Whether the lattice rule applies (the training cells lie on the count lattice).
    log_max
        Log values above it are above the ceiling (reason ``'dominant gene'``): ``log1p(share * target_sum)``, one gene holding
        ``share`` of its cell's library, ``DetectorConfig.share_margin`` (1.5 by default) times the largest
        one-gene share of a training cell, at most the whole library (``inf``: the target sum is
        unknown, the clip alone bounds the values).
    """

    zero_bound: float
    lattice: bool
    log_max: float = math.inf


@dataclass(frozen=True)
class TwoCountFit:
    """The two-count check: of a cell's ``m`` genes at two or more counts, ``n2`` at exactly two.

    A clean cell has ``n2`` near ``rate * m``; the cell is flagged when the binomial z-score
    ``(n2 - rate m) / sqrt(m rate (1 - rate))`` falls below ``z_min``. The z-score, not the share,
    judges shallow cells (few genes at two or more counts) by their own sampling noise, so a thinned
    cell is not flagged for a share that chance alone explains.

    Attributes
    ----------
    rate
        Median share of genes at two counts among genes at two or more, over clean calibration cells.
    z_min
        Threshold of the z-score (calibrated with the singleton check, see
        :func:`~scadversarial.detection.fit_count_checks`).
    """

    rate: float
    z_min: float


@dataclass(frozen=True)
class CountChecks:
    """Thresholds of the count-profile checks of cells on the count lattice (``None``: that check off).

    Attributes
    ----------
    singleton_min
        Smallest share of a cell's lattice-checked genes at one count.
    two_counts
        The two-count check (:class:`TwoCountFit`).
    """

    singleton_min: float | None = None
    two_counts: TwoCountFit | None = None


@dataclass(frozen=True)
class CountProfile:
    """Per cell of a scaled batch, its lattice-checked genes by count (int64 tensors).

    Attributes
    ----------
    ones, twos
        Genes on the cell's lattice at one and at two counts.
    checked
        Lattice-checked genes (expressed and invertible), on the lattice or off it.
    off
        Lattice-checked genes off the lattice.
    """

    ones: torch.Tensor
    twos: torch.Tensor
    checked: torch.Tensor
    off: torch.Tensor

    @property
    def judged(self) -> torch.Tensor:
        """Cells with enough checked genes for a share (:data:`MIN_EXPRESSED`)."""
        return self.checked >= MIN_EXPRESSED

    @property
    def at_least_two(self) -> torch.Tensor:
        """Genes on the cell's lattice at two or more counts."""
        return self.checked - self.off - self.ones


def fit_rules(
    classifier: CellClassifier,
    X_clean: np.ndarray,
    *,
    target_sum: float | None = None,
    share_margin: float | None = SHARE_MARGIN,
    gene_max: np.ndarray | None = None,
) -> RuleFit:
    """The rules' bounds and lattice switch, fitted on clean training cells (scaled input ``X_clean``).

    With ``target_sum`` (the normalization's), no log value may exceed the ceiling of
    :class:`~scadversarial.detection.PlausibilityRules`: one gene holding ``share_margin`` times
    the largest one-gene share of a training cell (``None``: the whole library). ``gene_max``: per
    gene, the largest scaled value over every clean training cell, when ``X_clean`` is a sample of
    them; the ceiling's share then comes from all of them.
    """
    X = np.asarray(X_clean, dtype=np.float32)
    ref = PlausibilityRules(target_sum=target_sum, share_margin=share_margin).fit(classifier, X)
    log_max = ref.transform_.log_max
    if gene_max is not None and target_sum is not None and share_margin is not None:
        top = np.maximum(np.asarray(gene_max, dtype=np.float64), X.max(0))[None, :]
        log_max = log_ceiling(target_sum, share_margin * largest_share(ref.transform_, top, target_sum))
    return RuleFit(float(ref.zero_bound_), bool(ref.use_lattice_), float(log_max))


def reason_key(layer: str | None) -> str:
    """``.obs`` key of the reason of each flag on ``layer`` (``'sad_reason'`` for ``X``)."""
    return "sad_reason" if layer is None else f"sad_reason_{layer}"


def _per_cell(rows: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    # bincount of no entries is int64 whatever the weights
    return torch.bincount(rows, weights=values, minlength=n).to(values.dtype)


def _lattice_off(
    rows: torch.Tensor, logv: torch.Tensor, n: int, todo: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per cell, the entries off its best lattice ``log1p(k * unit)`` (as :func:`fit_lattice`), those at ``k = 1`` and ``k = 2``.

    Divisors after the first are tried only for the cells in ``todo`` that the first leaves off the
    lattice; the others keep the first divisor's counts.
    """
    v = torch.expm1(logv)
    vmin = torch.full((n,), torch.inf, dtype=v.dtype, device=v.device).scatter_reduce_(0, rows, v, "amin")
    best = torch.zeros(n, dtype=v.dtype, device=v.device)
    ones = torch.zeros(n, dtype=v.dtype, device=v.device)
    twos = torch.zeros(n, dtype=v.dtype, device=v.device)
    for m in range(1, MAX_DIVISOR + 1):
        if m > 1:
            todo = todo & (best > 0)  # a cell on the lattice cannot do better
            if not bool(todo.any()):
                break
            sel = todo.index_select(0, rows).nonzero().squeeze(1)
            rows, v, logv = rows.index_select(0, sel), v.index_select(0, sel), logv.index_select(0, sel)
        k = torch.round(v / (vmin.index_select(0, rows) / m)).clamp_(min=1.0)
        u = _per_cell(rows, k * v, n) / _per_cell(rows, k * k, n).clamp_(min=1.0)
        ur = u.index_select(0, rows)
        k = torch.round(v / ur).clamp_(min=1.0)
        off = (logv - torch.log1p(k * ur)).abs_() > LOG_TOL
        n_off = _per_cell(rows, off.to(v.dtype), n)
        n_one = _per_cell(rows, ((k == 1) & ~off).to(v.dtype), n)
        n_two = _per_cell(rows, ((k == 2) & ~off).to(v.dtype), n)
        better = torch.ones_like(todo) if m == 1 else todo & (n_off < best)
        best = torch.where(better, n_off, best)
        ones = torch.where(better, n_one, ones)
        twos = torch.where(better, n_two, twos)
    return best.long(), ones.long(), twos.long()


def _bounds(clip: float | None) -> tuple[float, float]:
    """``(beyond, invertible)``: ``|x|`` above the first is beyond the clip, below the second invertible."""
    if clip is None:
        return float("inf"), float("inf")
    return clip * (1 + CLIP_RTOL), clip * (1 - CLIP_RTOL)


def _excess(
    lv: torch.Tensor,
    ax: torch.Tensor,
    std: torch.Tensor,
    clip: float | None,
    fit: RuleFit,
    rules: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    inplace: bool = False,
    any_oor: bool | None = None,
) -> torch.Tensor:
    """Per entry, its distance in log units from the range counts can produce (as ``Transform.excess``).

    ``lv``, ``ax``: log values and ``|x|``; ``rules``: the entries beyond the clip or above the
    ceiling, negative and off zero (disjoint, in the rules' precedence); ``std`` broadcasts to
    ``lv``. ``inplace`` overwrites ``lv`` and ``ax`` (returned in ``ax``): a scaled attack's rows
    are checked whole, and on the CPU fresh cells x genes buffers and ``torch.where`` cost more
    than the arithmetic. ``any_oor``: whether ``oor`` has an entry, when the caller knows.
    """
    oor, neg, off_zero = rules
    at, over = None, None
    if any_oor is None:
        any_oor = bool(oor.any())
    if any_oor:  # rare: beyond the clip or above the ceiling
        at = oor.nonzero(as_tuple=True)
        lo = lv[at]
        over = torch.maximum(lo - fit.log_max, -lo)  # beyond -clip: below zero too, so no drop at the clip
        if clip is not None:
            over = torch.maximum(over, (ax[at] - clip) * std.expand_as(lv)[at])
        over.clamp_(min=0.0)
    # a negative or off-zero entry's distance to the nearest accepted value: zero, or the off-zero bound
    out = torch.abs(lv, out=ax) if inplace else lv.abs()
    gap = lv.neg_() if inplace else lv.neg()
    torch.minimum(out, gap.add_(fit.zero_bound).clamp_(min=0.0), out=out)
    out.mul_(neg | off_zero).nan_to_num_(nan=0.0, posinf=math.inf, neginf=-math.inf)  # NaN breaks no rule
    if at is not None:
        out[at] = over
    return out


def _dense_counts(
    x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, clip: float | None, fit: RuleFit
) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts of the :data:`RANGE_RULES` of whole rows and their excess, in the batch's precision (rows with most entries moved)."""
    big, small = _bounds(clip)
    ax = x.abs()
    lv = torch.addcmul(mean, x, std)
    beyond = ax > big
    above = lv > fit.log_max + LOG_TOL
    above &= ~beyond
    oor = beyond | above
    neg = lv < -LOG_TOL
    neg &= ~oor
    off_zero = lv > LOG_TOL
    off_zero &= lv < fit.zero_bound
    off_zero &= ax < small
    # int32 sums: summing a bool matrix into int64 copies it whole first, a third of this function's time
    counts = torch.stack([m.sum(1, dtype=torch.int32) for m in (beyond, above, neg, off_zero)], 1).long()
    any_oor = bool(counts[:, :2].any())
    # summed in the batch's precision (a float64 copy of the rows would cost more than the rules)
    excess = _excess(lv, ax, std, clip, fit, (oor, neg, off_zero), inplace=True, any_oor=any_oor).sum(1).double()
    return counts, excess


def _sparse_counts(
    x: torch.Tensor, moved: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, clip: float | None, fit: RuleFit
) -> tuple[torch.Tensor, CountProfile, torch.Tensor]:
    """Counts of every rule, checking in float64 only the entries that are not the image of a zero count (``moved``).

    Returns ``(counts, profile, excess)``: cells x :data:`RULES`, the cells' :class:`CountProfile`
    (zeros without the lattice rule) and their excess (:func:`rule_excess`).
    """
    n = x.shape[0]
    out = torch.zeros((n, len(RULES)), dtype=torch.long, device=x.device)
    ones, twos, n_checked = (torch.zeros(n, dtype=torch.long, device=x.device) for _ in range(3))
    rows, cols = moved.nonzero(as_tuple=True)
    # flat indices and index_select: several times cheaper than two-dimensional fancy indexing
    xv = x.reshape(-1).index_select(0, rows * x.shape[1] + cols).double()
    sv = std.double().index_select(0, cols)
    lv = torch.addcmul(mean.double().index_select(0, cols), xv, sv)
    ax = xv.abs()
    big, small = _bounds(clip)
    inv = ax < small
    # the range rules exclude each other: one code per entry (LATTICE: none), one count per cell and code
    code = torch.full_like(rows, LATTICE)
    code = torch.where(inv & (lv > LOG_TOL) & (lv < fit.zero_bound), 3, code)
    code = torch.where(lv < -LOG_TOL, 2, code)
    code = torch.where(lv > fit.log_max + LOG_TOL, 1, code)
    code = torch.where(ax > big, 0, code)
    width = LATTICE + 1
    out[:, :LATTICE] = torch.bincount(rows * width + code, minlength=width * n).view(n, width)[:, :LATTICE]
    entry_excess = _excess(lv, ax, sv, clip, fit, (code <= 1, code == 2, code == 3))
    excess = _per_cell(rows, entry_excess, n)
    if fit.lattice:
        checked = (inv & (lv >= fit.zero_bound)).nonzero().squeeze(1)
        settled = out[:, :LATTICE].sum(1) > 0
        c_rows = rows.index_select(0, checked)
        out[:, LATTICE], ones, twos = _lattice_off(c_rows, lv.index_select(0, checked), n, ~settled)
        n_checked = torch.bincount(c_rows, minlength=n)
    return out, CountProfile(ones, twos, n_checked, out[:, LATTICE].clone()), excess


def singleton_deficit(ones: torch.Tensor, checked: torch.Tensor, min_fraction: float) -> torch.Tensor:
    """Genes missing at one count: ``ceil(min_fraction * checked - ones)`` where positive and judged, else 0 (int64).

    A cell is judged with at least :data:`MIN_EXPRESSED` checked entries; the deficit grows with the
    number of single counts an attack moved, so the score keeps growing with the perturbation.
    """
    need = torch.ceil(min_fraction * checked.double() - ones.double() - LOG_TOL).clamp_(min=0).long()
    return torch.where(checked >= MIN_EXPRESSED, need, torch.zeros_like(need))


def _two_count_sd(m: torch.Tensor, rate: float) -> torch.Tensor:
    return torch.sqrt(m * (rate * (1.0 - rate)))


def two_count_z(profile: CountProfile, rate: float) -> torch.Tensor:
    """Per cell, the binomial z-score of its genes at two counts (float64; NaN where not judged).

    Judged: at least :data:`MIN_EXPRESSED` checked genes and one gene at two or more counts.
    """
    m = profile.at_least_two.double()
    z = (profile.twos.double() - rate * m) / _two_count_sd(m, rate).clamp(min=LOG_TOL)
    return torch.where(profile.judged & (m > 0), z, torch.full_like(z, float("nan")))


def two_count_deficit(profile: CountProfile, two: TwoCountFit) -> torch.Tensor:
    """Genes missing at two counts: ``ceil(rate m + z_min sd - n2)`` where the z-score is below ``z_min``, else 0 (int64).

    Grows with the number of two-count genes an attack moved (the score keeps growing).
    """
    m = profile.at_least_two.double()
    need = torch.ceil(two.rate * m + two.z_min * _two_count_sd(m, two.rate) - profile.twos.double() - LOG_TOL)
    low = two_count_z(profile, two.rate) < two.z_min  # NaN (not judged) compares False
    return torch.where(low, need.clamp(min=1), torch.zeros_like(need)).long()


def rule_counts(
    x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, clip: float | None, fit: RuleFit
) -> torch.Tensor:
    """Violating entries per cell and rule (cells x :data:`RULES`, int64) of a scaled batch ``x``.

    Equal to :meth:`PlausibilityRules.explain(x).counts <scadversarial.detection.PlausibilityRules.explain>`
    of rules fitted to the same bound for every cell that breaks none of the :data:`RANGE_RULES`
    (see :func:`check_counts`, whose first columns these are). Not differentiable.
    """
    return _first_layer(x, mean, std, clip, fit)[0]


def rule_excess(
    x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, clip: float | None, fit: RuleFit
) -> torch.Tensor:
    """Per cell of a scaled batch ``x``, how far it lies outside the range counts can produce (float64).

    The sum over its entries of their distance in log units from that range: beyond the clip or
    above the rules' ceiling, below zero, between zero and the smallest count (the
    :data:`RANGE_RULES`; the lattice and count checks count entries, not distances). It grows with the
    size of an attack where the number of violating entries stops growing (an attack that pushes
    the same genes further below zero or above the ceiling), and is 0 for a cell those rules pass.
    Equal to :attr:`PlausibilityRules.explain(x).excess <scadversarial.detection.RuleReport.excess>`
    up to the batch's precision. Not differentiable.
    """
    return _first_layer(x, mean, std, clip, fit)[2]


def _first_layer(
    x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, clip: float | None, fit: RuleFit
) -> tuple[torch.Tensor, CountProfile, torch.Tensor]:
    """``(rule counts, count profile, excess)`` of a scaled batch (see :func:`_sparse_counts`), in one pass over it."""
    n = x.shape[0]
    out = torch.zeros((n, len(RULES)), dtype=torch.long, device=x.device)
    excess = torch.zeros(n, dtype=torch.float64, device=x.device)
    prof = [torch.zeros(n, dtype=torch.long, device=x.device) for _ in range(3)]  # ones, twos, checked
    with torch.no_grad():
        x = x.detach()
        zero = (torch.zeros_like(mean) - mean) / std
        if clip is not None:
            zero = zero.clamp(-clip, clip)
        moved = x != zero.to(x.dtype)  # entries that are not the image of a zero count
        heavy = moved.sum(1, dtype=torch.int32) > HEAVY_FRACTION * x.shape[1]
        if bool(heavy.any()):
            idx = heavy.nonzero().squeeze(1)
            dense, excess[idx] = _dense_counts(x.index_select(0, idx), mean.to(x.dtype), std.to(x.dtype), clip, fit)
            out[idx, :LATTICE] = dense
            heavy[idx[dense.sum(1) == 0]] = False  # no verdict yet: the exact path, lattice included
        light = (~heavy).nonzero().squeeze(1)
        if len(light):
            part_x, part_moved = x.index_select(0, light), moved.index_select(0, light)
            out[light], part, excess[light] = _sparse_counts(part_x, part_moved, mean, std, clip, fit)
            for t, v in zip(prof, (part.ones, part.twos, part.checked), strict=True):
                t[light] = v
    return out, CountProfile(*prof, out[:, LATTICE].clone()), excess


def check_counts(
    x: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    clip: float | None,
    fit: RuleFit,
    checks: CountChecks | float | None = None,
) -> torch.Tensor:
    """Per cell, violating entries of each rule and the count-profile deficits (cells x :data:`CHECKS`, int64).

    The rule columns equal :meth:`PlausibilityRules.explain(x).counts
    <scadversarial.detection.PlausibilityRules.explain>` of rules fitted to the same bound for every
    cell that breaks none of the :data:`RANGE_RULES`. A cell that does is flagged, with that reason,
    whatever its lattice count, so its lattice column is only the count at the first divisor (an
    upper bound of the reference's) or, for a cell with most entries moved off the image of a zero
    count (scaled-space attacks), not counted (0); its range-rule counts are taken
    in the batch's precision (float32 rounding, below 1e-6 log units, can only move an entry that
    close to a bound). Flags and reasons are the reference's. The last two columns are
    :func:`singleton_deficit` and :func:`two_count_deficit` at the thresholds of ``checks`` (zeros
    for a check that is off, and without the lattice rule; a float is the singleton threshold alone,
    as this function took it before the two-count check). A cell flagged by a rule also has its
    deficits counted (from the first divisor's counts): they add to its score, not to its flag or
    reason. Not differentiable.
    """
    return check_layer(x, mean, std, clip, fit, checks)[0]


def check_layer(
    x: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    clip: float | None,
    fit: RuleFit,
    checks: CountChecks | float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(counts, excess)`` of the first layer in one pass: :func:`check_counts` and :func:`rule_excess`.

    Examples
    --------
    >>> counts, excess = check_layer(x, t.mean, t.std, 10.0, det.rule_fit, det.count_checks)  # doctest: +SKIP
    >>> score = 1 + torch.log1p(counts.sum(1)) + torch.log1p(excess)  # doctest: +SKIP
    """
    if isinstance(checks, int | float):
        checks = CountChecks(float(checks))
    counts, profile, excess = _first_layer(x, mean, std, clip, fit)
    ones = torch.zeros_like(profile.ones)
    twos = torch.zeros_like(profile.ones)
    if checks is not None and fit.lattice:
        if checks.singleton_min is not None:
            ones = singleton_deficit(profile.ones, profile.checked, checks.singleton_min)
        if checks.two_counts is not None:
            twos = two_count_deficit(profile, checks.two_counts)
    return torch.cat([counts, ones[:, None], twos[:, None]], 1), excess


def count_profile(
    x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, clip: float | None, fit: RuleFit
) -> CountProfile:
    """Per cell of a scaled batch, its lattice-checked genes at one and two counts, all of them and those off the lattice."""
    return _first_layer(x, mean, std, clip, fit)[1]


def rule_reasons(counts: np.ndarray) -> np.ndarray:
    """The reason of each cell's first failed check (:data:`RULE_REASONS`), ``''`` for none (object array).

    ``counts`` has one column per rule (:data:`RULES`) or per check (:data:`CHECKS`).
    """
    counts = np.asarray(counts)
    fired = counts > 0
    checks = CHECKS[: counts.shape[1]]
    names = np.array([*(RULE_REASONS[r] for r in checks), ""], dtype=object)
    first = np.where(fired.any(1), fired.argmax(1), len(checks))
    return names[first]


def non_integer_counts(C: np.ndarray | object, batch: int = 4096) -> np.ndarray:
    """Per cell, the entries of count matrix ``C`` (dense or scipy sparse) that are not integers (int64)."""
    from scipy import sparse

    n = C.shape[0]
    out = np.zeros(n, dtype=np.int64)
    for s in range(0, n, batch):
        block = C[s : s + batch]
        vals = block.toarray() if sparse.issparse(block) else np.asarray(block)
        out[s : s + batch] = (vals != np.round(vals)).sum(1)
    return out


def rule_score(violations: torch.Tensor, excess: torch.Tensor, offset: float = RULE_SCORE) -> torch.Tensor:
    """A rule-breaking cell's score, ``offset + log1p(violations) + log1p(excess)`` (float64; see :func:`combine`)."""
    return offset + torch.log1p(violations.double()) + torch.log1p(excess.double())


def combine(learned: np.ndarray, violations: np.ndarray, excess: np.ndarray | float = 0.0) -> np.ndarray:
    """The default detector's score: the learned score, or ``RULE_SCORE + log1p(violations) + log1p(excess)`` for a cell that breaks a rule."""
    violations = np.asarray(violations, dtype=np.float64)
    hard = RULE_SCORE + np.log1p(violations) + np.log1p(np.asarray(excess, dtype=np.float64))
    return np.where(violations > 0, hard, np.asarray(learned, dtype=np.float64))


__all__ = [
    "CHECKS",
    "CountChecks",
    "CountProfile",
    "FLAG_REASONS",
    "LEARNED",
    "MIN_EXPRESSED",
    "NON_INTEGER",
    "REASONS",
    "RULE_REASONS",
    "RuleFit",
    "TwoCountFit",
    "check_counts",
    "check_layer",
    "combine",
    "count_profile",
    "fit_rules",
    "non_integer_counts",
    "reason_key",
    "rule_counts",
    "rule_excess",
    "rule_reasons",
    "singleton_deficit",
    "two_count_deficit",
    "two_count_z",
]
