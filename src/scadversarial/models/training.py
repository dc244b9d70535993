"""Array-level training loops (no AnnData inside): mini-batch AdamW with early stopping."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .._settings import progress
from .classifier import CellClassifier


def fit_early_stopping(
    net: nn.Module,
    loss_fn: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    val_metric: Callable[[nn.Module], float],
    *,
    higher_is_better: bool,
    min_delta: float = 0.0,
    val_name: str = "val",
    lr: float = 1e-3,
    weight_decay: float = 1e-3,
    batch_size: int = 64,
    max_epochs: int = 60,
    patience: int = 5,
    desc: str = "train",
) -> dict:
    """Mini-batch AdamW on ``loss_fn(net(X[batch]), y[batch])``; keep the weights of the best validation epoch.

    ``val_metric(net)`` is evaluated in eval mode after every epoch; training stops after
    ``patience`` epochs without an improvement larger than ``min_delta``. Batch order and dropout
    draw from torch's global generator: callers seed it (e.g. inside :func:`torch.random.fork_rng`).

    Returns
    -------
    ``{'loss': [...], val_name: [...], 'best_epoch': int}``; ``net`` is left in eval mode with no
    gradients on its parameters.
    """
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    sign = 1.0 if higher_is_better else -1.0
    history: dict = {"loss": [], val_name: []}
    best, best_state, best_epoch, wait = -np.inf, copy.deepcopy(net.state_dict()), 0, 0
    bar = progress(range(max_epochs), desc=desc, unit="epoch")
    for epoch in bar:
        net.train()
        perm = torch.randperm(len(y), device=y.device)
        total = 0.0
        for start in range(0, len(perm), batch_size):
            bi = perm[start : start + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(X[bi]), y[bi])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(bi)
        net.eval()
        with torch.no_grad():
            metric = float(val_metric(net))
        history["loss"].append(total / max(len(perm), 1))
        history[val_name].append(metric)
        bar.set_postfix({"loss": f"{history['loss'][-1]:.4f}", val_name: f"{metric:.4f}"})
        if sign * metric > best + min_delta:
            best, best_state, best_epoch, wait = sign * metric, copy.deepcopy(net.state_dict()), epoch, 0
        else:
            wait += 1
            if wait >= patience:
                break
    net.load_state_dict(best_state)
    opt.zero_grad(set_to_none=True)  # leave no gradients behind on the parameters
    net.eval()
    history["best_epoch"] = best_epoch
    return history


def fit_classifier(
    model: CellClassifier,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    *,
    lr: float = 1e-3,
    weight_decay: float = 1e-3,
    batch_size: int = 64,
    max_epochs: int = 60,
    patience: int = 5,
    label_smoothing: float = 0.0,
    random_state: int = 0,
    device: torch.device | str = "cpu",
) -> dict:
    """Train ``model`` with AdamW and early stopping on validation accuracy; keep the best epoch's weights.

    Randomness (batch order, dropout) comes from ``random_state`` only; torch's global random
    state is restored afterwards.

    Returns
    -------
    ``{'loss': [...], 'val_accuracy': [...], 'best_epoch': int}``; ``model`` is left in eval mode.
    """
    dev = torch.device(device)
    model.to(dev)
    Xt, yt = torch.as_tensor(X_train, device=dev), torch.as_tensor(y_train, dtype=torch.long, device=dev)
    Xv, yv = torch.as_tensor(X_val, device=dev), torch.as_tensor(y_val, dtype=torch.long, device=dev)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(int(random_state))
        return fit_early_stopping(
            model, nn.CrossEntropyLoss(label_smoothing=label_smoothing), Xt, yt,
            lambda m: (m(Xv).argmax(1) == yv).float().mean(),
            higher_is_better=True, val_name="val_accuracy", lr=lr, weight_decay=weight_decay,
            batch_size=batch_size, max_epochs=max_epochs, patience=patience, desc="train classifier",
        )  # fmt: skip
