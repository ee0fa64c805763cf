"""Centreline backends (issue 3, step 2): accuracy on synthetic truth and on real human masks."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from conftest import require_real_data
from cordfuse.errors import CordfuseError
from cordfuse.io import read_volume, reorient
from cordfuse.preprocess.centerline import (
    Centerline,
    centerline_from_mask,
    detect_centerline,
    sct_centerline,
)
from cordfuse.synth.cohort import scan_centerline

REAL_WITH_MASKS = [
    ("sct-errsm30/t2.nii.gz", "sct-errsm30/t2_seg-manual.nii.gz"),
    ("sct-errsm30/mt1.nii.gz", "sct-errsm30/mt1_seg.nii.gz"),
    ("sct-t2s/t2s.nii.gz", "sct-t2s/t2s_seg.nii.gz"),
    (
        "spinegeneric-unf01/sub-unf01_T1w.nii.gz",
        "spinegeneric-unf01/sub-unf01_T1w_seg-manual.nii.gz",
    ),
    (
        "spinegeneric-unf01/sub-unf01_T2w.nii.gz",
        "spinegeneric-unf01/sub-unf01_T2w_seg-manual.nii.gz",
    ),
    (
        "spinegeneric-unf01/sub-unf01_T2star.nii.gz",
        "spinegeneric-unf01/sub-unf01_T2star_seg-manual.nii.gz",
    ),
]


def in_plane_errors(found: Centerline, reference: np.ndarray) -> np.ndarray:
    """Distances (mm) between the found centreline and reference points, at the same z."""
    return np.hypot(*(found.xy_at(reference[:, 2]) - reference[:, :2]).T)


class TestSynthetic:
    def test_accuracy_on_every_sequence(self, synth_subjects):
        errors: dict[str, list[float]] = {}
        for subject in synth_subjects:
            for stem, scan in subject.scans.items():
                found = detect_centerline(scan.image, scan.affine)
                truth = scan_centerline(subject, stem, step_mm=1.0)
                lo, hi = found.z_range
                inside = truth[(truth[:, 2] >= lo) & (truth[:, 2] <= hi)]
                coverage = (inside[-1, 2] - inside[0, 2]) / (truth[:, 2].max() - truth[:, 2].min())
                assert coverage > 0.85, (stem, coverage)
                errors.setdefault(subject.plans[stem].sequence, []).extend(
                    in_plane_errors(found, inside)
                )
        assert set(errors) == {"T2Sag", "STIR", "T2starAx", "T2Ax", "T1Sag", "MP2RAGE"}
        everything = np.concatenate([np.asarray(v) for v in errors.values()])
        assert np.median(everything) <= 0.5, np.median(everything)
        assert np.percentile(everything, 95) <= 1.5, np.percentile(everything, 95)
        for seq, values in errors.items():
            assert np.median(values) <= 0.5, (seq, np.median(values))

    def test_polarity_can_be_forced(self, synth_subjects):
        subject = next(s for s in synth_subjects if s.stems("T1Sag"))
        scan = subject.scans[subject.stems("T1Sag")[0]]
        truth = scan_centerline(subject, subject.stems("T1Sag")[0], step_mm=2.0)
        good = detect_centerline(scan.image, scan.affine, polarity="dark-csf")
        assert np.median(in_plane_errors(good, truth[5:-5])) < 0.5


class TestReal:
    @pytest.mark.parametrize(("image", "mask"), REAL_WITH_MASKS)
    def test_auto_matches_human_mask(self, image, mask):
        root = require_real_data()
        data, affine = read_volume(root / image)
        found = detect_centerline(data, affine)
        mask_data, mask_affine = read_volume(root / mask)
        reference = centerline_from_mask(mask_data, mask_affine).points
        errors = in_plane_errors(found, reference)
        assert np.median(errors) <= 1.0, errors
        assert np.percentile(errors, 95) <= 3.0, errors

    def test_storage_orientation_does_not_move_the_centreline(self):
        """The oblique sct-t2ms scan, stored two ways: the same world centreline."""
        root = require_real_data()
        img = nib.load(root / "sct-t2ms/t2.nii.gz")
        flipped = reorient(img, ("P", "I", "R"))
        a = detect_centerline(np.asarray(img.dataobj, np.float32), img.affine)
        b = detect_centerline(np.asarray(flipped.dataobj, np.float32), flipped.affine)
        np.testing.assert_allclose(a.points, b.points, atol=1e-3)
        assert a.points.shape[0] >= 15


class TestMaskBackendAndFormat:
    def test_mask_centroid_follows_truth(self, synth_subjects):
        subject = synth_subjects[0]
        stem = subject.stems("T2starAx")[0]
        scan = subject.scans[stem]
        found = centerline_from_mask(scan.cord_mask, scan.affine)
        truth = scan_centerline(subject, stem, step_mm=1.0)
        assert np.median(in_plane_errors(found, truth)) < 0.3

    def test_csv_contract(self, tmp_path):
        line = Centerline(np.array([[1.0, 2.0, 5.0], [1.5, 2.5, -3.0], [1.2, 2.2, 0.0]]))
        assert np.all(np.diff(line.points[:, 2]) > 0), "ordered inferior to superior"
        line.to_csv(tmp_path / "c.csv")
        text = (tmp_path / "c.csv").read_text().splitlines()
        assert text[0] == "x,y,z" and text[1] == "1.500,2.500,-3.000"
        np.testing.assert_allclose(Centerline.from_csv(tmp_path / "c.csv").points, line.points)
        np.testing.assert_allclose(line.xy_at([2.5]), [[1.1, 2.1]])

    def test_empty_mask_and_missing_sct_are_clear_errors(self, monkeypatch, tmp_path):
        with pytest.raises(CordfuseError, match="fewer than two"):
            centerline_from_mask(np.zeros((4, 4, 4)), np.eye(4))
        monkeypatch.setenv("PATH", str(tmp_path))
        with pytest.raises(CordfuseError, match="sct_deepseg is not on PATH"):
            sct_centerline(tmp_path / "x.nii.gz")

    def test_blank_image_has_no_cord(self):
        with pytest.raises(CordfuseError, match="no spinal cord"):
            detect_centerline(np.zeros((30, 30, 30)), np.eye(4))
