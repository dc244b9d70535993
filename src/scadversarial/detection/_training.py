"""Training loops of the triplet network and the residual meta-detector (array level)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from .._settings import progress
from ..models.training import Monitor, TrainingConfig, fit

if TYPE_CHECKING:
    from ._fit import DetectorConfig

#: Margin of the triplet loss (TripletMarginLoss on L2-normalized embeddings: distances lie in [0, 2]).
TRIPLET_MARGIN = 1.0
#: Smallest decrease of the calibration loss that counts as an improvement for early stopping.
MIN_DELTA = 1e-6


def sample_triplets(
    cls_clean: np.ndarray, cls_adv: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One triplet per adversarial example: (anchor, positive) clean cells of its source class, the example as negative.

    Returns indices ``(anchor, positive)`` into the clean cells and ``negative`` into the adversarial ones,
    in random order.
    """
    neg = rng.permutation(len(cls_adv))
    anchor = np.empty(len(neg), dtype=np.int64)
    positive = np.empty(len(neg), dtype=np.int64)
    c_neg = cls_adv[neg]
    for c in np.unique(c_neg):
        pool = np.flatnonzero(cls_clean == c)
        if not len(pool):
            pool = np.arange(len(cls_clean))
        sel = np.flatnonzero(c_neg == c)
        anchor[sel] = pool[rng.integers(len(pool), size=len(sel))]
        # a positive different from the anchor where the class has several cells
        shift = rng.integers(1, max(len(pool), 2), size=len(sel))
        pos_in_pool = (np.searchsorted(pool, anchor[sel]) + shift) % len(pool)
        positive[sel] = pool[pos_in_pool]
    return anchor, positive, neg


def train_triplet(
    net: nn.Module,
    F_clean: torch.Tensor,
    cls_clean: np.ndarray,
    F_adv: torch.Tensor,
    cls_adv: np.ndarray,
    *,
    config: DetectorConfig,
    rng: np.random.Generator,
    margin: float = TRIPLET_MARGIN,
) -> list[float]:
    """Train the triplet network (anchor/positive: clean cells of one class; negative: an adversarial cell).

    ``F_clean`` and ``F_adv`` are standardized meta-features; ``config`` gives the epochs
    (``triplet_epochs``), AdamW settings and batch size; the caller seeds torch. Returns the
    mean loss of each epoch; ``net`` is left in eval mode.
    """
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = nn.TripletMarginLoss(margin=margin)
    batch_size = config.batch_size
    history = []
    for _ in progress(range(config.triplet_epochs), desc="triplet net", unit="epoch"):
        net.train()
        a, p, n = (torch.as_tensor(i) for i in sample_triplets(cls_clean, cls_adv, rng))
        total = 0.0
        for s in range(0, len(n), batch_size):
            sl = slice(s, s + batch_size)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(F_clean[a[sl]]), net(F_clean[p[sl]]), net(F_adv[n[sl]]))
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(n[sl])
        history.append(total / max(len(n), 1))
    net.eval()
    return history


def train_residual(
    net: nn.Module,
    Z_train: torch.Tensor,
    y_train: torch.Tensor,
    Z_val: torch.Tensor,
    y_val: torch.Tensor,
    *,
    config: DetectorConfig,
    balance: bool = True,
) -> dict:
    """Train the residual detector with BCE-with-logits and early stopping on the validation loss.

    ``config`` gives the maximum epochs, the patience, the AdamW settings and the batch size.

    With ``balance=True`` positives are weighted by ``n_clean / n_adversarial`` so both classes
    count equally. The weights of the best validation epoch are kept. The caller seeds torch.

    Returns
    -------
    ``{'loss': [...], 'val_loss': [...], 'best_epoch': int}``; ``net`` is left in eval mode.

    """
    y_train, y_val = y_train.float(), y_val.float()
    n_pos = float(y_train.sum())
    pw = torch.tensor((len(y_train) - n_pos) / max(n_pos, 1.0)) if balance else None
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pw)
    fit_config = TrainingConfig(
        lr=config.lr,
        weight_decay=config.weight_decay,
        batch_size=config.batch_size,
        max_epochs=config.epochs,
        patience=config.patience,
    )
    return fit(
        net,
        lambda m, bi: loss_fn(m(Z_train[bi]), y_train[bi]),
        len(y_train),
        lambda m: loss_fn(m(Z_val), y_val),
        config=fit_config,
        monitor=Monitor("val_loss", higher_is_better=False, min_delta=MIN_DELTA),
        device=y_train.device,
        desc="meta-detector",
    )
