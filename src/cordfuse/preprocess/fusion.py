"""Intra-sequence fusion: several slabs (chunks) of one sequence become one image (paper, 2.2).

Slabs are kept at their native resolution and sampled on demand, so the pre-processing does one
interpolation from native data into the crops. Fusion decides, for every world point, which slab
it comes from: the overlap of two consecutive slabs is split at its middle along S-I (half of the
overlapping region from each). Before that, a lower sagittal slab is rigidly registered to the
slab above it (SimpleITK, Mattes mutual information restricted to the overlap); the result is a
corrected voxel-to-world affine for that slab, which its labels follow too. Axial chunks are not
registered (they rarely overlap).

Example:
    Two slabs of 10 slices 6 mm apart (the overlap is split at z = 1.5 mm), not registered:

    >>> upper = Slab.from_array(np.ones((4, 4, 10)), np.eye(4), name="upper")
    >>> lower_affine = np.eye(4)
    >>> lower_affine[2, 3] = -6.0
    >>> lower = Slab.from_array(np.full((4, 4, 10), 2.0), lower_affine, name="lower")
    >>> fused = fuse_slabs([lower, upper], register=False)
    >>> [slab.name for slab in fused.slabs], fused.slabs[0].z_bounds
    (['upper', 'lower'], (1.5, inf))
    >>> values, covered = fused.sample(np.array([[1, 1, 8.0], [1, 1, -5.0], [1, 1, 50.0]]))
    >>> values.tolist(), covered.tolist()
    ([1.0, 2.0, 0.0], [True, True, False])
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

from cordfuse.errors import CordfuseError
from cordfuse.io import apply_affine, block_mean, grid_to_world, inside_voxel_boxes, voxel_sizes

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Slab:
    """One scan of a sequence.

    ``affine`` maps voxels to the world frame of the first slab (after registration);
    ``native_affine`` is the affine stored in the file. ``labels`` are arrays on the slab grid.
    ``z_bounds`` is the S-I interval (world mm) this slab contributes after fusion.
    """

    data: np.ndarray
    affine: np.ndarray
    native_affine: np.ndarray
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    z_bounds: tuple[float, float] = (-np.inf, np.inf)
    name: str = ""

    @classmethod
    def from_array(cls, data, affine, *, labels=None, name: str = "") -> Slab:
        """A slab as read from its file (not yet registered).

        Args:
            data: The image, stored as float32.
            affine: Its voxel-to-world affine (both ``affine`` and ``native_affine``).
            labels: Label arrays on the same grid, by name (``lesion``, ``cord``).
            name: For messages (the file's stem).

        Returns:
            The slab, contributing everywhere along S-I until fused.
        """
        affine = np.asarray(affine, dtype=float)
        return cls(
            np.asarray(data, np.float32), affine, affine.copy(), dict(labels or {}), name=name
        )

    def z_extent(self, *, centres: bool = False) -> tuple[float, float]:
        """World S-I extent of the slab's voxel boxes (or of its voxel centres).

        Args:
            centres: Measure between the outermost voxel centres instead of box edges.

        Returns:
            ``(lowest, highest)`` S-I position, in mm.
        """
        half = 0.0 if centres else 0.5
        corners = (
            np.array(np.meshgrid(*[[-half, n - 1 + half] for n in self.data.shape], indexing="ij"))
            .reshape(3, -1)
            .T
        )
        z = apply_affine(self.affine, corners)[:, 2]
        return float(z.min()), float(z.max())

    def sample(
        self, points: np.ndarray, *, what: str = "image", order: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """Values at world ``points`` (N, 3) and whether each point lies inside the slab.

        Args:
            points: World positions (mm).
            what: ``image`` or the name of one of its labels.
            order: Spline interpolation order (0 nearest, 1 linear).

        Returns:
            ``(values, covered)``: float32 values (0 outside) and booleans.
        """
        volume = self.data if what == "image" else self.labels[what]
        vox = apply_affine(np.linalg.inv(self.affine), points)
        shape = np.asarray(volume.shape)
        covered = inside_voxel_boxes(vox, shape)
        values = np.zeros(len(points), np.float32)
        if covered.any():
            inside = np.clip(vox[covered], 0, shape - 1)
            values[covered] = ndimage.map_coordinates(
                volume.astype(np.float32, copy=False), inside.T, order=order, mode="nearest"
            )
        return values, covered


@dataclass
class FusedSequence:
    """The slabs of one sequence, ordered superior to inferior, ready to be sampled as one."""

    slabs: list[Slab]

    def sample(
        self, points: np.ndarray, *, what: str = "image", order: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """Values at world ``points`` (N, 3); zero where no slab covers a point.

        Each point is taken from the slab whose ``z_bounds`` contain it; where that slab does not
        cover it (oblique edges), from any other slab that does.

        Args:
            points: World positions (mm).
            what: ``image`` or a label name (slabs without that label are skipped).
            order: Spline interpolation order (0 nearest, 1 linear).

        Returns:
            ``(values, covered)``: float32 values and booleans.
        """
        points = np.asarray(points, dtype=float)
        values = np.zeros(len(points), np.float32)
        covered = np.zeros(len(points), bool)
        z = points[:, 2]
        for slab in self.slabs:
            own = (z >= slab.z_bounds[0]) & (z < slab.z_bounds[1]) & ~covered
            if own.any() and (what == "image" or what in slab.labels):
                got, inside = slab.sample(points[own], what=what, order=order)
                idx = np.flatnonzero(own)[inside]
                values[idx] = got[inside]
                covered[idx] = True
        for slab in self.slabs:  # fall back to any slab covering what is left
            rest = ~covered
            if not rest.any():
                break
            if what == "image" or what in slab.labels:
                got, inside = slab.sample(points[rest], what=what, order=order)
                idx = np.flatnonzero(rest)[inside]
                values[idx] = got[inside]
                covered[idx] = True
        return values, covered

    def fused_grid(self) -> tuple[tuple[int, int, int], np.ndarray]:
        """The first slab's grid, extended along its S-I voxel axis to cover every slab.

        Returns:
            ``(shape, affine)``.
        """
        first = self.slabs[0]
        si_axis = int(np.argmax(np.abs(first.affine[2, :3])))
        step_z = first.affine[2, si_axis]
        shape = list(first.data.shape)
        lo_index, hi_index = 0.0, shape[si_axis] - 1.0
        for slab in self.slabs[1:]:
            for z in slab.z_extent(centres=True):
                index = (z - first.affine[2, 3]) / step_z
                lo_index = min(lo_index, np.floor(index + 1e-6))
                hi_index = max(hi_index, np.ceil(index - 1e-6))
        shift = np.zeros(3)
        shift[si_axis] = lo_index
        affine = first.affine.copy()
        affine[:3, 3] = apply_affine(first.affine, shift)
        shape[si_axis] = int(hi_index - lo_index + 1)
        return tuple(shape), affine

    def render(
        self, *, what: str = "image", order: int = 1
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The fused volume on :meth:`fused_grid`.

        Args:
            what: ``image`` or a label name.
            order: Spline interpolation order (0 nearest, 1 linear).

        Returns:
            ``(data, affine, covered)``.
        """
        shape, affine = self.fused_grid()
        values, covered = self.sample(grid_to_world(shape, affine), what=what, order=order)
        return values.reshape(shape), affine, covered.reshape(shape)


def fuse_slabs(slabs: list[Slab], *, register: bool) -> FusedSequence:
    """Order slabs superior to inferior, register each to the one above (optional), and split
    every overlap at its middle along S-I.

    Args:
        slabs: The scans of one sequence (left unchanged: copies are fused).
        register: Rigidly register each overlapping slab to the one above it.

    Returns:
        The fused sequence.

    Raises:
        CordfuseError: no slab, or a registration without enough overlap or signal.
    """
    if not slabs:
        raise CordfuseError("no scan to fuse")
    ordered = sorted(slabs, key=lambda s: -np.mean(s.z_extent()))
    ordered = [replace(s) for s in ordered]
    for upper, lower in zip(ordered, ordered[1:], strict=False):
        if register and _overlap(upper, lower) > 0:
            correction = register_rigid(upper, lower)
            lower.affine = correction @ lower.affine
    bounds = [np.inf]
    for upper, lower in zip(ordered, ordered[1:], strict=False):
        up_lo, _ = upper.z_extent()
        _, low_hi = lower.z_extent()
        bounds.append(0.5 * (up_lo + low_hi))
    bounds.append(-np.inf)
    for slab, hi, lo in zip(ordered, bounds[:-1], bounds[1:], strict=True):
        slab.z_bounds = (lo, hi)
    return FusedSequence(ordered)


def _overlap(upper: Slab, lower: Slab) -> float:
    return lower.z_extent()[1] - upper.z_extent()[0]


# ---------------------------------------------------------------------------------------------
# Rigid registration (SimpleITK)


def _to_sitk(data: np.ndarray, affine: np.ndarray):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data, np.float32).T))
    spacing = voxel_sizes(affine)
    lps = _LPS @ affine
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    image.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    return image


def _overlap_crop(
    slab: Slab, z_lo: float, z_hi: float, margin: float
) -> tuple[np.ndarray, np.ndarray]:
    """The part of a slab whose voxels lie within [z_lo - margin, z_hi + margin]."""
    si_axis = int(np.argmax(np.abs(slab.affine[2, :3])))
    n = slab.data.shape[si_axis]
    centre = np.array(slab.data.shape, float) / 2
    heights = []
    for i in range(n):
        centre[si_axis] = i
        heights.append(apply_affine(slab.affine, centre)[2])
    z = np.array(heights)
    keep = np.flatnonzero((z >= z_lo - margin) & (z <= z_hi + margin))
    if keep.size < 2:
        raise CordfuseError(f"{slab.name}: slabs overlap too little to register")
    if np.ptp(slab.data.take(keep, axis=si_axis)) == 0:
        raise CordfuseError(f"{slab.name}: blank image in the slab overlap (nothing to register)")
    index = [slice(None)] * 3
    index[si_axis] = slice(keep[0], keep[-1] + 1)
    shift = np.zeros(3)
    shift[si_axis] = keep[0]
    affine = slab.affine.copy()
    affine[:3, 3] = apply_affine(slab.affine, shift)
    return slab.data[tuple(index)], affine


# The overlap is block-averaged to about this in-plane pixel before registering: a rigid motion
# of a few mm is still resolved to ~0.1 mm at 1.5 mm pixels (measured: benchmarks/bench_prepare.py).
REGISTRATION_PIXEL_MM = 1.5
REGISTRATION_SAMPLES = 10_000  # metric samples per evaluation, whatever the image size


def register_rigid(fixed: Slab, moving: Slab, *, seed: int = 7) -> np.ndarray:
    """Rigid transform (4x4, world RAS mm) that maps ``moving``'s world onto ``fixed``'s.

    Mattes mutual information on the overlap of the two slabs (block-averaged to
    ``REGISTRATION_PIXEL_MM`` in-plane, at most ``REGISTRATION_SAMPLES`` fixed-seed samples), Euler
    3D transform centred on the overlap, two pyramid levels. Deterministic: single-threaded and
    seeded.

    Args:
        fixed: The upper slab.
        moving: The slab below it.
        seed: Seeds the metric's sampling.

    Returns:
        The 4x4 correction, to multiply ``moving.affine`` by on the left.

    Raises:
        CordfuseError: the slabs overlap too little, or the overlap is blank.
    """
    import SimpleITK as sitk

    z_lo = fixed.z_extent()[0]
    z_hi = moving.z_extent()[1]
    target = (REGISTRATION_PIXEL_MM,) * 3
    fixed_data, fixed_affine, _ = block_mean(*_overlap_crop(fixed, z_lo, z_hi, margin=0.0), target)
    moving_data, moving_affine, _ = block_mean(
        *_overlap_crop(moving, z_lo, z_hi, margin=10.0), target
    )
    fixed_image = _to_sitk(fixed_data, fixed_affine)
    moving_image = _to_sitk(moving_data, moving_affine)
    centre = apply_affine(fixed_affine, (np.asarray(fixed_data.shape) - 1) / 2)

    # Single-threaded: ITK's pool hands work units to threads in a varying order, so threaded
    # sums differ on every run and the optimiser's path drifts (1e-3 mm between two runs of the
    # same pair, enough to change predictions).
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        method = sitk.ImageRegistrationMethod()  # takes the global default: one thread
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        method.SetMetricSamplingStrategy(method.RANDOM)
        fraction = min(1.0, REGISTRATION_SAMPLES / fixed_data.size)
        method.SetMetricSamplingPercentage(fraction, seed)
        method.SetInterpolator(sitk.sitkLinear)
        method.SetOptimizerAsRegularStepGradientDescent(
            learningRate=1.0,
            minStep=1e-3,
            numberOfIterations=200,
            relaxationFactor=0.6,
            gradientMagnitudeTolerance=1e-8,
        )
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetShrinkFactorsPerLevel([2, 1])
        method.SetSmoothingSigmasPerLevel([1.0, 0.0])
        method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        initial = sitk.Euler3DTransform()
        initial.SetCenter((_LPS[:3, :3] @ centre).tolist())
        method.SetInitialTransform(initial, inPlace=True)
        method.Execute(fixed_image, moving_image)
    except RuntimeError as exc:
        last = [line for line in str(exc).splitlines() if line.strip()][-1:] or ["unknown"]
        raise CordfuseError(f"{moving.name}: slab registration failed ({last[0].strip()})") from exc
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    rotation = np.array(initial.GetMatrix()).reshape(3, 3)
    translation = np.array(initial.GetTranslation())
    centre_lps = np.array(initial.GetCenter())
    fixed_to_moving = np.eye(4)  # ITK: maps fixed physical points to moving ones (LPS)
    fixed_to_moving[:3, :3] = rotation
    fixed_to_moving[:3, 3] = centre_lps + translation - rotation @ centre_lps
    fixed_to_moving_ras = _LPS @ fixed_to_moving @ _LPS
    return np.linalg.inv(fixed_to_moving_ras)
