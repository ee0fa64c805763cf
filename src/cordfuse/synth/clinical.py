"""Real scans re-acquired at clinical geometry: thick slices, sub-millimetre in-plane pixels.

Public spinal-cord scans with human masks are mostly ~1 mm isotropic research acquisitions,
while clinical MS protocols use 3-4 mm sagittal or 4-5 mm axial slices. :func:`reacquire`
simulates such an acquisition of a real scan: every output voxel averages the input over its
whole slice thickness (a box slice profile, sampled every ``PROFILE_STEP_MM``), and is
interpolated in-plane. A mask goes through the same averaging and is thresholded at half its
partial volume, as a rater would draw it on the thick-slice image.

:func:`split_slabs` cuts an image into overlapping S-I slabs (chunks); moving one of them by a
rigid motion applied to its affine (:func:`cordfuse.synth.cohort.rigid_matrix`) simulates a
patient who moved between the two acquisitions.

Example:
    >>> import numpy as np
    >>> image = np.ones((20, 20, 20), np.float32)
    >>> data, affine = reacquire(image, np.eye(4), ClinicalGeometry("sagittal", 3.0, 0.8))
    >>> data.shape, float(affine[0, 0])   # whole 3 mm slices within the 20 mm field of view
    ((6, 25, 25), 3.0)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cordfuse.io import apply_affine

PROFILE_STEP_MM = 0.25  # sub-slice sampling of the slice profile

_SLICE_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}


@dataclass(frozen=True)
class ClinicalGeometry:
    """An axis-aligned acquisition grid.

    Attributes:
        orientation: ``"sagittal"`` (slices along R-L), ``"coronal"`` or ``"axial"`` (along S-I).
        slice_mm: slice thickness, also the slice spacing (no gap).
        inplane_mm: pixel size within a slice.
    """

    orientation: str
    slice_mm: float
    inplane_mm: float

    def __post_init__(self):
        if self.orientation not in _SLICE_AXIS:
            raise ValueError(f"orientation must be one of {sorted(_SLICE_AXIS)}")
        if self.slice_mm <= 0 or self.inplane_mm <= 0:
            raise ValueError("slice and pixel sizes must be positive")

    @property
    def label(self) -> str:
        """The geometry in words, e.g. ``sagittal 3 mm (0.7 mm in-plane)``."""
        return f"{self.orientation} {self.slice_mm:g} mm ({self.inplane_mm:g} mm in-plane)"

    def spacing(self) -> np.ndarray:
        """The voxel size along R-L, A-P and S-I (mm).

        Returns:
            The three spacings: the slice thickness along the slice axis, the pixel elsewhere.

        Example:
            >>> ClinicalGeometry("sagittal", 3.0, 0.7).spacing().tolist()
            [3.0, 0.7, 0.7]
        """
        spacing = np.full(3, self.inplane_mm)
        spacing[_SLICE_AXIS[self.orientation]] = self.slice_mm
        return spacing


def reacquire(
    data: np.ndarray, affine: np.ndarray, geometry: ClinicalGeometry, *, mask: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The image (or mask) as acquired on ``geometry`` over the same world extent.

    Args:
        data: 3D image or binary mask.
        affine: its voxel-to-world (RAS+ mm) affine; may be oblique.
        geometry: the clinical grid; its voxel axes are the input's own axes reordered to the
            closest R, A, S (an oblique input gives an oblique output).
        mask: threshold the slice-averaged result at 0.5 (partial volume) instead of returning
            intensities.

    Returns:
        ``(data, affine)`` on the new grid; voxels outside the input's field of view are 0.
    """
    data = np.asarray(data, dtype=np.float32)
    frame = _scanner_frame(affine)
    corners = np.array(np.meshgrid(*[[-0.5, n - 0.5] for n in data.shape], indexing="ij"))
    local = apply_affine(affine, corners.reshape(3, -1).T) @ frame  # in the frame's axes
    lo, hi = local.min(axis=0), local.max(axis=0)
    spacing = geometry.spacing()
    shape = np.maximum(1, np.floor((hi - lo) / spacing + 1e-6).astype(int))
    out_affine = np.eye(4)
    out_affine[:3, :3] = frame * spacing
    # Centre the new grid on the old field of view.
    out_affine[:3, 3] = frame @ ((lo + hi) / 2 - spacing * (shape - 1) / 2)

    axis = _SLICE_AXIS[geometry.orientation]
    n_sub = max(1, int(np.ceil(geometry.slice_mm / PROFILE_STEP_MM)))
    offsets = ((np.arange(n_sub) + 0.5) / n_sub - 0.5) * geometry.slice_mm
    to_input = np.linalg.inv(affine) @ out_affine
    centres = np.indices(shape).reshape(3, -1).T.astype(float)
    total = np.zeros(len(centres), np.float64)
    count = np.zeros(len(centres), np.float64)
    shape_in = np.asarray(data.shape)
    for offset in offsets:
        shifted = centres.copy()
        shifted[:, axis] += offset / spacing[axis]
        vox = apply_affine(to_input, shifted)
        inside = np.all((vox >= -0.5) & (vox <= shape_in - 0.5), axis=1)
        values = ndimage.map_coordinates(data, vox.T, order=1, mode="nearest")
        total += np.where(inside, values, 0.0)
        count += inside
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), 0.0)
    out = mean.reshape(shape)
    if mask:
        return (out >= 0.5).astype(np.uint8), out_affine
    return out.astype(np.float32), out_affine


def _scanner_frame(affine: np.ndarray) -> np.ndarray:
    """Unit voxel directions of ``affine`` reordered and flipped to the closest R, A, S: an
    oblique scan is re-acquired in its own oblique frame, as a scanner would plan it."""
    import nibabel as nib

    directions = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    frame = np.zeros((3, 3))
    for voxel_axis, (world_axis, flip) in enumerate(nib.orientations.io_orientation(affine)):
        frame[:, int(world_axis)] = flip * directions[:, voxel_axis]
    return frame


def split_slabs(
    data: np.ndarray, affine: np.ndarray, *, slabs: int = 2, overlap_mm: float = 20.0
) -> list[tuple[slice, np.ndarray]]:
    """Overlapping S-I chunks of an image on an R-A-S grid: ``(index along S-I, affine)``,
    superior first. Consecutive chunks share ``overlap_mm``.

    Args:
        data: The image, its third axis S-I (inferior to superior).
        affine: Its voxel-to-world affine.
        slabs: How many chunks.
        overlap_mm: What consecutive chunks share, in mm.

    Returns:
        Per chunk, its slice of the third axis and its affine.

    Example:
        >>> [index for index, _ in split_slabs(np.zeros((2, 2, 10)), np.eye(4), overlap_mm=2.0)]
        [slice(4, 10, None), slice(0, 6, None)]
    """
    n = data.shape[2]
    step = float(np.linalg.norm(affine[:3, 2]))
    overlap = int(round(overlap_mm / step))
    size = int(np.ceil((n + (slabs - 1) * overlap) / slabs))
    out = []
    for index in range(slabs):
        stop = n - index * (size - overlap)
        start = max(0, stop - size)
        chunk_affine = affine.copy()
        chunk_affine[:3, 3] = apply_affine(affine, [0, 0, start])
        out.append((slice(start, stop), chunk_affine))
    return out


@dataclass(frozen=True)
class TwoSlabSubject:
    """What :func:`write_two_slab_subject` wrote, with the truth to check ``prepare`` against.

    Attributes:
        root: the BIDS dataset folder.
        subject: the subject folder name (``sub-...``).
        images: the slab files, superior first (``chunk-1``, ``chunk-2``).
        labels: their lesion labels (the cord mask given as the lesion), same order.
        motion: the rigid motion (world RAS mm) applied to the lower slab's affine.
        true_affines: the slabs' affines before the motion.
    """

    root: object
    subject: str
    images: tuple
    labels: tuple
    motion: np.ndarray
    true_affines: tuple


def reacquire_with_mask(
    data: np.ndarray,
    affine: np.ndarray,
    cord: np.ndarray,
    geometry: ClinicalGeometry,
    keep_slices: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A real scan and its cord mask re-acquired together on ``geometry``: ``(image, mask,
    affine)``, cut to the ``keep_slices`` sagittal slices around the cord when given (a clinical
    T2Sag covers the canal, not the shoulders).

    Args:
        data: The real scan (R-A-S grid).
        affine: Its voxel-to-world affine.
        cord: Its cord mask, same grid.
        geometry: The clinical grid to acquire on.
        keep_slices: How many sagittal slices to keep, centred on the cord (None: all).

    Returns:
        ``(image, mask, affine)`` on the new grid.
    """
    image, image_affine = reacquire(data, affine, geometry)
    mask, _ = reacquire(cord, affine, geometry, mask=True)
    if keep_slices is not None and keep_slices < image.shape[0]:
        centre = (
            int(round(np.argwhere(mask).mean(axis=0)[0])) if mask.any() else image.shape[0] // 2
        )
        start = int(np.clip(centre - keep_slices // 2, 0, image.shape[0] - keep_slices))
        image, mask = image[start : start + keep_slices], mask[start : start + keep_slices]
        image_affine = image_affine.copy()
        image_affine[:3, 3] = apply_affine(image_affine, [start, 0, 0])
    return image, mask, image_affine


def write_two_slab_subject(
    root,
    data: np.ndarray,
    affine: np.ndarray,
    cord: np.ndarray,
    *,
    subject: str = "sub-real01",
    geometry: ClinicalGeometry = ClinicalGeometry("sagittal", 3.0, 0.7),
    overlap_mm: float = 20.0,
    rotation_deg=(2.0, 0.0, 0.0),
    shift_mm=(0.0, 2.0, 0.0),
    keep_slices: int | None = None,
) -> TwoSlabSubject:
    """A clinical two-slab T2Sag from a real sagittal T2 and its human cord mask, as BIDS.

    The scan is re-acquired on ``geometry`` (:func:`reacquire_with_mask`; ``keep_slices`` cuts it to
    the sagittal slices around the cord, as a clinical T2Sag covers the canal), split into two S-I
    slabs sharing ``overlap_mm``, and the lower slab's affine is moved by the rigid motion
    (about the centre of the overlap), as a patient who moved between the two acquisitions. The
    cord mask, given as the lesion label, follows each slab.

    Args:
        root: The BIDS dataset folder.
        data: The real sagittal T2 (R-A-S grid).
        affine: Its voxel-to-world affine.
        cord: Its cord mask, same grid.
        subject: The subject folder name.
        geometry: The clinical grid to acquire on.
        overlap_mm: What the two slabs share along S-I.
        rotation_deg: The lower slab's rotation vector (degrees).
        shift_mm: The lower slab's shift (mm).
        keep_slices: How many sagittal slices to keep around the cord (None: all).

    Returns:
        What was written, with the true slab affines and the motion.
    """
    from pathlib import Path

    from cordfuse.io import make_nifti, save_nifti
    from cordfuse.synth.cohort import rigid_matrix

    image, mask, image_affine = reacquire_with_mask(data, affine, cord, geometry, keep_slices)
    chunks = split_slabs(image, image_affine, slabs=2, overlap_mm=overlap_mm)
    upper_bottom = apply_affine(chunks[0][1], [0, 0, 0])
    overlap_centre = apply_affine(image_affine, (np.asarray(image.shape) - 1) / 2)
    overlap_centre[2] = upper_bottom[2] + overlap_mm / 2 - 0.5 * geometry.inplane_mm
    motion = rigid_matrix(rotation_deg, shift_mm, overlap_centre)
    root = Path(root)
    anat = root / subject / "anat"
    labels = root / "derivatives" / "labels" / subject / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    images, label_paths, true_affines = [], [], []
    for index, (where, chunk_affine) in enumerate(chunks):
        stored = motion @ chunk_affine if index == 1 else chunk_affine
        stem = f"{subject}_acq-sag_chunk-{index + 1}_T2w"
        save_nifti(
            make_nifti(np.ascontiguousarray(image[:, :, where]), stored), anat / f"{stem}.nii.gz"
        )
        save_nifti(
            make_nifti(np.ascontiguousarray(mask[:, :, where]), stored),
            labels / f"{stem}_lesion-manual.nii.gz",
        )
        images.append(anat / f"{stem}.nii.gz")
        label_paths.append(labels / f"{stem}_lesion-manual.nii.gz")
        true_affines.append(chunk_affine)
    description = root / "dataset_description.json"
    if not description.exists():
        description.write_text('{"Name": "real two-slab T2Sag", "BIDSVersion": "1.9.0"}\n')
    return TwoSlabSubject(
        root, subject, tuple(images), tuple(label_paths), motion, tuple(true_affines)
    )


# The clinical-geometry test bed: real scans with human cord masks (``../shared/data/real``),
# each re-acquired on the clinical grids below. Sagittal grids only for ~1 mm isotropic inputs
# (MT and T2* of SCT are already thick axial acquisitions).
BED_SCANS = (
    ("SCT errsm30 T2", "sct-errsm30/t2.nii.gz", "sct-errsm30/t2_seg-manual.nii.gz", True),
    (
        "spine-generic T1w",
        "spinegeneric-unf01/sub-unf01_T1w.nii.gz",
        "spinegeneric-unf01/sub-unf01_T1w_seg-manual.nii.gz",
        True,
    ),
    (
        "spine-generic T2w",
        "spinegeneric-unf01/sub-unf01_T2w.nii.gz",
        "spinegeneric-unf01/sub-unf01_T2w_seg-manual.nii.gz",
        True,
    ),
    (
        "spine-generic T2*",
        "spinegeneric-unf01/sub-unf01_T2star.nii.gz",
        "spinegeneric-unf01/sub-unf01_T2star_seg-manual.nii.gz",
        True,
    ),
    ("SCT errsm30 MT", "sct-errsm30/mt1.nii.gz", "sct-errsm30/mt1_seg.nii.gz", False),
    ("SCT T2*", "sct-t2s/t2s.nii.gz", "sct-t2s/t2s_seg.nii.gz", False),
)
BED_GEOMETRIES = (
    ClinicalGeometry("sagittal", 3.0, 0.6),
    ClinicalGeometry("sagittal", 3.0, 0.9),
    ClinicalGeometry("sagittal", 4.0, 0.6),
    ClinicalGeometry("sagittal", 4.0, 0.9),
    ClinicalGeometry("axial", 4.0, 0.6),
    ClinicalGeometry("axial", 5.0, 0.9),
)


def clinical_bed(real_root) -> list[tuple[str, str, str, ClinicalGeometry]]:
    """Cases of the test bed: ``(name, image path, mask path, geometry)``.

    Args:
        real_root: The folder of the real scans (``shared/data/real``).

    Returns:
        Every isotropic scan on every clinical geometry, the others on the axial ones.
    """
    from pathlib import Path

    root = Path(real_root)
    return [
        (name, str(root / image), str(root / mask), geometry)
        for name, image, mask, isotropic in BED_SCANS
        for geometry in BED_GEOMETRIES
        if isotropic or geometry.orientation == "axial"
    ]
