"""The real-scan bench's counts (cordfuse.evaluation.painted) on hand-made masks: a painted lesion
found or missed by the Anima rules, false lesions beside it and on unpainted scans, a lesion the
grid cannot show kept out of the sensitivity, and the per-contrast summary."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cordfuse.evaluation.painted import (
    PaintedScore,
    compare_painted,
    false_lesions_unpainted,
    found_by_volume,
    score_painted,
    summarise_painted,
)


def _box(shape, *slices):
    mask = np.zeros(shape, bool)
    mask[slices] = True
    return mask


SHAPE = (20, 20, 20)
TRUTH = _box(SHAPE, slice(2, 6), slice(2, 6), slice(2, 6))  # 64 voxels


def test_a_lesion_found_with_false_lesions_beside_it():
    predicted = TRUTH | _box(SHAPE, slice(10, 12), slice(10, 12), slice(10, 12))
    predicted |= _box(SHAPE, slice(15, 17), slice(2, 4), slice(15, 17))
    score = score_painted(predicted, TRUTH, contrast=2.0, voxel_volume_mm3=1.0)
    assert score.visible and score.found
    assert score.false_lesions == 2
    assert score.dice == pytest.approx(2 * 64 / (64 + 64 + 16))


def test_a_lesion_touched_by_one_voxel_is_missed_and_the_touch_is_false():
    # 1 of 64 voxels covered is under the 10 % the rules ask; the predicted blob is mostly outside
    predicted = _box(SHAPE, slice(5, 9), slice(5, 9), slice(5, 9))
    score = score_painted(predicted, TRUTH, contrast=1.5, voxel_volume_mm3=1.0)
    assert score.visible and not score.found
    assert score.false_lesions == 1
    assert 0 < score.dice < 0.05


def test_components_of_at_most_3_mm3_are_not_lesions():
    speck = _box(SHAPE, slice(10, 11), slice(10, 11), slice(10, 13))  # 3 voxels of 1 mm^3
    score = score_painted(TRUTH | speck, TRUTH, contrast=2.0, voxel_volume_mm3=1.0)
    assert score.false_lesions == 0
    assert false_lesions_unpainted(speck, voxel_volume_mm3=1.0) == 0
    # the same speck on a grid of 1.5 mm^3 voxels is 4.5 mm^3: a lesion
    assert false_lesions_unpainted(speck, voxel_volume_mm3=1.5) == 1


def test_every_lesion_on_an_unpainted_scan_is_false():
    predicted = TRUTH | _box(SHAPE, slice(10, 13), slice(10, 13), slice(10, 13))
    assert false_lesions_unpainted(predicted, voxel_volume_mm3=1.0) == 2
    assert false_lesions_unpainted(np.zeros(SHAPE, bool), voxel_volume_mm3=1.0) == 0


def test_a_lesion_with_no_truth_on_the_grid_is_not_visible_rather_than_missed():
    predicted = _box(SHAPE, slice(10, 13), slice(10, 13), slice(10, 13))
    score = score_painted(predicted, np.zeros(SHAPE, bool), contrast=3.0, voxel_volume_mm3=1.0)
    assert not score.visible and not score.found and math.isnan(score.dice)
    assert score.false_lesions == 1


def test_a_lesion_the_rules_drop_on_its_grid_is_not_visible():
    # 2 voxels of 1 mm^3 are a component of at most 3 mm^3: the rules drop it, nothing can find it
    tiny = _box(SHAPE, slice(2, 3), slice(2, 3), slice(2, 4))
    score = score_painted(tiny, tiny, contrast=2.0, voxel_volume_mm3=1.0)
    assert not score.visible and not score.found and math.isnan(score.dice)
    # the same two voxels of 1.6 mm^3 each are a lesion, and found
    assert score_painted(tiny, tiny, contrast=2.0, voxel_volume_mm3=1.6).found


def test_the_summary_per_contrast_leaves_the_invisible_out_of_sensitivity_and_dice():
    scores = [
        PaintedScore(2.0, True, True, 0.8, 0, 30.0),
        PaintedScore(1.5, True, False, 0.1, 2, 30.0),
        PaintedScore(2.0, True, False, 0.0, 1, 30.0),
        PaintedScore(2.0, False, False, float("nan"), 3, 30.0),
        PaintedScore(1.5, True, True, 0.6, 0, 30.0),
        PaintedScore(2.0, True, True, 0.5, 0, 30.0),
    ]
    low, high = summarise_painted(scores)
    assert (low.contrast, low.painted, low.visible, low.found) == (1.5, 2, 2, 1)
    assert low.sensitivity == 0.5 and low.median_dice == pytest.approx(0.35)
    assert low.false_lesions == 2
    assert (high.contrast, high.painted, high.visible, high.found) == (2.0, 4, 3, 2)
    assert high.sensitivity == pytest.approx(2 / 3) and high.median_dice == 0.5
    assert high.false_lesions == 4, "false lesions count on every scan, visible or not"
    (none,) = summarise_painted([PaintedScore(3.0, False, False, float("nan"), 0, 0.0)])
    assert (
        none.visible == 0
        and none.found == 0
        and math.isnan(none.sensitivity)
        and math.isnan(none.median_dice)
    )


def test_found_lesions_by_the_truths_volume():
    # the truth's volume on the model's grid, visible or not
    assert score_painted(TRUTH, TRUTH, contrast=2.0, voxel_volume_mm3=0.5).volume_mm3 == 32.0
    hidden = score_painted(TRUTH, np.zeros(SHAPE, bool), contrast=2.0, voxel_volume_mm3=1.0)
    assert hidden.volume_mm3 == 0.0
    scores = [
        PaintedScore(2.0, True, True, 0.7, 0, 20.0),  # on the first band's upper edge
        PaintedScore(2.0, True, False, 0.0, 0, 8.0),
        PaintedScore(1.25, True, True, 0.6, 0, 12.0),  # under min_contrast below
        PaintedScore(3.0, False, False, float("nan"), 0, 2.0),  # not visible: in no band
        PaintedScore(1.5, True, True, 0.5, 0, 20.5),
        PaintedScore(3.0, True, True, 0.9, 0, 400.0),
    ]
    assert found_by_volume(scores) == [
        ("<= 20 mm3", 2, 3),
        ("20-50 mm3", 1, 1),
        ("> 50 mm3", 1, 1),
    ]
    assert found_by_volume(scores, min_contrast=1.5)[0] == ("<= 20 mm3", 1, 2)
    assert found_by_volume(scores, (10.0,)) == [("<= 10 mm3", 0, 1), ("> 10 mm3", 4, 4)]


def test_two_models_compared_lesion_by_lesion():
    def scores(found, contrasts=(1.25, 1.5, 2.0, 3.0, 3.0, 2.0)):
        # the fifth lesion is not visible on the grid: neither model could find it
        return [
            PaintedScore(c, i != 4, f and i != 4, 0.5 if f else 0.0, 0, 30.0)
            for i, (c, f) in enumerate(zip(contrasts, found, strict=True))
        ]

    a = scores([True, True, False, False, True, True])
    b = scores([False, True, True, True, True, True])
    paired = compare_painted(a, b)
    assert (paired.lesions, paired.found_a, paired.found_b) == (5, 3, 4)
    assert (paired.only_a, paired.only_b) == (1, 2)
    assert paired.p_value == pytest.approx(1.0)  # 1 against 2 is no evidence either way
    from_15 = compare_painted(a, b, min_contrast=1.5)
    assert (from_15.lesions, from_15.only_a, from_15.only_b) == (4, 0, 2)
    # every visible lesion (5) found by the first model only: p = 2 / 2^5
    many = compare_painted(scores([True] * 6), scores([False] * 6))
    assert (many.only_a, many.only_b) == (5, 0)
    assert many.p_value == pytest.approx(2 / 2**5)
    with pytest.raises(ValueError, match="same painted lesions"):
        compare_painted(a, b[:-1])
    with pytest.raises(ValueError, match="same painted lesions"):
        compare_painted(a, scores([True] * 6, contrasts=(1.5,) * 6))
