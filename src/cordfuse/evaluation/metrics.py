"""Segmentation metrics exactly as the paper's reference computes them (no torch here).

**Dice**: ``2|P & G| / (|P| + |G|)`` on the binary masks as given; 1.0 when both are empty.

**Lesion-wise detection**, as Anima's ``animaSegPerfAnalyzer -l`` (Inria Empenn), which the paper
summarises as "10 % detected / 70 % outside":

1. Lesions are connected components with face connectivity (6-neighbourhood in 3D, ITK's
   default). Components of at most ``min_volume_mm3`` (3 mm^3) are removed, in both images,
   before anything else; voxel volume comes from the affine, so anisotropic spacing counts.
2. A ground-truth lesion *g* is **detected** when the fraction of its voxels covered by predicted
   lesions is strictly greater than ``alpha`` (0.10), **and** the predicted lesions overlapping
   it, taken by decreasing overlap until their cumulated share of g's detected voxels reaches
   ``gamma`` (0.65), each have at most ``beta`` (0.70) of their voxels outside every ground-truth
   lesion.
3. A predicted lesion is a true positive under the same test with the roles swapped.
4. Sensitivity = detected GT lesions / GT lesions (NaN when there is no GT lesion); precision =
   true-positive predicted lesions / predicted lesions (0 when nothing is predicted);
   F1 = 2PS / (P + S), and 0 whenever that is 0/0 or undefined, as Anima does.

Example:
    Two ground-truth lesions of 8 mm^3, the prediction finds one of them:

    >>> import numpy as np
    >>> truth = np.zeros((8, 8, 8), bool)
    >>> truth[1:3, 1:3, 1:3] = truth[5:7, 5:7, 5:7] = True
    >>> pred = np.zeros_like(truth)
    >>> pred[1:3, 1:3, 1:3] = True
    >>> m = lesion_detection(pred, truth, voxel_volume_mm3=1.0)
    >>> m.sensitivity, m.precision, round(m.f1, 3)
    (0.5, 1.0, 0.667)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import cc3d
import numpy as np

ALPHA, BETA, GAMMA = 0.10, 0.70, 0.65
MIN_VOLUME_MM3 = 3.0

#: Voxel neighbourhoods a lesion may be connected by in 3D: faces (6), edges (18), corners (26).
Connectivity = Literal[6, 18, 26]


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary masks; 1.0 when both are empty (nothing to find, nothing found).

    Args:
        prediction: The predicted mask (nonzero is lesion).
        truth: The ground-truth mask, same shape.

    Returns:
        The Dice coefficient, in [0, 1].

    Example:
        >>> dice(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0])), dice(np.zeros(3), np.zeros(3))
        (0.6666666666666666, 1.0)
    """
    p, g = np.asarray(prediction) > 0, np.asarray(truth) > 0
    total = int(p.sum()) + int(g.sum())
    return 1.0 if total == 0 else 2.0 * int((p & g).sum()) / total


def lesions(
    mask: np.ndarray,
    *,
    voxel_volume_mm3: float,
    min_volume_mm3: float = MIN_VOLUME_MM3,
    connectivity: Connectivity = 6,
) -> tuple[np.ndarray, int]:
    """Connected components (labels 1..n) after removing those of volume <= ``min_volume_mm3``.

    Args:
        mask: A 3D mask (nonzero is lesion).
        voxel_volume_mm3: The volume of one voxel.
        min_volume_mm3: Components of at most this volume are dropped.
        connectivity: The voxel neighbourhood that connects a lesion.

    Returns:
        ``(labels, n)``: the int32 label image (0 background) and the number of lesions.

    Example:
        >>> mask = np.zeros((5, 5, 5), bool)
        >>> mask[0:2, 0:2, 0:2] = True   # 8 voxels
        >>> mask[4, 4, 4] = True         # 1 voxel: too small
        >>> labels, n = lesions(mask, voxel_volume_mm3=1.0)
        >>> n, int(labels.max()), int((labels > 0).sum())
        (1, 1, 8)
    """
    labels = cc3d.connected_components(
        (np.asarray(mask) > 0).astype(np.uint8), connectivity=connectivity
    )
    n = int(labels.max())
    if n == 0:
        return labels.astype(np.int32), 0
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    keep = counts * voxel_volume_mm3 > min_volume_mm3
    keep[0] = False
    new_ids = np.zeros(n + 1, np.int32)
    new_ids[keep] = np.arange(1, int(keep.sum()) + 1)
    return new_ids[labels], int(keep.sum())


def lesion_outcomes(
    reference: np.ndarray,
    n_ref: int,
    other: np.ndarray,
    n_other: int,
    *,
    alpha: float = ALPHA,
    beta: float = BETA,
    gamma: float = GAMMA,
) -> tuple[np.ndarray, np.ndarray]:
    """Per lesion of ``reference`` (labels 1..n_ref): the fraction of it covered by ``other``'s
    lesions, and whether it is detected by them (the rules of the module docstring).

    Args:
        reference: The label image of the lesions judged (labels 1..n_ref).
        n_ref: Their number.
        other: The label image of the lesions that may detect them (labels 1..n_other).
        n_other: Their number.
        alpha: A lesion must be covered by strictly more than this fraction.
        beta: A detecting lesion may have at most this fraction of it outside every reference
            lesion.
        gamma: The share of the covered voxels the detecting lesions checked must reach.

    Returns:
        ``(covered_fraction, detected)``, each with ``n_ref`` entries, lesion ``i`` at index
        ``i - 1``.
    """
    covered_fraction = np.zeros(n_ref)
    detected = np.zeros(n_ref, bool)
    if n_ref == 0:
        return covered_fraction, detected
    other_any = other > 0
    reference_any = reference > 0
    ref_size = np.bincount(reference.ravel(), minlength=n_ref + 1)
    other_size = np.bincount(other.ravel(), minlength=n_other + 1)
    outside = np.bincount(other[~reference_any].ravel(), minlength=n_other + 1)
    outside_fraction = np.divide(outside, np.maximum(other_size, 1))
    both = reference_any & other_any
    pairs = np.stack([reference[both], other[both]], axis=1)
    for ref_id in range(1, n_ref + 1):
        hits = pairs[pairs[:, 0] == ref_id, 1]
        covered = len(hits)
        covered_fraction[ref_id - 1] = covered / ref_size[ref_id]
        if covered / ref_size[ref_id] <= alpha:  # strictly more than alpha is needed
            continue
        ids, overlaps = np.unique(hits, return_counts=True)
        order = np.argsort(-overlaps, kind="stable")
        cumulated, ok = 0, True
        for other_id, overlap in zip(ids[order], overlaps[order], strict=True):
            if outside_fraction[other_id] > beta:
                ok = False
                break
            cumulated += overlap
            if cumulated / covered >= gamma:
                break
        detected[ref_id - 1] = ok
    return covered_fraction, detected


def _detected(
    reference: np.ndarray,
    n_ref: int,
    other: np.ndarray,
    n_other: int,
    *,
    alpha: float,
    beta: float,
    gamma: float,
) -> int:
    """How many lesions of ``reference`` are detected by the lesions of ``other``."""
    _, detected = lesion_outcomes(
        reference, n_ref, other, n_other, alpha=alpha, beta=beta, gamma=gamma
    )
    return int(detected.sum())


@dataclass(frozen=True)
class LesionDetection:
    """Lesion-wise counts of one image and the rates they give.

    Attributes:
        n_gt: Ground-truth lesions.
        n_pred: Predicted lesions.
        gt_detected: Ground-truth lesions detected.
        pred_true_positive: Predicted lesions that are true positives.
    """

    n_gt: int
    n_pred: int
    gt_detected: int
    pred_true_positive: int

    @property
    def sensitivity(self) -> float:
        """Detected ground-truth lesions / ground-truth lesions (NaN without any)."""
        return self.gt_detected / self.n_gt if self.n_gt else math.nan

    @property
    def precision(self) -> float:
        """True-positive predicted lesions / predicted lesions (0 when nothing is predicted)."""
        return self.pred_true_positive / self.n_pred if self.n_pred else 0.0

    @property
    def f1(self) -> float:
        """``2PS / (P + S)``; 0 whenever that is 0/0 or undefined, as Anima does."""
        p, s = self.precision, self.sensitivity
        if math.isnan(p) or math.isnan(s) or p + s == 0:
            return 0.0
        return 2 * p * s / (p + s)


def lesion_detection(
    prediction: np.ndarray,
    truth: np.ndarray,
    *,
    voxel_volume_mm3: float,
    alpha: float = ALPHA,
    beta: float = BETA,
    gamma: float = GAMMA,
    min_volume_mm3: float = MIN_VOLUME_MM3,
    connectivity: Connectivity = 6,
) -> LesionDetection:
    """Lesion-wise detection counts (see the module docstring for the rules).

    Args:
        prediction: The predicted mask (nonzero is lesion).
        truth: The ground-truth mask, same shape.
        voxel_volume_mm3: The volume of one voxel.
        alpha: Minimum covered fraction (exclusive) of a detected lesion.
        beta: Maximum fraction of a detecting lesion outside the other image's lesions.
        gamma: Cumulated overlap share up to which detecting lesions are checked.
        min_volume_mm3: Lesions of at most this volume are dropped first, in both masks.
        connectivity: The voxel neighbourhood that connects a lesion.

    Returns:
        The counts, with sensitivity, precision and F1.
    """
    pred_labels, n_pred = lesions(
        prediction,
        voxel_volume_mm3=voxel_volume_mm3,
        min_volume_mm3=min_volume_mm3,
        connectivity=connectivity,
    )
    gt_labels, n_gt = lesions(
        truth,
        voxel_volume_mm3=voxel_volume_mm3,
        min_volume_mm3=min_volume_mm3,
        connectivity=connectivity,
    )
    options = dict(alpha=alpha, beta=beta, gamma=gamma)
    return LesionDetection(
        n_gt=n_gt,
        n_pred=n_pred,
        gt_detected=_detected(gt_labels, n_gt, pred_labels, n_pred, **options),
        pred_true_positive=_detected(pred_labels, n_pred, gt_labels, n_gt, **options),
    )


@dataclass(frozen=True)
class ImageMetrics:
    """The per-image row of ``cordfuse evaluate``."""

    dice: float
    lesion_sensitivity: float
    lesion_precision: float
    lesion_f1: float
    n_gt: int
    n_pred: int
    gt_detected: int
    pred_true_positive: int
    volume_gt_mm3: float
    volume_pred_mm3: float

    def to_dict(self) -> dict:
        """The metrics by name (the columns of ``cordfuse evaluate``'s CSV).

        Returns:
            A plain dict of the fields.
        """
        return asdict(self)


def evaluate_masks(
    prediction: np.ndarray, truth: np.ndarray, *, voxel_volume_mm3: float, **options
) -> ImageMetrics:
    """Dice and lesion-wise metrics of one prediction against its ground truth.

    Args:
        prediction: The predicted mask (nonzero is lesion).
        truth: The ground-truth mask, same shape.
        voxel_volume_mm3: The volume of one voxel.
        **options: Passed to :func:`lesion_detection` (``alpha``, ``beta``, ``gamma``,
            ``min_volume_mm3``, ``connectivity``).

    Returns:
        The image's metrics and lesion volumes.

    Raises:
        ValueError: the masks differ in shape.
    """
    prediction, truth = np.asarray(prediction) > 0, np.asarray(truth) > 0
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {prediction.shape} and truth {truth.shape} differ in shape")
    detection = lesion_detection(prediction, truth, voxel_volume_mm3=voxel_volume_mm3, **options)
    return ImageMetrics(
        dice=dice(prediction, truth),
        lesion_sensitivity=detection.sensitivity,
        lesion_precision=detection.precision,
        lesion_f1=detection.f1,
        n_gt=detection.n_gt,
        n_pred=detection.n_pred,
        gt_detected=detection.gt_detected,
        pred_true_positive=detection.pred_true_positive,
        volume_gt_mm3=float(truth.sum() * voxel_volume_mm3),
        volume_pred_mm3=float(prediction.sum() * voxel_volume_mm3),
    )
