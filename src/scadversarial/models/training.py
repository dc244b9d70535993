"""Array-level training loop of the classifier (no AnnData inside)."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from .._settings import progress
from .classifier import CellClassifier


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
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    history: dict = {"loss": [], "val_accuracy": []}
    best_acc, best_state, best_epoch, wait = -1.0, None, 0, 0
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(int(random_state))
        bar = progress(range(max_epochs), desc="train classifier", unit="epoch")
        for epoch in bar:
            model.train()
            perm = torch.randperm(len(yt), device=dev)
            total = 0.0
            for start in range(0, len(perm), batch_size):
                bi = perm[start : start + batch_size]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(Xt[bi]), yt[bi])
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(bi)
            model.eval()
            with torch.no_grad():
                acc = float((model(Xv).argmax(1) == yv).float().mean())
            history["loss"].append(total / len(perm))
            history["val_accuracy"].append(acc)
            bar.set_postfix(loss=f"{total / len(perm):.3f}", val_acc=f"{acc:.3f}")
            if acc > best_acc:
                best_acc, best_state, best_epoch, wait = acc, copy.deepcopy(model.state_dict()), epoch, 0
            else:
                wait += 1
                if wait >= patience:
                    break
    model.load_state_dict(best_state)
    opt.zero_grad(set_to_none=True)  # leave no gradients behind on the parameters
    model.eval()
    history["best_epoch"] = best_epoch
    return history
