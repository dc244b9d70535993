"""One cell on demand: its clean prediction and score, and its attacked version."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict

import numpy as np

from ._state import DEVICE, AppError, Attack, CellResult, Pipeline

#: Batches up to this many cells are scored on one torch thread (see :func:`quiet`).
SMALL_BATCH = 8
#: PGD step size as a multiple of ``eps / steps``: Madry et al.'s 2.5, so the steps can cross the ball.
ALPHA_FACTOR = 2.5


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``logits`` as float32 probabilities."""
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


@contextmanager
def quiet(*, single_thread: bool = False):
    """No progress bars (and, with ``single_thread``, one torch thread) inside the block.

    A one-cell forward/backward pass is a few small matrix products: one thread does it in
    milliseconds, while several threads on a busy CPU can wait on each other for a second.
    """
    import torch

    from .._settings import settings

    progress, settings.progress = settings.progress, False
    n_threads = torch.get_num_threads()
    if single_thread:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        settings.progress = progress
        if single_thread:
            torch.set_num_threads(n_threads)


def _check_index(pipe: Pipeline, index: int) -> int:
    index = int(index)
    if not 0 <= index < pipe.n_cells:
        msg = f"Cell index {index} is out of range (0 to {pipe.n_cells - 1})."
        raise AppError(msg)
    return index


def score(pipe: Pipeline, X: np.ndarray) -> np.ndarray | None:
    """Detector scores (probability of being adversarial) of the rows of ``X``; ``None`` without detector."""
    if pipe.detector is None:
        return None
    X = np.atleast_2d(np.asarray(X, dtype=np.float32))
    with quiet(single_thread=X.shape[0] <= SMALL_BATCH):
        out = pipe.detector.score_arrays(X, progress_bar=False, device=DEVICE)
    scores = out[-1] if isinstance(out, tuple) else out
    return np.asarray(scores, dtype=float).ravel()


def clean_scores(pipe: Pipeline) -> np.ndarray | None:
    """Detector scores of every clean cell, computed in batches once (at load time) and kept.

    These are the scores :func:`scadversarial.tl.detect` writes to ``.obs['sad_score']``. Scoring
    the whole matrix once also keeps a clean cell's score independent of how it is batched: the
    input-consistency features of the detector's own reference cells (distance 0 to themselves)
    are sensitive to float rounding, which differs between a batch of one and a full batch.
    """
    if pipe.detector is None:
        return None
    if pipe._clean_scores is None:
        pipe._clean_scores = score(pipe, pipe.X)
    return pipe._clean_scores


def _result(pipe: Pipeline, i: int, proba: np.ndarray, x: np.ndarray, score: float | None, **attack) -> CellResult:
    """Cell ``i``'s result from its class probabilities, gene vector and detector score."""
    k = int(proba.argmax())
    return CellResult(
        index=i,
        name=str(pipe.adata.obs_names[i]),
        true_label=None if pipe.labels is None else str(pipe.labels[i]),
        proba=proba,
        predicted=pipe.classes[k],
        confidence=float(proba[k]),
        score=score,
        x=x,
        split=None if pipe.split is None else str(pipe.split[i]),
        role=None if pipe.roles is None else str(pipe.roles[i]),
        **attack,
    )


def clean_cell(pipe: Pipeline, index: int, *, with_score: bool = True) -> CellResult:
    """The clean cell ``index``: its label, prediction, probabilities and detector score."""
    i = _check_index(pipe, index)
    s = float(clean_scores(pipe)[i]) if with_score and pipe.detector is not None else None
    return _result(pipe, i, pipe.proba[i], pipe.X[i], s)


def auto_alpha(eps: float, steps: int) -> float:
    """PGD step size that lets ``steps`` steps cross the ``eps``-ball: ``2.5 * eps / steps`` (Madry et al.)."""
    return ALPHA_FACTOR * float(eps) / max(int(steps), 1)


def attack_settings(
    pipe: Pipeline, *, method: str = "pgd", eps: float = 0.1, alpha: float | None = None, steps: int | None = None
) -> Attack:
    """The checked attack: ``steps`` default to the pipeline's recorded attack, ``alpha`` ``None`` (or 0) to :func:`auto_alpha`.

    Raises
    ------
    AppError
        Unknown method, or a budget that is not positive.

    """
    from ..attacks.whitebox import METHODS

    if method not in METHODS:
        msg = f"Unknown attack method {method!r}; choose one of {METHODS}."
        raise AppError(msg)
    if not eps or eps <= 0:
        msg = f"Epsilon must be positive, got {eps}."
        raise AppError(msg)
    steps = int(pipe.attack_defaults.steps if steps is None else steps)
    return Attack(
        method=method, eps=float(eps), alpha=auto_alpha(eps, steps) if not alpha else float(alpha), steps=steps
    )


def attack_rows(
    pipe: Pipeline, X: np.ndarray, labels: np.ndarray, attack: Attack, *, batch_size: int, random_state: int
) -> np.ndarray:
    """The rows of ``X`` attacked away from the classes ``labels``, with :func:`~scadversarial.tl.attack`'s array code."""
    from ..attacks.whitebox import attack_arrays

    bounds = {"lower": pipe.lower, "upper": pipe.upper}
    run = {"batch_size": batch_size, "device": DEVICE, "random_state": random_state}
    return attack_arrays(pipe.classifier, X, labels, **asdict(attack), **bounds, **run)[attack.eps]


def attack_cell(
    pipe: Pipeline,
    index: int,
    *,
    method: str = "pgd",
    eps: float = 0.1,
    alpha: float | None = None,
    steps: int | None = None,
    random_state: int = 0,
    with_score: bool = True,
) -> CellResult:
    """Attack cell ``index`` on demand and classify (and score) the result.

    Untargeted white-box attack pushing the cell away from its clean *predicted* class (as at
    inference, where the true label is unknown), with the same array-level code as
    :func:`~scadversarial.tl.attack`.

    Parameters
    ----------
    pipe
        The loaded pipeline.
    index
        Row of the cell.
    method
        ``'pgd'``, ``'pgd_rs'``, ``'pgd_l2'`` or ``'fgsm'``.
    eps, alpha, steps
        Budget, PGD step size and number of steps. ``steps`` defaults to the pipeline's recorded
        attack; ``alpha`` ``None`` (or 0) is :func:`auto_alpha`.
    random_state
        Seed of the random start (``'pgd_rs'``).
    with_score
        Also compute the detector score.

    Returns
    -------
    The attacked cell's :class:`CellResult` (``attacked=True``, ``success`` tells if the prediction flipped).

    """
    i = _check_index(pipe, index)
    attack = attack_settings(pipe, method=method, eps=eps, alpha=alpha, steps=steps)
    clean_k = int(pipe.proba[i].argmax())
    with quiet(single_thread=True):
        x_adv = attack_rows(
            pipe, pipe.X[i : i + 1], np.array([clean_k]), attack, batch_size=1, random_state=random_state
        )
        logits, _ = pipe.classifier.predict_arrays(x_adv, device=DEVICE)
    s = float(score(pipe, x_adv)[0]) if with_score and pipe.detector is not None else None
    return _result(
        pipe,
        i,
        softmax(logits)[0],
        x_adv[0],
        s,
        attacked=True,
        clean_predicted=pipe.classes[clean_k],
        method=method,
        eps=attack.eps,
    )
