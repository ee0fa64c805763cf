"""One call from images to a lesion mask, for a notebook or a script: :func:`segment`
(``cordfuse.segment``), what ``cordfuse predict`` does for one subject, without files to manage.

    >>> import cordfuse
    >>> mask = cordfuse.segment(  # doctest: +SKIP
    ...     {"T2Sag": ["sag_upper.nii.gz", "sag_lower.nii.gz"], "STIR": stir_image},
    ...     "runs/anchored",
    ... )

The images go through the same pre-processing, networks, threshold and checks as ``predict``
(:func:`cordfuse.inference.predict_subject`), so the mask is the one ``predict`` writes for the
same subject, voxel for voxel.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Literal, overload

import nibabel as nib

from cordfuse.errors import CordfuseError
from cordfuse.sequences import REFERENCE_SEQUENCE, SEQUENCES

#: What one sequence may be given as: a NIfTI file, an image in memory, or several (its slabs,
#: top first).
ImageInput = str | PathLike | nib.Nifti1Image | Sequence[str | PathLike | nib.Nifti1Image]


@dataclass
class Segmentation:
    """Everything :func:`segment` predicts for a subject, on the fused native T2Sag grid.

    Attributes:
        mask: The lesion mask (uint8: 1 lesion, 0 not).
        probabilities: The lesion probability of each voxel (float32).
        lesions: One row per predicted lesion, the statistics ``predict`` writes in its lesion
            table (:data:`cordfuse.evaluation.burden.LESION_COLUMNS`: volume, S-I length,
            largest axial area, position along the cord, centroid).
        sequences: The sequences the networks read.
        warnings: Pre-processing warnings (a dropped sequence, a centreline fallback).
    """

    mask: nib.Nifti1Image
    probabilities: nib.Nifti1Image
    lesions: list[dict]
    sequences: list[str]
    warnings: list[str] = field(default_factory=list)


def _sequence_name(key: str) -> str:
    """The canonical sequence name for a key given in any case (``"stir"`` -> ``"STIR"``)."""
    names = {name.lower(): name for name in SEQUENCES}
    if key.lower() not in names:
        raise CordfuseError(f"images: unknown sequence {key!r} (known: {', '.join(SEQUENCES)})")
    return names[key.lower()]


def _image_files(images: Mapping[str, ImageInput], folder: Path) -> dict[str, list[str]]:
    """Each sequence's files: paths as given, images in memory written into ``folder``."""
    files: dict[str, list[str]] = {}
    for key, value in images.items():
        sequence = _sequence_name(key)
        if sequence in files:
            raise CordfuseError(f"images: {sequence} given twice ({key!r})")
        slabs = list(value) if isinstance(value, list | tuple) else [value]
        if not slabs:
            raise CordfuseError(f"images: no image for {sequence}")
        files[sequence] = []
        for n, slab in enumerate(slabs, 1):
            if isinstance(slab, nib.Nifti1Image):
                path = folder / f"sub-segment_{sequence}_chunk-{n}.nii.gz"
                nib.save(slab, path)
            elif isinstance(slab, str | PathLike):
                path = Path(slab)
            else:
                raise CordfuseError(
                    f"images[{key!r}]: a NIfTI path or nibabel image, not {type(slab).__name__}"
                )
            files[sequence].append(str(path))
    if REFERENCE_SEQUENCE not in files:
        raise CordfuseError(
            f"images: no {REFERENCE_SEQUENCE} (the output grid; every model needs it)"
        )
    return files


@overload
def segment(
    images: Mapping[str, ImageInput],
    model: str | PathLike | Sequence[str | PathLike],
    *,
    sequences: Sequence[str] | None = ...,
    threshold: float = ...,
    min_volume_mm3: float = ...,
    tta: bool = ...,
    device: str = ...,
    amp: str = ...,
    batch_size: int = ...,
    centerline: str | None = ...,
    ensemble: str = ...,
    details: Literal[False] = ...,
) -> nib.Nifti1Image: ...


@overload
def segment(
    images: Mapping[str, ImageInput],
    model: str | PathLike | Sequence[str | PathLike],
    *,
    sequences: Sequence[str] | None = ...,
    threshold: float = ...,
    min_volume_mm3: float = ...,
    tta: bool = ...,
    device: str = ...,
    amp: str = ...,
    batch_size: int = ...,
    centerline: str | None = ...,
    ensemble: str = ...,
    details: Literal[True],
) -> Segmentation: ...


def segment(
    images: Mapping[str, ImageInput],
    model: str | PathLike | Sequence[str | PathLike],
    *,
    sequences: Sequence[str] | None = None,
    threshold: float = 0.5,
    min_volume_mm3: float = 0.0,
    tta: bool = False,
    device: str = "auto",
    amp: str = "auto",
    batch_size: int = 1,
    centerline: str | None = None,
    ensemble: str = "mean",
    details: bool = False,
) -> nib.Nifti1Image | Segmentation:
    """Segment the MS lesions of one subject: its images in, the lesion mask out.

    Args:
        images: Sequence name (``T2Sag``, ``STIR``, ``T2starAx``, ``T2Ax``, ``T1Sag``,
            ``MP2RAGE``, any case) -> a NIfTI path, a ``nibabel`` image, or a list of them (the
            slabs of a sequence acquired in several, top first). T2Sag is required.
        model: A training folder or checkpoint, or several (an ensemble), as ``predict``'s
            MODEL.
        sequences: Use only these of the given sequences (default: every one the model takes).
        threshold: Probability above which a voxel is lesion (``predict --threshold``).
        min_volume_mm3: Remove predicted lesions smaller than this (``predict --min-volume``).
        tta: Also predict the left-right mirrored input and average (``predict --tta``).
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda[:N]``.
        amp: Autocast: ``auto`` (bf16 on CUDA and on CPUs with native bf16), ``bf16``, ``fp16``
            or ``none``.
        batch_size: Windows per forward pass.
        centerline: Override the model's centreline backend (``mask`` needs cord masks beside
            the images, as in ``predict --centerline mask``).
        ensemble: How an ensemble combines its models' probabilities (``predict --ensemble``):
            ``mean``, ``min`` (a voxel is lesion only where every model says so) or ``median``
            (where most do).
        details: Return a :class:`Segmentation` (mask, probabilities, lesion table, warnings)
            instead of the mask alone.

    Returns:
        The lesion mask as a ``nibabel`` image on the fused native T2Sag grid (the first slab's
        header when T2Sag is one file), or the :class:`Segmentation` with ``details``.

    Raises:
        CordfuseError: In one line: an unknown sequence name, no T2Sag, a missing file, an
            unreadable model, an unknown ``ensemble``, a scan that cannot be prepared, or a
            model that needs a sequence that was not given.
    """
    from cordfuse.inference import check_ensemble, load_models, predict_subject, subjects_from_input
    from cordfuse.io import load_nifti, make_nifti
    from cordfuse.nn.device import choose_device

    chosen = choose_device(device)
    paths = [model] if isinstance(model, str | PathLike) else list(model)
    if not paths:
        raise CordfuseError("model: no model given")
    check_ensemble(ensemble)
    with tempfile.TemporaryDirectory(prefix="cordfuse-segment-") as tmp:
        files = _image_files(images, Path(tmp))  # a wrong input fails before a model loads
        (subject,) = subjects_from_input(None, files)
        models = load_models([Path(p) for p in paths], chosen)
        prediction = predict_subject(
            subject,
            models,
            sequences=list(sequences) if sequences is not None else None,
            tta=tta,
            threshold=threshold,
            min_volume_mm3=min_volume_mm3,
            device=chosen,
            batch_size=batch_size,
            amp=amp,
            centerline=centerline,
            ensemble=ensemble,
        )
        # the T2Sag's own header (descriptions, units) when it is one file, as predict writes;
        # the images hold their arrays, so they outlive the temporary folder
        slabs = files[REFERENCE_SEQUENCE]
        like = load_nifti(slabs[0]) if len(slabs) == 1 else None
        mask = make_nifti(prediction.mask, prediction.affine, like=like)
        probabilities = make_nifti(
            prediction.probability_native.astype("float32"), prediction.affine, like=like
        )
    if not details:
        return mask
    return Segmentation(
        mask, probabilities, prediction.lesions, prediction.sequences, prediction.warnings
    )
