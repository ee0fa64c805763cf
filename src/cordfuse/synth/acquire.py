"""Acquire a scan of a synthetic anatomy: geometry, partial volume, motion, bias, noise.

Each voxel integrates the continuous anatomy over its own box: the thick slice axis is split into
sub-slices (``ceil(thickness / 0.75 mm)`` samples where the spinal canal passes), and within each
sub-slice the analytic edge ramp of :func:`cordfuse.synth.anatomy.tissue_fractions` integrates
over the in-plane pixel. Ground-truth masks are the same integrals thresholded at 0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from cordfuse.synth.anatomy import Anatomy, Fractions, tissue_fractions

_AXIS_VECTORS = {
    "R": (1, 0, 0),
    "L": (-1, 0, 0),
    "A": (0, 1, 0),
    "P": (0, -1, 0),
    "S": (0, 0, 1),
    "I": (0, 0, -1),
}
SUBSLICE_MM = 0.75


def rotation_matrix(angles_deg) -> np.ndarray:
    """Rotation about x, then y, then z (degrees).

    Args:
        angles_deg: The three angles, in degrees.

    Returns:
        The 3x3 rotation matrix.

    Example:
        >>> (rotation_matrix([0, 0, 90]) @ [1.0, 0.0, 0.0]).round(6).tolist()
        [0.0, 1.0, 0.0]
    """
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def build_affine(axcodes, spacing, shape, center, rotation=None) -> np.ndarray:
    """Voxel-to-world affine whose grid is centred on ``center`` (world mm).

    ``axcodes`` give the direction each voxel axis points before the oblique ``rotation``.

    Args:
        axcodes: One letter per voxel axis (``R``, ``L``, ``A``, ``P``, ``S``, ``I``).
        spacing: The voxel size along each axis, in mm.
        shape: The grid's shape.
        center: The world position (mm) of the grid's centre.
        rotation: A 3x3 rotation of the whole grid (an oblique acquisition), or None.

    Returns:
        The 4x4 affine.

    Example:
        >>> affine = build_affine(("P", "I", "R"), (1.0, 1.0, 3.0), (3, 3, 3), (0.0, 0.0, 0.0))
        >>> affine[:3, 3].tolist()   # voxel (0, 0, 0): anterior, superior, left of the centre
        [-3.0, 1.0, 1.0]
    """
    directions = np.array([_AXIS_VECTORS[c] for c in axcodes], dtype=float).T
    if rotation is not None:
        directions = rotation @ directions
    linear = directions * np.asarray(spacing, dtype=float)
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = np.asarray(center, float) - linear @ ((np.asarray(shape, float) - 1) / 2)
    return affine


@dataclass(frozen=True)
class Displacement:
    """Smooth in-plane displacement of the anatomy seen by one sequence (mm), a function of z."""

    amplitude: tuple[float, float]
    wavelength: tuple[float, float]
    phase: tuple[float, float]

    def __call__(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dx = self.amplitude[0] * np.sin(2 * np.pi * z / self.wavelength[0] + self.phase[0])
        dy = self.amplitude[1] * np.sin(2 * np.pi * z / self.wavelength[1] + self.phase[1])
        return dx, dy


class Appearance(Protocol):
    """How a scan looks, replacing the fixed tissue table and scanner (``synth --randomise``)."""

    def compose(
        self, f: Fractions, x: np.ndarray, y: np.ndarray, z: np.ndarray, anatomy: Anatomy
    ) -> tuple[np.ndarray, np.ndarray]:
        """The signal of boxes and their lesion truth.

        Args:
            f: The boxes' structure fractions.
            x: Their x centres (anatomy mm).
            y: Their y centres.
            z: Their z centres.
            anatomy: The anatomy.

        Returns:
            The signal, and the union of the lesion fractions (the truth, as :func:`acquire`'s).
        """
        ...

    def finish(self, image: np.ndarray, affine: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The scanner's part: from the noise-free signal to the stored image.

        Args:
            image: The noise-free signal on the scan's grid.
            affine: The scan's affine.
            rng: Draws the noise.

        Returns:
            The stored int16 image.
        """
        ...


@dataclass
class Acquired:
    """One acquired scan: stored image, its affine, and the exact partial-volume truth."""

    image: np.ndarray  # int16 scanner intensities
    affine: np.ndarray
    cord_fraction: np.ndarray  # float32 in [0, 1]
    lesion_fraction: np.ndarray  # float32 in [0, 1], always <= cord_fraction

    @property
    def cord_mask(self) -> np.ndarray:
        """The cord's ground truth: voxels more than half cord, uint8."""
        return (self.cord_fraction > 0.5).astype(np.uint8)

    @property
    def lesion_mask(self) -> np.ndarray:
        """The lesions' ground truth: voxels more than half lesion, uint8."""
        return (self.lesion_fraction > 0.5).astype(np.uint8)


def acquire(
    anatomy: Anatomy,
    affine: np.ndarray,
    shape: tuple[int, int, int],
    contrast: dict[str, float],
    *,
    sequence: str,
    motion: np.ndarray,
    displacement: Displacement,
    scanner: dict[str, float],
    rng: np.random.Generator,
    appearance: Appearance | None = None,
) -> Acquired:
    """Image the anatomy on the grid ``(affine, shape)``.

    ``motion`` (4x4) maps scanner world coordinates to anatomy coordinates (the subject's pose
    during this acquisition); ``displacement`` is the additional smooth cord displacement of this
    sequence. ``scanner`` holds ``gain``, ``gamma``, ``noise`` and ``bias`` (5 coefficients).

    Args:
        anatomy: The subject's anatomy.
        affine: The scan's voxel-to-world affine.
        shape: The scan's shape.
        contrast: Each structure's intensity on this sequence.
        sequence: The sequence's name (gives each lesion's visibility).
        motion: Scanner world -> anatomy (4x4).
        displacement: This sequence's smooth in-plane cord displacement.
        scanner: ``gain``, ``gamma``, ``noise`` and ``bias``.
        rng: Draws the noise.
        appearance: Replaces ``contrast`` and ``scanner`` (a randomised scan); the partial
            volume, hence the truth, stays the same.

    Returns:
        The stored image and its exact partial-volume cord and lesion fractions.
    """
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    slice_axis = int(np.argmax(spacing))
    in_axes = [ax for ax in range(3) if ax != slice_axis]
    n_sub_near = max(1, math.ceil(spacing[slice_axis] / SUBSLICE_MM - 1e-6))
    if spacing[slice_axis] <= 1.5 * spacing[in_axes].max():
        n_sub_near = 1  # isotropic: the in-plane ramp already integrates the voxel

    pose = motion @ affine  # voxel -> anatomy coordinates
    lin, offset = pose[:3, :3].astype(np.float32), pose[:3, 3].astype(np.float32)
    ii, jj = np.meshgrid(np.arange(shape[in_axes[0]]), np.arange(shape[in_axes[1]]), indexing="ij")
    plane = np.outer(ii.ravel(), lin[:, in_axes[0]]) + np.outer(jj.ravel(), lin[:, in_axes[1]])
    plane = (plane + offset).astype(np.float32)
    step = lin[:, slice_axis]

    image = np.empty(shape, np.float32)
    cord = np.empty(shape, np.float32)
    lesion = np.empty(shape, np.float32)
    plane_shape = (shape[in_axes[0]], shape[in_axes[1]])
    for k in range(shape[slice_axis]):
        n_sub = n_sub_near if _near_canal(anatomy, plane + k * step, displacement) else 1
        edges = [lin[:, in_axes[0]], lin[:, in_axes[1]], step / n_sub]
        acc_i = np.zeros(plane.shape[0], np.float32)
        acc_c = np.zeros_like(acc_i)
        acc_l = np.zeros_like(acc_i)
        for s in range(n_sub):
            pts = plane + (k + (s + 0.5) / n_sub - 0.5) * step
            dx, dy = displacement(pts[:, 2])
            x, y = pts[:, 0] - dx, pts[:, 1] - dy
            f = tissue_fractions(anatomy, x, y, pts[:, 2], edges)
            if appearance is None:
                value, lesion_union = _compose(f, contrast, anatomy, sequence)
            else:
                value, lesion_union = appearance.compose(f, x, y, pts[:, 2], anatomy)
            acc_i += value
            acc_c += f.cord
            acc_l += lesion_union
        index: list[slice | int] = [slice(None)] * 3
        index[slice_axis] = k
        image[tuple(index)] = (acc_i / n_sub).reshape(plane_shape)
        cord[tuple(index)] = (acc_c / n_sub).reshape(plane_shape)
        lesion[tuple(index)] = (acc_l / n_sub).reshape(plane_shape)

    if appearance is None:
        stored = _scanner(image, affine, shape, scanner, rng)
    else:
        stored = appearance.finish(image, affine, rng)
    return Acquired(stored, affine, cord, np.minimum(lesion, cord))


def _near_canal(anatomy: Anatomy, pts: np.ndarray, displacement: Displacement) -> bool:
    t = anatomy.tables
    idx = anatomy.lookup(pts[:, 2])
    dx, dy = displacement(pts[:, 2])
    u = np.abs(pts[:, 0] - dx - t["cx"][idx]) - t["canal_a"][idx]
    v = np.abs(pts[:, 1] - dy - t["cy"][idx] - t["canal_dy"][idx]) - t["canal_b"][idx]
    return bool(((u < 4.0) & (v < 4.0)).any())


def _compose(f, contrast, anatomy: Anatomy, sequence: str):
    c = contrast

    def lerp(base, value, frac):
        return base + frac * (value - base)

    value = c["muscle"] * f.texture
    value = lerp(value, c["fat"], f.fat)
    value = lerp(value, c["air"], f.airway)
    value = lerp(value, c["body"], f.body)
    value = lerp(value, c["disc"], f.disc)
    value = lerp(value, c["posterior"], f.posterior)
    value = lerp(value, c["csf"], f.canal)
    value = lerp(value, c["wm"], f.cord)
    value = lerp(value, c["gm"], f.gm)
    union = np.zeros_like(value)
    for i, frac in f.lesions:
        vis = anatomy.lesions[i].visibility[sequence]
        value = lerp(value, c["wm"] + vis * (c["lesion"] - c["wm"]), frac)
        union = np.maximum(union, frac)
    return value, union


def log_bias_field(affine: np.ndarray, shape, coefficients) -> np.ndarray:
    """The log of a smooth receive-coil bias field on a scan's grid.

    Linear in the three world axes and quadratic in A-P and S-I, about the grid's centre.

    Args:
        affine: The scan's voxel-to-world affine.
        shape: The scan's shape.
        coefficients: The five coefficients (x, y, z, y squared, z squared).

    Returns:
        The log bias (broadcastable to ``shape``).
    """
    centre = affine[:3, :3] @ ((np.asarray(shape) - 1) / 2) + affine[:3, 3]
    grids = np.meshgrid(
        *[np.arange(n, dtype=np.float32) for n in shape], indexing="ij", sparse=True
    )
    world = [
        sum(affine[r, a] * grids[a] for a in range(3)) + affine[r, 3] - centre[r] for r in range(3)
    ]
    c = coefficients
    log_bias = c[0] * world[0] / 60 + c[1] * world[1] / 60 + c[2] * world[2] / 150
    return log_bias + c[3] * (world[1] / 60) ** 2 + c[4] * (world[2] / 150) ** 2


def _scanner(image, affine, shape, scanner, rng) -> np.ndarray:
    """Bias field, contrast curve, gain and Rician noise; returns int16."""
    log_bias = log_bias_field(affine, shape, scanner["bias"])
    signal = np.clip(image, 0, None) ** scanner["gamma"] * np.exp(log_bias)
    sigma = scanner["noise"]
    real = signal + rng.normal(0.0, sigma, size=shape).astype(np.float32)
    imag = rng.normal(0.0, sigma, size=shape).astype(np.float32)
    magnitude = np.sqrt(real * real + imag * imag) * scanner["gain"]
    return np.clip(np.rint(magnitude), 0, 32767).astype(np.int16)
