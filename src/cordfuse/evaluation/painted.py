"""Scores of the real-scan bench (``benchmarks/bench_real.py``, issue 22): lesions painted into
real healthy scans, one at a time, and the same scans unpainted.

Each painted scan is scored with the Anima rules of :mod:`cordfuse.evaluation.metrics`: the
painted lesion is *found* when it is detected, its Dice is the mask's against the painted truth,
and every predicted lesion that is not a true positive is a *false lesion beside it*. A lesion
whose truth has no lesion left on the grid the model saw (a thin lesion re-acquired on 3 mm
slices, where no voxel holds half of it, or keeps only 3 mm^3 or less, which the rules drop) is
*not visible*: nothing could find it, so it is counted apart and left out of the sensitivity and
the Dice, instead of counting as missed. On an unpainted healthy scan every predicted lesion is
false.

Example:
    A painted lesion found, with one false lesion elsewhere:

    >>> truth = np.zeros((12, 12, 12), bool)
    >>> truth[2:5, 2:5, 2:5] = True
    >>> predicted = truth.copy()
    >>> predicted[8:10, 8:10, 8:10] = True
    >>> score = score_painted(predicted, truth, contrast=2.0, voxel_volume_mm3=1.0)
    >>> score.found, round(score.dice, 3), score.false_lesions
    (True, 0.871, 1)
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from cordfuse.evaluation.metrics import dice, lesion_detection, lesions
from cordfuse.evaluation.stats import mcnemar_exact


@dataclass(frozen=True)
class PaintedScore:
    """One painted scan, scored.

    Attributes:
        contrast: The painted contrast (multiple of the local cord signal).
        visible: Whether the truth keeps a lesion on the grid the model saw (more than 3 mm^3).
        found: Whether the painted lesion is detected (False when not visible).
        dice: The predicted mask's Dice against the truth (NaN when not visible).
        false_lesions: Predicted lesions that are not true positives.
        volume_mm3: The painted truth's volume on the grid the model saw (every voxel of it).
    """

    contrast: float
    visible: bool
    found: bool
    dice: float
    false_lesions: int
    volume_mm3: float


@dataclass(frozen=True)
class ContrastSummary:
    """The painted scans of one contrast.

    Attributes:
        contrast: The painted contrast.
        painted: Lesions painted.
        visible: Of them, those whose truth keeps a lesion on the model's grid.
        found: Of the visible ones, those detected.
        sensitivity: Found / visible (NaN when none is visible).
        median_dice: Median Dice over the visible ones (NaN when none is).
        false_lesions: False lesions beside the painted ones, all scans of this contrast.
    """

    contrast: float
    painted: int
    visible: int
    found: int
    sensitivity: float
    median_dice: float
    false_lesions: int


def score_painted(
    predicted: np.ndarray, truth: np.ndarray, *, contrast: float, voxel_volume_mm3: float
) -> PaintedScore:
    """Score one painted scan's prediction against its painted truth.

    Args:
        predicted: The predicted mask (nonzero is lesion).
        truth: The painted lesion's mask on the same grid.
        contrast: The painted contrast, carried to the score.
        voxel_volume_mm3: The grid's voxel volume.

    Returns:
        The score.
    """
    truth = np.asarray(truth) > 0
    predicted = np.asarray(predicted) > 0
    counts = lesion_detection(predicted, truth, voxel_volume_mm3=voxel_volume_mm3)
    false = counts.n_pred - counts.pred_true_positive
    volume = float(truth.sum()) * voxel_volume_mm3
    if counts.n_gt == 0:  # nothing of it left under the rules: no voxel, or 3 mm^3 at most
        return PaintedScore(contrast, False, False, float("nan"), false, volume)
    found = counts.gt_detected > 0
    return PaintedScore(contrast, True, found, dice(predicted, truth), false, volume)


def false_lesions_unpainted(predicted: np.ndarray, *, voxel_volume_mm3: float) -> int:
    """Lesions predicted on an unpainted healthy scan (each one is false), by the same rules
    (components of at most 3 mm^3 dropped).

    Args:
        predicted: The predicted mask (nonzero is lesion).
        voxel_volume_mm3: The grid's voxel volume.

    Returns:
        The number of predicted lesions.
    """
    return lesions(np.asarray(predicted) > 0, voxel_volume_mm3=voxel_volume_mm3)[1]


def summarise_painted(scores: Iterable[PaintedScore]) -> list[ContrastSummary]:
    """The scores grouped by contrast, in increasing contrast.

    Args:
        scores: Any number of scores.

    Returns:
        One summary per contrast present.
    """
    by_contrast: dict[float, list[PaintedScore]] = {}
    for score in scores:
        by_contrast.setdefault(score.contrast, []).append(score)
    summaries = []
    for contrast in sorted(by_contrast):
        group = by_contrast[contrast]
        visible = [s for s in group if s.visible]
        found = sum(s.found for s in visible)
        summaries.append(
            ContrastSummary(
                contrast=contrast,
                painted=len(group),
                visible=len(visible),
                found=found,
                sensitivity=found / len(visible) if visible else float("nan"),
                median_dice=(
                    statistics.median(s.dice for s in visible) if visible else float("nan")
                ),
                false_lesions=sum(s.false_lesions for s in group),
            )
        )
    return summaries


def found_by_volume(
    scores: Iterable[PaintedScore],
    edges_mm3: Sequence[float] = (20.0, 50.0),
    *,
    min_contrast: float = 0.0,
) -> list[tuple[str, int, int]]:
    """The visible painted lesions found, by the truth's volume: small lesions are where
    sensitivity is lost (docs/training.md), and a bench whose lesions are smaller than a
    cohort's would otherwise read as a worse model.

    Args:
        scores: Any number of scores.
        edges_mm3: The bands' upper edges (the last band is open).
        min_contrast: Count only lesions of at least this contrast.

    Returns:
        ``(band, found, visible)`` for each band, smallest first.

    Example:
        >>> scores = [PaintedScore(2.0, True, v > 30, 0.5, 0, v) for v in (10.0, 40.0, 90.0)]
        >>> found_by_volume(scores)
        [('<= 20 mm3', 0, 1), ('20-50 mm3', 1, 1), ('> 50 mm3', 1, 1)]
    """
    edges = [0.0, *edges_mm3, float("inf")]
    visible = [s for s in scores if s.visible and s.contrast >= min_contrast]
    bands = []
    for lo, hi in itertools.pairwise(edges):
        if lo == 0:
            label = f"<= {hi:g} mm3"
        else:
            label = f"> {lo:g} mm3" if hi == np.inf else f"{lo:g}-{hi:g} mm3"
        band = [s for s in visible if lo < s.volume_mm3 <= hi]
        bands.append((label, sum(s.found for s in band), len(band)))
    return bands


@dataclass(frozen=True)
class PairedPainted:
    """Two models on the same painted lesions (those visible to both, from a contrast on).

    Attributes:
        lesions: The lesions compared.
        found_a: Found by the first model.
        found_b: Found by the second.
        only_a: Found by the first and missed by the second.
        only_b: Found by the second and missed by the first.
        p_value: Two-sided exact McNemar test of the discordant pairs.
    """

    lesions: int
    found_a: int
    found_b: int
    only_a: int
    only_b: int
    p_value: float


def compare_painted(
    a: Iterable[PaintedScore], b: Iterable[PaintedScore], *, min_contrast: float = 0.0
) -> PairedPainted:
    """Two models' scores of the same painted lesions, paired lesion by lesion (the evidence the
    bench's counts alone cannot give: which lesions one model finds and the other misses).

    Args:
        a: The first model's scores, one per painted lesion.
        b: The second model's, in the same order.
        min_contrast: Compare only lesions of at least this contrast.

    Returns:
        The paired counts and McNemar's p.

    Raises:
        ValueError: The two lists are not of the same lesions (length or contrasts differ).
    """
    a, b = list(a), list(b)
    if len(a) != len(b) or any(x.contrast != y.contrast for x, y in zip(a, b, strict=True)):
        raise ValueError("the two models were not scored on the same painted lesions")
    pairs = [
        (x.found, y.found)
        for x, y in zip(a, b, strict=True)
        if x.visible and y.visible and x.contrast >= min_contrast
    ]
    only_a = sum(x and not y for x, y in pairs)
    only_b = sum(y and not x for x, y in pairs)
    return PairedPainted(
        lesions=len(pairs),
        found_a=sum(x for x, _ in pairs),
        found_b=sum(y for _, y in pairs),
        only_a=only_a,
        only_b=only_b,
        p_value=mcnemar_exact(only_a, only_b),
    )
