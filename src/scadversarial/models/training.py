"""Array-level training loops (no AnnData inside): mini-batch AdamW with early stopping."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from .. import _keys
from .._docs import doc_device, doc_params
from .._settings import progress, settings
from .classifier import CellClassifier

if TYPE_CHECKING:
    from ._adversarial import AdversarialTraining, ThinningAugmentation, TrainingInputs

#: ``(net, batch indices) -> loss`` of one mini-batch; the net is in training mode.
BatchLoss = Callable[[nn.Module, torch.Tensor], torch.Tensor]


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
    {doc_device}
    save_dir
        If given, :func:`~scadversarial.tl.train_classifier` also saves the model to ``save_dir/<key_added>/``.

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

    def __post_init__(self) -> None:
        if len(self.hidden) != len(self.dropout):
            msg = f"`hidden` ({len(self.hidden)} layers) and `dropout` ({len(self.dropout)} values) must have the same length."
            raise ValueError(msg)
        # 0 epochs (the initial weights) and a patience of 0 (stop at the first epoch without gain) are valid
        for name, least in (("batch_size", 1), ("max_epochs", 0), ("patience", 0)):
            if int(getattr(self, name)) < least:
                msg = f"TrainingConfig.{name} must be at least {least}, got {getattr(self, name)}."
                raise ValueError(msg)


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
) -> dict:
    """Mini-batch AdamW on ``batch_loss(net, batch)``; keep the weights of the best validation epoch.

    ``val_metric(net)`` is evaluated in eval mode after every epoch; training stops after
    ``config.patience`` epochs without an improvement larger than ``monitor.min_delta``. Batch
    order and dropout draw from torch's global generator: callers seed it (e.g. inside
    :func:`torch.random.fork_rng`).

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
        perm = torch.randperm(n_train, device=device)
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
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    *,
    config: TrainingConfig | None = None,
    random_state: int = 0,
    adversarial: AdversarialTraining | None = None,
    augment: ThinningAugmentation | None = None,
    inputs: TrainingInputs | None = None,
) -> dict:
    """Train ``model`` with AdamW and early stopping on validation accuracy; keep the best epoch's weights.

    ``train`` and ``val`` are ``(X, y)``: scaled inputs and class codes. With ``adversarial`` or
    ``augment`` each mini-batch goes through :func:`~scadversarial.models._adversarial.hardened_loss`,
    which needs the training cells' counts or log values in ``inputs`` (rows as ``train``).
    Randomness (batch order, dropout, thinning draws, attack starts) comes from ``random_state``
    only; torch's global random state is restored afterwards.

    Returns
    -------
    ``{'loss': [...], 'val_accuracy': [...], 'best_epoch': int}``; ``model`` is left in eval mode.
    """
    config = config or TrainingConfig()
    dev = settings.torch_device(config.device)
    model.to(dev)
    Xt, yt = torch.as_tensor(train[0], device=dev), torch.as_tensor(train[1], dtype=torch.long, device=dev)
    Xv, yv = torch.as_tensor(val[0], device=dev), torch.as_tensor(val[1], dtype=torch.long, device=dev)
    if adversarial is None and augment is None:
        ce = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

        def batch_loss(net: nn.Module, bi: torch.Tensor) -> torch.Tensor:
            return ce(net(Xt[bi]), yt[bi])

    else:
        from ._adversarial import hardened_loss

        batch_loss = hardened_loss(
            yt, inputs, adversarial=adversarial, augment=augment, label_smoothing=config.label_smoothing, device=dev
        )
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
        )


__all__ = ["BatchLoss", "Monitor", "TrainingConfig", "fit", "fit_classifier"]
