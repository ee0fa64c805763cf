"""Running a study: prepare, train all, evaluate all, lesion by lesion, tables, report.

:func:`run_study` is ``cordfuse study CONFIG``; :func:`run_stages` is the run itself, also what
``cordfuse demo`` runs with its built-in configuration. It is resumable: a finished training
(``summary.json``) or evaluation (``metrics/<experiment>_seed-<n>.csv``, ``lesions/...``) is
never redone, an interrupted training resumes from its last epoch, and tables are rebuilt from
the metrics on every run.

Layout of the study folder::

    study.yaml (the config as given; cordfuse study only) + config.json (as resolved, a study
    config itself)
    data/ (synthetic cohort, when the config asks for one), check.txt, prepared/, fold.json
    runs/<experiment>/seed-<n>/        training (checkpoints, log, curves)
    features/seed-<n>/                 fitted feature noise (feature_noise: fit)
    predictions/<experiment>/seed-<n>/<sequences>/<subject>_lesion.nii.gz (native T2Sag grid)
    metrics/<experiment>_seed-<n>.csv  per-image metrics
    lesions/<experiment>_seed-<n>.csv  per-lesion outcomes (cordfuse.evaluation.lesions)
    per_image.csv, table1.{md,csv,tex}, table2.{md,csv,tex} (cohorts pooled, as the paper),
    table2_cohorts.{md,csv,tex}, boxplot_<cohort>.png
    per_lesion.csv, extra_sequences.{md,csv}, lesions_changed.{md,csv}: what the extra sequences
    add, lesion by lesion (paired with T2Sag alone, exact McNemar test)
    product.{md,csv}: each multi-sequence model with every sequence against the best T2Sag-only
    answer (the same pairing); extra_sequences.md shows it first
    status.json, cordfuse_run.json, report.html
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from cordfuse.errors import CordfuseError
from cordfuse.evaluation.lesions import LesionRow
from cordfuse.evaluation.tables import (
    T2SAG_ONLY,
    Record,
    boxplot_png,
    records_from_csv,
    records_to_csv,
    table1,
    table2,
    table2_per_cohort,
)
from cordfuse.io import atomic_write_bytes, atomic_write_text
from cordfuse.ownership import claim
from cordfuse.report import MANIFEST, REPORT
from cordfuse.study.config import EXPERIMENTS, LABELS, Experiment, StudyConfig
from cordfuse.study.grid import ALL_AVAILABLE, inference_order, inference_sets, split_by_cohort

Log = Callable[[str], None]

#: The top-level entries a study writes into its folder, besides ``boxplot_<cohort>.png`` (one
#: per test cohort) and the config file :func:`run_study` copies: what a caller that owns the
#: folder (:mod:`cordfuse.ownership`) records before the run.
OUTPUTS = (
    "config.json",
    "data",
    "check.txt",
    "prepared",
    "fold.json",
    "runs",
    "features",
    "predictions",
    "metrics",
    "lesions",
    "per_image.csv",
    "per_lesion.csv",
    *(
        f"{name}.{suffix}"
        for name in ("table1", "table2", "table2_cohorts")
        for suffix in ("md", "csv", "tex")
    ),
    *(
        f"{name}.{suffix}"
        for name in ("product", "extra_sequences", "lesions_changed")
        for suffix in ("md", "csv")
    ),
    "status.json",
    MANIFEST,
    REPORT,
)


@dataclass
class RunStatus:
    """What happened to one training of the grid.

    Args:
        experiment: The experiment's name.
        seed: The training seed.
        status: ``trained``, ``done`` (trained by an earlier run) or ``skipped``.
        message: Why it was skipped.
        seconds: Training time.
    """

    experiment: str
    seed: int
    status: str
    message: str = ""
    seconds: float = 0.0


@dataclass
class StudyData:
    """The study's data once prepared.

    Args:
        root: The dataset (given, or the synthetic one in ``data/``); it may be gone on a resume.
        fold: ``train``, ``val`` and ``test`` subjects.
        check_ok: Whether ``check`` found no problem in it (None when it was gone, not checked).
        failed: Subjects whose pre-processing failed.
    """

    root: Path
    fold: dict
    check_ok: bool | None
    failed: list[str] = field(default_factory=list)


@dataclass
class StudyRun:
    """What :func:`run_stages` did.

    Args:
        data: The prepared data and the fold.
        runs: One status per training (experiment, seed).
        records: Per-image metrics of every evaluated (experiment, seed, sequences, subject).
        tables: The files written, by name (``per_image``, ``table1.md``, ``per_lesion``, ...).
        minutes: Time of the run.
    """

    data: StudyData
    runs: list[RunStatus]
    records: list[Record]
    tables: dict[str, Path]
    minutes: float


def run_study(
    config_path: str | Path,
    out: str | Path | None = None,
    *,
    log: Log = print,
    tables_only: bool = False,
) -> dict:
    """Run (or resume) the study of ``config_path`` into ``out`` (``cordfuse study``).

    Args:
        config_path: The study's YAML or JSON config (copied into ``out``).
        out: The study folder (default: the config's path without its suffix); a new or empty
            folder, or an earlier study's to resume.
        log: Where progress lines go.
        tables_only: Only rebuild the tables from the metrics already computed.

    Returns:
        ``records`` (per-image metrics), ``tables`` (files written by name), ``runs`` (one
        :class:`RunStatus` per training; empty with ``tables_only``), and for a run ``minutes``
        and ``fold``.

    Raises:
        CordfuseError: A bad config, ``out`` is the config's own folder or was not made by
            ``cordfuse study``, or nothing was evaluated yet (``tables_only``).
    """
    config_path = Path(config_path)
    study = StudyConfig.from_file(config_path)
    out = Path(out) if out else config_path.with_suffix("")
    if out.resolve() == config_path.parent.resolve():
        raise CordfuseError(f"{out}: give an output folder of its own for the study")
    claim(out, "study")
    if tables_only:
        records = load_records(out)
        if not records:
            raise CordfuseError(f"{out}: no evaluated run yet (metrics/*.csv)")
        written = write_tables(out, study, records)
        written.update(write_lesion_tables(out, study, load_lesion_rows(out, records), records))
        return {"records": records, "tables": written, "runs": []}
    copy = out / ("study" + (config_path.suffix or ".yaml"))
    if config_path.resolve() != copy.resolve():
        shutil.copyfile(config_path, copy)
    run = run_stages(study, out, log=log)
    run.tables["report"] = write_report(
        study, out, kind="study", data=run.data.root, minutes=run.minutes
    )
    log(f"Study finished in {run.minutes:.1f} min: {out.resolve()}")
    log(f"Report: {run.tables['report'].resolve()}")
    return {
        "records": run.records,
        "tables": run.tables,
        "runs": run.runs,
        "minutes": run.minutes,
        "fold": run.data.fold,
    }


def run_stages(study: StudyConfig, out: Path, *, log: Log = print) -> StudyRun:
    """Every stage of a study but the report, into ``out`` (resumed where it stopped).

    The caller owns ``out`` (:func:`cordfuse.ownership.claim`).

    Args:
        study: The config.
        out: The study folder.
        log: Where progress lines go.

    Returns:
        What ran and what it wrote.

    Raises:
        CordfuseError: The dataset is missing, too small for the fold, or a stage fails.
    """
    started = time.perf_counter()
    atomic_write_text(out / "config.json", json.dumps(study.to_mapping(), indent=2) + "\n")
    data = prepare(study, out, log)
    statuses = train_all(study, out, data.fold, log)
    # read once for both stages that need them, and only if one does
    test_subjects = functools.cache(lambda: load_test_subjects(out, data.fold))
    records = evaluate_all(study, out, test_subjects, statuses, log)
    written = write_tables(out, study, records)
    rows = lesions_all(out, test_subjects, records, log)
    written.update(write_lesion_tables(out, study, rows, records))
    minutes = (time.perf_counter() - started) / 60
    atomic_write_text(
        out / "status.json",
        json.dumps({"minutes": round(minutes, 2), "runs": [asdict(s) for s in statuses]}, indent=2)
        + "\n",
    )
    return StudyRun(data, statuses, records, written, minutes)


#: The multi-sequence models whose masks with every sequence the report outlines, by preference.
QC_MULTI_SEQUENCE = ("anchored", "mi", "anchored-all-levels", "early-fusion")


def write_report(study: StudyConfig, out: Path, *, kind: str, data: Path, minutes: float) -> Path:
    """The run's manifest (``cordfuse_run.json``) and ``report.html``.

    Args:
        study: The config.
        out: The study folder.
        kind: What made it (``study``, ``demo``), shown in the report.
        data: The dataset's root.
        minutes: Time of the run.

    Returns:
        The report's path.
    """
    from cordfuse.report import write_manifest
    from cordfuse.report import write_report as write_html

    seed = study.seeds[0]
    # one model without and one with the extra sequences, as outlines on each test subject: the
    # recommended multi-sequence model where the study has it, else the paper's
    multi = next((m for m in QC_MULTI_SEQUENCE if m in study.experiments), None)
    qc = [
        (
            f"{LABELS[name]} [{inference}]",
            str(prediction_folder(out, name, seed, inference).relative_to(out)),
        )
        for name, inference in (("baseline", T2SAG_ONLY), (multi, ALL_AVAILABLE))
        if name in study.experiments
    ]
    write_manifest(
        out,
        kind=kind,
        data=data,
        settings=study.to_mapping(),
        experiments=[e.name for e in study.ordered_experiments],
        labels=LABELS,
        inferences=inference_order(study.specific_sets),
        qc_predictions=qc,
        minutes=minutes,
    )
    return write_html(out)


# -- the stages -----------------------------------------------------------------------------------


def prepare(study: StudyConfig, out: Path, log: Log) -> StudyData:
    """Make the synthetic cohort (if asked), check and prepare the dataset, and split it.

    Once prepared, the raw dataset is not needed any more: a study whose dataset was moved or
    deleted goes on from its prepared subjects.

    Args:
        study: The config.
        out: The study folder.
        log: Where progress lines go.

    Returns:
        The dataset's root, the fold (``fold.json``: kept from an earlier run, the config's, or
        drawn by :func:`split_by_cohort` with the first seed), the check's verdict and the
        subjects that failed.

    Raises:
        CordfuseError: The dataset is missing, or too small for the fold.
    """
    from cordfuse.check import check_dataset
    from cordfuse.dataset import discover
    from cordfuse.preprocess.batch import load_prepared_dataset, prepare_dataset
    from cordfuse.preprocess.pipeline import PRESETS

    root = Path(study.dataset) if study.dataset else out / "data"
    prepared_before = (out / "prepared" / "dataset.json").exists()
    if study.dataset and not root.is_dir() and not prepared_before:
        raise CordfuseError(f"{root}: dataset folder not found")
    if (
        not study.dataset
        and not (root / "dataset_description.json").exists()
        and not prepared_before
    ):
        from cordfuse.synth import write_cohort

        log(
            f"[data] {'randomised ' if study.synthetic_randomise else ''}synthetic cohort: "
            f"{study.synthetic_subjects} subjects (seed {study.synthetic_seed})"
        )
        write_cohort(
            root,
            subjects=study.synthetic_subjects,
            seed=study.synthetic_seed,
            qc=study.synthetic_qc,
            overwrite=True,
            randomise=study.synthetic_randomise,
        )
    check_ok, failed = None, []
    if root.is_dir():
        dataset = discover(root)
        report = check_dataset(dataset)
        atomic_write_text(out / "check.txt", report.format_text() + "\n")
        check_ok = report.ok
        log(
            f"[check] {len(dataset.subjects)} subjects: "
            f"{'no problem found' if report.ok else 'PROBLEMS, see check.txt'}"
        )
        prep = replace(PRESETS[study.preset], centerline=study.centerline)
        log(f"[prepare] {len(dataset.subjects)} subjects ({study.preset} preset)")
        for r in prepare_dataset(dataset, out / "prepared", prep, jobs=study.jobs):
            if r.status == "failed":
                failed.append(r.name)
                log(f"      FAILED {r.name}: {r.message}")
    else:
        log(f"[prepare] {root} is gone: going on with the prepared subjects")
    document, _ = load_prepared_dataset(out / "prepared")
    if (out / "fold.json").exists():
        fold = json.loads((out / "fold.json").read_text())
    elif study.fold:
        fold = json.loads(Path(study.fold).read_text())
        atomic_write_text(out / "fold.json", json.dumps(fold, indent=2) + "\n")
    else:
        fold = split_by_cohort(document, study.test_per_cohort, study.seeds[0])
        atomic_write_text(out / "fold.json", json.dumps(fold, indent=2) + "\n")
    log(
        f"      train {len(fold['train'])}, validation {len(fold['val'])}, "
        f"test {len(fold['test'])} subjects"
    )
    return StudyData(root, fold, check_ok, failed)


def train_all(study: StudyConfig, out: Path, fold: dict, log: Log) -> list[RunStatus]:
    """Train every experiment of every seed into ``runs/<experiment>/seed-<n>/``.

    A finished training is kept, an interrupted one resumes; a model no training subject fits
    (a specific model whose sequences none has) is skipped with its reason.

    Args:
        study: The config.
        out: The study folder (``prepared/`` and ``fold.json`` written).
        fold: The fold, for the log.
        log: Where progress lines go.

    Returns:
        One status per (seed, experiment), in training order.
    """
    from cordfuse.training import describe_validation
    from cordfuse.training.config import TrainConfig
    from cordfuse.training.trainer import train

    statuses: list[RunStatus] = []
    experiments = study.ordered_experiments
    total = len(experiments) * len(study.seeds)
    n = 0
    for seed in study.seeds:
        for experiment in experiments:
            n += 1
            folder = out / "runs" / experiment.name / f"seed-{seed}"
            if (folder / "summary.json").exists():
                statuses.append(RunStatus(experiment.name, seed, "done"))
                log(f"[train {n}/{total}] {experiment.name} seed {seed}: already trained")
                continue
            needs_baseline = (
                experiment.variant == "frozen-encoder" or experiment.model == "anchored"
            )
            if needs_baseline and not any(
                s.experiment == "baseline" and s.seed == seed and s.status != "skipped"
                for s in statuses
            ):
                statuses.append(RunStatus(experiment.name, seed, "skipped", "no baseline"))
                continue
            epochs, iterations = study.schedule
            log(
                f"[train {n}/{total}] {experiment.label} (seed {seed}): {epochs} epochs x "
                f"{iterations} iterations"
            )
            try:
                noise = (
                    _feature_noise(study, out, seed, log)
                    if experiment.variant == "feature-aug"
                    else None
                )
                config = TrainConfig.from_dict(_train_config(study, experiment, seed, out, noise))
                summary = train(out / "prepared", folder, config, device=study.device, resume=True)
            except CordfuseError as exc:
                statuses.append(RunStatus(experiment.name, seed, "skipped", str(exc)))
                log(f"      skipped: {exc}")
                continue
            statuses.append(RunStatus(experiment.name, seed, "trained", "", summary["seconds"]))
            log(f"      {describe_validation(summary)} ({summary['seconds']:.0f} s)")
    return statuses


def _train_config(study: StudyConfig, experiment: Experiment, seed: int, out: Path, noise) -> dict:
    epochs, iterations = study.schedule
    config = {
        "model": experiment.model,
        "sequences": experiment.sequences,
        "variant": experiment.variant,
        "preset": study.preset,
        "epochs": epochs,
        "iterations": iterations,
        "batch_size": study.batch_size,
        "seed": seed,
        "fold_file": str(out / "fold.json"),
        "amp": study.amp,
        "augment": study.augment,
        "val_every": study.val_every,
        "fusion": experiment.fusion,
        "sequence_dropout": experiment.sequence_dropout,
        "reference_dropout": experiment.reference_dropout,
        "sequence_supervision": experiment.sequence_supervision,
    }
    if experiment.variant == "frozen-encoder":
        config["frozen_from"] = str(out / "runs" / "baseline" / f"seed-{seed}")
    if experiment.model == "anchored":
        config["anchor"] = str(out / "runs" / "baseline" / f"seed-{seed}")
        config["correction"] = experiment.correction
    if experiment.variant == "feature-aug":
        config["feature_noise"] = noise
    return config


def _feature_noise(study: StudyConfig, out: Path, seed: int, log: Log):
    """The latent noise of ``feature-aug``: the paper's, a file's, or fitted on the ``mi`` model
    of the same seed (once, into ``features/seed-<n>/``)."""
    from cordfuse.nn.networks import FeatureNoise

    if study.feature_noise == "paper":
        return FeatureNoise()
    if study.feature_noise != "fit":
        return FeatureNoise.from_json(study.feature_noise)
    target = out / "features" / f"seed-{seed}"
    if not (target / "noise_params.json").exists():
        from cordfuse.features import analyze_features

        log(f"      fitting the feature noise on the mi model (seed {seed})")
        analyze_features(
            out / "runs" / "mi" / f"seed-{seed}",
            out / "prepared",
            target,
            device=study.device,
            max_values=500_000,
            seed=seed,
        )
    return FeatureNoise.from_json(target / "noise_params.json")


def evaluate_all(
    study: StudyConfig,
    out: Path,
    test_subjects: Callable[[], list],
    statuses: list[RunStatus],
    log: Log,
) -> list[Record]:
    """Predict and evaluate the test subjects with every trained model (once per model).

    Args:
        study: The config.
        out: The study folder.
        test_subjects: Returns the prepared test subjects (called only if a model needs them).
        statuses: The trainings; skipped ones are left out.
        log: Where progress lines go.

    Returns:
        The per-image metrics of the trained models, from ``metrics/``.
    """
    from cordfuse.nn.device import choose_device

    device = choose_device(study.device)
    usable = [s for s in statuses if s.status != "skipped"]
    for k, status in enumerate(usable, start=1):
        target = out / "metrics" / f"{status.experiment}_seed-{status.seed}.csv"
        if target.exists():
            continue
        test = test_subjects()
        log(
            f"[evaluate {k}/{len(usable)}] {status.experiment} seed {status.seed} on "
            f"{len(test)} test subjects"
        )
        records = evaluate_run(
            study, EXPERIMENTS[status.experiment], status.seed, out, test, device
        )
        atomic_write_text(target, records_to_csv(records))
    wanted = {(s.experiment, s.seed) for s in usable}
    return [r for r in load_records(out) if (r.experiment, r.seed) in wanted]


def evaluate_run(
    study: StudyConfig, experiment: Experiment, seed: int, out: Path, test: list, device
) -> list[Record]:
    """Predict every test subject with every set of sequences the model can use, and evaluate.

    Each prediction is :func:`cordfuse.inference.predict_prepared` on the prepared subject with
    the other sequences switched off (what ``cordfuse predict --sequences`` does too), written on
    the fused native T2Sag grid and scored (Anima rules) against the ground truth the prepared
    subject stores.

    Args:
        study: The config.
        experiment: The model.
        seed: Its training seed.
        out: The study folder.
        test: The prepared test subjects, with their native T2Sag.
        device: Where the model runs.

    Returns:
        One record per (sequences, subject).
    """
    from cordfuse.evaluation.metrics import evaluate_masks
    from cordfuse.inference import load_model, predict_prepared
    from cordfuse.io import make_nifti, save_nifti, voxel_sizes

    model = load_model(out / "runs" / experiment.name / f"seed-{seed}", device)
    records = []
    for prepared in test:
        truth = prepared.native.lesion
        voxel = float(np.prod(voxel_sizes(prepared.native.affine)))
        for label, sequences in inference_sets(experiment, prepared.sequences, study.specific_sets):
            prediction = predict_prepared(
                prepared, [model], sequences=list(sequences), device=device, amp=study.amp
            )
            save_nifti(
                make_nifti(prediction.mask, prediction.affine),
                prediction_folder(out, experiment.name, seed, label)
                / f"{prepared.subject}_lesion.nii.gz",
            )
            metrics = evaluate_masks(prediction.mask, truth, voxel_volume_mm3=voxel)
            records.append(
                Record(
                    experiment.name,
                    seed,
                    label,
                    prepared.subject,
                    prepared.cohort or "-",
                    metrics.to_dict(),
                )
            )
    return records


def load_test_subjects(out: Path, fold: dict) -> list:
    """The prepared test subjects with their fused native T2Sag and ground truth.

    Args:
        out: The study folder.
        fold: The fold (its ``test`` subjects).

    Returns:
        The :class:`cordfuse.preprocess.pipeline.PreparedSubject` of every test subject.

    Raises:
        CordfuseError: a test subject was prepared without a lesion label.
    """
    from cordfuse.preprocess.batch import load_prepared_dataset
    from cordfuse.preprocess.pipeline import PreparedSubject

    _, paths = load_prepared_dataset(out / "prepared")
    test = [PreparedSubject.load(p, native=True) for p in paths if p.parent.name in fold["test"]]
    for prepared in test:
        if prepared.native is None or prepared.native.lesion is None:
            raise CordfuseError(f"{prepared.subject}: test subject without a lesion label")
    return test


def prediction_folder(out: Path, experiment: str, seed: int, inference: str) -> Path:
    """Where a study writes the predictions of one model with one set of sequences.

    Args:
        out: The study folder.
        experiment: The model's experiment name.
        seed: Its training seed.
        inference: The row label of the sequences it saw (spaces become ``-``).

    Returns:
        ``predictions/<experiment>/seed-<n>/<sequences>/``, holding
        ``<subject>_lesion.nii.gz`` files.
    """
    return out / "predictions" / experiment / f"seed-{seed}" / inference.replace(" ", "-")


def load_records(out: Path) -> list[Record]:
    """Every per-image record evaluated so far.

    Args:
        out: The study folder.

    Returns:
        The records of ``metrics/*.csv``.
    """
    records = []
    for path in sorted((out / "metrics").glob("*.csv")):
        records += records_from_csv(path.read_text())
    return records


# -- lesion by lesion ---------------------------------------------------------------------------


def lesions_all(
    out: Path, test_subjects: Callable[[], list], records: list[Record], log: Log
) -> list[LesionRow]:
    """Per-lesion rows of every evaluated (model, seed), from the saved predictions.

    One ``lesions/<experiment>_seed-<n>.csv`` per run, never redone.

    Args:
        out: The study folder.
        test_subjects: Returns the prepared test subjects (called only if a run needs them).
        records: The evaluated images.
        log: Where progress lines go.

    Returns:
        The rows of the runs ``records`` hold.
    """
    from cordfuse.evaluation.lesions import SynthTruth, lesion_rows, rows_to_csv
    from cordfuse.io import read_volume, voxel_sizes

    runs = sorted({(r.experiment, r.seed) for r in records})
    missing = [
        run for run in runs if not (out / "lesions" / f"{run[0]}_seed-{run[1]}.csv").exists()
    ]
    if missing:
        test = {prepared.subject: prepared for prepared in test_subjects()}
    for k, (experiment, seed) in enumerate(missing, start=1):
        log(f"[lesions {k}/{len(missing)}] {experiment} seed {seed}")
        rows = []
        for r in records:
            if (r.experiment, r.seed) != (experiment, seed):
                continue
            native = test[r.image].native
            prediction, _ = read_volume(
                prediction_folder(out, experiment, seed, r.inference) / f"{r.image}_lesion.nii.gz"
            )
            rows += lesion_rows(
                prediction,
                native.lesion,
                native.affine,
                subject=r.image,
                synth=SynthTruth.from_document(test[r.image].synth_truth),
                voxel_volume_mm3=float(np.prod(voxel_sizes(native.affine))),
                cohort=r.cohort,
                experiment=experiment,
                seed=seed,
                inference=r.inference,
            )
        atomic_write_text(out / "lesions" / f"{experiment}_seed-{seed}.csv", rows_to_csv(rows))
    return load_lesion_rows(out, records)


def load_lesion_rows(out: Path, records: list[Record]) -> list[LesionRow]:
    """The per-lesion rows of the runs that ``records`` hold.

    Args:
        out: The study folder.
        records: The evaluated images.

    Returns:
        The rows of their ``lesions/*.csv`` files that exist.
    """
    from cordfuse.evaluation.lesions import rows_from_csv

    rows = []
    for experiment, seed in sorted({(r.experiment, r.seed) for r in records}):
        path = out / "lesions" / f"{experiment}_seed-{seed}.csv"
        if path.exists():
            rows += rows_from_csv(path.read_text())
    return rows


# -- tables ---------------------------------------------------------------------------------------


def write_tables(out: Path, study: StudyConfig, records: list[Record]) -> dict[str, Path]:
    """Tables 1 and 2 (md, csv, tex), box plots per cohort and ``per_image.csv``.

    Args:
        out: The study folder.
        study: The config (the experiments' order and the rows of Table 1).
        records: The per-image metrics.

    Returns:
        The files written, by name (``per_image``, ``table1.md``, ``boxplot_A``, ...).
    """
    order = [e.name for e in study.ordered_experiments]
    written = {}
    atomic_write_text(out / "per_image.csv", records_to_csv(records))
    written["per_image"] = out / "per_image.csv"
    if not records:
        return written
    tables = {
        "table1": table1(
            records,
            experiments=order,
            labels=LABELS,
            inferences=inference_order(study.specific_sets),
        ),
        "table2": table2(records, reference="baseline", experiments=order, labels=LABELS),
        "table2_cohorts": table2_per_cohort(
            records, reference="baseline", experiments=order, labels=LABELS
        ),
    }
    for name, table in tables.items():
        for suffix, text in (
            ("md", table.to_markdown()),
            ("csv", table.to_csv()),
            ("tex", table.to_latex()),
        ):
            atomic_write_text(out / f"{name}.{suffix}", text)
            written[f"{name}.{suffix}"] = out / f"{name}.{suffix}"
    rows = [
        (e, T2SAG_ONLY)
        for e in order
        if any(r.experiment == e and r.inference == T2SAG_ONLY for r in records)
    ]
    rows += [
        (e, ALL_AVAILABLE)
        for e in order
        if any(r.experiment == e and r.inference == ALL_AVAILABLE for r in records)
    ]
    for cohort in sorted({r.cohort for r in records}):
        path = out / f"boxplot_{cohort}.png"
        atomic_write_bytes(path, boxplot_png(records, cohort, rows, LABELS))
        written[f"boxplot_{cohort}"] = path
    return written


def write_lesion_tables(
    out: Path, study: StudyConfig, rows: list[LesionRow], records: list[Record]
) -> dict[str, Path]:
    """``per_lesion.csv``, the product comparison (each multi-sequence model with every sequence
    against the best T2Sag-only answer) and the "what the extra sequences add" tables (md, csv).

    Args:
        out: The study folder.
        study: The config (the experiments' order).
        rows: The per-lesion rows.
        records: The per-image metrics of the same predictions (the product's F1 and Dice).

    Returns:
        The files written, by name (``per_lesion``, ``product.md``, ``extra_sequences.md``,
        ...); none without rows.
    """
    from cordfuse.evaluation.lesions import extra_sequences_tables, product_table, rows_to_csv

    written: dict[str, Path] = {}
    if not rows:
        return written
    atomic_write_text(out / "per_lesion.csv", rows_to_csv(rows))
    written["per_lesion"] = out / "per_lesion.csv"
    order = [e.name for e in study.ordered_experiments]
    tables = (
        product_table(rows, records, experiments=order, labels=LABELS),
        *extra_sequences_tables(rows, experiments=order, labels=LABELS),
    )
    names = ("product", "extra_sequences", "lesions_changed")
    for name, table in zip(names, tables, strict=True):
        markdown = table.to_markdown()
        if name == "extra_sequences":
            # the answer a user asks first (better than T2Sag alone?) heads the file that says
            # what the extra sequences add; a CSV holds one table, so product.csv keeps it there
            markdown = tables[0].to_markdown() + "\n" + markdown
        for suffix, text in (("md", markdown), ("csv", table.to_csv())):
            atomic_write_text(out / f"{name}.{suffix}", text)
            written[f"{name}.{suffix}"] = out / f"{name}.{suffix}"
    return written
