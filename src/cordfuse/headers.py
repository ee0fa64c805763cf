"""The geometry a NIfTI header states, and where the field's tools read it differently.

A NIfTI header places its voxels in the world in up to three ways: the sform (a full affine, valid
when ``sform_code`` > 0), the qform (a rotation, a translation and the ``pixdim`` voxel sizes, valid
when ``qform_code`` > 0) and ``pixdim`` alone. The tools of the field choose among them
differently, each without an error:

- nibabel, hence cordfuse, and FSL: the sform when its code is set, else the qform, else a guess
  (nibabel: ``pixdim`` sizes around the array's centre, no orientation); nibabel reads a zero in
  ``pixdim`` as 1 mm, with a log line of its own.
- ITK 5.2 and later (SimpleITK, ANTs): voxel sizes always from ``pixdim`` (a zero read as 1 mm);
  the sform's rotation and origin when the sform is orthogonal and its code is 1 (scanner), or the
  qform is unset; else the qform; a sheared sform without a qform is refused. Earlier ITK
  preferred the qform.

So a header whose matrices disagree puts one scan centimetres apart in two tools.
:func:`inspect_header` names such headers: ``problems`` when the geometry is unusable (no matrix
at all, a zero voxel size, a single slice), ``warnings`` when cordfuse can go on with the matrix it
names. Thresholds: two readings disagree when a corner voxel of the grid moves by more than
:data:`DISAGREE_MM`; a matrix is sheared when two voxel axes meet more than :data:`SHEAR_DEGREES`
away from a right angle.

Example:
    A header whose sform is 40 mm to the right of its qform:

    >>> import nibabel as nib
    >>> img = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), None)
    >>> shifted = np.eye(4)
    >>> shifted[0, 3] = 40.0
    >>> img.set_qform(np.eye(4), code=1)
    >>> img.set_sform(shifted, code=2)
    >>> report = inspect_header(img.header)
    >>> report.used, report.problems
    ('sform', [])
    >>> report.warnings[0].split(":")[0]
    'qform and sform disagree by 40.0 mm'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import nibabel as nib
import numpy as np

from cordfuse.errors import CordfuseError
from cordfuse.io import apply_affine, load_nifti

#: Two readings of a header disagree when a corner voxel's centre moves by more than this (mm):
#: a voxel of a clinical scan, while the float32 rounding of the qform's quaternion stays below
#: 1e-3 mm over a 300 mm field of view.
DISAGREE_MM = 1.0
#: A matrix is sheared when two of its voxel axes meet further than this from 90 degrees (0.5 mm
#: over a 300 mm field of view; a DICOM converter's rounding stays far below it).
SHEAR_DEGREES = 0.1
#: The NIfTI code of an sform that maps to scanner coordinates: ITK 5.2+ prefers such an sform.
SCANNER_ANAT = 1
_SLICE_PLANE = {
    "R": "sagittal",
    "L": "sagittal",
    "A": "coronal",
    "P": "coronal",
    "S": "axial",
    "I": "axial",
}


@dataclass
class HeaderReport:
    """What :func:`inspect_header` found.

    Attributes:
        used: The matrix cordfuse (nibabel) places the voxels with: ``sform``, ``qform`` or
            ``none`` (neither code set: nibabel's guess).
        problems: Why the geometry is unusable (``check`` fails, ``prepare`` refuses the scan).
        warnings: Fields other tools read differently; cordfuse goes on with :attr:`used`.
    """

    used: str
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def read_header(path: str | Path) -> nib.Nifti1Header:
    """The header of a NIfTI file as stored, before nibabel mends it (zero ``pixdim`` to 1 mm).

    Args:
        path: A ``.nii`` or ``.nii.gz`` file.

    Returns:
        The NIfTI-1 or NIfTI-2 header, unchecked.

    Raises:
        CordfuseError: the file is missing or not NIfTI.
    """
    image = load_nifti(path)
    try:
        with nib.openers.ImageOpener(str(path)) as stream:
            return type(image.header).from_fileobj(stream, check=False)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise CordfuseError(f"{path}: unreadable NIfTI header ({type(exc).__name__})") from exc


def inspect_header(header: nib.Nifti1Header) -> HeaderReport:
    """Name what makes a header's geometry unusable, or read differently by other tools.

    Args:
        header: A NIfTI header as stored (:func:`read_header`), not one nibabel has mended.

    Returns:
        The matrix cordfuse uses, the problems and the warnings (see the module docstring).

    Example:
        >>> import nibabel as nib
        >>> clean = nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), np.diag([0.5, 0.5, 3, 1]))
        >>> inspect_header(clean.header)
        HeaderReport(used='sform', problems=[], warnings=[])
    """
    stored = np.asarray(header["pixdim"][1:4], float)
    mended = header.copy()
    # nibabel's own reading: zero voxel sizes become 1 mm, invalid codes 0 (the log line nibabel
    # printed when it opened the file is not repeated)
    mended.check_fix(logger=_Discard(), error_level=100)
    q_code, s_code = int(mended["qform_code"]), int(mended["sform_code"])
    shape = tuple(int(n) for n in header.get_data_shape()[:3])
    used = "sform" if s_code > 0 else "qform" if q_code > 0 else "none"
    report = HeaderReport(used)
    single = [axis for axis, n in enumerate(shape) if n == 1]
    if single:
        code = nib.aff2axcodes(mended.get_best_affine())[single[0]]
        where = ", ".join(filter(None, (_SLICE_PLANE.get(code), f"voxel axis {single[0]}")))
        report.problems.append(f"one slice only ({where}): the cord cannot be followed in 3D")
    if used == "none":
        report.problems.append(
            "no qform or sform (both codes 0): the scan has no position or orientation, and "
            "nibabel, ITK and FSL each guess their own"
        )
        return report
    if used == "qform":
        if np.any(stored == 0):
            report.problems.append(
                f"voxel size 0 in pixdim ({_sizes(stored)}) and no sform: nibabel and ITK "
                "assume 1 mm"
            )
        return report
    sform = mended.get_sform()
    sizes = np.linalg.norm(sform[:3, :3], axis=0)
    if np.any(sizes < 1e-6):
        report.problems.append(f"voxel size 0 in the sform ({_sizes(sizes)})")
        return report
    shear = _shear(sform[:3, :3] / sizes)
    itk_sform = shear is None and (s_code == SCANNER_ANAT or q_code == 0)
    if q_code > 0:
        apart = _corner_distance(mended.get_qform(), sform, shape)
        if apart > DISAGREE_MM:
            itk = (
                "ITK 5.2+ the sform too (code 1, scanner), earlier ITK the qform"
                if itk_sform
                else "ITK (SimpleITK, ANTs) the qform "
                + ("(the sform is sheared)" if shear else f"(sform code {s_code}, not 1 scanner)")
            )
            report.warnings.append(
                f"qform and sform disagree by {apart:.1f} mm: cordfuse (nibabel) and FSL use "
                f"the sform, {itk}"
            )
    if shear is not None:
        axes, angle = shear
        refused = "" if q_code > 0 else " (no qform: ITK refuses the file)"
        report.warnings.append(
            f"sheared sform (voxel axes {axes[0]} and {axes[1]} meet at {angle:.1f} degrees): "
            f"cordfuse (nibabel) and FSL keep the shear, ITK drops it{refused}"
        )
    elif itk_sform:
        spacing = np.where(stored == 0, 1.0, np.abs(stored))
        itk = sform.copy()
        itk[:3, :3] = sform[:3, :3] / sizes * spacing
        apart = _corner_distance(itk, sform, shape)
        if apart > DISAGREE_MM:
            report.warnings.append(
                f"pixdim voxel sizes ({_sizes(stored)}) differ from the sform's "
                f"({_sizes(sizes)}): cordfuse (nibabel) and FSL use the sform's, ITK takes "
                f"pixdim's{' (0 as 1 mm)' if np.any(stored == 0) else ''} and moves a corner "
                f"by {apart:.1f} mm"
            )
    return report


class _Discard:
    """A logger for nibabel's header checks that keeps nothing."""

    def log(self, level: int, message: str) -> None:
        """Drop one message (``Report.log_raise`` calls this).

        Args:
            level: The message's logging level.
            message: The message.
        """


def _shear(directions: np.ndarray) -> tuple[tuple[int, int], float] | None:
    """The two unit voxel axes furthest from a right angle, and their angle, when beyond
    :data:`SHEAR_DEGREES`."""
    angles = {
        (i, j): float(np.degrees(np.arccos(np.clip(directions[:, i] @ directions[:, j], -1, 1))))
        for i, j in combinations(range(3), 2)
    }
    axes = max(angles, key=lambda pair: abs(angles[pair] - 90))
    return (axes, angles[axes]) if abs(angles[axes] - 90) > SHEAR_DEGREES else None


def _corner_distance(a: np.ndarray, b: np.ndarray, shape: tuple[int, ...]) -> float:
    """How far apart (mm) two affines put the grid's corner voxels, at most."""
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape], indexing="ij")).reshape(3, -1).T
    return float(np.linalg.norm(apply_affine(a, corners) - apply_affine(b, corners), axis=1).max())


def _sizes(values: np.ndarray) -> str:
    return ", ".join(f"{v:.4g}" for v in values)
