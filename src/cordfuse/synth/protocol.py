"""Clinical protocols of the synthetic cohorts: contrast per sequence, geometry, availability.

The numbers follow common clinical spinal-cord protocols (MAGNIMS-CMSC-NAIMS 2021): sagittal
T2/STIR/T1 with ~3 mm slices and sub-millimetre pixels, axial T2*/T2 with 4-5 mm slices restricted
to the cervical cord, MP2RAGE ~1 mm isotropic. Cohorts differ in which sequences they acquire and
in scanner behaviour (gain, contrast curve, noise, resolution), like the paper's test cohorts.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from cordfuse.sequences import SEQUENCES

TISSUES = ("csf", "wm", "gm", "lesion", "body", "disc", "posterior", "muscle", "fat", "air")

#: Relative signal of each tissue per sequence (before scanner gain and contrast curve).
CONTRASTS: dict[str, dict[str, float]] = {
    "T2Sag": dict(
        csf=1.00,
        wm=0.40,
        gm=0.47,
        lesion=0.80,
        body=0.38,
        disc=0.62,
        posterior=0.28,
        muscle=0.25,
        fat=0.65,
        air=0.02,
    ),
    "STIR": dict(
        csf=1.00,
        wm=0.34,
        gm=0.41,
        lesion=0.85,
        body=0.16,
        disc=0.55,
        posterior=0.12,
        muscle=0.22,
        fat=0.06,
        air=0.02,
    ),
    "T2starAx": dict(
        csf=0.95,
        wm=0.34,
        gm=0.60,
        lesion=0.78,
        body=0.24,
        disc=0.48,
        posterior=0.15,
        muscle=0.30,
        fat=0.45,
        air=0.02,
    ),
    "T2Ax": dict(
        csf=1.00,
        wm=0.40,
        gm=0.46,
        lesion=0.78,
        body=0.38,
        disc=0.60,
        posterior=0.28,
        muscle=0.25,
        fat=0.70,
        air=0.02,
    ),
    "T1Sag": dict(
        csf=0.15,
        wm=0.62,
        gm=0.55,
        lesion=0.38,
        body=0.72,
        disc=0.45,
        posterior=0.55,
        muscle=0.40,
        fat=0.95,
        air=0.02,
    ),
    "MP2RAGE": dict(
        csf=0.12,
        wm=0.80,
        gm=0.62,
        lesion=0.45,
        body=0.55,
        disc=0.45,
        posterior=0.40,
        muscle=0.50,
        fat=0.85,
        air=0.05,
    ),
}

#: Sign of lesion contrast relative to normal-appearing cord: +1 hyperintense, -1 hypointense.
LESION_SIGN = {seq: int(np.sign(c["lesion"] - c["wm"])) for seq, c in CONTRASTS.items()}


@dataclass(frozen=True)
class SequenceProtocol:
    """Geometry of one sequence: storage orientation, pixel size, slice thickness, FOV (mm)."""

    axcodes: tuple[str, str, str]
    inplane: float  # pixel size in the two in-plane axes
    thickness: float  # spacing of the third (slice) axis
    fov_inplane: tuple[float, float]  # extent of the first two voxel axes
    slices: int | None = None  # number of slices for sagittal/iso slabs (LR coverage)


PROTOCOLS: dict[str, SequenceProtocol] = {
    # Sagittal: voxel axes (A->P, S->I, L->R) stored as PIR; 3 mm sagittal slices.
    "T2Sag": SequenceProtocol(("P", "I", "R"), 0.75, 3.0, (100.0, 0.0), slices=15),
    "STIR": SequenceProtocol(("P", "I", "R"), 0.9, 3.0, (100.0, 0.0), slices=13),
    "T1Sag": SequenceProtocol(("P", "I", "R"), 0.9, 3.0, (100.0, 0.0), slices=13),
    # Axial: stored LAS (as dcm2niix writes them), thick axial slices, small FOV around the cord.
    "T2starAx": SequenceProtocol(("L", "A", "S"), 0.6, 5.0, (64.0, 64.0)),
    "T2Ax": SequenceProtocol(("L", "A", "S"), 0.7, 4.0, (80.0, 80.0)),
    # MP2RAGE: 3D sagittal, 1 mm isotropic, stored ASR.
    "MP2RAGE": SequenceProtocol(("A", "S", "R"), 1.0, 1.0, (80.0, 0.0), slices=48),
}


@dataclass(frozen=True)
class CohortProfile:
    """Which sequences a cohort acquires and how its scanners behave.

    ``availability`` gives the probability of each optional acquisition; ``T2Sag_lower`` is the
    optional lower T2Sag slab. ``gain`` scales intensities, ``gamma`` bends the contrast curve,
    ``noise`` is the Rician sigma relative to CSF, ``resolution`` scales every pixel size.
    """

    name: str
    availability: dict[str, float]
    gain: float
    gamma: float
    noise: float
    resolution: float
    lesion_rate: float = 1.0
    extra: dict[str, float] = field(default_factory=dict)


COHORTS: dict[str, CohortProfile] = {
    "A": CohortProfile(
        "A",
        dict(T2Sag_lower=0.5, STIR=0.7, T2starAx=0.5, T2Ax=0.45, T1Sag=0.25, MP2RAGE=0.3),
        gain=1000.0,
        gamma=1.0,
        noise=0.025,
        resolution=1.0,
    ),
    "B": CohortProfile(
        "B",
        dict(T2Sag_lower=0.7, STIR=0.85, T2starAx=0.2, T2Ax=0.1, T1Sag=0.15, MP2RAGE=0.05),
        gain=1400.0,
        gamma=0.9,
        noise=0.04,
        resolution=1.12,
    ),
    "C": CohortProfile(
        "C",
        dict(T2Sag_lower=0.3, STIR=0.15, T2starAx=0.8, T2Ax=0.25, T1Sag=0.75, MP2RAGE=0.1),
        gain=700.0,
        gamma=1.12,
        noise=0.03,
        resolution=1.05,
    ),
}


def cohort_profile(name: str) -> CohortProfile:
    """The profile of a named cohort; unknown names get a profile derived from the name.

    Args:
        name: The cohort's name (``A``, ``B`` and ``C`` are built in).

    Returns:
        The profile; the same name always gives the same profile.

    Example:
        >>> cohort_profile("X") == cohort_profile("X"), cohort_profile("A").name
        (True, 'A')
    """
    if name in COHORTS:
        return COHORTS[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    availability = {key: float(rng.uniform(0.1, 0.8)) for key in ("T2Sag_lower", *SEQUENCES[1:])}
    return CohortProfile(
        name,
        availability,
        gain=float(rng.uniform(600, 1600)),
        gamma=float(rng.uniform(0.9, 1.12)),
        noise=float(rng.uniform(0.02, 0.045)),
        resolution=float(rng.uniform(1.0, 1.12)),
    )
