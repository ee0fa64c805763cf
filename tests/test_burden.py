"""Lesion statistics on hand-made masks: volume, S-I length, largest axial area, position along
a straight, a tilted and a reversed centreline, the per-subject summary."""

from __future__ import annotations

import numpy as np
import pytest

from cordfuse.evaluation.burden import LESION_COLUMNS, lesion_statistics, subject_burden

#: A sagittal T2 grid as scanners write it: 3 mm slices left-right, 0.5 mm in-plane.
SAGITTAL = np.diag([3.0, 0.5, 0.5, 1.0])


def test_a_box_lesion_on_a_sagittal_grid():
    mask = np.zeros((5, 20, 40), np.uint8)
    mask[1:3, 4:8, 10:20] = 1  # 2 x 4 x 10 voxels: 6 mm x 2 mm x 5 mm
    (row,) = lesion_statistics(mask, SAGITTAL)
    assert set(row) == set(LESION_COLUMNS)
    assert row["voxels"] == 80
    assert row["volume_mm3"] == pytest.approx(60.0)  # 80 x 0.75 mm^3
    assert row["si_length_mm"] == pytest.approx(5.0)  # 10 slices of 0.5 mm
    assert row["largest_axial_area_mm2"] == pytest.approx(12.0)  # 6 mm x 2 mm
    assert (row["si_min_mm"], row["si_max_mm"]) == (5.0, 9.5)
    assert row["distance_from_cord_top_mm"] is None  # no centreline given


def test_the_largest_axial_area_is_the_widest_level():
    mask = np.zeros((6, 10, 10), np.uint8)
    mask[2, 2, 1:6] = 1  # a thin column...
    mask[1:4, 1:4, 3] = 1  # ...with a 3 x 3 voxel bulge at one level
    (row,) = lesion_statistics(mask, np.eye(4))
    assert row["largest_axial_area_mm2"] == pytest.approx(9.0)
    assert row["si_length_mm"] == pytest.approx(5.0)


def test_lesions_are_face_connected_components_in_array_order():
    mask = np.zeros((4, 4, 4), np.uint8)
    mask[0, 0, 0] = mask[1, 1, 1] = 1  # touching by a corner only: two lesions
    mask[3, 3, 2:4] = 1
    rows = lesion_statistics(mask, np.eye(4))
    assert [r["voxels"] for r in rows] == [1, 1, 2]
    assert [r["label"] for r in rows] == [1, 2, 3]
    assert lesion_statistics(np.zeros((3, 3, 3), np.uint8), np.eye(4)) == []


def test_the_volume_does_not_depend_on_the_grid_orientation():
    mask = np.zeros((6, 6, 6), np.uint8)
    mask[1:4, 2:4, 1:5] = 1
    angle = np.deg2rad(30)
    rotation = np.array(
        [[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]
    )
    oblique = np.eye(4)
    oblique[:3, :3] = rotation @ np.diag([0.8, 0.8, 2.0])
    (row,) = lesion_statistics(mask, oblique)
    assert row["volume_mm3"] == pytest.approx(24 * 0.8 * 0.8 * 2.0, rel=1e-6)


def test_position_along_a_tilted_centreline():
    # a cord inclined 45 degrees in the sagittal plane: 1 mm down is sqrt(2) mm along it
    mask = np.zeros((10, 10, 30), np.uint8)
    mask[4:6, 4:6, 9:11] = 1  # voxels at z = 9 and 10: centroid at z = 9.5
    line = np.array([[0.0, y, 20.0 - y] for y in range(21)])  # top at z = 20, bottom at z = 0
    (row,) = lesion_statistics(mask, np.eye(4), line)
    assert row["centroid_z_mm"] == pytest.approx(9.5)
    assert row["distance_from_cord_top_mm"] == pytest.approx((20 - 9.5) * np.sqrt(2), abs=0.01)
    # the same line given bottom first is read top first
    (again,) = lesion_statistics(mask, np.eye(4), line[::-1])
    assert again["distance_from_cord_top_mm"] == row["distance_from_cord_top_mm"]


def test_position_outside_the_cord_is_clipped_to_its_ends():
    mask = np.zeros((4, 4, 40), np.uint8)
    mask[1, 1, 35] = 1  # above the top of the cord
    mask[1, 1, 2] = 1  # below its bottom
    line = np.array([[0.0, 0.0, 30.0], [0.0, 0.0, 10.0]])
    low, high = lesion_statistics(mask, np.eye(4), line)
    assert (high["distance_from_cord_top_mm"], low["distance_from_cord_top_mm"]) == (0.0, 20.0)


def test_subject_burden_sums_the_lesions():
    rows = lesion_statistics(np.pad(np.ones((2, 2, 2), np.uint8), 1), SAGITTAL)
    summary = subject_burden("sub-07", "ses-02", rows)
    assert summary == {
        "participant_id": "sub-07",
        "session_id": "ses-02",
        "lesion_count": 1,
        "total_volume_mm3": 6.0,
    }
    assert subject_burden("sub-08", None, [])["lesion_count"] == 0
