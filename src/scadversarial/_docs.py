"""Shared docstring fragments (scanpy's ``_doc_params`` pattern).

A public function whose parameters recur elsewhere writes ``{doc_name}`` placeholders in its
docstring, at the indentation of the parameter list, and is decorated with
``@doc_params(doc_name=doc_name, ...)``: the docstring is dedented and the fragments filled in, so
``help()`` and Sphinx show every parameter in full, never "as in ...". Each fragment starts with the
parameter's name at column 0 and indents its description by 4 spaces, as numpydoc does once a
docstring is dedented. Literal braces in a decorated docstring must be doubled (``{{`` ``}}``).

Other modules may append fragments at the end of this file; change a fragment only together with
every docstring that uses it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["doc_params"]


def doc_params(**fragments: str) -> Callable:
    """Fill the ``{name}`` placeholders of the decorated object's docstring with ``fragments``.

    A placeholder stands at the indentation of the docstring's body; the fragment's later lines get
    that indentation too, so the result reads as if written out. The original docstring is kept as
    ``__orig_doc__``.
    """

    def decorate(obj: Callable) -> Callable:
        doc = obj.__doc__ or ""
        body = doc[doc.find("\n") + 1 :] if "\n" in doc else ""
        # the first line is unindented: the body's indentation is the smallest after it
        indent = min((len(m.group(1)) for m in re.finditer(r"^( *)\S", body, re.MULTILINE)), default=0)
        pad = " " * indent
        filled = {k: re.sub(r"\n(?=[^\n])", "\n" + pad, v) for k, v in fragments.items()}
        obj.__orig_doc__ = doc
        obj.__doc__ = doc.format_map(filled)
        return obj

    return decorate


# ----------------------------------------------------------------------------------------------
# general
# ----------------------------------------------------------------------------------------------
doc_adata = """\
adata
    Annotated data matrix (cells x genes)."""

doc_copy = """\
copy
    Work on a copy of ``adata`` and return it, leaving ``adata`` unchanged (default: write into
    ``adata`` and return ``None``)."""

doc_device = """\
device
    Torch device (default ``sad.settings.device``)."""

doc_random_state = """\
random_state
    Seed (an int) or :class:`numpy.random.Generator`; converted locally, never seeding global
    state, and recorded in ``params``."""

doc_returns_copy = """\
``None``, or the modified copy of ``adata`` when ``copy=True``."""

# ----------------------------------------------------------------------------------------------
# black-box gene-modification attacks (sad.tl.single_gene_attack and its siblings)
# ----------------------------------------------------------------------------------------------
doc_groupby = """\
groupby
    ``.obs`` column with the clusters (every cell must have one)."""

doc_target = """\
target
    The cluster to attack (a value of ``adata.obs[groupby]``)."""

doc_classifier_blackbox = """\
classifier
    The classifier to attack; only its per-cell class scores are read. One of

    - ``None``: the classifier trained by :func:`~scadversarial.tl.train_classifier`
      (:func:`~scadversarial.get.model`);
    - a torch module returning logits (its ``classes`` attribute names the classes);
    - a CellTypist ``Model`` (fed log1p-normalized values: pass that layer);
    - an estimator with ``predict_proba`` (a scikit-learn ``Pipeline`` included);
    - a callable ``X -> probabilities`` (cells x classes);
    - a :class:`~scadversarial.tl.ClassifierSpec` wrapping one of those, which names its
      ``classes`` (needed for a callable or a module without ``classes``), the ``genes`` it reads,
      its ``output`` (``'proba'``, or ``'logits'``: decision values, which do not tie when
      probabilities underflow) and the torch ``batch_size`` (rows per forward pass).

    A classifier that declares its genes (``ClassifierSpec(genes=...)``, ``var_names``,
    ``features``, ``feature_names_in_``) gets exactly those columns of ``adata``, by name; a
    missing gene is a :class:`KeyError` naming it. A cluster's call is the most frequent per-cell
    type (ties to the class listed first), its score the fraction of its cells with that type.
    Cells whose top scores tie are counted (``metrics['n_tied_rows']``) and warned about
    (:class:`~scadversarial.attacks._protocol.TiedScoresWarning`)."""

doc_layer_blackbox = """\
layer
    Matrix to attack: a key of ``.layers`` (default ``X``), in the space the classifier reads.
    With a sad classifier and ``layer='sad_lognorm'``, the classifier scales the log-normalized
    values itself."""

doc_modification = """\
modification
    How a gene is modified: ``'perc1'``, ``'perc99'``, ``'decile+N'`` / ``'decile-N'``,
    ``'random'``, ``'positive_aberrant'``, ``'negative_aberrant'``, ``'fixed'``, a callable
    ``fn(x_target, x_all)`` (see :mod:`scadversarial.attacks.modifications`), or a
    :class:`~scadversarial.tl.Modification` giving the name and its value (the value of
    ``'fixed'``, default 3; the factor of the gene's max of the aberrant ones, default 1e4).
    ``'random'`` values are drawn once per call from the search's ``random_state``, so the same
    gene always gets the same random values."""

doc_modifications = """\
modifications
    The modifications a gene can take, each a name (``'perc1'``, ``'perc99'``, ``'decile+N'`` /
    ``'decile-N'``, ``'random'``, ``'positive_aberrant'``, ``'negative_aberrant'``, ``'fixed'``), a
    callable ``fn(x_target, x_all)`` (see :mod:`scadversarial.attacks.modifications`) or a
    :class:`~scadversarial.tl.Modification` giving the name and its value (the value of
    ``'fixed'``, default 3; the factor of the gene's max of the aberrant ones, default 1e4)."""

doc_genes_search = """\
genes
    Restrict the search to these genes, in this order (default: all the classifier's genes; a
    name not among them is a :class:`KeyError`)."""

doc_key_added_blackbox = """\
key_added
    Key of the record in ``.uns['sad']['attacks']``; ``'/'`` is replaced by ``'_'``. Read it back
    with :func:`~scadversarial.get.attack_table` and :func:`~scadversarial.get.attack_record`."""

doc_method = """\
method
    ``'fast'`` (stacked classifier calls and, for a linear classifier, logits updated from the
    modified genes alone) or ``'plain'`` (one classifier call per question, the reference). Both
    return exactly the same result for a classifier whose output for a cell does not depend on the
    other cells in the call. BLAS-backed models (torch, scikit-learn) round a row by its place in a
    block, so a cell within a few float ulps of a tie can get another call between the two."""

doc_exclude_genes = """\
exclude_genes
    Genes never modified."""

doc_change_type = """\
change_type
    ``'any'``, or ``'not_na'`` to ignore flips to the class(es) ``na_class`` (an abstaining
    classifier).
na_class
    Name(s) of the "no call" class."""

doc_batch_bytes = """\
batch_bytes
    Largest stacked classifier call, in bytes of input (the memory cap of ``method='fast'``)."""

doc_blackbox_record = """\
Every run writes ``.uns['sad']['attacks'][key_added]``: ``kind='blackbox'``, ``mode``,
``params`` (every argument of the call: the classifier's kind and ``output``, the modification,
the search options), ``metrics`` (``orig_call``, ``orig_score``, ``n_calls``, ``n_rows`` and
``n_tied_rows`` of the classifier, ``seconds`` and ``setup_seconds``, the part of ``seconds``
spent on the modified values and the unmodified call, and the mode's own figures) and ``table``
(the result table's columns as arrays, read back with :func:`~scadversarial.get.attack_table`)."""

# ----------------------------------------------------------------------------------------------
# the searches of sad.attacks (on a ClusterOracle)
# ----------------------------------------------------------------------------------------------
doc_oracle_values = """\
oracle
    The cluster and its modified values (one matrix per modification, ``oracle.Vs``)."""

# the parameters every engine of a ClusterOracle is made with
doc_engine_params = """\
proba_fn
    ``proba_fn(X) -> (n_cells, n_classes)`` probabilities.
cells
    The target cells and their modified values.
n_classes
    Number of classes."""

doc_example_pbmc3k = """\
>>> import scadversarial as sad
>>> adata = sad.datasets.pbmc3k("pbmc3k.h5ad")  # doctest: +SKIP
>>> sad.pp.preprocess(adata)  # doctest: +SKIP
>>> sad.pp.split(adata, "seurat_cell_type")  # doctest: +SKIP"""
