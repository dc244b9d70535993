"""The docstring fragments of the black-box attacks, filled in by one decorator (:func:`fill_docs`)."""

from __future__ import annotations

from ... import _docs

#: Fills every ``{doc_...}`` placeholder with the fragment of that name in :mod:`scadversarial._docs` (fragments
#: a docstring does not use are ignored).
fill_docs = _docs.doc_params(
    **{name: text for name, text in vars(_docs).items() if name.startswith("doc_") and isinstance(text, str)}
)
