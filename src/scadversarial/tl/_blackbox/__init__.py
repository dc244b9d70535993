"""Model-agnostic gene-modification attacks (the adverSCarial attack modes) on AnnData.

Every attack takes any classifier (``classifier=``: ``None`` for the package's trained classifier, a torch module
returning logits, an estimator with ``predict_proba``, a callable ``X -> probabilities``, or a
:class:`ClassifierSpec` naming its classes, genes, output and batch size), a modification (a name, a callable or a
:class:`Modification`) and one options object of its mode. A cluster's call is the most frequent per-cell type
(ties to the class listed first), its score the fraction of its cells with that type; a flip is a change of the
call from the call on the unmodified matrix. Attacks modify only the target cluster's cells, each candidate
starting from the original matrix. Results go to ``.uns['sad']['attacks'][key_added]`` (one writer,
:mod:`._record`); read them with :func:`scadversarial.get.attack_table`.

One module per mode; :mod:`._setup` checks the inputs and wraps the classifier, :mod:`._options` holds the option
objects and checks their ``Literal`` fields.
"""

from __future__ import annotations

from ...attacks._protocol import ClassifierSpec
from ._cgd import cgd_attack, sign_genes
from ._grid import grid_attack
from ._max_change import max_change_attack
from ._options import (
    CGDOptions,
    GridOptions,
    MaxChangeOptions,
    Modification,
    OverviewOptions,
    RandomWalkOptions,
    SingleGeneOptions,
)
from ._overview import attack_overview
from ._random_walk import random_walk_attack
from ._setup import _aligned_matrix  # (used by sad.tl.attack's score-based path)
from ._single_gene import single_gene_attack

__all__ = [
    "CGDOptions",
    "ClassifierSpec",
    "GridOptions",
    "MaxChangeOptions",
    "Modification",
    "OverviewOptions",
    "RandomWalkOptions",
    "SingleGeneOptions",
    "attack_overview",
    "cgd_attack",
    "grid_attack",
    "max_change_attack",
    "random_walk_attack",
    "sign_genes",
    "single_gene_attack",
]
