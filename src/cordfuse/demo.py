"""The main job end to end on a synthetic cohort (``cordfuse demo``).

synth -> check -> prepare (small preset) -> train a T2Sag baseline and a Mean Imputation model ->
predict the held-out test subjects of each cohort (T2Sag only, and every available sequence) ->
evaluate (Anima rules) -> ``results.md``, a Table-1-style summary per test cohort.

Everything lands in one folder::

    OUT/data/            the synthetic BIDS cohort (+ QC pictures)
    OUT/check.txt        its check report
    OUT/prepared/        pre-processed subjects
    OUT/fold.json        training / validation / test subjects
    OUT/runs/<model>/    checkpoints, log, curves
    OUT/predictions/<model>_<sequences>/   lesion masks on the native T2Sag grid
    OUT/results.md, OUT/metrics.csv
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cordfuse.errors import CordfuseError
from cordfuse.evaluation.evaluate import Row, rows_to_csv, summary_table
from cordfuse.evaluation.metrics import evaluate_masks
from cordfuse.io import atomic_write_text, voxel_sizes


@dataclass(frozen=True)
class DemoSettings:
    subjects: int = 24
    seed: int = 0
    epochs: int = 50
    iterations: int = 25
    test_per_cohort: int = 3
    jobs: int = 2


def split(document: dict, test_per_cohort: int, seed: int) -> dict[str, list[str]]:
    """Held-out test subjects per cohort; one validation subject per cohort; the rest trains."""
    rng = np.random.default_rng(seed)
    by_cohort: dict[str, list[str]] = {}
    for s in document["subjects"]:
        by_cohort.setdefault(s["cohort"] or "-", []).append(s["id"])
    fold = {"train": [], "val": [], "test": []}
    for ids in by_cohort.values():
        ids = list(rng.permutation(sorted(ids)))
        fold["test"] += ids[:test_per_cohort]
        fold["val"] += ids[test_per_cohort : test_per_cohort + 1]
        fold["train"] += ids[test_per_cohort + 1 :]
    if not fold["train"]:
        raise CordfuseError(f"the demo needs at least {test_per_cohort + 2} subjects per cohort "
                            "(test, validation and training)")
    return {k: sorted(str(i) for i in v) for k, v in fold.items()}


def run_demo(
    out: str | Path, settings: DemoSettings = DemoSettings(), log: Callable[[str], None] = print
) -> dict:
    from cordfuse.check import check_dataset
    from cordfuse.dataset import discover
    from cordfuse.inference import load_models, predict_subject, write_prediction
    from cordfuse.preprocess.batch import load_prepared_dataset, prepare_dataset
    from cordfuse.preprocess.pipeline import PRESETS, load_sequence
    from cordfuse.synth import write_cohort
    from cordfuse.training.config import TrainConfig
    from cordfuse.training.trainer import choose_device, train

    out = Path(out)
    started = time.perf_counter()
    steps = 6
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
    fold = split(document, settings.test_per_cohort, settings.seed)
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
            f"      best validation Dice {summary['best_val_dice']:.3f} "
            f"({summary['seconds']:.0f} s)"
        )

    log(f"[5/{steps}] Predicting the test subjects")
    device = choose_device("auto")
    test = [s for s in dataset.subjects if s.subject_id in fold["test"]]
    setups = [
        ("baseline", "T2Sag", ["T2Sag"]),
        ("mean-imputation", "T2Sag", ["T2Sag"]),
        ("mean-imputation", "all", None),
    ]
    truths = {s.name: load_sequence(s, "T2Sag", config)[0].render(what="lesion")[:2] for s in test}
    rows: dict[str, list[Row]] = {}
    for model, label, sequences in setups:
        models = load_models([runs[model]], device)
        name = f"{model}_{label}"
        folder = out / "predictions" / name
        rows[name] = []
        for subject in test:
            prediction = predict_subject(subject, models, sequences=sequences, device=device)
            inputs = {scan.path.resolve() for scans in subject.scans.values() for scan in scans}
            write_prediction(
                prediction,
                folder,
                threshold=0.5,
                per_slab=False,
                save_probabilities=False,
                qc=False,
                inputs=inputs,
            )
            truth, affine = truths[subject.name]
            metrics = evaluate_masks(
                prediction.mask, truth > 0.5, voxel_volume_mm3=float(np.prod(voxel_sizes(affine)))
            )
            rows[name].append(Row(subject.name, subject.cohort, metrics))
    log(f"[6/{steps}] Evaluating (Dice, lesion-wise F1 as Anima)")
    table = results_table(rows)
    atomic_write_text(out / "results.md", table)
    csv_rows = [
        Row(f"{name}:{r.image}", r.cohort, r.metrics) for name, rs in rows.items() for r in rs
    ]
    atomic_write_text(out / "metrics.csv", rows_to_csv(csv_rows))
    log("")
    log(table)
    minutes = (time.perf_counter() - started) / 60
    log(f"Demo finished in {minutes:.1f} min. Results: {(out / 'results.md').resolve()}")
    return {"ok": report.ok and not failed, "minutes": minutes, "rows": rows}


def results_table(rows: dict[str, list[Row]]) -> str:
    """Table 1 layout: model x sequences at inference; F1 and Dice per test cohort (means)."""
    cohorts = sorted({r.cohort for rs in rows.values() for r in rs if r.cohort})
    head = (
        "| model | sequences at inference | "
        + " | ".join(f"F1 {c}" for c in cohorts)
        + " | "
        + " | ".join(f"Dice {c}" for c in cohorts)
        + " |"
    )
    lines = [
        "# cordfuse demo: test cohorts (mean per cohort)",
        "",
        head,
        "|" + "---|" * (2 + 2 * len(cohorts)),
    ]
    for name, rs in rows.items():
        model, label = name.split("_", 1)
        summary = summary_table(rs)
        f1 = [summary.get(c, {}).get("lesion_f1", {}).get("mean", float("nan")) for c in cohorts]
        dc = [summary.get(c, {}).get("dice", {}).get("mean", float("nan")) for c in cohorts]
        lines.append(
            f"| {model} | {label} | "
            + " | ".join(f"{v:.3f}" for v in f1)
            + " | "
            + " | ".join(f"{v:.3f}" for v in dc)
            + " |"
        )
    lines += ["", "Synthetic data: a check of the pipeline, not a clinical validation."]
    return "\n".join(lines) + "\n"
