"""Prediction-stability signals: does the call survive thinning of the counts, and do the cell's neighbours agree?

Array level (no AnnData inside); both read the classifier's scaled input.

- :class:`ThinningStability`: the counts recovered from the input (see
  :func:`~scadversarial.detection.recover_counts`) are thinned binomially a few times and
  re-normalized; the score is how much probability the thinned copies take away from the
  clean prediction. An adversarial cell sits just across a boundary the attacker found for
  these exact counts; a real cell's call rests on its whole profile.
- :class:`KNNConsistency`: the fraction of the cell's nearest clean training cells (PCA of the
  scaled input) whose label differs from the classifier's prediction.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from ._calibrated import RngLike, _Baseline, _class_codes, _rng
from ._count_model import recover_counts
from ._rules import Transform, _zero_bound

#: Fraction of the depth a thinned copy keeps: half depth, the benchmark's benign shift, which
#: changes a clean call far less often than it undoes a call bought with a few UMI per gene.
THIN_FRACTION = 0.5
#: Thinned copies per cell: the score is a mean over them; 4 keep scoring at ~5 forward passes.
THIN_DRAWS = 4
#: ``sad.pp.preprocess``'s default library size after normalization.
TARGET_SUM = 1e4
#: Neighbours of the kNN vote (scanpy's ``pp.neighbors`` default is 15).
KNN_NEIGHBORS = 15
#: Principal components of the kNN space (scanpy's ``tl.pca`` default is 50).
KNN_PCS = 50


class ThinningStability(_Baseline):
    """Disagreement of a cell's prediction with the predictions of binomially thinned copies of its counts.

    Score: ``1 - mean_d p_d(pred)``, the probability the thinned copies ``d`` take away from the
    clean prediction ``pred`` (0: every copy is sure of it). Each cell's library outside the
    classifier's genes is thinned by its expected value. Each cell draws from its own stream,
    seeded by the seed drawn at :meth:`fit` and the cell's recovered counts, so a cell gets the
    same score on every call, whatever other cells it is scored with.

    Parameters
    ----------
    fraction
        Fraction of the depth each copy keeps, in (0, 1).
    n_draws
        Thinned copies per cell.
    target_sum
        The normalization's library size (``sad.pp.preprocess``'s ``target_sum``).

    Examples
    --------
    >>> det = ThinningStability().fit(clf, X_train, rng=0)  # doctest: +SKIP
    >>> det.calibrate(X_val, target_fpr=0.05)  # doctest: +SKIP
    """

    name = "thinning"

    def __init__(
        self, *, fraction: float = THIN_FRACTION, n_draws: int = THIN_DRAWS, target_sum: float = TARGET_SUM
    ) -> None:
        super().__init__()
        if not 0 < fraction < 1:
            msg = f"fraction must lie in (0, 1) (the depth a thinned copy keeps), got {fraction}."
            raise ValueError(msg)
        if n_draws < 1:
            msg = f"n_draws must be at least 1, got {n_draws}."
            raise ValueError(msg)
        if not target_sum > 0:
            msg = f"target_sum must be the positive library size of the normalization, got {target_sum}."
            raise ValueError(msg)
        self.fraction, self.n_draws, self.target_sum = float(fraction), int(n_draws), float(target_sum)

    def _fit(self, X_clean: np.ndarray, X_adv: np.ndarray | None, y: np.ndarray | None, rng: RngLike) -> None:
        """Keep the classifier, the off-zero bound of clean training cells and the seed of the draws."""
        X_clean = self._check_input(X_clean)
        self.transform_ = Transform.of(self.classifier)
        self.zero_bound_ = _zero_bound(self.transform_, X_clean)
        self.seed_ = int(_rng(rng).integers(2**63 - 1))

    def score(self, X: np.ndarray) -> np.ndarray:
        """Probability taken from the clean prediction by thinning (float64, in [0, 1])."""
        clf = self._check_fitted()
        X = self._check_input(X)
        rc = recover_counts(self.transform_, X, self.zero_bound_)
        unit = np.where(np.isfinite(rc.unit), rc.unit, 1.0)
        other = np.maximum(self.target_sum / unit - rc.counts.sum(1), 0.0)
        pred = self._predicted(X)
        rows, cols, thinned = self._thinned(rc.counts.astype(np.int64))
        kept = np.zeros(len(X))
        for d in range(self.n_draws):
            K = np.zeros(rc.counts.shape)
            K[rows, cols] = thinned[d]
            lib = np.maximum(K.sum(1) + self.fraction * other, 1.0)
            Z = self.transform_.to_scaled(np.log1p(K * (self.target_sum / lib)[:, None]))
            p = torch.softmax(torch.from_numpy(clf.predict_arrays(Z)[0]).double(), 1).numpy()
            kept += p[np.arange(len(X)), pred]
        return 1.0 - kept / self.n_draws

    def _thinned(self, C: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(rows, cols, draws)``: the expressed entries of counts ``C`` and their ``n_draws`` thinned values.

        One generator per cell, seeded by the fit's seed and a hash of the cell's expressed genes and
        counts: a cell's draws do not depend on the cells scored with it (a generator over the whole
        matrix would give a cell other draws in another batch). Only expressed entries are drawn, so
        the per-cell loop costs about 50 us a cell (a tenth of the score on PBMC3k, 2,000 genes).
        """
        rows, cols = np.nonzero(C)
        ends = np.cumsum(np.bincount(rows, minlength=len(C)))
        draws = np.empty((self.n_draws, len(rows)))
        start = 0
        for i, end in enumerate(ends):
            if end > start:
                c = C[i, cols[start:end]]
                key = hashlib.blake2b(cols[start:end].astype(np.int64).tobytes() + c.tobytes(), digest_size=8).digest()
                gen = np.random.default_rng([self.seed_, int.from_bytes(key, "little")])
                draws[:, start:end] = gen.binomial(c, self.fraction, size=(self.n_draws, end - start))
            start = end
        return rows, cols, draws


class KNNConsistency(_Baseline):
    """Disagreement between the prediction and the labels of the nearest clean training cells.

    The training cells' scaled input is projected on its first ``n_pcs`` principal components;
    the score of a cell is the fraction of its ``n_neighbors`` nearest training cells whose label
    (``y`` at fit, else the classifier's prediction) differs from the cell's prediction.

    Parameters
    ----------
    n_neighbors
        Neighbours of the vote.
    n_pcs
        Principal components of the space.

    Examples
    --------
    >>> det = KNNConsistency().fit(clf, X_train, y=y_train, rng=0)  # doctest: +SKIP
    """

    name = "knn"

    def __init__(self, *, n_neighbors: int = KNN_NEIGHBORS, n_pcs: int = KNN_PCS) -> None:
        super().__init__()
        if n_neighbors < 1 or n_pcs < 1:
            msg = f"n_neighbors and n_pcs must be positive, got {n_neighbors} and {n_pcs}."
            raise ValueError(msg)
        self.n_neighbors, self.n_pcs = int(n_neighbors), int(n_pcs)

    def _fit(self, X_clean: np.ndarray, X_adv: np.ndarray | None, y: np.ndarray | None, rng: RngLike) -> None:
        """PCA and neighbour index of the clean training cells, with their labels (``X_adv`` unused)."""
        from sklearn.decomposition import PCA
        from sklearn.neighbors import NearestNeighbors

        X_clean = self._check_input(X_clean)
        if len(X_clean) < self.n_neighbors:
            msg = f"KNNConsistency needs at least n_neighbors={self.n_neighbors} training cells, got {len(X_clean)}."
            raise ValueError(msg)
        n_pcs = min(self.n_pcs, *X_clean.shape)
        seed = int(_rng(rng).integers(2**31 - 1))
        self.pca_ = PCA(n_components=n_pcs, svd_solver="randomized", random_state=seed).fit(X_clean)
        self.labels_ = _class_codes(self.classifier, y, self.classifier.predict_arrays(X_clean)[0])
        self.index_ = NearestNeighbors(n_neighbors=self.n_neighbors).fit(self.pca_.transform(X_clean))

    def score(self, X: np.ndarray) -> np.ndarray:
        """Fraction of the nearest training cells whose label differs from the prediction (float64)."""
        X = self._check_input(X)
        pred = self._predicted(X)
        _, idx = self.index_.kneighbors(self.pca_.transform(X))
        return (self.labels_[idx] != pred[:, None]).mean(1).astype(np.float64)


__all__ = ["KNNConsistency", "ThinningStability"]
