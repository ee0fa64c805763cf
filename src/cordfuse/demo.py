"""The main job end to end on a synthetic cohort (``cordfuse demo``): a study with a built-in
configuration.

:func:`demo_config` is that configuration: a synthetic cohort generated into ``OUT/data`` (with
QC pictures), the ``small`` preset, a T2Sag baseline and the anchored multi-sequence model (the
baseline frozen, plus a correction from every sequence: the model whose extra sequences beat T2Sag
alone, docs/multisequence.md) trained with one seed, each test subject predicted with T2Sag only
and (anchored model) with all its sequences.
:func:`run_demo` runs it through the study runner (:func:`cordfuse.study.run_stages`: check,
prepare, train, predict, evaluate image by image and lesion by lesion), exports the anchored
model as one zip and predicts the test subjects with it into a BIDS derivative dataset
(:func:`hand_on`), then writes ``results.md`` (Tables 1 and 2, the anchored model with every
sequence against the best T2Sag-only answer, what the extra sequences add) and ``report.html``.

OUT is a study folder (see :mod:`cordfuse.study.runner`), plus ``results.md``; its
``config.json`` is the configuration, a study config ``cordfuse study`` runs as it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cordfuse.errors import CordfuseError
from cordfuse.io import atomic_write_text
from cordfuse.ownership import claim
from cordfuse.study import OUTPUTS, StudyConfig, run_stages, write_report
from cordfuse.synth.protocol import COHORTS


@dataclass(frozen=True)
class DemoSettings:
    """What ``cordfuse demo``'s options set.

    Args:
        subjects: Subjects of the synthetic cohort.
        seed: Seed of the cohort, the fold and the training.
        epochs: Training epochs per model.
        iterations: Iterations per epoch.
        test_per_cohort: Held-out test subjects per cohort.
        jobs: Pre-processing processes.
    """

    subjects: int = 24
    seed: int = 0
    epochs: int = 50
    iterations: int = 25
    test_per_cohort: int = 3
    jobs: int = 2


#: The demo's models (``cordfuse study`` names): the T2Sag baseline and the recommended
#: multi-sequence model, anchored on it. The paper's Mean Imputation is the study's.
EXPERIMENTS = ("baseline", "anchored")

#: The recommended model handed on as one file (``cordfuse export-model``; the anchored model's
#: checkpoint holds its baseline), and the test subjects it predicts as a BIDS derivative.
MODEL_ZIP = "cordfuse-demo-anchored.zip"
DERIVATIVE = "derivative"

#: What the demo writes in its folder (its ownership manifest lists them, so ``--overwrite``
#: removes them and nothing else): a study's outputs, one box plot per synthetic cohort,
#: ``results.md``, the model zip and the derivative dataset.
ENTRIES = (
    *OUTPUTS,
    *(f"boxplot_{cohort}.png" for cohort in COHORTS),
    "results.md",
    MODEL_ZIP,
    DERIVATIVE,
)


def demo_config(settings: DemoSettings) -> StudyConfig:
    """The demo's built-in study configuration.

    Args:
        settings: Cohort size, seed and training schedule.

    Returns:
        A synthetic cohort with QC pictures, the ``small`` preset, :data:`EXPERIMENTS` and one
        seed.
    """
    return StudyConfig(
        synthetic_subjects=settings.subjects,
        synthetic_seed=settings.seed,
        synthetic_qc=True,
        preset="small",
        seeds=(settings.seed,),
        epochs=settings.epochs,
        iterations=settings.iterations,
        test_per_cohort=settings.test_per_cohort,
        experiments=EXPERIMENTS,
        jobs=settings.jobs,
        # Validated every 5 epochs: validating each one took 85 s of the demo's 10.6 minutes,
        # and the anchored model keeps its latest checkpoint whatever validation says.
        val_every=5,
    )


def run_demo(
    out: str | Path,
    settings: DemoSettings = DemoSettings(),
    log: Callable[[str], None] = print,
    *,
    overwrite: bool = False,
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
    out = Path(out)
    folder = claim(out, "demo")
    if folder.owned() and not overwrite:
        raise CordfuseError(
            f"{out}: holds an earlier demo (use --overwrite to replace it, or give another folder)"
        )
    # a demo always starts afresh: an earlier one's outputs would be resumed, not redone
    folder = claim(out, "demo", overwrite=True)
    folder.own(*ENTRIES)
    started = time.perf_counter()
    study = demo_config(settings)
    log(
        f"cordfuse demo: {settings.subjects} synthetic subjects, T2Sag baseline and the "
        f"anchored multi-sequence model ({settings.epochs} x {settings.iterations} iterations "
        "each)"
    )
    run = run_stages(study, out, log=log)
    hand_on(out, settings, run.data.root, log)
    table = results_table(run.tables)
    atomic_write_text(out / "results.md", table)
    log("")
    log(table)
    log("[report] writing report.html")
    report = write_report(
        study, out, kind="demo", data=run.data.root, minutes=(time.perf_counter() - started) / 60
    )
    minutes = (time.perf_counter() - started) / 60
    log(f"Demo finished in {minutes:.1f} min. Results: {(out / 'results.md').resolve()}")
    log(f"Report: {report.resolve()}")
    return {
        "ok": bool(run.data.check_ok) and not run.data.failed,
        "minutes": minutes,
        "records": run.records,
        "report": report,
    }


def hand_on(out: Path, settings: DemoSettings, data: Path, log: Callable[[str], None]) -> None:
    """What a user does next with the demo's model: export the anchored model as one zip
    (:data:`MODEL_ZIP`), and predict the test subjects with that zip, as ``cordfuse predict -m
    ZIP -i DATA`` does, into a BIDS derivative dataset (:data:`DERIVATIVE`) the report opens.

    Args:
        out: The demo folder (trained runs, ``prepared/`` and ``fold.json`` in it).
        settings: The demo's settings (the seed names the run).
        data: The synthetic BIDS dataset.
        log: Where progress lines go.
    """
    import json

    from cordfuse.dataset import discover
    from cordfuse.inference import predict_dataset, predict_options
    from cordfuse.models import export_model

    run = out / "runs" / "anchored" / f"seed-{settings.seed}"
    log(f"[export] {MODEL_ZIP}: the anchored model (its baseline inside) as one file")
    package = export_model(
        [run], out / MODEL_ZIP, name="cordfuse-demo-anchored", prepared=out / "prepared"
    )
    test = set(json.loads((out / "fold.json").read_text())["test"])
    subjects = [s for s in discover(data).subjects if s.subject_id in test]
    log(f"[predict] {len(subjects)} test subjects with the zip -> {DERIVATIVE}/ (BIDS derivative)")
    options = predict_options(device="cpu", per_slab=True, qc=True)
    failed = [
        r.name
        for r in predict_dataset(subjects, (str(package.path),), out / DERIVATIVE, options)
        if r.status == "failed"
    ]
    if failed:
        log(f"warning: not predicted: {', '.join(failed)}")


def results_table(tables: dict[str, Path]) -> str:
    """``results.md``: Tables 1 and 2 of the demo's test subjects, the multi-sequence model
    against the best T2Sag-only answer, and what the extra sequences add, from the tables the
    study wrote.

    Args:
        tables: The study's files by name (``table1.md``, ``table2.md``,
            ``extra_sequences.md``, which opens with the product comparison).

    Returns:
        The Markdown text.
    """
    parts = [
        tables[name].read_text()
        for name in ("table1.md", "table2.md", "extra_sequences.md")
        if name in tables
    ]
    body = "\n".join(parts) if parts else "No test subject was evaluated.\n"
    return (
        "# cordfuse demo: test cohorts\n\n"
        + body
        + "\nSynthetic data: a check of the pipeline, not a clinical validation.\n"
    )
