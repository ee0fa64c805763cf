"""The reference grid, the centreline crops and their exact inverse (paper, 2.2).

The reference grid is isotropic (``spacing`` mm) and axis-aligned in RPI (SCT/ITK convention:
axes run from Right to Left, Posterior to Anterior, Inferior to Superior; nibabel calls this
orientation LAS). Its S-I extent is the union of the cords found plus ``margin`` mm at each end.
In every axial slice of that grid, each sequence is cropped to ``size`` x ``size`` voxels centred
on *its own* centreline (the inter-sequence alignment), and the slices are stacked: the crop is a
straightened volume of shape ``(size, size, nz)``.

Crop voxel ``(i, j, k)`` of a sequence whose centreline is at ``(cx_k, cy_k)`` in slice ``k`` lies
at world (RAS+ mm)::

    x = cx_k - (i - c) * spacing,   y = cy_k + (j - c) * spacing,   z = z0 + k * spacing

with ``c = (size - 1) / 2``. :func:`crop_to_world_grid` inverts this map exactly: every voxel of a
target grid (the native T2Sag) looks up its position in crop space and interpolates there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cordfuse.io import apply_affine, grid_to_world, inside_voxel_boxes, voxel_block


@dataclass(frozen=True)
class CropGeometry:
    """Where the stacked crops sit along S-I: ``nz`` slices from ``z0`` every ``spacing`` mm."""

    spacing: float
    size: int
    z0: float
    nz: int

    @property
    def z(self) -> np.ndarray:
        """The S-I world position (mm) of each crop slice.

        Example:
            >>> CropGeometry(spacing=0.5, size=4, z0=-10.0, nz=3).z.tolist()
            [-10.0, -9.5, -9.0]
        """
        return self.z0 + self.spacing * np.arange(self.nz)

    @property
    def centre_index(self) -> float:
        """The in-plane voxel index of the centreline, ``(size - 1) / 2``."""
        return (self.size - 1) / 2

    def nominal_affine(self) -> np.ndarray:
        """Affine of the straightened crop volume, for viewers and nnU-Net (LAS, centreline at
        x = y = 0). Not a world position: each slice is shifted onto its own centreline."""
        s, c = self.spacing, self.centre_index
        return np.array(
            [
                [-s, 0, 0, c * s],
                [0, s, 0, -c * s],
                [0, 0, s, self.z0],
                [0, 0, 0, 1.0],
            ]
        )


def reference_geometry(
    cord_ranges: list[tuple[float, float]], *, spacing: float, size: int, margin: float
) -> CropGeometry:
    """Grid covering the union of the cord S-I ranges plus ``margin`` mm at both ends.

    Args:
        cord_ranges: ``(lowest, highest)`` S-I position (mm) of the cord in each sequence.
        spacing: The isotropic voxel size, in mm.
        size: The in-plane crop size, in voxels.
        margin: Added below and above, in mm.

    Returns:
        The crops' geometry.

    Example:
        >>> reference_geometry([(0.0, 10.0), (5.0, 20.0)], spacing=1.0, size=48, margin=2.0)
        CropGeometry(spacing=1.0, size=48, z0=-2.0, nz=25)
    """
    lo = min(r[0] for r in cord_ranges) - margin
    hi = max(r[1] for r in cord_ranges) + margin
    nz = int(np.floor((hi - lo) / spacing)) + 1
    return CropGeometry(spacing=spacing, size=size, z0=lo, nz=nz)


def core_disk(size: int, spacing: float, radius_mm: float) -> np.ndarray:
    """The in-plane voxels of a crop within ``radius_mm`` of its centreline: the cord's core,
    where the cord's own signal is measured (pre-processing's statistics, painted lesions).

    Args:
        size: The crop's in-plane size (voxels).
        spacing: The crop's spacing (mm).
        radius_mm: The disk's radius (mm).

    Returns:
        ``(size, size)`` booleans.

    Example:
        >>> core_disk(5, 1.0, 1.0).astype(int).tolist()
        [[0, 0, 0, 0, 0], [0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]]
    """
    offsets = (np.arange(size) - (size - 1) / 2) * spacing
    return np.hypot(offsets[:, None], offsets[None, :]) <= radius_mm


def crop_points(geometry: CropGeometry, centres: np.ndarray) -> np.ndarray:
    """World points ``(size, size, nz, 3)`` of a crop whose slice ``k`` is centred on
    ``centres[k] = (x, y)``.

    Args:
        geometry: The crops' geometry.
        centres: ``(nz, 2)`` centreline ``(x, y)`` (world mm) in each slice.

    Returns:
        The world (RAS mm) position of every crop voxel.

    Example:
        >>> geometry = CropGeometry(spacing=1.0, size=3, z0=0.0, nz=1)
        >>> crop_points(geometry, np.array([[5.0, 7.0]]))[1, 1, 0].tolist()   # the centre
        [5.0, 7.0, 0.0]
    """
    s, c, n = geometry.spacing, geometry.centre_index, geometry.size
    offsets = (np.arange(n) - c) * s
    points = np.empty((n, n, geometry.nz, 3), np.float64)
    points[..., 0] = centres[None, None, :, 0] - offsets[:, None, None]
    points[..., 1] = centres[None, None, :, 1] + offsets[None, :, None]
    points[..., 2] = geometry.z[None, None, :]
    return points


def crop_to_world_grid(
    crop: np.ndarray,
    geometry: CropGeometry,
    centres: np.ndarray,
    shape: tuple[int, int, int],
    affine: np.ndarray,
    *,
    order: int = 1,
) -> np.ndarray:
    """Map a crop-space volume onto a world grid ``(shape, affine)``: the inverse of the crop.

    Voxels outside the crop (beyond its S-I range or the ``size`` window) get 0.

    Args:
        crop: A ``(size, size, nz)`` volume in crop space (a prediction, a label).
        geometry: The crops' geometry.
        centres: ``(nz, 2)`` centreline ``(x, y)`` the crop was cut along.
        shape: The target grid's shape.
        affine: The target grid's voxel-to-world affine.
        order: Spline interpolation order (0 nearest, 1 linear).

    Returns:
        The volume on the target grid, float32.
    """
    out = np.zeros(shape, np.float32)
    lo, hi = _world_box_voxels(geometry, centres, shape, affine)
    if np.any(hi <= lo):
        return out
    block = affine.copy()
    block[:3, 3] = apply_affine(affine, lo)
    world = grid_to_world(hi - lo, block)
    k = (world[:, 2] - geometry.z0) / geometry.spacing
    slices = np.arange(geometry.nz)
    cx = np.interp(k, slices, centres[:, 0])
    cy = np.interp(k, slices, centres[:, 1])
    i = (cx - world[:, 0]) / geometry.spacing + geometry.centre_index
    j = (world[:, 1] - cy) / geometry.spacing + geometry.centre_index
    coords = np.stack([i, j, k])
    limit = np.array([geometry.size, geometry.size, geometry.nz])[:, None]
    inside = inside_voxel_boxes(coords.T, limit[:, 0])
    values = np.zeros(len(world), np.float32)
    if inside.any():
        clipped = np.clip(coords[:, inside], 0, limit - 1)
        values[inside] = ndimage.map_coordinates(
            crop.astype(np.float32), clipped, order=order, mode="nearest"
        )
    out[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = values.reshape(hi - lo)
    return out


def _world_box_voxels(geometry: CropGeometry, centres, shape, affine) -> tuple:
    """The block ``[lo, hi)`` of a grid's voxels that holds every voxel inside the crop's
    voxel boxes: those lie in the crop's axis-aligned world box, and the grid's voxel
    coordinates of that box's eight corners bound them (the map is affine). A voxel of margin
    keeps points on the box's faces in. A native scan is mostly outside its 24-48 voxel crop:
    mapping only this block halves the inverse's time (a sixth beside another job)."""
    half = (geometry.centre_index + 0.5) * geometry.spacing
    box = [
        (centres[:, 0].min() - half, centres[:, 0].max() + half),
        (centres[:, 1].min() - half, centres[:, 1].max() + half),
        (geometry.z0 - geometry.spacing / 2, geometry.z0 + (geometry.nz - 0.5) * geometry.spacing),
    ]
    corners = np.array(np.meshgrid(*box, indexing="ij")).reshape(3, -1).T
    return voxel_block(corners, affine, shape, margin=1)
