"""Array-level attack algorithms (no AnnData inside)."""
