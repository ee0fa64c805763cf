"""``cordfuse evaluate``: per-image metrics of predictions against ground truth, then mean and
median per cohort.

A prediction folder is a ``predict`` output in either layout (:mod:`cordfuse.derivatives`): the
BIDS derivative dataset (``sub-XX/[ses-YY/]anat/sub-XX_[ses-YY_]acq-sag_desc-lesion_mask.nii.gz``)
or the flat folder of ``<subject>_lesion.nii.gz`` files (explicit files, earlier versions, a
study's ``predictions/...`` folders). Pairs are found four ways:

* two files;
* two folders: each prediction (a subject's mask in the derivative dataset, or a flat
  ``<subject>*.nii.gz``) is matched with the ground-truth file whose name starts with
  ``<subject>_``;
* a prediction folder and a prepared folder (``cordfuse prepare`` output): the fused native ground
  truth each prepared subject stores, the grid ``predict``, ``study`` and ``demo`` write and score
  on (so ``evaluate`` reproduces a study's ``per_image.csv``); no raw scan is read;
* a prediction folder and a BIDS dataset: the subject's lesion labels fused on the same fused
  T2Sag grid (slab labels registered and fused like their slabs, or the label given on the fused
  image). With ``per_slab=True`` (``--per-slab``), each slab label is instead compared with
  the mask ``predict --per-slab`` wrote on that slab (``<slab>_desc-lesion_mask.nii.gz``, or
  ``<subject>_slab-N_lesion.nii.gz``).

Cohorts come from the dataset's ``participants.tsv`` (or ``--participants``), or from the prepared
subjects.

Besides the per-image rows, every pair gives per-lesion rows (:mod:`cordfuse.evaluation.lesions`):
each ground-truth lesion found or missed, each predicted lesion true or false positive; with a
synthetic dataset's truth, each ground-truth lesion's visibility on every sequence and which
sequences' fields of view cover it.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from cordfuse.derivatives import derivative_masks, find_prediction, find_slab_prediction
from cordfuse.errors import CordfuseError
from cordfuse.evaluation.lesions import LesionRow, SynthTruth, lesion_rows
from cordfuse.evaluation.lesions import rows_to_csv as lesion_rows_to_csv
from cordfuse.evaluation.metrics import ImageMetrics, evaluate_masks
from cordfuse.evaluation.stats import summarise
from cordfuse.io import atomic_write_text, read_volume, same_grid, voxel_sizes

METRICS = ("dice", "lesion_sensitivity", "lesion_precision", "lesion_f1")


@dataclass
class Row:
    """One scored image.

    Attributes:
        image: The image's name (its subject, or ``<subject>_slab-N``).
        cohort: The subject's cohort, or None when unknown.
        metrics: Dice and lesion-wise metrics.
        lesions: Its ground-truth and predicted lesions.
    """

    image: str
    cohort: str | None
    metrics: ImageMetrics
    lesions: list[LesionRow] = field(default_factory=list)


@dataclass
class GroundTruth:
    """One image's ground truth, read when it is scored.

    Attributes:
        source: What it is, for messages (a file, or the subject it is fused from).
        read: Returns the mask and its affine.
        synth: The generator's truth of a synthetic subject, or None.
        motion: World -> anatomy of the truth's grid (a moved slab's), None for the fused grid.
        cohort: The subject's cohort when the source knows it.
    """

    source: str
    read: Callable[[], tuple[np.ndarray, np.ndarray]]
    synth: SynthTruth | None = None
    motion: np.ndarray | None = None
    cohort: str | None = None


def truth_file(path: Path, synth: SynthTruth | None = None) -> GroundTruth:
    """The ground truth in a NIfTI file.

    Args:
        path: The label file.
        synth: The subject's generator truth (gives the file's grid motion), or None.

    Returns:
        The ground truth, read when scored.
    """
    motion = synth.motion_of(path.name) if synth is not None else None
    return GroundTruth(str(path), lambda: read_volume(path), synth, motion)


def evaluate_pair(
    prediction_path: Path, truth: GroundTruth | Path, *, name: str = "", **options
) -> tuple[ImageMetrics, list[LesionRow]]:
    """Image metrics and per-lesion rows of one prediction against its ground truth.

    Args:
        prediction_path: The predicted lesion mask (NIfTI).
        truth: Its ground truth, or a label file.
        name: The image's name in the lesion rows (default: the truth's file name).
        **options: The Anima rules (``alpha``, ``beta``, ``gamma``, ``min_volume_mm3``,
            ``connectivity``).

    Returns:
        ``(metrics, lesion rows)``.

    Raises:
        CordfuseError: the prediction is not on the ground truth's grid, or a file is unreadable.
    """
    if isinstance(truth, Path):
        truth = truth_file(truth)
    prediction, affine = read_volume(prediction_path)
    mask, truth_affine = truth.read()
    if not same_grid(prediction.shape, affine, mask.shape, truth_affine, atol_mm=1e-2):
        raise CordfuseError(
            f"{prediction_path}: not on the grid of {truth.source} "
            f"({prediction.shape} vs {mask.shape})"
        )
    voxel = float(np.prod(voxel_sizes(affine)))
    metrics = evaluate_masks(prediction, mask, voxel_volume_mm3=voxel, **options)
    rows = lesion_rows(
        prediction,
        mask,
        truth_affine,
        subject=name or Path(truth.source).name,
        voxel_volume_mm3=voxel,
        synth=truth.synth,
        motion=truth.motion,
        **options,
    )
    return metrics, rows


def _subject_of(name: str) -> str:
    return name.split("_")[0]


def find_pairs(
    pred: Path, gt: Path, *, per_slab: bool = False
) -> list[tuple[str, Path, GroundTruth]]:
    """``(image name, prediction, ground truth)`` triples (see the module docstring).

    Args:
        pred: A prediction file or folder.
        gt: A ground-truth file or folder, a prepared folder or a BIDS dataset.
        per_slab: With a BIDS dataset, pair each T2Sag slab's label with its slab prediction.

    Returns:
        The pairs found (possibly none).

    Raises:
        CordfuseError: a file and a folder, or a prediction several ground truths match.
    """
    if pred.is_file() and gt.is_file():
        return [(_subject_of(pred.name), pred, truth_file(gt))]
    if not (pred.is_dir() and gt.is_dir()):
        raise CordfuseError("--pred and --gt must be two files or two folders")
    if (gt / "dataset.json").is_file():
        return _prepared_pairs(pred, gt)
    if any(gt.glob("sub-*/")) and (gt / "derivatives").is_dir():
        return _bids_pairs(pred, gt, per_slab=per_slab)
    truths = sorted(gt.glob("*.nii*"))
    masks = [
        (_subject_of(path.name), path)
        for path in sorted(pred.glob("*.nii*"))
        if "_prob" not in path.name and "_slab-" not in path.name
    ]
    pairs = []
    for subject, path in [*derivative_masks(pred).items(), *masks]:
        candidates = [
            t for t in truths if t.name.startswith(subject + "_") or t.name.split(".")[0] == subject
        ]
        if len(candidates) > 1:
            candidates = [t for t in candidates if "lesion" in t.name] or candidates
        if len(candidates) == 1:
            pairs.append((subject, path, truth_file(candidates[0])))
        elif len(candidates) > 1:
            raise CordfuseError(f"{path}: several ground-truth files match {subject} in {gt}")
    return pairs


def _prepared_pairs(pred: Path, prepared: Path) -> list[tuple[str, Path, GroundTruth]]:
    """Predictions against the fused native ground truth stored in prepared subjects."""
    from cordfuse.preprocess.batch import load_prepared_dataset
    from cordfuse.preprocess.pipeline import load_native, prepared_meta

    def reader(path: Path):
        def read():
            native = load_native(path)
            if native.lesion is None:
                raise CordfuseError(f"{path}: prepared without a lesion label")
            return native.lesion, native.affine

        return read

    document, paths = load_prepared_dataset(prepared)
    pairs = []
    for entry, path in zip(document["subjects"], paths, strict=True):
        match = find_prediction(pred, entry["id"])
        if not entry.get("has_label") or match is None:
            continue
        synth = SynthTruth.from_document(prepared_meta(path).get("synth_truth"))
        pairs.append(
            (
                entry["id"],
                match,
                GroundTruth(str(path), reader(path), synth, cohort=entry.get("cohort")),
            )
        )
    return pairs


def _bids_pairs(pred: Path, root: Path, *, per_slab: bool) -> list[tuple[str, Path, GroundTruth]]:
    """Predictions against a BIDS dataset's labels: fused like the T2Sag slabs, or per slab."""
    from cordfuse.dataset import discover, synth_truth_document
    from cordfuse.preprocess.pipeline import PRESETS, native_lesion_label, slab_numbers

    pairs = []
    for subject in discover(root).subjects:
        if not subject.has_lesion_labels:
            continue
        synth = SynthTruth.from_document(synth_truth_document(subject))
        slabs = subject.scans.get("T2Sag", [])
        labelled = [s for s in slabs if s.lesion_label is not None]
        if per_slab and subject.fused_lesion_label is None and len(labelled) > 1:
            # the slabs numbered as predict names their masks (their chunks, else from the top)
            numbers = slab_numbers({"slabs": [{"path": str(s.path)} for s in slabs]})
            for slab, number in zip(slabs, numbers, strict=True):
                match = find_slab_prediction(pred, subject.name, slab.path, number)
                if slab.lesion_label is not None and match is not None:
                    pairs.append(
                        (
                            f"{subject.name}_slab-{number}",
                            match,
                            truth_file(slab.lesion_label, synth),
                        )
                    )
            continue
        match = find_prediction(pred, subject.name)
        if match is not None:

            def read(subject=subject):  # the fusion registers the slabs, as prepare does
                return native_lesion_label(subject, PRESETS["paper"])

            pairs.append(
                (
                    subject.name,
                    match,
                    GroundTruth(f"{subject.name} (fused T2Sag labels)", read, synth),
                )
            )
    return pairs


def read_participants(path: Path | None) -> dict[str, str]:
    """Each subject's cohort from a ``participants.tsv`` or the dataset folder holding it.

    Args:
        path: The file or its folder; None for no cohorts.

    Returns:
        ``{subject: cohort}``.
    """
    from cordfuse.dataset import read_cohorts

    if path is None:
        return {}
    return read_cohorts(path.parent) if path.name == "participants.tsv" else read_cohorts(path)


def evaluate(
    pred: Path, gt: Path, *, participants: Path | None = None, per_slab: bool = False, **options
) -> tuple[list[Row], list[str]]:
    """Per-image rows and problems (one line each) for all pairs found.

    Args:
        pred: A prediction file or folder.
        gt: A ground-truth file or folder, a prepared folder or a BIDS dataset.
        participants: A ``participants.tsv`` with a cohort column (default: the dataset's).
        per_slab: With a BIDS dataset of several T2Sag slabs, score slab by slab.
        **options: The Anima rules (``alpha``, ``beta``, ``gamma``, ``min_volume_mm3``,
            ``connectivity``).

    Returns:
        ``(rows, problems)``: one row per image scored, one line per pair that could not be.

    Raises:
        CordfuseError: nothing to pair.
    """
    pairs = find_pairs(pred, gt, per_slab=per_slab)
    if not pairs:
        raise CordfuseError(f"no prediction in {pred} matches a ground truth in {gt}")
    cohorts = read_participants(participants or (gt / "participants.tsv" if gt.is_dir() else None))
    rows, problems = [], []
    for name, prediction, truth in pairs:
        try:
            metrics, lesions = evaluate_pair(prediction, truth, name=name, **options)
        except CordfuseError as exc:
            problems.append(str(exc))
            continue
        cohort = cohorts.get(_subject_of(name)) or truth.cohort
        rows.append(Row(name, cohort, metrics, [replace(r, cohort=cohort or "") for r in lesions]))
    return rows, problems


def summary_table(rows: list[Row]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and median of each metric, over all images and per cohort.

    Args:
        rows: Scored images.

    Returns:
        ``{cohort or "all": {metric: {mean, median, n, n_undefined}}}``, cohorts sorted,
        ``all`` last.
    """
    groups: dict[str, list[Row]] = {"all": rows}
    for row in rows:
        if row.cohort:
            groups.setdefault(row.cohort, []).append(row)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name in sorted(groups, key=lambda g: (g == "all", g)):
        out[name] = {}
        for metric in METRICS:
            s = summarise([getattr(r.metrics, metric) for r in groups[name]])
            out[name][metric] = {
                "mean": s.mean,
                "median": s.median,
                "n": s.n,
                "n_undefined": s.n_undefined,
            }
    return out


def rows_to_csv(rows: list[Row]) -> str:
    """The per-image table: image, cohort and every metric.

    Args:
        rows: Scored images.

    Returns:
        The CSV text, with a header.
    """
    buffer = io.StringIO()
    fields = ["image", "cohort", *rows[0].metrics.to_dict().keys()] if rows else ["image"]
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    for row in rows:
        writer.writerow({"image": row.image, "cohort": row.cohort or "", **row.metrics.to_dict()})
    return buffer.getvalue()


def _fmt(value: float) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.3f}"
    )


def format_text(rows: list[Row], summary: dict) -> str:
    """The per-image rows and the summary as an aligned text table (the terminal's output).

    Args:
        rows: Scored images.
        summary: Their :func:`summary_table`.

    Returns:
        The text, lines joined by newlines.
    """
    header = (
        f"{'image':<22}{'cohort':<8}{'dice':>7}{'sens':>7}{'prec':>7}{'F1':>7}{'n_gt':>6}"
        f"{'n_pred':>8}"
    )
    lines = [header]
    for r in rows:
        m = r.metrics
        lines.append(
            f"{r.image:<22}{(r.cohort or '-'):<8}{_fmt(m.dice):>7}"
            f"{_fmt(m.lesion_sensitivity):>7}{_fmt(m.lesion_precision):>7}"
            f"{_fmt(m.lesion_f1):>7}{m.n_gt:>6}{m.n_pred:>8}"
        )
    lines += ["", f"{'group':<10}{'statistic':<8}" + "".join(f"{m:>20}" for m in METRICS)]
    for group, metrics in summary.items():
        for stat in ("mean", "median"):
            lines.append(
                f"{group:<10}{stat:<8}" + "".join(f"{_fmt(metrics[m][stat]):>20}" for m in METRICS)
            )
    undefined = summary["all"]["lesion_sensitivity"]["n_undefined"]
    if undefined:
        lines.append(
            f"(sensitivity undefined for {undefined} image(s) without ground-truth "
            "lesion: left out of its mean and median)"
        )
    return "\n".join(lines)


def to_json(rows: list[Row], summary: dict) -> str:
    """The per-image rows and the summary as JSON (NaN written as null).

    Args:
        rows: Scored images.
        summary: Their :func:`summary_table`.

    Returns:
        The JSON text.
    """

    def clean(value):
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return value

    document = {
        "images": [
            {"image": r.image, "cohort": r.cohort, **clean(r.metrics.to_dict())} for r in rows
        ],
        "summary": clean(summary),
    }
    return json.dumps(document, indent=2)


def lesions_beside(output: str | Path) -> Path:
    """Where the per-lesion table goes beside a per-image one: ``metrics.csv`` ->
    ``metrics_lesions.csv``.

    Args:
        output: The per-image CSV.

    Returns:
        The per-lesion CSV's path.
    """
    path = Path(output)
    return path.with_name(f"{path.stem}_lesions{path.suffix or '.csv'}")


@dataclass
class Evaluation:
    """What :func:`evaluate_to_files` scored and wrote.

    Attributes:
        rows: One per image scored.
        problems: One line per pair that could not be scored.
        summary: Mean and median per cohort (:func:`summary_table`).
        single: One prediction file was scored (not a folder).
        table: The per-image CSV written, as given, or None.
        lesion_table: The per-lesion CSV written, or None.
    """

    rows: list[Row]
    problems: list[str]
    summary: dict
    single: bool
    table: str | Path | None = None
    lesion_table: str | Path | None = None

    def to_json(self) -> str:
        """The JSON document: one prediction file's own metrics, else every image's and the
        summary (:func:`to_json`)."""
        document = to_json(self.rows, self.summary)
        if not self.single:
            return document
        return json.dumps(json.loads(document)["images"][0], indent=2)


def evaluate_to_files(
    pred: str | Path,
    gt: str | Path,
    *,
    output: str | Path | None = None,
    lesions: str | Path | None = None,
    participants: str | Path | None = None,
    per_slab: bool = False,
    on_problem: Callable[[str], None] | None = None,
    **options,
) -> Evaluation:
    """``cordfuse evaluate``: score every pair found (:func:`evaluate`), then write the
    per-image and per-lesion tables.

    Args:
        pred: A prediction file or folder.
        gt: A ground-truth file or folder, a prepared folder or a BIDS dataset.
        output: The per-image CSV to write; unless ``lesions`` says otherwise, the per-lesion
            table goes beside it (:func:`lesions_beside`).
        lesions: The per-lesion CSV to write: every ground-truth lesion (detected or missed) and
            every predicted lesion (true or false positive).
        participants: A ``participants.tsv`` with a cohort column (default: the dataset's).
        per_slab: With a BIDS dataset of several T2Sag slabs, score slab by slab.
        on_problem: Called with each pair that could not be scored (one line), before anything
            is raised.
        **options: The Anima rules (``alpha``, ``beta``, ``gamma``, ``min_volume_mm3``,
            ``connectivity``); those left out keep the metrics' defaults.

    Returns:
        The rows, problems and summary, and the tables written.

    Raises:
        CordfuseError: ``pred`` or ``gt`` does not exist, nothing pairs, or no pair could be
            scored.
    """
    pred, gt = Path(pred), Path(gt)
    for path in (pred, gt):
        if not path.exists():
            raise CordfuseError(f"{path}: not found")
    rows, problems = evaluate(
        pred,
        gt,
        participants=Path(participants) if participants else None,
        per_slab=per_slab,
        **options,
    )
    for problem in problems:
        if on_problem:
            on_problem(problem)
    if not rows:
        raise CordfuseError("no pair could be evaluated")
    evaluation = Evaluation(
        rows,
        problems,
        summary_table(rows),
        single=pred.is_file(),
        table=output or None,
        lesion_table=lesions or (lesions_beside(output) if output else None),
    )
    if evaluation.table:
        atomic_write_text(evaluation.table, rows_to_csv(rows))
    if evaluation.lesion_table:
        atomic_write_text(
            evaluation.lesion_table,
            lesion_rows_to_csv([lesion for row in rows for lesion in row.lesions]),
        )
    return evaluation
