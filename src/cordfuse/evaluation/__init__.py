"""Evaluation (no torch): Anima-compatible lesion metrics, statistics, tables."""
