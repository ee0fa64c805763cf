"""Lesion by lesion: hand-made images whose lists of found, missed and false lesions are known,
the generator's truth attached to the right lesion, the paired comparison and McNemar's test."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import stats

from conftest import generator_truth
from cordfuse.cli import main
from cordfuse.evaluation.lesions import (
    LesionRow,
    ScanField,
    SynthTruth,
    compare_inferences,
    extra_sequences_tables,
    lesion_rows,
    paired_outcomes,
    rows_from_csv,
    rows_to_csv,
)
from cordfuse.evaluation.stats import mcnemar_exact
from cordfuse.sequences import SEQUENCES

# A 1 x 1 x 2 mm grid shifted in world space, so that centroids and volumes test the affine.
AFFINE = np.array([[1.0, 0, 0, -10.0], [0, 1.0, 0, 20.0], [0, 0, 2.0, -100.0], [0, 0, 0, 1]])


def _image():
    """Ground truth with three lesions and a prediction that finds one, touches one at 5 %,
    misses one and adds one false positive."""
    truth = np.zeros((20, 20, 20), np.uint8)
    prediction = np.zeros_like(truth)
    truth[2:6, 2:6, 2:7] = 1  # lesion 1: 80 voxels, half predicted -> detected
    prediction[2:6, 2:6, 2:5] = 1  # 48 voxels, 60 % covered; all inside
    truth[10:14, 10:14, 2:7] = 1  # lesion 2: 80 voxels, 4 predicted (5 %) -> missed
    prediction[10:14, 10, 2] = 1  # 4 voxels inside lesion 2 ...
    prediction[10:14, 9, 2] = 1  # ... and 4 outside: 50 % outside, but too little of lesion 2
    truth[2:5, 14:17, 12:15] = 1  # lesion 3: 27 voxels, untouched -> missed
    prediction[15:18, 2:5, 14:17] = 1  # a false positive, 27 voxels
    return prediction, truth


class TestLesionRows:
    def test_found_missed_and_false_lesions_are_listed_with_world_geometry(self):
        prediction, truth = _image()
        rows = lesion_rows(
            prediction, truth, AFFINE, subject="sub-01", voxel_volume_mm3=2.0, cohort="A"
        )
        gt = sorted((r for r in rows if r.kind == "gt"), key=lambda r: r.centroid_mm)
        pred = sorted((r for r in rows if r.kind == "pred"), key=lambda r: r.centroid_mm)
        assert sorted(r.lesion for r in gt) == [1, 2, 3]
        # by world x, then y: lesion 1 (-6.5, 23.5), lesion 3 (-7, 35), lesion 2 (1.5, 31.5)
        assert gt[0].centroid_mm == (-7.0, 35.0, -74.0)  # lesion 3: voxel (3, 15, 13)
        assert gt[1].centroid_mm == (-6.5, 23.5, -92.0)  # lesion 1: voxel (3.5, 3.5, 4)
        assert [r.detected for r in gt] == [False, True, False]
        assert [r.covered_fraction for r in gt] == pytest.approx([0.0, 48 / 80, 4 / 80])
        assert [r.volume_mm3 for r in gt] == [54.0, 160.0, 160.0]
        # predicted: the one in lesion 1 (TP); the strip at lesion 2, half inside it but not a
        # TP, because with the roles swapped lesion 2 is 95 % outside every prediction (> 70 %);
        # the false positive
        assert [(r.detected, r.volume_mm3) for r in pred] == [
            (True, 96.0),
            (False, 16.0),
            (False, 54.0),
        ]
        assert [r.covered_fraction for r in pred] == pytest.approx([1.0, 0.5, 0.0])
        assert all(r.subject == "sub-01" and r.cohort == "A" and not r.truth for r in rows)

    def test_counts_agree_with_the_image_metrics(self):
        from cordfuse.evaluation.metrics import lesion_detection

        prediction, truth = _image()
        rows = lesion_rows(prediction, truth, AFFINE, subject="s", voxel_volume_mm3=2.0)
        detection = lesion_detection(prediction, truth, voxel_volume_mm3=2.0)
        assert sum(r.detected for r in rows if r.kind == "gt") == detection.gt_detected == 1
        assert (
            sum(r.detected for r in rows if r.kind == "pred") == detection.pred_true_positive == 1
        )

    def test_lesions_at_or_below_the_minimum_volume_are_not_listed(self):
        prediction, truth = _image()
        rows = lesion_rows(
            prediction, truth, AFFINE, subject="s", voxel_volume_mm3=2.0, min_volume_mm3=60.0
        )
        assert [r.volume_mm3 for r in rows if r.kind == "gt"] == [160.0, 160.0]

    def test_csv_round_trip(self):
        prediction, truth = _image()
        rows = lesion_rows(
            prediction,
            truth,
            AFFINE,
            subject="s",
            voxel_volume_mm3=2.0,
            experiment="mi",
            seed=3,
            inference="T2Sag",
        )
        assert rows_from_csv(rows_to_csv(rows)) == rows


def _truth(covering: dict[str, bool]) -> SynthTruth:
    """Two generated lesions at the centres of GT lesions 1 (faint on T2Sag) and 3 (clear), and
    one scan per sequence whose field of view covers lesion 1 or not."""
    faint = {s: 0.9 for s in SEQUENCES} | {"T2Sag": 0.3, "T2Ax": 0.5}
    clear = {s: 0.6 for s in SEQUENCES} | {"T2Sag": 0.95}
    lesions = [
        {"center_world_mm": [-6.5, 23.5, -92.0], "visibility": faint},
        {"center_world_mm": [-7.0, 35.0, -74.0], "visibility": clear},
    ]
    scans = []
    for seq in SEQUENCES:
        # a 10 mm cube around lesion 1, or one far away
        origin = [-11.5, 18.5, -97.0] if covering[seq] else [100.0, 100.0, 100.0]
        affine = np.eye(4)
        affine[:3, 3] = origin
        scans.append(ScanField(f"sub-01_{seq}", seq, affine, (11, 11, 11), np.eye(4)))
    return SynthTruth(lesions, scans)


class TestGeneratorTruth:
    def test_each_lesion_gets_its_visibility_and_coverage(self):
        prediction, truth = _image()
        covering = {s: s in ("T2Sag", "STIR") for s in SEQUENCES}
        rows = lesion_rows(
            prediction,
            truth,
            AFFINE,
            subject="sub-01",
            voxel_volume_mm3=2.0,
            synth=_truth(covering),
        )
        third, first, second = sorted(
            (r for r in rows if r.kind == "gt"), key=lambda r: r.centroid_mm
        )
        assert first.visibility_class == "faint" and third.visibility_class == "clear"
        assert first.truth["visibility"]["STIR"] == 0.9
        assert first.truth["covers"] == covering
        assert not any(third.truth["covers"].values())  # lesion 3 is outside the 10 mm cubes
        assert second.truth == {} and second.visibility_class == ""  # no generated lesion there
        assert all(r.truth == {} for r in rows if r.kind == "pred")
        again = rows_from_csv(rows_to_csv(rows))
        assert again == rows

    def test_a_moved_slab_is_followed(self):
        """On a grid whose world is the anatomy moved by 5 mm, the lesion is found through the
        motion and not where the anatomy alone would put it."""
        prediction, truth = _image()
        motion = np.eye(4)
        motion[2, 3] = -4.0  # world -> anatomy: anatomy z = world z - 4 (two slices of 2 mm)
        synth = _truth({s: False for s in SEQUENCES})
        moved = [
            dict(
                lesion,
                center_world_mm=[
                    c - 4.0 * (i == 2) for i, c in enumerate(lesion["center_world_mm"])
                ],
            )
            for lesion in synth.lesions
        ]
        rows = lesion_rows(
            prediction,
            truth,
            AFFINE,
            subject="s",
            voxel_volume_mm3=2.0,
            synth=SynthTruth(moved, synth.scans),
            motion=motion,
        )
        gt = sorted((r for r in rows if r.kind == "gt"), key=lambda r: r.centroid_mm)
        assert [r.visibility_class for r in gt] == ["clear", "faint", ""]

    def test_truth_is_read_from_a_synthetic_dataset(self, synth_root):
        truth = SynthTruth.load(synth_root, "sub-001")
        document = json.loads(
            (synth_root / "derivatives" / "synth" / "sub-001_truth.json").read_text()
        )
        assert len(truth.lesions) == len(document["lesions"])
        assert {s.stem for s in truth.scans} == set(document["scans"])
        t2 = [s for s in truth.scans if s.sequence == "T2Sag"][0]
        header = nib.load(str(synth_root / "sub-001" / "anat" / f"{t2.stem}.nii.gz"))
        assert t2.shape == header.shape and np.allclose(t2.affine, header.affine)
        assert SynthTruth.load(synth_root, "sub-999") is None


def _row(subject, lesion, detected, *, inference, faint=None, experiment="mi", seed=0):
    truth = generator_truth(faint) if faint is not None else {}
    return LesionRow(
        subject,
        "gt",
        lesion,
        10.0,
        (0.0, 0.0, 0.0),
        0.5 if detected else 0.0,
        detected,
        "A",
        experiment,
        seed,
        inference,
        truth,
    )


class TestPairedComparison:
    def test_mcnemar_exact_matches_the_binomial_test(self):
        assert mcnemar_exact(0, 0) == 1.0
        assert mcnemar_exact(5, 0) == pytest.approx(2 * 0.5**5)
        assert mcnemar_exact(8, 1) == pytest.approx(2 * (1 + 9) / 2**9)
        assert mcnemar_exact(3, 3) == pytest.approx(1.0)
        assert mcnemar_exact(12, 2) == pytest.approx(stats.binomtest(12, 14).pvalue)
        with pytest.raises(ValueError):
            mcnemar_exact(-1, 2)

    def test_pairs_only_the_same_lesions_and_counts_the_discordant_ones(self):
        base = [
            _row("s1", 1, True, inference="T2Sag"),
            _row("s1", 2, False, inference="T2Sag"),
            _row("s1", 3, False, inference="T2Sag"),
            _row("s2", 1, True, inference="T2Sag"),
            _row("s3", 1, False, inference="T2Sag"),
        ]  # s3 has no other sequence
        more = [
            _row("s1", 1, True, inference="all"),
            _row("s1", 2, True, inference="all"),
            _row("s1", 3, False, inference="all"),
            _row("s2", 1, False, inference="all"),
        ]
        pairs = paired_outcomes(base, more)
        assert [(a.subject, a.lesion) for a, _ in pairs] == [
            ("s1", 1),
            ("s1", 2),
            ("s1", 3),
            ("s2", 1),
        ]
        result = compare_inferences(pairs)
        assert (result.n, result.both, result.only_other, result.only_base, result.neither) == (
            4,
            1,
            1,
            1,
            1,
        )
        assert result.sensitivity_base == result.sensitivity_other == 0.5
        assert result.p_value == 1.0

    def test_tables_split_faint_and_clear_and_list_the_changed_lesions(self):
        rows = []
        for k in range(10):  # 10 faint lesions: 8 found only with more sequences, 1 by both
            rows.append(_row("s1", k + 1, k == 0, inference="T2Sag", faint=True))
            rows.append(_row("s1", k + 1, k < 9, inference="all available", faint=True))
        for k in range(4):  # 4 clear lesions: one lost with more sequences
            rows.append(_row("s2", k + 1, True, inference="T2Sag", faint=False))
            rows.append(_row("s2", k + 1, k != 3, inference="all available", faint=False))
        rows.append(_row("s2", 1, True, inference="T2Sag", faint=False, experiment="baseline"))
        summary, changed = extra_sequences_tables(
            rows, experiments=["baseline", "mi"], labels={"mi": "Mean Imputation"}
        )
        assert len(summary.rows) == 1  # the baseline has no other inference set
        row = summary.rows[0]
        assert row[:3] == ["Mean Imputation", "0", "all available"]
        faint = [c.text for c in row[3:7]]
        clear = [c.text for c in row[7:11]]
        everything = [c.text for c in row[11:15]]
        assert faint == ["10", "0.100 → 0.900", "8 / 0", f"{mcnemar_exact(8, 0):.3g}"]
        assert clear == ["4", "1.000 → 0.750", "0 / 1", "1"]
        assert everything[:3] == ["14", "0.357 → 0.857", "8 / 1"]
        assert row[4].value == pytest.approx(0.8)  # the gain, for whoever reads the CSV
        assert len(changed.rows) == 9
        lost = [r for r in changed.rows if r[-1] == "T2Sag only"]
        assert [(r[3], r[4]) for r in lost] == [("s2", "4")]
        gained = [r for r in changed.rows if r[-1] == "more sequences"]
        assert sorted(int(r[4]) for r in gained) == list(range(2, 10))
        assert gained[0][6].text == "0.30" and gained[0][7].text == "0.90 (STIR)"

    def test_without_truth_only_all_lesions_are_compared(self):
        rows = [_row("s1", 1, False, inference="T2Sag"), _row("s1", 1, True, inference="all")]
        summary, changed = extra_sequences_tables(rows, experiments=["mi"], labels={})
        assert [h for h in summary.header if "faint" in h] == []
        assert [c.text for c in summary.rows[0][3:6]] == ["1", "0.000 → 1.000", "1 / 0"]
        assert changed.rows[0][6].text == ""  # no visibility to show


def test_evaluate_writes_the_per_lesion_table(synth_root, tmp_path, capsys):
    """``cordfuse evaluate`` against a synthetic BIDS dataset: ground truth as prediction finds
    every lesion; each lesion carries the generator's truth."""
    from cordfuse.dataset import discover

    predictions = tmp_path / "pred"
    predictions.mkdir()
    for subject in discover(synth_root).subjects:
        slabs = subject.scans["T2Sag"]
        for k, scan in enumerate(slabs):
            name = (
                f"{subject.name}_lesion.nii.gz"
                if len(slabs) == 1
                else f"{subject.name}_slab-{k + 1}_lesion.nii.gz"
            )
            image = nib.load(str(scan.lesion_label))
            nib.save(image, str(predictions / name))
    output = tmp_path / "metrics.csv"
    assert (
        main(["evaluate", "--pred", str(predictions), "--gt", str(synth_root), "-o", str(output)])
        == 0
    )
    assert "per-lesion table" in capsys.readouterr().out
    rows = rows_from_csv((tmp_path / "metrics_lesions.csv").read_text())
    gt = [r for r in rows if r.kind == "gt"]
    assert gt and all(r.detected and r.covered_fraction == 1.0 for r in gt)
    assert all(r.detected for r in rows if r.kind == "pred")
    assert len(gt) == len([r for r in rows if r.kind == "pred"])
    assert all(r.cohort for r in rows)
    # every generated lesion large enough to survive the 3 mm^3 rule is attached to a lesion
    annotated = [r for r in gt if r.truth]
    assert len(annotated) >= 0.8 * len(gt)
    assert all(r.truth["covers"]["T2Sag"] for r in annotated)
    # no generated lesion is attached twice in one image (slabs are images of their own)
    for image in {r.subject for r in gt}:
        document = json.loads(
            (synth_root / "derivatives" / "synth" / f"{image.split('_')[0]}_truth.json").read_text()
        )
        attached = sum(r.truth.get("generated", 0) for r in gt if r.subject == image)
        assert attached <= len(document["lesions"])
