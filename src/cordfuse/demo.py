"""The main job end to end on a synthetic cohort (``cordfuse demo``).

synth -> check -> prepare (small preset) -> train a T2Sag baseline and a Mean Imputation model ->
predict the held-out test subjects of each cohort (T2Sag only, and every available sequence) ->
evaluate (Anima rules, image and lesion by lesion) -> ``results.md`` (Tables 1 and 2, what the
extra sequences add) -> ``report.html``.

Everything lands in one folder::

    OUT/data/            the synthetic BIDS cohort (+ QC pictures)
    OUT/check.txt        its check report
    OUT/prepared/        pre-processed subjects
    OUT/fold.json        training / validation / test subjects
    OUT/runs/<model>/    checkpoints, log, curves
    OUT/predictions/<model>_<sequences>/   lesion masks on the native T2Sag grid
    OUT/per_image.csv    per-image metrics (Dice, lesion-wise sensitivity/precision/F1)
    OUT/per_lesion.csv   every lesion found or missed, with its visibility per sequence
    OUT/results.md       Tables 1 and 2 of the test cohorts
    OUT/report.html      the self-contained report (``cordfuse report OUT`` rebuilds it)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cordfuse.errors import CordfuseError
from cordfuse.evaluation.lesions import LesionRow, SynthTruth, extra_sequences_tables, lesion_rows
from cordfuse.evaluation.lesions import rows_to_csv as lesions_to_csv
from cordfuse.evaluation.metrics import evaluate_masks
from cordfuse.evaluation.tables import T2SAG_ONLY, Record, records_to_csv, table1, table2
from cordfuse.io import atomic_write_text, voxel_sizes
from cordfuse.report import write_manifest, write_report
from cordfuse.study import ALL_AVAILABLE, split_by_cohort


@dataclass(frozen=True)
class DemoSettings:
    subjects: int = 24
    seed: int = 0
    epochs: int = 50
    iterations: int = 25
    test_per_cohort: int = 3
    jobs: int = 2


#: What the demo writes in its folder (its ownership manifest lists them; see
#: :mod:`cordfuse.ownership`).
ENTRIES = ("data", "check.txt", "prepared", "fold.json", "runs", "predictions", "per_image.csv",
           "per_lesion.csv", "results.md", "report.html", "cordfuse_run.json")


def run_demo(
    out: str | Path, settings: DemoSettings = DemoSettings(), log: Callable[[str], None] = print,
    *, overwrite: bool = False,
) -> dict:
    """Run the demo into ``out`` (see the module docstring).

    Args:
        out: A new or empty folder, or an earlier demo's folder with ``overwrite``.
        settings: Cohort size, seed and training schedule.
        log: Where progress lines go.
        overwrite: Replace an earlier demo's outputs in ``out`` (only what the demo wrote).

    Returns:
        ``ok`` (no problem in the data and no failed subject), ``minutes``, ``records`` and the
        ``report`` path.

    Raises:
        CordfuseError: ``out`` holds files the demo did not write, or an earlier demo without
            ``overwrite``.
    """
    from cordfuse.check import check_dataset
    from cordfuse.dataset import discover
    from cordfuse.inference import load_models, predict_prepared, write_prediction
    from cordfuse.nn.device import choose_device
    from cordfuse.ownership import claim
    from cordfuse.preprocess.batch import load_prepared_dataset, prepare_dataset
    from cordfuse.preprocess.pipeline import PRESETS
    from cordfuse.study import load_test_subjects
    from cordfuse.synth import write_cohort
    from cordfuse.training import describe_validation
    from cordfuse.training.config import TrainConfig
    from cordfuse.training.trainer import train

    out = Path(out)
    folder = claim(out, "demo")
    if folder.owned() and not overwrite:
        raise CordfuseError(f"{out}: holds an earlier demo (use --overwrite to replace it, or "
                            "give another folder)")
    folder = claim(out, "demo", overwrite=True)
    folder.own(*ENTRIES)
    started = time.perf_counter()
    steps = 7
    log(f"[1/{steps}] Synthetic cohort: {settings.subjects} subjects, cohorts A, B, C")
    data = write_cohort(out / "data", subjects=settings.subjects, seed=settings.seed, qc=True)
    log(f"[2/{steps}] Checking the dataset")
    dataset = discover(data)
    report = check_dataset(dataset)
    atomic_write_text(out / "check.txt", report.format_text() + "\n")
    log(f"      {'no problem found' if report.ok else 'PROBLEMS, see check.txt'}")
    log(f"[3/{steps}] Pre-processing (small preset: 1 mm grid, 24x24 crops)")
    config = PRESETS["small"]
    results = prepare_dataset(dataset, out / "prepared", config, jobs=settings.jobs)
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        log(f"      FAILED {r.name}: {r.message}")
    document, _ = load_prepared_dataset(out / "prepared")
    fold = split_by_cohort(document, settings.test_per_cohort, settings.seed)
    atomic_write_text(out / "fold.json", json.dumps(fold, indent=2) + "\n")
    log(
        f"      train {len(fold['train'])}, validation {len(fold['val'])}, "
        f"test {len(fold['test'])} subjects"
    )

    runs = {}
    for index, model in enumerate(("baseline", "mean-imputation")):
        log(
            f"[4/{steps}] Training {model} ({index + 1}/2): {settings.epochs} epochs x "
            f"{settings.iterations} iterations"
        )
        train_config = TrainConfig(
            model=model,
            preset="small",
            epochs=settings.epochs,
            iterations=settings.iterations,
            seed=settings.seed,
            fold_file=str(out / "fold.json"),
        )
        summary = train(out / "prepared", out / "runs" / model, train_config)
        runs[model] = out / "runs" / model
        log(
            f"      {describe_validation(summary)} "
            f"({summary['seconds']:.0f} s)"
        )

    log(f"[5/{steps}] Predicting the test subjects (from their prepared crops)")
    device = choose_device("auto")
    test = load_test_subjects(out, fold)
    records: list[Record] = []
    lesions: list[LesionRow] = []
    for model, label, sequences in SETUPS:
        models = load_models([runs[model]], device)
        folder_out = out / "predictions" / f"{model}_{label}"
        for prepared in test:
            prediction = predict_prepared(prepared, models, sequences=sequences, device=device)
            write_prediction(prediction, folder_out, threshold=0.5, per_slab=False,
                             save_probabilities=False, qc=False, inputs=set())
            truth, affine = prepared.native.lesion, prepared.native.affine
            voxel = float(np.prod(voxel_sizes(affine)))
            metrics = evaluate_masks(prediction.mask, truth, voxel_volume_mm3=voxel)
            inference = T2SAG_ONLY if sequences else ALL_AVAILABLE
            records.append(Record(model, settings.seed, inference, prepared.subject,
                                  prepared.cohort or "-", metrics.to_dict()))
            lesions += lesion_rows(prediction.mask, truth, affine, subject=prepared.subject,
                                   voxel_volume_mm3=voxel,
                                   synth=SynthTruth.from_document(prepared.synth_truth),
                                   cohort=prepared.cohort or "-", experiment=model,
                                   seed=settings.seed, inference=inference)
    log(f"[6/{steps}] Evaluating (Dice, lesion-wise F1 as Anima, lesion by lesion)")
    atomic_write_text(out / "per_image.csv", records_to_csv(records))
    atomic_write_text(out / "per_lesion.csv", lesions_to_csv(lesions))
    table = results_table(records, lesions)
    atomic_write_text(out / "results.md", table)
    log("")
    log(table)
    minutes = (time.perf_counter() - started) / 60
    log(f"[7/{steps}] Writing the report")
    write_manifest(out, kind="demo", data=data, settings=asdict(settings),
                   experiments=list(LABELS), labels=LABELS,
                   inferences=[T2SAG_ONLY, ALL_AVAILABLE],
                   qc_predictions=[("baseline, T2Sag only", "predictions/baseline_T2Sag"),
                                   ("Mean Imputation, all sequences",
                                    "predictions/mean-imputation_all")],
                   minutes=minutes)
    report_path = write_report(out)
    minutes = (time.perf_counter() - started) / 60
    log(f"Demo finished in {minutes:.1f} min. Results: {(out / 'results.md').resolve()}")
    log(f"Report: {report_path.resolve()}")
    return {"ok": report.ok and not failed, "minutes": minutes, "records": records,
            "report": report_path}


LABELS = {"baseline": "T2Sag baseline", "mean-imputation": "Mean Imputation"}
SETUPS = (("baseline", "T2Sag", ["T2Sag"]), ("mean-imputation", "T2Sag", ["T2Sag"]),
          ("mean-imputation", "all", None))


def results_table(records: list[Record], lesions: list[LesionRow]) -> str:
    """Tables 1 and 2 of the demo's test subjects and what the extra sequences add, as
    Markdown."""
    order = list(LABELS)
    first = table1(records, experiments=order, labels=LABELS,
                   inferences=[T2SAG_ONLY, ALL_AVAILABLE])
    second = table2(records, reference="baseline", experiments=order, labels=LABELS)
    extra, _ = extra_sequences_tables(lesions, experiments=order, labels=LABELS)
    return ("# cordfuse demo: test cohorts\n\n" + first.to_markdown() + "\n"
            + second.to_markdown() + "\n" + extra.to_markdown()
            + "\nSynthetic data: a check of the pipeline, not a clinical validation.\n")
