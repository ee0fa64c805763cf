"""What every QC picture shares: the display orientation, the slices, the window, the outlines.

Four pictures are drawn from volumes (the synthetic subject, the prepared crops and centreline,
the prediction, the report's subject panel); they all go through here, so a volume is shown the
same way wherever it is seen:

- :func:`canonical` turns the voxel axes to RAS+ (nibabel's ``as_closest_canonical``), so that
  :func:`view` shows a sagittal slice anterior to the right, a coronal one with the patient's
  right to the right and an axial one anterior up, superior up in the first two, whatever the
  scanner's storage order;
- :func:`busiest_slice` and :func:`spread_slices` pick the slices through a mask;
- :func:`window` / :func:`windowed` map robust percentiles of the non-zero voxels to black and
  white (zero is padding outside the field of view, not tissue);
- :func:`draw_image` and :func:`draw_outline` put a slice and a mask's outline on axes;
- :func:`write_png` renders a figure and writes it atomically.

The plotting backend itself is :mod:`cordfuse.figures`; nothing here needs a display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np

from cordfuse.figures import png_bytes
from cordfuse.io import atomic_write_bytes

Plane = Literal["sagittal", "coronal", "axial"]

#: Percentiles of the non-zero voxels shown as black and as white.
PERCENTILES = (1.0, 99.5)


def canonical(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip and transpose a volume's voxel axes to the closest RAS+ orientation.

    The same reorientation as ``nibabel.as_closest_canonical`` (world positions unchanged), on an
    array and its affine; the data keep their dtype.

    Args:
        data: A 3D volume.
        affine: Its 4x4 voxel-to-world (RAS+ millimetres) affine.

    Returns:
        The reoriented volume and its affine.

    Example:
        >>> data = np.arange(3)[:, None, None]        # the first axis points left
        >>> flipped = np.diag([-1.0, 1.0, 1.0, 1.0])
        >>> canon, affine = canonical(data, flipped)
        >>> canon.ravel().tolist(), affine[0].tolist()
        ([2, 1, 0], [1.0, 0.0, 0.0, -2.0])
    """
    ornt = nib.orientations.io_orientation(affine)
    reoriented = nib.orientations.apply_orientation(np.asarray(data), ornt)
    to_original = nib.orientations.inv_ornt_aff(ornt, np.shape(data))
    return reoriented, np.asarray(affine, float) @ to_original


def view(volume: np.ndarray, spacing, plane: Plane, index: int) -> tuple[np.ndarray, float]:
    """One slice of a canonical (RAS+) volume, ready for ``imshow(origin="lower")``.

    Args:
        volume: A 3D volume in RAS+ voxel order (see :func:`canonical`).
        spacing: Its voxel sizes in millimetres (x, y, z).
        plane: ``"sagittal"`` (anterior to the right, superior up), ``"coronal"`` (the
            patient's right to the right, superior up) or ``"axial"`` (the patient's right to
            the right, anterior up).
        index: The slice along the plane's normal axis.

    Returns:
        The 2D slice (rows bottom to top) and its pixel aspect (height / width in mm).

    Example:
        >>> volume = np.arange(24).reshape(2, 3, 4)
        >>> image, aspect = view(volume, (1.0, 0.5, 2.0), "sagittal", 1)
        >>> image.shape, aspect
        ((4, 3), 4.0)
    """
    sx, sy, sz = (float(s) for s in spacing)
    if plane == "sagittal":
        return volume[index].T, sz / sy
    if plane == "coronal":
        return volume[:, index].T, sz / sx
    return volume[:, :, index].T, sy / sx


def busiest_slice(weight: np.ndarray, axis: int = 0) -> int:
    """The slice along ``axis`` where ``weight`` (a mask, or a weighted sum of masks) is largest.

    Args:
        weight: A 3D mask or weight map.
        axis: The axis to choose a slice along (0: sagittal slices of a canonical volume).

    Returns:
        The index of the slice with the largest total weight, the middle one when ``weight``
        is empty.

    Example:
        >>> mask = np.zeros((5, 2, 2), bool)
        >>> mask[3, 0, :] = True
        >>> busiest_slice(mask), busiest_slice(np.zeros((5, 2, 2)))
        (3, 2)
    """
    others = tuple(a for a in range(np.ndim(weight)) if a != axis % np.ndim(weight))
    totals = np.asarray(weight, float).sum(axis=others)
    return int(np.argmax(totals)) if totals.any() else np.shape(weight)[axis] // 2


def spread_slices(mask: np.ndarray, count: int = 3, axis: int = 2) -> list[int]:
    """``count`` slices along ``axis`` spread evenly from the first to the last holding ``mask``.

    Args:
        mask: A 3D mask.
        count: How many slices.
        axis: The axis to choose slices along (2: axial slices of a canonical volume).

    Returns:
        The slice indices in increasing order (repeated when the mask spans fewer slices); the
        middle slice alone when the mask is empty.

    Example:
        >>> mask = np.zeros((2, 2, 10), bool)
        >>> mask[..., 2:9] = True
        >>> spread_slices(mask)
        [2, 5, 8]
    """
    others = tuple(a for a in range(np.ndim(mask)) if a != axis % np.ndim(mask))
    held = np.flatnonzero(np.asarray(mask).any(axis=others))
    if not held.size:
        return [np.shape(mask)[axis] // 2]
    return held[np.linspace(0, held.size - 1, count).round().astype(int)].tolist()


def window(
    image: np.ndarray, percentiles: tuple[float, float] = PERCENTILES
) -> tuple[float, float]:
    """The intensities shown as black and as white: percentiles of the non-zero voxels.

    Args:
        image: An image (any shape), usually the slice on display.
        percentiles: The lower and upper percentiles.

    Returns:
        ``(low, high)``; ``(0.0, 1.0)`` for an image without a non-zero voxel.

    Example:
        >>> window(np.array([0, 0, 1, 2, 3, 4, 5]), (0, 100))
        (1.0, 5.0)
    """
    values = np.asarray(image)
    values = values[values != 0]
    if not values.size:
        return 0.0, 1.0
    low, high = np.percentile(values, percentiles)
    return float(low), float(high)


def windowed(image: np.ndarray, percentiles: tuple[float, float] = PERCENTILES) -> np.ndarray:
    """``image`` scaled so that its :func:`window` spans 0 to 1, clipped outside.

    Args:
        image: An image (any shape).
        percentiles: The lower and upper percentiles of the non-zero voxels.

    Returns:
        A float32 array of ``image``'s shape with values in [0, 1].

    Example:
        >>> windowed(np.array([0.0, 10.0, 20.0, 30.0]), (0, 100)).tolist()
        [0.0, 0.0, 0.5, 1.0]
    """
    low, high = window(image, percentiles)
    scaled = (np.asarray(image, np.float32) - low) / (high - low if high > low else 1.0)
    return np.clip(scaled, 0.0, 1.0)


def draw_image(ax, image: np.ndarray, *, aspect: float | str = 1.0) -> None:
    """Show a 2D slice on ``ax``: grey, :func:`windowed`, row 0 at the bottom, one voxel one
    block (nearest neighbour), no axes.

    Args:
        ax: Matplotlib axes.
        image: The slice, rows bottom to top (as :func:`view` gives it).
        aspect: Pixel aspect (height / width), or ``"auto"`` to fill the axes.
    """
    ax.imshow(
        windowed(image),
        cmap="gray",
        origin="lower",
        vmin=0.0,
        vmax=1.0,
        aspect=aspect,
        interpolation="nearest",
    )
    ax.set_axis_off()


def draw_outline(ax, mask: np.ndarray, colour: str, *, linewidth: float = 0.8) -> bool:
    """Outline a 2D mask on ``ax`` over a slice drawn by :func:`draw_image`.

    The contour at 0.5 runs halfway between the mask's voxel centres and their neighbours', so
    it encloses exactly the mask's voxels. (No ``origin`` is given to ``contour``: with
    ``origin="lower"`` matplotlib puts voxel centres at ``i + 0.5``, half a voxel off the image
    ``imshow`` draws.)

    Args:
        ax: Matplotlib axes.
        mask: The mask's slice (same shape and order as the image's).
        colour: A matplotlib colour.
        linewidth: Line width in points.

    Returns:
        Whether anything was drawn (nothing for an empty mask).
    """
    mask = np.asarray(mask, np.float32)
    if not mask.any():
        return False
    ax.contour(mask, levels=[0.5], colors=colour, linewidths=linewidth)
    return True


def write_png(fig, path: str | Path, *, dpi: int = 100) -> None:
    """Render ``fig`` as PNG, close it and write it to ``path`` atomically.

    Args:
        fig: A matplotlib figure (from :func:`cordfuse.figures.pyplot`).
        path: The PNG file; its folder is created.
        dpi: Dots per inch (the PNG is ``figsize * dpi`` pixels).
    """
    atomic_write_bytes(Path(path), png_bytes(fig, dpi=dpi))
