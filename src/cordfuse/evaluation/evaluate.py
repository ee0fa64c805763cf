"""``cordfuse evaluate``: per-image metrics of predictions against ground truth, then mean and
median per cohort.

Pairs are found three ways:

* two files;
* two folders: each prediction ``<subject>_lesion.nii.gz`` (as ``predict`` writes it, or any
  ``<subject>*.nii.gz``) is matched with the ground-truth file whose name starts with
  ``<subject>_``;
* a prediction folder and a BIDS dataset: the subject's lesion label on the fused T2Sag
  (``<T2Sag stem without chunk>_lesion-manual``) or its only T2Sag slab label; with several slab
  labels, each slab is compared with ``<subject>_slab-N_lesion.nii.gz`` (``predict --per-slab``).

Cohorts come from the dataset's ``participants.tsv`` (or ``--participants``).

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
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from cordfuse.errors import CordfuseError
from cordfuse.evaluation.lesions import LesionRow, SynthTruth, lesion_rows
from cordfuse.evaluation.metrics import ImageMetrics, evaluate_masks
from cordfuse.evaluation.stats import summarise
from cordfuse.io import read_volume, same_grid, voxel_sizes

METRICS = ("dice", "lesion_sensitivity", "lesion_precision", "lesion_f1")


@dataclass
class Row:
    image: str
    cohort: str | None
    metrics: ImageMetrics
    lesions: list[LesionRow] = field(default_factory=list)


def evaluate_pair(prediction_path: Path, truth_path: Path, *, name: str = "",
                  synth: SynthTruth | None = None, **options) -> tuple[ImageMetrics,
                                                                        list[LesionRow]]:
    """Image metrics and per-lesion rows of one prediction against its ground truth."""
    prediction, affine = read_volume(prediction_path)
    truth, truth_affine = read_volume(truth_path)
    if not same_grid(prediction.shape, affine, truth.shape, truth_affine, atol_mm=1e-2):
        raise CordfuseError(f"{prediction_path}: not on the grid of {truth_path} "
                            f"({prediction.shape} vs {truth.shape})")
    voxel = float(np.prod(voxel_sizes(affine)))
    metrics = evaluate_masks(prediction, truth, voxel_volume_mm3=voxel, **options)
    motion = synth.motion_of(truth_path.name) if synth is not None else None
    rows = lesion_rows(prediction, truth, truth_affine, subject=name or truth_path.name,
                       voxel_volume_mm3=voxel, synth=synth, motion=motion, **options)
    return metrics, rows


def _subject_of(name: str) -> str:
    return name.split("_")[0]


def find_pairs(pred: Path, gt: Path) -> list[tuple[str, Path, Path]]:
    """``(image name, prediction, ground truth)`` triples (see the module docstring)."""
    from cordfuse.dataset import discover

    if pred.is_file() and gt.is_file():
        return [(_subject_of(pred.name), pred, gt)]
    if not (pred.is_dir() and gt.is_dir()):
        raise CordfuseError("--pred and --gt must be two files or two folders")
    predictions = sorted(pred.glob("*.nii*"))
    pairs = []
    if any(gt.glob("sub-*/")) and (gt / "derivatives").is_dir():
        for subject in discover(gt).subjects:
            t2 = subject.scans.get("T2Sag", [])
            if subject.fused_lesion_label is not None:
                labels = [(subject.name, subject.fused_lesion_label, "_lesion.nii.gz")]
            elif len(t2) == 1 and t2[0].lesion_label is not None:
                labels = [(subject.name, t2[0].lesion_label, "_lesion.nii.gz")]
            else:
                labels = [(f"{subject.name}_slab-{k + 1}", s.lesion_label,
                           f"_slab-{k + 1}_lesion.nii.gz") for k, s in enumerate(t2)
                          if s.lesion_label is not None]
            for name, label, suffix in labels:
                match = pred / f"{subject.name}{suffix}"
                if match.exists():
                    pairs.append((name, match, label))
        return pairs
    truths = sorted(gt.glob("*.nii*"))
    for path in predictions:
        if "_prob" in path.name or "_slab-" in path.name:
            continue
        subject = _subject_of(path.name)
        candidates = [t for t in truths if t.name.startswith(subject + "_") or
                      t.name.split(".")[0] == subject]
        if len(candidates) > 1:
            candidates = [t for t in candidates if "lesion" in t.name] or candidates
        if len(candidates) == 1:
            pairs.append((subject, path, candidates[0]))
        elif len(candidates) > 1:
            raise CordfuseError(f"{path}: several ground-truth files match {subject} in {gt}")
    return pairs


def read_participants(path: Path | None) -> dict[str, str]:
    from cordfuse.dataset import read_cohorts

    if path is None:
        return {}
    return read_cohorts(path.parent) if path.name == "participants.tsv" else read_cohorts(path)


def evaluate(pred: Path, gt: Path, *, participants: Path | None = None, **options):
    """Per-image rows and problems (one line each) for all pairs found."""
    pairs = find_pairs(pred, gt)
    if not pairs:
        raise CordfuseError(f"no prediction in {pred} matches a ground truth in {gt}")
    cohorts = read_participants(participants or (gt / "participants.tsv" if gt.is_dir() else None))
    rows, problems = [], []
    truths: dict[str, SynthTruth | None] = {}
    for name, prediction, truth in pairs:
        subject = _subject_of(name)
        if gt.is_dir() and subject not in truths:  # the generator's truth, when there is one
            truths[subject] = SynthTruth.load(gt, subject)
        try:
            metrics, lesions = evaluate_pair(prediction, truth, name=name,
                                             synth=truths.get(subject), **options)
        except CordfuseError as exc:
            problems.append(str(exc))
            continue
        cohort = cohorts.get(subject)
        rows.append(Row(name, cohort, metrics,
                        [replace(r, cohort=cohort or "") for r in lesions]))
    return rows, problems


def summary_table(rows: list[Row]) -> dict[str, dict[str, dict[str, float]]]:
    """``{cohort or "all": {metric: {mean, median, n, n_undefined}}}``."""
    groups: dict[str, list[Row]] = {"all": rows}
    for row in rows:
        if row.cohort:
            groups.setdefault(row.cohort, []).append(row)
    out = {}
    for name in sorted(groups, key=lambda g: (g == "all", g)):
        out[name] = {}
        for metric in METRICS:
            s = summarise([getattr(r.metrics, metric) for r in groups[name]])
            out[name][metric] = {"mean": s.mean, "median": s.median, "n": s.n,
                                 "n_undefined": s.n_undefined}
    return out


def rows_to_csv(rows: list[Row]) -> str:
    buffer = io.StringIO()
    fields = ["image", "cohort", *rows[0].metrics.to_dict().keys()] if rows else ["image"]
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    for row in rows:
        writer.writerow({"image": row.image, "cohort": row.cohort or "", **row.metrics.to_dict()})
    return buffer.getvalue()


def _fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.3f}"


def format_text(rows: list[Row], summary: dict) -> str:
    header = f"{'image':<22}{'cohort':<8}{'dice':>7}{'sens':>7}{'prec':>7}{'F1':>7}{'n_gt':>6}" \
             f"{'n_pred':>8}"
    lines = [header]
    for r in rows:
        m = r.metrics
        lines.append(f"{r.image:<22}{(r.cohort or '-'):<8}{_fmt(m.dice):>7}"
                     f"{_fmt(m.lesion_sensitivity):>7}{_fmt(m.lesion_precision):>7}"
                     f"{_fmt(m.lesion_f1):>7}{m.n_gt:>6}{m.n_pred:>8}")
    lines += ["", f"{'group':<10}{'statistic':<8}" + "".join(f"{m:>20}" for m in METRICS)]
    for group, metrics in summary.items():
        for stat in ("mean", "median"):
            lines.append(f"{group:<10}{stat:<8}" + "".join(
                f"{_fmt(metrics[m][stat]):>20}" for m in METRICS))
    undefined = summary["all"]["lesion_sensitivity"]["n_undefined"]
    if undefined:
        lines.append(f"(sensitivity undefined for {undefined} image(s) without ground-truth "
                     "lesion: left out of its mean and median)")
    return "\n".join(lines)


def to_json(rows: list[Row], summary: dict) -> str:
    def clean(value):
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return value

    document = {
        "images": [{"image": r.image, "cohort": r.cohort, **clean(r.metrics.to_dict())}
                   for r in rows],
        "summary": clean(summary),
    }
    return json.dumps(document, indent=2)
