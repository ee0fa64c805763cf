"""Helpers shared by the benchmarks: one-core pinning and a printed results table."""

from __future__ import annotations

import os


def pin_one_core() -> None:
    """Restrict BLAS/OpenMP/ITK pools and this process to one CPU core (targets are per core)."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def print_table(title: str, rows: list[tuple[str, str, str]]) -> None:
    """Print ``(measure, value, target)`` rows under a title."""
    width = max(len(r[0]) for r in rows)
    print(f"\n== {title}")
    for measure, value, target in rows:
        print(f"  {measure:<{width}}  {value:>12}   {target}")


def register_full_cohort() -> str:
    """A synthetic cohort profile in which every subject has all six sequences and two T2Sag
    slabs (the worst case the speed targets are stated for); returns its name."""
    from cordfuse.synth.protocol import COHORTS, CohortProfile

    every = {k: 1.0 for k in ("T2Sag_lower", "STIR", "T2starAx", "T2Ax", "T1Sag", "MP2RAGE")}
    COHORTS["full"] = CohortProfile("full", every, 1000.0, 1.0, 0.03, 1.0)
    return "full"


def write_full_subject(root):
    """Write the worst-case synthetic subject (all six sequences, two T2Sag slabs; seed 0,
    subject 1) as BIDS under ``root`` and return it as discovered."""
    from cordfuse.dataset import discover
    from cordfuse.synth.cohort import generate_subject, write_subject

    write_subject(generate_subject(0, 1, register_full_cohort()), root, 0)
    return discover(root).subjects[0]


def network_batch(config, device, foreground: float = 0.01):
    """A random training batch for ``config``'s network: the images of every sequence, then
    their coverage masks (all covered) when the network reads them; labels; availability.

    Args:
        config: A ``TrainConfig``.
        device: Where the tensors go.
        foreground: Share of lesion voxels in the labels.

    Returns:
        ``(x, labels, available)``.
    """
    import torch

    k = len(config.model_sequences)
    shape = (config.batch_size, k, *config.net.patch_size)
    x = torch.randn(*shape, device=device)
    if config.net.coverage_input:
        x = torch.cat([x, torch.ones(*shape, device=device)], dim=1)
    labels = (
        torch.rand(config.batch_size, *config.net.patch_size, device=device) < foreground
    ).long()
    return x, labels, torch.ones(config.batch_size, k, dtype=torch.bool, device=device)
