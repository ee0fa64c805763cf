"""The paper's experiment grid as one command (``cordfuse study CONFIG``).

A study trains every model of the paper for ``seeds`` seeds on one dataset, predicts the held-out
test subjects of every cohort with every set of sequences the model can use, evaluates them with
the Anima rules, and writes Tables 1 and 2 (Markdown, CSV, LaTeX), box plots per cohort and
``per_image.csv``. It is resumable: a finished training (``summary.json``) or evaluation
(``metrics/<experiment>_seed-<n>.csv``) is never redone, an interrupted training resumes from its
last epoch, and tables are rebuilt from the metrics on every run.

The models (section 2.3-2.4), in training order:

==================== ====================================================================
``baseline``         T2Sag only (nnU-Net)
``specific-stir``    specific sequences T2Sag+STIR (trained on the subjects that have them)
``specific-t2s-t1``  T2Sag+T2starAx+T1Sag
``specific-t2s-t2ax`` T2Sag+T2starAx+T2Ax
``mi``               Mean Imputation, six encoders
``mi-frozen``        Mean Imputation with the T2Sag encoder of ``baseline`` (same seed) frozen
``mi-distill``       Mean Imputation with the L1 distillation loss (alpha 0.1)
``feature-aug``      T2Sag with latent feature augmentation
``mi-dropout``       Mean Imputation, each other sequence hidden with probability 0.5 in training
``mi-all-levels``    Mean Imputation fused at every encoder level (beyond the paper)
``mi-all-levels-refdrop`` the same, T2Sag hidden with probability 0.35 in training samples whose
                     other sequences cover the patch
==================== ====================================================================

Sequences at inference, for each test subject: T2Sag alone (every model that can), each
specific model's combination when the subject has it, and all of the subject's sequences
("all available"; multi-sequence models). Inference runs on the prepared crops with the other
sequences' availability switched off, which is what a missing sequence means to the networks.

Layout of the study folder::

    study.yaml (the config as given) + config.json (as resolved)
    data/ (synthetic cohort, when the config asks for one), prepared/, fold.json
    runs/<experiment>/seed-<n>/        training (checkpoints, log, curves)
    features/seed-<n>/                 fitted feature noise (feature_noise: fit)
    predictions/<experiment>/seed-<n>/<sequences>/<subject>_lesion.nii.gz
    metrics/<experiment>_seed-<n>.csv  per-image metrics
    lesions/<experiment>_seed-<n>.csv  per-lesion outcomes (cordfuse.evaluation.lesions)
    per_image.csv, table1.{md,csv,tex}, table2.{md,csv,tex} (cohorts pooled, as the paper),
    table2_cohorts.{md,csv,tex}, boxplot_<cohort>.png
    per_lesion.csv, extra_sequences.{md,csv}, lesions_changed.{md,csv}: what the extra sequences
    add, lesion by lesion (paired with T2Sag alone, exact McNemar test)
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from cordfuse.errors import CordfuseError
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
from cordfuse.sequences import REFERENCE_SEQUENCE, SEQUENCES

ALL_AVAILABLE = "all available"


@dataclass(frozen=True)
class Experiment:
    name: str
    label: str
    model: str
    sequences: tuple[str, ...] = SEQUENCES
    variant: str | None = None
    fusion: str = "bottleneck"
    sequence_dropout: float = 0.0
    reference_dropout: float = 0.0

    @property
    def multi(self) -> bool:
        return self.model != "baseline"

    @property
    def accepts_missing(self) -> bool:
        return self.model != "specific"


EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    Experiment("baseline", "T2Sag baseline", "baseline", ("T2Sag",)),
    Experiment("specific-stir", "Specific T2Sag+STIR", "specific", ("T2Sag", "STIR")),
    Experiment("specific-t2s-t1", "Specific T2Sag+T2starAx+T1Sag", "specific",
               ("T2Sag", "T2starAx", "T1Sag")),
    Experiment("specific-t2s-t2ax", "Specific T2Sag+T2starAx+T2Ax", "specific",
               ("T2Sag", "T2starAx", "T2Ax")),
    Experiment("mi", "Mean Imputation", "mean-imputation"),
    Experiment("mi-frozen", "MI + frozen encoder", "mean-imputation", variant="frozen-encoder"),
    Experiment("mi-distill", "MI + distillation", "mean-imputation", variant="distillation"),
    Experiment("feature-aug", "T2Sag + feature aug.", "baseline", ("T2Sag",), "feature-aug"),
    Experiment("mi-dropout", "MI + sequence dropout", "mean-imputation", sequence_dropout=0.5),
    Experiment("mi-all-levels", "MI, all-level fusion", "mean-imputation",
               fusion="all-levels"),
    Experiment("mi-all-levels-refdrop", "MI, all-level fusion + T2Sag dropout",
               "mean-imputation", fusion="all-levels", reference_dropout=0.35),
)}

PRESET_SCHEDULES = {"paper": {"epochs": 1000, "iterations": 250},
                    "small": {"epochs": 100, "iterations": 25}}

EXAMPLE_CONFIG = """\
# cordfuse study: the paper's experiment grid (Tables 1 and 2).
# Either a BIDS dataset with cohorts in participants.tsv ...
#   dataset: /path/to/bids
# ... or a synthetic cohort made by the study itself:
# 120 subjects: 66 test (about 50 lesions faint on T2Sag, enough for the paired faint-lesion
# comparison), 3 validation, 51 training. Test subjects only cost inference time.
synthetic:
  subjects: 120
  seed: 0
preset: small          # small (CPU) or paper (full networks, for a GPU)
seeds: 1               # number of training seeds (0, 1, ...) or a list; the paper used 3
# epochs: 100          # default: 100 x 25 for small, 1000 x 250 for paper
# iterations: 25
test_per_cohort: 22    # held-out test subjects per cohort (one more per cohort validates)
# The paper's grid, then two models beyond it (docs/multisequence.md); also available:
# mi-dropout (Mean Imputation with sequence dropout).
experiments: [baseline, specific-stir, specific-t2s-t1, specific-t2s-t2ax, mi, mi-frozen,
              mi-distill, feature-aug, mi-all-levels, mi-all-levels-refdrop]
feature_noise: paper   # paper | fit (analyze the MI model of the same seed) | a JSON file
# device: auto         # auto | cpu | cuda
# jobs: 2              # pre-processing processes
"""


@dataclass(frozen=True)
class StudyConfig:
    dataset: str | None = None
    synthetic_subjects: int = 120
    synthetic_seed: int = 0
    preset: str = "small"
    seeds: tuple[int, ...] = (0,)
    epochs: int | None = None
    iterations: int | None = None
    batch_size: int = 2
    test_per_cohort: int = 22
    experiments: tuple[str, ...] = tuple(EXPERIMENTS)
    feature_noise: str = "paper"
    centerline: str = "auto"
    fold: str | None = None
    jobs: int = 2
    device: str = "auto"
    amp: str = "auto"
    augment: bool = True

    def __post_init__(self):
        if self.preset not in PRESET_SCHEDULES:
            raise CordfuseError(f"preset must be one of {', '.join(PRESET_SCHEDULES)}")
        unknown = [e for e in self.experiments if e not in EXPERIMENTS]
        if unknown:
            raise CordfuseError(f"unknown experiment(s) {', '.join(unknown)}; choose from "
                                f"{', '.join(EXPERIMENTS)}")
        if "mi-frozen" in self.experiments and "baseline" not in self.experiments:
            raise CordfuseError("mi-frozen freezes the baseline's T2Sag encoder: add baseline")
        if self.feature_noise == "fit" and "feature-aug" in self.experiments \
                and "mi" not in self.experiments:
            raise CordfuseError("feature_noise: fit analyses the mi model: add mi")
        if not self.seeds or self.test_per_cohort < 1:
            raise CordfuseError("a study needs at least one seed and one test subject per cohort")

    @property
    def schedule(self) -> tuple[int, int]:
        defaults = PRESET_SCHEDULES[self.preset]
        return (self.epochs or defaults["epochs"], self.iterations or defaults["iterations"])

    @property
    def ordered_experiments(self) -> list[Experiment]:
        return [EXPERIMENTS[name] for name in EXPERIMENTS if name in self.experiments]

    @property
    def specific_sets(self) -> list[tuple[str, ...]]:
        return [e.sequences for e in self.ordered_experiments if e.model == "specific"]

    @classmethod
    def from_mapping(cls, data: dict, base: Path) -> StudyConfig:
        if not isinstance(data, dict):
            raise CordfuseError("a study config is a mapping of settings (see --example)")
        data = dict(data)
        values: dict = {}
        synthetic = data.pop("synthetic", None)
        if synthetic is not None:
            if not isinstance(synthetic, dict):
                raise CordfuseError("synthetic: needs subjects and seed")
            values["synthetic_subjects"] = int(synthetic.get("subjects", 120))
            values["synthetic_seed"] = int(synthetic.get("seed", 0))
        if "dataset" in data:
            values["dataset"] = str((base / str(data.pop("dataset"))).resolve())
        if "fold" in data:
            values["fold"] = str((base / str(data.pop("fold"))).resolve())
        seeds = data.pop("seeds", 1)
        values["seeds"] = tuple(range(int(seeds))) if isinstance(seeds, int) else \
            tuple(int(s) for s in seeds)
        if "experiments" in data:
            values["experiments"] = tuple(str(e) for e in data.pop("experiments"))
        noise = data.pop("feature_noise", "paper")
        if noise not in ("paper", "fit"):
            noise = str((base / str(noise)).resolve())
        values["feature_noise"] = noise
        known = {f.name for f in fields(cls)} - {"synthetic_subjects", "synthetic_seed"}
        unknown = [k for k in data if k not in known]
        if unknown:
            raise CordfuseError(f"unknown setting(s) {', '.join(sorted(unknown))} (see "
                                "cordfuse study --example)")
        values.update(data)
        try:
            return cls(**values)
        except TypeError as exc:
            raise CordfuseError(f"bad study config: {exc}") from exc

    @classmethod
    def from_file(cls, path: str | Path) -> StudyConfig:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise CordfuseError(f"{path}: cannot read the study config ({exc})") from exc
        import yaml

        try:
            data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise CordfuseError(f"{path}: not valid JSON/YAML "
                                f"({str(exc).splitlines()[0]})") from exc
        return cls.from_mapping(data, path.parent)


# -- which sequences each model sees at inference -----------------------------------------------


def sequences_label(sequences) -> str:
    return "+".join(s for s in SEQUENCES if s in sequences)


def inference_sets(experiment: Experiment, available: list[str],
                   specific_sets: list[tuple[str, ...]]) -> list[tuple[str, tuple[str, ...]]]:
    """``(row label, sequences)`` for one model and one test subject (see the module doc)."""
    have = set(available)
    if experiment.model == "baseline":
        return [(T2SAG_ONLY, (REFERENCE_SEQUENCE,))]
    if experiment.model == "specific":
        needed = experiment.sequences
        return [(sequences_label(needed), needed)] if set(needed) <= have else []
    sets = [(T2SAG_ONLY, (REFERENCE_SEQUENCE,))]
    sets += [(sequences_label(s), s) for s in specific_sets if set(s) <= have]
    if len(have) > 1:
        sets.append((ALL_AVAILABLE, tuple(s for s in SEQUENCES if s in have)))
    return sets


def inference_order(specific_sets) -> list[str]:
    return [T2SAG_ONLY, *[sequences_label(s) for s in specific_sets], ALL_AVAILABLE]


# -- the run ------------------------------------------------------------------------------------


def split_by_cohort(document: dict, test_per_cohort: int, seed: int) -> dict[str, list[str]]:
    """Held-out test subjects per cohort; one validation subject per cohort; the rest trains."""
    rng = np.random.default_rng(seed)
    by_cohort: dict[str, list[str]] = {}
    for s in document["subjects"]:
        if s.get("has_label"):
            by_cohort.setdefault(s["cohort"] or "-", []).append(s["id"])
    fold = {"train": [], "val": [], "test": []}
    for ids in by_cohort.values():
        ids = list(rng.permutation(sorted(ids)))
        fold["test"] += ids[:test_per_cohort]
        fold["val"] += ids[test_per_cohort:test_per_cohort + 1]
        fold["train"] += ids[test_per_cohort + 1:]
    if not fold["train"]:
        raise CordfuseError(f"needs at least {test_per_cohort + 2} labelled subjects per cohort "
                            "(test, validation and training)")
    return {k: sorted(str(i) for i in v) for k, v in fold.items()}


@dataclass
class RunStatus:
    experiment: str
    seed: int
    status: str  # trained | done | skipped
    message: str = ""
    seconds: float = 0.0


def _train_config(study: StudyConfig, experiment: Experiment, seed: int, out: Path,
                  noise) -> dict:
    epochs, iterations = study.schedule
    config = {"model": experiment.model, "sequences": experiment.sequences,
              "variant": experiment.variant, "preset": study.preset, "epochs": epochs,
              "iterations": iterations, "batch_size": study.batch_size, "seed": seed,
              "fold_file": str(out / "fold.json"), "amp": study.amp, "augment": study.augment,
              "fusion": experiment.fusion, "sequence_dropout": experiment.sequence_dropout,
              "reference_dropout": experiment.reference_dropout}
    if experiment.variant == "frozen-encoder":
        config["frozen_from"] = str(out / "runs" / "baseline" / f"seed-{seed}")
    if experiment.variant == "feature-aug":
        config["feature_noise"] = noise
    return config


def _feature_noise(study: StudyConfig, out: Path, seed: int, device: str, log):
    from cordfuse.nn.networks import FeatureNoise

    if study.feature_noise == "paper":
        return FeatureNoise()
    if study.feature_noise != "fit":
        return FeatureNoise.from_json(study.feature_noise)
    target = out / "features" / f"seed-{seed}"
    if not (target / "noise_params.json").exists():
        from cordfuse.features import analyze_features

        log(f"      fitting the feature noise on the mi model (seed {seed})")
        analyze_features(out / "runs" / "mi" / f"seed-{seed}", out / "prepared", target,
                         device=device, max_values=500_000, seed=seed)
    return FeatureNoise.from_json(target / "noise_params.json")


def evaluate_run(study: StudyConfig, experiment: Experiment, seed: int, out: Path,
                 test: list, device) -> list[Record]:
    """Predict every test subject with every usable set of sequences and evaluate (Anima) on the
    fused native T2Sag grid, against the ground truth the prepared subjects store."""
    from cordfuse.evaluation.metrics import evaluate_masks
    from cordfuse.inference import load_model, predict_prepared
    from cordfuse.io import make_nifti, save_nifti, voxel_sizes

    model = load_model(out / "runs" / experiment.name / f"seed-{seed}", device)
    records = []
    for prepared in test:
        truth = prepared.native.lesion
        voxel = float(np.prod(voxel_sizes(prepared.native.affine)))
        for label, sequences in inference_sets(experiment, prepared.sequences,
                                               study.specific_sets):
            prediction = predict_prepared(prepared, [model], sequences=list(sequences),
                                          device=device, amp=study.amp)
            save_nifti(make_nifti(prediction.mask, prediction.affine),
                       _prediction_path(out, experiment.name, seed, label, prepared.subject))
            metrics = evaluate_masks(prediction.mask, truth, voxel_volume_mm3=voxel)
            records.append(Record(experiment.name, seed, label, prepared.subject,
                                  prepared.cohort or "-", metrics.to_dict()))
    return records


def load_test_subjects(out: Path, fold: dict) -> list:
    """The prepared test subjects with their fused native T2Sag and ground truth.

    Raises:
        CordfuseError: a test subject was prepared without a lesion label.
    """
    from cordfuse.preprocess.batch import load_prepared_dataset
    from cordfuse.preprocess.pipeline import PreparedSubject

    _, paths = load_prepared_dataset(out / "prepared")
    test = [PreparedSubject.load(p, native=True) for p in paths if p.parent.name in fold["test"]]
    for prepared in test:
        if prepared.native.lesion is None:
            raise CordfuseError(f"{prepared.subject}: test subject without a lesion label")
    return test


def write_tables(out: Path, study: StudyConfig, records: list[Record]) -> dict[str, Path]:
    """Tables 1 and 2 (md, csv, tex), box plots per cohort and per_image.csv."""
    labels = {e.name: e.label for e in EXPERIMENTS.values()}
    order = [e.name for e in study.ordered_experiments]
    written = {}
    atomic_write_text(out / "per_image.csv", records_to_csv(records))
    written["per_image"] = out / "per_image.csv"
    if not records:
        return written
    tables = {"table1": table1(records, experiments=order, labels=labels,
                               inferences=inference_order(study.specific_sets)),
              "table2": table2(records, reference="baseline", experiments=order, labels=labels),
              "table2_cohorts": table2_per_cohort(records, reference="baseline",
                                                  experiments=order, labels=labels)}
    for name, table in tables.items():
        for suffix, text in (("md", table.to_markdown()), ("csv", table.to_csv()),
                             ("tex", table.to_latex())):
            atomic_write_text(out / f"{name}.{suffix}", text)
            written[f"{name}.{suffix}"] = out / f"{name}.{suffix}"
    rows = [(e, T2SAG_ONLY) for e in order if any(r.experiment == e and r.inference == T2SAG_ONLY
                                                  for r in records)]
    rows += [(e, ALL_AVAILABLE) for e in order
             if any(r.experiment == e and r.inference == ALL_AVAILABLE for r in records)]
    for cohort in sorted({r.cohort for r in records}):
        path = out / f"boxplot_{cohort}.png"
        atomic_write_bytes(path, boxplot_png(records, cohort, rows, labels))
        written[f"boxplot_{cohort}"] = path
    return written


def _write_report(study: StudyConfig, out: Path, data: Path, minutes: float) -> Path:
    from cordfuse.report import write_manifest, write_report

    seed = study.seeds[0]
    qc = [(f"{EXPERIMENTS[name].label} [{inference}]",
           f"predictions/{name}/seed-{seed}/{inference.replace(' ', '-')}")
          for name, inference in (("baseline", T2SAG_ONLY), ("mi", ALL_AVAILABLE))
          if name in study.experiments]
    write_manifest(out, kind="study", data=data, settings=asdict(study),
                   experiments=[e.name for e in study.ordered_experiments],
                   labels={e.name: e.label for e in EXPERIMENTS.values()},
                   inferences=inference_order(study.specific_sets), qc_predictions=qc,
                   minutes=minutes)
    return write_report(out)


def load_records(out: Path) -> list[Record]:
    records = []
    for path in sorted((out / "metrics").glob("*.csv")):
        records += records_from_csv(path.read_text())
    return records


def run_study(config_path: str | Path, out: str | Path | None = None, *,
              log: Callable[[str], None] = print, tables_only: bool = False) -> dict:
    """Run (or resume) the study of ``config_path`` into ``out``; returns a summary."""
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
        written.update(write_lesion_tables(out, study, load_lesion_rows(out, records)))
        return {"records": records, "tables": written, "runs": []}
    started = time.perf_counter()
    copy = out / ("study" + (config_path.suffix or ".yaml"))
    if config_path.resolve() != copy.resolve():
        shutil.copyfile(config_path, copy)
    atomic_write_text(out / "config.json", json.dumps(asdict(study), indent=2, default=list) + "\n")
    data, fold = _prepare(study, out, log)
    statuses = _train_all(study, out, fold, log)
    # read once for both stages that need them, and only if one does
    test_subjects = functools.cache(lambda: load_test_subjects(out, fold))
    records = _evaluate_all(study, out, test_subjects, statuses, log)
    written = write_tables(out, study, records)
    written.update(write_lesion_tables(out, study, _lesions_all(out, test_subjects, records,
                                                                log)))
    minutes = (time.perf_counter() - started) / 60
    atomic_write_text(out / "status.json", json.dumps(
        {"minutes": round(minutes, 2), "runs": [asdict(s) for s in statuses]}, indent=2) + "\n")
    written["report"] = _write_report(study, out, data, minutes)
    log(f"Study finished in {minutes:.1f} min: {out.resolve()}")
    log(f"Report: {written['report'].resolve()}")
    return {"records": records, "tables": written, "runs": statuses, "minutes": minutes,
            "fold": fold}


def _prepare(study: StudyConfig, out: Path, log) -> tuple[Path, dict]:
    """Prepare the study's dataset (made first when synthetic) and split it; returns the
    dataset's root and the fold. Once prepared, the raw dataset is not needed any more: a study
    whose dataset was moved or deleted goes on from its prepared subjects."""
    from cordfuse.dataset import discover
    from cordfuse.preprocess.batch import load_prepared_dataset, prepare_dataset
    from cordfuse.preprocess.pipeline import PRESETS

    root = Path(study.dataset) if study.dataset else out / "data"
    prepared_before = (out / "prepared" / "dataset.json").exists()
    if study.dataset and not root.is_dir() and not prepared_before:
        raise CordfuseError(f"{root}: dataset folder not found")
    if not study.dataset and not (root / "dataset_description.json").exists() \
            and not prepared_before:
        from cordfuse.synth import write_cohort

        log(f"[data] synthetic cohort: {study.synthetic_subjects} subjects "
            f"(seed {study.synthetic_seed})")
        write_cohort(root, subjects=study.synthetic_subjects, seed=study.synthetic_seed,
                     overwrite=True)
    if root.is_dir():
        dataset = discover(root)
        prep = replace(PRESETS[study.preset], centerline=study.centerline)
        log(f"[prepare] {len(dataset.subjects)} subjects ({study.preset} preset)")
        results = prepare_dataset(dataset, out / "prepared", prep, jobs=study.jobs)
        for r in results:
            if r.status == "failed":
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
    log(f"      train {len(fold['train'])}, validation {len(fold['val'])}, "
        f"test {len(fold['test'])} subjects")
    return root, fold


def _train_all(study: StudyConfig, out: Path, fold, log) -> list[RunStatus]:
    from cordfuse.training import describe_validation
    from cordfuse.training.config import TrainConfig
    from cordfuse.training.trainer import train

    statuses = []
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
            if experiment.variant == "frozen-encoder" and not any(
                    s.experiment == "baseline" and s.seed == seed and s.status != "skipped"
                    for s in statuses):
                statuses.append(RunStatus(experiment.name, seed, "skipped", "no baseline"))
                continue
            epochs, iterations = study.schedule
            log(f"[train {n}/{total}] {experiment.label} (seed {seed}): {epochs} epochs x "
                f"{iterations} iterations")
            try:
                noise = (_feature_noise(study, out, seed, study.device, log)
                         if experiment.variant == "feature-aug" else None)
                config = TrainConfig.from_dict(_train_config(study, experiment, seed, out, noise))
                summary = train(out / "prepared", folder, config, device=study.device,
                                resume=True)
            except CordfuseError as exc:
                statuses.append(RunStatus(experiment.name, seed, "skipped", str(exc)))
                log(f"      skipped: {exc}")
                continue
            statuses.append(RunStatus(experiment.name, seed, "trained", "", summary["seconds"]))
            log(f"      {describe_validation(summary)} "
                f"({summary['seconds']:.0f} s)")
    return statuses


def _evaluate_all(study, out: Path, test_subjects: Callable[[], list], statuses,
                  log) -> list[Record]:
    from cordfuse.nn.device import choose_device

    device = choose_device(study.device)
    usable = [s for s in statuses if s.status != "skipped"]
    for k, status in enumerate(usable, start=1):
        target = out / "metrics" / f"{status.experiment}_seed-{status.seed}.csv"
        if target.exists():
            continue
        test = test_subjects()
        log(f"[evaluate {k}/{len(usable)}] {status.experiment} seed {status.seed} on "
            f"{len(test)} test subjects")
        records = evaluate_run(study, EXPERIMENTS[status.experiment], status.seed, out, test,
                               device)
        atomic_write_text(target, records_to_csv(records))
    wanted = {(s.experiment, s.seed) for s in usable}
    return [r for r in load_records(out) if (r.experiment, r.seed) in wanted]


# -- lesion by lesion -----------------------------------------------------------------------------


def _prediction_path(out: Path, experiment: str, seed: int, inference: str, subject: str) -> Path:
    return (out / "predictions" / experiment / f"seed-{seed}" / inference.replace(" ", "-") /
            f"{subject}_lesion.nii.gz")


def _lesions_all(out: Path, test_subjects: Callable[[], list], records: list[Record], log):
    """Per-lesion rows of every evaluated (model, seed), from the saved predictions; one
    ``lesions/<experiment>_seed-<n>.csv`` per run, never redone."""
    from cordfuse.evaluation.lesions import SynthTruth, lesion_rows, rows_to_csv
    from cordfuse.io import read_volume, voxel_sizes

    runs = sorted({(r.experiment, r.seed) for r in records})
    missing = [run for run in runs
               if not (out / "lesions" / f"{run[0]}_seed-{run[1]}.csv").exists()]
    if missing:
        test = {prepared.subject: prepared for prepared in test_subjects()}
    for k, (experiment, seed) in enumerate(missing, start=1):
        log(f"[lesions {k}/{len(missing)}] {experiment} seed {seed}")
        rows = []
        for r in records:
            if (r.experiment, r.seed) != (experiment, seed):
                continue
            native = test[r.image].native
            prediction, _ = read_volume(_prediction_path(out, experiment, seed, r.inference,
                                                         r.image))
            rows += lesion_rows(prediction, native.lesion, native.affine, subject=r.image,
                                synth=SynthTruth.from_document(test[r.image].synth_truth),
                                voxel_volume_mm3=float(np.prod(voxel_sizes(native.affine))),
                                cohort=r.cohort, experiment=experiment, seed=seed,
                                inference=r.inference)
        atomic_write_text(out / "lesions" / f"{experiment}_seed-{seed}.csv", rows_to_csv(rows))
    return load_lesion_rows(out, records)


def load_lesion_rows(out: Path, records: list[Record]):
    """The per-lesion rows of the runs that ``records`` hold."""
    from cordfuse.evaluation.lesions import rows_from_csv

    rows = []
    for experiment, seed in sorted({(r.experiment, r.seed) for r in records}):
        path = out / "lesions" / f"{experiment}_seed-{seed}.csv"
        if path.exists():
            rows += rows_from_csv(path.read_text())
    return rows


def write_lesion_tables(out: Path, study: StudyConfig, rows) -> dict[str, Path]:
    """``per_lesion.csv`` and the "what the extra sequences add" tables (md, csv)."""
    from cordfuse.evaluation.lesions import extra_sequences_tables, rows_to_csv

    written = {}
    if not rows:
        return written
    atomic_write_text(out / "per_lesion.csv", rows_to_csv(rows))
    written["per_lesion"] = out / "per_lesion.csv"
    labels = {e.name: e.label for e in EXPERIMENTS.values()}
    tables = extra_sequences_tables(rows, experiments=[e.name for e in study.ordered_experiments],
                                    labels=labels)
    for name, table in zip(("extra_sequences", "lesions_changed"), tables, strict=True):
        for suffix, text in (("md", table.to_markdown()), ("csv", table.to_csv())):
            atomic_write_text(out / f"{name}.{suffix}", text)
            written[f"{name}.{suffix}"] = out / f"{name}.{suffix}"
    return written
