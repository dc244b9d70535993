"""Score-based black-box attacks: Square Attack and NES, for classifiers that give only probabilities.

Both attacks query ``proba_fn(X) -> (n_cells, n_classes)`` probabilities (any
:class:`~scadversarial.attacks._protocol.ClassifierAdapter`: a random forest, CellTypist, a torch module)
and minimize a margin loss on log-probabilities inside an L-inf ball of radius ``eps`` around each
cell, intersected with per-entry bounds ``[lower, upper]`` and restricted to the entries ``mask`` allows:

- untargeted (push away from ``y``): ``log p_y - max_{j != y} log p_j``; the cell is flipped when its
  argmax is no longer ``y``;
- targeted (pull towards ``y``): ``max_{j != y} log p_j - log p_y``; the cell succeeds when its argmax
  is ``y``.

**Square Attack** (Andriushchenko et al. 2020, "Square Attack: a query-efficient black-box adversarial
attack via random search", L-inf version). An expression profile is 1-D and its genes have no spatial
order, so the "square" is a random subset of the genes a cell may move, whose size follows the
paper's schedule (a fraction ``p_init`` of them, halved at fixed fractions of the query budget). The
proposal sets the chosen entries to a vertex of the feasible box (``+-eps`` of the original, clipped
to the bounds) with random signs; it is kept when the loss does not increase. The perturbation thus
always sits on vertices of the box, as in the paper.

**NES** (Ilyas et al. 2018, "Black-box adversarial attacks with limited queries and information"):
the gradient of the loss is estimated from antithetic Gaussian samples ``x +- sigma * u`` (each
projected into the feasible box) and followed by signed, momentum-smoothed projected steps (PGD).
A sample that already flips the cell is taken as the result.

All unfinished cells are queried together: one ``proba_fn`` call per iteration on the stacked cells
(cells processed in chunks of ``batch_size``). A cell is no longer queried once it succeeds. Every
row passed to ``proba_fn`` counts as one query of its cell, the first query being the clean cell.

Examples
--------
>>> import numpy as np
>>> from scadversarial.attacks.score_based import ScoreConfig, score_attack
>>> rng = np.random.default_rng(0)
>>> W = rng.normal(size=(20, 3))
>>> def proba(Z):
...     z = Z @ W
...     e = np.exp(z - z.max(1, keepdims=True))
...     return e / e.sum(1, keepdims=True)
>>> X = rng.normal(size=(50, 20)).astype(np.float32)
>>> y = proba(X).argmax(1)
>>> res = score_attack(proba, X, y, eps=0.5, config=ScoreConfig(max_queries=200))
>>> bool(np.abs(res.X_adv.astype(float) - X).max() <= 0.5)
True
>>> res.success.mean() > 0.5
np.True_
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from .._settings import progress
from .._validate import check_choice

__all__ = ["ScoreAttackParams", "ScoreAttackResult", "ScoreConfig", "score_attack"]

ScoreMethod = Literal["square", "nes"]

# Floor of the probabilities before their log: a probability of exactly 0 (trees, CellTypist) gives a
# finite, very low log-probability; float64's smallest normal number keeps every positive probability as is.
_PROBA_FLOOR = np.finfo(np.float64).tiny

# Square Attack's schedule of the fraction of entries changed (Andriushchenko et al. 2020, code
# ``p_selection``): written for 10,000 iterations; the iteration is rescaled to that length. Each pair is
# (last iteration out of 10,000 at which the divisor applies, divisor of p_init).
_SCHEDULE_LENGTH = 10_000
_P_SCHEDULE = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128), (8000, 256))
_P_LAST_DIVISOR = 512  # past 8,000 of 10,000 iterations

# NES settings, relative to the budget eps so that they carry over between expression spaces (scaled,
# log, counts). Ilyas et al. (2018) use 50 samples per estimate, sigma = 0.001 and a step of 0.01 for
# eps = 0.05 on images in [0, 1]. Expression profiles have ~10^3 genes (not ~10^5 pixels) and queries are
# the budget, so fewer samples per estimate and more steps; sigma is a quarter of eps because tree
# ensembles are piecewise constant (a smaller sample would rarely change a vote).
_NES_PAIRS = 10  # antithetic pairs per gradient estimate: 20 sample queries (+1 for the current point)
_NES_SIGMA_FRACTION = 0.25  # sampling radius / eps
_NES_STEP_FRACTION = 0.25  # signed step / eps: four steps cross the ball from the center to a vertex
_NES_MOMENTUM = 0.9  # Ilyas et al.'s momentum on the gradient estimate


@dataclass(frozen=True)
class ScoreConfig:
    """How :func:`score_attack` spends its queries.

    Attributes
    ----------
    max_queries
        Query budget per cell, the clean query included. A cell is no longer queried once it succeeds.
    p_init
        Square Attack: initial fraction of each cell's movable genes changed per step (its schedule
        halves it at fixed fractions of the budget, down to ``p_init / 512``, at least one gene).
    batch_size
        Cells attacked together: each iteration is one ``proba_fn`` call on the chunk's unfinished cells
        (NES stacks each cell's ``1 + 20`` sample points in that call).
    random_state
        Seed of the local :func:`numpy.random.default_rng` (results depend on it and on ``batch_size``).

    """

    max_queries: int = 1000
    p_init: float = 0.05
    batch_size: int = 256
    random_state: int = 0


@dataclass(frozen=True, kw_only=True)
class ScoreAttackParams(ScoreConfig):
    """Settings of one :func:`score_attack` run: its :class:`ScoreConfig`, method, budget and goal.

    Written to ``.uns`` through :meth:`as_dict` (h5ad-safe).

    Attributes
    ----------
    method
        ``'square'`` or ``'nes'``.
    eps
        L-inf budget per entry.
    targeted
        Whether ``y`` was the target class (else the class to move away from).

    """

    method: str
    eps: float
    targeted: bool

    def as_dict(self) -> dict[str, str | float | int | bool]:
        """The settings as a dict of str, numbers and bools (writable to ``.uns``)."""
        return asdict(self)


@dataclass(frozen=True)
class ScoreAttackResult:
    """Result of :func:`score_attack`.

    One entry per cell in each array; nothing is written to an AnnData.

    Attributes
    ----------
    X_adv
        ``(n_cells, n_genes)`` float32: the flipped point of each successful cell, else its point of
        lowest loss (the clean cell when nothing lowered it).
    n_queries
        ``(n_cells,)`` int64: rows of that cell passed to ``proba_fn`` (the clean query included).
    success
        ``(n_cells,)`` bool: untargeted, the argmax at ``X_adv`` is not ``y``; targeted, it is ``y``.
        A cell already in that state gets ``X_adv = X`` after its clean query.
    pred
        ``(n_cells,)`` int64: argmax of ``proba_fn`` at ``X_adv`` (from the query that evaluated it).
    params
        The settings of the run.

    """

    X_adv: np.ndarray
    n_queries: np.ndarray
    success: np.ndarray
    pred: np.ndarray
    params: ScoreAttackParams


# ----------------------------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------------------------
def _entrywise(value: np.ndarray | float | None, shape: tuple[int, int], name: str, default: float) -> np.ndarray:
    """``value`` as a read-only float64 ``(cells, genes)`` view: a scalar, a per-gene vector or a per-entry matrix."""
    if value is None:
        value = default
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0 or arr.shape in ((shape[1],), shape):
        if np.isnan(arr).any():
            msg = f"`{name}` contains NaN. Pass finite bounds, or None (or +-inf) for no bound."
            raise ValueError(msg)
        return np.broadcast_to(arr, shape)
    msg = (
        f"`{name}` has shape {arr.shape}; expected a scalar, one value per gene {(shape[1],)} or one per entry {shape}."
    )
    raise ValueError(msg)


def _entry_mask(mask: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    arr = np.asarray(mask)
    if arr.dtype != bool:
        msg = f"`mask` must be boolean (entries allowed to move), got dtype {arr.dtype}. Pass e.g. `X > 0`."
        raise ValueError(msg)
    if arr.shape not in ((shape[1],), shape):
        msg = f"`mask` has shape {arr.shape}; expected one flag per gene {(shape[1],)} or one per entry {shape}."
        raise ValueError(msg)
    return np.broadcast_to(arr, shape)


def _check_inputs(
    X: np.ndarray, y: np.ndarray, method: str, eps: float, config: ScoreConfig
) -> tuple[np.ndarray, np.ndarray]:
    check_choice("method", method, ScoreMethod)
    max_queries, p_init, batch_size = config.max_queries, config.p_init, config.batch_size
    X = np.asarray(X)
    if X.ndim != 2 or not np.issubdtype(X.dtype, np.number):
        msg = f"`X` must be a numeric cells x genes matrix, got shape {X.shape} and dtype {X.dtype}."
        raise ValueError(msg)
    X = np.ascontiguousarray(X, dtype=np.float32)
    if not np.isfinite(X).all():
        msg = "`X` contains NaN or infinite values. Remove or fill them before attacking."
        raise ValueError(msg)
    y = np.asarray(y)
    if y.shape != (X.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        msg = f"`y` must hold one integer class per cell ({X.shape[0]},), got shape {y.shape} and dtype {y.dtype}."
        raise ValueError(msg)
    if not (np.isfinite(eps) and eps > 0):
        msg = f"`eps` must be a finite positive number, got {eps!r}."
        raise ValueError(msg)
    if int(max_queries) != max_queries or max_queries < 1:
        msg = (
            f"`max_queries` must be a positive integer (queries per cell, the clean one included), got {max_queries!r}."
        )
        raise ValueError(msg)
    if not 0 < p_init <= 1:
        msg = f"`p_init` must be in (0, 1] (fraction of the movable genes changed per step), got {p_init!r}."
        raise ValueError(msg)
    if int(batch_size) != batch_size or batch_size < 1:
        msg = f"`batch_size` must be a positive integer (cells attacked together), got {batch_size!r}."
        raise ValueError(msg)
    return X, y.astype(np.int64)


def _box(
    X: np.ndarray, eps: float, lower: np.ndarray, upper: np.ndarray, allowed: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-entry float32 bounds of the feasible box, rounded inwards: every float32 in it is within eps and bounds.

    Entries that may not move get ``lo = hi = X``. ``X - eps`` rounds in float64 too, so each bound is checked
    against eps and the bounds as a float64 difference of float32 values (exact for the values of expression
    data) and moved inwards by one float32 step until it holds.
    """
    x64 = X.astype(np.float64)
    lo = np.maximum(x64 - eps, lower).astype(np.float32)
    hi = np.minimum(x64 + eps, upper).astype(np.float32)
    while True:
        lo64, hi64 = lo.astype(np.float64), hi.astype(np.float64)
        bad_lo = allowed & ((x64 - lo64 > eps) | (lo64 < lower))
        bad_hi = allowed & ((hi64 - x64 > eps) | (hi64 > upper))
        if not (bad_lo.any() or bad_hi.any()):
            break
        lo = np.where(bad_lo, np.nextafter(lo, np.float32(np.inf)), lo)
        hi = np.where(bad_hi, np.nextafter(hi, np.float32(-np.inf)), hi)
    lo = np.where(allowed, np.minimum(lo, X), X)  # X itself is feasible (checked): rounding cannot pass it
    hi = np.where(allowed, np.maximum(hi, X), X)
    return lo, hi


# ----------------------------------------------------------------------------------------------
# loss
# ----------------------------------------------------------------------------------------------
def _query(proba_fn: Callable[[np.ndarray], np.ndarray], Z: np.ndarray, n_classes: int | None) -> np.ndarray:
    P = np.asarray(proba_fn(Z))
    if P.ndim != 2 or P.shape[0] != Z.shape[0] or (n_classes is not None and P.shape[1] != n_classes):
        msg = (
            f"`proba_fn` returned shape {P.shape} for {Z.shape[0]} cells; expected (n_cells, n_classes) with the "
            "same classes at every call. Pass a function returning class probabilities, one row per cell."
        )
        raise ValueError(msg)
    return P


def _margin(P: np.ndarray, y: np.ndarray, *, targeted: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Margin loss (lower is better for the attacker), argmax and success of each row of ``P``."""
    lp = np.log(np.maximum(P.astype(np.float64), _PROBA_FLOOR))
    rows = np.arange(len(y))
    own = lp[rows, y]
    lp[rows, y] = -np.inf
    other = lp.max(1)
    pred = P.argmax(1)
    if targeted:
        return other - own, pred, pred == y
    return own - other, pred, pred != y


def _p_fraction(p_init: float, it: int, n_iters: int) -> float:
    """Square Attack's fraction of entries changed at iteration ``it`` of ``n_iters``."""
    scaled = int(it / n_iters * _SCHEDULE_LENGTH)
    for last, divisor in _P_SCHEDULE:
        if scaled <= last:
            return p_init / divisor
    return p_init / _P_LAST_DIVISOR


# ----------------------------------------------------------------------------------------------
# one chunk of cells
# ----------------------------------------------------------------------------------------------
@dataclass
class _Chunk:
    """State of the cells of one chunk: best point, its loss and prediction, queries, success."""

    y: np.ndarray
    lo: np.ndarray  # feasible box (float32), lo = hi = X where an entry may not move
    hi: np.ndarray
    movable: np.ndarray  # bool, entries allowed to move (and with room to)
    best: np.ndarray  # best point so far
    loss: np.ndarray
    pred: np.ndarray
    success: np.ndarray
    n_queries: np.ndarray

    def active(self, max_queries: int) -> np.ndarray:
        """Cells still attacked: not yet successful, with budget left and something to move."""
        return np.flatnonzero(~self.success & (self.n_queries < max_queries) & self.movable.any(1))

    def update(self, idx: np.ndarray, Z: np.ndarray, loss: np.ndarray, pred: np.ndarray, ok: np.ndarray) -> None:
        """Keep the proposals ``Z`` of cells ``idx`` that succeed or do not increase their loss."""
        # equal loss is kept (the paper keeps only decreases): tree ensembles give piecewise-constant scores,
        # and moving along a plateau lets the search reach a vote that changes (random forest: more flips)
        keep = ok | (loss <= self.loss[idx])
        sel = idx[keep]
        self.best[sel] = Z[keep]
        self.loss[sel] = loss[keep]
        self.pred[sel] = pred[keep]
        self.success[sel] = ok[keep]


def _square_chunk(
    state: _Chunk, proba_fn: Callable, n_classes: int, params: ScoreAttackParams, rng: np.random.Generator, bar
) -> None:
    max_queries, p_init = params.max_queries, params.p_init
    n_allowed = state.movable.sum(1)
    for it in range(max_queries - 1):
        idx = state.active(max_queries)
        if idx.size == 0:
            break
        cur = state.best[idx]
        lo, hi, movable = state.lo[idx], state.hi[idx], state.movable[idx]
        up = rng.random(cur.shape) < 0.5  # the sign of each entry's move
        if it == 0:  # the paper's start: every movable entry at a random vertex of the box
            chosen = movable
        else:
            k = np.maximum(np.rint(_p_fraction(p_init, it, max_queries - 1) * n_allowed[idx]), 1).astype(np.int64)
            keys = rng.random(cur.shape)
            keys[~movable] = 2.0  # never chosen (random keys lie in [0, 1))
            k_max = int(k.max())
            first = np.argpartition(keys, k_max - 1, axis=1)[:, :k_max]  # a random k_max-subset per cell
            order = np.argsort(np.take_along_axis(keys, first, 1), axis=1)
            first = np.take_along_axis(first, order, 1)  # its entries by increasing key: a prefix is random too
            take = np.arange(k_max) < k[:, None]
            chosen = np.zeros(cur.shape, dtype=bool)
            np.put_along_axis(chosen, first, take, 1)
            chosen &= movable
        prop = np.where(chosen, np.where(up, hi, lo), cur)
        same = ~(prop != cur).any(1)
        if same.any():  # the paper redraws a square that changes nothing: take the other vertex of its entries
            flip = chosen[same]
            prop[same] = np.where(flip, np.where(cur[same] == hi[same], lo[same], hi[same]), cur[same])
        P = _query(proba_fn, prop, n_classes)
        state.n_queries[idx] += 1
        loss, pred, ok = _margin(P, state.y[idx], targeted=params.targeted)
        state.update(idx, prop, loss, pred, ok)
        bar.update(1)


def _nes_chunk(
    state: _Chunk, proba_fn: Callable, n_classes: int, params: ScoreAttackParams, rng: np.random.Generator, bar
) -> None:
    max_queries, eps = params.max_queries, params.eps
    sigma = _NES_SIGMA_FRACTION * eps
    step = _NES_STEP_FRACTION * eps
    cur = state.best.copy()  # the PGD iterate of each cell (the best point is kept apart)
    grad = np.zeros(cur.shape, dtype=np.float64)
    fresh = False  # whether the iterate moved since its loss was last known (the clean query gave the first)
    while True:
        idx = state.active(max_queries)
        if idx.size == 0:
            break
        budget = int((max_queries - state.n_queries[idx]).min())  # equal within a chunk's active cells
        n_cur = int(fresh)
        n_pairs = min(_NES_PAIRS, (budget - n_cur) // 2)
        if n_cur + n_pairs == 0:  # one query left and the iterate's loss known: nothing worth asking
            break
        x = cur[idx]
        lo, hi, movable = state.lo[idx], state.hi[idx], state.movable[idx]
        u = rng.standard_normal((n_pairs, *x.shape)) * movable
        plus = np.clip(x + sigma * u, lo, hi).astype(np.float32)
        minus = np.clip(x - sigma * u, lo, hi).astype(np.float32)
        # one call: the moved iterate (its loss), then the + and - samples of every pair
        Z = np.concatenate([x[None]] * n_cur + [plus, minus])
        n_rows = Z.shape[0]
        P = _query(proba_fn, Z.reshape(-1, x.shape[1]), n_classes)
        state.n_queries[idx] += n_rows
        loss, pred, ok = _margin(P, np.tile(state.y[idx], n_rows), targeted=params.targeted)
        loss, pred, ok = (a.reshape(n_rows, idx.size) for a in (loss, pred, ok))
        # each cell's best evaluated point: its first success, else its lowest loss
        pick = np.where(ok.any(0), ok.argmax(0), loss.argmin(0))
        cols = np.arange(idx.size)
        state.update(idx, Z[pick, cols], loss[pick, cols], pred[pick, cols], ok[pick, cols])
        bar.update(1)
        if n_pairs == 0:
            break
        diff = (loss[n_cur : n_cur + n_pairs] - loss[n_cur + n_pairs :])[..., None]
        g = (diff * u).sum(0) / (2 * n_pairs * sigma)
        grad[idx] = _NES_MOMENTUM * grad[idx] + (1 - _NES_MOMENTUM) * g
        cur[idx] = np.clip(x - step * np.sign(grad[idx]), lo, hi).astype(np.float32)
        fresh = True


# ----------------------------------------------------------------------------------------------
# public function
# ----------------------------------------------------------------------------------------------
def score_attack(
    proba_fn: Callable[[np.ndarray], np.ndarray],
    X: np.ndarray,
    y: np.ndarray,
    *,
    method: ScoreMethod = "square",
    eps: float,
    lower: np.ndarray | float | None = None,
    upper: np.ndarray | float | None = None,
    mask: np.ndarray | None = None,
    targeted: bool = False,
    config: ScoreConfig | None = None,
) -> ScoreAttackResult:
    """Score-based black-box L-inf attack (Square Attack or NES) on a classifier that gives probabilities.

    Parameters
    ----------
    proba_fn
        ``proba_fn(Z) -> (n_rows, n_classes)`` class probabilities of a float32 cells x genes matrix,
        e.g. a :class:`~scadversarial.attacks._protocol.ClassifierAdapter` (torch module, scikit-learn
        estimator with ``predict_proba``, or callable).
    X
        ``(n_cells, n_genes)`` matrix in the classifier's input space; attacked as float32.
    y
        ``(n_cells,)`` integer class per cell: the class to move away from (untargeted), or the target
        class (``targeted=True``).
    method
        ``'square'``: Square Attack's random search on vertices of the box; ``'nes'``: NES gradient
        estimates followed by signed projected steps.
    eps
        L-inf budget: every entry of the result is within ``eps`` of ``X``.
    lower, upper
        Bounds on the result: a scalar, one value per gene ``(n_genes,)`` or one per entry
        ``(n_cells, n_genes)``; None for no bound. Entries allowed to move must start inside them.
    mask
        Boolean, per gene ``(n_genes,)`` or per entry ``(n_cells, n_genes)``: the entries allowed to
        move (None: all). The others are returned exactly as in ``X`` (as float32).
        For the ``'expressed'`` threat model pass ``mask=X > 0, lower=0``.
    targeted
        Reach class ``y`` instead of leaving it.
    config
        Query budget per cell, Square Attack's ``p_init``, cells per chunk and the seed
        (:class:`ScoreConfig`; default ``ScoreConfig()``).

    Returns
    -------
    ScoreAttackResult
        ``X_adv`` (float32), ``n_queries``, ``success``, ``pred`` per cell and the run's ``params``.
        Nothing is written to an AnnData.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.ensemble import RandomForestClassifier
    >>> from scadversarial.attacks._protocol import ClassifierAdapter
    >>> from scadversarial.attacks.score_based import score_attack
    >>> rng = np.random.default_rng(0)
    >>> X = rng.gamma(1.0, size=(200, 30)).astype(np.float32)
    >>> labels = (X[:, 0] > X[:, 1]).astype(int)
    >>> rf = RandomForestClassifier(n_estimators=20, random_state=0).fit(X, labels)
    >>> res = score_attack(ClassifierAdapter(rf), X[:20], labels[:20], eps=1.0, mask=X[:20] > 0, lower=0)
    >>> bool((res.X_adv >= 0).all())
    True
    """
    config = ScoreConfig() if config is None else config
    X, y = _check_inputs(X, y, method, eps, config)
    eps, max_queries, batch_size = float(eps), int(config.max_queries), int(config.batch_size)
    shape = X.shape
    allowed = _entry_mask(mask, shape)
    lower_ = _entrywise(lower, shape, "lower", -np.inf)
    upper_ = _entrywise(upper, shape, "upper", np.inf)
    outside = allowed & ((lower_ > X) | (upper_ < X))
    if outside.any():
        r, c = np.argwhere(outside)[0]
        msg = (
            f"{int(outside.sum())} entries allowed to move lie outside [lower, upper] (first: cell {r}, gene {c}: "
            f"{X[r, c]} not in [{lower_[r, c]}, {upper_[r, c]}]). Widen the bounds or leave those entries out of `mask`."
        )
        raise ValueError(msg)
    params = ScoreAttackParams(
        method=method,
        eps=eps,
        targeted=bool(targeted),
        max_queries=max_queries,
        p_init=float(config.p_init),
        batch_size=batch_size,
        random_state=int(config.random_state),
    )
    rng = np.random.default_rng(config.random_state)
    n = shape[0]
    X_adv = X.copy()
    n_queries = np.zeros(n, dtype=np.int64)
    success = np.zeros(n, dtype=bool)
    pred = np.zeros(n, dtype=np.int64)
    n_classes: int | None = None
    starts = range(0, n, batch_size)
    per_chunk = max_queries - 1 if method == "square" else -(-(max_queries - 1) // (1 + 2 * _NES_PAIRS)) + 1
    with progress(total=len(starts) * (1 + per_chunk), desc=f"{method} attack", unit="it") as bar:
        for start in starts:
            sl = slice(start, min(start + batch_size, n))
            Xc, yc = X[sl], y[sl]
            P = _query(proba_fn, Xc, n_classes)
            if n_classes is None:
                n_classes = P.shape[1]
                if ((y < 0) | (y >= n_classes)).any():
                    msg = f"`y` holds classes outside 0..{n_classes - 1} (the classifier has {n_classes} classes)."
                    raise ValueError(msg)
            loss, pc, ok = _margin(P, yc, targeted=targeted)
            lo, hi = _box(Xc, eps, lower_[sl], upper_[sl], allowed[sl])
            state = _Chunk(
                y=yc,
                lo=lo,
                hi=hi,
                movable=lo < hi,
                best=Xc.copy(),
                loss=loss,
                pred=pc,
                success=ok,
                n_queries=np.ones(len(yc), dtype=np.int64),
            )
            bar.update(1)
            done = bar.n
            chunk = _square_chunk if method == "square" else _nes_chunk
            chunk(state, proba_fn, n_classes, params, rng, bar)
            bar.update(max(done + per_chunk - bar.n, 0))  # a chunk whose cells all succeeded early
            bar.set_postfix(success=f"{(success[:start].sum() + state.success.sum()) / sl.stop:.0%}")
            X_adv[sl], n_queries[sl], success[sl], pred[sl] = state.best, state.n_queries, state.success, state.pred
    return ScoreAttackResult(X_adv=X_adv, n_queries=n_queries, success=success, pred=pred, params=params)
