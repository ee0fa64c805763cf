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
    Spinal Cord Toolbox (``sct_deepseg spinalcord``, then ``sct_get_centerline -method fitseg``).

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
from cordfuse.io import apply_affine, atomic_write_text, voxel_sizes

# Cord half-axes (LR, AP) in mm tried by the detector; the CSF ring hugs the cord boundary and
# the outer zone samples the tissue beyond the canal.
CORD_SIZES_MM = ((4.5, 3.2), (5.5, 3.8), (6.8, 4.6))
RING_OFFSETS_MM = (0.7, 3.0)
OUTER_OFFSETS_MM = (4.5, 8.0)
COARSE_INPLANE_MM = 1.0
COARSE_SI_MM = 2.5
MAX_CANDIDATES = 8
REFINE_STEP_MM = 2.0
CORD_MARGIN_MM = 0.5  # refinement window: the cord ellipse grown by this margin
CANAL_WEIGHT = 1.5
CENTRE_PRIOR = 0.3  # spinal FOVs are centred on the spine: a weak pull towards the FOV centre
MIDLINE_PRIOR = 0.5  # on wide axial FOVs: pull towards the left-right symmetry axis ...
MIDLINE_SCALE_MM = 20.0  # ... costing MIDLINE_PRIOR at 20 mm off the axis
SURFACE_MARGIN_MM = 15.0  # the cord is never this close to the air around the body
WIDE_FOV_MM = 80.0  # in-plane extent from which the body outline and its midline are in view
BACKGROUND_LEVEL = 0.05  # normalised intensity below which border-connected voxels are air
JUMP_PENALTY = 0.15  # cost per mm^2 of in-plane jump, per mm of S-I distance


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
        return float(self.points[0, 2]), float(self.points[-1, 2])

    def xy_at(self, z) -> np.ndarray:
        """In-plane position ``(len(z), 2)`` at S-I positions ``z`` (constant beyond the ends)."""
        z = np.asarray(z, dtype=float)
        p = self.points
        return np.stack([np.interp(z, p[:, 2], p[:, 0]), np.interp(z, p[:, 2], p[:, 1])], axis=-1)

    def to_csv(self, path: str | Path) -> None:
        lines = ["x,y,z"] + [f"{x:.3f},{y:.3f},{z:.3f}" for x, y, z in self.points]
        atomic_write_text(path, "\n".join(lines) + "\n")

    @classmethod
    def from_csv(cls, path: str | Path) -> Centerline:
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


def centerline_from_mask(mask: np.ndarray, affine: np.ndarray, *, smooth_mm: float = 0.0):
    """Centroid of the mask in each axial slice (slices along the S-I voxel axis), world mm."""
    data, canon = _canonical(mask > 0.5, affine)
    points = []
    for k in range(data.shape[2]):
        if data[:, :, k].any():
            ij = np.argwhere(data[:, :, k]).mean(axis=0)
            points.append(apply_affine(canon, [ij[0], ij[1], k]))
    if len(points) < 2:
        raise CordfuseError("cord mask covers fewer than two axial slices")
    points = np.array(points)
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


def _coarsen(fine: _Slices) -> tuple[_Slices, tuple[int, int, int]]:
    """Average-pool to ~1 mm in-plane and ~2.5 mm S-I for the global search."""
    targets = (COARSE_INPLANE_MM, COARSE_INPLANE_MM, COARSE_SI_MM)
    shape = fine.data.shape
    factors = tuple(
        max(1, min(n, round(t / s))) for t, s, n in zip(targets, fine.spacing, shape, strict=True)
    )
    counts = [n // f for n, f in zip(shape, factors, strict=True)]
    data = fine.data[: counts[0] * factors[0], : counts[1] * factors[1], : counts[2] * factors[2]]
    data = data.reshape(counts[0], factors[0], counts[1], factors[1], counts[2], factors[2])
    pooled = data.mean(axis=(1, 3, 5))
    scale = np.eye(4)
    scale[:3, :3] = np.diag(factors)
    scale[:3, 3] = (np.asarray(factors) - 1) / 2
    affine = fine.affine @ scale
    return _Slices(pooled, affine, voxel_sizes(affine)), factors


def detect_centerline(
    data: np.ndarray, affine: np.ndarray, *, polarity: str = "auto", smooth_mm: float = 3.0
) -> Centerline:
    """Find the cord centreline of an image of any contrast (see the module docstring).

    Args:
        data: 3D image.
        affine: its voxel-to-world affine.
        polarity: ``"bright-csf"`` (T2, STIR, T2*), ``"dark-csf"`` (T1, MP2RAGE) or ``"auto"``.
        smooth_mm: Gaussian smoothing of the path along S-I (mm).

    Raises:
        CordfuseError: no cord-like structure found.
    """
    canon_data, canon_affine = _canonical(data, affine)
    if not np.isfinite(canon_data).all():
        raise CordfuseError("image has NaN/Inf voxels")
    fine = _Slices(canon_data, canon_affine, voxel_sizes(canon_affine))
    coarse, factors = _coarsen(fine)
    image = _normalise(coarse.data)
    extent = np.asarray(coarse.data.shape[:2]) * coarse.spacing[:2]
    if extent.min() >= WIDE_FOV_MM:  # the whole neck is in view: air and body surface exist
        valid = _tissue(coarse.data, image)
        deep = _deep_enough(valid, coarse.data, coarse.spacing)
    else:
        valid = coarse.data != 0  # exact zeros: outside the acquired field of view
        deep = np.ones(coarse.data.shape, dtype=bool)
    fine_norm = _Slices(_normalise(canon_data), canon_affine, fine.spacing)
    signs = {"bright-csf": [1.0], "dark-csf": [-1.0], "auto": [1.0, -1.0]}[polarity]
    response = {sign: np.full(image.shape, -np.inf, np.float32) for sign in signs}
    for half_axes in CORD_SIZES_MM:
        zones = _zone_means(image, valid, coarse.spacing, half_axes)
        for sign in signs:
            np.maximum(response[sign], _response(sign, zones), out=response[sign])
    best = None
    for sign in signs:
        result = _detect(fine_norm, coarse, factors, sign, response[sign], deep)
        if result is not None and (best is None or result[1] > best[1]):
            best = result
    if best is None:
        raise CordfuseError("no spinal cord found (no cord-in-CSF pattern along S-I)")
    return Centerline(_smooth(best[0], smooth_mm))


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


def _zone_means(image: np.ndarray, valid: np.ndarray, spacing, half_axes) -> list[np.ndarray]:
    """Mean intensity inside the cord, in each quarter of the CSF ring and beyond the canal.

    Normalised convolution: only ``valid`` voxels count, so the field-of-view border and
    zero-filled regions do not look like dark tissue. Where a zone has too little valid support
    its mean is NaN (the cord and the ring) or unconstrained (the outer zone).
    """
    from scipy.signal import fftconvolve

    a, b = half_axes
    # The cord zone is its white-matter wall (0.45-0.85 of the half-axes): on T2* the grey matter
    # is nearly as bright as CSF, while the white matter stays darker on every T2-like contrast.
    zones = [((-0.55 * b, -0.15 * b), None, 0.9)]
    zones += [(RING_OFFSETS_MM, sector, 0.6) for sector in range(4)]
    zones += [(OUTER_OFFSETS_MM, None, 0.3), ((-1.0, RING_OFFSETS_MM[1]), None, 0.6)]
    weights = valid.astype(np.float32)
    out = []
    for offsets, sector, support in zones:
        kernel = _ellipse_zone(spacing, half_axes, offsets, sector)[:, :, None]
        num = fftconvolve(image * weights, kernel, mode="same", axes=(0, 1))
        den = fftconvolve(weights, kernel, mode="same", axes=(0, 1))
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(np.where(den > support, num / np.maximum(den, 1e-6), np.nan))
    return out


def _response(sign: float, zones) -> np.ndarray:
    """Cord-in-canal response: every quarter of the CSF ring must differ from the cord inside it,
    and the ring from the tissue outside it (where known), in the direction ``sign`` (+1: CSF
    brighter, as on T2). A bright fat band or a vessel fails the all-around test."""
    centre, *quarters, outer, canal = (sign * z for z in zones)
    # Mean over the four quarters: CSF is often invisible on one side (the cord touching the
    # canal wall, a small field of view), while a fat band scores on one side only.
    ring_contrast = sum(q - centre for q in quarters) / 4
    # The canal as a whole (cord + CSF) against the tissue beyond it: carries the detection
    # where cord and CSF are close (T2*: bright grey matter).
    canal_contrast = np.where(np.isnan(outer), 0.0, canal - outer)
    return np.nan_to_num(ring_contrast + CANAL_WEIGHT * canal_contrast, nan=-1.0)


def _tissue(data: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Voxels that show the subject: not zero-filled (outside the acquired field of view) and
    not the air around the body (dark regions connected to the in-plane border). Body-surface
    fat next to air otherwise mimics a canal."""
    dark = image < BACKGROUND_LEVEL
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
    return np.clip((data - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)


def _candidates(resp_slice: np.ndarray, spacing) -> np.ndarray:
    size = (max(3, round(6.0 / spacing[0])), max(3, round(6.0 / spacing[1])))
    peaks = (resp_slice == ndimage.maximum_filter(resp_slice, size=size)) & (resp_slice > 0)
    ij = np.argwhere(peaks)
    if len(ij) == 0:
        ij = np.array([np.unravel_index(np.argmax(resp_slice), resp_slice.shape)])
    values = resp_slice[ij[:, 0], ij[:, 1]]
    order = np.argsort(values)[::-1][:MAX_CANDIDATES]
    return ij[order]


def _viterbi(cands: list[np.ndarray], scores: list[np.ndarray], spacing) -> list[int]:
    sx, sy, sz = spacing
    cost = -scores[0]
    back = []
    for k in range(1, len(cands)):
        d = (cands[k][:, None, :] - cands[k - 1][None, :, :]) * np.array([sx, sy])
        trans = JUMP_PENALTY * (d**2).sum(-1) / sz
        total = cost[None, :] + trans
        arg = np.argmin(total, axis=1)
        back.append(arg)
        cost = total[np.arange(len(arg)), arg] - scores[k]
    path = [int(np.argmin(cost))]
    for arg in reversed(back):
        path.append(int(arg[path[-1]]))
    return path[::-1]


def _detect(fine: _Slices, coarse: _Slices, factors, sign: float, resp, deep):
    scale = np.percentile(resp, 99.9)
    if not np.isfinite(scale) or scale <= 0:
        return None
    raw = resp
    prior = _position_prior(coarse)
    resp = np.where(deep, resp / scale - prior[:, :, None], -1.0)
    nz = resp.shape[2]
    cands = [_candidates(resp[:, :, k], coarse.spacing) for k in range(nz)]
    scores = [resp[c[:, 0], c[:, 1], k] for k, c in enumerate(cands)]
    path = _viterbi(cands, scores, coarse.spacing)
    seeds = np.array([cands[k][path[k]] for k in range(nz)], dtype=float)
    strength = np.array([scores[k][path[k]] for k in range(nz)])
    # Coarse path -> every native slice (coarse voxel centres in fine voxel units).
    fi, fj, fk = factors
    coarse_k = fk * np.arange(nz) + (fk - 1) / 2
    # Refine on slices ~REFINE_STEP_MM apart: the path is smoothed over several mm anyway.
    step = max(1, round(REFINE_STEP_MM / fine.spacing[2]))
    fine_k = np.arange(0, fine.data.shape[2], step)
    seed_i = np.interp(fine_k, coarse_k, fi * seeds[:, 0] + (fi - 1) / 2)
    seed_j = np.interp(fine_k, coarse_k, fj * seeds[:, 1] + (fj - 1) / 2)
    nearest = np.clip(np.rint((fine_k - (fk - 1) / 2) / fk).astype(int), 0, nz - 1)
    # Refine with every cord size and keep the median: robust to the size the search picked.
    refined = np.array([
        np.median([_refine(fine, sign, k, (si, sj), size) for size in CORD_SIZES_MM], axis=0)
        for k, si, sj in zip(fine_k, seed_i, seed_j, strict=True)
    ])
    valid = _cord_extent(strength[nearest], refined[:, 2])
    if valid.sum() < 2:
        return None
    ks = fine_k[valid]
    ij = refined[valid, :2]
    ij = np.stack([ndimage.median_filter(ij[:, a], size=5, mode="nearest") for a in (0, 1)], 1)
    world = apply_affine(fine.affine, np.c_[ij, ks])
    # Path quality, comparable between polarities (same intensity units): mean raw response.
    coarse_valid = np.unique(nearest[valid])
    quality = float(np.mean([raw[seeds[k, 0].astype(int), seeds[k, 1].astype(int), k]
                             for k in coarse_valid]))
    return world, quality


def _position_prior(coarse: _Slices) -> np.ndarray:
    """Penalty on in-plane positions: a weak pull towards the FOV centre (spinal FOVs are
    centred on the spine) and, on wide axial FOVs, a pull towards the body's left-right
    symmetry axis, on which the cord lies (vertebral arteries and jugulars come in pairs)."""
    shape, spacing = coarse.data.shape, coarse.spacing
    x = (np.arange(shape[0]) - (shape[0] - 1) / 2) * spacing[0]
    y = (np.arange(shape[1]) - (shape[1] - 1) / 2) * spacing[1]
    half_diagonal = max(np.hypot(x[-1], y[-1]), 1e-6)
    prior = CENTRE_PRIOR * (x[:, None] ** 2 + y[None, :] ** 2) / half_diagonal**2
    if x[-1] - x[0] >= WIDE_FOV_MM:
        midline = _symmetry_axis(coarse.data) * spacing[0] + x[0]
        prior = prior + MIDLINE_PRIOR * ((x[:, None] - midline) / MIDLINE_SCALE_MM) ** 2
    return prior


def _deep_enough(valid: np.ndarray, data: np.ndarray, spacing) -> np.ndarray:
    """False within SURFACE_MARGIN_MM of the air around the body (the cord is always deep)."""
    air = ~valid & (data != 0)
    if not air.any():
        return np.ones_like(valid)
    depth = np.stack([
        ndimage.distance_transform_edt(~air[:, :, k], sampling=spacing[:2])
        for k in range(air.shape[2])
    ], axis=2)
    return depth >= SURFACE_MARGIN_MM


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


def _refine(fine: _Slices, sign: float, k: int, seed, half_axes, iterations: int = 3):
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
        rho_ring_in = (x / (a + RING_OFFSETS_MM[0])) ** 2 + (y / (b + RING_OFFSETS_MM[0])) ** 2
        rho_ring_out = (x / (a + RING_OFFSETS_MM[1])) ** 2 + (y / (b + RING_OFFSETS_MM[1])) ** 2
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
        weights = frac * (((x / (a + CORD_MARGIN_MM)) ** 2 + (y / (b + CORD_MARGIN_MM)) ** 2) <= 1)
        total = weights.sum()
        if total <= 0:
            cnr = 0.0
            break
        ci = float((weights * ii).sum() / total + lo_i)
        cj = float((weights * jj).sum() / total + lo_j)
        cnr = float(contrast / (np.std(inner) + 0.02))
    return np.array([ci, cj, cnr])


def _cord_extent(strength: np.ndarray, contrast: np.ndarray) -> np.ndarray:
    """Slices that belong to the cord: the longest run where the cord pattern is present."""
    reference = np.median(strength[strength > 0]) if (strength > 0).any() else 0.0
    good = (strength > 0.35 * reference) & (contrast > 1.0)
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
    """Centreline by Spinal Cord Toolbox: deepseg cord segmentation, then ``fitseg``.

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
        img = nib.load(str(out) + ".nii.gz")
        return centerline_from_mask(np.asarray(img.dataobj), img.affine)
