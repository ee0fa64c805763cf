"""NIfTI I/O, and the real scans of ../shared/data/real read with the right orientation."""

from __future__ import annotations

import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest

from conftest import require_real_data
from cordfuse.check import check_dataset
from cordfuse.dataset import discover
from cordfuse.errors import CordfuseError
from cordfuse.io import (
    apply_affine,
    axcodes,
    make_nifti,
    read_volume,
    reorient,
    save_nifti,
    voxel_sizes,
)
from cordfuse.sequences import load_rules

REAL = [
    ("sct-errsm30/t2.nii.gz", ("P", "S", "R"), (1.0, 1.0, 1.0)),
    ("sct-errsm30/mt1.nii.gz", ("L", "A", "S"), (0.84, 0.84, 17.0)),
    ("sct-t2s/t2s.nii.gz", ("L", "A", "S"), (0.5, 0.5, 7.5)),
    ("sct-t2ms/t2.nii.gz", ("L", "A", "S"), (0.69, 0.69, 7.5)),
    ("spinegeneric-unf01/sub-unf01_T2w.nii.gz", ("R", "A", "S"), (1.0, 1.0, 1.0)),
]


class TestWrite:
    def test_save_is_deterministic_and_atomic(self, tmp_path):
        data = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
        affine = np.diag([0.5, 0.6, 3.0, 1.0])
        save_nifti(make_nifti(data, affine), tmp_path / "a.nii.gz")
        save_nifti(make_nifti(data, affine), tmp_path / "b.nii.gz")
        assert (tmp_path / "a.nii.gz").read_bytes() == (tmp_path / "b.nii.gz").read_bytes()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz", "b.nii.gz"]
        mask = os.umask(0)
        os.umask(mask)
        assert (tmp_path / "a.nii.gz").stat().st_mode & 0o777 == 0o666 & ~mask
        back, back_affine = read_volume(tmp_path / "a.nii.gz", dtype=np.int16)
        np.testing.assert_array_equal(back, data)
        np.testing.assert_allclose(back_affine, affine)
        img = nib.load(tmp_path / "a.nii.gz")
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1

    def test_missing_and_4d_files_are_clear_errors(self, tmp_path):
        with pytest.raises(CordfuseError, match="file not found"):
            read_volume(tmp_path / "missing.nii.gz")
        nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 3), np.float32), np.eye(4)), tmp_path / "x.nii")
        with pytest.raises(CordfuseError, match="not a 3D image"):
            read_volume(tmp_path / "x.nii")


class TestRealScans:
    @pytest.mark.parametrize(("rel", "codes", "spacing"), REAL)
    def test_orientation_and_spacing(self, rel, codes, spacing):
        root = require_real_data()
        data, affine = read_volume(root / rel)
        assert axcodes(affine) == codes
        np.testing.assert_allclose(voxel_sizes(affine), spacing, atol=0.01)
        assert data.ndim == 3 and np.isfinite(data).all()

    @pytest.mark.parametrize(("rel", "codes", "spacing"), REAL)
    def test_reorient_to_rpi_keeps_world_positions(self, rel, codes, spacing):
        root = require_real_data()
        img = nib.load(root / rel)
        rpi = reorient(img)
        assert axcodes(rpi.affine) == ("R", "P", "I")
        original = np.asarray(img.dataobj)
        moved = np.asarray(rpi.dataobj)
        # The brightest voxel sits at the same world position in both.
        src = np.unravel_index(np.argmax(original), original.shape)
        dst = np.unravel_index(np.argmax(moved), moved.shape)
        np.testing.assert_allclose(
            apply_affine(img.affine, src), apply_affine(rpi.affine, dst), atol=1e-4
        )

    def test_oblique_affine_detected(self):
        root = require_real_data()
        affine = nib.load(root / "sct-t2ms/t2.nii.gz").affine
        directions = affine[:3, :3] / voxel_sizes(affine)
        assert np.abs(np.abs(directions).max(axis=0) - 1).max() > 1e-3, "sct-t2ms is oblique"

    def test_real_scans_discovered_in_a_bids_tree(self, tmp_path):
        root = require_real_data()
        bids = tmp_path / "bids"
        anat = bids / "sub-unf01" / "anat"
        labels = bids / "derivatives" / "labels" / "sub-unf01" / "anat"
        anat.mkdir(parents=True)
        labels.mkdir(parents=True)
        src = root / "spinegeneric-unf01"
        for contrast in ("T1w", "T2w", "T2star"):
            shutil.copy(src / f"sub-unf01_{contrast}.nii.gz", anat)
            shutil.copy(src / f"sub-unf01_{contrast}_seg-manual.nii.gz", labels)
        errsm = bids / "sub-errsm30" / "anat"
        errsm.mkdir(parents=True)
        shutil.copy(root / "sct-errsm30/t2.nii.gz", errsm / "sub-errsm30_T2w.nii.gz")
        (bids / "participants.tsv").write_text("participant_id\tcohort\nsub-unf01\treal\n")
        mapping = tmp_path / "map.json"
        mapping.write_text(
            json.dumps(
                {
                    "T2Sag": {"suffix": "T2w"},
                    "T2starAx": {"suffix": "T2star"},
                    "T1Sag": {"suffix": "T1w"},
                }
            )
        )
        ds = discover(bids, rules=load_rules(mapping))
        by_id = {s.subject_id: s for s in ds.subjects}
        unf = by_id["sub-unf01"]
        assert unf.sequences == ["T2Sag", "T2starAx", "T1Sag"] and unf.cohort == "real"
        assert all(s.cord_label is not None for scans in unf.scans.values() for s in scans)
        assert by_id["sub-errsm30"].scans["T2Sag"][0].path.name == "sub-errsm30_T2w.nii.gz"
        report = check_dataset(ds)
        assert report.ok, [str(p) for p in report.problems]
        # Without the mapping, these names carry no plane: T2Sag is not found, and check says so.
        plain = check_dataset(discover(bids))
        assert any("no T2Sag" in p.reason for p in plain.problems)
