"""Datasets: the embedded offline default, PBMC3k with Seurat labels, and a synthetic toy set."""

from ._datasets import pbmc3k, pbmc68k_reduced, toy

__all__ = ["pbmc68k_reduced", "pbmc3k", "toy"]
