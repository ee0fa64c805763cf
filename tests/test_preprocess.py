"""Pre-processing (issue 3): fusion, reference grid, crops, the way back, prepare, nnU-Net."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from conftest import require_real_data
from cordfuse.cli import main
from cordfuse.dataset import discover
from cordfuse.errors import CordfuseError
from cordfuse.io import apply_affine, inside_voxel_boxes, make_nifti, read_volume, save_nifti
from cordfuse.preprocess.centerline import Centerline
from cordfuse.preprocess.crop import (
    CropGeometry,
    crop_points,
    crop_to_world_grid,
    reference_geometry,
)
from cordfuse.preprocess.fusion import Slab, fuse_slabs, register_rigid
from cordfuse.preprocess.pipeline import (
    PRESETS,
    PreparedSubject,
    load_sequence,
    prepare_subject,
    restore,
)
from cordfuse.synth.acquire import acquire
from cordfuse.synth.cohort import generate_subject, rigid_matrix
from cordfuse.synth.protocol import CONTRASTS


def dice(a, b) -> float:
    a, b = a.astype(bool), b.astype(bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2 * (a & b).sum() / total


@pytest.fixture(scope="session")
def prepared_root(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "out"
    assert main(["prepare", str(synth_root), str(out), "--qc"]) == 0
    return out


class TestFusion:
    def test_half_of_the_overlap_from_each_slab(self):
        upper = Slab.from_array(np.ones((4, 4, 20)), np.diag([1.0, 1.0, 1.0, 1.0]), name="up")
        lower_affine = np.diag([1.0, 1.0, 1.0, 1.0])
        lower_affine[2, 3] = -12.0  # voxel k of lower is at z = k - 12: overlap z in [-0.5, 7.5]
        lower = Slab.from_array(2 * np.ones((4, 4, 20)), lower_affine, name="low")
        fused = fuse_slabs([lower, upper], register=False)
        assert [s.name for s in fused.slabs] == ["up", "low"]
        split = fused.slabs[0].z_bounds[0]
        assert split == pytest.approx(3.5)  # middle of [-0.5, 7.5]
        z = np.array([-5.0, 3.0, 4.0, 15.0])
        values, covered = fused.sample(np.c_[np.ones(4), np.ones(4), z])
        np.testing.assert_array_equal(values, [2, 2, 1, 1])
        assert covered.all()
        shape, affine = fused.fused_grid()
        assert shape == (4, 4, 32) and affine[2, 3] == pytest.approx(-12.0)
        outside, cov = fused.sample(np.array([[1.0, 1.0, 100.0]]))
        assert outside[0] == 0 and not cov[0], "zero outside every slab's coverage"

    @pytest.mark.parametrize(
        ("rotvec_deg", "shift_mm"),
        [
            ((0.0, 0.0, 0.0), (3.0, 0.0, 0.0)),
            ((2.0, 0.0, 0.0), (0.0, -2.0, 2.0)),
            ((0.0, 1.2, -1.5), (-1.5, 2.0, -1.5)),
        ],
    )
    def test_registration_recovers_known_offsets(self, rotvec_deg, shift_mm):
        subject = generate_subject(5, 2, "B")  # two T2Sag slabs
        upper_stem, lower_stem = subject.stems("T2Sag")
        plan = subject.plans[lower_stem]
        upper = subject.scans[upper_stem]
        overlap_z = 0.5 * (
            Slab.from_array(upper.image, upper.affine).z_extent()[0]
            + Slab.from_array(subject.scans[lower_stem].image, plan.affine).z_extent()[1]
        )
        centre = subject.anatomy.centerline([overlap_z])[0]
        known = rigid_matrix(rotvec_deg, shift_mm, centre)
        lower = acquire(
            subject.anatomy,
            plan.affine,
            plan.shape,
            CONTRASTS["T2Sag"],
            sequence="T2Sag",
            motion=known,
            displacement=plan.displacement,
            scanner=plan.scanner,
            rng=np.random.default_rng(0),
        )
        found = register_rigid(
            Slab.from_array(upper.image, upper.affine), Slab.from_array(lower.image, lower.affine)
        )
        z = np.linspace(overlap_z - 15, overlap_z + 15, 7)
        points = subject.anatomy.centerline(z)
        points = np.concatenate([points + [dx, dy, 0] for dx in (-10, 0, 10) for dy in (-10, 10)])
        error = np.linalg.norm(apply_affine(found, points) - apply_affine(known, points), axis=1)
        assert error.max() <= 0.5, error.max()

    def test_registration_is_deterministic(self):
        """The same pair gives the same transform, bit for bit: ITK's threaded metric did not
        (1e-3 mm between runs, enough to flip predicted voxels in CI)."""
        import SimpleITK as sitk

        subject = generate_subject(5, 2, "B")
        upper, lower = (subject.scans[stem] for stem in subject.stems("T2Sag"))
        pair = [Slab.from_array(scan.image, scan.affine) for scan in (upper, lower)]
        threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
        found = [register_rigid(*pair) for _ in range(6)]
        for other in found[1:]:
            np.testing.assert_array_equal(found[0], other)
        assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == threads


class TestCropGeometry:
    def test_grid_extent_is_cord_extent_plus_margin(self):
        geometry = reference_geometry(
            [(-100.0, 20.0), (-60.0, 35.0)], spacing=0.5, size=48, margin=10.0
        )
        assert geometry.z0 == pytest.approx(-110.0)
        assert geometry.z[-1] <= 45.0 and geometry.z[-1] > 44.4

    def test_crop_and_inverse_agree(self):
        geometry = CropGeometry(spacing=0.5, size=16, z0=-10.0, nz=41)
        centres = np.c_[2.0 * np.sin(geometry.z / 7), 1.0 + 0.1 * geometry.z]
        points = crop_points(geometry, centres)
        field = points[..., 0] * 0.3 + points[..., 1] ** 2 * 0.05 + points[..., 2] * 0.1
        # A world grid inside the crop tube: the inverse must reproduce the same function.
        affine = np.diag([0.7, 0.7, 1.3, 1.0])
        affine[:3, 3] = [-2.0, -1.5, -9.0]
        shape = (6, 6, 13)
        back = crop_to_world_grid(field, geometry, centres, shape, affine)
        world = apply_affine(affine, np.indices(shape).reshape(3, -1).T).reshape(*shape, 3)
        expected = world[..., 0] * 0.3 + world[..., 1] ** 2 * 0.05 + world[..., 2] * 0.1
        np.testing.assert_allclose(back, expected, atol=0.02)
        assert crop_points(geometry, centres)[0, 0, 0, 0] > centres[0, 0], "i runs right to left"

    def test_an_oblique_scan_larger_than_the_crop_gets_it_wherever_it_reaches(self):
        """The inverse maps only the block of the scan's voxels around the crop's world box: on
        an oblique, flipped grid far larger than the crop, every voxel whose crop coordinates
        fall in the crop's voxel boxes (found here from all of them) gets the crop's value, and
        every other voxel 0."""
        from scipy.spatial.transform import Rotation

        geometry = CropGeometry(spacing=1.0, size=8, z0=-6.0, nz=13)
        centres = np.c_[3.0 * np.sin(geometry.z / 5), -2.0 + 0.2 * geometry.z]
        crop = np.ones((8, 8, 13), np.float32)
        affine = np.eye(4)
        affine[:3, :3] = Rotation.from_euler("xyz", [20, -10, 35], degrees=True).as_matrix()
        affine[:3, :3] = affine[:3, :3] @ np.diag([-0.8, 0.9, 1.7])
        shape = (50, 44, 20)
        affine[:3, 3] = -affine[:3, :3] @ ((np.array(shape) - 1) / 2)  # centred on the cord
        back = crop_to_world_grid(crop, geometry, centres, shape, affine, order=0)
        world = apply_affine(affine, np.indices(shape).reshape(3, -1).T)
        k = (world[:, 2] - geometry.z0) / geometry.spacing
        i = np.interp(k, np.arange(13), centres[:, 0]) - world[:, 0] + 3.5
        j = world[:, 1] - np.interp(k, np.arange(13), centres[:, 1]) + 3.5
        inside = inside_voxel_boxes(np.c_[i, j, k], (8, 8, 13)).reshape(shape)
        assert 0 < inside.sum() < inside.size / 10  # the crop is a small part of the scan
        np.testing.assert_array_equal(back, inside.astype(np.float32))

    def test_voxels_on_the_crop_edge_do_not_flip_with_float_noise(self):
        """A world grid sharing the crop's planes puts voxels exactly on its edge (-0.5): a
        1e-12 mm change of the centres (slab registration noise) must not move them out."""
        geometry = CropGeometry(spacing=0.5, size=8, z0=0.0, nz=9)
        centres = np.zeros((geometry.nz, 2))
        affine = np.diag([0.5, 0.5, 0.5, 1.0])
        affine[:3, 3] = [-2.0, -2.0, -1.0]  # x, y = -2 and +2 mm are the crop's edges
        crop = np.ones((8, 8, 9), np.float32)
        covered = [
            crop_to_world_grid(crop, geometry, centres + delta, (12, 12, 24), affine) > 0
            for delta in (0.0, 1e-12, -1e-12)
        ]
        assert covered[0].any()
        for other in covered[1:]:
            np.testing.assert_array_equal(covered[0], other)
        # the edge voxels (first and ninth of x and y) are in, the tenth is out
        for axis in (0, 1):
            assert covered[0].take(0, axis).any() and covered[0].take(8, axis).any()
            assert not covered[0].take(9, axis).any()


class TestPrepared:
    def test_outputs_and_dataset_json(self, prepared_root, synth_root):
        document = json.loads((prepared_root / "dataset.json").read_text())
        assert document["spacing_mm"] == 0.5 and document["crop_size"] == 48
        assert document["sequences"] == ["T2Sag", "STIR", "T2starAx", "T2Ax", "T1Sag", "MP2RAGE"]
        assert document["cohorts"] == ["A", "B", "C"] and not document["failed"]
        assert len(document["subjects"]) == 4
        for entry in document["subjects"]:
            prepared = PreparedSubject.load(prepared_root / entry["id"])
            assert (prepared_root / entry["id"] / "qc.png").stat().st_size > 10_000
            g = prepared.geometry
            for seq, crop in prepared.images.items():
                assert crop.shape == (48, 48, g.nz)
                assert prepared.stats[seq]["std"] > 0
            assert prepared.availability.tolist() == [
                s in entry["sequences"] for s in document["sequences"]
            ]
            assert prepared.label is not None and set(np.unique(prepared.label)) <= {0, 1}
            truth = json.loads(
                (synth_root / "derivatives/synth" / f"{entry['id']}_truth.json").read_text()
            )
            # The grid covers the true cord seen by the scans (+10 mm), not much more.
            assert (
                g.z0
                <= min(p[2] for s in truth["scans"].values() for p in s["centerline_world_mm"][:1])
                + 1.0
            )

    def test_lesion_round_trip_onto_native_t2sag(self, prepared_root, synth_root):
        """label crop -> restore -> native grid reproduces the native ground truth.

        Fused grid: against the fused ground truth. Each slab: within the S-I share it gives to
        the fusion (in the overlap the other slab's own ground truth, drawn on its own shifted
        grid, legitimately differs by a voxel here and there).
        """
        fused_scores, slab_scores = [], []
        for subject in discover(synth_root).subjects:
            prepared = PreparedSubject.load(prepared_root / subject.name)
            crop = prepared.label.astype(np.float32)
            sequence, _ = load_sequence(subject, "T2Sag", PRESETS["paper"])
            truth_fused, truth_affine, _ = sequence.render(what="lesion")
            back, back_affine = restore(prepared, crop)
            np.testing.assert_allclose(back_affine, truth_affine, atol=1e-6)
            assert back.shape == truth_fused.shape == tuple(prepared.t2sag["fused_shape"])
            if (truth_fused > 0.5).any():
                fused_scores.append(dice(back > 0.5, truth_fused > 0.5))
            for k, scan in enumerate(subject.scans["T2Sag"]):
                truth, affine = read_volume(scan.lesion_label)
                back, back_affine = restore(prepared, crop, slab=k)
                np.testing.assert_allclose(back_affine, affine, atol=1e-5)
                info = prepared.t2sag["slabs"][k]
                z = apply_affine(
                    np.array(info["affine"]), np.indices(truth.shape).reshape(3, -1).T
                )[:, 2]
                own = ((z >= info["z_bounds"][0]) & (z < info["z_bounds"][1])).reshape(truth.shape)
                if (truth[own] > 0.5).any():
                    slab_scores.append(dice(back[own] > 0.5, truth[own] > 0.5))
        assert fused_scores and min(fused_scores) >= 0.95, fused_scores
        assert slab_scores and min(slab_scores) >= 0.95, slab_scores

    def test_cord_voxels_fall_inside_the_crops(self, prepared_root, synth_root):
        ds = discover(synth_root)
        inside_total = count_total = 0
        for subject in ds.subjects:
            prepared = PreparedSubject.load(prepared_root / subject.name)
            g = prepared.geometry
            for seq, scans in subject.scans.items():
                for scan in scans:
                    mask, affine = read_volume(scan.cord_label)
                    world = apply_affine(affine, np.argwhere(mask > 0.5))
                    if seq == "T2Sag":  # a registered slab: use its corrected affine
                        info = next(
                            s for s in prepared.t2sag["slabs"] if s["path"] == str(scan.path)
                        )
                        correction = np.array(info["affine"]) @ np.linalg.inv(affine)
                        world = apply_affine(correction, world)
                    k = (world[:, 2] - g.z0) / g.spacing
                    centre = np.c_[
                        np.interp(k, np.arange(g.nz), prepared.centres[seq][:, 0]),
                        np.interp(k, np.arange(g.nz), prepared.centres[seq][:, 1]),
                    ]
                    half = g.size * g.spacing / 2
                    ok = (
                        (np.abs(world[:, :2] - centre).max(axis=1) <= half)
                        & (k >= -0.5)
                        & (k <= g.nz - 0.5)
                    )
                    inside_total += ok.sum()
                    count_total += len(ok)
        assert inside_total / count_total >= 0.99, inside_total / count_total

    @pytest.mark.slow
    def test_restore_cli_brings_nnunet_labels_back(self, synth_root, tmp_path, capsys):
        out, nnunet = tmp_path / "prep", tmp_path / "nnunet"
        assert (
            main(
                ["prepare", str(synth_root), str(out), "--preset", "small", "--nnunet", str(nnunet)]
            )
            == 0
        )
        document = json.loads((nnunet / "dataset.json").read_text())
        assert document["channel_names"] == {
            "0": "T2Sag",
            "1": "STIR",
            "2": "T2starAx",
            "3": "T2Ax",
            "4": "T1Sag",
            "5": "MP2RAGE",
        }
        assert document["labels"] == {"background": 0, "lesion": 1}
        assert document["numTraining"] == 4 and document["file_ending"] == ".nii.gz"
        label = nib.load(nnunet / "labelsTr" / "sub-001.nii.gz")
        for channel in range(6):
            image = nib.load(nnunet / "imagesTr" / f"sub-001_{channel:04d}.nii.gz")
            assert image.shape == label.shape and image.shape[:2] == (24, 24)
        prepared = PreparedSubject.load(out / "sub-001")
        assert int(np.asarray(label.dataobj).sum()) == int(prepared.label.sum())
        first = discover(synth_root).subjects[0].scans["T2Sag"][0]
        target = tmp_path / "restored.nii.gz"
        assert (
            main(
                [
                    "restore",
                    str(out / "sub-001"),
                    str(nnunet / "labelsTr/sub-001.nii.gz"),
                    "-o",
                    str(target),
                    "--slab",
                    "1",  # the BIDS chunk number, as in the file name
                ]
            )
            == 0
        )
        assert (
            "_chunk-1_" in first.path.name
            or len(discover(synth_root).subjects[0].scans["T2Sag"]) == 1
        )
        restored = nib.load(target)
        native = nib.load(first.path)
        assert restored.shape == native.shape
        np.testing.assert_allclose(restored.affine, native.affine, atol=1e-5)
        truth, _ = read_volume(first.lesion_label)
        if truth.sum():
            assert dice(np.asarray(restored.dataobj) > 0, truth > 0) >= 0.85  # 1 mm small preset

    @pytest.mark.slow
    def test_second_run_skips_and_overwrite_redoes(self, synth_root, tmp_path, capsys):
        out = tmp_path / "prep"
        assert main(["prepare", str(synth_root), str(out), "--preset", "small"]) == 0
        capsys.readouterr()
        assert main(["prepare", str(synth_root), str(out), "--preset", "small"]) == 0
        assert "0 prepared, 4 skipped" in capsys.readouterr().out
        assert (
            main(
                [
                    "prepare",
                    str(synth_root),
                    str(out),
                    "--preset",
                    "small",
                    "--overwrite",
                    "--jobs",
                    "2",
                ]
            )
            == 0
        )
        assert "4 prepared, 0 skipped" in capsys.readouterr().out


class TestBadInput:
    @pytest.mark.slow
    def test_each_bad_subject_fails_alone_with_one_line(self, synth_copy, tmp_path, capsys):
        anat = {s: synth_copy / s / "anat" for s in ("sub-001", "sub-002", "sub-003", "sub-004")}
        # sub-001: no T2Sag.
        for path in anat["sub-001"].glob("*acq-sag*_T2w.nii.gz"):
            path.unlink()
        # sub-002: NaN in T2Sag.
        t2 = sorted(anat["sub-002"].glob("*acq-sag*_T2w.nii.gz"))[0]
        img = nib.load(t2)
        data = np.asarray(img.dataobj).astype(np.float32)
        data[0, 0, 0] = np.nan
        nib.save(nib.Nifti1Image(data, img.affine), t2)
        # sub-003: a second sequence whose field of view misses the T2Sag cord entirely.
        subject3 = next(x for x in discover(synth_copy).subjects if x.subject_id == "sub-003")
        seq = next(q for q in subject3.sequences if q != "T2Sag")
        for scan in subject3.scans[seq]:
            for path in (scan.path, scan.cord_label):
                img = nib.load(path)
                far = img.affine.copy()
                far[2, 3] -= 2000.0
                nib.save(nib.Nifti1Image(np.asarray(img.dataobj), far), path)
        other = subject3.scans[seq][0].path
        before = {p: p.stat().st_mtime_ns for p in synth_copy.rglob("*")}
        out = tmp_path / "prep"
        status = main(["prepare", str(synth_copy), str(out), "--preset", "small"])
        captured = capsys.readouterr()
        assert status == 1
        failed = [line for line in captured.err.splitlines() if line.startswith("FAILED")]
        assert len(failed) == 2, captured.err
        assert "sub-001" in failed[0] and "no T2Sag" in failed[0]
        assert "sub-002" in failed[1] and t2.name in failed[1] and "NaN" in failed[1]
        # Only a T2Sag without cord refuses a subject: the far sequence is dropped, one line.
        dropped = [line for line in captured.out.splitlines() if line.startswith("warning sub-003")]
        assert len(dropped) == 1 and f"{seq} dropped" in dropped[0], captured.out
        assert other.name in dropped[0] and "does not overlap the T2Sag cord" in dropped[0]
        assert "2 prepared, 0 skipped (already done), 2 failed" in captured.out
        assert PreparedSubject.load(out / "sub-003").sequences == [
            q for q in subject3.sequences if q != seq
        ]
        assert (out / "sub-004" / "prepared.npz").exists()
        document = json.loads((out / "dataset.json").read_text())
        assert [f["id"] for f in document["failed"]] == ["sub-001", "sub-002"]
        assert {p: p.stat().st_mtime_ns for p in synth_copy.rglob("*")} == before

    def test_label_grid_mismatch_and_blank_t2sag(self, synth_copy, tmp_path):
        ds = discover(synth_copy)
        scan = ds.subjects[0].scans["T2Sag"][0]
        limg = nib.load(scan.lesion_label)
        nib.save(nib.Nifti1Image(np.asarray(limg.dataobj)[:-1], limg.affine), scan.lesion_label)
        with pytest.raises(CordfuseError, match="label grid differs"):
            prepare_subject(discover(synth_copy).subjects[0], PRESETS["small"])
        for subject in discover(synth_copy).subjects[1:]:
            for scan in subject.scans["T2Sag"]:
                img = nib.load(scan.path)
                nib.save(nib.Nifti1Image(np.full(img.shape, 100, np.int16), img.affine), scan.path)
        for subject in discover(synth_copy).subjects[1:]:
            expected = "blank image" if len(subject.scans["T2Sag"]) > 1 else "no spinal cord found"
            with pytest.raises(CordfuseError, match=expected) as caught:
                prepare_subject(subject, PRESETS["small"])
            assert "\n" not in str(caught.value)

    def test_output_inside_dataset_is_refused(self, synth_copy, capsys):
        assert main(["prepare", str(synth_copy), str(synth_copy / "derivatives/x")]) == 2
        assert "never writes into" in capsys.readouterr().err


class TestRealOblique:
    @pytest.mark.slow
    def test_oblique_scan_keeps_world_positions(self, tmp_path):
        """sct-t2ms (oblique affine) as the reference: crop it and map the crop back."""
        root = require_real_data()
        bids = tmp_path / "bids"
        (bids / "sub-ms" / "anat").mkdir(parents=True)
        shutil.copy(root / "sct-t2ms/t2.nii.gz", bids / "sub-ms/anat/sub-ms_acq-sag_T2w.nii.gz")
        subject = discover(bids).subjects[0]
        prepared = prepare_subject(subject, PRESETS["paper"])
        image = prepared.images["T2Sag"]
        back, affine = restore(prepared, image)
        native, native_affine = read_volume(subject.scans["T2Sag"][0].path)
        np.testing.assert_allclose(affine, native_affine, atol=1e-5)
        tube = back != 0
        assert tube.sum() > 1000
        # Mapping native -> crop -> native reproduces the native intensities in the tube.
        error = np.abs(back[tube] - native[tube]) / native[tube].std()
        assert np.median(error) < 0.15, np.median(error)
        assert np.corrcoef(back[tube], native[tube])[0, 1] > 0.9


def test_centerline_cli_writes_csv_and_qc(synth_root, tmp_path, capsys):
    image = sorted((synth_root / "sub-001/anat").glob("*acq-sag*_T2w.nii.gz"))[0]
    csv, png = tmp_path / "c.csv", tmp_path / "c.png"
    assert main(["centerline", str(image), "-o", str(csv), "--qc", str(png)]) == 0
    line = Centerline.from_csv(csv)
    assert csv.read_text().startswith("x,y,z\n")
    low, high = line.z_range
    assert high - low > 150, "the T2Sag slab covers the cervical and upper thoracic cord"
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["centerline", str(tmp_path / "none.nii.gz"), "-o", str(csv)]) == 2


def test_save_and_load_round_trip(tmp_path, synth_root):
    subject = discover(synth_root).subjects[2]
    prepared = prepare_subject(subject, PRESETS["small"])
    prepared.save(tmp_path / "p.npz")
    loaded = PreparedSubject.load(tmp_path / "p.npz", native=True)
    assert loaded.sequences == prepared.sequences and loaded.config == prepared.config
    for seq in prepared.sequences:  # exact: the crops are stored as float32
        np.testing.assert_array_equal(loaded.images[seq], prepared.images[seq])
    # self-contained: the fused native T2Sag and its ground truth travel with the crops
    np.testing.assert_array_equal(loaded.native.image, prepared.native.image)
    np.testing.assert_array_equal(loaded.native.lesion, prepared.native.lesion)
    np.testing.assert_array_equal(loaded.native.affine, prepared.t2sag["fused_affine"])
    assert loaded.synth_truth == prepared.synth_truth and loaded.synth_truth["scans"]
    stacked = loaded.stacked()
    assert stacked.shape[0] == 6
    for i, present in enumerate(loaded.availability):
        assert present == bool(np.abs(stacked[i]).sum() > 0)
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(CordfuseError, match="not a prepared cordfuse subject"):
        PreparedSubject.load(tmp_path / "bad.npz")
    save_nifti(make_nifti(np.zeros((2, 2, 2), np.uint8), np.eye(4)), tmp_path / "x.nii.gz")
    with pytest.raises(CordfuseError, match="expected"):
        restore(loaded, np.zeros((2, 2, 2)))


@pytest.mark.slow
def test_mask_and_sct_centreline_backends(synth_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "mask"
    assert (
        main(["prepare", str(synth_root), str(out), "--preset", "small", "--centerline", "mask"])
        == 0
    )
    prepared = PreparedSubject.load(out / "sub-001")
    assert prepared.config.centerline == "mask"
    truth = json.loads((synth_root / "derivatives/synth/sub-001_truth.json").read_text())
    t2_stem = next(k for k, v in truth["scans"].items() if v["sequence"] == "T2Sag")
    line = np.asarray(truth["scans"][t2_stem]["centerline_world_mm"])
    g = prepared.geometry
    inside = (line[:, 2] > g.z[0]) & (line[:, 2] < g.z[-1])
    centre = np.c_[
        np.interp(line[inside, 2], g.z, prepared.centres["T2Sag"][:, 0]),
        np.interp(line[inside, 2], g.z, prepared.centres["T2Sag"][:, 1]),
    ]
    assert np.median(np.hypot(*(centre - line[inside, :2]).T)) < 0.5
    monkeypatch.setenv("PATH", str(tmp_path))
    capsys.readouterr()
    assert (
        main(
            [
                "prepare",
                str(synth_root),
                str(tmp_path / "sct"),
                "--preset",
                "small",
                "--centerline",
                "sct",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert err.count("sct_deepseg is not on PATH") == 4


@pytest.mark.slow
@pytest.mark.parametrize("scale", [1e6, 1e-6])
def test_crops_keep_any_scanner_intensity_scale(synth_copy, tmp_path, scale):
    """Float-scaled scanners store values beyond float16's 65504, others tiny ones: the prepared
    crops (and what training reads from them) keep them all, finite and to float32 precision."""
    from cordfuse.training.data import normalise

    subject = discover(synth_copy).subjects[0]
    reference = prepare_subject(subject, PRESETS["small"])
    for scans in subject.scans.values():
        for scan in scans:
            img = nib.load(scan.path)
            data = np.asarray(img.dataobj, np.float64)
            save_nifti(
                make_nifti((data / data.max() * scale).astype(np.float32), img.affine), scan.path
            )
    scaled = prepare_subject(subject, PRESETS["small"])
    scaled.save(tmp_path / "p.npz")
    loaded = PreparedSubject.load(tmp_path / "p.npz")
    assert loaded.sequences == reference.sequences
    for seq in loaded.sequences:
        crop = loaded.images[seq]
        assert np.isfinite(crop).all()
        np.testing.assert_array_equal(crop, scaled.images[seq])
        peak = reference.images[seq].max()
        np.testing.assert_allclose(
            crop / crop.max(), reference.images[seq] / peak, rtol=1e-4, atol=1e-5
        )
    images, available = normalise(loaded, loaded.sequences)
    assert available.all() and np.isfinite(images).all()
    reference_images, _ = normalise(reference, reference.sequences)
    np.testing.assert_allclose(images, reference_images, rtol=1e-3, atol=1e-3)
