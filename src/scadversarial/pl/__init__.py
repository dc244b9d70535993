"""Plots of classifier, attack and detector results (``sad.pl``)."""
