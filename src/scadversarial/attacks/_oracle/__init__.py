"""Classify modified copies of one cluster's cells, one at a time (reference) or stacked (fast).

Every black-box search asks the same question many times: *if these genes of the target cells take
their modified values, what is the cluster's call?* :class:`ClusterOracle` answers it. The cluster's
call is the most frequent per-cell type (per-cell type = first argmax of the probabilities; ties
between types go to the class listed first), its score the fraction of the cluster's cells of
that type. The classifier only sees the target cells: black-box classifiers are per-cell (a cell's
probabilities depend on its own expression), so the other cells cannot change the cluster's call.

The oracle answers through four engines, one module each, behind one interface
(:class:`~._engine.Engine`: ``type_rows(jobs) -> RowTypes``, the per-class counts of the rows typed
exactly and the rows left to the classifier):

- :mod:`._reference`: one classifier call on the whole modified cluster per candidate
  (:meth:`ClusterOracle.evaluate_one`, what ``method='plain'`` does);
- :mod:`._stacked`: the changed rows of many candidates stacked into few calls of at most
  ``batch_bytes`` bytes (a cell whose row a candidate does not change keeps its original type);
- :mod:`._linear`: for a linear classifier, a candidate's logits from the unmodified logits plus the
  modified genes' change, a cell's type taken from them only outside a bound on the rounding error;
- :mod:`._incremental`: the same for one gene set grown step by step (max-change), with a per-class bound.

:meth:`ClusterOracle.evaluate_many` types what it can with the linear engine (or a first stacked pass
of just enough cells for the original type to reach a majority), then classifies the rest only for the
candidates whose call or score depends on them, so every answer is that of :meth:`evaluate_one`. The
exactness constants and their derivations are in :mod:`._bounds`.
"""

from ._cluster import ClusterOracle
from ._counts import cluster_call, decided, one_blas_thread
from ._engine import CellValues, Engine, RowTypes
from ._incremental import CertifiedSet

__all__ = [
    "CellValues",
    "CertifiedSet",
    "ClusterOracle",
    "Engine",
    "RowTypes",
    "cluster_call",
    "decided",
    "one_blas_thread",
]
