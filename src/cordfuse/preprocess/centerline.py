"""Spinal-cord centreline of one image, found independently for every sequence (paper, 2.2).

Three backends:

``auto`` (default, no model download)
    1. The image is put in its closest RAS voxel order; each axial slice (along the S-I voxel
       axis) is smoothed at two scales. Their difference responds to the cord-in-CSF pattern, a
       ~4-6 mm blob inside a brighter (T2, STIR, T2*) or darker (T1, MP2RAGE) ring. Both
       polarities are tried and the more consistent one is kept.
    2. The local maxima of each slice are candidates; a Viterbi pass picks the path along S-I
       that maximises the response minus a penalty on in-plane jumps (mm^2 per mm of S-I).
    3. In each slice, the cord around the path point is estimated as a partial-volume fraction
       between the cord and CSF intensities; its weighted centroid gives a sub-voxel position.
    4. Slices where the pattern is weak (beyond the conus, outside the canal) end the cord;
       outliers are removed by a running median, then the path is smoothed along S-I.

``mask``
    Centroid of a cord mask in each axial slice, smoothed.

``sct``
    Spinal Cord Toolbox (``sct_deepseg spinalcord -i IMAGE -o SEG``, then ``sct_get_centerline -i
    SEG -method fitseg -o OUT``). The syntax is SCT 7.0's and later (``sct_deepseg TASK``; SCT 6.x
    used ``sct_deepseg -task seg_sc_contrast_agnostic``); ``sct_get_centerline``'s options have
    been stable since SCT 5. Its discrete centreline NIfTI is read through its own affine, in
    whatever orientation SCT wrote it.

A :class:`Centerline` holds points in world RAS+ millimetres, ordered inferior to superior.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from cordfuse.errors import CordfuseError
from cordfuse.io import apply_affine, atomic_write_text, block_mean, read_volume, voxel_sizes


@dataclass(frozen=True)
class DetectorParams:
    """Tuning constants of the ``auto`` detector, in millimetres unless said otherwise.

    The defaults were tuned on the synthetic cohorts and the native real scans, then checked at
    clinical geometry (3-4 mm sagittal, 4-5 mm axial slices; see ``tests/test_centerline.py``).

    Attributes:
        cord_sizes_mm: cord half-axes (left-right, antero-posterior) tried by the detector.
        ring_offsets_mm: the CSF ring, from and to this far beyond the cord boundary.
        outer_offsets_mm: the tissue beyond the canal, from and to this far beyond the cord.
        coarse_inplane_mm: in-plane pixel of the global search grid.
        coarse_si_mm: S-I step of the global search grid.
        peak_spacing_mm: candidates of one slice are local maxima at least this far apart.
        max_candidates: candidates kept per slice for the path search.
        jump_penalty: path cost per mm^2 of in-plane jump, per mm of S-I distance.
        refine_step_mm: S-I distance between the slices refined at native resolution.
        cord_margin_mm: the refinement window is the cord ellipse grown by this margin.
        canal_weight: weight of the canal (cord + CSF) against the tissue beyond it, on bright-CSF
            contrasts only. It carries the detection where cord and CSF are close (T2*: bright
            grey matter); on dark-CSF contrasts (T1) bone and muscle beyond the canal are as dark
            as CSF once thick slices average them, and fat pads between muscles then win.
        centre_prior: a weak pull towards the FOV centre (spinal FOVs are centred on the spine),
            in units of the normalised response at the FOV corner.
        wide_fov_mm: in-plane extent from which the body outline and its midline are in view.
        midline_prior: on wide FOVs, the cost of being ``midline_scale_mm`` off the left-right
            symmetry axis, on which the cord lies (vessels come in pairs).
        midline_scale_mm: see ``midline_prior``.
        surface_margin_mm: the cord is never this close to the air around the body.
        background_level: normalised intensity below which border-connected voxels are air.
        extent_strength: a slice belongs to the cord where its path response exceeds this
            fraction of the median response ...
        extent_cnr: ... and the refined cord-CSF contrast-to-noise ratio exceeds this.
        mirror_max_spacing_mm: on bright-CSF contrasts, a left-right symmetry refinement
            removes the pull of bright grey matter (T2*) on the partial-volume centroid, where the
            left-right pixel is at most this (the cord must be resolved across; thick sagittal
            slices are not). On dark-CSF contrasts the centroid is unbiased and is kept.
        max_median_mm: a sequence's centreline whose median in-plane distance to the T2Sag one
            exceeds this is implausible, as is one with ...
        max_p90_mm: ... a 90th percentile beyond this. The cord is 8-13 mm wide, so 5 mm (or
            10 % of the path at 8 mm) has left it, while patients rarely move more than 2-3 mm
            between two sequences of one session.
        min_coverage: a centreline spanning less than this fraction of the S-I range where its
            field of view meets the T2Sag cord is too short.
    """

    cord_sizes_mm: tuple[tuple[float, float], ...] = ((4.5, 3.2), (5.5, 3.8), (6.8, 4.6))
    ring_offsets_mm: tuple[float, float] = (0.7, 3.0)
    outer_offsets_mm: tuple[float, float] = (4.5, 8.0)
    coarse_inplane_mm: float = 1.0
    coarse_si_mm: float = 2.5
    peak_spacing_mm: float = 6.0
    max_candidates: int = 8
    jump_penalty: float = 0.15
    refine_step_mm: float = 2.0
    cord_margin_mm: float = 0.5
    canal_weight: float = 1.5
    centre_prior: float = 0.3
    wide_fov_mm: float = 80.0
    midline_prior: float = 0.5
    midline_scale_mm: float = 20.0
    surface_margin_mm: float = 15.0
    background_level: float = 0.05
    extent_strength: float = 0.35
    extent_cnr: float = 1.0
    mirror_max_spacing_mm: float = 1.5
    max_median_mm: float = 5.0
    max_p90_mm: float = 8.0
    min_coverage: float = 0.5


DEFAULT_PARAMS = DetectorParams()


@dataclass(frozen=True)
class Centerline:
    """Cord centreline: ``points`` (N, 3) world RAS+ mm, strictly increasing z."""

    points: np.ndarray

    def __post_init__(self):
        points = np.asarray(self.points, dtype=float)
        if points.ndim != 2 or points.shape[1] != 3 or len(points) < 2:
            raise ValueError("a centreline needs at least two (x, y, z) points")
        order = np.argsort(points[:, 2])
        points = points[order]
        keep = np.concatenate([[True], np.diff(points[:, 2]) > 1e-6])
        object.__setattr__(self, "points", points[keep])

    @property
    def z_range(self) -> tuple[float, float]:
        """The lowest and highest S-I position (mm) of the centreline."""
        return float(self.points[0, 2]), float(self.points[-1, 2])

    def xy_at(self, z) -> np.ndarray:
        """In-plane position ``(len(z), 2)`` at S-I positions ``z`` (constant beyond the ends).

        Args:
            z: S-I positions (mm).

        Returns:
            The ``(x, y)`` world position at each, linearly interpolated.

        Example:
            >>> line = Centerline(np.array([[0.0, 0.0, 0.0], [2.0, 4.0, 10.0]]))
            >>> line.xy_at([5.0, 20.0]).tolist()
            [[1.0, 2.0], [2.0, 4.0]]
        """
        z = np.asarray(z, dtype=float)
        p = self.points
        return np.stack([np.interp(z, p[:, 2], p[:, 0]), np.interp(z, p[:, 2], p[:, 1])], axis=-1)

    def to_csv(self, path: str | Path) -> None:
        """Write the points as ``x,y,z`` CSV (world mm, 3 decimals), atomically.

        Args:
            path: The CSV file.
        """
        lines = ["x,y,z"] + [f"{x:.3f},{y:.3f},{z:.3f}" for x, y, z in self.points]
        atomic_write_text(path, "\n".join(lines) + "\n")

    @classmethod
    def from_csv(cls, path: str | Path) -> Centerline:
        """Read a centreline :meth:`to_csv` wrote (or any ``x,y,z`` CSV with a header).

        Args:
            path: The CSV file.

        Returns:
            The centreline.

        Raises:
            CordfuseError: not a readable ``x,y,z`` CSV.
        """
        try:
            data = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
        except (OSError, ValueError) as exc:
            raise CordfuseError(f"{path}: not a centreline CSV (x,y,z) ({exc})") from exc
        return cls(data)


def _canonical(data: np.ndarray, affine: np.ndarray):
    """Data and affine with voxel axes in the closest RAS order (no resampling)."""
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    canonical = nib.as_closest_canonical(img)
    return np.asarray(canonical.dataobj, dtype=np.float32), canonical.affine


# ---------------------------------------------------------------------------------------------
# mask backend


def centerline_from_mask(
    mask: np.ndarray, affine: np.ndarray, *, smooth_mm: float = 0.0
) -> Centerline:
    """Centroid of the mask in each axial slice (slices along the S-I voxel axis), world mm.

    Args:
        mask: A cord segmentation (values above 0.5 are cord).
        affine: Its voxel-to-world affine.
        smooth_mm: Gaussian smoothing of the path along S-I (mm); 0 keeps the centroids.

    Returns:
        The centreline.

    Raises:
        CordfuseError: the mask covers fewer than two axial slices.

    Example:
        >>> mask = np.zeros((5, 5, 4))
        >>> mask[1:3, 2, :] = 1.0
        >>> centerline_from_mask(mask, np.eye(4)).points[0].tolist()
        [1.5, 2.0, 0.0]
    """
    data, canon = _canonical(mask > 0.5, affine)
    centroids = []
    for k in range(data.shape[2]):
        if data[:, :, k].any():
            ij = np.argwhere(data[:, :, k]).mean(axis=0)
            centroids.append(apply_affine(canon, [ij[0], ij[1], k]))
    if len(centroids) < 2:
        raise CordfuseError("cord mask covers fewer than two axial slices")
    points = np.array(centroids)
    if smooth_mm > 0:
        points = _smooth(points, smooth_mm)
    return Centerline(points)


def _smooth(points: np.ndarray, sigma_mm: float) -> np.ndarray:
    """Gaussian smoothing of x(z), y(z) with a sigma in mm of S-I (keeps the ends)."""
    z = points[:, 2]
    step = np.median(np.abs(np.diff(z))) if len(z) > 1 else 1.0
    sigma = sigma_mm / max(step, 1e-6)
    if sigma < 0.3:
        return points
    out = points.copy()
    for axis in (0, 1):
        out[:, axis] = ndimage.gaussian_filter1d(points[:, axis], sigma, mode="nearest")
    return out


# ---------------------------------------------------------------------------------------------
# auto backend


@dataclass
class _Slices:
    data: np.ndarray
    affine: np.ndarray
    spacing: np.ndarray


def _coarsen(fine: _Slices, params: DetectorParams) -> tuple[_Slices, tuple[int, int, int]]:
    """Average-pool to ~1 mm in-plane and ~2.5 mm S-I for the global search."""
    targets = (params.coarse_inplane_mm, params.coarse_inplane_mm, params.coarse_si_mm)
    pooled, affine, factors = block_mean(fine.data, fine.affine, targets)
    return _Slices(pooled, affine, voxel_sizes(affine)), factors


# The sign(s) each polarity tries: +1 reads CSF brighter than the cord.
POLARITY_SIGNS = {"bright-csf": (1.0,), "dark-csf": (-1.0,), "auto": (1.0, -1.0)}

# CSF polarity of the BIDS suffixes that say it: T1-weighted images (and MP2RAGE's UNIT1) show
# dark CSF, T2-weighted ones (T2*, STIR, PD) bright CSF.
SUFFIX_POLARITY = {
    "T1w": "dark-csf",
    "UNIT1": "dark-csf",
    "MP2RAGE": "dark-csf",
    "T2w": "bright-csf",
    "T2star": "bright-csf",
    "T2starw": "bright-csf",
    "STIR": "bright-csf",
    "PDw": "bright-csf",
    "PD": "bright-csf",
}


def polarity_from_name(path: str | Path) -> str | None:
    """The CSF polarity a BIDS file name states through its suffix (``..._T1w.nii.gz`` ->
    ``"dark-csf"``), or None when it states none. Reading it from the image alone can fail: a T1
    at thick sagittal slices shows a bright-CSF-like pattern in the fat around the canal.

    Args:
        path: An image file with a BIDS name.

    Returns:
        ``"bright-csf"``, ``"dark-csf"`` or None.

    Example:
        >>> polarity_from_name("sub-01_acq-sag_T1w.nii.gz"), polarity_from_name("scan.nii.gz")
        ('dark-csf', None)
    """
    from cordfuse.sequences import parse_bids_name

    try:
        suffix = parse_bids_name(Path(path).name).suffix
    except CordfuseError:
        return None
    return SUFFIX_POLARITY.get(suffix)


def detect_centerline(
    data: np.ndarray,
    affine: np.ndarray,
    *,
    polarity: str = "auto",
    smooth_mm: float = 3.0,
    params: DetectorParams = DEFAULT_PARAMS,
) -> Centerline:
    """Find the cord centreline of an image of any contrast (see the module docstring).

    Args:
        data: 3D image.
        affine: its voxel-to-world affine.
        polarity: ``"bright-csf"`` (T2, STIR, T2*), ``"dark-csf"`` (T1, MP2RAGE) or ``"auto"``.
        smooth_mm: Gaussian smoothing of the path along S-I (mm).
        params: the detector's tuning constants.

    Returns:
        The centreline, in world mm.

    Raises:
        CordfuseError: no cord-like structure found.
    """
    canon_data, canon_affine = _canonical(data, affine)
    if not np.isfinite(canon_data).all():
        raise CordfuseError("image has NaN/Inf voxels")
    fine = _Slices(canon_data, canon_affine, voxel_sizes(canon_affine))
    coarse, factors = _coarsen(fine, params)
    image = _normalise(coarse.data)
    extent = np.asarray(coarse.data.shape[:2]) * coarse.spacing[:2]
    if extent.min() >= params.wide_fov_mm:  # the whole neck is in view: air and body surface exist
        valid = _tissue(coarse.data, image, params.background_level)
        deep = _deep_enough(valid, coarse.data, coarse.spacing, params.surface_margin_mm)
    else:
        valid = coarse.data != 0  # exact zeros: outside the acquired field of view
        deep = np.ones(coarse.data.shape, dtype=bool)
    fine_norm = _Slices(_normalise(canon_data), canon_affine, fine.spacing)
    signs = POLARITY_SIGNS[polarity]
    response = {sign: np.full(image.shape, -np.inf, np.float32) for sign in signs}
    quality_map = {sign: np.full(image.shape, -np.inf, np.float32) for sign in signs}
    for half_axes in params.cord_sizes_mm:
        zones = _zone_means(image, valid, coarse.spacing, half_axes, params)
        for sign in signs:
            path_map, symmetric = _response(sign, zones, params)
            np.maximum(response[sign], path_map, out=response[sign])
            np.maximum(quality_map[sign], symmetric, out=quality_map[sign])
    best = None
    for sign in signs:
        result = _detect(
            fine_norm, coarse, factors, sign, response[sign], quality_map[sign], deep, params
        )
        if result is not None and (best is None or result[1] > best[1]):
            best = result
    if best is None:
        raise CordfuseError("no spinal cord found (no cord-in-CSF pattern along S-I)")
    return Centerline(_smooth(best[0], smooth_mm))


def refine_along(
    data: np.ndarray,
    affine: np.ndarray,
    guide: Centerline,
    *,
    polarity: str = "auto",
    smooth_mm: float = 3.0,
    params: DetectorParams = DEFAULT_PARAMS,
) -> Centerline:
    """The cord of an image found around another scan's centreline (the fallback of
    :func:`check_against_reference`): every ``refine_step_mm`` of the image's S-I extent that
    ``guide`` spans, the partial-volume centroid of the cord is searched around the guide, and
    kept where it moves at most ``max(cord_sizes_mm)`` (else the guide's point stays).

    Args:
        data: 3D image.
        affine: Its voxel-to-world affine.
        guide: Another scan's centreline (T2Sag's).
        polarity: ``"bright-csf"``, ``"dark-csf"`` or ``"auto"``.
        smooth_mm: Gaussian smoothing of the path along S-I (mm).
        params: The detector's tuning constants.

    Returns:
        The centreline over the part of the image the guide spans.

    Raises:
        CordfuseError: the image does not overlap the guide along S-I, or shows no cord-in-CSF
            contrast anywhere along it.
    """
    canon_data, canon_affine = _canonical(data, affine)
    fine = _Slices(_normalise(canon_data), canon_affine, voxel_sizes(canon_affine))
    # The guide in this image's voxels, as a function of the S-I voxel index.
    along = np.arange(guide.z_range[0], guide.z_range[1] + 0.25, 0.25)
    vox = apply_affine(np.linalg.inv(canon_affine), np.c_[guide.xy_at(along), along])
    order = np.argsort(vox[:, 2])
    vox = vox[order]
    step = max(1, round(params.refine_step_mm / fine.spacing[2]))
    slices = np.arange(0, canon_data.shape[2], step)
    slices = slices[(slices >= vox[0, 2]) & (slices <= vox[-1, 2])]
    if slices.size < 2:
        raise CordfuseError("the image does not overlap the reference centreline along S-I")
    seeds = np.stack([np.interp(slices, vox[:, 2], vox[:, a]) for a in (0, 1)], axis=1)
    signs = POLARITY_SIGNS[polarity]
    reach = max(max(size) for size in params.cord_sizes_mm)
    best, best_cnr = None, -np.inf
    for sign in signs:
        found = np.array(
            [
                np.median(
                    [_refine(fine, sign, k, seed, size, params) for size in params.cord_sizes_mm],
                    axis=0,
                )
                for k, seed in zip(slices, seeds, strict=True)
            ]
        )
        moved = np.hypot(*((found[:, :2] - seeds) * fine.spacing[:2]).T)
        keep = (found[:, 2] > params.extent_cnr) & (moved <= reach)
        ij = np.where(keep[:, None], found[:, :2], seeds)
        if keep.any() and np.median(found[:, 2]) > best_cnr:
            best, best_cnr = ij, float(np.median(found[:, 2]))
    if best is None:
        raise CordfuseError("no cord visible, even along the reference centreline")
    world = apply_affine(canon_affine, np.c_[best, slices])
    return Centerline(_smooth(world, smooth_mm))


@dataclass(frozen=True)
class Agreement:
    """How a sequence's centreline compares with the T2Sag one (world mm, common S-I range).

    Attributes:
        problem: why the centreline is not trusted (empty when it is).
        median_mm: median in-plane distance to the T2Sag centreline over the common range.
        p90_mm: its 90th percentile.
        coverage: fraction of the expected common S-I range this centreline spans.
    """

    problem: str
    median_mm: float = float("nan")
    p90_mm: float = float("nan")
    coverage: float = float("nan")


def check_against_reference(
    line: Centerline,
    reference: Centerline,
    field_of_view_z: tuple[float, float],
    params: DetectorParams = DEFAULT_PARAMS,
) -> Agreement:
    """Whether ``line`` (one sequence) is plausible against the T2Sag ``reference``.

    Args:
        line: the sequence's own centreline.
        reference: the T2Sag centreline.
        field_of_view_z: the sequence's S-I extent (world mm): where its cord could be found.
        params: the thresholds (``max_median_mm``, ``max_p90_mm``, ``min_coverage``).

    Returns:
        The agreement; its ``problem`` is empty when the centreline is trusted.
    """
    lo = max(reference.z_range[0], field_of_view_z[0])
    hi = min(reference.z_range[1], field_of_view_z[1])
    expected = hi - lo
    if expected <= 0:
        return Agreement("its field of view does not meet the T2Sag cord")
    common_lo, common_hi = max(lo, line.z_range[0]), min(hi, line.z_range[1])
    coverage = max(0.0, common_hi - common_lo) / expected
    if coverage < params.min_coverage:
        return Agreement(
            f"too short ({coverage:.0%} of the {expected:.0f} mm it should span)", coverage=coverage
        )
    z = np.linspace(common_lo, common_hi, max(2, int((common_hi - common_lo) / 1.0) + 1))
    distance = np.hypot(*(line.xy_at(z) - reference.xy_at(z)).T)
    median, p90 = float(np.median(distance)), float(np.percentile(distance, 90))
    problem = ""
    if median > params.max_median_mm or p90 > params.max_p90_mm:
        problem = f"implausible ({median:.1f} mm from the T2Sag centreline, median)"
    return Agreement(problem, median, p90, coverage)


def _ellipse_zone(spacing, half_axes, offsets, sector: int | None = None) -> np.ndarray:
    """Normalised 2D kernel between the ellipses ``half_axes + offsets[0]`` and ``+ offsets[1]``
    (mm; ``offsets[0] < 0`` means from the centre), optionally restricted to one of four
    90-degree sectors (0: +x, 1: +y, 2: -x, 3: -y)."""
    a, b = half_axes
    outer_a, outer_b = a + offsets[1], b + offsets[1]
    half = [max(1, int(np.ceil(outer_a / spacing[0]))), max(1, int(np.ceil(outer_b / spacing[1])))]
    x, y = np.meshgrid(
        np.arange(-half[0], half[0] + 1) * spacing[0],
        np.arange(-half[1], half[1] + 1) * spacing[1],
        indexing="ij",
    )
    kernel = (x / outer_a) ** 2 + (y / outer_b) ** 2 <= 1
    if a + offsets[0] > 0 and b + offsets[0] > 0:
        inner_a, inner_b = a + offsets[0], b + offsets[0]
        kernel &= (x / inner_a) ** 2 + (y / inner_b) ** 2 > 1
    if sector is not None:
        # Angles measured on the ellipse-normalised plane so each sector spans a quarter of it.
        angle = np.degrees(np.arctan2(y / outer_b, x / outer_a)) % 360
        centre = 90.0 * sector
        kernel &= np.abs((angle - centre + 180) % 360 - 180) <= 45
    kernel = kernel.astype(np.float32)
    if kernel.sum() == 0:
        kernel[half[0], half[1]] = 1.0
    return kernel / kernel.sum()


def _zone_means(
    image: np.ndarray, valid: np.ndarray, spacing, half_axes, params: DetectorParams
) -> list[np.ndarray]:
    """Mean intensity inside the cord, in each quarter of the CSF ring and beyond the canal.

    Normalised convolution: only ``valid`` voxels count, so the field-of-view border and
    zero-filled regions do not look like dark tissue. Where a zone has too little valid support
    its mean is NaN (the cord and the ring) or unconstrained (the outer zone).
    """
    from scipy.signal import fftconvolve

    a, b = half_axes
    # The cord zone is its white-matter wall (0.45-0.85 of the half-axes): on T2* the grey matter
    # is nearly as bright as CSF, while the white matter stays darker on every T2-like contrast.
    zones: list[tuple[tuple[float, float], int | None, float]] = [
        ((-0.55 * b, -0.15 * b), None, 0.9)
    ]
    zones += [(params.ring_offsets_mm, sector, 0.6) for sector in range(4)]
    zones += [(params.outer_offsets_mm, None, 0.3), ((-1.0, params.ring_offsets_mm[1]), None, 0.6)]
    weights = valid.astype(np.float32)
    out = []
    for offsets, sector, support in zones:
        kernel = _ellipse_zone(spacing, half_axes, offsets, sector)[:, :, None]
        num = fftconvolve(image * weights, kernel, mode="same", axes=(0, 1))
        den = fftconvolve(weights, kernel, mode="same", axes=(0, 1))
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(np.where(den > support, num / np.maximum(den, 1e-6), np.nan))
    return out


def _response(sign: float, zones, params: DetectorParams) -> tuple[np.ndarray, np.ndarray]:
    """Cord-in-canal response: every quarter of the CSF ring must differ from the cord inside it,
    and the ring from the tissue outside it (where known), in the direction ``sign`` (+1: CSF
    brighter, as on T2). A bright fat band or a vessel fails the all-around test.

    Returns the response the path search uses and the same with the canal term whatever the
    polarity (to compare polarities)."""
    centre, *quarters, outer, canal = (sign * z for z in zones)
    # Mean over the four quarters: CSF is often invisible on one side (the cord touching the
    # canal wall, a small field of view), while a fat band scores on one side only.
    ring_contrast = sum(q - centre for q in quarters) / 4
    # The canal as a whole (cord + CSF) against the tissue beyond it: carries the detection
    # where cord and CSF are close (T2*: bright grey matter).
    canal_contrast = np.where(np.isnan(outer), 0.0, canal - outer)
    weight = params.canal_weight if sign > 0 else 0.0
    response = np.nan_to_num(ring_contrast + weight * canal_contrast, nan=-1.0)
    symmetric = np.nan_to_num(ring_contrast + params.canal_weight * canal_contrast, nan=-1.0)
    return response, symmetric


def _tissue(data: np.ndarray, image: np.ndarray, background_level: float) -> np.ndarray:
    """Voxels that show the subject: not zero-filled (outside the acquired field of view) and
    not the air around the body (dark regions connected to the in-plane border). Body-surface
    fat next to air otherwise mimics a canal."""
    dark = image < background_level
    labels, n = ndimage.label(dark)
    if n:
        border = np.zeros_like(dark)
        border[[0, -1], :, :] = True
        border[:, [0, -1], :] = True
        touching = np.unique(labels[border & dark])
        dark = np.isin(labels, touching[touching > 0])
    return (data != 0) & ~dark


def _normalise(data: np.ndarray) -> np.ndarray:
    """Intensities scaled to [0, 1] between the 1st and 99.5th percentiles of non-zero voxels."""
    values = data[data != 0]
    if values.size == 0:
        return np.zeros_like(data, dtype=np.float32)
    lo, hi = np.percentile(values, [1, 99.5])
    if not hi > lo:  # a constant image: no contrast to find a cord in
        return np.zeros_like(data, dtype=np.float32)
    # no absolute floor on the span: scanners store intensities on any scale (1e-6 .. 1e6)
    return np.clip((data - lo) / (hi - lo), 0, 1).astype(np.float32)


def _candidates(resp_slice: np.ndarray, spacing, params: DetectorParams) -> np.ndarray:
    size = tuple(max(3, round(params.peak_spacing_mm / step)) for step in spacing[:2])
    peaks = (resp_slice == ndimage.maximum_filter(resp_slice, size=size)) & (resp_slice > 0)
    ij = np.argwhere(peaks)
    if len(ij) == 0:
        ij = np.array([np.unravel_index(np.argmax(resp_slice), resp_slice.shape)])
    values = resp_slice[ij[:, 0], ij[:, 1]]
    order = np.argsort(values)[::-1][: params.max_candidates]
    return ij[order]


def _viterbi(cands: list[np.ndarray], scores: list[np.ndarray], spacing, jump_penalty: float):
    sx, sy, sz = spacing
    cost = -scores[0]
    back = []
    for k in range(1, len(cands)):
        d = (cands[k][:, None, :] - cands[k - 1][None, :, :]) * np.array([sx, sy])
        trans = jump_penalty * (d**2).sum(-1) / sz
        total = cost[None, :] + trans
        arg = np.argmin(total, axis=1)
        back.append(arg)
        cost = total[np.arange(len(arg)), arg] - scores[k]
    path = [int(np.argmin(cost))]
    for arg in reversed(back):
        path.append(int(arg[path[-1]]))
    return path[::-1]


def _detect(
    fine: _Slices,
    coarse: _Slices,
    factors,
    sign: float,
    resp,
    quality_map,
    deep,
    params: DetectorParams,
):
    """The path of one polarity: world points and its quality, the mean of ``quality_map`` along
    it (the response with the canal term for both polarities, so that they compare: the path
    search uses it on bright-CSF contrasts only)."""
    scale = np.percentile(resp, 99.9)
    if not np.isfinite(scale) or scale <= 0:
        return None
    prior = _position_prior(coarse, params)
    resp = np.where(deep, resp / scale - prior[:, :, None], -1.0)
    nz = resp.shape[2]
    cands = [_candidates(resp[:, :, k], coarse.spacing, params) for k in range(nz)]
    scores = [resp[c[:, 0], c[:, 1], k] for k, c in enumerate(cands)]
    path = _viterbi(cands, scores, coarse.spacing, params.jump_penalty)
    seeds = np.array([cands[k][path[k]] for k in range(nz)], dtype=float)
    strength = np.array([scores[k][path[k]] for k in range(nz)])
    # Coarse path -> every native slice (coarse voxel centres in fine voxel units).
    fi, fj, fk = factors
    coarse_k = fk * np.arange(nz) + (fk - 1) / 2
    # Refine on slices ~refine_step_mm apart: the path is smoothed over several mm anyway.
    step = max(1, round(params.refine_step_mm / fine.spacing[2]))
    fine_k = np.arange(0, fine.data.shape[2], step)
    seed_i = np.interp(fine_k, coarse_k, fi * seeds[:, 0] + (fi - 1) / 2)
    seed_j = np.interp(fine_k, coarse_k, fj * seeds[:, 1] + (fj - 1) / 2)
    nearest = np.clip(np.rint((fine_k - (fk - 1) / 2) / fk).astype(int), 0, nz - 1)
    # Refine with every cord size and keep the median: robust to the size the search picked.
    refined = np.array(
        [
            np.median(
                [_refine(fine, sign, k, (si, sj), size, params) for size in params.cord_sizes_mm],
                axis=0,
            )
            for k, si, sj in zip(fine_k, seed_i, seed_j, strict=True)
        ]
    )
    valid = _cord_extent(strength[nearest], refined[:, 2], params)
    if valid.sum() < 2:
        return None
    ks = fine_k[valid]
    ij = refined[valid, :2]
    ij = np.stack([ndimage.median_filter(ij[:, a], size=5, mode="nearest") for a in (0, 1)], 1)
    world = apply_affine(fine.affine, np.c_[ij, ks])
    coarse_valid = np.unique(nearest[valid])
    quality = float(
        np.mean([quality_map[int(seeds[k, 0]), int(seeds[k, 1]), k] for k in coarse_valid])
    )
    return world, quality


def _position_prior(coarse: _Slices, params: DetectorParams) -> np.ndarray:
    """Penalty on in-plane positions: a weak pull towards the FOV centre (spinal FOVs are
    centred on the spine) and, on wide axial FOVs, a pull towards the body's left-right
    symmetry axis, on which the cord lies (vertebral arteries and jugulars come in pairs)."""
    shape, spacing = coarse.data.shape, coarse.spacing
    x = (np.arange(shape[0]) - (shape[0] - 1) / 2) * spacing[0]
    y = (np.arange(shape[1]) - (shape[1] - 1) / 2) * spacing[1]
    half_diagonal = max(np.hypot(x[-1], y[-1]), 1e-6)
    prior = params.centre_prior * (x[:, None] ** 2 + y[None, :] ** 2) / half_diagonal**2
    if x[-1] - x[0] >= params.wide_fov_mm:
        midline = _symmetry_axis(coarse.data) * spacing[0] + x[0]
        off_axis = (x[:, None] - midline) / params.midline_scale_mm
        prior = prior + params.midline_prior * off_axis**2
    return prior


def _deep_enough(valid: np.ndarray, data: np.ndarray, spacing, margin_mm: float) -> np.ndarray:
    """False within ``margin_mm`` of the air around the body (the cord is always deep)."""
    air = ~valid & (data != 0)
    if not air.any():
        return np.ones_like(valid)
    depth = np.stack(
        [
            ndimage.distance_transform_edt(~air[:, :, k], sampling=spacing[:2])
            for k in range(air.shape[2])
        ],
        axis=2,
    )
    return depth >= margin_mm


def _symmetry_axis(data: np.ndarray) -> float:
    """Voxel position of the left-right mirror axis that best matches the image with itself."""
    image = _normalise(data)
    n = image.shape[0]
    size = 2 * n
    spectrum = np.fft.rfft(image, n=size, axis=0)
    # sum over x of I(x) I(s - x): a convolution of each row with itself, peak at s = 2 * axis.
    corr = np.fft.irfft(spectrum * spectrum, n=size, axis=0).sum(axis=(1, 2))[: 2 * n - 1]
    ones = np.fft.rfft(np.ones(n), n=size)
    overlap = np.fft.irfft(ones * ones, n=size)[: 2 * n - 1]
    score = corr / np.maximum(overlap, 1.0)
    s = np.arange(2 * n - 1)
    central = (s >= n // 2) & (s <= 2 * n - 2 - n // 2)  # axis within the central half
    return float(s[central][np.argmax(score[central])] / 2)


def _refine(
    fine: _Slices, sign: float, k: int, seed, half_axes, params: DetectorParams, iterations: int = 3
):
    """Partial-volume weighted centroid of the cord around ``seed`` in slice ``k``.

    Returns ``(i, j, cnr)``: the refined voxel position and the cord-CSF contrast-to-noise
    ratio found there (0 when there is no cord-in-CSF pattern).
    """
    sx, sy = fine.spacing[:2]
    a, b = half_axes
    image = fine.data[:, :, k] * sign
    ci, cj = float(seed[0]), float(seed[1])
    cnr = 0.0
    for _ in range(iterations):
        ri, rj = int(np.ceil((a + 4) / sx)), int(np.ceil((b + 4) / sy))
        i0, j0 = int(round(ci)), int(round(cj))
        lo_i, lo_j = max(0, i0 - ri), max(0, j0 - rj)
        roi = image[lo_i : i0 + ri + 1, lo_j : j0 + rj + 1]
        if roi.size == 0:
            break
        ii, jj = np.indices(roi.shape)
        x, y = (ii + lo_i - ci) * sx, (jj + lo_j - cj) * sy
        rho_cord = (x / a) ** 2 + (y / b) ** 2
        ring_in, ring_out = params.ring_offsets_mm
        rho_ring_in = (x / (a + ring_in)) ** 2 + (y / (b + ring_in)) ** 2
        rho_ring_out = (x / (a + ring_out)) ** 2 + (y / (b + ring_out)) ** 2
        inner = roi[rho_cord <= 0.3]
        ring = roi[(rho_ring_in > 1) & (rho_ring_out <= 1)]
        if inner.size == 0 or ring.size < 3:
            break
        cord_level, csf_level = np.median(inner), np.percentile(ring, 90)
        contrast = csf_level - cord_level
        if contrast <= 0:
            cnr = 0.0
            break
        frac = np.clip((csf_level - roi) / contrast, 0, 1)
        # Mean shift with a cord-sized window: CSF inside the window pushes the estimate back
        # towards the cord, while dark tissue beyond a thin CSF layer stays out of reach.
        margin = params.cord_margin_mm
        weights = frac * (((x / (a + margin)) ** 2 + (y / (b + margin)) ** 2) <= 1)
        total = weights.sum()
        if total <= 0:
            cnr = 0.0
            break
        ci = float((weights * ii).sum() / total + lo_i)
        cj = float((weights * jj).sum() / total + lo_j)
        cnr = float(contrast / (np.std(inner) + 0.02))
    if cnr > 0 and sign > 0 and fine.spacing[0] <= params.mirror_max_spacing_mm:
        ci = _mirror_centre(image, ci, cj, fine.spacing, a + params.ring_offsets_mm[1], b)
    return np.array([ci, cj, cnr])


def _mirror_centre(image: np.ndarray, ci: float, cj: float, spacing, reach: float, b: float):
    """Left-right position (voxels) about which the canal's left-right profile (``reach`` mm
    to each side, rows within ``b / 2`` mm of ``cj``) is most symmetric, within 1.5 mm of ``ci``.

    The cord and its CSF are mirror-symmetric left-right, while the partial-volume centroid is
    pulled by whatever is brightest inside the cord (the grey matter on T2*, a lesion)."""
    sx, sy = spacing[:2]
    rows = np.arange(int(np.floor(cj - 0.5 * b / sy)), int(np.ceil(cj + 0.5 * b / sy)) + 1)
    rows = rows[(rows >= 0) & (rows < image.shape[1])]
    if rows.size == 0:
        return ci
    profile = image[:, rows].mean(axis=1)
    x = np.arange(image.shape[0])
    t = np.arange(0.0, reach, min(sx, 0.5)) / sx  # half-widths compared, in voxels
    centres = ci + np.arange(-1.5, 1.5001, 0.1) / sx
    centres = centres[(centres - t[-1] >= 0) & (centres + t[-1] <= x[-1])]
    if centres.size == 0:
        return ci
    left = np.interp(centres[:, None] - t, x, profile)
    right = np.interp(centres[:, None] + t, x, profile)
    return float(centres[np.argmin(((left - right) ** 2).mean(axis=1))])


def _cord_extent(strength: np.ndarray, contrast: np.ndarray, params: DetectorParams):
    """Slices that belong to the cord: the longest run where the cord pattern is present."""
    reference = np.median(strength[strength > 0]) if (strength > 0).any() else 0.0
    good = (strength > params.extent_strength * reference) & (contrast > params.extent_cnr)
    # Close small gaps (a noisy slice), then keep the longest run.
    good = ndimage.binary_closing(good, structure=np.ones(3)) | good
    labels, n = ndimage.label(good)
    if n == 0:
        return good
    sizes = ndimage.sum(good, labels, index=np.arange(1, n + 1))
    return labels == (1 + int(np.argmax(sizes)))


# ---------------------------------------------------------------------------------------------
# SCT backend


def sct_centerline(image_path: str | Path) -> Centerline:
    """Centreline by Spinal Cord Toolbox (>= 7.0): deepseg cord segmentation, then ``fitseg``,
    in a temporary folder removed afterwards.

    Args:
        image_path: The image (NIfTI).

    Returns:
        The centreline of SCT's cord segmentation.

    Raises:
        CordfuseError: SCT is not on PATH, or one of its commands failed.
    """
    for tool in ("sct_deepseg", "sct_get_centerline"):
        if shutil.which(tool) is None:
            raise CordfuseError(
                f"--centerline sct needs Spinal Cord Toolbox, but {tool} is not on PATH "
                "(install SCT, or use --centerline auto or mask)"
            )
    image_path = Path(image_path)
    with tempfile.TemporaryDirectory() as tmp:
        seg = Path(tmp) / "seg.nii.gz"
        out = Path(tmp) / "centerline"
        for cmd in (
            ["sct_deepseg", "spinalcord", "-i", str(image_path), "-o", str(seg)],
            ["sct_get_centerline", "-i", str(seg), "-method", "fitseg", "-o", str(out)],
        ):
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode != 0:
                tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["?"]
                raise CordfuseError(f"{image_path}: {cmd[0]} failed: {tail[0]}")
        data, affine = read_volume(str(out) + ".nii.gz")
        return centerline_from_mask(data, affine)
