"""One subject end to end: slabs -> fusion -> centrelines -> reference grid -> crops (paper, 2.2).

:func:`prepare_subject` turns a discovered :class:`~cordfuse.dataset.Subject` into a
:class:`PreparedSubject`: the straightened crops of every available sequence (fixed channel order,
missing ones absent), the lesion label crop when ground truth exists, per-sequence intensity
statistics in the cord region, and everything needed to go back to the native T2Sag grid
(:func:`restore`). A prepared subject is one compressed ``.npz`` file, written atomically.

It is self-contained: besides the crops it holds the fused native T2Sag image and, when labels
exist, the fused native ground truth (:class:`NativeT2Sag`), and a synthetic subject's generator
truth, so evaluation, study, demo and report never read the raw scans again. Crops are stored as
float32: a scanner's intensity scale (float-scaled data beyond 65504, or tiny values) round-trips
exactly.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cordfuse import __version__
from cordfuse.dataset import Subject, synth_truth_document
from cordfuse.errors import CordfuseError
from cordfuse.headers import inspect_header, read_header
from cordfuse.io import (
    atomic_write_bytes,
    load_nifti,
    make_nifti,
    read_volume,
    same_grid,
    save_nifti,
)
from cordfuse.preprocess.centerline import (
    Centerline,
    centerline_from_mask,
    check_against_reference,
    detect_centerline,
    polarity_from_name,
    refine_along,
    sct_centerline,
)
from cordfuse.preprocess.crop import (
    CropGeometry,
    core_disk,
    crop_points,
    crop_to_world_grid,
    reference_geometry,
)
from cordfuse.preprocess.fusion import FusedSequence, Slab, fuse_slabs
from cordfuse.sequences import PLANES, REFERENCE_SEQUENCE, SEQUENCES

PREPARED_NAME = "prepared.npz"
#: The layout of ``prepared.npz``: 2 added each sequence's coverage mask, 3 takes the intensity
#: statistics over covered voxels only. A subject of an older layout is refused (``prepare``
#: prepares it again).
PREPARED_FORMAT = 3
#: What each older layout lacks, for the one-line refusal.
OLDER_FORMATS = {
    1: "without the sequences' coverage masks",
    2: "with intensity statistics that counted voxels outside the field of view",
}
POLARITY = {
    "T2Sag": "bright-csf",
    "STIR": "bright-csf",
    "T2starAx": "bright-csf",
    "T2Ax": "bright-csf",
    "T1Sag": "dark-csf",
    "MP2RAGE": "dark-csf",
}
CORD_CORE_MM = 3.0  # radius of the disk around the centreline used for intensity statistics
FALLBACK = "t2sag-fallback"  # centreline method of a sequence that fell back to T2Sag's


@dataclass(frozen=True)
class PrepConfig:
    """Pre-processing parameters. ``paper``: 0.5 mm, 48x48, 10 mm margin (section 2.2)."""

    spacing: float = 0.5
    crop_size: int = 48
    margin_mm: float = 10.0
    centerline: str = "auto"  # auto | mask | sct
    register_slabs: bool = True
    smooth_mm: float = 3.0

    def __post_init__(self):
        if self.centerline not in ("auto", "mask", "sct"):
            raise CordfuseError(f"unknown centreline method {self.centerline!r}")
        if self.spacing <= 0 or self.crop_size < 4 or self.margin_mm < 0:
            raise CordfuseError("spacing must be > 0, crop size >= 4 and margin >= 0")


PRESETS = {
    "paper": PrepConfig(),
    "small": PrepConfig(spacing=1.0, crop_size=24),
}


def preset_config(
    preset: str = "paper",
    *,
    spacing: float | None = None,
    crop_size: int | None = None,
    margin_mm: float | None = None,
    centerline: str | None = None,
    register_slabs: bool | None = None,
) -> PrepConfig:
    """A preset of :data:`PRESETS` with the settings given changed (``cordfuse prepare``'s
    options); a setting left None keeps the preset's value.

    Args:
        preset: ``paper`` (0.5 mm, 48x48) or ``small`` (1 mm, 24x24, for CPU work).
        spacing: Grid spacing in mm.
        crop_size: Crop size in voxels.
        margin_mm: S-I margin beyond the cord, mm.
        centerline: ``auto``, ``mask`` or ``sct``.
        register_slabs: Register sagittal slabs before fusing them.

    Returns:
        The configuration.

    Raises:
        CordfuseError: an unknown preset, or a setting out of range.
    """
    if preset not in PRESETS:
        raise CordfuseError(f"unknown preset {preset!r}; one of {', '.join(PRESETS)}")
    changes: dict[str, Any] = {
        "spacing": spacing,
        "crop_size": crop_size,
        "margin_mm": margin_mm,
        "centerline": centerline,
        "register_slabs": register_slabs,
    }
    return replace(PRESETS[preset], **{k: v for k, v in changes.items() if v is not None})


@dataclass
class NativeT2Sag:
    """The fused native T2Sag, on the grid every prediction is written on.

    Attributes:
        image: The T2Sag slabs fused (registered) on the fused grid, float32.
        affine: Voxel -> world (RAS mm) of the fused grid.
        lesion: The ground-truth lesion mask on that grid (uint8), or None without labels.
    """

    image: np.ndarray
    affine: np.ndarray
    lesion: np.ndarray | None = None


@dataclass
class PreparedSubject:
    """A subject on the reference grid: crops, label, statistics and the way back.

    ``native`` is the fused native T2Sag (and its ground truth) when the subject was just prepared;
    :meth:`load` leaves it out (training never needs it) and :func:`load_native` reads it.
    ``synth_truth`` is the generator's truth of a synthetic subject (lesions and the grids of its
    scans, :class:`cordfuse.evaluation.lesions.SynthTruth`), None otherwise.
    """

    subject: str
    cohort: str | None
    geometry: CropGeometry
    images: dict[str, np.ndarray]
    centres: dict[str, np.ndarray]
    label: np.ndarray | None
    stats: dict[str, dict[str, float]]
    t2sag: dict
    config: PrepConfig
    warnings: list[str] = field(default_factory=list)
    centerlines: dict[str, dict[str, str]] = field(default_factory=dict)
    native: NativeT2Sag | None = None
    synth_truth: dict | None = None
    #: Per sequence, the crop voxels inside that scan's field of view (the others are zero in
    #: :attr:`images` but are not "zero signal": nothing was acquired there).
    coverage: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def fallbacks(self) -> dict[str, str]:
        """Sequences whose centreline fell back to the T2Sag one, and why."""
        return {
            seq: info["reason"]
            for seq, info in self.centerlines.items()
            if info["method"] == FALLBACK
        }

    @property
    def sequences(self) -> list[str]:
        """The sequences the crops hold, in channel order."""
        return [seq for seq in SEQUENCES if seq in self.images]

    @property
    def availability(self) -> np.ndarray:
        """``(6,)`` booleans in channel order: which sequences the subject has."""
        return np.array([seq in self.images for seq in SEQUENCES])

    def stacked(self) -> np.ndarray:
        """All six channels ``(6, size, size, nz)`` in channel order, zeros for missing ones."""
        shape = (len(SEQUENCES), self.geometry.size, self.geometry.size, self.geometry.nz)
        out = np.zeros(shape, np.float32)
        for i, seq in enumerate(SEQUENCES):
            if seq in self.images:
                out[i] = self.images[seq]
        return out

    def meta(self) -> dict:
        """Everything but the arrays, as plain JSON (what :func:`prepared_meta` reads back).

        Returns:
            The version, subject, cohort, sequences, geometry, intensity statistics, T2Sag
            slabs, settings, warnings, centreline methods and the generator's truth.
        """
        return {
            "cordfuse_version": __version__,
            "format": PREPARED_FORMAT,
            "subject": self.subject,
            "cohort": self.cohort,
            "sequences": self.sequences,
            "availability": self.availability.astype(int).tolist(),
            "geometry": asdict(self.geometry),
            "stats": self.stats,
            "t2sag": self.t2sag,
            "config": asdict(self.config),
            "warnings": self.warnings,
            "centerlines": self.centerlines,
            "has_label": self.label is not None,
            "synth_truth": self.synth_truth,
            "has_native": self.native is not None,
        }

    def save(self, path: str | Path) -> None:
        """Write the subject as one compressed ``.npz`` (atomically), with :attr:`native`.

        Args:
            path: The ``prepared.npz`` to write.

        Raises:
            ValueError: a sequence without its coverage mask (it could not be read back).
        """
        missing = [seq for seq in self.images if seq not in self.coverage]
        if missing:
            raise ValueError(f"no coverage mask for {', '.join(missing)}")
        arrays = {f"image_{seq}": img.astype(np.float32) for seq, img in self.images.items()}
        arrays |= {f"centres_{seq}": c.astype(np.float32) for seq, c in self.centres.items()}
        arrays |= {f"coverage_{seq}": c.astype(bool) for seq, c in self.coverage.items()}
        if self.label is not None:
            arrays["label"] = self.label.astype(np.uint8)
        if self.native is not None:
            arrays["native_image"] = self.native.image.astype(np.float32)
            arrays["native_affine"] = np.asarray(self.native.affine, np.float64)
            if self.native.lesion is not None:
                arrays["native_lesion"] = self.native.lesion.astype(np.uint8)
        arrays["meta"] = np.frombuffer(json.dumps(self.meta()).encode(), dtype=np.uint8)
        buffer = io.BytesIO()
        # numpy's stub types **kwds as also reaching its bool allow_pickle (numpy >= 2.1 only).
        np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path, *, native: bool = False) -> PreparedSubject:
        """Read a prepared subject (folder or its ``prepared.npz``).

        Args:
            path: The subject's folder or its ``prepared.npz``.
            native: Also read :attr:`native` (the fused native T2Sag and ground truth), which
                training does not need.

        Returns:
            The subject.

        Raises:
            CordfuseError: not a prepared subject, or one of another major version.
        """
        path = _prepared_file(path)
        try:
            with np.load(path) as npz:
                meta = json.loads(npz["meta"].tobytes().decode())
                images = {seq: npz[f"image_{seq}"].astype(np.float32) for seq in meta["sequences"]}
                centres = {seq: npz[f"centres_{seq}"] for seq in meta["sequences"]}
                label = npz["label"] if "label" in npz.files else None
                _check_version(path, meta)
                coverage = {seq: npz[f"coverage_{seq}"].astype(bool) for seq in meta["sequences"]}
        except (OSError, KeyError, ValueError) as exc:
            raise CordfuseError(f"{path}: not a prepared cordfuse subject ({exc})") from exc
        return cls(
            meta["subject"],
            meta["cohort"],
            CropGeometry(**meta["geometry"]),
            images,
            centres,
            label,
            meta["stats"],
            meta["t2sag"],
            PrepConfig(**meta["config"]),
            meta.get("warnings", []),
            meta.get("centerlines", {}),
            load_native(path) if native else None,
            meta.get("synth_truth"),
            coverage,
        )


def _prepared_file(path: str | Path) -> Path:
    path = Path(path)
    return path / PREPARED_NAME if path.is_dir() else path


def _check_version(path: Path, meta: dict) -> None:
    major = str(meta.get("cordfuse_version", "0")).split(".")[0]
    if major != __version__.split(".")[0]:
        raise CordfuseError(
            f"{path}: prepared by cordfuse {meta.get('cordfuse_version')}, "
            f"this is {__version__}; prepare again"
        )
    format_ = meta.get("format", 1)
    if format_ != PREPARED_FORMAT:
        if format_ in OLDER_FORMATS:
            raise CordfuseError(
                f"{path}: prepared {OLDER_FORMATS[format_]} (an older cordfuse); prepare again"
            )
        raise CordfuseError(
            f"{path}: prepared in layout {format_}, which this cordfuse does not know "
            f"(it reads {PREPARED_FORMAT}); prepare again or update cordfuse"
        )


def prepared_meta(path: str | Path) -> dict:
    """The metadata of a prepared subject (as :meth:`PreparedSubject.meta` wrote it), without
    reading its arrays.

    Args:
        path: The subject's folder or its ``prepared.npz``.

    Returns:
        The metadata.

    Raises:
        CordfuseError: not a prepared subject, or one of another major version.
    """
    path = _prepared_file(path)
    try:
        with np.load(path) as npz:
            meta = json.loads(npz["meta"].tobytes().decode())
    except (OSError, KeyError, ValueError) as exc:
        raise CordfuseError(f"{path}: not a prepared cordfuse subject ({exc})") from exc
    _check_version(path, meta)
    return meta


def is_prepared_with(path: str | Path, config: PrepConfig) -> bool:
    """Whether ``path`` holds a subject this cordfuse prepared with ``config``, native T2Sag
    included (what ``prepare`` may skip); reads its metadata only.

    Args:
        path: The subject's folder or its ``prepared.npz`` (it may not exist).
        config: The pre-processing settings.

    Returns:
        True when ``prepare`` need not prepare it again.
    """
    try:
        meta = prepared_meta(path)
        return meta.get("has_native", False) and PrepConfig(**meta["config"]) == config
    except (KeyError, TypeError, CordfuseError):
        return False


def load_native(path: str | Path) -> NativeT2Sag:
    """The fused native T2Sag image and ground truth stored with a prepared subject.

    Args:
        path: The prepared subject's folder or its ``prepared.npz``.

    Returns:
        The fused native T2Sag, its affine and its lesion mask (None without label).

    Raises:
        CordfuseError: unreadable, or prepared by a cordfuse that did not store them.
    """
    path = _prepared_file(path)
    try:
        with np.load(path) as npz:
            if "native_image" not in npz.files:
                raise CordfuseError(
                    f"{path}: prepared without the native T2Sag (an older cordfuse); prepare again"
                )
            lesion = npz["native_lesion"] if "native_lesion" in npz.files else None
            return NativeT2Sag(npz["native_image"], npz["native_affine"], lesion)
    except (OSError, KeyError, ValueError) as exc:
        raise CordfuseError(f"{path}: not a prepared cordfuse subject ({exc})") from exc


# ---------------------------------------------------------------------------------------------


def _read_checked(path: Path) -> tuple[np.ndarray, np.ndarray]:
    data, affine = read_volume(path)
    if not np.isfinite(data).all():
        raise CordfuseError(f"{path}: NaN/Inf voxels")
    return data, affine


def _read_label(path: Path, image_shape, image_affine) -> np.ndarray:
    data, affine = _read_checked(path)
    if not same_grid(image_shape, image_affine, data.shape, affine):
        raise CordfuseError(f"{path}: label grid differs from its image's grid")
    return (data > 0.5).astype(np.float32)


def load_sequence(
    subject: Subject, seq: str, config: PrepConfig
) -> tuple[FusedSequence, list[str]]:
    """Read the scans of one sequence (and their labels) and fuse them.

    Args:
        subject: A discovered subject.
        seq: One of its sequences.
        config: The pre-processing settings (slab registration, centreline method).

    Returns:
        ``(fused, warnings)``: the fused sequence, and one line per header field that other tools
        read differently (:func:`cordfuse.headers.inspect_header`), naming the scan and the
        matrix used.

    Raises:
        CordfuseError: an unreadable scan or label, unusable geometry (no qform or sform, a zero
            voxel size, one slice), NaN/Inf voxels, or a label on another grid.
    """
    slabs = []
    warnings: list[str] = []
    for scan in subject.scans[seq]:
        data, affine = _read_checked(scan.path)
        header = inspect_header(read_header(scan.path))
        if header.problems:
            raise CordfuseError(f"{scan.path}: {header.problems[0]}")
        warnings += [f"{seq} {scan.path.name}: {warning}" for warning in header.warnings]
        labels = {}
        if seq == REFERENCE_SEQUENCE and scan.lesion_label is not None:
            labels["lesion"] = _read_label(scan.lesion_label, data.shape, affine)
        if config.centerline == "mask" and scan.cord_label is not None:
            labels["cord"] = _read_label(scan.cord_label, data.shape, affine)
        slabs.append(Slab.from_array(data, affine, labels=labels, name=str(scan.path)))
    register = config.register_slabs and PLANES[seq] != "axial"
    return fuse_slabs(slabs, register=register), warnings


def native_t2sag(subject: Subject, fused: FusedSequence) -> NativeT2Sag:
    """The fused T2Sag of a subject and its ground truth on the fused grid (see
    :class:`NativeT2Sag`): a lesion label on the fused image as given, slab labels fused like
    their slabs.

    Args:
        subject: A discovered subject.
        fused: Its fused T2Sag (with the slabs' lesion labels).

    Returns:
        The fused image, its affine and the lesion mask (None without label).

    Raises:
        CordfuseError: a fused label on another grid.
    """
    image, affine, _ = fused.render()
    lesion = None
    with_label = [slab for slab in fused.slabs if "lesion" in slab.labels]
    if with_label and len(with_label) != len(fused.slabs) and subject.fused_lesion_label is None:
        missing = [slab.name for slab in fused.slabs if "lesion" not in slab.labels]
        raise CordfuseError(
            f"{missing[0]}: lesion label missing for this T2Sag slab "
            "(give one per slab, or one on the fused image)"
        )
    if subject.fused_lesion_label is not None:
        data, label_affine = _read_checked(subject.fused_lesion_label)
        if not same_grid(image.shape, affine, data.shape, label_affine):
            raise CordfuseError(
                f"{subject.fused_lesion_label}: label grid differs from the fused "
                f"T2Sag grid {image.shape}"
            )
        lesion = (data > 0.5).astype(np.uint8)
    elif any("lesion" in slab.labels for slab in fused.slabs):
        lesion = (fused.render(what="lesion")[0] > 0.5).astype(np.uint8)
    return NativeT2Sag(image.astype(np.float32), affine, lesion)


def native_lesion_label(subject: Subject, config: PrepConfig) -> tuple[np.ndarray, np.ndarray]:
    """The ground-truth lesion mask of raw scans on their fused native T2Sag grid, and its
    affine: what ``evaluate --gt BIDS`` scores against (prepared subjects store it already).

    Args:
        subject: A discovered subject.
        config: The pre-processing settings (the slab registration).

    Returns:
        ``(mask, affine)``.

    Raises:
        CordfuseError: the subject has no lesion label, or an unreadable one.
    """
    native = native_t2sag(subject, load_sequence(subject, REFERENCE_SEQUENCE, config)[0])
    if native.lesion is None:
        raise CordfuseError(f"{subject.name}: no lesion label")
    return native.lesion, native.affine


def sequence_centerline(
    fused: FusedSequence, seq: str, config: PrepConfig
) -> tuple[Centerline, str]:
    """Centreline of a fused sequence, found on each slab and kept within the slab's S-I share,
    and the method that found it (``mask`` only where the slab has a cord mask, else ``auto``).

    Args:
        fused: The fused sequence.
        seq: Its name (gives the CSF polarity).
        config: The pre-processing settings (centreline method and smoothing).

    Returns:
        ``(centreline, method)``; methods of several slabs are joined by ``+``.

    Raises:
        CordfuseError: no slab shows a cord (the message names the first slab's file).
    """
    pieces, methods, errors = [], [], []
    for slab in fused.slabs:
        method = config.centerline
        if method == "mask" and "cord" not in slab.labels:
            method = "auto"  # --centerline mask works per sequence, where masks exist
        try:
            if method == "mask":
                line = centerline_from_mask(
                    slab.labels["cord"], slab.affine, smooth_mm=config.smooth_mm
                )
            elif method == "sct":
                native = sct_centerline(slab.name)
                correction = slab.affine @ np.linalg.inv(slab.native_affine)
                line = Centerline(native.points @ correction[:3, :3].T + correction[:3, 3])
            else:
                line = detect_centerline(
                    slab.data, slab.affine, polarity=POLARITY[seq], smooth_mm=config.smooth_mm
                )
        except CordfuseError as exc:
            errors.append(f"{slab.name}: {str(exc).removeprefix(slab.name + ': ')}")
            continue
        pieces.append(_slab_share(line, slab))
        methods.append(method)
    if not pieces:
        raise CordfuseError(errors[0] if errors else f"{seq}: no spinal cord found")
    return Centerline(np.concatenate(pieces)), "+".join(sorted(set(methods)))


def write_centerline(
    image: str | Path,
    output: str | Path,
    *,
    method: str = "auto",
    mask: str | Path | None = None,
    contrast: str = "auto",
    qc: str | Path | None = None,
) -> Centerline:
    """The cord centreline of one image, written as CSV (``cordfuse centerline``).

    Args:
        image: The NIfTI image.
        output: The CSV to write: ``x,y,z`` world RAS+ mm, inferior to superior.
        method: ``auto`` (found on the image), ``mask`` (centroids of ``mask``) or ``sct``
            (Spinal Cord Toolbox).
        mask: The cord mask ``method="mask"`` needs.
        contrast: ``bright-csf`` (T2, STIR, T2*), ``dark-csf`` (T1, UNIT1) or ``auto``: the
            one the BIDS suffix of ``image`` states (``_T1w``, ``_T2w``, ...), else found on the
            image. Used by ``method="auto"`` only.
        qc: Also write a QC picture there (PNG).

    Returns:
        The centreline.

    Raises:
        CordfuseError: an unreadable file, ``method="mask"`` without ``mask``, or no cord found
            (the message names ``image``).
    """
    data, affine = read_volume(image)
    if method == "mask":
        if not mask:
            raise CordfuseError("--method mask needs --mask CORD_MASK")
        mask_data, mask_affine = read_volume(mask)
        # smoothed as prepare smooths the centrelines it finds on cord masks
        line = centerline_from_mask(mask_data, mask_affine, smooth_mm=PrepConfig.smooth_mm)
    elif method == "sct":
        line = sct_centerline(image)
    else:
        polarity = contrast
        if polarity == "auto":  # a BIDS suffix that states the contrast beats a guess
            polarity = polarity_from_name(image) or "auto"
        try:
            line = detect_centerline(data, affine, polarity=polarity)
        except CordfuseError as exc:
            raise CordfuseError(f"{image}: {exc}") from exc
    line.to_csv(output)
    if qc:
        from cordfuse.preprocess.qc import write_centerline_qc

        write_centerline_qc(data, affine, line, qc)
    return line


def _slab_share(line: Centerline, slab: Slab) -> np.ndarray:
    lo, hi = slab.z_bounds
    share = line.points[(line.points[:, 2] >= lo - 5.0) & (line.points[:, 2] < hi + 5.0)]
    return share if len(share) >= 2 else line.points


def checked_centerline(
    fused: FusedSequence, seq: str, config: PrepConfig, reference: Centerline
) -> tuple[Centerline, dict[str, str]]:
    """A sequence's own centreline if it is plausible against the T2Sag ``reference``; else the
    T2Sag centreline refined locally in the sequence's own image (see
    :func:`~cordfuse.preprocess.centerline.check_against_reference` for the rules).

    Args:
        fused: The fused sequence.
        seq: Its name.
        config: The pre-processing settings.
        reference: The T2Sag centreline.

    Returns:
        ``(centreline, {"method": ..., "reason": ...})``; the method is :data:`FALLBACK` when
        the fallback was used, and the reason says why.

    Raises:
        CordfuseError: the field of view misses the T2Sag cord, or the fallback failed too (no
            cord visible along the T2Sag centreline).
    """
    fov = (min(s.z_extent()[0] for s in fused.slabs), max(s.z_extent()[1] for s in fused.slabs))
    t2_lo, t2_hi = reference.z_range
    if fov[1] < t2_lo or fov[0] > t2_hi:
        raise CordfuseError(
            f"{fused.slabs[0].name}: field of view does not overlap the T2Sag "
            f"cord (scan at z {fov[0]:.0f}..{fov[1]:.0f} mm, T2Sag cord "
            f"{t2_lo:.0f}..{t2_hi:.0f} mm)"
        )
    try:
        line, method = sequence_centerline(fused, seq, config)
        problem = check_against_reference(line, reference, fov).problem
    except CordfuseError as exc:
        problem = f"not found ({str(exc).split(': ')[-1]})"
    if not problem:
        return line, {"method": method, "reason": ""}
    pieces, errors = [], []
    for slab in fused.slabs:
        try:
            guided = refine_along(
                slab.data,
                slab.affine,
                reference,
                polarity=POLARITY[seq],
                smooth_mm=config.smooth_mm,
            )
        except CordfuseError as exc:
            errors.append(str(exc))  # this slab does not meet the T2Sag cord, or shows none
            continue
        pieces.append(_slab_share(guided, slab))
    if not pieces:
        raise CordfuseError(
            f"{fused.slabs[0].name}: centreline {problem}, and the T2Sag "
            f"fallback failed ({errors[0]})"
        )
    return Centerline(np.concatenate(pieces)), {"method": FALLBACK, "reason": problem}


def prepare_subject(subject: Subject, config: PrepConfig = PRESETS["paper"]) -> PreparedSubject:
    """Pre-process one subject (see the module docstring).

    Every sequence's own centreline is checked against the T2Sag one; a missing, too short or
    implausible one falls back to the T2Sag centreline refined in that sequence's image, and is
    recorded in :attr:`PreparedSubject.centerlines` and the warnings. A sequence that shows no
    cord even along the T2Sag centreline, or misses it, is dropped with a warning. A scan whose
    header other tools read differently (qform and sform apart, a sheared sform, ``pixdim`` sizes
    unlike the sform's) is named in the warnings with the matrix cordfuse used.

    Args:
        subject: A discovered subject.
        config: The pre-processing settings.

    Returns:
        The prepared subject (crops, centres, label, statistics, native T2Sag), not yet saved.

    Raises:
        CordfuseError: one line naming the file and the reason (no T2Sag, no cord on T2Sag, a
            field of view that misses the T2Sag cord, unusable geometry, NaNs, a label on another
            grid).
    """
    if not subject.scans.get(REFERENCE_SEQUENCE):
        raise CordfuseError(f"no {REFERENCE_SEQUENCE} scan (required: lesions are defined on it)")
    fused: dict[str, FusedSequence] = {}
    lines: dict[str, Centerline] = {}
    sources: dict[str, dict[str, str]] = {}
    fused[REFERENCE_SEQUENCE], warnings = load_sequence(subject, REFERENCE_SEQUENCE, config)
    reference, method = sequence_centerline(fused[REFERENCE_SEQUENCE], REFERENCE_SEQUENCE, config)
    lines[REFERENCE_SEQUENCE] = reference
    sources[REFERENCE_SEQUENCE] = {"method": method, "reason": ""}
    for seq in subject.sequences:
        if seq == REFERENCE_SEQUENCE:
            continue
        fused[seq], header_warnings = load_sequence(subject, seq, config)
        warnings += header_warnings
        try:
            lines[seq], sources[seq] = checked_centerline(fused[seq], seq, config, reference)
        except CordfuseError as exc:
            warnings.append(f"{seq} dropped: {exc}")
            del fused[seq]
            continue
        if sources[seq]["method"] == FALLBACK:
            warnings.append(f"{seq} centreline: T2Sag fallback ({sources[seq]['reason']})")
    geometry = reference_geometry(
        [line.z_range for line in lines.values()],
        spacing=config.spacing,
        size=config.crop_size,
        margin=config.margin_mm,
    )
    images, centres, stats, coverage = {}, {}, {}, {}
    for seq, line in lines.items():
        centres[seq] = line.xy_at(geometry.z)
        images[seq], coverage[seq] = sample_crop(fused[seq], geometry, centres[seq])
        stats[seq] = intensity_stats(images[seq], coverage[seq], geometry)
    reference_fused = fused[REFERENCE_SEQUENCE]
    native = native_t2sag(subject, reference_fused)
    label = _label_crop(subject, reference_fused, native, geometry, centres[REFERENCE_SEQUENCE])
    return PreparedSubject(
        subject.name,
        subject.cohort,
        geometry,
        images,
        centres,
        label,
        stats,
        _t2sag_meta(subject, reference_fused, lines[REFERENCE_SEQUENCE]),
        config,
        warnings,
        sources,
        native,
        synth_truth_document(subject),
        coverage,
    )


def sample_crop(
    fused: FusedSequence, geometry: CropGeometry, centres, *, what="image", order=1
) -> tuple[np.ndarray, np.ndarray]:
    """Sample a sequence (or one of its labels) straight from its native slabs into the crop.

    Args:
        fused: The fused sequence.
        geometry: The crops' geometry.
        centres: ``(nz, 2)`` the sequence's centreline in each crop slice.
        what: ``image`` or a label name.
        order: Spline interpolation order (0 nearest, 1 linear).

    Returns:
        ``(crop, coverage)``: the ``(size, size, nz)`` crop, zero where no slab covers it, and
        the booleans of the voxels a slab covers.
    """
    points = crop_points(geometry, centres)
    values, covered = fused.sample(points.reshape(-1, 3), what=what, order=order)
    return values.reshape(points.shape[:3]), covered.reshape(points.shape[:3])


def intensity_stats(
    crop: np.ndarray, coverage: np.ndarray, geometry: CropGeometry
) -> dict[str, float]:
    """Mean/std in the cord core (disk around the centreline) and percentiles, over the voxels
    the scan covers.

    A crop voxel no slab covers is zero, which is not cord signal: counted in the core, such
    voxels pull the mean down and inflate the standard deviation (5.5x on a real 16 mm slab whose
    edge slices are partly covered), and the z-score then flattens every contrast.

    Args:
        crop: A ``(size, size, nz)`` crop (zeros outside the field of view).
        coverage: Its voxels a slab covers (:func:`sample_crop`).
        geometry: The crops' geometry.

    Returns:
        ``mean``, ``std`` (covered cord core), ``p005``, ``p995`` (covered voxels) and the number
        of ``covered_slices`` (slices whose core is covered).
    """
    core = core_disk(geometry.size, geometry.spacing, CORD_CORE_MM)[:, :, None] & coverage
    values = crop[core]
    if values.size == 0:
        values = np.zeros(1, np.float32)
    covered = crop[coverage]
    p_lo, p_hi = np.percentile(covered, [0.5, 99.5]) if covered.size else (0.0, 0.0)
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "p005": float(p_lo),
        "p995": float(p_hi),
        "covered_slices": int(core.any(axis=(0, 1)).sum()),
    }


def _label_crop(
    subject: Subject, fused: FusedSequence, native: NativeT2Sag, geometry, centres
) -> np.ndarray | None:
    """The lesion label in the crop, from the label the native ground truth came from: a label
    given on the fused image, else the slab labels (sampled from each slab directly)."""
    if native.lesion is None:
        return None
    source = fused
    if subject.fused_lesion_label is not None:
        source = FusedSequence(
            [
                Slab.from_array(
                    native.lesion.astype(np.float32),
                    native.affine,
                    labels={"lesion": native.lesion > 0},
                )
            ]
        )
    values, _ = sample_crop(source, geometry, centres, what="lesion", order=1)
    return (values > 0.5).astype(np.uint8)


def _t2sag_meta(subject: Subject, fused: FusedSequence, line: Centerline) -> dict:
    shape, affine = fused.fused_grid()
    return {
        "fused_shape": list(shape),
        "fused_affine": affine.tolist(),
        # where the T2Sag cord starts and ends (S-I, mm): lesion positions along the cord
        "cord_z_mm": [float(z) for z in line.z_range],
        "slabs": [
            {
                "path": slab.name,
                "shape": list(slab.data.shape),
                "native_affine": slab.native_affine.tolist(),
                "affine": slab.affine.tolist(),
                "z_bounds": [float(b) for b in slab.z_bounds],
                **_registration_size(slab),
            }
            for slab in fused.slabs
        ],
    }


def slab_numbers(t2sag: dict) -> list[int]:
    """The user's number of each T2Sag slab (stored superior first): the BIDS ``chunk-N`` of its
    file name, or its position from the top counting from 1 when the files carry no chunk.

    Args:
        t2sag: The T2Sag metadata of a prepared subject (:attr:`PreparedSubject.t2sag`).

    Returns:
        One number per slab, superior first.

    Example:
        >>> slab_numbers({"slabs": [{"path": "sub-01_acq-sag_chunk-2_T2w.nii.gz"},
        ...                         {"path": "sub-01_acq-sag_chunk-3_T2w.nii.gz"}]})
        [2, 3]
        >>> slab_numbers({"slabs": [{"path": "upper.nii.gz"}, {"path": "lower.nii.gz"}]})
        [1, 2]
    """
    found = [re.search(r"_chunk-(\d+)_", Path(slab["path"]).name) for slab in t2sag["slabs"]]
    numbers = [int(match.group(1)) for match in found if match]
    if len(numbers) == len(found) and len(set(numbers)) == len(numbers):
        return numbers
    return list(range(1, len(found) + 1))


def slab_index(prepared: PreparedSubject, number: int) -> int:
    """Index (superior first) of the T2Sag slab the user calls ``number`` (see
    :func:`slab_numbers`).

    Args:
        prepared: A prepared subject.
        number: The slab's number.

    Returns:
        Its index in the stored slabs.

    Raises:
        CordfuseError: no slab has that number.
    """
    numbers = slab_numbers(prepared.t2sag)
    if number not in numbers:
        raise CordfuseError(
            f"{prepared.subject} has no T2Sag slab {number} "
            f"(its slabs: {', '.join(map(str, numbers))})"
        )
    return numbers.index(number)


def _registration_size(slab: Slab) -> dict[str, float]:
    """How far the slab registration moved a slab: rotation angle (degrees) and the shift of the
    slab's centre (mm). Zero for the top slab, which the others are registered to."""
    correction = slab.affine @ np.linalg.inv(slab.native_affine)
    cosine = np.clip((np.trace(correction[:3, :3]) - 1) / 2, -1.0, 1.0)
    centre = slab.native_affine @ np.r_[(np.asarray(slab.data.shape) - 1) / 2, 1.0]
    shift = np.linalg.norm((correction @ centre - centre)[:3])
    return {
        "registration_deg": round(float(np.degrees(np.arccos(cosine))), 4),
        "registration_mm": round(float(shift), 4),
    }


def restore(
    prepared: PreparedSubject, crop: np.ndarray, *, slab: int | None = None, order=1
) -> tuple[np.ndarray, np.ndarray]:
    """Map a crop-space volume back onto the native T2Sag: the fused grid, or slab ``slab``.

    Args:
        prepared: The prepared subject the crop belongs to.
        crop: A ``(size, size, nz)`` volume (a prediction).
        slab: The index (superior first) of a T2Sag slab, or None for the fused grid.
        order: Spline interpolation order (0 nearest, 1 linear).

    Returns:
        ``(data, affine)``; ``affine`` is the T2Sag (fused or slab) affine as stored.

    Raises:
        CordfuseError: a crop of another shape, or no such slab.
    """
    expected = (prepared.geometry.size, prepared.geometry.size, prepared.geometry.nz)
    if tuple(crop.shape) != expected:
        raise CordfuseError(f"crop has shape {tuple(crop.shape)}, expected {expected}")
    centres = prepared.centres[REFERENCE_SEQUENCE]
    meta = prepared.t2sag
    if slab is None:
        shape, affine = tuple(meta["fused_shape"]), np.array(meta["fused_affine"])
        output_affine = affine
    else:
        if not 0 <= slab < len(meta["slabs"]):
            raise CordfuseError(f"slab {slab} does not exist ({len(meta['slabs'])} T2Sag slabs)")
        info = meta["slabs"][slab]
        shape, affine = tuple(info["shape"]), np.array(info["affine"])
        output_affine = np.array(info["native_affine"])
    data = crop_to_world_grid(crop, prepared.geometry, centres, shape, affine, order=order)
    return data, output_affine


def read_crop(path: str | Path) -> np.ndarray:
    """A crop-space volume from a NIfTI file or a ``.npy`` array, as float32.

    Args:
        path: The ``.nii``/``.nii.gz`` or ``.npy`` file.

    Returns:
        The volume (the NIfTI affine is not needed: the crop's geometry is the prepared
        subject's).

    Raises:
        CordfuseError: the file is unreadable.
    """
    if str(path).endswith(".npy"):
        try:
            return np.load(path).astype(np.float32)
        except (OSError, ValueError) as exc:
            raise CordfuseError(f"{path}: unreadable array ({exc})") from exc
    return read_volume(path)[0]


def restore_to_file(
    prepared: str | Path,
    crop: str | Path,
    output: str | Path,
    *,
    slab: int | None = None,
    probabilities: bool = False,
    threshold: float = 0.5,
) -> tuple[int, ...]:
    """Write a crop-space mask or probability map back on the native T2Sag grid
    (``cordfuse restore``), with the T2Sag's header where it is at hand.

    Args:
        prepared: A prepared subject folder or its ``prepared.npz``.
        crop: The crop-space volume (:func:`read_crop`), of the prepared crop's shape.
        output: The NIfTI file to write.
        slab: Onto the T2Sag slab the user numbers so (:func:`slab_numbers`) instead of the
            fused T2Sag.
        probabilities: Keep the float values; otherwise a uint8 mask of the values above
            ``threshold``.
        threshold: The mask's threshold.

    Returns:
        The shape of the grid written.

    Raises:
        CordfuseError: an unreadable input, no such slab, a crop of the wrong shape, or
            ``output`` is the T2Sag image itself.
    """
    subject = PreparedSubject.load(prepared)
    volume = read_crop(crop)
    index = None if slab is None else slab_index(subject, slab)
    data, affine = restore(subject, volume, slab=index)
    source = subject.t2sag["slabs"][index or 0]["path"]
    like = None
    # the stored path is one slab's: its header fits the fused grid only when it is the only slab
    if Path(source).exists() and (index is not None or len(subject.t2sag["slabs"]) == 1):
        like = load_nifti(source)  # keep the T2Sag header (descriptions, units, qform codes)
    if probabilities:
        image = make_nifti(data.astype(np.float32), affine, like=like)
    else:
        image = make_nifti((data > threshold).astype(np.uint8), affine, like=like)
    if Path(output).resolve() == Path(source).resolve():
        raise CordfuseError(f"{output}: refusing to overwrite the input T2Sag image")
    save_nifti(image, output)
    return tuple(data.shape)
