"""Realistic synthetic multi-sequence spinal-cord cohorts with exact ground truth."""

from cordfuse.synth.cohort import SyntheticSubject, generate_subject, write_cohort

__all__ = ["SyntheticSubject", "generate_subject", "write_cohort"]
