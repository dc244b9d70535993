"""Array-level training loops (no AnnData inside): mini-batch AdamW with early stopping."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from .. import _keys
from .._docs import doc_device, doc_params
from .._settings import progress, settings
from ._filter import WeakInputFilter
from .classifier import CellClassifier

if TYPE_CHECKING:
    from ._adversarial import AdversarialTraining, Augmentation, TrainingInputs

#: ``(net, batch indices) -> loss`` of one mini-batch; the net is in training mode.
BatchLoss = Callable[[nn.Module, torch.Tensor], torch.Tensor]
#: the space of the training matrix: the classifier's scaled input, or log-normalized values its transform scales
InputSpace = Literal["scaled", "log"]
#: validation cells early stopping watches at most: the accuracy of 20,000 cells has a standard error below
#: 0.4 percentage points, finer than the epoch-to-epoch changes early stopping reacts to, and the dense
#: sample stays small (20,000 x 2,000 float32 = 160 MB) at any number of cells
MAX_VAL_CELLS = 20_000
#: seeds of the two NumPy streams of :func:`fit_classifier`, drawn from ``(random_state, stream)``: the
#: validation sample and the per-epoch training subsample are independent of each other and of torch's
#: generator (batch order, dropout), so neither changes the other when it is switched on
VAL_STREAM, EPOCH_STREAM = 0, 1


@doc_params(doc_device=doc_device)
@dataclass(frozen=True)
class TrainingConfig:
    """How the classifier is built and trained (as scvi-tools' training configs).

    Parameters
    ----------
    hidden, dropout
        Hidden layer widths (the last is the embedding size) and the dropout after each.
    lr, weight_decay, batch_size
        AdamW learning rate, weight decay and mini-batch size.
    max_epochs, patience
        At most ``max_epochs`` epochs; stop after ``patience`` epochs without a better validation metric.
    label_smoothing
        Label smoothing of the cross-entropy loss.
    split_key
        ``.obs`` column with ``'train'``/``'val'``/``'test'`` (:func:`~scadversarial.tl.train_classifier`):
        the cells trained on and the cells early stopping watches.
    max_cells_per_epoch
        Train on at most this many cells per epoch: a new sample of the training cells every epoch,
        stratified by label (each class in proportion to its training cells, at least one cell each).
        ``None`` (default): every training cell, every epoch.
    max_val_cells
        Early stopping watches the accuracy of at most this many validation cells: a seeded sample
        stratified by label when the validation split is larger (``None``: all of them).
    {doc_device}
    save_dir
        If given, :func:`~scadversarial.tl.train_classifier` also saves the model to ``save_dir/<key_added>/``.
    input_filter
        Weak-input filtering as the classifier's first layer (:class:`~scadversarial.tl.WeakInputFilter`,
        Rademaker et al. 2019), trained with and kept in the model; ``None`` (default): none.

    Examples
    --------
    >>> from scadversarial.models.training import TrainingConfig
    >>> TrainingConfig(lr=3e-4, patience=10).max_epochs
    60

    """

    hidden: tuple[int, ...] = (256, 128, 64)
    dropout: tuple[float, ...] = (0.4, 0.4, 0.3)
    lr: float = 1e-3
    weight_decay: float = 1e-3
    batch_size: int = 64
    max_epochs: int = 60
    patience: int = 5
    label_smoothing: float = 0.0
    split_key: str = _keys.OBS_SPLIT
    device: str | None = None
    save_dir: str | None = None
    max_cells_per_epoch: int | None = None
    max_val_cells: int | None = MAX_VAL_CELLS
    input_filter: WeakInputFilter | None = None

    def __post_init__(self) -> None:
        if self.input_filter is not None and not isinstance(self.input_filter, WeakInputFilter):
            msg = (
                f"TrainingConfig.input_filter must be a sad.tl.WeakInputFilter or None, got {self.input_filter!r}; "
                "e.g. TrainingConfig(input_filter=sad.tl.WeakInputFilter(threshold=4.0, unit='umi'))."
            )
            raise TypeError(msg)
        if len(self.hidden) != len(self.dropout):
            msg = f"`hidden` ({len(self.hidden)} layers) and `dropout` ({len(self.dropout)} values) must have the same length."
            raise ValueError(msg)
        # 0 epochs (the initial weights) and a patience of 0 (stop at the first epoch without gain) are valid
        bounds = (
            ("batch_size", 1),
            ("max_epochs", 0),
            ("patience", 0),
            ("max_cells_per_epoch", 1),
            ("max_val_cells", 1),
        )
        for name, least in bounds:
            value = getattr(self, name)
            if value is not None and int(value) < least:
                msg = f"TrainingConfig.{name} must be at least {least}{' (or None)' if name.startswith('max_') else ''}, got {value}."
                raise ValueError(msg)


def stratified_quota(counts: np.ndarray, n: int) -> np.ndarray:
    """Cells to draw from each class for a sample of ``n``: in proportion to ``counts``, at least one each.

    Largest remainders round the proportional shares; when ``n`` allows, a class with cells but a
    share below one gets one cell, taken from the largest quotas. ``n`` at least ``counts.sum()``
    gives ``counts``.

    Examples
    --------
    >>> stratified_quota(np.array([90, 9, 1]), 10).tolist()
    [8, 1, 1]

    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if n >= total:
        return counts.copy()
    share = counts * (n / total)
    quota = np.floor(share).astype(np.int64)
    left = n - int(quota.sum())
    quota[np.argsort(-(share - quota), kind="stable")[:left]] += 1
    short = np.flatnonzero((counts > 0) & (quota == 0))
    if len(short) <= n:
        for c in short:  # one cell each, from the class with the largest quota
            quota[int(np.argmax(quota))] -= 1
            quota[c] = 1
    return quota


def stratified_sample(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions of ``n`` cells drawn without replacement, per class by :func:`stratified_quota`.

    Examples
    --------
    >>> y = np.array([0] * 90 + [1] * 9 + [2])
    >>> np.bincount(y[stratified_sample(y, 10, np.random.default_rng(0))]).tolist()
    [8, 1, 1]

    """
    y = np.asarray(y)
    if n >= len(y):
        return np.arange(len(y))
    codes, inverse = np.unique(y, return_inverse=True)
    quota = stratified_quota(np.bincount(inverse, minlength=len(codes)), n)
    parts = [rng.choice(np.flatnonzero(inverse == c), size=int(k), replace=False) for c, k in enumerate(quota) if k]
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


class MatrixRows:
    """Training cells of an in-memory matrix, densified a mini-batch at a time.

    Nothing is copied up front: a dense or sparse matrix of a million cells stays as it is, and
    each mini-batch reads its rows (float32). The values equal those of the whole matrix densified.

    Parameters
    ----------
    matrix
        Cells x genes, a NumPy array or a SciPy sparse matrix (CSR reads rows fastest).
    rows
        Positions in ``matrix`` of the cells, in order (default: all rows).

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> rows = MatrixRows(sp.csr_matrix(np.eye(4, dtype=np.float32)), np.array([3, 1]))
    >>> len(rows), rows.take(np.array([1])).tolist()
    (2, [[0.0, 1.0, 0.0, 0.0]])

    """

    def __init__(self, matrix, rows: np.ndarray | None = None) -> None:
        self.matrix = matrix
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.matrix.shape[0] if self.rows is None else len(self.rows))

    def take(self, i: np.ndarray) -> np.ndarray:
        """Cells ``i`` (positions among :attr:`rows`) as a dense float32 array, in that order."""
        part = self.matrix[np.asarray(i) if self.rows is None else self.rows[i]]
        if sp.issparse(part):
            part = part.toarray()
        return np.asarray(part, dtype=np.float32)


class StreamedRows:
    """Training cells read from a store (a file, a dask array) an epoch at a time.

    Before each epoch :meth:`load` reads that epoch's cells with ``read(positions)`` (sorted positions
    in, an in-memory dense or sparse matrix of those cells out); mini-batches are then densified from
    them as by :class:`MatrixRows`. Memory holds one epoch's cells as stored, not the training split.

    Parameters
    ----------
    read
        ``positions -> matrix`` of those training cells, rows in the order given.
    n
        Number of training cells.

    Examples
    --------
    >>> X = np.arange(12, dtype=np.float32).reshape(6, 2)
    >>> rows = StreamedRows(lambda pos: X[pos], 6)
    >>> rows.load(np.array([1, 4]))
    >>> rows.take(np.array([4, 1])).tolist()
    [[8.0, 9.0], [2.0, 3.0]]

    """

    def __init__(self, read: Callable[[np.ndarray], object], n: int) -> None:
        self.read, self.n = read, int(n)
        self._rows: np.ndarray | None = None
        self._loaded: MatrixRows | None = None

    def __len__(self) -> int:
        return self.n

    def load(self, rows: np.ndarray) -> None:
        """Read the cells ``rows`` (positions below ``n``) for the coming epoch, dropping the last epoch's first."""
        self._loaded = None
        self._rows = np.sort(np.asarray(rows, dtype=np.int64))
        self._loaded = MatrixRows(self.read(self._rows))

    def take(self, i: np.ndarray) -> np.ndarray:
        """Cells ``i`` (positions among the training cells, all loaded) as a dense float32 array, in that order."""
        i = np.asarray(i, dtype=np.int64)
        at = np.searchsorted(self._rows, i) if self._rows is not None else None
        if at is None or (at >= len(self._rows)).any() or (self._rows[np.minimum(at, len(self._rows) - 1)] != i).any():
            msg = "StreamedRows.take asked for cells that were not loaded for this epoch; call load() first."
            raise RuntimeError(msg)
        return self._loaded.take(at)


@dataclass(frozen=True)
class Monitor:
    """What early stopping watches: the metric's name, its direction and the smallest improvement."""

    name: str = "val"
    higher_is_better: bool = True
    min_delta: float = 0.0


def fit(
    net: nn.Module,
    batch_loss: BatchLoss,
    n_train: int,
    val_metric: Callable[[nn.Module], float],
    *,
    config: TrainingConfig,
    monitor: Monitor,
    device: torch.device | str = "cpu",
    desc: str = "train",
    epoch_rows: Callable[[int], np.ndarray] | None = None,
) -> dict:
    """Mini-batch AdamW on ``batch_loss(net, batch)``; keep the weights of the best validation epoch.

    ``val_metric(net)`` is evaluated in eval mode after every epoch; training stops after
    ``config.patience`` epochs without an improvement larger than ``monitor.min_delta``. Batch
    order and dropout draw from torch's global generator: callers seed it (e.g. inside
    :func:`torch.random.fork_rng`). ``epoch_rows(epoch)``, when given, names the cells (positions
    below ``n_train``) an epoch trains on, in batches of a random order; by default all of them.

    Returns
    -------
    ``{'loss': [...], monitor.name: [...], 'best_epoch': int}``; ``net`` is left in eval mode with
    no gradients on its parameters.
    """
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sign = 1.0 if monitor.higher_is_better else -1.0
    history: dict = {"loss": [], monitor.name: []}
    best, best_state, best_epoch, wait = -np.inf, copy.deepcopy(net.state_dict()), 0, 0
    bar = progress(range(config.max_epochs), desc=desc, unit="epoch")
    for epoch in bar:
        net.train()
        if epoch_rows is None:
            perm = torch.randperm(n_train, device=device)
        else:
            chosen = torch.as_tensor(epoch_rows(epoch), dtype=torch.long, device=device)
            perm = chosen[torch.randperm(len(chosen), device=device)]
        total = 0.0
        for start in range(0, len(perm), config.batch_size):
            bi = perm[start : start + config.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = batch_loss(net, bi)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(bi)
        net.eval()
        with torch.no_grad():
            metric = float(val_metric(net))
        history["loss"].append(total / max(len(perm), 1))
        history[monitor.name].append(metric)
        bar.set_postfix({"loss": f"{history['loss'][-1]:.4f}", monitor.name: f"{metric:.4f}"})
        if sign * metric > best + monitor.min_delta:
            best, best_state, best_epoch, wait = sign * metric, copy.deepcopy(net.state_dict()), epoch, 0
        else:
            wait += 1
            if wait >= config.patience:
                break
    net.load_state_dict(best_state)
    opt.zero_grad(set_to_none=True)  # leave no gradients behind on the parameters
    net.eval()
    history["best_epoch"] = best_epoch
    return history


def fit_classifier(
    model: CellClassifier,
    train: tuple[np.ndarray | MatrixRows | StreamedRows, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    *,
    config: TrainingConfig | None = None,
    random_state: int = 0,
    adversarial: AdversarialTraining | None = None,
    augment: Augmentation | None = None,
    inputs: TrainingInputs | None = None,
    input_space: InputSpace = "scaled",
) -> dict:
    """Train ``model`` with AdamW and early stopping on validation accuracy; keep the best epoch's weights.

    ``train`` and ``val`` are ``(X, y)``: inputs and class codes. The training ``X`` may be a
    :class:`MatrixRows` (a dense or sparse matrix read a mini-batch at a time, so a million cells
    need no dense copy) or a :class:`StreamedRows` (each epoch's cells read from a store before the
    epoch); ``input_space='log'`` says ``X`` holds log-normalized values, which pass
    through the model's own transform (its per-gene scaling) before the network. With
    ``config.max_cells_per_epoch`` each epoch trains on a new stratified sample of the training
    cells (:func:`stratified_sample`). With ``adversarial`` or ``augment`` each mini-batch goes
    through :func:`~scadversarial.models._adversarial.hardened_loss`, which needs the training
    cells' counts or log values in ``inputs`` (rows as ``train``). Randomness (batch order,
    dropout, thinning draws, attack starts, epoch samples) comes from ``random_state`` only;
    torch's global random state is restored afterwards.

    Returns
    -------
    ``{'loss': [...], 'val_accuracy': [...], 'best_epoch': int}``; ``model`` is left in eval mode.
    """
    config = config or TrainingConfig()
    if input_space not in ("scaled", "log"):
        msg = f"input_space must be 'scaled' or 'log', got {input_space!r}."
        raise ValueError(msg)
    dev = settings.torch_device(config.device)
    model.to(dev)
    X_train, y_train = train
    yt = torch.as_tensor(y_train, dtype=torch.long, device=dev)
    Xv, yv = torch.as_tensor(val[0], device=dev), torch.as_tensor(val[1], dtype=torch.long, device=dev)
    if input_space == "log":
        with torch.no_grad():
            Xv = model.transform(Xv)
    if adversarial is None and augment is None:
        batch_loss = _clean_loss(model, X_train, yt, config=config, input_space=input_space, device=dev)
    else:
        from ._adversarial import hardened_loss

        batch_loss = hardened_loss(
            yt, inputs, adversarial=adversarial, augment=augment, label_smoothing=config.label_smoothing, device=dev
        )
    epoch_rows = None
    cap = config.max_cells_per_epoch
    capped = cap is not None and int(cap) < len(yt)
    if capped or isinstance(X_train, StreamedRows):
        y_codes = np.asarray(y_train)
        rng = np.random.default_rng((int(random_state), EPOCH_STREAM))

        def epoch_rows(_epoch: int) -> np.ndarray:  # a new sample at every call, one call per epoch
            rows = stratified_sample(y_codes, int(cap), rng) if capped else np.arange(len(y_codes))
            if isinstance(X_train, StreamedRows):
                X_train.load(rows)
            return rows

    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(int(random_state))
        return fit(
            model,
            batch_loss,
            len(yt),
            lambda m: (m(Xv).argmax(1) == yv).float().mean(),
            config=config,
            monitor=Monitor("val_accuracy"),
            device=dev,
            desc="train classifier",
            epoch_rows=epoch_rows,
        )


def _clean_loss(
    model: CellClassifier,
    X_train: np.ndarray | MatrixRows | StreamedRows,
    yt: torch.Tensor,
    *,
    config: TrainingConfig,
    input_space: InputSpace,
    device: torch.device,
) -> BatchLoss:
    """Cross-entropy of a mini-batch: rows of a tensor of all training cells, or read from a :class:`MatrixRows`."""
    ce = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    scale = model.transform if input_space == "log" else nn.Identity()
    if not isinstance(X_train, MatrixRows | StreamedRows):
        Xt = torch.as_tensor(X_train, device=device)

        def batch_loss(net: nn.Module, bi: torch.Tensor) -> torch.Tensor:
            return ce(net(scale(Xt[bi])), yt[bi])

        return batch_loss

    def read_loss(net: nn.Module, bi: torch.Tensor) -> torch.Tensor:
        xb = torch.from_numpy(X_train.take(bi.cpu().numpy())).to(device)
        return ce(net(scale(xb)), yt[bi])

    return read_loss


__all__ = [
    "BatchLoss",
    "MatrixRows",
    "Monitor",
    "StreamedRows",
    "TrainingConfig",
    "fit",
    "fit_classifier",
    "stratified_quota",
    "stratified_sample",
]
