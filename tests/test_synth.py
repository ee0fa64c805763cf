"""Behaviour of the synthetic cohort generator (issue 2, section 3)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from cordfuse.io import apply_affine, axcodes, voxel_sizes
from cordfuse.ownership import MANIFEST
from cordfuse.synth.anatomy import draw_anatomy
from cordfuse.synth.cohort import generate_subject, plan_scans, subject_rng, write_cohort
from cordfuse.synth.protocol import LESION_SIGN, PROTOCOLS, cohort_profile

SEQS = ("T2Sag", "STIR", "T2starAx", "T2Ax", "T1Sag", "MP2RAGE")


def _files(root):
    """The dataset's files and bytes, less the ownership manifest (it records when it was made)."""
    return {
        p.relative_to(root): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


class TestDeterminism:
    @pytest.mark.slow
    def test_same_seed_same_bytes_other_seed_other_data(self, tmp_path):
        a = write_cohort(tmp_path / "a", subjects=2, seed=7)
        b = write_cohort(tmp_path / "b", subjects=2, seed=7)
        c = write_cohort(tmp_path / "c", subjects=2, seed=8)
        files_a, files_b = _files(a), _files(b)
        assert files_a.keys() == files_b.keys()
        assert all(files_a[k] == files_b[k] for k in files_a), "same seed must give same bytes"
        t2 = "sub-001/anat"
        images_a = {k: v for k, v in files_a.items() if str(k).startswith(t2)}
        images_c = {k: v for k, v in _files(c).items() if str(k).startswith(t2)}
        assert images_a != images_c

    def test_subject_does_not_depend_on_cohort_size(self):
        one = generate_subject(3, 2, "B")
        again = generate_subject(3, 2, "B")
        stem = next(iter(one.scans))
        np.testing.assert_array_equal(one.scans[stem].image, again.scans[stem].image)
        assert one.plans.keys() == again.plans.keys()


class TestGroundTruth:
    def test_lesions_inside_cord_binary_on_t2sag_grid(self, synth_root):
        lesion_files = sorted(
            synth_root.glob("derivatives/labels/sub-*/anat/*_lesion-manual.nii.gz")
        )
        assert lesion_files, "every subject has lesion labels on its T2Sag slabs"
        total = 0
        for path in lesion_files:
            stem = path.name.removesuffix("_lesion-manual.nii.gz")
            assert "acq-sag" in stem and stem.endswith("T2w")
            subject = stem.split("_")[0]
            image = nib.load(synth_root / subject / "anat" / f"{stem}.nii.gz")
            lesion = nib.load(path)
            cord = nib.load(path.with_name(f"{stem}_seg-manual.nii.gz"))
            assert lesion.shape == image.shape
            np.testing.assert_allclose(lesion.affine, image.affine, atol=1e-6)
            data = np.asarray(lesion.dataobj)
            assert set(np.unique(data)) <= {0, 1}
            outside = data.astype(bool) & ~np.asarray(cord.dataobj).astype(bool)
            assert not outside.any(), f"{path.name}: lesion voxels outside the cord mask"
            total += int(data.sum())
        assert total > 0

    def test_cord_masks_cover_true_centreline(self, synth_root):
        for truth_path in sorted(synth_root.glob("derivatives/synth/sub-*_truth.json")):
            truth = json.loads(truth_path.read_text())
            subject = truth["subject"]
            c7 = truth["levels_z_mm"]["C7"][1]
            for stem, scan in truth["scans"].items():
                seg = nib.load(
                    synth_root
                    / "derivatives/labels"
                    / subject
                    / "anat"
                    / f"{stem}_seg-manual.nii.gz"
                )
                points = np.asarray(scan["centerline_world_mm"])
                assert len(points) > 5, stem
                vox = np.rint(apply_affine(np.linalg.inv(seg.affine), points)).astype(int)
                vox = np.clip(vox, 0, np.array(seg.shape) - 1)
                inside = np.asarray(seg.dataobj)[tuple(vox.T)].astype(bool)
                assert inside.mean() >= 0.97, f"{stem}: {inside.mean():.3f}"
                assert inside[points[:, 2] > c7].all(), f"{stem}: cervical centreline not in mask"

    def test_truth_centreline_is_inferior_to_superior_world_mm(self, synth_root):
        truth = json.loads(next(synth_root.glob("derivatives/synth/*_truth.json")).read_text())
        line = np.asarray(truth["centerline_world_mm"])
        assert line.shape[1] == 3 and np.all(np.diff(line[:, 2]) > 0)
        low, high = truth["cord_extent_z_mm"]
        assert line[0, 2] >= low - 1 and line[-1, 2] <= high
        assert high - low > 350, "the cord runs from the medulla to the conus"

    def test_lower_slab_rigidly_misaligned_other_sequences_displaced(self, synth_subjects):
        seen_two_slabs = seen_displaced = False
        for subject in synth_subjects:
            t2 = subject.stems("T2Sag")
            assert np.array_equal(subject.plans[t2[0]].motion, np.eye(4))
            if len(t2) == 2:
                motion = subject.plans[t2[1]].motion
                angle = np.degrees(np.arccos(np.clip((np.trace(motion[:3, :3]) - 1) / 2, -1, 1)))
                assert 0.1 < angle <= 2.0 + 1e-9
                # Displacement of the cord in the overlap stays within the protocol's 3 mm + lever.
                seen_two_slabs = True
            ref = subject.anatomy.centerline(np.arange(-150.0, 0.0, 2.0))
            for stem, plan in subject.plans.items():
                if plan.sequence == "T2Sag":
                    continue
                dx, dy = plan.displacement(ref[:, 2])
                peak = np.hypot(dx, dy).max()
                assert 0.3 <= peak <= 2.0 + 1e-9, (stem, peak)
                seen_displaced = True
        assert seen_two_slabs and seen_displaced


class TestGeometry:
    def test_orientation_spacing_and_fov_follow_protocol(self, synth_subjects):
        obliques = 0
        for subject in synth_subjects:
            res_scale = cohort_profile(subject.cohort).resolution
            levels = subject.anatomy.levels
            for stem, plan in subject.plans.items():
                proto = PROTOCOLS[plan.sequence]
                scan = subject.scans[stem]
                assert axcodes(scan.affine) == proto.axcodes, stem
                spacing = voxel_sizes(scan.affine)
                expected_inplane = proto.inplane * res_scale
                assert spacing[:2] == pytest.approx([expected_inplane] * 2, rel=0.035), stem
                if plan.sequence == "MP2RAGE":
                    assert spacing[2] == pytest.approx(spacing[0])
                else:
                    assert spacing[2] == pytest.approx(proto.thickness)
                directions = scan.affine[:3, :3] / spacing
                obliques += bool(np.abs(np.abs(directions).max(axis=0) - 1).max() > 1e-4)
                corners = _corner_world(scan.affine, scan.image.shape)
                if plan.sequence in ("T2Sag", "STIR", "T1Sag"):
                    assert scan.image.shape[2] * spacing[2] >= 36  # LR coverage of the slab
                    if plan.chunk in (None, 1):
                        assert corners[:, 2].max() > levels["C1"][0] + 20, "starts at the brainstem"
                if plan.sequence == "T2Sag" and plan.chunk in (None, 1):
                    assert levels["T5"][0] < corners[:, 2].min() < levels["T2"][1]
        assert obliques > 0, "some affines must be oblique"

    def test_t2star_ax_two_chunks_c1_to_c7_without_overlap(self, synth_subjects):
        checked = 0
        for subject in synth_subjects:
            stems = subject.stems("T2starAx")
            if not stems:
                continue
            assert len(stems) == 2
            c7_bottom = subject.anatomy.levels["C7"][1]
            c1_top = subject.anatomy.levels["C1"][0]
            extents = []
            for stem in stems:
                scan = subject.scans[stem]
                # Where the cord crosses the stack: the slice boundaries along the centreline.
                cord_vox = np.argwhere(scan.cord_mask)
                world = apply_affine(scan.affine, cord_vox)
                half = voxel_sizes(scan.affine)[2] / 2
                extents.append((world[:, 2].min() - half, world[:, 2].max() + half))
                assert world[:, 2].min() - half >= c7_bottom - 0.5, "T2starAx reaches below C7"
                assert world[:, 2].max() <= c1_top + 10
            (low1, _), (_, high2) = sorted(extents, reverse=True)
            assert high2 <= low1 + 1.0, "chunks overlap"
            checked += 1
        assert checked


def _corner_world(affine, shape):
    corners = (
        np.array(np.meshgrid(*[[-0.5, s - 0.5] for s in shape], indexing="ij")).reshape(3, -1).T
    )
    return apply_affine(affine, corners)


class TestContrast:
    def test_lesion_contrast_sign_per_sequence(self, synth_subjects):
        signs: dict[str, list[float]] = {seq: [] for seq in SEQS}
        for subject in synth_subjects:
            for stem, plan in subject.plans.items():
                scan = subject.scans[stem]
                lesion = scan.lesion_fraction > 0.5
                if lesion.sum() < 5:
                    continue
                near = ndimage.binary_dilation(lesion, iterations=2)
                normal = (scan.cord_fraction > 0.95) & ~near
                if normal.sum() < 20:
                    continue
                image = scan.image.astype(float)
                cnr = (image[lesion].mean() - image[normal].mean()) / image[normal].std()
                signs[plan.sequence].append(cnr)
        for seq, values in signs.items():
            assert values, f"no lesion seen on {seq}"
            assert np.median(np.sign(values)) == LESION_SIGN[seq], (seq, values)
            assert np.median(np.abs(values)) > 0.5, (seq, values)
        assert LESION_SIGN == {
            "T2Sag": 1,
            "STIR": 1,
            "T2starAx": 1,
            "T2Ax": 1,
            "T1Sag": -1,
            "MP2RAGE": -1,
        }

    def test_csf_bright_on_t2_dark_on_t1(self, synth_subjects):
        for subject in synth_subjects:
            for stem, plan in subject.plans.items():
                scan = subject.scans[stem]
                csf = ndimage.binary_dilation(scan.cord_fraction > 0.5, iterations=2) & (
                    scan.cord_fraction == 0
                )
                cord = scan.cord_fraction > 0.95
                if not cord.any():
                    continue
                ratio = scan.image[csf].mean() / scan.image[cord].mean()
                if plan.sequence in ("T1Sag", "MP2RAGE"):
                    assert ratio < 0.8, (stem, ratio)
                else:
                    assert ratio > 1.3, (stem, ratio)


class TestCohorts:
    def test_cohorts_differ_in_availability(self):
        def frequencies(cohort):
            counts = dict.fromkeys(SEQS, 0)
            for i in range(150):
                rng = subject_rng(99, i)
                rng.integers(0, 9)
                anatomy = draw_anatomy(rng, n_lesions=0, sequences=SEQS)
                for seq in {p.sequence for p in plan_scans(anatomy, cohort_profile(cohort), rng)}:
                    counts[seq] += 1
            return {k: v / 150 for k, v in counts.items()}

        a, b, c = frequencies("A"), frequencies("B"), frequencies("C")
        assert a["T2Sag"] == b["T2Sag"] == c["T2Sag"] == 1.0
        assert b["STIR"] > 0.7 > c["STIR"]
        assert c["T1Sag"] > 0.6 > b["T1Sag"]
        assert c["T2starAx"] > a["T2starAx"] > b["T2starAx"]
        for freq in (a, b, c):
            assert min(freq.values()) < 0.5, "other sequences are missing often"

    def test_participants_and_description(self, synth_root):
        rows = (synth_root / "participants.tsv").read_text().splitlines()
        assert rows[0] == "participant_id\tcohort"
        assert [r.split("\t")[1] for r in rows[1:]] == ["A", "B", "C", "A"]
        description = json.loads((synth_root / "dataset_description.json").read_text())
        assert (
            description["BIDSVersion"] and description["GeneratedBy"][0]["Name"] == "cordfuse synth"
        )

    def test_lesion_sizes_and_counts(self, synth_subjects):
        counts = [len(s.anatomy.lesions) for s in synth_subjects]
        assert all(0 <= n <= 8 for n in counts) and max(counts) > 0
        for subject in synth_subjects:
            for lesion in subject.anatomy.lesions:
                rx, ry, rz = lesion.radii
                assert 3.0 <= 2 * rz <= 20.0, "3-20 mm long"
                assert 1.5 <= 2 * rx <= 6.0 and 0.7 * 1.5 <= 2 * ry <= 6.0, "1.5-6 mm across"
                assert rz > max(rx, ry), "elongated along S-I"
