"""Weak-input filtering as the classifier's first layer (the biomimetic defence of Rademaker et al.).

Immune cells ignore ligands below a threshold; Rademaker, Bengio & François ("Attack and defence
in cellular decision-making: lessons from machine learning", Phys. Rev. X 9, 031012, 2019) show
that filtering weak inputs before a network forces an attacker to make large changes. Here a
gene's value less than ``threshold`` log units above its minimum over the clean training cells
is set to that minimum (read as unexpressed), before the network sees it.

The filter reads log-expression through the classifier's own scaling (``log = x * std`` relative
to the gene's scaled minimum), as the ``'filter'`` squeezer of
:class:`~scadversarial.detection.SqueezeDetector` does, so it means the same for input given in
scaled, log or count space: every space reaches the network through the same scaled input.

Array level (no AnnData inside): :class:`WeakInputFilter` holds the user's options,
:class:`WeakInputLayer` is the torch module that :class:`~scadversarial.models.CellClassifier`
puts in front of its network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
from torch import nn

FilterUnit = Literal["umi", "log"]


@dataclass(frozen=True, kw_only=True)
class WeakInputFilter:
    """Weak-input filtering as the classifier's first layer (Rademaker et al. 2019).

    Put it on :class:`~scadversarial.tl.TrainingConfig` (``input_filter=``): the classifier is
    then trained and used with every gene value less than ``threshold`` above the gene's minimum
    over the clean training cells set to that minimum. Its backward pass is the identity
    (straight-through, BPDA of Athalye et al. 2018), so white-box attacks see the gradient of the
    unfiltered network and attack the filtered classifier at full strength: a hard threshold's
    zero gradient would otherwise make them look weaker than they are.

    Parameters
    ----------
    threshold
        How weak an input is filtered, in ``unit``; no default, as it trades clean accuracy for
        robustness. On PBMC3k (``benchmarks/results/input_filter.txt``) thresholds up to 1.5 UMI
        leave the +-1 UMI count attack as strong as against the unfiltered classifier and make the
        0.25 log-unit attack stronger (values just above the threshold fall over a cliff); 4 UMI,
        beyond the reach of a +-2 UMI change of the 1-2 UMI values that most expressed values are,
        cuts the +-1 UMI flip rate from ~0.9 to ~0.3-0.4 at a cost of 6-12 points of clean accuracy.
    unit
        ``'umi'`` (default): ``threshold`` counts in a cell of the median library size of the
        clean training cells, i.e. ``log1p(threshold * target_sum / median_library)`` log units
        (needs ``.layers['counts']`` and ``.layers['sad_lognorm']``). The classifier's input carries
        no library size (normalization removed it, and the genes outside the kept ones are not
        seen), so one log threshold at the typical depth is what a layer can apply identically
        to scaled, log and count input; in a deeper cell it filters a little more than
        ``threshold`` counts, in a shallower one a little less. ``'log'``: ``threshold`` log units
        directly (log-normalized data without counts).

    Examples
    --------
    >>> import scadversarial as sad
    >>> config = sad.tl.TrainingConfig(input_filter=sad.tl.WeakInputFilter(threshold=4.0))
    >>> sad.tl.train_classifier(adata, "seurat_cell_type", config=config)  # doctest: +SKIP

    """

    threshold: float
    unit: FilterUnit = "umi"

    def __post_init__(self) -> None:
        if self.unit not in get_args(FilterUnit):
            msg = f"WeakInputFilter.unit must be one of {get_args(FilterUnit)}, got {self.unit!r}."
            raise ValueError(msg)
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int | float):
            msg = f"WeakInputFilter.threshold must be a number (in {self.unit!r} units), got {self.threshold!r}."
            raise TypeError(msg)
        if not (math.isfinite(self.threshold) and self.threshold > 0):
            msg = (
                f"WeakInputFilter.threshold must be a positive finite number of {self.unit!r} units, got "
                f"{self.threshold!r}; e.g. WeakInputFilter(threshold=4.0) for 4 UMI at the median depth."
            )
            raise ValueError(msg)

    def log_threshold(self, *, library: float | None = None, target_sum: float | None = None) -> float:
        """The threshold in log units: ``threshold`` itself, or ``log1p(threshold * target_sum / library)`` for UMI.

        Parameters
        ----------
        library
            Median library size (total counts) of the clean training cells; needed for ``'umi'``.
        target_sum
            Library size after normalization (``sad.pp.preprocess``'s record); needed for ``'umi'``.

        Examples
        --------
        >>> round(WeakInputFilter(threshold=1.0).log_threshold(library=1e4, target_sum=1e4), 4)
        0.6931

        """
        if self.unit == "log":
            return float(self.threshold)
        if library is None or target_sum is None or not (library > 0 and target_sum > 0):
            msg = (
                "WeakInputFilter(unit='umi') needs the training cells' median library size and the normalization's "
                f"target_sum (positive), got library={library!r}, target_sum={target_sum!r}: preprocess raw counts "
                "with `sad.pp.preprocess` (it keeps .layers['counts']), or give the threshold in log units "
                "(unit='log')."
            )
            raise ValueError(msg)
        return float(np.log1p(self.threshold * target_sum / library))


def filter_weak(x: torch.Tensor, minimum: torch.Tensor, scale: torch.Tensor, threshold: float) -> torch.Tensor:
    """Scaled ``x`` with every value less than ``threshold`` log units above the gene's ``minimum`` set to it.

    ``scale`` is the log units per scaled unit (the transform's ``std``). Exact where nothing is
    filtered: values at or above the threshold come back bit-identical. Shared by
    :class:`WeakInputLayer` and the ``'filter'`` squeezer of :class:`~scadversarial.detection.SqueezeDetector`.

    Examples
    --------
    >>> filter_weak(torch.tensor([[0.3, 0.7]]), torch.zeros(2), torch.ones(2), 0.5).tolist()
    [[0.0, 0.699999988079071]]
    """
    return torch.where((x - minimum) * scale < threshold, minimum, x)


class WeakInputLayer(nn.Module):
    """The filter on scaled input: values less than ``threshold`` log units above the gene's minimum are set to it.

    Two buffers, saved with the model and set by :meth:`set` from the clean training cells:
    ``minimum``, each gene's smallest *scaled* value, and ``scale``, the log units per scaled unit
    (the classifier transform's ``std``). Values at or above the threshold come back
    bit-identical. The backward pass is the identity
    (:func:`~scadversarial.detection.straight_through`, as the squeezers of the ``'squeeze'`` baseline).

    Parameters
    ----------
    n_genes
        Number of input genes.
    threshold
        Threshold in log units above the gene's minimum (positive).

    Examples
    --------
    >>> layer = WeakInputLayer(2, threshold=0.5)
    >>> layer.set(np.zeros(2), np.ones(2))
    >>> layer(torch.tensor([[0.3, 0.7]])).tolist()
    [[0.0, 0.699999988079071]]

    """

    def __init__(self, n_genes: int, threshold: float) -> None:
        super().__init__()
        threshold = float(threshold)
        if not (math.isfinite(threshold) and threshold > 0):
            msg = f"The weak-input filter's threshold must be positive finite log units, got {threshold!r}."
            raise ValueError(msg)
        self.threshold = threshold
        # NaN until fitted: an unfitted filter refuses to run rather than silently filter nothing
        self.register_buffer("minimum", torch.full((int(n_genes),), float("nan")))
        self.register_buffer("scale", torch.full((int(n_genes),), float("nan")))
        self._fitted = False
        self.register_load_state_dict_post_hook(_loaded)

    def set(self, minimum: np.ndarray, scale: np.ndarray) -> None:
        """Set each gene's minimum scaled value over the clean training cells and its log units per scaled unit."""
        n = self.minimum.shape[0]
        minimum = np.asarray(minimum, dtype=np.float64).ravel()
        scale = np.asarray(scale, dtype=np.float64).ravel()
        if minimum.shape != (n,) or scale.shape != (n,) or not (np.isfinite(minimum).all() and (scale > 0).all()):
            msg = (
                f"The filter needs {n} finite minima and {n} positive finite scales, one per gene; got shapes "
                f"{minimum.shape} and {scale.shape}."
            )
            raise ValueError(msg)
        self.minimum.copy_(torch.as_tensor(minimum, dtype=self.minimum.dtype))
        self.scale.copy_(torch.as_tensor(scale, dtype=self.scale.dtype))
        self._fitted = bool(torch.isfinite(self.scale).all())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled input ``x`` with its weak values set to the gene's minimum (backward: the identity)."""
        if not self._fitted:
            msg = (
                "The classifier's weak-input filter is not fitted: train the classifier with "
                "`sad.tl.train_classifier(..., config=sad.tl.TrainingConfig(input_filter=sad.tl.WeakInputFilter(threshold=4.0)))`, "
                "or call `classifier.input_filter.set(minimum, std)` with the clean training cells' scaled minimum."
            )
            raise RuntimeError(msg)
        # imported here: ``detection`` imports ``models.training`` and so this module's classifier at load time
        from ..detection._features import straight_through

        return straight_through(filter_weak(x, self.minimum.to(x.dtype), self.scale.to(x.dtype), self.threshold), x)

    def extra_repr(self) -> str:
        return f"n_genes={self.minimum.shape[0]}, threshold={self.threshold:.4g}"


def _loaded(module: WeakInputLayer, _incompatible) -> None:
    """A state dict loaded into the layer carries its minimum: the layer is fitted."""
    module._fitted = bool(torch.isfinite(module.minimum).all() and torch.isfinite(module.scale).all())


__all__ = ["FilterUnit", "WeakInputFilter", "WeakInputLayer", "filter_weak"]
