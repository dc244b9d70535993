"""Docstring fragments of the white-box AnnData layer (filled in with :func:`scadversarial._docs.doc_params`)."""

from __future__ import annotations

#: the set-up of every example that needs a trained classifier: pbmc68k_reduced, four pseudo-label
#: clusters, a split and a few epochs (seconds on a CPU)
doc_example_classifier = """\
>>> import scadversarial as sad
>>> adata = sad.datasets.pbmc68k_reduced()
>>> sad.pp.preprocess(adata)
>>> sad.pp.pseudo_labels(adata, n_clusters=4)
>>> sad.pp.split(adata)
>>> sad.tl.train_classifier(adata, max_epochs=5)
>>> clf = sad.get.model(adata)"""

__all__ = ["doc_example_classifier"]
