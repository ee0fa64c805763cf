"""Real scans at clinical geometry (issue 12): the centreline on every contrast, and what happens
when one sequence's centreline cannot be trusted (fallback to T2Sag, recorded everywhere)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import REAL_DATA, require_real_data
from cordfuse.cli import main
from cordfuse.dataset import discover
from cordfuse.io import apply_affine, read_volume
from cordfuse.preprocess import pipeline
from cordfuse.preprocess.centerline import (
    Centerline,
    centerline_from_mask,
    check_against_reference,
    detect_centerline,
    refine_along,
)
from cordfuse.preprocess.pipeline import FALLBACK, PRESETS, PreparedSubject, prepare_subject
from cordfuse.synth.clinical import (
    ClinicalGeometry,
    clinical_bed,
    reacquire,
    reacquire_with_mask,
)

BED = clinical_bed(REAL_DATA)


def clinical_case(image, mask, geometry: ClinicalGeometry):
    """A real scan and its human cord mask, read and re-acquired on ``geometry``:
    ``(image, affine, mask)``."""
    data, affine = read_volume(image)
    cord, _ = read_volume(mask)
    clinical, truth, clinical_affine = reacquire_with_mask(data, affine, cord, geometry)
    return clinical, clinical_affine, truth


def errors_against_mask(found: Centerline, mask: np.ndarray, affine: np.ndarray):
    """In-plane distances (mm) to the per-slice centroids of a mask, and the S-I coverage."""
    reference = centerline_from_mask(mask, affine).points
    lo, hi = found.z_range
    covered = np.mean((reference[:, 2] >= lo - 1.0) & (reference[:, 2] <= hi + 1.0))
    return np.hypot(*(found.xy_at(reference[:, 2]) - reference[:, :2]).T), covered


class TestReacquire:
    def test_slices_average_over_their_thickness(self):
        # A step along R-L at x = 0 mm: a 3 mm sagittal slice centred on it sees half of each side.
        data = np.zeros((40, 10, 10), np.float32)
        data[20:] = 1.0
        affine = np.eye(4)
        affine[0, 3] = -19.5  # voxel 20 starts at x = 0
        out, out_affine = reacquire(data, affine, ClinicalGeometry("sagittal", 3.0, 1.0))
        assert out_affine[0, 0] == 3.0 and out_affine[1, 1] == 1.0
        centres_x = out_affine[0, 3] + 3.0 * np.arange(out.shape[0])
        straddling = np.flatnonzero(np.abs(centres_x) < 1.5)
        assert straddling.size == 1
        value = out[straddling[0], 5, 5]
        expected = 0.5 + centres_x[straddling[0]] / 3.0  # linear in the slice's offset
        assert value == pytest.approx(expected, abs=0.1)
        assert out[: straddling[0] - 1].max() < 1e-6 and out[straddling[0] + 2 :].min() > 1 - 1e-6

    def test_mask_is_half_partial_volume_and_oblique_frames_are_kept(self):
        data = np.zeros((30, 30, 30), np.float32)
        data[10:20, 10:20, 10:20] = 1.0
        rotation = np.eye(4)
        angle = np.deg2rad(10)
        rotation[1:3, 1:3] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
        geometry = ClinicalGeometry("axial", 4.0, 0.5)
        mask, affine = reacquire(data, rotation, geometry, mask=True)
        assert set(np.unique(mask)) <= {0, 1}
        # The grid keeps the input's oblique frame: its S-I axis is the rotated third axis.
        assert np.allclose(affine[:3, 2] / 4.0, rotation[:3, 2], atol=1e-6)
        volume = mask.sum() * 0.5 * 0.5 * 4.0
        assert volume == pytest.approx(1000.0, rel=0.25)


@pytest.mark.parametrize(
    ("name", "image", "mask", "geometry"),
    BED,
    ids=[f"{c[0]}-{c[3].label}".replace(" ", "_") for c in BED],
)
def test_centreline_on_the_clinical_geometry_test_bed(name, image, mask, geometry):
    require_real_data()
    clinical, clinical_affine, truth = clinical_case(image, mask, geometry)
    found = detect_centerline(clinical, clinical_affine)
    errors, covered = errors_against_mask(found, truth, clinical_affine)
    assert covered >= 0.8, (name, geometry.label, covered)
    assert np.median(errors) <= 1.0, (name, geometry.label, np.median(errors))
    assert np.percentile(errors, 95) <= 3.0, (name, geometry.label, np.percentile(errors, 95))


class TestAgainstReference:
    @pytest.fixture()
    def reference(self):
        z = np.arange(-60.0, 61.0, 2.0)
        return Centerline(np.c_[0.02 * z, 0.05 * z + 3.0, z])

    def test_rules(self, reference):
        fov = (-70.0, 70.0)
        moved = Centerline(reference.points + [2.0, -1.5, 0.0])  # patient moved 2.5 mm: trusted
        assert check_against_reference(moved, reference, fov).problem == ""
        lost = Centerline(reference.points + [0.0, -12.0, 0.0])  # in the muscles behind the cord
        agreement = check_against_reference(lost, reference, fov)
        assert agreement.problem.startswith("implausible") and agreement.median_mm > 11
        partly = reference.points.copy()
        partly[partly[:, 2] > 30, 0] += 15.0  # leaves the cord over its upper quarter
        assert check_against_reference(Centerline(partly), reference, fov).problem
        short = Centerline(reference.points[25:35])  # 18 mm of 120 mm
        assert check_against_reference(short, reference, fov).problem.startswith("too short")
        # A small field of view is judged on the S-I range it covers, not the whole T2Sag cord.
        small_fov = (-10.0, 10.0)
        assert check_against_reference(short, reference, small_fov).problem == ""

    def test_refine_along_finds_the_real_t1_cord_from_a_displaced_guide(self):
        root = require_real_data()
        clinical, clinical_affine, truth = clinical_case(
            root / "spinegeneric-unf01/sub-unf01_T1w.nii.gz",
            root / "spinegeneric-unf01/sub-unf01_T1w_seg-manual.nii.gz",
            ClinicalGeometry("sagittal", 3.0, 0.7),
        )
        exact = centerline_from_mask(truth, clinical_affine)
        guide = Centerline(exact.points + [1.5, 2.0, 0.0])  # 2.5 mm off, as another scan's line
        found = refine_along(clinical, clinical_affine, guide, polarity="dark-csf")
        errors, covered = errors_against_mask(found, truth, clinical_affine)
        assert covered >= 0.8
        assert np.median(errors) <= 1.0, np.median(errors)

    def test_blank_image_shows_no_cord_along_the_guide(self, reference):
        with pytest.raises(Exception, match="no cord visible"):
            refine_along(np.full((30, 40, 60), 50.0), np.eye(4) * [1, 1, 2, 1], reference)


def _lose_centreline(monkeypatch, sequence: str, offset_mm: float = 14.0):
    """Make the detector's centreline of one sequence leave the cord (as T1 did at 4 mm)."""
    real = pipeline.detect_centerline

    def detect(data, affine, *, polarity, smooth_mm):
        line = real(data, affine, polarity=polarity, smooth_mm=smooth_mm)
        if polarity == pipeline.POLARITY[sequence] and data.shape == detect.shape:
            return Centerline(line.points + [0.0, -offset_mm, 0.0])
        return line

    monkeypatch.setattr(pipeline, "detect_centerline", detect)
    return detect


class TestFallback:
    @pytest.mark.slow
    def test_implausible_centreline_falls_back_and_is_recorded_everywhere(
        self, synth_copy, tmp_path, monkeypatch, capsys
    ):
        subject = next(
            s
            for s in discover(synth_copy).subjects
            if any(q in s.sequences for q in ("T1Sag", "MP2RAGE", "STIR"))
        )
        seq = next(q for q in ("T1Sag", "MP2RAGE", "STIR") if q in subject.sequences)
        lost = _lose_centreline(monkeypatch, seq)
        lost.shape = read_volume(subject.scans[seq][0].path)[0].shape
        straight = prepare_subject(subject, PRESETS["small"])
        assert straight.centerlines[seq]["method"] == FALLBACK
        assert "implausible" in straight.centerlines[seq]["reason"]
        assert straight.centerlines["T2Sag"] == {"method": "auto", "reason": ""}
        assert straight.fallbacks == {seq: straight.centerlines[seq]["reason"]}
        assert any(w.startswith(f"{seq} centreline: T2Sag fallback") for w in straight.warnings)
        from cordfuse.figures import pyplot
        from cordfuse.preprocess.qc import prepared_qc_figure

        figure = prepared_qc_figure(straight)
        flagged = [ax.get_title() for ax in figure.axes if "T2Sag centreline" in ax.get_title()]
        assert len(flagged) == 2 and all(t.startswith(seq) for t in flagged)  # both views
        assert f"centreline fallback to T2Sag: {seq}" in figure._suptitle.get_text().replace(
            "\n", " "
        )
        pyplot().close(figure)
        # The fallback found the cord in the sequence's own image: its crop centres follow the
        # sequence's true cord (what the detector finds when it is not lost), not T2Sag's.
        monkeypatch.undo()
        normal = prepare_subject(subject, PRESETS["small"])
        assert normal.centerlines[seq] == {"method": "auto", "reason": ""}
        z = straight.geometry.z
        fallback_error = np.hypot(*(straight.centres[seq] - normal.centres[seq]).T)
        t2sag_error = np.hypot(*(straight.centres["T2Sag"] - normal.centres[seq]).T)
        covered = straight.images[seq].any(axis=(0, 1)) & (np.abs(z - z.mean()) < 0.4 * np.ptp(z))
        assert np.median(fallback_error[covered]) <= 0.5, np.median(fallback_error[covered])
        assert np.median(fallback_error[covered]) < np.median(t2sag_error[covered])

        _lose_centreline(monkeypatch, seq).shape = lost.shape
        out = tmp_path / "prep"
        only = tmp_path / "one"
        shutil.copytree(synth_copy / subject.name, only / subject.name)
        shutil.copytree(synth_copy / "derivatives", only / "derivatives")
        assert main(["prepare", str(only), str(out), "--preset", "small", "--qc"]) == 0
        printed = capsys.readouterr().out
        assert "1 centreline fallback(s) to T2Sag" in printed
        assert f"warning {subject.name}: {seq} centreline: T2Sag fallback" in printed
        document = json.loads((out / "dataset.json").read_text())
        assert list(document["subjects"][0]["centerline_fallbacks"]) == [seq]
        assert PreparedSubject.load(out / subject.name).fallbacks == straight.fallbacks
        from cordfuse.report import availability_section

        html = availability_section(document, None)
        assert 'class="fallback"' in html and "Centreline fallbacks" in html

    def test_mask_centreline_where_masks_exist_auto_elsewhere(self, synth_copy):
        from dataclasses import replace

        subject = next(s for s in discover(synth_copy).subjects if len(s.sequences) > 1)
        seq = next(q for q in subject.sequences if q != "T2Sag")
        for scan in subject.scans[seq]:
            scan.cord_label.unlink()
        subject = next(s for s in discover(synth_copy).subjects if s.name == subject.name)
        prepared = prepare_subject(subject, replace(PRESETS["small"], centerline="mask"))
        assert prepared.centerlines["T2Sag"]["method"] == "mask"
        assert prepared.centerlines[seq] == {"method": "auto", "reason": ""}
        assert seq in prepared.sequences and not prepared.fallbacks


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A real sagittal T2 (SCT errsm30) as a clinical two-slab T2Sag, 3 mm slices, the lower
    slab moved by 2 degrees and 2 mm, the human cord mask given as the lesion label, prepared
    with the paper preset through the CLI."""
    from cordfuse.synth.clinical import write_two_slab_subject

    root = require_real_data()
    data, affine = read_volume(root / "sct-errsm30/t2.nii.gz")
    cord, _ = read_volume(root / "sct-errsm30/t2_seg-manual.nii.gz")
    bids = tmp_path_factory.mktemp("real") / "bids"
    truth = write_two_slab_subject(
        bids,
        data,
        affine,
        cord,
        overlap_mm=15.0,
        rotation_deg=(2.0, 0.0, 0.0),
        shift_mm=(0.0, 2.0, 0.0),
    )
    out = bids.parent / "prepared"
    assert main(["prepare", str(bids), str(out), "--preset", "paper"]) == 0
    return truth, PreparedSubject.load(out / truth.subject)


class TestRealTwoSlabSubject:
    def test_prepare_recovers_the_motion_at_the_cord(self, prepared):
        truth, subject = prepared
        slabs = {Path(s["path"]).name: s for s in subject.t2sag["slabs"]}
        lower = slabs[truth.images[1].name]
        assert lower["registration_deg"] == pytest.approx(2.0, abs=0.3)
        cord, _ = read_volume(truth.labels[1])
        vox = np.argwhere(cord > 0)
        found = apply_affine(np.array(lower["affine"]), vox)
        true = apply_affine(truth.true_affines[1], vox)
        residual = np.linalg.norm(found - true, axis=1)
        assert residual.max() <= 0.5, residual.max()
        moved = np.linalg.norm(
            apply_affine(truth.motion @ truth.true_affines[1], vox) - true, axis=1
        )
        assert moved.min() >= 1.5  # the motion was there to recover

    def test_cord_is_centred_in_the_crop(self, prepared):
        _, subject = prepared
        geometry = subject.geometry
        offsets = []
        for k in range(geometry.nz):
            ij = np.argwhere(subject.label[:, :, k] > 0)
            if len(ij):
                offsets.append(
                    np.hypot(*(ij.mean(axis=0) - geometry.centre_index)) * geometry.spacing
                )
        assert len(offsets) > 0.8 * geometry.nz * 0.5
        assert np.median(offsets) <= 0.5, np.median(offsets)
        assert np.percentile(offsets, 95) <= 1.5, np.percentile(offsets, 95)

    def test_restore_onto_each_slab(self, prepared):
        truth, subject = prepared
        names = [Path(s["path"]).name for s in subject.t2sag["slabs"]]
        for image, label in zip(truth.images, truth.labels, strict=True):
            restored, restored_affine = pipeline.restore(
                subject, subject.label.astype(np.float32), slab=names.index(image.name)
            )
            mask, mask_affine = read_volume(label)
            assert np.allclose(restored_affine, mask_affine, atol=1e-4)
            found = restored > 0.5
            dice = 2 * (found & (mask > 0)).sum() / (found.sum() + (mask > 0).sum())
            assert dice >= 0.9, (image.name, dice)


class TestSlabNumbers:
    def test_the_bids_chunk_is_the_slab_number(self):
        from cordfuse.preprocess.pipeline import slab_numbers

        def t2sag(*names):
            return {"slabs": [{"path": f"/d/sub-1/anat/{n}"} for n in names]}

        # Stored superior first; a site may number its chunks from the bottom.
        assert slab_numbers(
            t2sag("sub-1_acq-sag_chunk-2_T2w.nii.gz", "sub-1_acq-sag_chunk-1_T2w.nii.gz")
        ) == [2, 1]
        assert slab_numbers(
            t2sag("sub-1_acq-sag_chunk-1_T2w.nii.gz", "sub-1_acq-sag_chunk-2_T2w.nii.gz")
        ) == [1, 2]
        assert slab_numbers(t2sag("upper.nii.gz", "lower.nii.gz")) == [1, 2]

    def test_restore_takes_the_chunk_number(self, prepared, tmp_path, capsys):
        truth, subject = prepared
        folder = Path(truth.root).parent / "prepared" / truth.subject
        crop = tmp_path / "label.npy"
        np.save(crop, subject.label.astype(np.float32))
        for chunk, image in ((1, truth.images[0]), (2, truth.images[1])):
            out = tmp_path / f"chunk{chunk}.nii.gz"
            assert (
                main(["restore", str(folder), str(crop), "-o", str(out), "--slab", str(chunk)]) == 0
            )
            restored, affine = read_volume(out)
            native, native_affine = read_volume(image)
            assert restored.shape == native.shape and np.allclose(affine, native_affine)
        assert (
            main(
                ["restore", str(folder), str(crop), "-o", str(tmp_path / "x.nii.gz"), "--slab", "0"]
            )
            == 2
        )
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].endswith("has no T2Sag slab 0 (its slabs: 1, 2)"), err


def test_qc_title_fits_a_one_sequence_picture(prepared):
    from cordfuse.figures import pyplot
    from cordfuse.preprocess.qc import prepared_qc_figure

    _, subject = prepared
    assert subject.sequences == ["T2Sag"]
    figure = prepared_qc_figure(subject)
    renderer = figure.canvas.get_renderer()
    title = figure._suptitle.get_window_extent(renderer)
    assert title.x0 >= 0 and title.x1 <= figure.bbox.x1, (title, figure.bbox)
    assert "straightened" in figure._suptitle.get_text()
    pyplot().close(figure)


def test_only_a_t2sag_without_cord_refuses_the_subject(synth_copy, tmp_path, capsys):
    import nibabel as nib

    subject = discover(synth_copy).subjects[0]
    for scan in subject.scans["T2Sag"]:
        image = nib.load(scan.path)
        nib.save(nib.Nifti1Image(np.full(image.shape, 80, np.int16), image.affine), scan.path)
    only = tmp_path / "one"
    shutil.copytree(synth_copy / subject.name, only / subject.name)
    assert main(["prepare", str(only), str(tmp_path / "out"), "--preset", "small"]) == 1
    failed = [line for line in capsys.readouterr().err.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1, failed
    first = sorted(subject.scans["T2Sag"], key=lambda s: s.path.name)
    assert any(s.path.name in failed[0] for s in first) and "no spinal cord" in failed[0]


def test_centerline_cli_reads_the_polarity_a_bids_name_states(tmp_path, capsys):
    """A T1w at 5 mm sagittal slices: read from the image alone, the fat around the canal looks
    like bright CSF and the path leaves the cord; the file name says T1w, and the CLI uses it."""
    from cordfuse.io import make_nifti, save_nifti
    from cordfuse.preprocess.centerline import polarity_from_name

    root = require_real_data()
    clinical, clinical_affine, truth = clinical_case(
        root / "spinegeneric-unf01/sub-unf01_T1w.nii.gz",
        root / "spinegeneric-unf01/sub-unf01_T1w_seg-manual.nii.gz",
        ClinicalGeometry("sagittal", 5.0, 0.5),
    )
    image = tmp_path / "sub-unf01_acq-sag_T1w.nii.gz"
    save_nifti(make_nifti(clinical, clinical_affine), image)
    assert polarity_from_name(image) == "dark-csf"
    assert polarity_from_name(tmp_path / "scan.nii.gz") is None
    assert main(["centerline", str(image), "-o", str(tmp_path / "c.csv")]) == 0
    errors, covered = errors_against_mask(
        Centerline.from_csv(tmp_path / "c.csv"), truth, clinical_affine
    )
    assert covered >= 0.8 and np.median(errors) <= 1.0, np.median(errors)
