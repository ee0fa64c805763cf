"""NIfTI reading and writing (nibabel), orientation helpers and atomic, reproducible writes.

Every file cordfuse writes goes through :func:`atomic_write_bytes`: it is written beside its
destination and renamed into place, so an interrupted run never leaves a half-written file.
Compressed NIfTI is written with a zero gzip timestamp, so the same data give the same bytes.
"""

from __future__ import annotations

import gzip
import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from cordfuse.errors import CordfuseError

#: Orientation of the paper's reference grid (patch size is given in RPI).
RPI = ("R", "P", "I")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600 files; give the result the mode a plain open() would.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def load_nifti(path: str | Path) -> nib.Nifti1Image:
    """Open a NIfTI file (header only; data are read lazily).

    Raises:
        CordfuseError: the file is missing, not NIfTI or its header is corrupt.
    """
    path = Path(path)
    if not path.exists():
        raise CordfuseError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise CordfuseError(f"{path}: unreadable NIfTI ({_short(exc)})") from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise CordfuseError(f"{path}: not a NIfTI image ({type(img).__name__})")
    return img


def read_volume(path: str | Path, dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3D image fully: returns ``(data, affine)``.

    A 4D file whose last axis has length 1 is accepted as 3D.

    Raises:
        CordfuseError: unreadable or truncated file, or not a 3D image.
    """
    img = load_nifti(path)
    if Path(path).name.endswith(".gz"):
        # nibabel stops reading at the end of the data and never checks the gzip CRC: decompress
        # the whole stream so that corrupt or truncated files are reported, not silently used.
        try:
            with gzip.open(path, "rb") as handle:
                img = type(img).from_bytes(handle.read())
        except Exception as exc:
            raise CordfuseError(f"{path}: truncated or corrupt image data ({_short(exc)})") from exc
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise CordfuseError(f"{path}: not a 3D image (shape {tuple(img.shape)})")
    try:
        data = np.asarray(img.dataobj, dtype=dtype).reshape(shape)
    except Exception as exc:
        raise CordfuseError(f"{path}: truncated or corrupt image data ({_short(exc)})") from exc
    return data, img.affine.copy()


def make_nifti(data: np.ndarray, affine: np.ndarray, *, like: nib.Nifti1Image | None = None):
    """A Nifti1Image with qform and sform both set to ``affine`` (code 1, scanner), xyz in mm."""
    header = like.header.copy() if like is not None else None
    img = nib.Nifti1Image(data, affine, header=header)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_data_dtype(data.dtype)
    return img


def save_nifti(img: nib.Nifti1Image, path: str | Path, *, compresslevel: int = 6) -> None:
    """Save atomically; ``.nii.gz`` gets a zero gzip mtime so equal data give equal bytes."""
    path = Path(path)
    raw = img.to_bytes()
    if path.name.endswith(".gz"):
        raw = gzip.compress(raw, compresslevel=compresslevel, mtime=0)
    atomic_write_bytes(path, raw)


def axcodes(affine: np.ndarray) -> tuple[str, str, str]:
    """Orientation codes of the voxel axes (nibabel convention: the direction each axis points)."""
    return tuple(nib.aff2axcodes(affine))  # type: ignore[return-value]


def reorient(img: nib.Nifti1Image, codes: tuple[str, str, str] = RPI) -> nib.Nifti1Image:
    """Reorder/flip the voxel axes to ``codes`` (default RPI); world positions are unchanged."""
    current = nib.orientations.io_orientation(img.affine)
    target = nib.orientations.axcodes2ornt(codes)
    transform = nib.orientations.ornt_transform(current, target)
    return img.as_reoriented(transform)


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Spacing of each voxel axis in mm (column norms of the affine)."""
    return np.sqrt((affine[:3, :3] ** 2).sum(axis=0))


def apply_affine(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map ``(..., 3)`` points through a 4x4 affine."""
    points = np.asarray(points, dtype=float)
    return points @ affine[:3, :3].T + affine[:3, 3]


def inside_voxel_boxes(vox: np.ndarray, shape) -> np.ndarray:
    """Which continuous voxel coordinates ``vox`` (N, 3) lie in a grid of ``shape``'s voxel boxes.

    Grids that share planes put points exactly on a box edge (-0.5 or n - 0.5): coordinates are
    rounded to 1e-6 voxel first, so that 1e-12 mm of registration noise cannot move them in or
    out (and a scan's coverage or a back-mapped crop differ between two runs).
    """
    edge = np.round(vox, 6)
    return np.all((edge >= -0.5) & (edge <= np.asarray(shape) - 0.5), axis=1)


def block_mean(
    data: np.ndarray, affine: np.ndarray, targets_mm
) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Average-pool each voxel axis by the integer factor closest to ``target / spacing`` (at
    least 1), dropping the incomplete last block. Returns ``(data, affine, factors)``; the affine
    places each block's value at the centre of the voxels it averages."""
    spacing = voxel_sizes(affine)
    shape = data.shape
    factors = tuple(
        max(1, min(n, round(t / s))) for t, s, n in zip(targets_mm, spacing, shape, strict=True)
    )
    counts = [n // f for n, f in zip(shape, factors, strict=True)]
    blocks = data[: counts[0] * factors[0], : counts[1] * factors[1], : counts[2] * factors[2]]
    blocks = blocks.reshape(counts[0], factors[0], counts[1], factors[1], counts[2], factors[2])
    scale = np.eye(4)
    scale[:3, :3] = np.diag(factors)
    scale[:3, 3] = (np.asarray(factors) - 1) / 2
    return blocks.mean(axis=(1, 3, 5)), affine @ scale, factors


def same_grid(a_shape, a_affine, b_shape, b_affine, *, atol_mm: float = 1e-3) -> bool:
    """True when two images share shape and affine (within ``atol_mm`` at every corner)."""
    if tuple(a_shape[:3]) != tuple(b_shape[:3]):
        return False
    corners = np.array(np.meshgrid(*[[0, s - 1] for s in a_shape[:3]], indexing="ij"))
    corners = corners.reshape(3, -1).T
    return bool(
        np.abs(apply_affine(a_affine, corners) - apply_affine(b_affine, corners)).max() <= atol_mm
    )


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
