"""Helpers shared by the benchmarks: one-core pinning and a printed results table."""

from __future__ import annotations

import os


def pin_one_core() -> None:
    """Restrict BLAS/OpenMP pools and this process to one CPU core (targets are per core)."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def print_table(title: str, rows: list[tuple[str, str, str]]) -> None:
    """Print ``(measure, value, target)`` rows under a title."""
    width = max(len(r[0]) for r in rows)
    print(f"\n== {title}")
    for measure, value, target in rows:
        print(f"  {measure:<{width}}  {value:>12}   {target}")
