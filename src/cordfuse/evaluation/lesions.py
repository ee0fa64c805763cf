"""Lesion by lesion: which ground-truth lesions a prediction finds, and what each sequence adds.

Image-level metrics say *how many* lesions a model finds; this module says *which*. For one
prediction and its ground truth, :func:`lesion_rows` lists

* every ground-truth lesion (``kind="gt"``): volume, centroid in world mm, the fraction of it
  covered by predicted lesions, and whether it is detected under the Anima rules
  (:mod:`cordfuse.evaluation.metrics`);
* every predicted lesion (``kind="pred"``): the same, ``detected`` meaning true positive.

When the dataset carries the synthetic generator's truth
(``derivatives/synth/<subject>_truth.json``), :func:`annotate_with_truth` adds to each
ground-truth lesion its visibility on every sequence (the fraction of full lesion contrast the
generator drew) and whether each sequence's field of view covers it. A lesion is **faint** when
its T2Sag visibility is below :data:`FAINT_VISIBILITY` (the generator draws faint lesions at
0.25-0.45, the others at 0.45-1.0).

:func:`compare_inferences` pairs the outcomes of the same lesions under two sets of sequences at
inference (T2Sag alone versus more) and tests the discordant pairs with the exact McNemar test.
:func:`extra_sequences_tables` compares each model with itself that way; :func:`product_table`
compares each multi-sequence model with every sequence against the best T2Sag-only answer of the
study, the comparison a user choosing a model cares about.

No torch import: this runs wherever the predictions and labels are.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cordfuse.evaluation.metrics import (
    ALPHA,
    BETA,
    GAMMA,
    MIN_VOLUME_MM3,
    Connectivity,
    lesion_outcomes,
    lesions,
)
from cordfuse.evaluation.stats import mcnemar_exact, summarise
from cordfuse.sequences import SEQUENCES

if TYPE_CHECKING:
    from cordfuse.evaluation.tables import Cell, Record, Table

#: T2Sag visibility below which a lesion counts as faint (the generator's faint/clear boundary).
FAINT_VISIBILITY = 0.45
#: A generator lesion whose centre falls outside every component is matched to the nearest
#: component centroid within this distance (partial-volume edge of a small lesion).
MATCH_MM = 5.0


@dataclass(frozen=True)
class LesionRow:
    """One lesion of one image, for one model and one set of sequences at inference."""

    subject: str
    kind: str  # "gt" (ground-truth lesion) or "pred" (predicted lesion)
    lesion: int  # connected-component id, 1..n, in this image
    volume_mm3: float
    centroid_mm: tuple[float, float, float]
    covered_fraction: float  # gt: share predicted; pred: share inside a ground-truth lesion
    detected: bool  # gt: detected (Anima); pred: true positive
    cohort: str = ""
    experiment: str = ""
    seed: int | None = None
    inference: str = ""
    #: generator truth, when known: ``visibility`` and ``covers`` per sequence, ``faint``
    truth: dict = field(default_factory=dict)

    @property
    def key(self) -> tuple:
        """What identifies the same lesion across models and inference sets."""
        return (self.subject, self.kind, self.lesion)

    @property
    def visibility_class(self) -> str:
        """``faint`` / ``clear`` on T2Sag, or ``""`` without generator truth."""
        if "faint" not in self.truth:
            return ""
        return "faint" if self.truth["faint"] else "clear"


def lesion_rows(
    prediction: np.ndarray,
    truth: np.ndarray,
    affine: np.ndarray,
    *,
    subject: str,
    voxel_volume_mm3: float,
    min_volume_mm3: float = MIN_VOLUME_MM3,
    alpha: float = ALPHA,
    beta: float = BETA,
    gamma: float = GAMMA,
    connectivity: Connectivity = 6,
    synth: SynthTruth | None = None,
    motion: np.ndarray | None = None,
    **context,
) -> list[LesionRow]:
    """Ground-truth and predicted lesions of one image (see the module docstring).

    Args:
        prediction: The predicted mask (nonzero is lesion).
        truth: The ground-truth mask, same shape.
        affine: The masks' voxel-to-world affine (for the centroids).
        subject: The subject's name, copied to every row.
        voxel_volume_mm3: The volume of one voxel.
        min_volume_mm3: Lesions of at most this volume are dropped, in both masks.
        alpha: Minimum covered fraction (exclusive) of a detected lesion.
        beta: Maximum fraction of a detecting lesion outside the other mask's lesions.
        gamma: Cumulated overlap share up to which detecting lesions are checked.
        connectivity: The voxel neighbourhood that connects a lesion.
        synth: The generator's truth, added to the ground-truth lesions
            (:func:`annotate_with_truth`).
        motion: World -> anatomy of the masks' grid (see :meth:`SynthTruth.motion_of`).
        **context: The rows' ``cohort``, ``experiment``, ``seed`` and ``inference``.

    Returns:
        The ground-truth lesions, then the predicted ones, each numbered from 1.

    Raises:
        ValueError: the masks differ in shape.

    Example:
        >>> truth = np.zeros((6, 6, 6), bool)
        >>> truth[0:2, 0:2, 0:2] = True
        >>> rows = lesion_rows(truth, truth, np.eye(4), subject="sub-01", voxel_volume_mm3=1.0)
        >>> [(r.kind, r.lesion, r.volume_mm3, r.centroid_mm, r.detected) for r in rows]
        [('gt', 1, 8.0, (0.5, 0.5, 0.5), True), ('pred', 1, 8.0, (0.5, 0.5, 0.5), True)]
    """
    prediction, truth = np.asarray(prediction) > 0, np.asarray(truth) > 0
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {prediction.shape} and truth {truth.shape} differ in shape")
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
    rules = dict(alpha=alpha, beta=beta, gamma=gamma)
    rows = []
    for kind, labels, n, other, n_other in (
        ("gt", gt_labels, n_gt, pred_labels, n_pred),
        ("pred", pred_labels, n_pred, gt_labels, n_gt),
    ):
        covered, detected = lesion_outcomes(labels, n, other, n_other, **rules)
        for i, (volume, centroid) in enumerate(_components(labels, n, affine), start=1):
            rows.append(
                LesionRow(
                    subject,
                    kind,
                    i,
                    volume * voxel_volume_mm3,
                    centroid,
                    float(covered[i - 1]),
                    bool(detected[i - 1]),
                    **context,
                )
            )
    if synth is not None:
        rows = annotate_with_truth(rows, synth, affine, gt_labels, motion)
    return rows


def _components(labels: np.ndarray, n: int, affine: np.ndarray):
    """``(voxel count, world centroid)`` of components 1..n."""
    if n == 0:
        return []
    index = np.nonzero(labels)
    ids = labels[index]
    counts = np.bincount(ids, minlength=n + 1)[1:]
    sums = np.stack([np.bincount(ids, weights=axis, minlength=n + 1)[1:] for axis in index], 1)
    voxels = sums / counts[:, None]
    world = voxels @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]
    return [
        (int(c), tuple(round(float(v), 3) for v in w)) for c, w in zip(counts, world, strict=True)
    ]


# -- the generator's truth ----------------------------------------------------------------------


def _shape3(shape: Sequence[int]) -> tuple[int, int, int]:
    """A 3D grid's shape as three ints (a JSON list or a longer header shape)."""
    return int(shape[0]), int(shape[1]), int(shape[2])


@dataclass(frozen=True)
class ScanField:
    """Where one scan of a sequence looks: its voxel-to-world affine, shape and the subject's
    motion (this scanner's world -> anatomy, as the generator's truth stores it)."""

    stem: str
    sequence: str
    affine: np.ndarray
    shape: tuple[int, int, int]
    motion: np.ndarray

    def covers(self, anatomy_mm: Sequence[float]) -> bool:
        """Whether a point of the anatomy lies in this scan's field of view.

        Args:
            anatomy_mm: The point, in the generator's anatomy mm.

        Returns:
            True when the point falls inside one of the scan's voxels.

        Example:
            >>> scan = ScanField("sub-01_T2w", "T2Sag", np.eye(4), (10, 10, 10), np.eye(4))
            >>> scan.covers([9.0, 0.0, 0.0]), scan.covers([9.6, 0.0, 0.0])
            (True, False)
        """
        world = np.linalg.inv(self.motion) @ np.r_[np.asarray(anatomy_mm, float), 1.0]
        voxel = np.linalg.solve(self.affine, world)[:3]
        return bool(np.all((voxel > -0.5) & (voxel < np.asarray(self.shape) - 0.5)))


@dataclass(frozen=True)
class SynthTruth:
    """A subject's generated lesions (centre in anatomy mm, visibility per sequence) and the
    fields of view of its scans."""

    lesions: list[dict]
    scans: list[ScanField]

    @classmethod
    def from_document(cls, document: dict | None) -> SynthTruth | None:
        """From :func:`cordfuse.dataset.synth_truth_document` (as a prepared subject stores it).

        Args:
            document: The plain-JSON truth, or None.

        Returns:
            The truth, or None for a None document.
        """
        if document is None:
            return None
        scans = [
            ScanField(
                stem,
                scan["sequence"],
                np.asarray(scan["affine"], float),
                _shape3(scan["shape"]),
                np.asarray(scan["motion_world_to_anatomy"], float),
            )
            for stem, scan in document["scans"].items()
        ]
        return cls(document["lesions"], scans)

    @classmethod
    def load(cls, root: str | Path, subject: str) -> SynthTruth | None:
        """The truth of ``subject`` under the BIDS ``root``, or None when it has none.

        Args:
            root: A BIDS dataset written by ``cordfuse synth``.
            subject: The subject's name (``sub-...``).

        Returns:
            The truth, or None.

        Raises:
            CordfuseError: an unreadable truth file or scan header.
        """
        from cordfuse.dataset import SYNTH_TRUTH, discover, synth_truth_document

        root = Path(root)
        if not (root / SYNTH_TRUTH / f"{subject}_truth.json").exists():
            return None
        found = [s for s in discover(root).subjects if s.name == subject]
        return cls.from_document(synth_truth_document(found[0])) if found else None

    def motion_of(self, label_name: str) -> np.ndarray:
        """World -> anatomy of the grid of a label named ``<scan stem>_...``: the scan's motion
        (a moved lower T2Sag slab), identity for the fused T2Sag grid (the upper slab's world).

        Args:
            label_name: The label file's name.

        Returns:
            A 4x4 rigid transform.
        """
        for scan in self.scans:
            if label_name.startswith(scan.stem + "_"):
                return scan.motion
        return np.eye(4)


def annotate_with_truth(
    rows: list[LesionRow],
    truth: SynthTruth,
    labels_affine: np.ndarray,
    gt_labels: np.ndarray,
    motion: np.ndarray | None = None,
) -> list[LesionRow]:
    """Add the generator's truth to the ground-truth rows of one image.

    ``gt_labels`` are the ground-truth components (as :func:`cordfuse.evaluation.metrics.lesions`
    numbers them) on the grid of ``labels_affine``, whose world is the anatomy's (the fused T2Sag
    grid: its upper slab is never moved), or related to it by ``motion`` (world -> anatomy,
    :meth:`SynthTruth.motion_of`). Generator lesions merged into one component make one lesion:
    faint only when all of them are faint on T2Sag, visible on a sequence as much as the most
    visible of them, covered by a sequence when any of them is.

    Args:
        rows: The image's lesion rows (predicted ones pass unchanged).
        truth: The subject's generated lesions and scan fields of view.
        labels_affine: The voxel-to-world affine of ``gt_labels``.
        gt_labels: The ground-truth components.
        motion: World -> anatomy of that grid (None: identity).

    Returns:
        The rows, ground-truth ones matched to generated lesions carrying their ``truth``.
    """
    members: dict[int, list[dict]] = {}
    gt = [r for r in rows if r.kind == "gt"]
    centroids = np.array([r.centroid_mm for r in gt]) if gt else np.zeros((0, 3))
    to_voxel = np.linalg.inv(labels_affine) @ np.linalg.inv(
        np.eye(4) if motion is None else np.asarray(motion, float)
    )
    for lesion in truth.lesions:
        centre_h = to_voxel @ np.r_[np.asarray(lesion["center_world_mm"], float), 1.0]
        centre = (labels_affine @ centre_h)[:3]  # in this grid's world
        voxel = np.rint(centre_h[:3]).astype(int)
        component = 0
        if np.all((voxel >= 0) & (voxel < gt_labels.shape)):
            component = int(gt_labels[tuple(voxel)])
        if component == 0 and len(centroids):
            distance = np.linalg.norm(centroids - centre, axis=1)
            if distance.min() <= MATCH_MM:
                component = gt[int(distance.argmin())].lesion
        if component:
            members.setdefault(component, []).append(lesion)
    out = []
    for row in rows:
        found = members.get(row.lesion, []) if row.kind == "gt" else []
        if not found:
            out.append(row)
            continue
        visibility = {s: max(m["visibility"].get(s, 0.0) for m in found) for s in SEQUENCES}
        covers = {
            s: any(
                scan.covers(m["center_world_mm"])
                for m in found
                for scan in truth.scans
                if scan.sequence == s
            )
            for s in SEQUENCES
        }
        out.append(
            replace(
                row,
                truth={
                    "visibility": visibility,
                    "covers": covers,
                    "generated": len(found),
                    "faint": all(m["visibility"]["T2Sag"] < FAINT_VISIBILITY for m in found),
                },
            )
        )
    return out


# -- paired comparison of two inference sets ----------------------------------------------------


@dataclass(frozen=True)
class PairedDetection:
    """The same ground-truth lesions, detected with sequences ``base`` and ``other``."""

    n: int
    both: int
    only_other: int  # found with ``other`` only (what the extra sequences add)
    only_base: int  # found with ``base`` only (what they cost)
    neither: int
    p_value: float  # exact McNemar test on the discordant pairs

    @property
    def sensitivity_base(self) -> float:
        """Share of the lesions detected with ``base`` (NaN without lesions)."""
        return (self.both + self.only_base) / self.n if self.n else math.nan

    @property
    def sensitivity_other(self) -> float:
        """Share of the lesions detected with ``other`` (NaN without lesions)."""
        return (self.both + self.only_other) / self.n if self.n else math.nan

    @property
    def gain(self) -> float:
        """What ``other`` adds to the sensitivity (negative: what it costs).

        Example:
            >>> paired = PairedDetection(n=8, both=4, only_other=2, only_base=0, neither=2,
            ...                          p_value=0.5)
            >>> paired.sensitivity_base, paired.sensitivity_other, paired.gain
            (0.5, 0.75, 0.25)
        """
        return self.sensitivity_other - self.sensitivity_base


def paired_outcomes(
    base: Iterable[LesionRow], other: Iterable[LesionRow]
) -> list[tuple[LesionRow, LesionRow]]:
    """Ground-truth lesions present in both lists, as ``(base row, other row)``.

    Args:
        base: The lesion rows with the base sequences.
        other: The rows of the same images with more sequences.

    Returns:
        The pairs, in ``other``'s order.
    """
    by_key = {r.key: r for r in base if r.kind == "gt"}
    return [(by_key[r.key], r) for r in other if r.kind == "gt" and r.key in by_key]


def compare_inferences(pairs: Sequence[tuple[LesionRow, LesionRow]]) -> PairedDetection:
    """Counts of the 2x2 table of paired outcomes and the exact McNemar p-value.

    Args:
        pairs: ``(base row, other row)`` of the same lesions (:func:`paired_outcomes`).

    Returns:
        The counts, sensitivities and p-value.
    """
    both = sum(a.detected and b.detected for a, b in pairs)
    only_other = sum(b.detected and not a.detected for a, b in pairs)
    only_base = sum(a.detected and not b.detected for a, b in pairs)
    return PairedDetection(
        len(pairs),
        both,
        only_other,
        only_base,
        len(pairs) - both - only_other - only_base,
        mcnemar_exact(only_other, only_base),
    )


# -- CSV ----------------------------------------------------------------------------------------

_COLUMNS = (
    "experiment",
    "seed",
    "inference",
    "subject",
    "cohort",
    "kind",
    "lesion",
    "volume_mm3",
    "x_mm",
    "y_mm",
    "z_mm",
    "covered_fraction",
    "detected",
    "t2sag",
    "generated",
    *(f"visibility_{s}" for s in SEQUENCES),
    *(f"covers_{s}" for s in SEQUENCES),
)


def rows_to_csv(rows: Iterable[LesionRow]) -> str:
    """One line per lesion; truth columns are empty without the generator's truth.

    Args:
        rows: Lesion rows.

    Returns:
        The CSV text, with a header (read back by :func:`rows_from_csv`).

    Example:
        >>> row = LesionRow("sub-01", "gt", 1, 8.0, (0.5, 0.5, 0.5), 1.0, True)
        >>> rows_from_csv(rows_to_csv([row])) == [row]
        True
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_COLUMNS)
    for r in rows:
        visibility = r.truth.get("visibility", {})
        covers = r.truth.get("covers", {})
        writer.writerow(
            [
                r.experiment,
                "" if r.seed is None else r.seed,
                r.inference,
                r.subject,
                r.cohort,
                r.kind,
                r.lesion,
                f"{r.volume_mm3:.3f}",
                *r.centroid_mm,
                f"{r.covered_fraction:.4f}",
                int(r.detected),
                r.visibility_class,
                r.truth.get("generated", ""),
                *(visibility.get(s, "") for s in SEQUENCES),
                *("" if s not in covers else int(covers[s]) for s in SEQUENCES),
            ]
        )
    return buffer.getvalue()


def rows_from_csv(text: str) -> list[LesionRow]:
    """Lesion rows from the CSV :func:`rows_to_csv` writes.

    Args:
        text: The CSV text.

    Returns:
        The rows.
    """
    rows = []
    for d in csv.DictReader(io.StringIO(text)):
        truth: dict = {}
        if d["t2sag"]:
            truth = {
                "faint": d["t2sag"] == "faint",
                "generated": int(d["generated"]),
                "visibility": {s: float(d[f"visibility_{s}"]) for s in SEQUENCES},
                "covers": {s: d[f"covers_{s}"] == "1" for s in SEQUENCES},
            }
        rows.append(
            LesionRow(
                d["subject"],
                d["kind"],
                int(d["lesion"]),
                float(d["volume_mm3"]),
                (float(d["x_mm"]), float(d["y_mm"]), float(d["z_mm"])),
                float(d["covered_fraction"]),
                d["detected"] == "1",
                d["cohort"],
                d["experiment"],
                int(d["seed"]) if d["seed"] else None,
                d["inference"],
                truth,
            )
        )
    return rows


# -- the report's "what the extra sequences add" -------------------------------------------------

GROUPS = (("faint", "faint on T2Sag"), ("clear", "clear on T2Sag"), ("", "all lesions"))


def _groups(rows: Sequence[LesionRow]) -> list[tuple[str, str]]:
    """The visibility groups to show: faint/clear/all with the generator's truth, else all."""
    return list(GROUPS) if any(r.truth for r in rows) else [GROUPS[-1]]


def _comparisons(rows: Sequence[LesionRow], experiments: Sequence[str], base: str):
    """``(experiment, seed, inference, pairs)`` of every inference set that adds sequences to
    ``base`` for a model, in the given experiment order."""
    found = []
    keys = sorted(
        {(r.experiment, r.seed, r.inference) for r in rows if r.inference != base},
        key=lambda k: (
            experiments.index(k[0]) if k[0] in experiments else 99,
            k[1] if k[1] is not None else -1,
            k[2],
        ),
    )
    for experiment, seed, inference in keys:
        reference = [
            r for r in rows if (r.experiment, r.seed, r.inference) == (experiment, seed, base)
        ]
        if not reference:
            continue  # a model that cannot run on T2Sag alone (specific sequences)
        other = [
            r for r in rows if (r.experiment, r.seed, r.inference) == (experiment, seed, inference)
        ]
        pairs = paired_outcomes(reference, other)
        if pairs:
            found.append((experiment, seed, inference, pairs))
    return found


def extra_sequences_tables(
    rows: Sequence[LesionRow],
    *,
    experiments: Sequence[str],
    labels: dict[str, str],
    base: str = "T2Sag",
) -> tuple[Table, Table]:
    """Two tables: paired lesion-wise sensitivity with ``base`` versus each larger set of
    sequences (per model and seed, by T2Sag visibility when the truth is known), and the lesions
    whose detection changes.

    Args:
        rows: Lesion rows of every model, seed and inference set.
        experiments: The experiments in the order to show them.
        labels: Each experiment's display name.
        base: The inference set the others are compared with.

    Returns:
        ``(summary, changed)``.
    """
    from cordfuse.evaluation.tables import Cell, Table

    groups = _groups(rows)
    header = ["model", "seed", "sequences at inference"]
    for _, name in groups:
        header += [
            f"{name}: n",
            f"{name}: sensitivity {base} → more",
            f"{name}: found only with / only without",
            f"{name}: McNemar p",
        ]
    summary = Table(
        "What the extra sequences add: the same ground-truth lesions, detected "
        f"with {base} alone and with more sequences",
        header,
    )
    changed = Table(
        "Lesions whose detection changes when sequences are added",
        [
            "model",
            "seed",
            "sequences at inference",
            "subject",
            "lesion",
            "volume (mm³)",
            f"{base} visibility",
            "best other visibility",
            "sequences covering it",
            "detected with",
        ],
    )
    for experiment, seed, inference, pairs in _comparisons(rows, experiments, base):
        row: list = [
            labels.get(experiment, experiment),
            "" if seed is None else str(seed),
            inference,
        ]
        for key, _ in groups:
            chosen = [p for p in pairs if not key or p[1].visibility_class == key]
            result = compare_inferences(chosen)
            row += [
                Cell(result.n, str(result.n)),
                Cell(
                    result.gain,
                    ""
                    if not result.n
                    else f"{result.sensitivity_base:.3f} → {result.sensitivity_other:.3f}",
                ),
                Cell(None, f"{result.only_other} / {result.only_base}"),
                Cell(result.p_value, f"{result.p_value:.3g}"),
            ]
        summary.rows.append(row)
        for a, b in pairs:
            if a.detected == b.detected:
                continue
            visibility = b.truth.get("visibility", {})
            others = {s: v for s, v in visibility.items() if s != base and b.truth["covers"].get(s)}
            best = max(others, key=lambda s: others[s]) if others else ""
            changed.rows.append(
                [
                    labels.get(experiment, experiment),
                    "" if seed is None else str(seed),
                    inference,
                    b.subject,
                    str(b.lesion),
                    Cell(b.volume_mm3, f"{b.volume_mm3:.0f}"),
                    Cell(visibility.get(base), f"{visibility[base]:.2f}" if visibility else ""),
                    Cell(others.get(best), f"{others[best]:.2f} ({best})" if best else ""),
                    ", ".join(s for s in SEQUENCES if b.truth.get("covers", {}).get(s)),
                    "more sequences" if b.detected else f"{base} only",
                ]
            )
    summary.notes = [
        "Pairs: every ground-truth lesion of the test subjects that have this set of sequences, "
        f"detected (Anima: > {ALPHA:.0%} of it predicted, predictions mostly inside lesions) "
        f"with {base} alone and with the set, by the same model and seed. McNemar: exact "
        "two-sided binomial test on the discordant pairs (found only with / only without)."
    ]
    if len(groups) > 1:
        summary.notes.append(
            f"Faint: T2Sag visibility below {FAINT_VISIBILITY} of full lesion contrast in the "
            "generator's truth (derivatives/synth); such lesions are drawn bright on STIR and "
            "T2*Ax."
        )
    return summary, changed


# -- the product: each multi-sequence model against the best T2Sag-only answer --------------------


@dataclass(frozen=True)
class ProductRow:
    """One answer of the product comparison (:func:`product_comparison`), for one seed.

    Attributes:
        experiment: The model.
        seed: The training seed.
        is_base: Whether this is the best T2Sag-only answer, the one the others are compared with.
        images: The test images this answer is measured on.
        with_more: How many of them were predicted with more than T2Sag.
        detection: By visibility group (``faint``, ``clear`` with the generator's truth; ``""``:
            all lesions), this answer's ground-truth lesions paired with the base answer's, the
            base's outcome first (the base answer is paired with itself).
        lesion_f1: Mean over the images of the per-image lesion-wise F1 (NaN values left out).
        dice: Mean over the images of the Dice (NaN values left out).
        false_positives: Predicted lesions that detect no ground-truth lesion, over the images.
    """

    experiment: str
    seed: int
    is_base: bool
    images: int
    with_more: int
    detection: dict[str, PairedDetection]
    lesion_f1: float
    dice: float
    false_positives: int


def _mean(records: Iterable[Record], metric: str) -> float:
    """Mean of ``metric`` over the records, NaN values left out (NaN when none is defined)."""
    return summarise([r.values.get(metric, math.nan) for r in records]).mean


def _of(records: Iterable[Record], experiment: str, inference: str) -> list[Record]:
    """The records of one model with one inference set."""
    return [r for r in records if (r.experiment, r.inference) == (experiment, inference)]


def _answer(
    rows: Sequence[LesionRow],
    records: Sequence[Record],
    run: tuple[str, int],
    inference_of: dict[str, str],
) -> tuple[list[LesionRow], list[Record]]:
    """The lesion rows and records of one model and seed, each image with the inference set
    ``inference_of`` gives it (images it does not name are left out)."""
    return (
        [
            r
            for r in rows
            if (r.experiment, r.seed) == run and inference_of.get(r.subject) == r.inference
        ],
        [
            r
            for r in records
            if (r.experiment, r.seed) == run and inference_of.get(r.image) == r.inference
        ],
    )


def _product_row(
    run: tuple[str, int],
    answer: tuple[list[LesionRow], list[Record]],
    base_rows: list[LesionRow],
    *,
    is_base: bool,
    with_more: int,
    groups: Sequence[tuple[str, str]],
) -> ProductRow:
    """One :class:`ProductRow` from an answer's rows and records and the base answer's rows."""
    rows, records = answer
    pairs = paired_outcomes(base_rows, rows)
    return ProductRow(
        run[0],
        run[1],
        is_base,
        len({r.image for r in records}),
        with_more,
        {
            key: compare_inferences([p for p in pairs if not key or p[1].visibility_class == key])
            for key, _ in groups
        },
        _mean(records, "lesion_f1"),
        _mean(records, "dice"),
        sum(r.kind == "pred" and not r.detected for r in rows),
    )


def product_comparison(
    rows: Sequence[LesionRow], records: Sequence[Record], *, experiments: Sequence[str]
) -> list[ProductRow]:
    """Each multi-sequence model with every sequence against the best T2Sag-only answer.

    Per seed, the base is the T2Sag-only answer (any model's prediction with T2Sag alone) with the
    highest lesion-wise F1, the mean over its test images of the per-image F1 (NaN values left
    out); a tie goes to the model listed first in ``experiments``. A multi-sequence model is one
    with ``all available`` records: it answers each test subject with every sequence the subject
    has, and a subject with T2Sag alone (which has no such record) with its T2Sag-only
    prediction, as a user would get. It is measured on the test images the base answers too,
    its ground-truth lesions paired with the base's by :attr:`LesionRow.key`.

    Args:
        rows: Lesion rows of every model, seed and inference set.
        records: Per-image records of the same predictions (F1, Dice, and which images each
            model predicted with which sequences).
        experiments: The experiments in the order to show them (and to break ties).

    Returns:
        Per seed (ascending): the base answer, then each multi-sequence model in ``experiments``
        order (others after, by name). Empty without T2Sag-only records.

    Example:
        >>> from cordfuse.evaluation.tables import Record
        >>> def record(experiment, inference, f1):
        ...     return Record(experiment, 0, inference, "s1", "A", {"lesion_f1": f1, "dice": f1})
        >>> records = [record("baseline", "T2Sag", 0.5), record("mi", "T2Sag", 0.6),
        ...            record("mi", "all available", 0.7)]
        >>> [(r.experiment, r.is_base, r.lesion_f1)
        ...  for r in product_comparison([], records, experiments=["baseline", "mi"])]
        [('mi', True, 0.6), ('mi', False, 0.7)]
    """
    from cordfuse.evaluation.tables import ALL_AVAILABLE, T2SAG_ONLY

    def order(experiment: str) -> tuple[int, str]:
        known = experiment in experiments
        return (experiments.index(experiment) if known else len(experiments), experiment)

    groups = _groups(rows)
    out = []
    for seed in sorted({r.seed for r in records}):
        of_seed = [r for r in records if r.seed == seed]
        candidates = sorted({r.experiment for r in of_seed if r.inference == T2SAG_ONLY}, key=order)
        if not candidates:
            continue
        f1 = {e: _mean(_of(of_seed, e, T2SAG_ONLY), "lesion_f1") for e in candidates}
        # max keeps the first of equal keys: the earlier experiment; an undefined F1 never wins
        best = max(candidates, key=lambda e: -math.inf if math.isnan(f1[e]) else f1[e])
        images = {r.image for r in _of(of_seed, best, T2SAG_ONLY)}
        base = _answer(rows, records, (best, seed), dict.fromkeys(images, T2SAG_ONLY))
        out.append(
            _product_row((best, seed), base, base[0], is_base=True, with_more=0, groups=groups)
        )
        multi = sorted({r.experiment for r in of_seed if r.inference == ALL_AVAILABLE}, key=order)
        for experiment in multi:
            alone = {r.image for r in _of(of_seed, experiment, T2SAG_ONLY)} & images
            more = {r.image for r in _of(of_seed, experiment, ALL_AVAILABLE)} & images
            inference_of = {
                **dict.fromkeys(alone, T2SAG_ONLY),
                **dict.fromkeys(more, ALL_AVAILABLE),  # every sequence wherever there are more
            }
            answer = _answer(rows, records, (experiment, seed), inference_of)
            out.append(
                _product_row(
                    (experiment, seed),
                    answer,
                    base[0],
                    is_base=False,
                    with_more=len(more),
                    groups=groups,
                )
            )
    return out


def _number_cell(value: float, digits: int = 3) -> Cell:
    """A numeric cell, ``n/a`` where the value is undefined."""
    from cordfuse.evaluation.tables import Cell

    return Cell(None, "n/a") if math.isnan(value) else Cell(value, f"{value:.{digits}f}")


def product_table(
    rows: Sequence[LesionRow],
    records: Sequence[Record],
    *,
    experiments: Sequence[str],
    labels: dict[str, str],
) -> Table:
    """The product comparison as a table: each multi-sequence model with every sequence against
    the best T2Sag-only answer of the study (:func:`product_comparison`), per seed.

    Args:
        rows: Lesion rows of every model, seed and inference set.
        records: Per-image records of the same predictions.
        experiments: The experiments in the order to show them (and to break ties).
        labels: Each experiment's display name.

    Returns:
        The table (``product.md``): per seed the best T2Sag-only answer with its own values, then
        each model with paired sensitivities (base → model, by T2Sag visibility when the
        generator's truth is known), the discordant lesions and their exact McNemar test, and
        lesion-wise F1, false positive lesions and Dice; notes say what is compared.
    """
    from cordfuse.evaluation.tables import ALL_AVAILABLE, T2SAG_ONLY, Cell, Table

    groups = _groups(rows)
    # the discordant lesions of every lesion, and of the faint ones the extra sequences are for
    tested = [g for g in groups if g[0] != "clear"]
    header = ["model", "seed", "sequences at inference"]
    for _, name in groups:
        header += [f"{name}: n", f"{name}: sensitivity best {T2SAG_ONLY}-only → model"]
    for _, name in tested:
        header += [
            f"{name}: found only by the model / only by the base",
            f"{name}: McNemar p",
        ]
    header += ["lesion-wise F1", "false positive lesions", "Dice"]
    table = Table(
        "The product: each multi-sequence model with every sequence, against the best "
        f"{T2SAG_ONLY}-only answer",
        header,
    )
    for answer in product_comparison(rows, records, experiments=experiments):
        label = labels.get(answer.experiment, answer.experiment)
        row: list[Cell | str] = (
            [f"best {T2SAG_ONLY}-only answer: {label} ({T2SAG_ONLY})", str(answer.seed), T2SAG_ONLY]
            if answer.is_base
            else [
                label,
                str(answer.seed),
                f"{ALL_AVAILABLE} (more than {T2SAG_ONLY} for {answer.with_more} of "
                f"{answer.images} subjects)",
            ]
        )
        for key, _ in groups:
            paired = answer.detection[key]
            text = ""
            if paired.n:
                text = f"{paired.sensitivity_other:.3f}"
                if not answer.is_base:
                    text = f"{paired.sensitivity_base:.3f} → {text}"
            row += [
                Cell(paired.n, str(paired.n)),
                Cell(paired.sensitivity_other if paired.n else None, text),
            ]
        for key, _ in tested:
            paired = answer.detection[key]
            row += (
                ["", Cell()]
                if answer.is_base
                else [
                    f"{paired.only_other} / {paired.only_base}",
                    Cell(paired.p_value, f"{paired.p_value:.3g}"),
                ]
            )
        row += [
            _number_cell(answer.lesion_f1),
            Cell(answer.false_positives, str(answer.false_positives)),
            _number_cell(answer.dice),
        ]
        table.rows.append(row)
    table.notes = [
        f"Best {T2SAG_ONLY}-only answer: per seed, of every model's predictions with "
        f"{T2SAG_ONLY} alone (the baseline's and each multi-sequence model's), the one with the "
        "highest lesion-wise F1 (mean over the test images, undefined values left out; a tie goes "
        "to the model listed first): what a user gets without the other sequences. It is chosen "
        "on these test images, which favours it; the McNemar p-values do not correct for that.",
        f"Each multi-sequence model predicts each test subject with every sequence it has; a "
        f"subject with {T2SAG_ONLY} alone gets the model's {T2SAG_ONLY}-only prediction, as a "
        "user would. Compared on the test subjects the base answers too, the same ground-truth "
        "lesions paired.",
        f"Sensitivity: share of the ground-truth lesions detected (Anima: > {ALPHA:.0%} of it "
        "predicted, predictions mostly inside lesions). Found only by the model / only by the "
        "base: the discordant pairs; McNemar: exact two-sided binomial test on them. Lesion-wise "
        "F1 and Dice: mean over the test images (undefined values left out); false positive "
        "lesions: predicted lesions that detect no ground-truth lesion, summed over the images.",
    ]
    if len(groups) > 1:
        table.notes.append(
            f"Faint: T2Sag visibility below {FAINT_VISIBILITY} of full lesion contrast in the "
            "generator's truth (derivatives/synth)."
        )
    return table
