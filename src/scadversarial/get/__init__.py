"""Read results back from an AnnData: models, run records and tables (``sad.get``).

Every :mod:`scadversarial.tl` function writes its results into the AnnData and returns ``None`` (or
the modified copy with ``copy=True``), as scanpy does; these accessors turn the records in
``.uns['sad']`` back into models and :class:`pandas.DataFrame` objects.
"""

from __future__ import annotations

from ._get import attack_record, attack_table, benchmark_table, evaluation_table, model, record

__all__ = ["attack_record", "attack_table", "benchmark_table", "evaluation_table", "model", "record"]
