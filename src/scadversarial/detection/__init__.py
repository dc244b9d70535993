"""Array-level meta-features, triplet training, detector and calibration (no AnnData inside)."""
