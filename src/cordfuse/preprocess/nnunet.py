"""Export prepared crops in nnU-Net v2 raw format, so nnU-Net can be trained on exactly our data.

Layout (``DIR``)::

    dataset.json                         channel_names, labels, numTraining, file_ending
    imagesTr/{case}_{XXXX}.nii.gz        one file per channel, XXXX = channel index (6 channels,
                                         zeros for a missing sequence)
    labelsTr/{case}.nii.gz               lesion label (subjects with ground truth)
    imagesTs/{case}_{XXXX}.nii.gz        subjects without ground truth

Crops are written with the straightened nominal affine (:meth:`CropGeometry.nominal_affine`);
bring nnU-Net's predictions back with ``cordfuse restore PREPARED_SUBJECT PREDICTION``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cordfuse.io import atomic_write_text, make_nifti, save_nifti
from cordfuse.preprocess.pipeline import PreparedSubject
from cordfuse.sequences import SEQUENCES


def export_case(prepared: PreparedSubject, root: Path) -> bool:
    """Write one subject's six channels (and label) as nnU-Net cases.

    Args:
        prepared: A prepared subject.
        root: The nnU-Net raw dataset folder.

    Returns:
        True when it went to the training set (it has a label).
    """
    affine = prepared.geometry.nominal_affine()
    folder = "imagesTr" if prepared.label is not None else "imagesTs"
    stacked = prepared.stacked()
    for index in range(len(SEQUENCES)):
        path = root / folder / f"{prepared.subject}_{index:04d}.nii.gz"
        save_nifti(make_nifti(stacked[index].astype(np.float32), affine), path, compresslevel=1)
    if prepared.label is not None:
        save_nifti(
            make_nifti(prepared.label.astype(np.uint8), affine),
            root / "labelsTr" / f"{prepared.subject}.nii.gz",
            compresslevel=1,
        )
        return True
    return False


def write_dataset_json(root: Path, n_training: int, *, name: str = "cordfuse") -> None:
    """Write nnU-Net v2's ``dataset.json``: the six channels, the lesion label, the case count.

    Args:
        root: The nnU-Net raw dataset folder.
        n_training: The number of training cases.
        name: The dataset's name.
    """
    document = {
        "name": name,
        "description": "cordfuse straightened multi-sequence spinal cord crops",
        "channel_names": {str(i): seq for i, seq in enumerate(SEQUENCES)},
        "labels": {"background": 0, "lesion": 1},
        "numTraining": n_training,
        "file_ending": ".nii.gz",
    }
    atomic_write_text(root / "dataset.json", json.dumps(document, indent=2) + "\n")


def export_nnunet(prepared_paths: list[Path], root: str | Path) -> int:
    """Export every prepared subject, then ``dataset.json``.

    Args:
        prepared_paths: Prepared subject files.
        root: The nnU-Net raw dataset folder (created).

    Returns:
        The number of training cases.

    Raises:
        CordfuseError: an unreadable prepared subject.
    """
    root = Path(root)
    n_training = sum(export_case(PreparedSubject.load(p), root) for p in prepared_paths)
    write_dataset_json(root, n_training)
    return n_training
