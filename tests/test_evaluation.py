"""Evaluation (issue 6, metrics part): every Anima rule on hand-computed cases, statistics, CLI."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
from scipy import stats

from cordfuse.cli import main
from cordfuse.evaluation.metrics import dice, evaluate_masks, lesion_detection, lesions
from cordfuse.evaluation.stats import (
    mean_std,
    significance_mark,
    summarise,
    wilcoxon_vs_reference,
)


def evaluate_json(pred_path, truth_path, capsys) -> dict:
    """``cordfuse evaluate --json`` on one pair, parsed."""
    assert main(["evaluate", "--pred", str(pred_path), "--gt", str(truth_path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def volume(shape=(30, 30, 12)):
    return np.zeros(shape, bool)


def detect(pred, truth, voxel=1.0, **options):
    return lesion_detection(pred, truth, voxel_volume_mm3=voxel, **options)


class TestAlpha:
    def test_exactly_ten_percent_is_not_detected(self):
        truth, pred = volume(), volume()
        truth[0:20, 5, 5] = True  # 20 voxels of 2 mm^3
        pred[0:2, 5, 5] = True  # 2 voxels = 10 %, 4 mm^3 (kept)
        assert detect(pred, truth, voxel=2.0).gt_detected == 0
        pred[0:3, 5, 5] = True  # 15 %
        assert detect(pred, truth, voxel=2.0).gt_detected == 1


class TestBeta:
    def test_exactly_seventy_percent_outside_passes(self):
        truth, pred = volume(), volume()
        truth[10:20, 5, 5] = True  # 10 voxels
        pred[3:13, 5, 5] = True  # 10 voxels: 3 inside (30 % of truth), 7 outside = 0.70
        assert detect(pred, truth).gt_detected == 1
        pred[2, 5, 5] = True  # 11 voxels, 8 outside = 0.727
        assert detect(pred, truth).gt_detected == 0


class TestGammaWalk:
    def test_big_clean_overlap_stops_the_walk_before_a_leaky_one(self):
        truth, pred = volume(), volume()
        truth[0:20, 0:5, 0] = True  # 100 voxels
        pred[0:14, 0:5, 0] = True  # clean: 70 overlap, nothing outside
        pred[16, 0:5, 0:10] = True  # leaky: 5 overlap, 45 outside (90 %)
        result = detect(pred, truth)
        assert result.n_pred == 2 and result.gt_detected == 1  # 70/75 >= 0.65: leaky not checked

    def test_walk_reaches_the_leaky_lesion_when_the_clean_one_is_not_enough(self):
        truth, pred = volume(), volume()
        truth[0:20, 0:5, 0] = True
        pred[0:8, 0:5, 0] = True  # clean: 40 overlap
        pred[9:16, 0:5, 0:4] = True  # leaky: 35 overlap, 105 outside (75 %)
        result = detect(pred, truth)
        assert result.n_pred == 2 and result.gt_detected == 0  # 40/75 < 0.65, leaky fails beta


class TestSmallLesionsAndConnectivity:
    def test_three_cubic_mm_removed_with_anisotropic_spacing(self, tmp_path, capsys):
        affine = np.diag([0.5, 0.5, 3.0, 1.0])  # 0.75 mm^3 voxels
        truth = volume()
        truth[0:4, 0, 0] = True  # 3.00 mm^3: removed (<= 3)
        truth[10:15, 0, 0] = True  # 3.75 mm^3: kept
        labels, n = lesions(truth, voxel_volume_mm3=0.75)
        assert n == 1 and labels[0:4, 0, 0].max() == 0 and labels[10:15, 0, 0].min() == 1
        nib.save(nib.Nifti1Image(truth.astype(np.uint8), affine), tmp_path / "gt.nii.gz")
        nib.save(nib.Nifti1Image(truth.astype(np.uint8), affine), tmp_path / "pred.nii.gz")
        document = evaluate_json(tmp_path / "pred.nii.gz", tmp_path / "gt.nii.gz", capsys)
        assert document["n_gt"] == 1 and document["volume_gt_mm3"] == pytest.approx(6.75)

    def test_face_connectivity_splits_diagonal_neighbours(self):
        truth = volume()
        truth[5, 5, 5] = truth[6, 6, 5] = True  # touching along an edge only
        assert lesions(truth, voxel_volume_mm3=4.0)[1] == 2
        assert lesions(truth, voxel_volume_mm3=4.0, connectivity=26)[1] == 1
        assert lesions(truth, voxel_volume_mm3=4.0, connectivity=18)[1] == 1


class TestSwappedPrecisionAndEmpty:
    def test_precision_is_the_same_test_with_roles_swapped(self):
        truth, pred = volume(), volume()
        truth[0:5, 0, 0] = True  # small lesion, fully covered
        pred[0:20, 0, 0] = True  # 75 % of the prediction lies outside
        result = detect(pred, truth)
        assert result.sensitivity == 0.0  # the covering prediction leaks too much (> beta)
        assert result.precision == 1.0  # > 10 % of it is lesion, and the lesion lies inside it
        assert result.f1 == 0.0
        small_inside = volume()
        small_inside[0:4, 0, 0] = True
        big_truth = volume()
        big_truth[0:20, 0, 0] = True
        result = detect(small_inside, big_truth)
        assert (result.sensitivity, result.precision) == (1.0, 0.0)

    def test_empty_cases(self):
        empty = volume()
        none = evaluate_masks(empty, empty, voxel_volume_mm3=1.0)
        assert none.dice == 1.0 and math.isnan(none.lesion_sensitivity)
        assert none.lesion_precision == 0.0 and none.lesion_f1 == 0.0 and none.n_gt == 0
        truth = volume()
        truth[0:5, 0, 0] = True
        missed = evaluate_masks(empty, truth, voxel_volume_mm3=1.0)
        assert (missed.dice, missed.lesion_sensitivity, missed.lesion_precision) == (0.0, 0.0, 0.0)
        assert missed.n_gt == 1 and missed.n_pred == 0
        false_alarm = evaluate_masks(truth, empty, voxel_volume_mm3=1.0)
        assert math.isnan(false_alarm.lesion_sensitivity) and false_alarm.lesion_precision == 0.0
        assert false_alarm.lesion_f1 == 0.0 and false_alarm.n_pred == 1

    def test_dice_and_a_perfect_match(self):
        truth = volume()
        truth[0:10, 0:2, 0] = True
        pred = volume()
        pred[5:15, 0:2, 0] = True
        assert dice(pred, truth) == pytest.approx(2 * 10 / 40)
        perfect = evaluate_masks(truth, truth, voxel_volume_mm3=0.5)
        assert (
            perfect.dice,
            perfect.lesion_sensitivity,
            perfect.lesion_precision,
            perfect.lesion_f1,
        ) == (1.0, 1.0, 1.0, 1.0)
        assert perfect.volume_gt_mm3 == pytest.approx(10.0)


class TestStatistics:
    def test_wilcoxon_matches_scipy(self):
        rng = np.random.default_rng(0)
        reference = rng.uniform(0.3, 0.7, 30)
        method = reference + rng.normal(0.03, 0.05, 30)
        ours = wilcoxon_vs_reference(method, reference)
        expected = stats.wilcoxon(method, reference)
        assert ours.p_value == pytest.approx(expected.pvalue)
        assert ours.statistic == pytest.approx(expected.statistic) and ours.n == 30
        with_nan = np.append(method, np.nan)
        assert wilcoxon_vs_reference(with_nan, np.append(reference, 0.5)).n == 30
        assert wilcoxon_vs_reference(reference, reference).p_value == 1.0

    def test_marks_and_summaries(self):
        assert [significance_mark(p) for p in (0.01, 0.05, 0.07, 0.1, 0.5)] == [
            "**",
            "*",
            "*",
            "",
            "",
        ]
        summary = summarise([0.2, np.nan, 0.4, 0.9])
        assert summary.n == 3 and summary.n_undefined == 1
        assert summary.mean == pytest.approx(0.5) and summary.median == pytest.approx(0.4)
        assert mean_std([0.58, 0.60, 0.63]) == "0.603 ± 0.025"


class TestCommandLine:
    def _write(self, path, data, spacing=(1.0, 1.0, 1.0)):
        nib.save(nib.Nifti1Image(data.astype(np.uint8), np.diag([*spacing, 1.0])), path)

    def test_single_pair_json(self, tmp_path, capsys):
        truth, pred = volume(), volume()
        truth[0:10, 0:3, 0] = True
        pred[0:10, 0:2, 0] = True
        self._write(tmp_path / "gt.nii.gz", truth)
        self._write(tmp_path / "pred.nii.gz", pred)
        document = evaluate_json(tmp_path / "pred.nii.gz", tmp_path / "gt.nii.gz", capsys)
        for key in (
            "dice",
            "lesion_sensitivity",
            "lesion_precision",
            "lesion_f1",
            "n_gt",
            "n_pred",
            "volume_gt_mm3",
            "volume_pred_mm3",
        ):
            assert key in document
        assert document["dice"] == pytest.approx(0.8) and document["n_gt"] == 1

    def test_folders_per_cohort_csv_and_grid_mismatch(self, tmp_path, capsys):
        (tmp_path / "pred").mkdir()
        (tmp_path / "gt").mkdir()
        (tmp_path / "gt" / "participants.tsv").write_text(
            "participant_id\tcohort\nsub-01\tA\nsub-02\tA\nsub-03\tB\n"
        )
        for i, (n_pred, n_gt) in enumerate([(10, 10), (5, 10), (0, 0)], start=1):
            truth, pred = volume(), volume()
            truth[0:n_gt, 0, 0] = True
            pred[0:n_pred, 0, 0] = True
            self._write(tmp_path / "gt" / f"sub-0{i}_acq-sag_T2w_lesion-manual.nii.gz", truth)
            self._write(tmp_path / "pred" / f"sub-0{i}_lesion.nii.gz", pred)
        assert (
            main(
                [
                    "evaluate",
                    "--pred",
                    str(tmp_path / "pred"),
                    "--gt",
                    str(tmp_path / "gt"),
                    "-o",
                    str(tmp_path / "m.csv"),
                ]
            )
            == 0
        )
        out = capsys.readouterr().out
        assert "A         mean" in out and "B         mean" in out and "all       median" in out
        assert "undefined for 1 image" in out
        rows = (tmp_path / "m.csv").read_text().splitlines()
        assert rows[0].startswith("image,cohort,dice,lesion_sensitivity") and len(rows) == 4
        self._write(tmp_path / "pred" / "sub-02_lesion.nii.gz", volume((31, 30, 12)))
        assert (
            main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]) == 1
        )
        assert "not on the grid" in capsys.readouterr().err

    @pytest.mark.slow
    def test_predictions_against_a_bids_dataset(self, synth_root, tmp_path, capsys):
        """By default every subject is scored on its fused T2Sag grid (the grid predict, study
        and demo use); --per-slab scores each slab label against predict --per-slab's files."""
        from cordfuse.dataset import discover
        from cordfuse.preprocess.pipeline import PRESETS, native_lesion_label

        subjects = discover(synth_root).subjects
        assert any(len(s.scans["T2Sag"]) > 1 for s in subjects)  # both layouts are tried
        (tmp_path / "fused").mkdir()
        (tmp_path / "slabs").mkdir()
        expected_slabs = 0
        for subject in subjects:
            label, affine = native_lesion_label(subject, PRESETS["paper"])
            nib.save(
                nib.Nifti1Image(label, affine),  # a perfect prediction on the fused grid
                tmp_path / "fused" / f"{subject.name}_lesion.nii.gz",
            )
            slabs = subject.scans["T2Sag"]
            if len(slabs) > 1:
                for k, scan in enumerate(slabs):
                    nib.save(
                        nib.load(scan.lesion_label),
                        tmp_path / "slabs" / f"{subject.name}_slab-{k + 1}_lesion.nii.gz",
                    )
                    expected_slabs += 1
        assert (
            main(["evaluate", "--pred", str(tmp_path / "fused"), "--gt", str(synth_root), "--json"])
            == 0
        )
        document = json.loads(capsys.readouterr().out)
        assert [d["image"] for d in document["images"]] == [s.name for s in subjects]
        assert all(d["dice"] == 1.0 for d in document["images"] if d["n_gt"])
        assert {d["cohort"] for d in document["images"]} <= {"A", "B", "C"}
        assert (
            main(
                [
                    "evaluate",
                    "--pred",
                    str(tmp_path / "slabs"),
                    "--gt",
                    str(synth_root),
                    "--json",
                    "--per-slab",
                ]
            )
            == 0
        )
        document = json.loads(capsys.readouterr().out)
        assert len(document["images"]) == expected_slabs
        assert all("_slab-" in d["image"] for d in document["images"])
        assert all(d["dice"] == 1.0 for d in document["images"] if d["n_gt"])


def test_evaluation_never_imports_torch():
    import subprocess
    import sys

    code = (
        "import sys, cordfuse.evaluation.metrics, cordfuse.evaluation.stats, "
        "cordfuse.evaluation.evaluate; print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
