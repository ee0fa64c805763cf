"""Lesions painted into real healthy scans, to ask whether a model trained on synthetic cohorts
finds a lesion in a real image (``benchmarks/bench_real.py``).

An MS lesion of the spinal cord on T2 is a bright ellipsoid elongated along S-I, a few mm to
about 15 mm long, inside the cord, with soft edges. :func:`paint_lesion` draws one on the
scan's own grid, inside its human cord mask: the voxels' fraction of lesion is computed from a
smooth-edged ellipsoid in world mm (supersampled, so a thick slice gets its partial volume), and
the painted signal is ``contrast`` times the local cord signal (the median cord intensity within
10 mm along S-I), blended by that fraction. The truth is the fraction >= 0.5. A painted scan can
then be re-acquired on a thick clinical grid (:func:`cordfuse.synth.clinical.reacquire`), so the
lesion is averaged over the slice profile as a real one is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cordfuse.io import apply_affine, voxel_block

#: The width of the soft edge (mm): the lesion fraction ramps from 1 to 0 over it.
EDGE_MM = 0.6
#: How far along S-I the local cord signal is taken from (mm either side of the lesion's centre).
LOCAL_SIGNAL_MM = 10.0
#: Sub-voxel samples per axis for the lesion fraction (partial volume).
SUPERSAMPLE = 3


@dataclass(frozen=True)
class PaintedLesion:
    """One painted lesion.

    Attributes:
        centre_mm: Its centre in world mm (RAS).
        length_mm: Its length along S-I (the ellipsoid's long axis), 3-15 mm for MS lesions.
        width_mm: Its diameter in the axial plane.
        contrast: Its signal as a multiple of the local cord signal (1.5: 50 % brighter).
    """

    centre_mm: tuple[float, float, float]
    length_mm: float
    width_mm: float
    contrast: float


def lesion_fraction(shape, affine: np.ndarray, lesion: PaintedLesion) -> np.ndarray:
    """Each voxel's fraction inside the lesion's smooth-edged ellipsoid.

    Args:
        shape: The grid's shape.
        affine: Its voxel-to-world affine.
        lesion: The lesion.

    Returns:
        ``shape`` float32 fractions in [0, 1].

    Example:
        >>> lesion = PaintedLesion((5.0, 5.0, 5.0), length_mm=6.0, width_mm=4.0, contrast=2.0)
        >>> f = lesion_fraction((11, 11, 11), np.eye(4), lesion)
        >>> float(f[5, 5, 5]), float(f[5, 5, 10]), float(f[0, 0, 0])
        (1.0, 0.0, 0.0)
    """
    centre = np.asarray(lesion.centre_mm, float)
    semi = np.array([lesion.width_mm / 2, lesion.width_mm / 2, lesion.length_mm / 2])
    # only the voxels near the lesion are sampled: its bounding box, one edge wider
    reach = semi + EDGE_MM + np.abs(affine[:3, :3]).sum(axis=1)
    corners = np.array(np.meshgrid(*[[-1, 1]] * 3, indexing="ij")).reshape(3, -1).T
    lo, hi = voxel_block(centre + corners * reach, affine, shape)
    fraction = np.zeros(shape, np.float32)
    if np.any(hi <= lo):
        return fraction
    offsets = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE - 0.5
    sub = np.array(np.meshgrid(offsets, offsets, offsets, indexing="ij")).reshape(3, -1).T
    grid = np.indices(hi - lo).reshape(3, -1).T + lo
    points = (grid[:, None, :] + sub[None]).reshape(-1, 3)
    world = apply_affine(affine, points) - centre
    # distance outside the ellipsoid, in mm, approximated by the normalised radius times the
    # smallest semi-axis: exact for a sphere; along the long axis the edge is a little softer
    radius = np.sqrt(((world / semi) ** 2).sum(axis=1))
    outside = (radius - 1) * semi.min()
    inside = np.clip(0.5 - outside / EDGE_MM, 0.0, 1.0).reshape(len(grid), -1).mean(axis=1)
    fraction[tuple(grid.T)] = inside
    return fraction


def local_cord_signal(
    image: np.ndarray, affine: np.ndarray, cord: np.ndarray, z_mm: float
) -> float:
    """The median cord intensity within :data:`LOCAL_SIGNAL_MM` of ``z_mm`` along S-I (all the
    cord's when none lies that close).

    Args:
        image: The scan.
        affine: Its affine.
        cord: Its cord mask (booleans).
        z_mm: The S-I height (world mm).

    Returns:
        The median.
    """
    voxels = np.argwhere(cord)
    z = apply_affine(affine, voxels)[:, 2]
    near = np.abs(z - z_mm) <= LOCAL_SIGNAL_MM
    chosen = voxels[near] if near.any() else voxels
    return float(np.median(image[tuple(chosen.T)]))


def paint_lesion(
    image: np.ndarray,
    affine: np.ndarray,
    cord: np.ndarray,
    lesion: PaintedLesion,
    *,
    ragged: float = 0.0,
    texture: float = 0.0,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint one lesion into a scan.

    By default the lesion is the smooth ellipsoid of :func:`lesion_fraction` with a uniform
    signal. ``ragged`` and ``texture`` make it irregular, as real lesions are and as a model
    trained on smooth ellipsoids (``cordfuse train --paint-lesions``) never saw: smooth noise of
    unit spread (Gaussian-filtered over one voxel) multiplies each voxel's fraction by
    ``1 + ragged * noise`` (clipped to [0, 1]: a frayed edge and holes; the lesion grows only
    within its soft edge, about a voxel), and a second such field multiplies the lesion's signal
    by ``1 + texture * noise`` (a heterogeneous interior).

    Args:
        image: The scan (float).
        affine: Its affine.
        cord: Its cord mask.
        lesion: The lesion (its centre should lie inside the cord: :func:`draw_lesions`).
        ragged: How much the edge is frayed (0: the smooth ellipsoid).
        texture: The relative spread of the lesion's signal (0: uniform).
        rng: Draws the two noise fields (needed when ``ragged`` or ``texture`` is not 0).

    Returns:
        ``(painted image, lesion mask)``: the mask is the voxels at least half inside the lesion,
        within the cord.

    Raises:
        ValueError: ``ragged`` or ``texture`` without ``rng``.
    """
    cord = np.asarray(cord) > 0
    fraction = lesion_fraction(image.shape, affine, lesion)
    target: float | np.ndarray = lesion.contrast * local_cord_signal(
        image, affine, cord, lesion.centre_mm[2]
    )
    if ragged or texture:
        if rng is None:
            raise ValueError("an irregular lesion (ragged or texture) needs rng")
        fraying, variation = (_smooth_noise(image.shape, rng) for _ in range(2))
        fraction = np.clip(fraction * (1 + ragged * fraying), 0.0, 1.0)
        target = target * (1 + texture * variation)
    fraction = fraction * cord
    painted = image * (1 - fraction) + target * fraction
    return painted.astype(np.float32), (fraction >= 0.5).astype(np.uint8)


#: The real-scan bench's irregular lesion (``bench_real.py --lesion-model irregular``): the drawn
#: ellipsoid this much longer and wider (fraying eats into it), then this frayed and textured.
IRREGULAR_GROWTH = {"length": 1.2, "width": 1.3}
IRREGULAR = {"ragged": 0.6, "texture": 0.15}


def paint_irregular_lesion(
    image: np.ndarray,
    affine: np.ndarray,
    cord: np.ndarray,
    lesion: PaintedLesion,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint one lesion of the bench's irregular model: ``lesion`` grown by
    :data:`IRREGULAR_GROWTH`, with the frayed edge and textured interior of :data:`IRREGULAR`
    (:func:`paint_lesion`). A model trained on smooth ellipsoids (``cordfuse train
    --paint-lesions``) never saw such a lesion.

    Args:
        image: The scan (float).
        affine: Its affine.
        cord: Its cord mask.
        lesion: The lesion as drawn (:func:`draw_lesions`).
        rng: Draws the fraying and the texture.

    Returns:
        ``(painted image, lesion mask)``, as :func:`paint_lesion`.
    """
    grown = PaintedLesion(
        lesion.centre_mm,
        lesion.length_mm * IRREGULAR_GROWTH["length"],
        lesion.width_mm * IRREGULAR_GROWTH["width"],
        lesion.contrast,
    )
    return paint_lesion(image, affine, cord, grown, rng=rng, **IRREGULAR)


def _smooth_noise(shape, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise smoothed over one voxel, scaled back to unit spread."""
    from scipy import ndimage

    field = ndimage.gaussian_filter(rng.normal(size=shape), 1.0)
    return field / field.std()


def draw_lesions(
    affine: np.ndarray,
    cord: np.ndarray,
    contrasts,
    rng: np.random.Generator,
    *,
    per_contrast: int = 1,
    margin_mm: float = 10.0,
) -> list[PaintedLesion]:
    """Lesions at random places of the cord, ``per_contrast`` for each contrast.

    Each centre is a cord voxel at least ``margin_mm`` from the cord's ends along S-I (a lesion
    cut by the field of view is not the question here) and at least 1 mm inside the mask, its
    length uniform in 3-15 mm and its width in 2-5 mm (at most the cord's width there, so that
    the lesion stays in the cord).

    Args:
        affine: The scan's affine.
        cord: Its cord mask.
        contrasts: The contrasts (multiples of the local cord signal).
        rng: The random generator (the seed makes the positions).
        per_contrast: Lesions per contrast.
        margin_mm: Distance kept from the cord's ends.

    Returns:
        The lesions, in the order of ``contrasts``.
    """
    from scipy import ndimage

    cord = np.asarray(cord) > 0
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    depth = ndimage.distance_transform_edt(cord, sampling=spacing)
    voxels = np.argwhere(cord)
    world = apply_affine(affine, voxels)
    z = world[:, 2]
    allowed = (z >= z.min() + margin_mm) & (z <= z.max() - margin_mm)
    allowed &= depth[tuple(voxels.T)] >= 1.0
    candidates = np.flatnonzero(allowed) if allowed.any() else np.arange(len(voxels))
    lesions = []
    for contrast in contrasts:
        for _ in range(per_contrast):
            k = int(rng.choice(candidates))
            width = float(min(rng.uniform(2.0, 5.0), 2 * depth[tuple(voxels[k])]))
            lesions.append(
                PaintedLesion(
                    tuple(float(c) for c in world[k]),  # type: ignore[arg-type]
                    length_mm=float(rng.uniform(3.0, 15.0)),
                    width_mm=max(width, 1.0),
                    contrast=float(contrast),
                )
            )
    return lesions
