"""Centreline backends (issue 3, step 2): accuracy on synthetic truth and on real human masks."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

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
    @pytest.mark.slow
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

    @pytest.mark.slow
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


STANDIN = '''#!{python}
"""Stand-in for Spinal Cord Toolbox's {tool} (SCT >= 7.0 syntax): logs its arguments, then
writes {what}."""
import json, os, sys
import nibabel as nib
import numpy as np
from cordfuse.io import reorient

args = sys.argv[1:]
with open(os.environ["STANDIN_LOG"], "a") as log:
    log.write(json.dumps(["{tool}", *args]) + "\\n")
if os.environ.get("STANDIN_FAIL") == "{tool}":
    print("ERROR: model spinalcord is not installed", file=sys.stderr)
    sys.exit(1)
named = args[1:] if args[0] == "spinalcord" else args
value = dict(zip(named[::2], named[1::2]))
{body}
'''
DEEPSEG_BODY = """assert args[0] == "spinalcord", args
masks = json.loads(os.environ["STANDIN_MASKS"])
mask = nib.load(masks[os.path.abspath(value["-i"])])
nib.save(nib.Nifti1Image(np.asarray(mask.dataobj, np.uint8), mask.affine), value["-o"])
"""
CENTERLINE_BODY = """assert value["-method"] == "fitseg", args
seg = reorient(nib.load(value["-i"]))  # SCT works in RPI: a reoriented output tests the affine
data = np.asarray(seg.dataobj) > 0
line = np.zeros(data.shape, np.uint8)
for k in range(data.shape[2]):
    if data[:, :, k].any():
        i, j = np.rint(np.argwhere(data[:, :, k]).mean(axis=0)).astype(int)
        line[i, j, k] = 1
out = value["-o"] if value["-o"].endswith(".nii.gz") else value["-o"] + ".nii.gz"
nib.save(nib.Nifti1Image(line, seg.affine), out)
np.savetxt(out[:-7] + ".csv", np.argwhere(line), delimiter=",")
"""


@pytest.fixture()
def sct_standins(tmp_path, monkeypatch):
    """``sct_deepseg`` and ``sct_get_centerline`` on PATH: the first copies a known cord mask
    for its input (``STANDIN_MASKS``: image path -> mask path), the second writes one voxel per
    axial slice at the mask's centroid, in RPI, as SCT does. Both log their arguments."""
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool, what, body in (
        ("sct_deepseg", "the known cord mask of its input", DEEPSEG_BODY),
        ("sct_get_centerline", "a discrete centreline of a segmentation", CENTERLINE_BODY),
    ):
        script = bin_dir / tool
        script.write_text(STANDIN.format(python=sys.executable, tool=tool, what=what, body=body))
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("STANDIN_LOG", str(tmp_path / "calls.jsonl"))
    return tmp_path / "calls.jsonl"


class TestSctBackend:
    @pytest.mark.slow
    def test_one_image_end_to_end(self, synth_root, sct_standins, tmp_path, monkeypatch):
        from cordfuse.cli import main
        from cordfuse.dataset import discover

        subject = discover(synth_root).subjects[0]
        scan = next(s for s in subject.scans.get("STIR", subject.scans["T2Sag"]))
        monkeypatch.setenv(
            "STANDIN_MASKS", json.dumps({str(scan.path.resolve()): str(scan.cord_label)})
        )
        temp = tmp_path / "tmp"
        temp.mkdir()
        monkeypatch.setenv("TMPDIR", str(temp))
        tempfile.tempdir = None  # re-read TMPDIR
        try:
            assert (
                main(
                    [
                        "centerline",
                        str(scan.path.resolve()),
                        "-o",
                        str(tmp_path / "c.csv"),
                        "--method",
                        "sct",
                    ]
                )
                == 0
            )
        finally:
            tempfile.tempdir = None
        calls = [json.loads(line) for line in sct_standins.read_text().splitlines()]
        assert [c[0] for c in calls] == ["sct_deepseg", "sct_get_centerline"]
        deepseg, get_centerline = calls
        assert deepseg[1:4] == ["spinalcord", "-i", str(scan.path.resolve())]
        seg = deepseg[deepseg.index("-o") + 1]
        assert seg.endswith(".nii.gz") and get_centerline[1:3] == ["-i", seg]
        assert get_centerline[get_centerline.index("-method") + 1] == "fitseg"
        assert Path(seg).parent.parent == temp and not Path(seg).parent.exists()  # cleaned up
        found = Centerline.from_csv(tmp_path / "c.csv")
        mask, affine = read_volume(scan.cord_label)
        errors = in_plane_errors(found, centerline_from_mask(mask, affine).points)
        # The discrete centreline is rounded to voxels: at most half a pixel diagonal away. A
        # wrong orientation or affine would put it centimetres off.
        pixel = np.sqrt((affine[:3, :3] ** 2).sum(axis=0)).max()
        assert np.percentile(errors, 95) <= 0.75 * pixel, np.percentile(errors, 95)

    @pytest.mark.slow
    def test_prepare_converts_a_moved_slab_to_the_registered_world(
        self, synth_root, sct_standins, monkeypatch
    ):
        from dataclasses import replace

        from cordfuse.dataset import discover
        from cordfuse.preprocess.pipeline import PRESETS, prepare_subject

        subject = next(s for s in discover(synth_root).subjects if len(s.scans["T2Sag"]) == 2)
        scans = [scan for seq in subject.sequences for scan in subject.scans[seq]]
        monkeypatch.setenv(
            "STANDIN_MASKS", json.dumps({str(s.path.resolve()): str(s.cord_label) for s in scans})
        )
        with_sct = prepare_subject(subject, replace(PRESETS["small"], centerline="sct"))
        with_masks = prepare_subject(subject, replace(PRESETS["small"], centerline="mask"))
        assert {v["method"] for v in with_sct.centerlines.values()} == {"sct"}
        lower = with_sct.t2sag["slabs"][1]
        assert lower["registration_mm"] >= 1.5  # a missed conversion would show at this scale
        lower_z = (with_sct.geometry.z < lower["z_bounds"][1]) & (
            with_sct.geometry.z > lower["z_bounds"][0]
        )
        for seq in with_masks.sequences:
            covered = with_masks.images[seq].any(axis=(0, 1))
            gap = np.hypot(*(with_sct.centres[seq] - with_masks.centres[seq]).T)
            # Within the rounding of SCT's discrete centreline (half a ~0.9 mm pixel diagonal).
            assert np.median(gap[covered]) <= 0.7, (seq, np.median(gap[covered]))
            if seq == "T2Sag":
                assert np.median(gap[covered & lower_z]) <= 0.7

    def test_a_failing_sct_command_is_one_line(self, synth_root, sct_standins, monkeypatch):
        from cordfuse.dataset import discover

        scan = discover(synth_root).subjects[0].scans["T2Sag"][0]
        monkeypatch.setenv("STANDIN_MASKS", "{}")
        monkeypatch.setenv("STANDIN_FAIL", "sct_deepseg")
        with pytest.raises(CordfuseError) as info:
            sct_centerline(scan.path)
        assert str(info.value) == (
            f"{scan.path}: sct_deepseg failed: ERROR: model spinalcord is not installed"
        )
