"""The lesion statistics a researcher reports from a mask (as ``sct_analyze_lesion`` users do):
per lesion its volume, S-I length, largest axial area and position along the cord; per subject
the count and total volume.

A lesion is a face-connected component of the mask (the rule ``predict`` removes small lesions
with). Pure functions on arrays and affines; ``predict`` writes their rows (in a BIDS
derivative ``*_desc-lesion_stats.tsv`` per subject and ``lesions.tsv`` per dataset; for explicit
files ``<subject>_lesions.csv``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

#: Face-connected components: the lesions of a mask.
FACE_CONNECTIVITY = ndimage.generate_binary_structure(3, 1)

#: Each column of a lesion row: (description, unit). The JSON data dictionary of the tables.
LESION_COLUMNS: dict[str, tuple[str, str]] = {
    "label": ("the lesion's number, in order of its first voxel in the mask's array", ""),
    "voxels": ("voxels of the lesion on the mask's grid", ""),
    "volume_mm3": ("volume: voxels times the voxel volume", "mm^3"),
    "si_min_mm": ("lowest voxel centre along S-I (world z, RAS)", "mm"),
    "si_max_mm": ("highest voxel centre along S-I (world z, RAS)", "mm"),
    "si_length_mm": ("length along S-I: highest minus lowest voxel centre, plus one voxel", "mm"),
    "largest_axial_area_mm2": (
        "largest cross-section in an axial plane: the lesion's voxels binned by S-I position in "
        "bins of one voxel's S-I extent, the fullest bin's volume divided by that extent",
        "mm^2",
    ),
    "distance_from_cord_top_mm": (
        "position along the cord: length of the T2Sag cord centreline from the top of the "
        "T2Sag cord down to the level of the lesion's centroid (empty when the centreline is "
        "unknown)",
        "mm",
    ),
    "centroid_x_mm": ("centroid, world x (RAS)", "mm"),
    "centroid_y_mm": ("centroid, world y (RAS)", "mm"),
    "centroid_z_mm": ("centroid, world z (RAS)", "mm"),
}

#: Each column of the per-dataset summary: (description, unit).
SUMMARY_COLUMNS: dict[str, tuple[str, str]] = {
    "participant_id": ("the subject (BIDS sub- label)", ""),
    "session_id": ("the session (BIDS ses- label), n/a without sessions", ""),
    "lesion_count": ("number of predicted lesions", ""),
    "total_volume_mm3": ("sum of the lesions' volumes", "mm^3"),
}


def _voxel_si_extent(affine: np.ndarray) -> float:
    """How far one voxel reaches along S-I: the projection of its three edges on world z."""
    return float(np.abs(affine[2, :3]).sum())


def _distance_along(centreline: np.ndarray, z: float) -> float:
    """Length of ``centreline`` (points top first) from its top down to height ``z``."""
    steps = np.linalg.norm(np.diff(centreline, axis=0), axis=1)
    along = np.concatenate([[0.0], np.cumsum(steps)])
    heights = centreline[:, 2]
    # heights fall from the top: np.interp wants them rising; outside the cord, clipped to it
    return float(np.interp(z, heights[::-1], along[::-1]))


def lesion_statistics(
    mask: np.ndarray, affine: np.ndarray, centreline: np.ndarray | None = None
) -> list[dict]:
    """One row per lesion (:data:`LESION_COLUMNS`).

    Args:
        mask: A binary mask.
        affine: Its voxel-to-world (RAS mm) affine.
        centreline: The cord centreline in world mm, ``(n, 3)`` points from the top of the cord
            down (rising S-I order is reversed first); None leaves the position along the cord
            empty.

    Returns:
        The rows, in label order.

    Example:
        >>> mask = np.zeros((4, 4, 6), np.uint8); mask[1, 1:3, 2:4] = 1
        >>> line = np.array([[0, 0, 10.0], [0, 0, 0.0]])  # straight, top at z = 10
        >>> row = lesion_statistics(mask, np.diag([1.0, 1.0, 2.0, 1.0]), line)[0]
        >>> row["volume_mm3"], row["si_length_mm"], row["largest_axial_area_mm2"]
        (8.0, 4.0, 2.0)
        >>> row["distance_from_cord_top_mm"]  # centroid at z = 5
        5.0
    """
    if centreline is not None and len(centreline) and centreline[0, 2] < centreline[-1, 2]:
        centreline = centreline[::-1]
    labels, _ = ndimage.label(mask, structure=FACE_CONNECTIVITY)
    voxel = float(abs(np.linalg.det(affine[:3, :3])))
    extent = _voxel_si_extent(affine)
    rows = []
    for index, region in enumerate(ndimage.find_objects(labels), start=1):
        voxels = np.argwhere(labels[region] == index) + [s.start for s in region]
        world = voxels @ affine[:3, :3].T + affine[:3, 3]
        centroid = world.mean(axis=0)
        z = world[:, 2]
        bins = np.floor((z - z.min()) / extent + 1e-6).astype(int)
        fullest = int(np.bincount(bins).max())
        distance = (
            round(_distance_along(centreline, float(centroid[2])), 2)
            if centreline is not None and len(centreline) >= 2
            else None
        )
        rows.append(
            {
                "label": index,
                "voxels": len(voxels),
                "volume_mm3": round(len(voxels) * voxel, 3),
                "si_min_mm": round(float(z.min()), 2),
                "si_max_mm": round(float(z.max()), 2),
                "si_length_mm": round(float(z.max() - z.min()) + extent, 2),
                "largest_axial_area_mm2": round(fullest * voxel / extent, 3),
                "distance_from_cord_top_mm": distance,
                "centroid_x_mm": round(float(centroid[0]), 2),
                "centroid_y_mm": round(float(centroid[1]), 2),
                "centroid_z_mm": round(float(centroid[2]), 2),
            }
        )
    return rows


def subject_burden(
    participant: str, session: str | None, rows: Sequence[dict]
) -> dict[str, str | int | float]:
    """A subject's row of the dataset summary (:data:`SUMMARY_COLUMNS`).

    Args:
        participant: The subject (``sub-01``).
        session: Its session (``ses-01``), or None.
        rows: Its lesion rows (:func:`lesion_statistics`).

    Returns:
        The summary row.

    Example:
        >>> row = subject_burden("sub-01", None, [{"volume_mm3": 2.5}, {"volume_mm3": 1.0}])
        >>> row["session_id"], row["lesion_count"], row["total_volume_mm3"]
        ('n/a', 2, 3.5)
    """
    return {
        "participant_id": participant,
        "session_id": session or "n/a",
        "lesion_count": len(rows),
        "total_volume_mm3": round(sum(float(r["volume_mm3"]) for r in rows), 3),
    }
